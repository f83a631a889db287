#!/usr/bin/env bash
# Micro-measurement: what the socket load balancer's connect4 program costs
# per connect, by the kernel's own account (kernel.bpf_stats_enabled:
# run_time_ns / run_cnt of the pinned weir_lb_connect4; and the sockops
# program's run time per connect, as it runs for each connection), with 1, 1k and 10k
# services of 10 backends each, the agent fed with `weir apply -f` as in
# service-latency.sh. The client connects to a random service each time,
# sends one byte and waits for one back; a direct set-up (a backend address,
# no service) runs in the same rounds, so connect + first byte p50 is also
# given against it.
#
# Several agent binaries can be compared in one run (LABEL=PATH arguments,
# e.g. the layout before a change and after it): each gets its own client
# namespace, cgroup and pins, and the rounds interleave them. Figures are
# the median over the rounds, with the spread (min-max) of ns per connect.
# Usage: scripts/bench/socklb-cost.sh [CONNECTS_PER_ROUND] [ROUNDS] [LABEL=WEIR_BINARY...]
#   (default: 2000 5, and this tree's release build as "weir")
# COUNTS="1 1000 10000" sets the service counts.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh >/dev/null
source scripts/bench/lib/service-clients.sh
CONNECTS=${1:-2000}
ROUNDS=${2:-5}
shift 2 || shift $# || true
COUNTS=(${COUNTS:-1 1000 10000})
LABELS=(); BINS=()
for arg in "$@"; do
  case "$arg" in
    *=*) LABELS+=("${arg%%=*}"); BINS+=("${arg#*=}") ;;
    *) echo "socklb-cost: expected LABEL=WEIR_BINARY, got '$arg'" >&2; exit 2 ;;
  esac
done
if [ ${#BINS[@]} = 0 ]; then
  cargo build --release -p weir --bin weir --locked -q
  LABELS=(weir); BINS=("${CARGO_TARGET_DIR:-$PWD/target}/release/weir")
fi
for b in "${BINS[@]}"; do [ -x "$b" ] || { echo "socklb-cost: no executable at $b" >&2; exit 2; }; done

work=$(mktemp -d)
SV=weir.lbcost.server.$$
CG2=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
ns_of() { echo "weir.lbcost.$1.$$"; }
cg_of() { echo "$CG2/weir-lbcost-$1-$$"; }
pins_of() { echo "/sys/fs/bpf/weir/lbcost-$1-$$"; }
SETUPS=(direct "${LABELS[@]}")
PIDS=(); STATS_PID=
stats_before=$(sysctl -n kernel.bpf_stats_enabled)
cleanup() {
  set +e
  sysctl -qw kernel.bpf_stats_enabled="$stats_before"
  for p in "${PIDS[@]}" $STATS_PID; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  for s in "${SETUPS[@]}"; do
    ip netns del "$(ns_of "$s")" 2>/dev/null
    cg=$(cg_of "$s")
    if [ -d "$cg" ]; then
      xargs -r kill < "$cg/cgroup.procs" 2>/dev/null
      for _ in $(seq 50); do [ -s "$cg/cgroup.procs" ] || break; sleep 0.05; done
      rmdir "$cg"
    fi
    rm -rf "$(pins_of "$s")"
  done
  ip netns del "$SV" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

clang-19 -O2 scripts/bench/connect_latency.c -o "$work/cl"
clients=()
for s in "${SETUPS[@]}"; do clients+=("$(ns_of "$s")"); mkdir "$(cg_of "$s")"; done
wire_service_clients "$SV" "${clients[@]}"
nsenter --net="/run/netns/$SV" taskset -c 1 "$work/cl" serve 8080 & PIDS+=($!)
for i in "${!LABELS[@]}"; do
  s=${LABELS[$i]}
  # The node datapath (XDP) on lo, off the measured path, as in service-latency.sh.
  nsenter --net="/run/netns/$(ns_of "$s")" "${BINS[$i]}" agent --interface lo --pin-dir "$(pins_of "$s")" \
    --state-dir "$work/state-$s" --socket "$work/$s.sock" --metrics-addr off --node "lbcost-$s" \
    --node-cgroup "$(cg_of "$s")" --log-format text >"$work/$s.log" 2>&1 & PIDS+=($!)
done
for s in "${LABELS[@]}"; do
  for _ in $(seq 400); do [ -S "$work/$s.sock" ] && break; sleep 0.05; done
  [ -S "$work/$s.sock" ] || { echo "socklb-cost: agent $s did not start:" >&2; cat "$work/$s.log" >&2; exit 1; }
done
BACKENDS=$(seq -f '10.200.0.%g' 1 10 | tr '\n' ' ')
vips() { awk -v n="$1" 'BEGIN { for (i = 0; i < n; i++) printf "10.96.%d.%d ", int(i / 250), i % 250 + 1 }'; }
gen_yaml() { # N services of 10 endpoints each
  awk -v n="$1" 'BEGIN { for (i = 0; i < n; i++) {
    printf "---\napiVersion: v1\nkind: Service\nmetadata: {name: svc-%d, namespace: bench, annotations: {weir.dev/health-check: none}}\n", i
    printf "spec:\n  clusterIP: 10.96.%d.%d\n  ports: [{name: http, port: 80, targetPort: 8080}]\n", int(i / 250), i % 250 + 1
    printf "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: svc-%d-x, namespace: bench, labels: {kubernetes.io/service-name: svc-%d}}\n", i, i
    printf "addressType: IPv4\nports: [{name: http, protocol: TCP, port: 8080}]\nendpoints:\n"
    for (j = 1; j <= 10; j++) printf "- {addresses: [10.200.0.%d], conditions: {ready: true}}\n", j
  } }'
}
prog_stats() { # LABEL PROGRAM -> "run_time_ns run_cnt"; bpftool leaves both out while they are 0
  local j; j=$(bpftool prog show pinned "$(pins_of "$1")/progs/$2" -j)
  echo "$(echo "$j" | grep -o '"run_time_ns":[0-9]*' | cut -d: -f2 || true) $(echo "$j" | grep -o '"run_cnt":[0-9]*' | cut -d: -f2 || true)" |
    awk '{ print ($1 == "" ? 0 : $1), ($2 == "" ? 0 : $2) }'
}
median() { sort -n | awk '{ a[NR] = $1 } END { printf "%.1f", a[int((NR + 1) / 2)] }'; }
spread() { sort -n | awk '{ a[NR] = $1 } END { printf "%.0f-%.0f", a[1], a[NR] }'; }

sysctl -qw kernel.bpf_stats_enabled=1
# Run-time stats also through BPF_ENABLE_STATS, held for the whole run: another
# benchmark that writes the sysctl back to 0 meanwhile does not turn them off.
python3 -c '
import ctypes, signal, struct
attr = ctypes.create_string_buffer(struct.pack("I", 0), 8)  # BPF_STATS_RUN_TIME
fd = ctypes.CDLL(None, use_errno=True).syscall(321, 32, attr, 8)  # bpf(BPF_ENABLE_STATS)
signal.pause() if fd >= 0 else exit(1)' & STATS_PID=$!
printf '%-8s %-12s %12s %11s %11s %9s %8s\n' services set-up connect4_ns spread sockops_ns p50_us p50/dir
for n in "${COUNTS[@]}"; do
  VIPS=$(vips "$n")
  gen_yaml "$n" > "$work/all.yaml"
  for i in "${!LABELS[@]}"; do
    "${BINS[$i]}" apply --socket "$work/${LABELS[$i]}.sock" -f "$work/all.yaml" > /dev/null
  done
  for s in "${SETUPS[@]}"; do : > "$work/$s.p50"; : > "$work/$s.ns"; : > "$work/$s.ops"; done
  for round in $(seq "$ROUNDS"); do
    for s in "${SETUPS[@]}"; do
      if [ "$s" = direct ]; then set -- 8080 $BACKENDS; else
        set -- 80 $VIPS
        read -r rt0 rc0 < <(prog_stats "$s" weir_lb_connect4); read -r ot0 _ < <(prog_stats "$s" weir_lb_sockops)
      fi
      read -r p50 _p99 _mean errors < <(nsenter --net="/run/netns/$(ns_of "$s")" \
        sh -c "echo \$\$ > $(cg_of "$s")/cgroup.procs; exec taskset -c 1 $work/cl measure $CONNECTS \"\$@\"" sh "$@")
      [ "$errors" = 0 ] || { echo "socklb-cost: $s: $errors failed connects in round $round" >&2; exit 1; }
      echo "$p50" >> "$work/$s.p50"
      if [ "$s" != direct ]; then
        read -r rt1 rc1 < <(prog_stats "$s" weir_lb_connect4); read -r ot1 _ < <(prog_stats "$s" weir_lb_sockops)
        [ $((rc1 - rc0)) -ge "$CONNECTS" ] || { echo "socklb-cost: $s: connect4 ran $((rc1 - rc0)) times for $CONNECTS connects: are run-time stats off?" >&2; exit 1; }
        echo $(((rt1 - rt0) / (rc1 - rc0))) >> "$work/$s.ns"
        # sockops runs several times per connection (connect, RTT, state changes): its time per connect.
        echo $(((ot1 - ot0) / (rc1 - rc0))) >> "$work/$s.ops"
      fi
    done
  done
  d50=$(median < "$work/direct.p50")
  for s in "${SETUPS[@]}"; do
    m50=$(median < "$work/$s.p50")
    if [ "$s" = direct ]; then ns=-; sp=-; ops=-; else ns=$(median < "$work/$s.ns"); sp=$(spread < "$work/$s.ns"); ops=$(median < "$work/$s.ops"); fi
    printf '%-8s %-12s %12s %11s %11s %9s %8.2f\n' "$n" "$s" "$ns" "$sp" "$ops" "$m50" "$(echo "$m50 / $d50" | bc -l)"
  done
  for i in "${!LABELS[@]}"; do
    "${BINS[$i]}" delete --socket "$work/${LABELS[$i]}.sock" -f "$work/all.yaml" > /dev/null 2>&1 || true
  done
done
