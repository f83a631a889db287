#!/usr/bin/env python3
"""A steady HTTP client for the demo's chaos step.

    demo-load.py ADDRESS PORT SECONDS

One new TCP connection per request (so the socket load balancer picks a
backend each time), a request every 50 ms for SECONDS, each given 2 s. It
prints what a user of the service saw: requests, failures by kind,
latency percentiles, and which backend answered how often.
"""
import socket
import sys
import time
from collections import Counter

PACE = 0.05
TIMEOUT = 2.0


def request(address, port):
    """One GET; returns the backend's answer line, or raises."""
    with socket.create_connection((address, port), timeout=TIMEOUT) as conn:
        conn.settimeout(TIMEOUT)
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := conn.recv(4096):
            reply += chunk
    lines = reply.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "(empty reply)"


def percentile(sorted_ms, share):
    return sorted_ms[min(len(sorted_ms) - 1, int(share * len(sorted_ms)))]


def main():
    address, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    latencies, answered, failed = [], Counter(), Counter()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        start = time.monotonic()
        try:
            answered[request(address, port).removeprefix("hello from ")] += 1
            latencies.append((time.monotonic() - start) * 1000)
        except socket.timeout:
            failed["timed out"] += 1
        except OSError as error:
            failed[error.strerror or type(error).__name__] += 1
        time.sleep(max(0.0, PACE - (time.monotonic() - start)))
    total = len(latencies) + sum(failed.values())
    lost = sum(failed.values())
    print(f"   {total} requests, {lost} failed ({100 * lost / max(total, 1):.0f}%)"
          + "".join(f", {n} {kind}" for kind, n in failed.most_common()))
    if latencies:
        ms = sorted(latencies)
        print(f"   latency p50 {percentile(ms, 0.5):.1f} ms, p90 {percentile(ms, 0.9):.1f} ms,"
              f" p99 {percentile(ms, 0.99):.1f} ms, max {ms[-1]:.1f} ms")
    print("   answered by: " + ", ".join(f"{who} {n}" for who, n in answered.most_common()))


if __name__ == "__main__":
    main()
