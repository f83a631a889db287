#!/usr/bin/env bash
# Benchmark: the packet filter's cost per packet against a trivial XDP
# program and a floor program (parse + one hash lookup), at 10k rules of one
# shape and over 16 shapes, miss and hit, from one run of BPF_PROG_TEST_RUN
# with interleaved rounds. Run as root.
# Usage: scripts/bench/filter-cost.sh [REPEAT] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh >/dev/null
cargo run --release -p weir-bpf --example filter_cost --locked -q -- "$@"
