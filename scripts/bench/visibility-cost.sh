#!/usr/bin/env bash
# Benchmark: what flow and L7 visibility cost pods' traffic. Two labs on
# the pod path (`routing: weir`), web (node-a) to api (node-b), side by side:
#  - on: agents as they start by default: a flow event for every new
#    connection, naming the process behind each pod's socket, and every
#    HTTP request and response copied to the agent and parsed into an L7
#    flow;
#  - off: agents started with --no-l7-flows (the pod path looks at no
#    payload). New connections' flow events stay: policy and conntrack post
#    them, and they are what network policy's verdicts are read from.
# Transactions (scripts/bench/rr.c): `http` is an HTTP/1.1 GET and its 200
# on one connection per stream (every message an L7 flow when on); `crr` a
# new connection per GET (a flow event and a socket lookup per connection
# too). Interleaved rounds, each an on run and an off run back to back
# (which goes first alternates); the figure is the mean rate over all the
# rounds, and the ratio of the means on/off. Many short rounds by default:
# one stream's rate moves by ±10% between runs of a few seconds on a shared
# two-core machine (where the client and server threads land, what else
# runs), and over forty half-second pairs that drift falls on both sides
# alike; a median of three 5-second rounds followed it.
# The agents share the machine's cores with the traffic: what they spend
# reading events is part of the cost. Printed: the table, and each lab's
# agents' CPU seconds and L7 flows over the whole run.
# Usage: scripts/bench/visibility-cost.sh [SECONDS] [ROUNDS]   (default: 0.5 40)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh >/dev/null
SECONDS_EACH=${1:-0.5}
ROUNDS=${2:-40}
if [ -z "${WEIR_BIN:-}" ]; then cargo build --release -p weir --locked -q; fi
W=${WEIR_BIN:-$PWD/target/release/weir}
work=$(mktemp -d)
clang-19 -O2 -pthread -o "$work/rr" scripts/bench/rr.c
cp "$work/rr" /tmp/weir-vis-rr-$$
declare -A LABS=([on]=vison$$ [off]=visoff$$)
declare -A FLAGS=([on]="" [off]="--agent-arg=--no-l7-flows")
servers=()
cleanup() {
  for p in "${servers[@]}"; do kill "$p" 2>/dev/null || true; done
  for l in "${LABS[@]}"; do "$W" lab down "$l" >/dev/null 2>&1 || true; done
  rm -rf "$work" /tmp/weir-vis-rr-$$
}
trap cleanup EXIT
for s in on off; do
  sed "s/name: demo/name: ${LABS[$s]}/; s/routing: kernel /routing: weir /" examples/lab.yaml > "$work/$s.yaml"
  # shellcheck disable=SC2086
  "$W" lab up -f "$work/$s.yaml" ${FLAGS[$s]} > /dev/null
done
ns() { echo "weir.${LABS[$1]}.$2"; }
api_ip=$(ip -n "$(ns on pod.backend.api)" -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
for s in on off; do
  ip netns exec "$(ns $s pod.backend.api)" /tmp/weir-vis-rr-$$ server 7000 & servers+=($!)
done
sleep 0.5
agents_cpu() { # LAB: CPU seconds of its agents so far
  "$W" lab status "${LABS[$1]}" -o json | python3 -c '
import json, os, sys
hz = os.sysconf("SC_CLK_TCK"); total = 0
for m in json.load(sys.stdin):
    pid = m.get("agent_pid")
    if pid:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total += (int(f[11]) + int(f[12])) / hz
print(f"{total:.2f}")'
}
l7_flows() { # LAB: L7 flows its agents hold
  "$W" observe --lab "${LABS[$1]}" --last 1000000 -o jsonpb --http-path '^/rr$' 2>/dev/null | grep -c '"flow"' || true
}
declare -A cpu0
for s in on off; do cpu0[$s]=$(agents_cpu $s); done
TESTS=("http 1" "http 8" "crr 1")
declare -A results
for round in $(seq 1 "$ROUNDS"); do
  order=(on off)
  if [ $((round % 2)) = 0 ]; then order=(off on); fi
  for t in "${TESTS[@]}"; do
    for s in "${order[@]}"; do
      # shellcheck disable=SC2086
      results["$s|$t"]+="$(ip netns exec "$(ns $s pod.frontend.web)" /tmp/weir-vis-rr-$$ client "$api_ip" 7000 $t "$SECONDS_EACH") "
    done
  done
  if [ $((round % 10)) = 0 ]; then echo "round $round of $ROUNDS done"; fi
done
mean() { tr ' ' '\n' | grep -v '^$' | awk '{s += $1} END {printf "%.0f", s / NR}'; }
printf "\n%-10s %14s %14s %14s   (mean of %s rounds of %s s)\n" "" "HTTP 1 (tx/s)" "HTTP 8 (tx/s)" "CRR 1 (tx/s)" "$ROUNDS" "$SECONDS_EACH"
for s in on off; do
  line=$(printf "%-10s" "$s")
  for t in "${TESTS[@]}"; do line+=$(printf " %14s" "$(echo "${results[$s|$t]}" | mean)"); done
  echo "$line"
done
line=$(printf "%-10s" "on/off")
for t in "${TESTS[@]}"; do
  on=$(echo "${results[on|$t]}" | mean); off=$(echo "${results[off|$t]}" | mean)
  line+=$(printf " %14.3f" "$(echo "$on / $off" | bc -l)")
done
echo "$line"
for s in on off; do
  printf "%-4s agents' CPU over the run: %6.2f s; L7 flows held for /rr: %s\n" "$s" \
    "$(echo "$(agents_cpu $s) - ${cpu0[$s]}" | bc -l)" "$(l7_flows $s)"
done
