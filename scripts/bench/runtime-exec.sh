#!/usr/bin/env bash
# Benchmark: what runtime security costs an exec-heavy workload, and the
# agent's memory with many processes tracked. In a one-node lab pod:
#  - off: no agent at all;
#  - events: the agent on, every exec/fork/exit read, enriched and cached;
#  - policies: the same with 100 RuntimePolicies (exec kill/deny rules with
#    exact, prefix and glob binaries, pod selectors, connect rules), which
#    the kernel judges at every exec; none matches /usr/bin/true.
# Each round runs SPAWNS spawns of /usr/bin/true (two at a time, as fast as
# they go) in each set-up, rounds interleaved; the figure is the median
# elapsed time over the rounds, and the ratio to "off".
# Then PROCS `sleep` processes are started in the pod and the agent's RSS
# and process-cache size are read before and after.
# Usage: scripts/bench/runtime-exec.sh [SPAWNS] [ROUNDS] [PROCS]   (default: 20000 5 10000)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh >/dev/null
SPAWNS=${1:-20000}
ROUNDS=${2:-5}
PROCS=${3:-10000}
cargo build --release -p weir --locked -q
W=$PWD/target/release/weir
work=$(mktemp -d)
LAB=rtbench$$
clang-19 -O2 -o "$work/spawn_loop" crates/weir/tests/fixtures/spawn_loop.c
cp "$work/spawn_loop" /tmp/weir-spawn-loop-$$
cleanup() { "$W" lab down "$LAB" >/dev/null 2>&1 || true; rm -rf "$work" /tmp/weir-spawn-loop-$$; }
trap cleanup EXIT

cat > "$work/lab.yaml" <<YAML
apiVersion: weir.dev/v1alpha1
kind: Lab
metadata: {name: $LAB}
spec:
  fabric: {cidr: 172.31.0.0/24}
  nodes: [{name: node-a, podCIDR: 10.245.0.0/24}]
  namespaces: [{name: bench}]
  pods: [{name: load, namespace: bench, node: node-a, labels: {app: load}}]
YAML
{
  for i in $(seq 1 100); do
    case $((i % 4)) in
      0) sel="binaries: [{exact: /opt/forbidden-$i/tool}]"; rule="{operations: [exec], action: kill}" ;;
      1) sel="binaries: [{prefix: /opt/untrusted-$i/}]
    podSelector: {matchLabels: {app: load}}"; rule="{operations: [exec], action: deny, errno: EACCES}" ;;
      2) sel="binaries: [{glob: '/usr/*/evil-$i-*'}]"; rule="{operations: [exec], action: audit}" ;;
      3) sel="namespaces: [bench]"; rule="{operations: [connect], action: deny, cidrs: [203.0.113.$i/32]}" ;;
    esac
    printf -- "---\napiVersion: weir.dev/v1alpha1\nkind: RuntimePolicy\nmetadata: {name: p%03d}\nspec:\n  selector:\n    %s\n  rules: [%s]\n" "$i" "$sel" "$rule"
  done
} > "$work/policies.yaml"

"$W" lab up -f "$work/lab.yaml" > /dev/null
PIDFILE=/run/weir/labs/$LAB/nodes/node-a/agent.pid
stop_agent() { local pid; pid=$(cat "$PIDFILE"); kill "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done; }
# A fresh agent seeds its cache from /proc: let it settle before measuring.
start_agent() { "$W" lab up -f "$work/lab.yaml" > /dev/null; sleep 1; }
run() { # -> elapsed seconds
  "$W" lab exec --lab "$LAB" bench/load -- /tmp/weir-spawn-loop-$$ "$SPAWNS" 0 2 /usr/bin/true | awk '{print $4}'
}
declare -A results
for round in $(seq 1 "$ROUNDS"); do
  stop_agent
  off=$(run)
  start_agent
  "$W" delete --lab "$LAB" -f "$work/policies.yaml" > /dev/null 2>&1 || true
  events=$(run)
  "$W" apply --lab "$LAB" -f "$work/policies.yaml" > /dev/null
  sleep 1
  policies=$(run)
  results[off]+="$off "; results[events]+="$events "; results[policies]+="$policies "
  echo "round $round: off $off s, events $events s, policies $policies s"
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
off=$(echo "${results[off]}" | median)
echo
printf "%-10s %10s %12s %8s\n" set-up elapsed_s spawns_per_s ratio
for s in off events policies; do
  m=$(echo "${results[$s]}" | median)
  printf "%-10s %10.3f %12.0f %8.3f\n" "$s" "$m" "$(echo "$SPAWNS / $m" | bc -l)" "$(echo "$m / $off" | bc -l)"
done
rules=$("$W" runtime list --lab "$LAB" -o json | grep -c '"index"' || true)
echo "(policies: 100 RuntimePolicies, $rules kernel rules judged at every exec)"

# A fresh agent, so the cache holds live processes only.
stop_agent; start_agent
agent=$(cat "$PIDFILE")
rss() { awk '/VmRSS/ {print $2}' "/proc/$agent/status"; }
cached() { "$W" runtime list --lab "$LAB" -o json | awk -F': ' '/"processes"/ {gsub(",", "", $2); print $2}'; }
before_rss=$(rss); before_cached=$(cached)
"$W" lab exec --lab "$LAB" bench/load -- /tmp/weir-spawn-loop-$$ "$PROCS" 0 "$PROCS" /usr/bin/sleep 600 > /dev/null &
spawner=$!
for _ in $(seq 1 600); do
  [ "$(cached)" -ge $((before_cached + PROCS)) ] && break
  sleep 0.5
done
after_rss=$(rss); after_cached=$(cached)
echo
echo "agent RSS: ${before_rss} KiB with ${before_cached} processes cached -> ${after_rss} KiB with ${after_cached} ($(( (after_rss - before_rss) * 1024 / (after_cached - before_cached) )) bytes per added process)"
"$W" lab down "$LAB" > /dev/null
wait "$spawner" 2>/dev/null || true
