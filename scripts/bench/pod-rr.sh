#!/usr/bin/env bash
# Benchmark: request/response rate (1 and 8 streams of one-byte
# transactions, TCP_RR-style) and TCP throughput between pods on different
# lab nodes, side by side:
#  - weir: a lab with `routing: weir` (the pod path: bpf_redirect_peer into
#    pods, FIB-routed out of nodes, past both nodes' IP stacks);
#  - policy: `routing: weir` with NetworkPolicies selecting both pods
#    (default deny in both namespaces, the benchmark's port allowed);
#  - vxlan: the pod path over a VXLAN overlay (`routing: vxlan`);
#  - kernel: the same lab with `routing: kernel` (each node's kernel forwards);
#  - legacy: what a legacy bridge CNI builds on each node: the pods' veths
#    in a Linux bridge holding the node's pod-side address, iptables
#    FORWARD rules with conntrack, and masquerading of pod traffic leaving
#    the pod CIDRs (iptables-legacy); nodes route between pod CIDRs;
#  - node-to-node: the two node namespaces talking directly (no pods).
# Each set-up is its own lab on the same machine, measured in interleaved
# rounds; the figure is the median over the rounds, and the ratio to node-to-node.
# Usage: scripts/bench/pod-rr.sh [SECONDS] [ROUNDS]   (default: 5 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh >/dev/null
SECONDS_EACH=${1:-5}
ROUNDS=${2:-3}
cargo build --release -p weir --locked -q
W=$PWD/target/release/weir
work=$(mktemp -d)
clang-19 -O2 -pthread -o "$work/rr" scripts/bench/rr.c
cp "$work/rr" /tmp/weir-rr-$$
declare -A LABS=([weir]=rrw$$ [policy]=rrp$$ [vxlan]=rrv$$ [kernel]=rrk$$ [legacy]=rrl$$)
servers=()
cleanup() {
  for p in "${servers[@]}"; do kill "$p" 2>/dev/null || true; done
  for l in "${LABS[@]}"; do "$W" lab down "$l" >/dev/null 2>&1 || true; done
  rm -rf "$work" /tmp/weir-rr-$$
}
trap cleanup EXIT
for s in weir policy vxlan kernel legacy; do
  routing=kernel; [ "$s" = weir ] || [ "$s" = policy ] && routing=weir; [ "$s" = vxlan ] && routing=vxlan
  sed "s/name: demo/name: ${LABS[$s]}/; s/routing: kernel /routing: $routing /" examples/lab.yaml > "$work/$s.yaml"
  "$W" lab up -f "$work/$s.yaml" > /dev/null
done
ns() { echo "weir.${LABS[$1]}.$2"; }
cat > "$work/policy.yaml" <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-from-frontend, namespace: backend}
spec:
  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: frontend}}}]
    ports: [{port: 7000}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-to-backend, namespace: frontend}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: backend}}}]
    ports: [{port: 7000}]
YAML
WEIR_LAB=${LABS[policy]} "$W" apply -f "$work/policy.yaml" > /dev/null
for node in node-a node-b; do
  n=$(ns legacy node.$node)
  # The bridge: every pod veth a port of cni0, which holds the node's pod-side address.
  gw=$(ip -n "$n" -4 -o addr show | awk '/lxc/ {print $4; exit}' | cut -d/ -f1)
  cidr=$(ip -n "$n" -4 route show | awk '/lxc/ {print $1; exit}' | cut -d. -f1-3).0/24
  ip -n "$n" link add cni0 type bridge
  ip -n "$n" link set cni0 up
  for lxc in $(ip -n "$n" -o link show | awk -F': ' '/lxc/ {print $2}' | cut -d@ -f1); do
    ip -n "$n" route flush dev "$lxc"
    ip -n "$n" addr flush dev "$lxc"
    ip -n "$n" link set "$lxc" master cni0
  done
  ip -n "$n" addr add "$gw/${cidr#*/}" dev cni0
  ip netns exec "$n" iptables-legacy -P FORWARD DROP
  ip netns exec "$n" iptables-legacy -A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
  ip netns exec "$n" iptables-legacy -A FORWARD -s 10.244.0.0/16 -j ACCEPT
  ip netns exec "$n" iptables-legacy -A FORWARD -d 10.244.0.0/16 -j ACCEPT
  ip netns exec "$n" iptables-legacy -t nat -A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -j MASQUERADE
done
api_ip=$(ip -n "$(ns weir pod.backend.api)" -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
nodeb_ip=$(ip -n "$(ns kernel node.node-b)" -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
for s in weir policy vxlan kernel legacy; do
  ip netns exec "$(ns $s pod.backend.api)" /tmp/weir-rr-$$ server 7000 & servers+=($!)
done
ip netns exec "$(ns kernel node.node-b)" /tmp/weir-rr-$$ server 7001 & servers+=($!)
sleep 0.5
measure() { # SETUP MODE STREAMS
  case $1 in
    node-to-node) ip netns exec "$(ns kernel node.node-a)" /tmp/weir-rr-$$ client "$nodeb_ip" 7001 "$2" "$3" "$SECONDS_EACH" ;;
    *) ip netns exec "$(ns $1 pod.frontend.web)" /tmp/weir-rr-$$ client "$api_ip" 7000 "$2" "$3" "$SECONDS_EACH" ;;
  esac
}
SETUPS=(node-to-node weir policy vxlan kernel legacy)
TESTS=("rr 1" "rr 8" "stream 1")
declare -A results
for round in $(seq 1 "$ROUNDS"); do
  for t in "${TESTS[@]}"; do
    for s in "${SETUPS[@]}"; do
      results["$s|$t"]+="$(measure "$s" $t) "
    done
  done
  echo "round $round done"
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf "\n%-14s %14s %8s %14s %8s %16s %8s\n" set-up "RR 1 (tx/s)" ratio "RR 8 (tx/s)" ratio "stream (Gbit/s)" ratio
for s in "${SETUPS[@]}"; do
  line=$(printf "%-14s" "$s")
  for t in "${TESTS[@]}"; do
    m=$(echo "${results[$s|$t]}" | median); base=$(echo "${results[node-to-node|$t]}" | median)
    line+=$(printf " %14s %8.3f" "$m" "$(echo "$m / $base" | bc -l)")
  done
  echo "$line"
done
