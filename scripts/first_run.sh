#!/usr/bin/env bash
# The first `xpdl train` right after installing against a warm one, ROUNDS times (default 3).
# Installs this checkout into a fresh virtual environment (VENV, default a temporary folder),
# then per round: reinstall xpdl (no dependencies), time the first run, time the next one.
# Prints "round | first s | warm s | first / warm". Usage: bash scripts/first_run.sh [ROUNDS] [VENV]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
venv="${2:-$(mktemp -d)/venv}"
out="$(mktemp -d)"
export MPLBACKEND=Agg
[[ -x "$venv/bin/xpdl" ]] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q .; }
wall() { /usr/bin/time -f "%e" "$@" > /dev/null 2> "$out/time" || { cat "$out/time"; exit 1; }; tail -1 "$out/time"; }
echo "round | first s | warm s | first / warm"
for r in $(seq "$rounds"); do
  "$venv/bin/pip" install -q --force-reinstall --no-deps . > /dev/null
  first=$(wall "$venv/bin/xpdl" train --quiet --out "$out/first$r")
  warm=$(wall "$venv/bin/xpdl" train --quiet --out "$out/warm$r")
  echo "$r | $first | $warm | $(python3 -c "print(f'{$first / $warm:.2f}')")"
done
