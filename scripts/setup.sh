#!/usr/bin/env bash
# Prepares this machine for Weir, idempotently: installs the Debian packages
# Weir builds and runs with, and mounts bpffs, tracefs and cgroup2 where they
# are missing. Sourced or run by demo.sh and test.sh; safe to run any time.
set -euo pipefail

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[setup] error:\033[0m %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: Weir loads eBPF programs and builds network namespaces"

# Everything Weir needs from Debian. Later capabilities append here.
PACKAGES=(
  clang-19 llvm-19 libbpf-dev libelf-dev zlib1g-dev pkg-config libpcap-dev
  bpftool iproute2 iputils-ping iperf3 tcpdump iptables nftables ethtool hping3
  etcd-server protobuf-compiler
  libprotobuf-dev  # google/protobuf/*.proto: protoc needs the well-known types (etcd-client, tonic)
  golang-go  # go tool pprof: the independent pprof reader in the profiler tests
  gcc libc6-dbg  # profiler tests: gcc's frameless leaves; libc's internal symbols (its debug file's symtab)
  qemu-system-x86 busybox-static  # scripts/vmtest.sh boots Debian's 6.1 and 6.12 kernels
  containernetworking-plugins  # the CNI tests delegate IPAM to its host-local (/usr/lib/cni)
  python3-grpcio python3-grpc-tools  # the Hubble API test generates a Python client from proto/hubble
  containerd runc crun podman mmdebstrap  # the CNI plugin under real runtimes; their containers' root filesystem
  bind9-dnsutils  # dig: the DNSChaos tests ask a lab pod's DNS server (Debian's dnsutils is transitional)
  wrk curl  # real HTTP clients of the XDP load balancer's tests
  chromium  # headless: the relay's service map page loaded and screenshotted (tests/hubble_ui.rs)
  openssl libssl3 python3  # HTTPS flows: OpenSSL probed in curl and a Python HTTPS server, certificates made by openssl req
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "Debian packages present"
fi
# Debian's etcd-server package starts a system etcd; Weir's tests start their own.
if systemctl is-active --quiet etcd 2>/dev/null; then systemctl disable --now etcd >/dev/null 2>&1 || true; fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || die "no Rust toolchain: install one with rustup (Rust 1.88 or newer); Debian's rustc is too old"

# The containers' root filesystem for the runtime tests: images cannot be
# pulled here, so one is built once from Debian's packages.
CONTAINER_ROOTFS=/var/cache/weir/rootfs-bookworm-v1
if [ ! -x "$CONTAINER_ROOTFS/bin/busybox" ]; then
  say "building the containers' root filesystem in $CONTAINER_ROOTFS (once, about a minute)"
  rm -rf "$CONTAINER_ROOTFS.tmp" && mkdir -p "$(dirname "$CONTAINER_ROOTFS")"
  mmdebstrap --quiet --variant=minbase --include=busybox --mode=root bookworm "$CONTAINER_ROOTFS.tmp" >/dev/null 2>&1 \
    || die "mmdebstrap could not build $CONTAINER_ROOTFS (is a Debian mirror reachable?)"
  mv "$CONTAINER_ROOTFS.tmp" "$CONTAINER_ROOTFS"
fi
export WEIR_CONTAINER_ROOTFS=$CONTAINER_ROOTFS

mounted() { awk -v t="$1" '$3 == t { found = 1 } END { exit !found }' /proc/mounts; }
mount_if_missing() { # fstype target
  if mounted "$1"; then return; fi
  mkdir -p "$2"
  mount -t "$1" "$1" "$2" && say "mounted $1 at $2"
}
mount_if_missing bpf /sys/fs/bpf
mount_if_missing tracefs /sys/kernel/tracing
mount_if_missing securityfs /sys/kernel/security || true
if ! mounted cgroup2; then
  # Beside a v1 hierarchy cgroup2 goes below it; on a bare host it is the root.
  if mounted cgroup; then mount_if_missing cgroup2 /sys/fs/cgroup/unified; else mount_if_missing cgroup2 /sys/fs/cgroup; fi
fi
say "cgroup2 at $(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts), bpffs at $(awk '$3 == "bpf" { print $2; exit }' /proc/mounts)"
