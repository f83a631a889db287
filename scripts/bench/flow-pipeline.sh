#!/usr/bin/env bash
# Benchmark: flow events through Weir's pipeline, from the kernel's ring to a
# subscribed Hubble client. A pod floods another with UDP to a port a
# NetworkPolicy denies, so every packet is a drop event; meanwhile a client
# follows node-b's flows through Hubble's GetFlows (`weir observe --socket
# ... -o jsonpb`). Printed, from one run:
#  - events the agent read per second, and per second of the agent's CPU
#    and of its reader thread's (schedstat, over the flood only), with the
#    events the kernel ring lost
#    (weir_flow_events_lost_total{cause="ring_full"}) and the ones a slow
#    client missed (cause="slow_stream");
#  - events the client received per second;
#  - the agent's resident memory with its flow ring full (RING flows,
#    --hubble-event-buffer-capacity; default 100000).
# Usage: scripts/bench/flow-pipeline.sh [SECONDS]   (default 5; WEIR_BIN=path skips the release build;
#   FOLLOW=0 runs no client: the agent's reading and naming alone)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh >/dev/null
SECS=${1:-5}
RING=${RING:-100000}
if [ -z "${WEIR_BIN:-}" ]; then cargo build --release -p weir --locked -q; fi
W=${WEIR_BIN:-$PWD/target/release/weir}
work=$(mktemp -d)
LAB=flowb$$
follower=""
cleanup() {
  [ -n "$follower" ] && kill "$follower" 2>/dev/null || true
  "$W" lab down "$LAB" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
clang-19 -O2 scripts/bench/flood.c -o "$work/flood"
sed "s/name: demo/name: $LAB/; s/routing: kernel /routing: weir /" examples/lab.yaml > "$work/lab.yaml"
"$W" lab up -f "$work/lab.yaml" --agent-arg=--hubble-event-buffer-capacity=$RING >/dev/null
cat > "$work/deny.yaml" <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-closed, namespace: backend}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: []
YAML
"$W" apply --lab "$LAB" -f "$work/deny.yaml" >/dev/null
status=$("$W" lab status "$LAB" -o json)
member() { echo "$status" | python3 -c 'import json,sys; m=[x for x in json.load(sys.stdin) if x["name"]==sys.argv[1]][0]; print(m[sys.argv[2]])' "$1" "$2"; }
api_ip=$(member backend/api address)
agent=$(member node-b agent_pid)
node_ns=$(member node-b netns)
node_ip=$(member node-b address)
db_ns=weir.$LAB.pod.backend.db
ip netns exec "$db_ns" ping -c1 -W1 "$api_ip" >/dev/null 2>&1 || true
gw=$(ip -n "$db_ns" route show default | awk '{print $3}')
mac=$(ip -n "$db_ns" neigh show "$gw" | awk '{print $5}')
db_ip=$(ip -n "$db_ns" -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
scrape() { ip netns exec "$node_ns" curl -s "http://$node_ip:9690/metrics"; }
metric() { scrape | awk -v m="$1" 'index($0, m) == 1 { s += $NF } END { printf "%d\n", s }'; }
# CPU time in ns of the agent's threads (schedstat: exact, not ticks), and
# of its reader thread (weir-flows: the kernel ring read, decoded, named
# and put in the agent's ring, where followers and GetFlows take them).
# Read around the flood only: a metrics scrape costs the agent CPU of its
# own (it counts every pinned map's entries).
cpu() { cat /proc/$agent/task/*/schedstat | awk '{ s += $1 } END { printf "%.0f\n", s }'; }
reader() { for t in /proc/$agent/task/*; do [ "$(cat "$t/comm")" = weir-flows ] && awk '{ print $1 }' "$t/schedstat"; done; return 0; }

if [ "${FOLLOW:-1}" = 1 ]; then
  "$W" observe --lab "$LAB" --node node-b -o jsonpb > "$work/followed" 2>/dev/null &
  follower=$!
else
  : > "$work/followed"
fi
sleep 1
read0=$(metric 'weir_flows_total{node="node-b"')
ring0=$(metric 'weir_flow_events_lost_total{node="node-b",cause="ring_full"}')
slow0=$(metric 'weir_flow_events_lost_total{node="node-b",cause="slow_stream"}')
cpu0=$(cpu)
reader0=$(reader)
lines0=$(wc -l < "$work/followed")
[ -n "${PERF_OUT:-}" ] && { perf ${PERF_MODE:-record -F 999 -g} -p "$agent" -o "$PERF_OUT" -- sleep "$SECS" >/dev/null 2>&1 & }
sent=$(ip netns exec "$db_ns" "$work/flood" eth0 "$mac" "$db_ip" "$api_ip" 80 "$SECS")
sleep 1
cpu1=$(cpu)
reader1=$(reader)
read1=$(metric 'weir_flows_total{node="node-b"')
ring1=$(metric 'weir_flow_events_lost_total{node="node-b",cause="ring_full"}')
slow1=$(metric 'weir_flow_events_lost_total{node="node-b",cause="slow_stream"}')
lines1=$(wc -l < "$work/followed")
rss=$(awk '/VmRSS/ { print $2 }' "/proc/$agent/status")
read=$((read1 - read0)); cpu_s=$(echo "($cpu1 - $cpu0) / 1000000000" | bc -l)
printf 'packets sent by the flood      %12d (%d/s)\n' "$sent" $((sent / SECS))
printf 'events read by the agent       %12d (%d/s)\n' "$read" $((read / SECS))
printf 'agent CPU                      %12.2f s  -> %d events per CPU-second\n' "$cpu_s" "$(echo "$read / ($cpu_s + 0.0001)" | bc)"
reader_s=$(echo "($reader1 - $reader0) / 1000000000" | bc -l)
printf 'reader thread CPU              %12.2f s  -> %d events per reader CPU-second\n' "$reader_s" "$(echo "$read / ($reader_s + 0.0001)" | bc)"
printf 'lost in the kernel ring        %12d\n' $((ring1 - ring0))
printf 'missed by the slow client      %12d\n' $((slow1 - slow0))
printf 'received by the Hubble client  %12d (%d/s)\n' $((lines1 - lines0)) $(((lines1 - lines0) / SECS))
printf 'agent RSS, %7d flows held    %12d KiB\n' "$(( read < RING ? read : RING ))" "$rss"
