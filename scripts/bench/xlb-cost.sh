#!/usr/bin/env bash
# Benchmark: the XDP load balancer's per-packet cost through
# BPF_PROG_TEST_RUN (repeat 1, many runs, the kernel-reported time per call,
# as Katran's own tester times it), for a new flow (a SYN takes the Maglev
# ring) and an LRU hit, IPv4 and IPv6, and a non-VIP packet, beside a
# Katran-equivalent baseline (bpf/progs/xlb_baseline.bpf.c, benchmark only)
# and a trivial XDP_PASS program, rounds interleaved; prints Weir/baseline
# ratios. The figures are the kernel's, so the userspace build profile does
# not matter. Needs root. See docs/lb.md, "Cost".
# Usage: scripts/bench/xlb-cost.sh [RUNS_PER_ROUND] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh >/dev/null
cargo run -q -p weir-bpf --example xlb_cost -- "${1:-100000}" "${2:-9}"
