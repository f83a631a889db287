#!/usr/bin/env python3
"""Runs the workspace's test binaries several at a time.

`cargo test` runs one test binary after another, and most of Weir's binaries
spend their time waiting on labs, agents and containers rather than on a CPU:
run one at a time, the suite takes the sum of its binaries' times. This runs
them JOBS at a time instead, longest first (by the durations the last run
recorded, else privileged lab tests first), with each binary's own tests still
run in parallel by its harness.

Reads cargo's JSON messages (`cargo test --no-run --message-format=json`) on
stdin. Each binary runs as cargo would run it: from its package's directory,
with CARGO_MANIFEST_DIR set. Its whole output is printed
once it ends, after a `Running` line as cargo prints it, so the output of one
binary is never interleaved with another's. Exit status: 0 if every binary
passed, else 101 (cargo test's).

Usage: cargo test --workspace --no-run --message-format=json | run-test-binaries.py JOBS DURATIONS_FILE
"""

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor


def test_binaries(messages):
    """(display name, executable, package dir) of each test binary."""
    seen = set()
    for line in messages:
        line = line.strip()
        if not line.startswith("{"):
            continue
        message = json.loads(line)
        if message.get("reason") != "compiler-artifact" or not message.get("profile", {}).get("test"):
            continue
        executable = message.get("executable")
        if not executable or executable in seen:
            continue
        seen.add(executable)
        package_dir = os.path.dirname(message["manifest_path"])
        target = message["target"]
        kind = target["kind"][0]
        source = os.path.relpath(target["src_path"], package_dir)
        name = f"tests/{target['name']}.rs" if kind == "test" and source.startswith("tests/") else (
            "unittests " + source)
        yield name, executable, package_dir


def main():
    jobs = int(sys.argv[1])
    durations_file = sys.argv[2]
    try:
        with open(durations_file) as f:
            durations = json.load(f)
    except (OSError, ValueError):
        durations = {}

    binaries = list(test_binaries(sys.stdin))
    if not binaries:
        print("run-test-binaries: cargo listed no test binaries", file=sys.stderr)
        return 101

    def expected(binary):
        name, _, package_dir = binary
        key = f"{os.path.basename(package_dir)}/{name}"
        if key in durations:
            return durations[key]
        # Never timed: integration tests (labs, agents) before unit tests.
        return 1000.0 if name.startswith("tests/") else 0.0

    binaries.sort(key=expected, reverse=True)

    print_lock = threading.Lock()
    results = {}

    def run(binary):
        name, executable, package_dir = binary
        env = dict(os.environ, CARGO_MANIFEST_DIR=package_dir)
        started = time.monotonic()
        done = subprocess.run([executable], cwd=package_dir, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        took = time.monotonic() - started
        key = f"{os.path.basename(package_dir)}/{name}"
        results[key] = (done.returncode, took)
        with print_lock:
            sys.stdout.write(f"     Running {name} ({os.path.relpath(executable)}) [{took:.1f} s]\n")
            sys.stdout.flush()
            sys.stdout.buffer.write(done.stdout)
            if done.returncode != 0:
                sys.stdout.write(f"error: {os.path.basename(package_dir)}: {name} failed (exit {done.returncode})\n")
            sys.stdout.flush()

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(run, binaries))

    durations.update({key: took for key, (_, took) in results.items()})
    os.makedirs(os.path.dirname(os.path.abspath(durations_file)), exist_ok=True)
    with open(durations_file, "w") as f:
        json.dump(durations, f, indent=1, sort_keys=True)

    failed = sorted(key for key, (status, _) in results.items() if status != 0)
    if failed:
        print("\nbinaries that failed: " + ", ".join(failed))
        return 101
    return 0


if __name__ == "__main__":
    sys.exit(main())
