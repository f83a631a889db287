# Sourced by the service benchmarks (service-latency.sh, socklb-cost.sh).
# wire_service_clients SERVER_NS CLIENT_NS...: the server namespace holds the
# ten backend addresses 10.200.0.1-10 on lo; client K (1-based) gets a veth
# to it, 10.201.K.2/24 against 10.201.K.1, and a default route through it,
# as on a node: service addresses route before anything rewrites them.
wire_service_clients() {
  local server=$1 k=0 ns
  shift
  ip netns add "$server"
  ip -n "$server" link set lo up
  for i in $(seq 1 10); do ip -n "$server" addr add "10.200.0.$i/32" dev lo; done
  for ns in "$@"; do
    k=$((k + 1))
    ip netns add "$ns"
    ip -n "$ns" link add eth0 type veth peer name "c$k" netns "$server"
    ip -n "$ns" addr add "10.201.$k.2/24" dev eth0
    ip -n "$server" addr add "10.201.$k.1/24" dev "c$k"
    ip -n "$ns" link set lo up; ip -n "$ns" link set eth0 up; ip -n "$server" link set "c$k" up
    ip -n "$ns" route add default via "10.201.$k.1"
  done
}
