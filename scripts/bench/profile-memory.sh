#!/usr/bin/env bash
# Benchmark: the agent's memory while it profiles, beside the idle agent.
# On one lab node with two busy processes (burn, in frontend/web):
#   - idle: the agent's RSS, and its peak (VmHWM) over SECONDS with no profile;
#   - profiling: its peak over a SECONDS profile at 99 Hz, user stacks only,
#     then over one with kernel stacks (--kernel: kallsyms) as well.
# Each peak is measured from a reset (`echo 5 > /proc/PID/clear_refs`), so it
# is the peak of that window, not of the agent's start.
# Usage: scripts/bench/profile-memory.sh [SECONDS] [LAB]
#   WEIR=path/to/weir to measure that binary [default: the release build, built here]
#   LAB: the name of the lab it creates (and removes) [default: pfm-PID, unique]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh >/dev/null
SECONDS_=${1:-10}
LAB=${2:-pfm-$$}
if [ -z "${WEIR:-}" ]; then
  cargo build --release -p weir --locked -q
  WEIR=$PWD/target/release/weir
fi
W=$WEIR
if $W lab list 2>/dev/null | awk 'NR > 1 {print $1}' | grep -qx "$LAB"; then
  echo "a lab named $LAB is already up: name another as the second argument" >&2
  exit 1
fi
work=$(mktemp -d)
trap '$W lab down $LAB >/dev/null 2>&1 || true; kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
clang-19 -O1 -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer crates/weir/tests/fixtures/burn.c -o "$work/burn"
sed "s/name: demo/name: $LAB/" examples/lab.yaml > "$work/lab.yaml"
$W lab up -f "$work/lab.yaml" >/dev/null 2>&1
agent=$(cat /run/weir/labs/$LAB/nodes/node-a/agent.pid)
status() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$agent/status"; } # KiB
mib() { echo "scale=1; $1 / 1024" | bc -l; }
reset_peak() { echo 5 > "/proc/$agent/clear_refs"; }
sample_anon_idle() { # max RssAnon over the idle window, sampled alike
  local anon=0 now end=$((SECONDS + SECONDS_))
  while [ $SECONDS -lt $end ]; do
    now=$(status RssAnon)
    [ "$now" -gt "$anon" ] && anon=$now
    sleep 0.05
  done
  echo "$anon"
}

# Busy for the whole run: idle window, then the two profiles.
busy=$((SECONDS_ * 3 + 30))
$W lab exec --lab $LAB frontend/web -- "$work/burn" "$busy" hot >/dev/null &
$W lab exec --lab $LAB frontend/web -- "$work/burn" "$busy" other >/dev/null &
sleep 1

rss_idle=$(status VmRSS)
anon_idle=$(status RssAnon)
file_idle=$(status RssFile)
# The file-backed part, by what is mapped: the agent's own binary, and the
# BPF ring buffers it reads (libbpf maps a ring's pages twice, so an N-byte
# ring counts 2N here while the kernel holds N).
rss_of() { awk -v want="$1" '/^[0-9a-f]+-/ {name = $6} /^Rss:/ && name ~ want {s += $2} END {print s + 0}' "/proc/$agent/smaps"; }
binary_idle=$(rss_of "^$(readlink "/proc/$agent/exe")\$")
rings_idle=$(rss_of "bpf-map")
peak_start=$(status VmHWM)
reset_peak
anon_peak_idle=$(sample_anon_idle)
peak_idle=$(status VmHWM)

# Prints "VmHWM max-RssAnon" (KiB) over a profile with these extra flags.
# The kernel keeps no peak of anonymous memory alone: it is sampled every 50 ms.
profile_peak() {
  reset_peak
  $W profile --lab $LAB --node node-a --duration "${SECONDS_}s" --frequency 99 --top 0 "$@" -o "$work/p.folded" >"$work/p.out" 2>&1 &
  local prof=$! anon=0 now
  while kill -0 $prof 2>/dev/null; do
    now=$(status RssAnon)
    [ "$now" -gt "$anon" ] && anon=$now
    sleep 0.05
  done
  if ! wait $prof; then
    cat "$work/p.out" >&2
    exit 1
  fi
  echo "$(status VmHWM) $anon"
}
read -r peak_user anon_user < <(profile_peak)
[ -n "${anon_user:-}" ] || exit 1
stacks_user=$(wc -l < "$work/p.folded")
read -r peak_kernel anon_kernel < <(profile_peak --kernel)
[ -n "${anon_kernel:-}" ] || exit 1
stacks_kernel=$(wc -l < "$work/p.folded")

echo "agent of node-a ($W), two busy processes on the node, ${SECONDS_} s windows:"
printf '  %-38s %8s MiB  (%s anonymous, %s file-backed: %s the binary, %s BPF ring mappings)\n' "idle, resident" \
  "$(mib "$rss_idle")" "$(mib "$anon_idle")" "$(mib "$file_idle")" "$(mib "$binary_idle")" "$(mib "$rings_idle")"
printf '  %-38s %8s MiB\n' "peak since the agent started" "$(mib "$peak_start")"
printf '  %-38s %8s MiB  (anonymous at most %s)\n' "idle, peak" "$(mib "$peak_idle")" "$(mib "$anon_peak_idle")"
printf '  %-38s %8s MiB  (+%s over idle peak; anonymous at most %s; %s stacks)\n' "profiling at 99 Hz, peak" \
  "$(mib "$peak_user")" "$(mib $((peak_user - peak_idle)))" "$(mib "$anon_user")" "$stacks_user"
printf '  %-38s %8s MiB  (+%s over idle peak; anonymous at most %s; %s stacks)\n' "profiling at 99 Hz --kernel, peak" \
  "$(mib "$peak_kernel")" "$(mib $((peak_kernel - peak_idle)))" "$(mib "$anon_kernel")" "$stacks_kernel"
