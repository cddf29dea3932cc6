#!/usr/bin/env bash
# On a machine with a CUDA GPU: the CuPy test suite, then the GPU benchmark (all three configurations).
# Prints a short summary table last. Needs numpy, cupy, pytest (and torch for the comparison); wheels of
# array-api-compat / array-api-strict placed in .whl/ are installed to /tmp/site first when present.
# Usage: bash scripts/gpu_check.sh            (writes logs to $OUT or /tmp/gpu_check)
set -uo pipefail
PY="${PYTHON:-python3}"
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1 XPDL_QUIET=1
logs="${OUT:-/tmp/gpu_check}"
mkdir -p "$logs"

"$PY" - <<'PYCODE' 2>&1 | tee "$logs/info.txt"
import xpdl
be = xpdl.get_backend("cupy")
print("device:", be.describe())
PYCODE

tests=(tests/test_backend.py tests/test_rng.py tests/test_cupy_kernels.py tests/test_layers.py
       tests/test_bn_layers.py tests/test_dropout_layers.py tests/test_updater.py tests/test_fc_net.py
       tests/test_trainer.py tests/test_fused_step.py)
timeout 240 "$PY" -m pytest -q -p no:cacheprovider --backend cupy "${tests[@]}" 2>&1 | tee "$logs/pytest.log"
test_rc=${PIPESTATUS[0]}

timeout 300 "$PY" scripts/bench.py --backend cupy --memory --json "$logs/bench.json" 2>&1 | tee "$logs/bench.log"
bench_rc=${PIPESTATUS[0]}

echo
echo "================ gpu_check summary ================"
head -n 1 "$logs/info.txt"
echo "cupy tests (rc=$test_rc): $(grep -E '(passed|failed|error)' "$logs/pytest.log" | tail -n 1)"
echo "benchmark (rc=$bench_rc):"
sed -n '/^config /,/^$/p' "$logs/bench.log"
[ "$test_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
