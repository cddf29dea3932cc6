#!/usr/bin/env bash
# The default `xpdl train` quiet and then with two CPU-bound processes on the machine, ROUNDS times
# (default 3). XPDL is the command to time (default: xpdl on the PATH).
# Beside it, the same for a plain single-threaded Python loop (no library, no threads): the slowdown
# this machine gives any one-thread program under that load, which xpdl's cannot beat.
# Prints "round | quiet wall s (training s) | loaded wall s (training s) | loaded / quiet | loop loaded / quiet".
# Usage: bash scripts/busy_machine.sh [ROUNDS] [XPDL]
set -euo pipefail
rounds="${1:-3}"
xpdl="${2:-xpdl}"
out="$(mktemp -d)"
export MPLBACKEND=Agg
run() {  # prints "wall training"
  /usr/bin/time -f "%e" "$xpdl" train --out "$out/r$RANDOM$RANDOM" > "$out/log" 2> "$out/time"
  echo "$(tail -1 "$out/time") $(grep -o 'iterations in [0-9.]* s' "$out/log" | grep -o '[0-9.]*' | tail -1)"
}
loop() { /usr/bin/time -f "%e" python3 -c 'sum(range(60_000_000))' 2>&1 | tail -1; }
echo "round | quiet wall s (training s) | loaded wall s (training s) | loaded / quiet | loop loaded / quiet"
for r in $(seq "$rounds"); do
  read -r qw qt <<< "$(run)"
  ql=$(loop)
  python3 -c 'while True: pass' & p1=$!
  python3 -c 'while True: pass' & p2=$!
  sleep 0.5
  read -r lw lt <<< "$(run)"
  ll=$(loop)
  kill "$p1" "$p2"; wait "$p1" "$p2" 2> /dev/null || true
  echo "$r | $qw ($qt) | $lw ($lt) | $(python3 -c "print(f'{$lw / $qw:.2f} | {$ll / $ql:.2f}')")"
done
