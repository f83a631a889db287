#!/usr/bin/env bash
# Benchmark: what `weir profile` costs a CPU-bound program, and what the agent
# costs while profiling a busy node. Runs side by side on one lab:
#   - fixed work (burn xROUNDS) timed with no profiler, then at 49, 99 and 999 Hz,
#     interleaved round by round so drift hits every set-up alike; median of REPS;
#   - agent CPU (utime+stime from /proc) and peak RSS over a 10 s profile of a
#     node with two busy pods.
#   - the agent's resident memory before the profile and its peak (VmHWM).
# Usage: scripts/bench/profile-overhead.sh [REPS] [ROUNDS] [LAB]
#   LAB: the name of the lab it creates (and removes) [default: pfb-PID, unique]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh >/dev/null
REPS=${1:-7}
ROUNDS=${2:-1500}
LAB=${3:-pfb-$$}
W=$PWD/target/release/weir
if $W lab list 2>/dev/null | awk 'NR > 1 {print $1}' | grep -qx "$LAB"; then
  echo "a lab named $LAB is already up: name another as the third argument" >&2
  exit 1
fi
cargo build --release -p weir --locked -q
work=$(mktemp -d)
trap '$W lab down $LAB >/dev/null 2>&1 || true; kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
clang-19 -O1 -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer crates/weir/tests/fixtures/burn.c -o "$work/burn"
sed "s/name: demo/name: $LAB/" examples/lab.yaml > "$work/lab.yaml"
$W lab up -f "$work/lab.yaml" >/dev/null

timed() { # seconds of wall time for one fixed-work run inside the web pod
  local t0 t1
  t0=$(date +%s.%N); $W lab exec --lab $LAB frontend/web -- "$work/burn" "x$ROUNDS" hot; t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

declare -A runs
for rep in $(seq "$REPS"); do
  for hz in 0 49 99 999; do
    if [ "$hz" = 0 ]; then
      runs[$hz]+="$(timed) "
    else
      $W profile --lab $LAB --node node-a --frequency "$hz" --duration 60s --top 0 -o "$work/p.folded" >/dev/null 2>&1 &
      prof=$!
      # Give the agent time to load and attach the sampler.
      sleep 0.5
      runs[$hz]+="$(timed) "
      # Hanging up cancels the agent's session.
      kill $prof 2>/dev/null; wait $prof 2>/dev/null || true
    fi
  done
  printf '.' >&2
done
echo >&2
base=$(echo ${runs[0]} | tr ' ' '\n' | grep . | median)
echo "fixed work: burn x$ROUNDS in frontend/web, median of $REPS interleaved runs"
printf '%-10s %10s %10s\n' "profiler" "seconds" "vs none"
for hz in 0 49 99 999; do
  m=$(echo ${runs[$hz]} | tr ' ' '\n' | grep . | median)
  label=$([ "$hz" = 0 ] && echo none || echo "$hz Hz")
  printf '%-10s %10.3f %9.2f%%\n' "$label" "$m" "$(echo "($m / $base - 1) * 100" | bc -l)"
done

# Agent cost while profiling a busy node.
$W lab exec --lab $LAB frontend/web -- "$work/burn" 14 hot >/dev/null &
$W lab exec --lab $LAB backend/api -- "$work/burn" 14 other >/dev/null &
sleep 0.5
agent=$(cat /run/weir/labs/$LAB/nodes/node-a/agent.pid)
ticks() { awk '{print $14 + $15}' /proc/$agent/stat; }
hz_clk=$(getconf CLK_TCK)
before=$(ticks)
rss_before=$(awk '/VmRSS/ {print $2}' /proc/$agent/status)
$W profile --lab $LAB --node node-a --duration 10s --frequency 99 --top 0 -o "$work/busy.svg" >/dev/null 2>&1
after=$(ticks)
rss=$(awk '/VmHWM/ {print $2}' /proc/$agent/status)
echo
echo "agent on a busy node, 10 s profile at 99 Hz on $(nproc) CPUs:"
printf '  CPU %.2f%% of one core (%s ticks of %s/s), RSS %s MiB before, peak %s MiB\n' "$(echo "($after - $before) * 100 / $hz_clk / 10" | bc -l)" "$((after - before))" "$hz_clk" "$((rss_before / 1024))" "$((rss / 1024))"
