"""The xp-written modules never import or name NumPy or CuPy (comments and docstrings aside)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

XP_MODULES = ["layers.py", "dropout_layers.py", "bn_layers.py", "updater.py", "arrays.py"]
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
