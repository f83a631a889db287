#!/usr/bin/env bash
# Benchmark: packets per second a load-balancer node forwards to a real
# server, Weir's XDP load balancer against IPVS-like kernel forwarding
# (nftables DNAT and the kernel's forwarding path, conntrack included), on
# the same node, the same traffic, the same core:
#
#   gen ──in0/in1──▶ lb ──out0/out1──▶ sink
#
# Weir: XDP on in1 (nextHop Route: the kernel's FIB lookup, IPIP to the
# sink, XDP_REDIRECT out of out0). nftables: DNAT to the sink at prerouting,
# forwarded by the stack. The sink counts what arrives with an XDP program
# that drops it (its own stack costs nothing): a packet is counted once it
# crossed the load balancer. One flow (one 5-tuple): an LRU hit for Weir, an
# established conntrack entry for nftables.
#
# The sender: an AF_PACKET flood in gen (scripts/bench/flood.c), the same
# for every set-up. The sender, the load balancer and the sink share CPU 1
# (a veth processes what it receives on the sending CPU), so each rate
# includes the sender's and the sink's cost; a third set-up measures them:
# an XDP program on in1 that only redirects every packet to out0 (a
# forwarder that does nothing). Each set-up's forwarding cost per packet is
# its time per packet minus that one's, and the ratio of those costs is the
# per-core forwarding rate ratio the XDP paper reports (IPVS 1.2 against
# Katran 5.2 Mpps per core).
#
# Not measured: live frames (BPF_PROG_TEST_RUN live-frames mode, as from
# a NIC). On this kernel frames redirected or passed from a live-frames run
# into a second veth hop arrive one batch (64) per run, for Weir and for
# the stack alike (the xlb_live example shows it), so only socket buffers
# drive this benchmark.
# One-armed (the third argument `one-armed`): Katran's deployment and the
# XDP paper's, the load balancer sending everything back out of the
# interface it came in. The real is a second address of gen, whose in0
# counts arrivals at XDP; Weir runs nextHop Sender (XDP_TX), the forward-only
# program returns XDP_TX, nftables forwards back out of in1.
# Usage: scripts/bench/xlb-pps.sh [SECONDS] [ROUNDS] [two-armed|one-armed]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh >/dev/null
SECS=${1:-3}
ROUNDS=${2:-3}
MODE=${3:-two-armed}
case $MODE in two-armed|one-armed) ;; *) echo "mode $MODE: two-armed or one-armed" >&2; exit 2 ;; esac
cargo build --release -p weir --locked -q
W=$PWD/target/release/weir
work=$(mktemp -d)
GEN=weir.bench.gen.$$
LB=weir.bench.lb.$$
SINK=weir.bench.sink.$$
PINS=/sys/fs/bpf/weir/bench-$$
VIP=10.253.0.10
agent=""
cleanup() {
  [ -n "$agent" ] && kill "$agent" 2>/dev/null && wait "$agent" 2>/dev/null
  pkill -f "$work/agent.sock" 2>/dev/null || true
  for ns in "$GEN" "$LB" "$SINK"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$PINS" "$work"
}
trap cleanup EXIT
for ns in "$GEN" "$LB" "$SINK"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n "$GEN" link add in0 type veth peer name in1 netns "$LB"
ip -n "$LB" link add out0 type veth peer name out1 netns "$SINK"
ip -n "$LB" link add mgmt0 type veth peer name mgmt1
ip -n "$GEN" addr add 10.251.0.1/24 dev in0
ip -n "$LB" addr add 10.251.0.2/24 dev in1
ip -n "$LB" addr add 10.252.0.1/24 dev out0
ip -n "$SINK" addr add 10.252.0.2/24 dev out1
ip -n "$GEN" link set in0 up
for l in in1 out0 mgmt0 mgmt1; do ip -n "$LB" link set "$l" up; done
ip -n "$SINK" link set out1 up
ip -n "$SINK" route add default via 10.252.0.1
ip netns exec "$LB" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
# The sink drops everything at XDP, ARP included: its address is a
# permanent neighbour of the load balancer.
mac_out1=$(ip -n "$SINK" -o link show out1 | sed -E 's/.*link\/ether ([0-9a-f:]+).*/\1/')
ip -n "$LB" neigh replace 10.252.0.2 lladdr "$mac_out1" dev out0 nud permanent
if [ "$MODE" = one-armed ]; then
  REAL=10.251.0.3 NEXT_HOP=Sender SINK_NS=$GEN SINK_IF=in0 FORWARD_VERDICT=3 # XDP_TX
  ip -n "$GEN" addr add "$REAL/24" dev in0
  mac_in0=$(ip -n "$GEN" -o link show in0 | sed -E 's/.*link\/ether ([0-9a-f:]+).*/\1/')
  ip -n "$LB" neigh replace "$REAL" lladdr "$mac_in0" dev in1 nud permanent
  ip netns exec "$LB" sysctl -qw net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.in1.send_redirects=0
else
  REAL=10.252.0.2 NEXT_HOP=Route SINK_NS=$SINK SINK_IF=out1 FORWARD_VERDICT=""
fi

# The sink: count and drop at XDP (this also gives out1 the NAPI that
# XDP_REDIRECT into a veth needs).
cat >"$work/sink.bpf.c" <<'C'
__attribute__((section("xdp"), used)) int xdp_sink(void *ctx) { return 1; /* XDP_DROP */ }
__attribute__((section("license"), used)) char LICENSE[] = "GPL";
C
clang-19 -O2 -target bpf -c "$work/sink.bpf.c" -o "$work/sink.o"
out0=$(ip netns exec "$LB" cat /sys/class/net/out0/ifindex)
cat >"$work/forward.bpf.c" <<C
static long (*bpf_redirect)(unsigned int ifindex, unsigned long flags) = (void *)23;
__attribute__((section("xdp"), used)) int xdp_forward(void *ctx) { return ${FORWARD_VERDICT:-bpf_redirect($out0, 0)}; }
__attribute__((section("license"), used)) char LICENSE[] = "GPL";
C
clang-19 -O2 -target bpf -c "$work/forward.bpf.c" -o "$work/forward.o"
clang-19 -O2 scripts/bench/flood.c -o "$work/flood"
ip -n "$SINK_NS" link set dev "$SINK_IF" xdp obj "$work/sink.o" sec xdp
arrived() { ip netns exec "$SINK_NS" ethtool -S "$SINK_IF" | awk '/rx_queue_0_xdp_drops/ {print $2}'; }
mac_in1=$(ip -n "$LB" -o link show in1 | sed -E 's/.*link\/ether ([0-9a-f:]+).*/\1/')

# One round of socket buffers: "offered arrived seconds".
skb_round() {
  local before after sent
  before=$(arrived)
  sent=$(ip netns exec "$GEN" taskset -c 1 "$work/flood" in0 "$mac_in1" 10.251.0.1 "$VIP" 9 "$SECS")
  after=$(arrived)
  echo "$sent $((after - before)) $SECS"
}

nft_up() {
  ip netns exec "$LB" nft -f - <<NFT
table ip weirbench {
  chain pre {
    type nat hook prerouting priority dstnat;
    ip daddr $VIP udp dport 9 dnat to $REAL
  }
}
NFT
}
nft_down() { ip netns exec "$LB" nft delete table ip weirbench; }

weir_up() {
  rm -rf "$work/state"
  nsenter --net="/run/netns/$LB" "$W" agent --node bench --interface mgmt0 --lb-interface in1 --pin-dir "$PINS" \
    --state-dir "$work/state" --socket "$work/agent.sock" --metrics-addr off --log-format text >"$work/agent.log" 2>&1 &
  agent=$!
  for _ in $(seq 200); do [ -S "$work/agent.sock" ] && break; sleep 0.05; done
  cat >"$work/xlb.yaml" <<YAML
apiVersion: weir.dev/v1alpha1
kind: XdpLoadBalancer
metadata: {name: bench}
spec:
  nextHop: $NEXT_HOP
  vips:
  - {name: flood, address: $VIP, port: 9, protocol: UDP, reals: [{address: $REAL}]}
YAML
  "$W" apply -f "$work/xlb.yaml" --socket "$work/agent.sock" >/dev/null
}

# The agent's XDP link is pinned (it outlives the agent): removing the
# pins detaches it, so the next set-up gets in1 as it was.
weir_down() {
  kill "$agent"; wait "$agent" 2>/dev/null || true; agent=""
  rm -rf "$PINS"
}
forward_up() { ip -n "$LB" link set dev in1 xdp obj "$work/forward.o" sec xdp; }
forward_down() { ip -n "$LB" link set dev in1 xdp off; }

{
  # Rounds interleaved, so drift in the machine reaches every set-up alike.
  for i in $(seq "$ROUNDS"); do
    forward_up; echo "forward-only $(skb_round)"; forward_down
    nft_up; echo "nftables $(skb_round)"; nft_down
    weir_up; echo "weir $(skb_round)"; weir_down
  done
} | tee "$work/rounds"
echo "$MODE"
awk '
  { fwd[$1] += $3 / $4; n[$1]++; lost[$1] += $2 - $3 }
  END {
    base = 1e9 / (fwd["forward-only"] / n["forward-only"])
    printf "%-14s %16s %12s %22s\n", "set-up", "forwarded pkt/s", "not arrived", "ns/packet above forward-only"
    for (k in fwd) printf "%-14s %16d %12d %22.1f\n", k, fwd[k] / n[k], lost[k], 1e9 / (fwd[k] / n[k]) - base
    w = 1e9 / (fwd["weir"] / n["weir"]) - base
    t = 1e9 / (fwd["nftables"] / n["nftables"]) - base
    if (w > 0) printf "\nforwarding cost, nftables / weir: %.2fx (goal: >= 4x)\n", t / w
    printf "forwarded rate, weir / nftables (sender and sink included): %.2fx\n", (fwd["weir"] / n["weir"]) / (fwd["nftables"] / n["nftables"])
  }' "$work/rounds"
