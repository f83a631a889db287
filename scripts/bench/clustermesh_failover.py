"""Driver of scripts/bench/clustermesh-failover.sh (see there).

Usage: clustermesh_failover.py WEIR MESH TRIALS KINDS
The mesh MESH (clusters MESHe, MESHw) must not exist; the caller takes it
down. Prints one line per trial and p50/p99 per kind.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import meshlab
from meshlab import apply, pct, plan, weir

WEIR, MESH, TRIALS, KINDS = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split(",")
meshlab.WEIR = WEIR
EAST, WEST = MESH + "e", MESH + "w"
VIP, PORT = "10.96.0.50", 8080
HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT = os.path.join(HERE, "../../crates/weir/tests/fixtures/paced_client.py")
GOALS = {"deletion": 0.1, "process-death": 1.0, "partition": 3.0, "cluster-loss": 3.0}
MESH_FILE = f"/tmp/{MESH}.mesh.yaml"

SERVER = """import os, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(128)
print("ready pid=%d" % os.getpid(), flush=True)
name = sys.argv[3].encode()
while True:
    c, _ = s.accept()
    try:
        c.sendall(name)
    except OSError:
        pass
    c.close()
"""




def mesh_yaml():
    return f"""apiVersion: weir.dev/v1alpha1
kind: ClusterMesh
metadata:
  name: {MESH}
spec:
  clusters:
    - name: {EAST}
      id: 1
      spec:
        routing: kernel
        nodes:
          - {{name: {EAST}-a, podCIDR: 10.244.0.0/24}}
        namespaces: [{{name: shop}}]
        pods:
          - {{name: client, namespace: shop, node: {EAST}-a}}
          - {{name: api, namespace: shop, node: {EAST}-a}}
    - name: {WEST}
      id: 2
      spec:
        routing: kernel
        nodes:
          - {{name: {WEST}-a, podCIDR: 10.245.0.0/24}}
        namespaces: [{{name: shop}}]
        pods:
          - {{name: api, namespace: shop, node: {WEST}-a}}
"""


def service(cluster, ip):
    eps = f"\n  - {{addresses: [{ip}], nodeName: {cluster}-a, conditions: {{ready: true}}}}" if ip else " []"
    return f"""apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: shop
  annotations:
    service.cilium.io/global: "true"
spec:
  clusterIP: {VIP}
  ports:
  - {{port: 80, targetPort: {PORT}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: api-1
  namespace: shop
  labels: {{kubernetes.io/service-name: api}}
addressType: IPv4
ports:
  - {{protocol: TCP, port: {PORT}}}
endpoints:{eps}
"""




def api_pod(cluster):
    """(address, network namespace) of `cluster`'s shop/api pod, from its lab record."""
    for pod in plan(cluster)["pods"]:
        if pod["namespace"] == "shop" and pod["name"] == "api":
            return pod["ip"], pod["netns"]
    raise SystemExit(f"no shop/api pod in {cluster}")


def fabric_port(cluster):
    """(fabric port, fabric netns) of `cluster`'s first node."""
    record = plan(cluster)
    return record["nodes"][0]["fabric_port"], record["fabric_netns"]


class Server:
    """A backend process in the network namespace of `cluster`'s shop/api pod,
    answering with the cluster's name. Not in the pod's cgroup: `weir lab
    down` of its cluster then takes its network away without killing it, so
    the cluster vanishes as a lost one does (nothing refuses; requests to it
    are blackholed) instead of refusing as its pods are stopped."""

    def __init__(self, cluster):
        ip, netns = api_pod(cluster)
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{netns}", "python3", "-c", SERVER, ip, str(PORT), cluster],
            stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("ready pid="):
            raise SystemExit(f"server in {cluster} did not start: {line!r}")
        self.pid = int(line.split("=")[1])

    def kill(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


class Client:
    def __init__(self):
        self.log = {}
        self.lock = threading.Lock()
        with open(CLIENT) as f:
            script = f.read()
        self.proc = subprocess.Popen(
            [WEIR, "lab", "exec", "--lab", EAST, "shop/client", "--", "python3", "-c", script, VIP, "80", "0.01", "1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            r = json.loads(line)
            with self.lock:
                self.log[r["seq"]] = r

    def next_seq(self):
        with self.lock:
            return max(self.log, default=-1) + 1

    def gapless(self, begin):
        with self.lock:
            out, s = [], begin
            while s in self.log:
                out.append(self.log[s])
                s += 1
            return out

    def wait_both(self, begin, deadline=120):
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            seen = {r["who"] for r in self.gapless(begin) if r["ok"]}
            if {EAST, WEST} <= seen:
                return
            time.sleep(0.05)
        raise SystemExit("the client never reached both clusters")

    def failover(self, begin, event_ns, good, run=100, deadline=120):
        """Waits until `run` requests in a row from `begin` on were answered by
        `good`; returns (seconds from event to the first good answer after the
        last bad one, failed requests)."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            reqs = self.gapless(begin)
            bad = [i for i, r in enumerate(reqs) if not (r["ok"] and r["who"] == good)]
            last_bad = bad[-1] if bad else -1
            if len(reqs) - (last_bad + 1) >= run:
                first_good = reqs[last_bad + 1]
                fails = {}
                for r in reqs:
                    if not r["ok"]:
                        fails[r["who"]] = fails.get(r["who"], 0) + 1
                return max(0.0, (first_good["sent"] - event_ns) / 1e9), fails
            time.sleep(0.05)
        raise SystemExit(f"the client never settled on {good}")

    def stop(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except Exception:
            self.proc.kill()




def main():
    with open(MESH_FILE, "w") as f:
        f.write(mesh_yaml())
    weir("lab", "up", "-f", MESH_FILE)
    (east_ip, _), (west_ip, _) = api_pod(EAST), api_pod(WEST)
    servers = {EAST: Server(EAST), WEST: Server(WEST)}
    apply(WEST, service(WEST, west_ip))
    apply(EAST, service(EAST, east_ip))
    client = Client()
    unknown = [k for k in KINDS if k not in GOALS]
    if unknown:
        raise SystemExit(f"unknown kind(s) {unknown}: choose among {', '.join(GOALS)}")
    results = {k: [] for k in KINDS}
    try:
        client.wait_both(0)
        for kind in KINDS:
            for trial in range(TRIALS):
                t0 = time.monotonic()
                begin = client.next_seq()
                if kind == "deletion":
                    apply(WEST, service(WEST, None))
                    event = time.time_ns()
                    took, fails = client.failover(begin, event, EAST)
                    restore = client.next_seq()
                    apply(WEST, service(WEST, west_ip))
                elif kind == "process-death":
                    event = time.time_ns()
                    servers[EAST].kill()
                    took, fails = client.failover(begin, event, WEST)
                    restore = client.next_seq()
                    servers[EAST] = Server(EAST)
                elif kind == "partition":
                    port, fabric = fabric_port(WEST)
                    event = time.time_ns()
                    subprocess.run(["ip", "-n", fabric, "link", "set", port, "down"], check=True)
                    took, fails = client.failover(begin, event, EAST)
                    restore = client.next_seq()
                    subprocess.run(["ip", "-n", fabric, "link", "set", port, "up"], check=True)
                elif kind == "cluster-loss":
                    event = time.time_ns()
                    weir("lab", "down", WEST)
                    servers[WEST].kill()
                    took, fails = client.failover(begin, event, EAST)
                    restore = client.next_seq()
                    weir("lab", "up", "-f", MESH_FILE)
                    west_ip, _ = api_pod(WEST)
                    servers[WEST] = Server(WEST)
                    apply(WEST, service(WEST, west_ip))
                client.wait_both(restore)
                results[kind].append(took)
                print(f"{kind} trial {trial + 1}/{TRIALS}: failover {took * 1000:.0f} ms, "
                      f"{sum(fails.values())} failed request(s) {fails or ''}, trial took {time.monotonic() - t0:.1f} s", flush=True)
    finally:
        client.stop()
        for s in servers.values():
            s.kill()
        os.unlink(MESH_FILE)
    print()
    print(f"{'kind':<15} {'trials':>6} {'p50':>9} {'p99':>9}   goal")
    for kind in KINDS:
        v = results[kind]
        print(f"{kind:<15} {len(v):>6} {pct(v, .5) * 1000:>7.0f}ms {pct(v, .99) * 1000:>7.0f}ms   < {GOALS[kind] * 1000:.0f} ms")


main()
