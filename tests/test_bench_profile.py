"""``scripts/bench.py --profile`` runs and accounts for a whole step.

No time is asserted (benchmarks are not tests): the profile must run on the kernels of the day,
name each part of a step once, and its parts must add up to the step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xpdl.backends.numpy_backend import kernels_problem

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(bool(kernels_problem()), reason="the compiled CPU kernels are not built here")
def test_profile_of_the_small_step_names_its_parts_and_adds_up(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench.py"),
            "--config",
            "small",
            "--profile",
            "--no-torch",
            "--backend",
            "numpy",
            "--warmup",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (prof,) = json.loads(out.read_text())["profile"]
    parts = {row["part"]: row for row in prof["parts"]}
    names = list(parts)
    assert len(names) == len(prof["parts"]), "a part is listed twice"
    # batch norm + dropout + Adam: each kind of part is timed (Philox inside the words, not beside them)
    for kind in (
        "matmul A = X @ W",
        "matmul dW = X.T @ dA",
        "dropout random words",
        "bn_normalize_relu_dropout",
        "relu_dropout_bn_sums",
        "adam_update",
        "softmax loss",
        "update (Python",
        "python (rest",
    ):
        assert any(n.startswith(kind) for n in names), (kind, names)
    assert not any(n.startswith("philox_uint32") for n in names), names
    assert parts["dropout random words 200x100"]["calls_per_step"] == 2.0
    timed = sum(r["ms_per_step"] for r in prof["parts"])
    assert timed == pytest.approx(prof["step_ms"], rel=1e-9)
    assert sum(r["share"] for r in prof["parts"]) == pytest.approx(1.0, rel=1e-9)
    assert all(r["ms_per_step"] >= 0 for r in prof["parts"] if not r["part"].startswith("python")), prof["parts"]
    assert "small 3072-100-100-10, batch 200" in proc.stdout
