#!/usr/bin/env bash
# Benchmark: the XDP load balancer's per-packet cost through
# BPF_PROG_TEST_RUN (repeat 1, many runs, the kernel-reported time per call,
# as Katran's own tester times it), for a new flow (a SYN takes the Maglev
# ring) and an LRU hit, IPv4 and IPv6, a non-VIP packet, and a trivial
# XDP_PASS program in the same run. The figures are the kernel's, so the
# userspace build profile does not matter. Needs root.
# Usage: scripts/bench/xlb-cost.sh [RUNS_PER_ROUND] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh >/dev/null
cargo run -q -p weir-bpf --example xlb_cost -- "${1:-100000}" "${2:-9}"
