#!/usr/bin/env bash
# On a machine with a CUDA GPU, in one call (well under 10 minutes):
#   1. the CuPy test suite (every test with the cupy parameter, the CUDA kernels, compiled path vs reference);
#   2. the whole user path on the GPU: xpdl train --backend cupy (digits, and a fake CIFAR-sized dataset),
#      xpdl evaluate on the CPU, --resume of a GPU run, the same seed replayed on the CPU (initial weights and
#      dropout words identical, losses equal within float32 rounding), and auto picking the GPU;
#   3. the GPU benchmark (scripts/bench.py --backend cupy, all three configurations).
# Prints a short summary table last; every step writes its log under $OUT (or /tmp/gpu_check) as it goes, so a
# time-out still leaves them.
#
# Needs numpy, cupy, pytest, tqdm, matplotlib (and torch for the comparison); builds the C++ CPU kernels in place
# when a C++ compiler is there (without one the CPU side runs the reference step and says so). Wheels placed in .whl/
# (array-api-compat, array-api-strict, filelock: the device image lacks them) are installed to /tmp/site first:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl array-api-compat array-api-strict filelock
# Usage: bash scripts/gpu_check.sh
set -uo pipefail
PY="${PYTHON:-python3}"
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
"$PY" setup.py -q build_ext --inplace >/dev/null 2>&1 || echo "no C++ kernels built: the CPU side runs the reference step"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1 XPDL_QUIET=1 MPLBACKEND=Agg
logs="${OUT:-/tmp/gpu_check}"
work="$(mktemp -d)"
mkdir -p "$logs"
xpdl() { "$PY" -m xpdl "$@"; }

"$PY" - <<'PYCODE' 2>&1 | tee "$logs/info.txt"
import xpdl
be = xpdl.get_backend("cupy")
print("device:", be.describe())
PYCODE

# 1. the CuPy suite
timeout 240 "$PY" -m pytest -q -p no:cacheprovider --backend cupy tests 2>&1 | tee "$logs/pytest.log"
test_rc=${PIPESTATUS[0]}

# 2. the user path
{
  set -x
  xpdl info | grep -E "auto +picks cupy" || echo "FAIL: auto does not pick the GPU"
  xpdl train --backend cupy --epochs 3 --out "$work/gpu" --quiet
  xpdl evaluate "$work/gpu" --backend numpy
  xpdl train --resume "$work/gpu" --epochs 5 --backend cupy --quiet
  xpdl train --backend numpy --epochs 3 --out "$work/cpu" --quiet
  "$PY" - "$work" <<'PYCODE'
import json, sys
import numpy as np
import xpdl
from xpdl.rng import Generator
work = sys.argv[1]
gpu, cpu = (xpdl.FullyConnectedNet(input_dim=3072, hidden_dims=[256], seed=5, backend=b) for b in ("cupy", "numpy"))
same_w = all(np.array_equal(gpu.backend.to_numpy(gpu.params[k]), cpu.params[k]) for k in cpu.params)
words = [b.to_numpy(Generator(9).random_uint32((1000, 37), like=b.zeros((1,), "float32")))
         for b in (gpu.backend, cpu.backend)]
g = json.load(open(f"{work}/gpu/history.json"))["loss_history"][:51]
c = json.load(open(f"{work}/cpu/history.json"))["loss_history"][:51]
worst = float(np.max(np.abs(np.array(g) - np.array(c)) / np.abs(np.array(c))))
print(f"replay: initial weights identical {same_w}, dropout words identical {np.array_equal(*words)}, "
      f"largest relative loss difference over the first epochs {worst:.2e}")
PYCODE
  "$PY" - "$work/cifar" <<'PYCODE'
import pickle, sys, os
import numpy as np
folder = os.path.join(sys.argv[1], "cifar-10-batches-py")
os.makedirs(folder, exist_ok=True)
rng = np.random.default_rng(0)
for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    batch = {b"data": rng.integers(0, 256, (10000, 3072), dtype=np.uint8),
             b"labels": rng.integers(0, 10, 10000).tolist()}
    with open(os.path.join(folder, name), "wb") as f:
        pickle.dump(batch, f, protocol=2)
PYCODE
  xpdl train --backend cupy --data cifar10 --data-dir "$work/cifar" --epochs 2 --batch-size 256 \
    --hidden-dims 1024,1024 --out "$work/gpu_cifar"
  set +x
} 2>&1 | tee "$logs/user_path.log"
user_rc=${PIPESTATUS[0]}

# 3. the benchmark
timeout 300 "$PY" scripts/bench.py --backend cupy --memory --json "$logs/bench.json" 2>&1 | tee "$logs/bench.log"
bench_rc=${PIPESTATUS[0]}

echo
echo "================ gpu_check summary ================"
head -n 1 "$logs/info.txt"
echo "cupy tests (rc=$test_rc): $(grep -E '(passed|failed|error)' "$logs/pytest.log" | tail -n 1)"
echo "user path (rc=$user_rc): $(grep -cE '^(FAIL|Traceback)' "$logs/user_path.log") failures; $(grep '^replay' "$logs/user_path.log")"
grep -E '^best val acc' "$logs/user_path.log" | sed 's/^/  /'
echo "benchmark (rc=$bench_rc):"
sed -n '/^config /,/^$/p' "$logs/bench.log"
rm -rf "$work"
[ "$test_rc" -eq 0 ] && [ "$user_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
