#!/usr/bin/env bash
# Benchmark: how many packets per second each mechanism drops from a UDP flood
# between two namespaces over a veth pair: iptables raw-table DROP (legacy
# backend), an nftables drop at prerouting priority -300 (raw), a trivial XDP
# program that drops everything (the ceiling: what veth's XDP path costs with
# no filter logic) and Weir's XDP drop rule. Each mechanism counts its own
# drops. Two floods:
#  - socket buffers: an AF_PACKET sender (scripts/bench/flood.c), as a local
#    process would send; veth's XDP must first turn each skb into an XDP buffer;
#  - XDP frames: BPF_PROG_TEST_RUN live frames (the xdp_flood example), as
#    frames arrive from a NIC, with no socket buffer before the filter.
# Two placements:
#  - same CPU: sender and the receiving veth's processing both on CPU 1
#    (veth's transmit schedules the peer's NAPI on the sending CPU), so a rate
#    is what one core does generating and receiving;
#  - per receiving core, as the XDP paper counts: the receiving veth's NAPI
#    runs in its own thread (threaded NAPI) pinned to CPU 1, the sender on
#    CPU 0. Dropped packets per second of the NAPI thread's CPU time
#    (schedstat) is the receiving core's capacity. The thread's CPU time plus
#    its run-queue wait over the sending time says whether the receiver
#    always had work: at ~100% it was saturated (and at 100% CPU time alone
#    the capacity is the measured rate); below 95%, the sender did not
#    saturate it and the figure is derived from its utilisation (marked *).
# Every mechanism receives through veth's ring and NAPI (the sender's TSO is
# off so that socket buffers take that path without an XDP program too).
# Frames the receiving ring (veth's ptr_ring) could not take are counted as
# overflow: offered = arrived + overflow.
# A last pass with the kernel's per-program run-time statistics on gives the
# receiver's XDP program's ns/packet in the live path (trivial vs Weir).
# Usage: scripts/bench/filter-drop-rate.sh [SECONDS] [XDP_FRAMES]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh >/dev/null
SECS=${1:-5}
FRAMES=${2:-10000000}
for n in "$SECS" "$FRAMES"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "filter-drop-rate: SECONDS and XDP_FRAMES must be positive integers, got '$n'" >&2; exit 2; }
done
[ "$FRAMES" -le 2147483647 ] || { echo "filter-drop-rate: XDP_FRAMES is at most 2147483647 (one BPF_PROG_TEST_RUN), got $FRAMES" >&2; exit 2; }
[ "$(nproc)" -ge 2 ] || { echo "filter-drop-rate: needs CPUs 0 and 1, this machine has $(nproc)" >&2; exit 2; }
GEN_CPU=0 RX_CPU=1
cargo build --release -p weir --locked -q
cargo build --release -p weir-bpf --example xdp_flood --locked -q
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
GEN=$BIN/examples/xdp_flood
W=$BIN/weir
work=$(mktemp -d)
TX=weir.bench.tx.$$
RX=weir.bench.rx.$$
# Short, unique device names: the NAPI thread is called napi/<device>-<id>,
# cut to 15 characters, and is found by that name.
TXDEV=wt$$
RXDEV=wr$$
PINS=/sys/fs/bpf/weir/bench-$$
agent=""
stop_agent() {
  if [ -n "$agent" ]; then kill "$agent" 2>/dev/null || true; wait "$agent" 2>/dev/null || true; fi
  agent=""
  rm -rf "$PINS"
}
cleanup() {
  stop_agent
  ip netns del "$TX" 2>/dev/null || true
  ip netns del "$RX" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap "exit 130" INT TERM
clang-19 -O2 scripts/bench/flood.c -o "$work/flood"
clang-19 -O2 -target bpf -I"/usr/include/$(uname -m)-linux-gnu" -c scripts/bench/xdp-drop.bpf.c -o "$work/xdp-drop.o"

net_up() {
  ip netns add "$TX"
  ip netns add "$RX"
  ip -n "$TX" link add "$TXDEV" type veth peer name "$RXDEV" netns "$RX"
  ip -n "$TX" addr add 10.250.0.1/24 dev "$TXDEV"
  ip -n "$RX" addr add 10.250.0.2/24 dev "$RXDEV"
  ip -n "$TX" link set lo up; ip -n "$TX" link set "$TXDEV" up
  ip -n "$RX" link set lo up; ip -n "$RX" link set "$RXDEV" up
  # GRO gives the receiving veth a NAPI context, so it accepts XDP frames
  # without an XDP program, and socket buffers go through the same ring.
  ip netns exec "$RX" ethtool -K "$RXDEV" gro on >/dev/null
  # veth hands a socket buffer to that ring only if it is GRO-eligible or an
  # XDP program is attached (veth_skb_is_eligible_for_gro): with TSO off on
  # the sender it is, so every mechanism receives through the ring and NAPI,
  # not some through the sending CPU's backlog.
  ip netns exec "$TX" ethtool -K "$TXDEV" tso off >/dev/null
  mac=$(ip -n "$RX" -j link show "$RXDEV" | jq -r '.[0].address')
}
net_down() {
  stop_agent
  ip netns del "$TX"
  ip netns del "$RX"
}

# PIDs of the receiving device's NAPI threads.
napi_threads() { ps -eo pid=,comm= | awk -v p="napi/$RXDEV-" 'index($2, p) == 1 {print $1}'; }
# Turns threaded NAPI on for the receiving device and pins its threads to
# RX_CPU; prints why not and fails when it cannot.
threaded_on() {
  local f=/sys/class/net/$RXDEV/threaded pids
  if ! ip netns exec "$RX" sh -c "[ -w $f ] && echo 1 > $f" 2>/dev/null; then
    echo "threaded NAPI unavailable: cannot write $f on kernel $(uname -r)"; return 1
  fi
  pids=$(napi_threads)
  if [ -z "$pids" ]; then echo "threaded NAPI on, but no napi/$RXDEV-* thread exists"; return 1; fi
  for p in $pids; do taskset -p -c "$RX_CPU" "$p" >/dev/null; done
}
# Nanoseconds the receiving NAPI threads have run and have waited runnable
# on a run queue (schedstat), summed; "0 0" without threads.
napi_ns() {
  local p r=0 w=0 run wait
  for p in $(napi_threads); do read -r run wait _ <"/proc/$p/schedstat"; r=$((r + run)); w=$((w + wait)); done
  echo "$r $w"
}
# The CPUs the NAPI threads last ran on, for the placement check.
napi_cpus() { local p; for p in $(napi_threads); do awk '{printf "%s ", $39}' "/proc/$p/stat"; done; }
net_rx() { awk '/NET_RX/ {print $2, $3}' /proc/softirqs; }
# Frames that reached the receiving ring, and those the ring could not take.
arrived() { ip netns exec "$RX" ethtool -S "$RXDEV" | awk '/rx_queue_[0-9]+_xdp_packets/ {s += $2} END {print s + 0}'; }
overflow() { ip -s -n "$RX" -j link show "$RXDEV" | jq '.[0].stats64.rx.dropped'; }

# Runs a flood ($2: skb or xdp) against the mechanism counted by $3 and
# prints one record: mode:mech:flood:offered:overflow:arrived:dropped:seconds:napi_run_ns:napi_wait_ns.
run_flood() {
  local mode=$1 flood=$2 count=$3 mech=$4 cpu a0 o0 d0 n0 w0 s0 t0 t1 a1 o1 d1 n1 w1 s1 secs
  cpu=$([ "$mode" = core ] && echo "$GEN_CPU" || echo "$RX_CPU")
  if [ "$mode" = core ]; then for p in $(napi_threads); do taskset -p -c "$RX_CPU" "$p" >/dev/null; done; fi
  a0=$(arrived); o0=$(overflow); d0=$($count); read -r n0 w0 < <(napi_ns); s0=$(net_rx); t0=$(date +%s.%N)
  # Rates are per second of sending: flood sends for SECS seconds; xdp_flood
  # prints its rate over the send alone, without loading its program.
  if [ "$flood" = skb ]; then
    ip netns exec "$TX" taskset -c "$cpu" "$work/flood" "$TXDEV" "$mac" 10.250.0.1 10.250.0.2 9 "$SECS" >/dev/null
    secs=$SECS
  else
    secs=$(nsenter --net="/run/netns/$TX" taskset -c "$cpu" "$GEN" "$TXDEV" "$mac" "$FRAMES")
    secs=$(echo "$FRAMES / $secs" | bc -l)
  fi
  t1=$(date +%s.%N); a1=$(arrived); o1=$(overflow); d1=$($count); read -r n1 w1 < <(napi_ns); s1=$(net_rx)
  if [ "$mode" = core ] && [ "$n1" -le "$n0" ]; then
    echo "filter-drop-rate: $mech, $flood flood: the receiving NAPI thread did not run, so the receiver did not work on CPU $RX_CPU" >&2
    exit 1
  fi
  echo "$mode:$mech:$flood:$((a1 - a0 + o1 - o0)):$((o1 - o0)):$((a1 - a0)):$((d1 - d0)):$secs:$((n1 - n0)):$((w1 - w0))" >>"$work/results"
  # Where it ran: the NAPI threads' CPU time and last CPU, and NET_RX softirqs
  # per CPU (with threaded NAPI, receiving runs in the thread, not in softirqs).
  local napi="no NAPI thread (NAPI in softirq on the sending CPU)"
  [ "$mode" = core ] && napi=$(printf 'napi thread ran %5.3f s, waited %5.3f s, last on CPU %s' \
    "$(echo "($n1 - $n0) / 10^9" | bc -l)" "$(echo "($w1 - $w0) / 10^9" | bc -l)" "$(napi_cpus)")
  printf '%-5s %-8s %-4s sent for %5.3f s (%5.3f s with start-up): %s; NET_RX softirqs CPU0 +%d CPU1 +%d\n' \
    "$mode" "$mech" "$flood" "$secs" "$(echo "$t1 - $t0" | bc -l)" "$napi" \
    $(($(echo "$s1" | cut -d' ' -f1) - $(echo "$s0" | cut -d' ' -f1))) $(($(echo "$s1" | cut -d' ' -f2) - $(echo "$s0" | cut -d' ' -f2))) >>"$work/placement"
}
measure() { # mode mech setup count teardown
  local mode=$1 mech=$2 setup=$3 count=$4 teardown=$5
  $setup
  run_flood "$mode" skb "$count" "$mech"
  run_flood "$mode" xdp "$count" "$mech"
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
drop_setup() { ip -n "$RX" link set dev "$RXDEV" xdpdrv obj "$work/xdp-drop.o" sec xdp; }
drop_count() { ip netns exec "$RX" ethtool -S "$RXDEV" | awk '/rx_queue_[0-9]+_xdp_drops/ {s += $2} END {print s + 0}'; }
drop_down() { ip -n "$RX" link set dev "$RXDEV" xdpdrv off; }
weir_setup() {
  # The agent attaches XDP to the receiving veth only now, after the others ran.
  nsenter --net="/run/netns/$RX" "$W" agent --interface "$RXDEV" --pin-dir "$PINS" --state-dir "$work/state-$1" \
    --socket "$work/agent.sock" --metrics-addr off --node bench --log-format text >"$work/agent-$1.log" 2>&1 &
  agent=$!
  for _ in $(seq 200); do [ -S "$work/agent.sock" ] && break; sleep 0.05; done
  [ -S "$work/agent.sock" ] || { echo "the agent did not start:" >&2; cat "$work/agent-$1.log" >&2; exit 1; }
  "$W" filter add flood-drop --proto udp --dport 9 --action drop --socket "$work/agent.sock" >/dev/null
}
weir_count() { "$W" filter list --socket "$work/agent.sock" -o json | jq '.[0].rules[0].packets'; }
weir_down() { stop_agent; rm -f "$work/agent.sock"; }

run_mode() { # same|core
  local mode=$1
  measure "$mode" iptables ipt_setup ipt_count ipt_down
  measure "$mode" nftables nft_setup nft_count nft_down
  measure "$mode" xdp-drop drop_setup drop_count drop_down
  measure "$mode" weir "weir_setup $mode" weir_count weir_down
}

# ns/packet of the receiving device's XDP program, from the kernel's run-time
# statistics held on only during one live-frames flood; prints "runs:ns".
prog_cost() {
  local id r0 t0 r1 t1
  id=$(ip -n "$RX" -j link show "$RXDEV" | jq '.[0].xdp.prog.id')
  read -r r0 t0 < <(bpftool -j prog show id "$id" | jq -r '"\(.run_cnt // 0) \(.run_time_ns // 0)"')
  nsenter --net="/run/netns/$TX" taskset -c "$GEN_CPU" "$GEN" "$TXDEV" "$mac" "$FRAMES" --run-time-stats >/dev/null
  read -r r1 t1 < <(bpftool -j prog show id "$id" | jq -r '"\(.run_cnt // 0) \(.run_time_ns // 0)"')
  echo "$((r1 - r0)):$(echo "($t1 - $t0) / ($r1 - $r0)" | bc -l)"
}

: >"$work/results"
: >"$work/placement"
net_up
run_mode same
net_down
net_up
core_status=""
if why=$(threaded_on); then
  run_mode core
  drop_setup; drop_cost=$(prog_cost); drop_down
  weir_setup stats; weir_cost=$(prog_cost); weir_down
else
  core_status=$why
  echo "filter-drop-rate: $why; the per-receiving-core rows are NOT measured, only the same-CPU rows" >&2
fi
net_down

names() {
  case $1 in
    iptables) echo "iptables raw DROP" ;; nftables) echo "nftables drop (prio -300)" ;;
    xdp-drop) echo "XDP_DROP, trivial program" ;; weir) echo "weir XDP drop rule" ;;
  esac
}
report() { # mode flood
  local mode=$1 flood=$2 rows ipt nft
  rows=$(awk -F: -v m="$mode" -v f="$flood" '$1 == m && $3 == f' "$work/results")
  # The rate every ratio uses: per second of sending on the same CPU, per
  # second of the NAPI thread's CPU time per receiving core.
  rate() { echo "$rows" | awk -F: -v k="$1" -v m="$mode" '$2 == k { print (m == "core" && $9 > 0) ? $7 / ($9 / 1e9) : $7 / $8 }'; }
  ipt=$(rate iptables); nft=$(rate nftables)
  if [ "$mode" = same ]; then
    printf '%-27s %13s %11s %13s %11s %11s\n' "set-up" "offered pkt/s" "overflow" "dropped pkt/s" "vs iptables" "vs nftables"
  else
    printf '%-27s %13s %11s %13s %7s %8s %15s %11s %11s\n' "set-up" "offered pkt/s" "overflow" "dropped pkt/s" \
      "rx ran" "+waited" "per rx core/s" "vs iptables" "vs nftables"
  fi
  for mech in iptables nftables xdp-drop weir; do
    echo "$rows" | awk -F: -v k="$mech" -v n="$(names "$mech")" -v m="$mode" -v b="$ipt" -v c="$nft" '$2 == k {
      if (m == "same") {
        r = $7 / $8; vb = (b > 0) ? r / b : 0; vc = (c > 0) ? r / c : 0
        printf "%-27s %13d %11d %13d %10.2fx %10.2fx\n", n, $4 / $8, $5, r, vb, vc
      } else {
        busy = $9 / 1e9 / $8; want = ($9 + $10) / 1e9 / $8; r = ($9 > 0) ? $7 / ($9 / 1e9) : 0
        vb = (b > 0) ? r / b : 0; vc = (c > 0) ? r / c : 0; mark = (want < 0.95) ? "*" : " "
        printf "%-27s %13d %11d %13d %6.0f%% %7.0f%% %14d%s %10.2fx %10.2fx\n", n, $4 / $8, $5, $7 / $8, busy * 100, want * 100, r, mark, vb, vc
      }
    }'
  done
}
what() { [ "$1" = skb ] && echo "from a socket (AF_PACKET, ${SECS} s)" || echo "as XDP frames (${FRAMES} live frames, no socket buffers before the filter)"; }
echo "UDP flood, 60-byte frames. Overflow: frames the receiving veth's ring could not take (offered = arrived + overflow)."
echo
echo "== same CPU: sender and receiving veth on CPU $RX_CPU (rates per second of sending) =="
for flood in skb xdp; do echo; echo "$(what "$flood"):"; report same "$flood"; done
echo
echo "== per receiving core: sender on CPU $GEN_CPU, receiving veth's NAPI thread on CPU $RX_CPU =="
if [ -n "$core_status" ]; then
  echo "NOT MEASURED: $core_status"
else
  echo "rx ran: the NAPI thread's CPU time over the sending time; +waited: with the time it was runnable but"
  echo "waited for CPU $RX_CPU (other tasks there). per rx core/s: dropped per second of the thread's CPU time"
  echo "(ratios use it): at 100% ran, the measured rate; at ~100% ran+waited the receiver always had work"
  echo "(saturated) but shared its core. * below 95% ran+waited: the receiver went idle, the sender did not"
  echo "saturate it, and the figure is derived from its utilisation, not measured at saturation."
  for flood in skb xdp; do echo; echo "$(what "$flood"):"; report core "$flood"; done
  echo
  echo "receiver's XDP program, kernel run-time statistics over one live-frames flood (stats slow every program alike):"
  printf '  %-27s %10s runs, %6.1f ns/packet\n' "$(names xdp-drop)" "${drop_cost%%:*}" "${drop_cost#*:}"
  printf '  %-27s %10s runs, %6.1f ns/packet\n' "$(names weir)" "${weir_cost%%:*}" "${weir_cost#*:}"
fi
echo
echo "placement, per flood: sending time (and with start-up); the receiving NAPI thread's CPU time, run-queue wait and last CPU; NET_RX softirqs per CPU:"
cat "$work/placement"
