#!/usr/bin/env bash
# Benchmark: containers on Weir's CNI plugin against the reference `bridge`
# plugin (Debian's containernetworking-plugins, host-local IPAM, the
# containers' veths in one Linux bridge that holds the gateway), on the
# same host, with the same runtimes:
#  - start: from `ctr run` (containerd, runc) and from `podman run` (CNI
#    backend, runc) to the container's first request answered by another
#    container of the network (its first packets forwarded both ways). The
#    container's command retries every millisecond until it is answered and
#    then prints a line; the time is taken when that line arrives. p50 and
#    the worst of TRIALS, each plugin's trials interleaved with the other's.
#  - rr: one-byte request/response rate (TCP_RR-style, 1 and 8 streams)
#    between two containers of each network, interleaved rounds, medians.
# With Weir, the host runs `weir agent` with the pod path (as `weir setup
# cni` expects); the containers' traffic gets Weir's policy and flow
# visibility (no policy is applied here). The host is a network namespace
# of its own; containerd runs in it with its own state.
# Usage: scripts/bench/cni-vs-bridge.sh [TRIALS] [SECONDS] [ROUNDS]  (default: 10 5 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh >/dev/null
TRIALS=${1:-10}
SECONDS_EACH=${2:-5}
ROUNDS=${3:-3}
cargo build --release -p weir --locked -q
W=$PWD/target/release/weir
ROOTFS=$WEIR_CONTAINER_ROOTFS
tag=$$
host=weirbench-cni-$tag
work=$(mktemp -d /tmp/weir-bench-cni.XXXXXX)
bpffs=$(awk '$3 == "bpf" {print $2; exit}' /proc/mounts)
[ -n "$bpffs" ] || { mount -t bpf bpf /sys/fs/bpf; bpffs=/sys/fs/bpf; }
pins=$bpffs/weir/bench-cni-$tag
clang-19 -O2 -pthread -o "$work/rr" scripts/bench/rr.c
pids=()
in_host() { nsenter --net="/run/netns/$host" "$@"; }
ctr_in() { # NETWORK ARGS...: ctr with NETWORK's config and plugins where ctr looks
  local net=$1
  shift
  in_host unshare -m sh -c 'mount --bind "$1" /etc/cni/net.d && mount --bind "$2" /opt/cni/bin && shift 2 && exec ctr "$@"' \
    sh "$work/$net/net.d" "$work/bin" -a "$work/containerd/containerd.sock" -n bench "$@"
}
podman_in() {
  CONTAINERS_CONF=$work/podman/containers.conf in_host podman --root "$work/podman/root" \
    --runroot "$work/podman/run" --tmpdir "$work/podman/tmp" "$@"
}
cleanup() {
  set +e
  podman_in rm -af -t 0 >/dev/null 2>&1
  for id in $(ctr_in weir task ls -q 2>/dev/null); do
    ctr_in weir task kill -s KILL "$id" >/dev/null 2>&1
  done
  sleep 0.5
  for id in $(ctr_in weir container ls -q 2>/dev/null); do
    ctr_in weir task delete -f "$id" >/dev/null 2>&1
    ctr_in weir container rm "$id" >/dev/null 2>&1
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  pkill -f -- "-address $work/containerd/containerd.sock" 2>/dev/null
  umount -R "$work/podman/root/overlay" 2>/dev/null
  rm -rf "/run/containerd/runc/bench"
  ip netns del "$host" 2>/dev/null
  rm -rf "$pins" "$work"
}
trap cleanup EXIT
trap "exit 130" INT TERM
mkdir -p /etc/cni/net.d /opt/cni/bin "$work/bin" "$work/state" "$work/podman/tmp" "$work/containerd"

# The host: an uplink with a default route, forwarding on (both plugins need it).
ip netns add "$host"
ip -n "$host" link set lo up
ip -n "$host" link add uplink0 type veth peer name peer0
ip -n "$host" addr add 192.0.2.10/24 dev uplink0
ip -n "$host" link set uplink0 up
ip -n "$host" link set peer0 up
ip -n "$host" route add default via 192.0.2.1 dev uplink0
in_host sysctl -qw net.ipv4.ip_forward=1

# The plugins, and one network config each.
ln -s "$W" "$work/bin/weir-cni"
for p in bridge host-local loopback; do ln -s "/usr/lib/cni/$p" "$work/bin/$p"; done
mkdir -p "$work/weir/net.d" "$work/bridge/net.d"
cat > "$work/weir/net.d/10-weir.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "weir", "plugins": [
  {"type": "weir-cni", "subnet": "10.80.0.0/24", "dataDir": "$work/weir/ipam", "agentSocket": "$work/agent.sock"}]}
JSON
cat > "$work/bridge/net.d/10-bridge.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "cnibridge", "plugins": [
  {"type": "bridge", "bridge": "wbench0", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.81.0.0/24"}]], "dataDir": "$work/bridge/ipam"}}]}
JSON
mkdir -p "$work/podman/net.d"
cp "$work/weir/net.d/10-weir.conflist" "$work/bridge/net.d/10-bridge.conflist" "$work/podman/net.d/"
cat > "$work/podman/containers.conf" <<TOML
[network]
network_backend = "cni"
cni_plugin_dirs = ["$work/bin"]
network_config_dir = "$work/podman/net.d"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
TOML

# The agent (pod path on), and containerd.
echo '[]' > "$work/pods.json"
nsenter --net="/run/netns/$host" "$W" agent --pin-dir "$pins" --state-dir "$work/state" --socket "$work/agent.sock" \
  --pods-file "$work/pods.json" --pod-routing --cluster-cidr 10.80.0.0/24 --interface uplink0 \
  --metrics-addr off --node bench --runtime false 2>"$work/agent.log" &
pids+=($!)
printf 'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n' > "$work/containerd/config.toml"
in_host containerd --config "$work/containerd/config.toml" --root "$work/containerd/root" \
  --state "$work/containerd/state" --address "$work/containerd/containerd.sock" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  "$W" policy list --socket "$work/agent.sock" >/dev/null 2>&1 && ctr_in weir version >/dev/null 2>&1 && break
  sleep 0.2
done
"$W" policy list --socket "$work/agent.sock" >/dev/null || { cat "$work/agent.log"; exit 1; }

now_ns() { date +%s%N; }
server_ip() { # NET ID: a ctr container's address on NET
  in_host nsenter -t "$(ctr_in "$1" task ls | awk -v id="$2" '$1 == id {print $2}')" -n \
    ip -4 -o addr show dev eth0 | awk '{sub("/.*", "", $4); print $4}'
}

# A server on each network: busybox httpd in a ctr container.
declare -A SERVER
for net in weir bridge; do
  ctr_in "$net" run -d --cni --rootfs "$ROOTFS" "srv-$net" /bin/busybox httpd -f -p 80 -h / >/dev/null
  SERVER[$net]=$(server_ip "$net" "srv-$net")
  echo "server on $net: ${SERVER[$net]}" >&2
done

# The client's command: retry every millisecond until answered, then say so.
# (podman passes the host's rlimits, which runc may not set here: as the tests do.)
LIMITS=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
probe() {
  # (busybox's own `wget -T` crashes in Debian 12's build: `timeout` bounds it.)
  echo "until /bin/busybox timeout 2 /bin/busybox wget -q -O /dev/null http://$1/etc/hostname 2>/dev/null; do /bin/busybox usleep 1000; done; echo up"
}
# The first line with the time it arrived: the runtime's teardown after the
# container exits (CNI DEL included) is waited for but not timed.
stamp_first() {
  local first
  IFS= read -r first
  echo "$first $(now_ns)"
  cat >/dev/null
}
# One trial: milliseconds from the run command to the container's "up".
start_ctr() {
  local net=$1 id=$2 t0 line
  t0=$(now_ns)
  read -r line t1 <<<"$(ctr_in "$net" run --rm --cni --rootfs "$ROOTFS" "$id" /bin/busybox sh -c "$(probe "${SERVER[$net]}")" | stamp_first)"
  [ "$line" = up ] || { echo "ctr run $id on $net: no answer" >&2; exit 1; }
  echo $(( (t1 - t0) / 1000000 ))
}
start_podman() {
  local net=$1 id=$2 t0 line
  t0=$(now_ns)
  # ("bridge" is podman's own default network's mode: the config is cnibridge.)
  read -r line t1 <<<"$(podman_in run --rm --network "${net/#bridge/cnibridge}" --runtime runc "${LIMITS[@]}" --name "$id" --rootfs "$ROOTFS" \
    /bin/busybox sh -c "$(probe "${SERVER[$net]}")" | stamp_first)"
  [ "$line" = up ] || { echo "podman run $id on $net: no answer" >&2; exit 1; }
  echo $(( (t1 - t0) / 1000000 ))
}
declare -A TIMES
for i in $(seq "$TRIALS"); do
  for net in weir bridge; do
    TIMES[ctr-$net]+="$(start_ctr "$net" "c$i-$net") "
    TIMES[podman-$net]+="$(start_podman "$net" "p$i-$net") "
  done
done
stats() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{v[NR]=$1} END {printf "%d %d", v[int((NR+1)/2)], v[NR]}'; }

# Request/response between two containers of each network.
for net in weir bridge; do
  for role in a b; do
    ctr_in "$net" run -d --cni --rootfs "$ROOTFS" "rr-$role-$net" /bin/busybox sleep 100000 >/dev/null
  done
done
pid_of() { ctr_in "$1" task ls | awk -v id="$2" '$1 == id {print $2}'; }
for net in weir bridge; do
  in_host nsenter -t "$(pid_of "$net" "rr-b-$net")" -n "$work/rr" server 7000 &
  pids+=($!)
done
sleep 0.5
declare -A RR
for r in $(seq "$ROUNDS"); do
  for streams in 1 8; do
    for net in weir bridge; do
      ip=$(server_ip "$net" "rr-b-$net")
      RR[$net-$streams]+="$(in_host nsenter -t "$(pid_of "$net" "rr-a-$net")" -n \
        "$work/rr" client "$ip" 7000 rr "$streams" "$SECONDS_EACH") "
    done
  done
done
median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

echo
echo "CNI: Weir (weir-cni + agent) against the bridge plugin, $TRIALS starts each, $ROUNDS rr rounds of ${SECONDS_EACH}s"
printf '%-44s %12s %12s %8s\n' "what" "weir" "bridge" "ratio"
for rt in ctr podman; do
  read -r w50 wmax <<<"$(stats <<<"${TIMES[$rt-weir]}")"
  read -r b50 bmax <<<"$(stats <<<"${TIMES[$rt-bridge]}")"
  printf '%-44s %9d ms %9d ms %8.2f\n' "$rt run to first answer, p50" "$w50" "$b50" "$(echo "$w50 / $b50" | bc -l)"
  printf '%-44s %9d ms %9d ms %8.2f\n' "$rt run to first answer, worst" "$wmax" "$bmax" "$(echo "$wmax / $bmax" | bc -l)"
done
for streams in 1 8; do
  w=$(median <<<"${RR[weir-$streams]}")
  b=$(median <<<"${RR[bridge-$streams]}")
  printf '%-44s %12.0f %12.0f %8.3f\n' "container-to-container rr/s, $streams stream(s)" "$w" "$b" "$(echo "$w / $b" | bc -l)"
done
