#!/usr/bin/env bash
# Weir's demo on a lab cluster: probe the kernel, build a two-node lab with an
# agent per node, send real traffic, kill an agent with SIGKILL while traffic
# keeps being counted in the kernel, watch the restarted agent adopt the
# running datapath, patch a packet of death live at XDP while normal traffic
# flows, load-balance a Kubernetes Service in the connect() call itself and
# keep it serving while a backend dies, kill a forbidden binary at exec,
# connect pods past the nodes' IP stacks under identity-based network policy
# (and watch its drops), inject chaos faults into a service under load from
# the datapath, play Cilium's ClusterMesh scene (x-wings asking a global
# service backed by two clusters, one of which loses its backends, then is
# lost entirely and comes back), serve a LoadBalancer Service at XDP from two
# load balancers behind an ECMP router, and draw one CPU flamegraph of the
# whole cluster.
# Pass --keep to leave the lab up afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

keep=false
[ "${1:-}" = "--keep" ] && keep=true
W=${CARGO_TARGET_DIR:-target}/debug/weir
LAB=demo
# Every command below addresses this lab, even when others are up.
export WEIR_LAB=$LAB
say() { printf '\n\033[1;36m▶ %s\033[0m\n' "$*"; }
run() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }

say "Building Weir (first build takes a few minutes)"
cargo build -p weir --locked

say "1. What can this kernel do? weir probe loads tiny programs to find out"
run $W probe

say "2. A two-node cluster on this machine, from examples/lab.yaml"
$W lab down $LAB >/dev/null 2>&1 || true
run $W lab up -f examples/lab.yaml
run $W lab status $LAB

say "3. Real traffic: a pod reaches its node and a pod on the other node; the internet host reaches node-a"
run $W lab exec frontend/web -- ping -c2 -i0.2 -q 10.244.0.1
run $W lab exec frontend/web -- ping -c2 -i0.2 -q 10.244.1.2
run ip netns exec weir.$LAB.ext.internet ping -c5 -i0.2 -q 172.30.0.1

say "4. node-a's agent: attach points, kernel run statistics (sampled over 1 s of live pings), traffic by class"
ip netns exec weir.$LAB.ext.internet ping -c 20 -i 0.05 -q 172.30.0.1 >/dev/null &
run $W status --lab $LAB --node node-a --sample 1s
wait

say "5. SIGKILL the agent. The datapath lives in the kernel, so traffic is still counted"
pid=$(cat /run/weir/labs/$LAB/nodes/node-a/agent.pid)
run kill -9 "$pid"
run ip netns exec weir.$LAB.ext.internet ping -c5 -i0.2 -q 172.30.0.1
run ip -n weir.$LAB.node.node-a -d link show eth0 | grep -E 'prog/xdp|eth0'

say "6. weir lab up again: the new agent adopts the pinned links and maps (same link ids, counters intact)"
run $W lab up -f examples/lab.yaml
run $W status --lab $LAB --node node-a --sample 0

say "7. A packet of death, patched live at XDP: UDP to port 7 carrying 0xdeadbeef (say it crashes a driver)"
run $W filter apply -f examples/filter.yaml
mkdir -p target/demo
printf '\xde\xad\xbe\xef' > target/demo/death.bin
ip netns exec weir.$LAB.ext.internet ping -i 0.02 -c 150 -q 172.30.0.1 > target/demo/ping.txt &
pinger=$!
run ip netns exec weir.$LAB.ext.internet hping3 --quiet --udp -p 7 -c 25 -i u20000 -d 4 -E target/demo/death.bin 172.30.0.1 || true
wait $pinger
echo "normal traffic meanwhile: $(grep -o '[0-9]* packets transmitted, [0-9]* received, [0-9.]*% packet loss' target/demo/ping.txt)"
run $W filter list --lab $LAB --node node-a
run $W filter simulate --lab $LAB --node node-a --packet 'ipv4 src=172.30.0.3 dst=172.30.0.1 udp dport=7 payload=0xdeadbeef'
run $W filter stats --lab $LAB --node node-a --interval 1s --top 3

say "8. A Kubernetes Service, balanced inside connect(): no NAT, no conntrack, no iptables"
mkdir -p target/demo/www-api target/demo/www-db
echo "hello from backend/api" > target/demo/www-api/index.html
echo "hello from backend/db" > target/demo/www-db/index.html
$W lab exec backend/api -- busybox httpd -f -p 8080 -h target/demo/www-api &
api_httpd=$!
$W lab exec backend/db -- busybox httpd -f -p 8080 -h target/demo/www-db &
db_httpd=$!
sleep 0.3
run $W apply -f examples/service.yaml
run $W service list --node node-a
fetch() { # N HTTP requests from frontend/web to the service; prints how many each backend answered
  for _ in $(seq "$1"); do
    $W lab exec frontend/web -- timeout 2 bash -c 'exec 3<>/dev/tcp/10.96.0.10/80 && printf "GET / HTTP/1.0\r\n\r\n" >&3 && tail -n1 <&3' 2>&1 || echo "request failed"
  done | sort | uniq -c
}
run fetch 20
say "   db's web server dies. The agents probe every second; db is quarantined and the service keeps answering"
run kill "$db_httpd"
pkill -f 'busybox httpd -f -p 8080 -h target/demo/www-db' || true
sleep 2
run $W service get backend/web --node node-a
run fetch 20
run $W service explain 10.96.0.10:80 --node node-a
kill "$api_httpd" 2>/dev/null || true
pkill -f 'busybox httpd -f -p 8080 -h target/demo/www-api' || true

say "9. Runtime security: which processes run in which pod, and a policy that kills a forbidden binary at exec"
$W events --lab $LAB --timeout 6s > target/demo/events.txt &
events=$!
sleep 0.5
run $W apply -f examples/runtime.yaml
run $W runtime list --node node-a
echo "\$ $W lab exec frontend/web -- sh -c 'busybox wget -q -O- http://10.96.0.10/; echo exit status \$?; ls /etc/hostname'"
$W lab exec frontend/web -- sh -c 'busybox wget -q -O- http://10.96.0.10/; echo exit status $?; ls /etc/hostname' || true
echo "\$ $W lab exec frontend/web -- bash -c 'exec 3<>/dev/tcp/172.30.0.2/22'"
$W lab exec frontend/web -- bash -c 'exec 3<>/dev/tcp/172.30.0.2/22' || true
wait "$events" || true
echo "what weir events showed meanwhile (frontend/web):"
grep -E 'frontend/web' target/demo/events.txt | grep -E ' (exec|exit|connect) ' | cut -c1-170 | tail -8
run $W delete -f examples/runtime.yaml

say "10. Pod networking on Weir's datapath (routing: weir, dual-stack) and identity-based network policy"
$W lab down demo-net >/dev/null 2>&1 || true
run $W lab up -f examples/lab-pod-network.yaml
export WEIR_LAB=demo-net
$W lab exec backend/api -- busybox httpd -f -p 8080 -h target/demo/www-api &
$W lab exec backend/db -- busybox httpd -f -p 8080 -h target/demo/www-db &
sleep 0.3
get() { # FROM [ADDRESS]: one HTTP request from a pod to backend/api's port 8080 (IPv4, or the address given)
  local to=${2:-10.244.1.2} host=${2:-10.244.1.2}
  [[ $to == *:* ]] && host="[$to]"
  printf '\033[2m$ %s\033[0m\n' "$W lab exec $1 -- (GET http://$host:8080/)"
  $W lab exec "$1" -- timeout 2 bash -c "exec 3<>/dev/tcp/$to/8080 && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && tail -n1 <&3" 2>/dev/null \
    || echo "   (no answer in 2 s: dropped)"
}
get frontend/web
get backend/db
$W observe --timeout 9s > target/demo/flows.txt &
observer=$!
sleep 0.5
run $W apply -f examples/network-policy.yaml
run $W policy list --node node-b
get frontend/web
get backend/db
get backend/db fd00:10:244:1::102
run $W policy explain frontend/web backend/api 8080/TCP
run $W policy explain backend/db backend/api 8080/TCP
wait "$observer" || true
echo "what weir observe showed meanwhile:"
grep -E 'backend/api' target/demo/flows.txt | cut -c1-200 | tail -6 || true

say "11. Chaos in the datapath, as Chaos Mesh users write it: a service under steady load, faults injected by eBPF"
run $W delete -f examples/network-policy.yaml
mkdir -p target/demo/www-api-a
echo "hello from backend/api-a" > target/demo/www-api-a/index.html
$W lab exec backend/api-a -- busybox httpd -f -p 8080 -h target/demo/www-api-a &
sleep 0.3
run $W apply -f examples/chaos/service.yaml
load() { # frontend/web asks the shop service (backend/api on node-b, backend/api-a on node-a) for 5 s
  printf '\033[2m$ %s\033[0m\n' "$W lab exec frontend/web -- scripts/demo-load.py 10.96.0.20 80 5"
  $W lab exec frontend/web -- python3 scripts/demo-load.py 10.96.0.20 80 5
}
echo "no fault:"
load
chaos_flows() { # the last flows the experiment touched, as weir observe shows them
  run $W observe --last 3 --verdict dropped -o text | cut -c1-200
}
run $W apply -f examples/chaos/loss.yaml
echo "30% loss between frontend/web and backend/api, both ways (lost SYNs cost TCP a 1 s retransmission):"
load
run $W chaos list
chaos_flows
run $W delete -f examples/chaos/loss.yaml
run $W apply -f examples/chaos/delay.yaml
echo "200 ms delay on what backend/api sends frontend/web:"
load
run $W chaos list
run $W delete -f examples/chaos/delay.yaml
run $W apply -f examples/chaos/partition.yaml
echo "node-b's pods cut off from every other pod: backend/api's share of requests fails until the experiment ends"
load
chaos_flows
run $W chaos stop --all
run $W chaos list
echo "the experiments are gone, nothing left in the kernel or on the nodes:"
load
for node in node-a node-b; do
  ip -n weir.demo-net.node.$node link show dev weir-shaper >/dev/null 2>&1 && echo "   a shaper was left on $node" || echo "   $node: no shaper, no experiment"
done

pkill -f 'busybox httpd -f -p 8080 -h target/demo/www-' || true
run $W lab down demo-net
export WEIR_LAB=$LAB

say "12. ClusterMesh, as in Cilium's demo: x-wings ask the global service rebel-base, answered by both clusters' rebel-bases"
MESH=examples/clustermesh-rebel-base.yaml
$W lab down galaxy >/dev/null 2>&1 || true
run $W lab up -f $MESH
rebel_base() { # CLUSTER: a web server in each of its rebel-base pods, answering as Cilium's demo does
  mkdir -p target/demo/rebel-base/$1
  printf '{"Galaxy": "Alderaan", "Cluster": "Cluster-%s"}\n' "${1#cluster}" > target/demo/rebel-base/$1/index.html
  for pod in rebel-base-1 rebel-base-2; do
    $W lab exec --lab $1 default/$pod -- busybox httpd -f -p 80 -h target/demo/rebel-base/$1 &
  done
}
rebel_base cluster1
rebel_base cluster2
for c in cluster1 cluster2; do
  run $W apply --lab $c -f examples/rebel-base/service.yaml -f examples/rebel-base/$c.yaml
done
xwing() { # CLUSTER: 10 requests from its x-wing to rebel-base, tallied by answer, in $tally
  tally=$($W lab exec --lab $1 default/x-wing -- python3 scripts/demo-xwing.py 10.96.0.80 80 10)
}
show() { # CLUSTER: the last tally
  printf '\033[2m$ %s\033[0m\n%s\n' "$W lab exec --lab $1 default/x-wing -- scripts/demo-xwing.py 10.96.0.80 80 10" "$tally"
}
both_answer() { grep -q 'Cluster-1' <<<"$tally" && grep -q 'Cluster-2' <<<"$tally" && ! grep -q failed <<<"$tally"; }
cluster1_answers() { ! grep -qv 'Cluster-1' <<<"$tally"; }
expect() { # CLUSTER CHECK WHAT: 10 requests from CLUSTER's x-wing must pass CHECK, or the demo fails
  xwing "$1"
  show "$1"
  $2 || { echo "   expected $3; the demo fails here" >&2; exit 1; }
}
until_both_answer() { # CLUSTER SECONDS: ask until both clusters answer (remote backends take a moment to arrive)
  local deadline=$((SECONDS + $2))
  until xwing "$1"; both_answer; do
    ((SECONDS < deadline)) || { show "$1"; echo "   both clusters never answered $1's x-wing in $2 s" >&2; exit 1; }
    sleep 0.5
  done
  show "$1"
}
backends() { # CLUSTER: each node's rebel-base backends, as "address state" lines
  $W service get --lab "$1" default/rebel-base -o json \
    | python3 -c 'import json, sys; [print(b["address"], b["state"]) for fe in json.load(sys.stdin) for b in fe["backends"]]'
}
until_backends() { # CLUSTER SECONDS WHAT PREDICATE: wait until PREDICATE holds of backends CLUSTER
  local deadline=$((SECONDS + $2))
  until backends "$1" 2>/dev/null | $4; do
    ((SECONDS < deadline)) || { backends "$1"; echo "   $1 never had $3 in $2 s" >&2; exit 1; }
    sleep 0.5
  done
}
no_cluster2_backend() { ! grep -q '^10\.245\.'; }
no_active_cluster2_backend() { ! grep -q '^10\.245\.[0-9.]* active'; }

until_both_answer cluster1 60
until_both_answer cluster2 60
say "   cluster 2's rebel-base backends leave the service: every request is answered by cluster 1"
run $W delete --lab cluster2 -f examples/rebel-base/cluster2.yaml
until_backends cluster1 30 "cluster 2's backends gone" no_cluster2_backend
until_backends cluster2 30 "its own backends gone" no_cluster2_backend
expect cluster1 cluster1_answers "cluster 1 alone, every request answered"
expect cluster2 cluster1_answers "cluster 1 alone, every request answered"
run $W apply --lab cluster2 -f examples/rebel-base/cluster2.yaml
until_both_answer cluster1 60
say "   cluster 2 is lost entirely: its etcd, nodes, agents and pods stop. Cluster 1 keeps answering"
run $W lab down cluster2
echo "   (each cluster1 node finds cluster2 lost when its etcd stops answering and none of its nodes answers a knock:"
echo "    about 2 s; requests sent to cluster 2's backends before then are lost. Waiting for that)"
until_lost() { # SECONDS: until every cluster1 node says cluster2 is lost
  local deadline=$((SECONDS + $1))
  # (it exits 1 while a cluster is not connected: the JSON is what counts here)
  until { $W clustermesh status --lab cluster1 -o json 2>/dev/null || true; } \
    | python3 -c 'import json, sys; sys.exit(not all(r["state"] == "lost" for n in json.load(sys.stdin) for r in n["remotes"]))'; do
    ((SECONDS < deadline)) || { $W clustermesh status --lab cluster1 || true; echo "   cluster2 was never found lost in $1 s" >&2; exit 1; }
    sleep 0.2
  done
}
until_lost 30
run $W clustermesh status --lab cluster1 || true
until_backends cluster1 30 "cluster 2's backends out of service" no_active_cluster2_backend
run $W service get --lab cluster1 --node cluster1-a default/rebel-base
expect cluster1 cluster1_answers "cluster 1 alone, every request answered"
say "   cluster 2 comes back (weir lab up of the mesh builds what is missing): both answer again"
run $W lab up -f $MESH
rebel_base cluster2
run $W apply --lab cluster2 -f examples/rebel-base/service.yaml -f examples/rebel-base/cluster2.yaml
until_both_answer cluster1 60
until_both_answer cluster2 60
run $W clustermesh status --lab cluster1
run $W lab down galaxy

say "13. The edge: a LoadBalancer Service (loadBalancerClass weir.dev/xdp) balanced at XDP by two load balancers behind a router's ECMP route"
$W lab down edge >/dev/null 2>&1 || true
run $W lab up -f examples/lab-edge.yaml
export WEIR_LAB=edge
for pod in web-a web-b web-c; do
  mkdir -p target/demo/edge/$pod
  echo "hello from shop/$pod" > target/demo/edge/$pod/index.html
  $W lab exec shop/$pod -- busybox httpd -f -p 8080 -h target/demo/edge/$pod &
done
run $W apply -f examples/edge-service.yaml
edge_ready() { # both load balancers hold the VIP, with both nodes passing their HTTP probes
  $W lb status -o json | python3 -c '
import json, sys
lbs = [n for n in json.load(sys.stdin) if n.get("interface")]
ok = len(lbs) == 2 and all(any(len(v["reals"]) == 2 and all(r["healthy"] for r in v["reals"]) for v in n["vips"]) for n in lbs)
sys.exit(not ok)'
}
deadline=$((SECONDS + 30))
until edge_ready; do
  ((SECONDS < deadline)) || { $W lb status; echo "   the load balancers never served the Service" >&2; exit 1; }
  sleep 0.5
done
run $W lb status
edge_ask() { # 30 new connections from alice (behind the router) to the Service's address, tallied by answer
  printf '\033[2m$ %s\033[0m\n' "$W lab exec alice -- scripts/demo-xwing.py 198.51.100.10 80 30"
  tally=$($W lab exec alice -- python3 scripts/demo-xwing.py 198.51.100.10 80 30)
  echo "$tally"
  for pod in web-a web-b web-c; do grep -q "shop/$pod" <<<"$tally" || { echo "   shop/$pod never answered" >&2; exit 1; }; done
  ! grep -q failed <<<"$tally" || { echo "   requests failed" >&2; exit 1; }
}
edge_ask
echo "   where one SYN goes, and the packet lb1 sends (IPIP to a node, which answers alice itself):"
run $W lb simulate --node lb1 --client 192.0.2.2:40000 --vip 198.51.100.10:80
lb2=$($W lab status edge -o json | python3 -c 'import json, sys; print(next(m["address"] for m in json.load(sys.stdin) if m["name"] == "lb2"))')
say "   the router withdraws lb1's path: every flow now crosses lb2, which picks the same nodes"
run ip -n weir.edge.router route replace 198.51.100.0/24 via "$lb2"
edge_ask
pkill -f 'busybox httpd -f -p 8080 -h target/demo/edge/' || true
run $W lab down edge
export WEIR_LAB=$LAB

say "14. One CPU flamegraph of the whole cluster: busy programs in two pods on two nodes, no sidecar, no code change"
clang-19 -O1 -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer crates/weir/tests/fixtures/burn.c -o target/demo/burn
$W lab exec frontend/web -- target/demo/burn 8 hot >/dev/null &
$W lab exec backend/api -- target/demo/burn 8 other >/dev/null &
sleep 0.5
run $W profile --lab $LAB --duration 5s --top 8 -o target/demo/cluster.svg
wait
echo "open target/demo/cluster.svg in a browser: node -> pod -> process -> functions, searchable and zoomable"

if $keep; then
  say "The lab stays up. Try: $W lab exec backend/api -- ip addr; then: $W lab down $LAB"
else
  say "15. Tear down: nothing is left behind"
  run $W lab down $LAB
  run $W lab list
fi
