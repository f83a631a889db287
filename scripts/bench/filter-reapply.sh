#!/usr/bin/env bash
# Benchmark: what re-applying a large FilterPolicy costs. An agent on one
# namespace's veth takes a policy of N CIDR+port rules, then the same policy
# with one rule changed; for each apply it prints the wall time of
# `weir filter apply` (which returns once the kernel holds the rules), the
# agent's CPU time for it (utime+stime from /proc, so a loaded machine does
# not inflate it), the agent's resident memory after it, and how long
# `weir filter list` then takes; at the end the agent's resident memory and its peak.
# Usage: scripts/bench/filter-reapply.sh [RULES] [debug|release]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh >/dev/null
RULES=${1:-100000}
PROFILE=${2:-release}
if [ "$PROFILE" = release ]; then cargo build --release -p weir --locked -q; else cargo build -p weir --locked -q; fi
W=${CARGO_TARGET_DIR:-$PWD/target}/$([ "$PROFILE" = release ] && echo release || echo debug)/weir
work=$(mktemp -d)
NS=weir.bench.reapply.$$
PINS=/sys/fs/bpf/weir/bench-reapply-$$
agent=""
cleanup() {
  [ -n "$agent" ] && kill "$agent" 2>/dev/null && wait "$agent" 2>/dev/null
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$PINS" "$work"
}
trap cleanup EXIT
ip netns add "$NS"
ip -n "$NS" link add veth0 type veth peer name veth1
for dev in lo veth0 veth1; do ip -n "$NS" link set "$dev" up; done

# N rules of one shape: a /32 source and a destination port, all distinct.
policy() { # changed-port
  python3 - "$RULES" "$1" <<'PY'
import sys
n, changed = int(sys.argv[1]), int(sys.argv[2])
print("apiVersion: weir.dev/v1alpha1\nkind: FilterPolicy\nmetadata: {name: bulk}\nspec:\n  rules:")
for i in range(n):
    port = changed if i == n // 2 else 1000 + i % 50000
    print(f"  - {{name: r{i}, match: {{source: 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32, protocol: tcp, destinationPort: {port}}}, action: drop}}")
PY
}
policy 7 >"$work/a.yaml"
policy 8 >"$work/b.yaml"

nsenter --net="/run/netns/$NS" "$W" agent --interface veth1 --pin-dir "$PINS" --state-dir "$work/state" \
  --socket "$work/agent.sock" --metrics-addr off --node bench --log-format text >"$work/agent.log" 2>&1 &
agent=$!
for _ in $(seq 200); do [ -S "$work/agent.sock" ] && break; sleep 0.05; done

cpu_s() { awk '{printf "%.2f", ($14 + $15) / '"$(getconf CLK_TCK)"'}' "/proc/$agent/stat"; }
measure() { # label file
  local c0 c1 t0 t1 l0 l1
  c0=$(cpu_s); t0=$(date +%s.%N)
  "$W" filter apply -f "$2" --socket "$work/agent.sock" >"$work/apply.out"
  t1=$(date +%s.%N); c1=$(cpu_s); rss=$(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$agent/status")
  l0=$(date +%s.%N); "$W" filter list --socket "$work/agent.sock" -o json >/dev/null; l1=$(date +%s.%N)
  printf '%-34s %10.2f %12.2f %8s %12.2f   %s\n' "$1" "$(echo "$t1 - $t0" | bc -l)" "$(echo "$c1 - $c0" | bc -l)" \
    "$rss" "$(echo "$l1 - $l0" | bc -l)" "$(head -c 120 "$work/apply.out" | head -1)"
}
echo "FilterPolicy of $RULES rules ($PROFILE build)"
printf '%-34s %10s %12s %8s %12s   %s\n' "step" "apply s" "agent CPU s" "RSS MB" "list s" "apply said"
measure "first apply" "$work/a.yaml"
measure "re-apply, one rule changed" "$work/b.yaml"
measure "re-apply, nothing changed" "$work/b.yaml"
echo "agent RSS: $(awk '/VmRSS/ {print $2 " " $3}' "/proc/$agent/status"), peak $(awk '/VmHWM/ {print $2 " " $3}' "/proc/$agent/status")"
