#!/usr/bin/env bash
# Benchmark: what chaos costs a pod's packet on the node datapath's tc
# ingress (the sending pod's veth, an established TCP flow to a local pod),
# through BPF_PROG_TEST_RUN with interleaved rounds: the build without chaos
# (-DWEIR_NO_CHAOS), the shipped build with no experiment (goal <= 1.02x),
# and with a 30% loss experiment between other pods (goal <= 1.05x for the
# untargeted packet); also a selected pod's packet to an unselected one.
# The figures are the kernel's; run on a quiet machine. Needs root.
# Usage: scripts/bench/chaos-cost.sh [CALLS_PER_ROUND] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh >/dev/null
cargo run --release -p weir-bpf --example chaos_cost --locked -q -- "$@"
