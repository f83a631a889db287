#!/usr/bin/env bash
# Benchmark: the load balancer following a change, p50 and p99 over many
# runs: the weighted Maglev table of 1,000 reals (65,537 slots), and a VIP
# change applied end to end (a real in or out: plan, diff, map writes) on a
# private copy of the datapath. Userspace time: the crates doing the work
# are built optimized (in the dev target, instead of a whole release build).
# Needs root.
# Usage: scripts/bench/xlb-update.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/setup.sh >/dev/null
cargo run -q -p weir-bpf --example xlb_update \
  --config 'profile.dev.package.weir-service.opt-level=3' \
  --config 'profile.dev.package.weir-lb.opt-level=3' \
  --config 'profile.dev.package.weir-bpf.opt-level=3' \
  -- "${1:-200}"
