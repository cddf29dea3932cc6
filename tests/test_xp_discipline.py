"""The xp-written modules never import or name NumPy or CuPy (comments and docstrings aside)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

XP_MODULES = ["layers.py", "dropout_layers.py", "bn_layers.py", "conv_layers.py", "updater.py", "arrays.py"]
PACKAGE = Path(__file__).resolve().parent.parent / "xpdl"


def direct_uses(source: str) -> list[str]:
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] in ("numpy", "cupy") for a in node.names):
            hits.append(f"line {node.lineno}: import")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("numpy", "cupy"):
            hits.append(f"line {node.lineno}: from {node.module} import")
        elif isinstance(node, ast.Name) and node.id in ("np", "numpy", "cupy", "cp"):
            hits.append(f"line {node.lineno}: uses {node.id}")
    return hits


@pytest.mark.parametrize("module", XP_MODULES)
def test_module_uses_xp_only(module):
    assert direct_uses((PACKAGE / module).read_text()) == []


def test_the_check_catches_a_direct_import():
    assert direct_uses("import numpy as np\nx = np.zeros(3)\n") == ["line 1: import", "line 2: uses np"]


BACKEND_MODULES = {
    "backends/base.py",
    "backends/registry.py",
    "backends/numpy_backend.py",
    "backends/cupy_backend.py",
    "backends/cuda_kernels.py",
    "backends/cpu_kernels.py",
    "backends/conv_kernels.py",
}
SETTINGS = ("XPDL_BACKEND", "XPDL_FUSED")


def cupy_mentions(source: str) -> list[str]:
    """Code (not docstrings or comments) that names CuPy or reads a backend setting."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Name)
            and "cupy" in node.id.lower()
            or isinstance(node, ast.Attribute)
            and "cupy" in node.attr.lower()
        ):
            hits.append(f"line {node.lineno}: names CuPy")
        elif isinstance(node, ast.Constant) and node.value in SETTINGS:
            hits.append(f"line {node.lineno}: reads {node.value}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any("cupy" in n or "cuda_kernels" in n or "cpu_kernels" in n for n in names):
                hits.append(f"line {node.lineno}: imports a backend's kernels")
    return hits


@pytest.mark.parametrize(
    "module",
    ["fc_net.py", "cnn.py", "trainer.py", "rng.py", "host.py", "gradient_check.py", "runs/checkpoint.py", *XP_MODULES],
)
def test_backend_decisions_live_in_the_backend_modules(module):
    assert module not in BACKEND_MODULES
    assert cupy_mentions((PACKAGE / module).read_text()) == []


def test_import_xpdl_does_not_load_numba_or_cupy():
    import subprocess
    import sys

    code = "import sys, xpdl; print(sorted(m for m in ('numba', 'cupy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
