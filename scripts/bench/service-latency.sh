#!/usr/bin/env bash
# Benchmark: connect + first-byte latency to a ClusterIP service, and the
# time to apply one service change, with 1, 1k and 10k services of 10
# backends each, four ways, side by side on the same two namespaces:
#  - weir: the socket load balancer (the agent, fed with `weir apply -f`);
#  - iptables: the nat table exactly as kube-proxy's iptables mode lays it
#    out (KUBE-SERVICES -> KUBE-SVC-* with statistic probabilities ->
#    KUBE-SEP-* DNAT, KUBE-MARK-MASQ, KUBE-POSTROUTING), iptables-legacy;
#  - nftables: as kube-proxy's nftables mode (a service-ips verdict map,
#    numgen vmaps to endpoint chains, DNAT);
#  - direct: connecting to a backend address, no service at all.
# The client connects to a random service each time (and, for direct, to a
# random backend), sends one byte and waits for one byte back. Each set-up
# has its own client namespace wired to the one server namespace, so the
# four are measured in interleaved rounds; client and server share CPU 1.
# Figures are the median over the rounds of each round's p50 and p99.
# Usage: scripts/bench/service-latency.sh [CONNECTS_PER_ROUND] [ROUNDS] [COUNTS...]   (default: 1000 5 1 1000 10000)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh >/dev/null
source scripts/bench/lib/service-clients.sh
CONNECTS=${1:-1000}
ROUNDS=${2:-5}
shift 2 || shift $# || true
COUNTS=("$@")
[ ${#COUNTS[@]} -gt 0 ] || COUNTS=(1 1000 10000)
cargo build --release -p weir --locked -q
W=$PWD/target/release/weir
work=$(mktemp -d)
SV=weir.bench.server.$$
SETUPS=(direct weir iptables nftables)
ns_of() { echo "weir.bench.$1.$$"; }
PINS=/sys/fs/bpf/weir/bench-$$
CG2=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
WCG=$CG2/weir-bench-lb-$$
PCG=$CG2/weir-bench-plain-$$
agent=""; server=""
cleanup() {
  [ -n "$agent" ] && kill "$agent" 2>/dev/null && wait "$agent" 2>/dev/null
  [ -n "$server" ] && kill "$server" 2>/dev/null
  for s in "${SETUPS[@]}"; do ip netns del "$(ns_of "$s")" 2>/dev/null || true; done
  ip netns del "$SV" 2>/dev/null || true
  for cg in "$WCG" "$PCG"; do [ -d "$cg" ] && { xargs -r kill < "$cg/cgroup.procs" 2>/dev/null; sleep 0.1; rmdir "$cg"; }; done
  rm -rf "$PINS" "$work"
}
trap cleanup EXIT
clang-19 -O2 scripts/bench/connect_latency.c -o "$work/cl"
clients=()
for s in "${SETUPS[@]}"; do clients+=("$(ns_of "$s")"); done
wire_service_clients "$SV" "${clients[@]}"
mkdir "$WCG" "$PCG"
nsenter --net="/run/netns/$SV" taskset -c 1 "$work/cl" serve 8080 & server=$!
BACKENDS=$(seq -f '10.200.0.%g' 1 10 | tr '\n' ' ')
CL=$(ns_of weir)

# Runs the client of set-up $1 against port $2 of the addresses that follow.
measure() { local setup=$1 cg=$PCG; shift
  [ "$setup" = weir ] && cg=$WCG
  nsenter --net="/run/netns/$(ns_of "$setup")" sh -c "echo \$\$ > $cg/cgroup.procs; exec taskset -c 1 $work/cl measure $CONNECTS \"\$@\"" sh "$@"
}
vips() { awk -v n="$1" 'BEGIN { for (i = 0; i < n; i++) printf "10.96.%d.%d ", int(i / 250), i % 250 + 1 }'; }

gen_yaml() { # N [SUFFIX]: N services with 10 endpoints each
  awk -v n="$1" -v port="${2:-8080}" 'BEGIN { for (i = 0; i < n; i++) {
    printf "---\napiVersion: v1\nkind: Service\nmetadata: {name: svc-%d, namespace: bench, annotations: {weir.dev/health-check: none}}\n", i
    printf "spec:\n  clusterIP: 10.96.%d.%d\n  ports: [{name: http, port: 80, targetPort: 8080}]\n", int(i / 250), i % 250 + 1
    printf "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: svc-%d-x, namespace: bench, labels: {kubernetes.io/service-name: svc-%d}}\n", i, i
    printf "addressType: IPv4\nports: [{name: http, protocol: TCP, port: %d}]\nendpoints:\n", port
    for (j = 1; j <= 10; j++) printf "- {addresses: [10.200.0.%d], conditions: {ready: true}}\n", j
  } }'
}
# kube-proxy iptables mode (pkg/proxy/iptables/proxier.go), nat table.
gen_iptables() { # N [KUBE-SERVICES-ONLY+changed service]
  awk -v n="$1" -v partial="${2:-}" 'BEGIN {
    print "*nat"
    if (partial == "") {
      print ":KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]"
      print "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
      print "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
      print "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000"
      print "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN"
      print "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0"
      print "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully"
    } else print ":KUBE-SERVICES - [0:0]"
    for (i = 0; i < n; i++) {
      vip = sprintf("10.96.%d.%d", int(i / 250), i % 250 + 1)
      svc = sprintf("KUBE-SVC-%016X", i)
      if (partial == "" || i == 0) printf ":%s - [0:0]\n", svc
      printf "-A KUBE-SERVICES -d %s/32 -p tcp -m comment --comment \"bench/svc-%d:http cluster IP\" -m tcp --dport 80 -j %s\n", vip, i, svc
      if (partial != "" && i != 0) continue
      for (j = 1; j <= 10; j++) {
        sep = sprintf("KUBE-SEP-%08X%04X%s", i, j, partial)
        printf ":%s - [0:0]\n", sep
        printf "-A %s -s 10.200.0.%d/32 -m comment --comment \"bench/svc-%d:http\" -j KUBE-MARK-MASQ\n", sep, j, i
        printf "-A %s -p tcp -m comment --comment \"bench/svc-%d:http\" -m tcp -j DNAT --to-destination 10.200.0.%d:8080\n", sep, i, j
      }
      for (j = 1; j <= 10; j++) {
        sep = sprintf("KUBE-SEP-%08X%04X%s", i, j, partial)
        if (j < 10) printf "-A %s -m comment --comment \"bench/svc-%d:http -> 10.200.0.%d:8080\" -m statistic --mode random --probability %.11f -j %s\n", svc, i, j, 1 / (11 - j), sep
        else printf "-A %s -m comment --comment \"bench/svc-%d:http -> 10.200.0.%d:8080\" -j %s\n", svc, i, j, sep
      }
    }
    print "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    print "COMMIT"
  }'
}
# kube-proxy nftables mode (pkg/proxy/nftables/proxier.go), table ip kube-proxy.
gen_nft() { # N
  awk -v n="$1" 'BEGIN {
    print "table ip kube-proxy {"
    print "  chain mark-for-masquerade { mark set mark or 0x4000; }"
    print "  chain masquerading { type nat hook postrouting priority srcnat; policy accept; mark and 0x4000 == 0 return; mark set mark xor 0x4000; masquerade fully-random; }"
    print "  map service-ips { type ipv4_addr . inet_proto . inet_service : verdict; }"
    print "  chain services { ip daddr . meta l4proto . th dport vmap @service-ips; }"
    print "  chain nat-output { type nat hook output priority -100; policy accept; jump services; }"
    for (i = 0; i < n; i++) {
      for (j = 1; j <= 10; j++) printf "  chain endpoint-%d-%d { ip saddr 10.200.0.%d jump mark-for-masquerade; meta l4proto tcp dnat to 10.200.0.%d:8080; }\n", i, j, j, j
      printf "  chain service-%d { numgen random mod 10 vmap {", i
      for (j = 1; j <= 10; j++) printf " %d : goto endpoint-%d-%d%s", j - 1, i, j, j < 10 ? "," : " }"
      print "; }"
    }
    print "}"
    for (i = 0; i < n; i++) printf "add element ip kube-proxy service-ips { 10.96.%d.%d . tcp . 80 : goto service-%d }\n", int(i / 250), i % 250 + 1, i
  }'
}
p50p99() { sort -n | awk '{ a[NR] = $1 } END { i = int(NR * 0.99); if (i < 1) i = 1; printf "%.3f/%.3f", a[int((NR + 1) / 2)], a[i] }'; }
ms_now() { date +%s%N; }

# The agent's node datapath (XDP) goes on lo, off the measured path: XDP on a
# veth moves its receive path to NAPI, which is a cost of the filter, not of
# service load balancing.
nsenter --net="/run/netns/$CL" "$W" agent --interface lo --pin-dir "$PINS" --state-dir "$work/state" \
  --socket "$work/agent.sock" --metrics-addr off --node bench --node-cgroup "$WCG" --log-format text >"$work/agent.log" 2>&1 &
agent=$!
for _ in $(seq 200); do [ -S "$work/agent.sock" ] && break; sleep 0.05; done
IPT=$(ns_of iptables); NFT=$(ns_of nftables)
median() { sort -n | awk '{ a[NR] = $1 } END { printf "%.1f", a[int((NR + 1) / 2)] }'; }
time_change() { local t0 t1; t0=$(ms_now); "$@" > "$work/last-change"; t1=$(ms_now); echo "$(( (t1 - t0) / 1000 ))" | awk '{ printf "%.3f\n", $1 / 1000 }'; }

printf '%-8s %-10s %9s %9s %8s %8s   %s\n' services set-up p50_us p99_us p50/dir p99/dir "one change, p50/p99 ms"
for n in "${COUNTS[@]}"; do
  VIPS=$(vips "$n")
  gen_yaml "$n" > "$work/all.yaml"
  "$W" apply --socket "$work/agent.sock" -f "$work/all.yaml" > /dev/null
  gen_iptables "$n" > "$work/ipt"
  ip netns exec "$IPT" iptables-legacy-restore < "$work/ipt"
  gen_nft "$n" > "$work/nft"
  ip netns exec "$NFT" nft -f "$work/nft"
  for s in "${SETUPS[@]}"; do : > "$work/$s.p50"; : > "$work/$s.p99"; done
  # The kernel's own account of the connect4 program (run time per call), on only for these rounds.
  prog_stats() { # "run_time_ns run_cnt"; bpftool leaves both out while they are 0
    local j; j=$(bpftool prog show pinned "$PINS/progs/weir_lb_connect4" -j)
    echo "$(echo "$j" | grep -o '"run_time_ns":[0-9]*' | cut -d: -f2 || true) $(echo "$j" | grep -o '"run_cnt":[0-9]*' | cut -d: -f2 || true)" | awk '{ print ($1 == "" ? 0 : $1), ($2 == "" ? 0 : $2) }'
  }
  stats_before=$(sysctl -n kernel.bpf_stats_enabled); sysctl -qw kernel.bpf_stats_enabled=1
  read -r rt0 rc0 < <(prog_stats)
  for round in $(seq "$ROUNDS"); do
    for s in "${SETUPS[@]}"; do
      if [ "$s" = direct ]; then set -- 8080 $BACKENDS; else set -- 80 $VIPS; fi
      read -r p50 p99 _mean errors < <(measure "$s" "$@")
      [ "$errors" = 0 ] || echo "  $s: $errors failed connects in round $round"
      echo "$p50" >> "$work/$s.p50"; echo "$p99" >> "$work/$s.p99"
    done
  done
  read -r rt1 rc1 < <(prog_stats)
  sysctl -qw kernel.bpf_stats_enabled="$stats_before"
  connect4_ns=$(( (rt1 - rt0) / (rc1 - rc0 > 0 ? rc1 - rc0 : 1) ))

  # One service change, 20 times each: weir (one Service and its EndpointSlice through
  # `weir apply -f`), iptables (kube-proxy's partial sync), nftables (one transaction).
  : > "$work/weir.changes"; : > "$work/weir.agent"; : > "$work/weir.maps"
  : > "$work/iptables.changes"; : > "$work/nftables.changes"
  gen_iptables "$n" partial > "$work/ipt-partial"
  for k in $(seq 20); do
    # Every other change takes backend 10 out of service 0, and the next puts it back.
    if [ $((k % 2)) = 1 ]; then gen_yaml 1 | grep -v '10.200.0.10]'; else gen_yaml 1; fi > "$work/one.yaml"
    time_change "$W" apply --socket "$work/agent.sock" -f "$work/one.yaml" >> "$work/weir.changes"
    grep -o '[0-9.]* ms in the agent' "$work/last-change" | awk '{print $1}' >> "$work/weir.agent"
    grep -o 'writes in [0-9.]* ms' "$work/last-change" | awk '{print $3}' >> "$work/weir.maps"
    sed "s/KUBE-SEP-\([0-9A-F]*\)partial/KUBE-SEP-\1P$k/g" "$work/ipt-partial" > "$work/ipt-one"
    time_change ip netns exec "$IPT" iptables-legacy-restore --noflush "$work/ipt-one" >> "$work/iptables.changes"
    {
      for j in $(seq 1 10); do echo "add chain ip kube-proxy endpoint-0-$j-v$k { ip saddr 10.200.0.$j jump mark-for-masquerade; meta l4proto tcp dnat to 10.200.0.$j:8080; }"; done
      printf 'flush chain ip kube-proxy service-0\nadd rule ip kube-proxy service-0 numgen random mod 10 vmap {'
      for j in $(seq 1 10); do printf ' %d : goto endpoint-0-%d-v%d%s' $((j - 1)) "$j" "$k" "$([ "$j" -lt 10 ] && echo , || echo ' }')"; done
      echo
    } > "$work/nft-one"
    time_change ip netns exec "$NFT" nft -f "$work/nft-one" >> "$work/nftables.changes"
  done

  d50=$(median < "$work/direct.p50"); d99=$(median < "$work/direct.p99")
  for s in "${SETUPS[@]}"; do
    m50=$(median < "$work/$s.p50"); m99=$(median < "$work/$s.p99")
    change="-"; [ "$s" = direct ] || change=$(p50p99 < "$work/$s.changes")
    [ "$s" = weir ] && change="$change (in the agent $(p50p99 < "$work/weir.agent"), map writes $(p50p99 < "$work/weir.maps")); connect4 program ${connect4_ns} ns/call"
    printf '%-8s %-10s %9s %9s %8.2f %8.2f   %s\n' "$n" "$s" "$m50" "$m99" "$(echo "$m50 / $d50" | bc -l)" "$(echo "$m99 / $d99" | bc -l)" "$change"
  done
  "$W" delete --socket "$work/agent.sock" -f "$work/all.yaml" > /dev/null 2>&1 || true
  ip netns exec "$IPT" iptables-legacy -t nat -F; ip netns exec "$IPT" iptables-legacy -t nat -X
  ip netns exec "$NFT" nft delete table ip kube-proxy
done
echo
echo "one change: wall time of the command that makes it (weir: \`weir apply -f\` of one Service and its"
echo "EndpointSlice; iptables: iptables-legacy-restore --noflush of KUBE-SERVICES and the changed chains, as"
echo "kube-proxy's partial sync; nftables: one nft -f transaction replacing the service's endpoint chains)."
echo "For weir also the time inside the agent (receipt to last map write) and the map writes alone."
