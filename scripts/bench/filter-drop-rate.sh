#!/usr/bin/env bash
# Benchmark: how many packets per second each mechanism drops from a UDP flood
# between two namespaces, same traffic, same CPU: Weir's XDP rule, an
# iptables raw-table DROP (legacy backend) and an nftables drop at prerouting
# priority -300 (raw). Each mechanism counts its own drops. Two floods:
#  - socket buffers: an AF_PACKET sender (scripts/bench/flood.c), as a local
#    process would send; veth's XDP must first turn each skb into an XDP buffer;
#  - XDP frames: BPF_PROG_TEST_RUN live frames (the xdp_flood example), as
#    frames arrive from a NIC, with no socket buffer before the filter.
# Sender and receiving veth processing share CPU 1.
# Usage: scripts/bench/filter-drop-rate.sh [SECONDS] [XDP_FRAMES]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh >/dev/null
SECS=${1:-5}
FRAMES=${2:-10000000}
cargo build --release -p weir --locked -q
cargo build --release -p weir-bpf --example xdp_flood --locked -q
GEN=$PWD/target/release/examples/xdp_flood
W=$PWD/target/release/weir
work=$(mktemp -d)
TX=weir.bench.tx.$$
RX=weir.bench.rx.$$
PINS=/sys/fs/bpf/weir/bench-$$
agent=""
cleanup() {
  [ -n "$agent" ] && kill "$agent" 2>/dev/null && wait "$agent" 2>/dev/null
  ip netns del "$TX" 2>/dev/null || true
  ip netns del "$RX" 2>/dev/null || true
  rm -rf "$PINS" "$work"
}
trap cleanup EXIT
ip netns add "$TX"
ip netns add "$RX"
ip -n "$TX" link add veth0 type veth peer name veth0 netns "$RX"
ip -n "$TX" addr add 10.250.0.1/24 dev veth0
ip -n "$RX" addr add 10.250.0.2/24 dev veth0
for ns in "$TX" "$RX"; do ip -n "$ns" link set lo up; ip -n "$ns" link set veth0 up; done
# GRO gives the receiving veth a NAPI context, so it accepts XDP frames without an XDP program.
ip netns exec "$RX" ethtool -K veth0 gro on >/dev/null
clang-19 -O2 scripts/bench/flood.c -o "$work/flood"
mac=$(ip -n "$RX" -o link show veth0 | sed -E 's/.*link\/ether ([0-9a-f:]+).*/\1/')
flood() { ip netns exec "$TX" taskset -c 1 "$work/flood" veth0 "$mac" 10.250.0.1 10.250.0.2 9 "$SECS"; }
rate() { echo "$1 / $SECS" | bc; }

xdp_frames() { nsenter --net="/run/netns/$TX" taskset -c 1 "$GEN" veth0 "$mac" "$FRAMES"; }

# Runs both floods against the mechanism set up by $1, counting with $2; prints "offered:dropped:seconds" twice.
measure() {
  local setup=$1 count=$2 teardown=$3 sent before after t0 t1 rate
  $setup
  before=$($count); sent=$(flood); after=$($count)
  echo "skb:$sent:$((after - before)):$SECS"
  before=$($count); t0=$(date +%s.%N); rate=$(xdp_frames); t1=$(date +%s.%N); after=$($count)
  echo "xdp:$(echo "$rate * ($t1 - $t0)" | bc | cut -d. -f1):$((after - before)):$(echo "$t1 - $t0" | bc -l)"
  $teardown
}

ipt_setup() { ip netns exec "$RX" iptables-legacy -t raw -A PREROUTING -p udp --dport 9 -j DROP; }
ipt_count() { ip netns exec "$RX" iptables-legacy -t raw -L PREROUTING -v -x -n | awk '/DROP/ {print $1}'; }
ipt_down() { ip netns exec "$RX" iptables-legacy -t raw -F; }
nft_setup() {
  ip netns exec "$RX" nft -f - <<NFT
table inet weirbench {
  chain pre {
    type filter hook prerouting priority -300;
    udp dport 9 counter drop
  }
}
NFT
}
nft_count() { ip netns exec "$RX" nft list table inet weirbench | grep -o 'packets [0-9]*' | awk '{print $2}'; }
nft_down() { ip netns exec "$RX" nft delete table inet weirbench; }
weir_setup() { "$W" filter add flood-drop --proto udp --dport 9 --action drop --socket "$work/agent.sock" >/dev/null; }
weir_count() { "$W" filter list --socket "$work/agent.sock" -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["rules"][0]["packets"])'; }
weir_down() { :; }

ipt=$(measure ipt_setup ipt_count ipt_down)
nft=$(measure nft_setup nft_count nft_down)
# The agent attaches XDP to the receiving veth only now, after the netfilter runs.
nsenter --net="/run/netns/$RX" "$W" agent --interface veth0 --pin-dir "$PINS" --state-dir "$work/state" \
  --socket "$work/agent.sock" --metrics-addr off --node bench --log-format text >"$work/agent.log" 2>&1 &
agent=$!
for _ in $(seq 100); do [ -S "$work/agent.sock" ] && break; sleep 0.05; done
xdp=$(measure weir_setup weir_count weir_down)

report() { # traffic label
  local kind=$1 base
  base=$(echo "$ipt" | awk -F: -v k="$kind" '$1 == k {print $3 / $4}')
  printf '%-28s %14s %14s %10s\n' "set-up" "offered pkt/s" "dropped pkt/s" "vs iptables"
  for row in "iptables raw DROP|$ipt" "nftables drop (prio -300)|$nft" "weir XDP drop rule|$xdp"; do
    local name=${row%%|*} data=${row#*|}
    echo "$data" | awk -F: -v k="$kind" -v n="$name" -v b="$base" '$1 == k { printf "%-28s %14d %14d %9.2fx\n", n, $2 / $4, $3 / $4, ($3 / $4) / b }'
  done
}
echo "UDP flood, 60-byte frames, sender and receiving veth on CPU 1"
echo; echo "from a socket (AF_PACKET, ${SECS} s):"; report skb
echo; echo "as XDP frames (${FRAMES} live frames, no socket buffers before the filter):"; report xdp
