#!/usr/bin/env python3
"""An x-wing asking a service, for the demo's ClusterMesh step.

    demo-xwing.py ADDRESS PORT COUNT

COUNT HTTP GETs, one new TCP connection each (so the socket load balancer
picks a backend each time), each given 2 s. Prints how many times each
answer came back (the last line of the reply), and each kind of failure as
`failed: <error>`, one line each, most frequent first.
"""
import socket
import sys
from collections import Counter

TIMEOUT = 2.0


def request(address, port):
    with socket.create_connection((address, port), timeout=TIMEOUT) as conn:
        conn.settimeout(TIMEOUT)
        conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := conn.recv(4096):
            reply += chunk
    lines = reply.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "failed: empty reply"


def main():
    address, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    answers = Counter()
    for _ in range(count):
        try:
            answers[request(address, port)] += 1
        except OSError as e:
            answers[f"failed: {type(e).__name__}"] += 1
    for answer, n in answers.most_common():
        print(f"{n:5}  {answer}")


if __name__ == "__main__":
    main()
