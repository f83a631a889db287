#!/usr/bin/env bash
# Runs every Weir test: formatting, lints, unit tests, BPF_PROG_TEST_RUN
# fixtures, and the privileged integration tests that build real labs.
# With CI=true a privileged test that cannot run fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
start=$(date +%s)

step "build"
cargo build --workspace --all-targets --locked

step "rustfmt"
cargo fmt --all --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests (unit, fixtures, privileged lab and agent tests)"
# Every name a test makes ends with this run's tag, so the leftovers step
# judges only this run's labs, not those someone else brings up meanwhile.
export WEIR_TEST_RUN="t$(od -An -N2 -tx1 /dev/urandom | tr -d ' \n' | cut -c1-3)"
# The binaries run several at a time (most of their time is spent waiting on
# labs), longest first by the last run's durations; WEIR_TEST_JOBS sets how
# many (default 3).
cargo test --workspace --locked --no-run --message-format=json-render-diagnostics > target/test-binaries.json
# The qemu kernels (step "kernels" below) boot now, beside the test binaries,
# at the lowest CPU priority: TCG is all CPU, the lab tests mostly wait, so
# the VMs take the cycles the labs leave idle instead of 7 minutes of their own.
# Everything they need was built above; their report is printed in its step.
# A process group of their own, stopped with the run however it ends (an
# interrupted run would otherwise leave qemu running for half an hour).
setsid -w nice -n 19 bash scripts/vmtest.sh > target/vmtest.log 2>&1 &
vmtest_pid=$!
trap 'kill -- -"$vmtest_pid" 2>/dev/null || true' EXIT
set +e
python3 scripts/run-test-binaries.py "${WEIR_TEST_JOBS:-3}" target/test-durations.json \
  < target/test-binaries.json 2>&1 | tee target/test.log
status=${PIPESTATUS[0]}
cargo test --workspace --locked --doc 2>&1 | tee -a target/test.log
doc_status=${PIPESTATUS[0]}
set -e
[ "$doc_status" = 0 ] || status=$doc_status
passed=$(grep -Eo '^test result: [a-z]+\. [0-9]+ passed' target/test.log | awk '{s += $4} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed' target/test.log | awk '{s += $1} END {print s + 0}')
skipped=$(grep -c '^SKIPPED' target/test.log || true)

step "kernels: Debian's 6.1 and 6.12 under qemu (probe and datapath fixtures)"
set +e
wait "$vmtest_pid"
vm_status=$?
set -e
cat target/vmtest.log
[ "$vm_status" = 0 ] || status=$vm_status
vm_passed=$(grep -c '^vmtest: kernel .* passed' target/vmtest.log || true)
vm_failed=$(grep -c '^vmtest: kernel .* FAILED' target/vmtest.log || true)
passed=$((passed + vm_passed))
failed=$((failed + vm_failed))

step "leftovers"
leftover=$(ip netns list | awk -v tag="$WEIR_TEST_RUN" '$1 ~ "^weir\\.[^.]*" tag "\\." {print $1}')
[ -z "$leftover" ] || { echo "tests left network namespaces behind:"; echo "$leftover"; exit 1; }

echo
echo "weir tests: $passed passed, $failed failed, $skipped skipped in $(( $(date +%s) - start )) s"
exit "$status"
