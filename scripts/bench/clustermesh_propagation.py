"""Driver of scripts/bench/clustermesh-propagation.sh (see there).

Usage: clustermesh_propagation.py WEIR MESH SERVICES CHANGES
The mesh MESH (clusters MESHa, MESHb, MESHc) must not exist; the caller
takes it down.
"""
import base64
import json
import re
import os
import subprocess
import sys
import time

import meshlab
from meshlab import apply, pct, weir, plan

WEIR, MESH, SERVICES, CHANGES = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
meshlab.WEIR = WEIR
# Backends per service in each cluster (addresses may repeat across services).
ENDPOINTS = int(sys.argv[5]) if len(sys.argv) > 5 else 1
CLUSTERS = [MESH + c for c in "abc"]
MESH_FILE = f"/tmp/{MESH}.mesh.yaml"
TICK = os.sysconf("SC_CLK_TCK")




def mesh_yaml():
    clusters = ""
    for i, c in enumerate(CLUSTERS):
        clusters += f"""    - name: {c}
      id: {i + 1}
      spec:
        routing: kernel
        nodes:
          - {{name: {c}-a, podCIDR: 10.{244 + i}.0.0/24}}
        namespaces: [{{name: bench}}]
        pods:
          - {{name: client, namespace: bench, node: {c}-a}}
"""
    return f"""apiVersion: weir.dev/v1alpha1
kind: ClusterMesh
metadata:
  name: {MESH}
spec:
  clusters:
{clusters}"""


def backend(cluster_index, svc, extra=0):
    return f"10.{244 + cluster_index}.0.{(svc + extra) % 240 + 10}"


def service(cluster_index, svc, extra_backend=False):
    cluster = CLUSTERS[cluster_index]
    eps = "".join(
        f"- {{addresses: [{backend(cluster_index, svc * ENDPOINTS, k)}], nodeName: {cluster}-a, conditions: {{ready: true}}}}\n"
        for k in range(ENDPOINTS)
    )
    if extra_backend:
        eps += f"- {{addresses: [10.{244 + cluster_index}.0.250], nodeName: {cluster}-a, conditions: {{ready: true}}}}\n"
    return f"""---
apiVersion: v1
kind: Service
metadata:
  name: svc-{svc}
  namespace: bench
  annotations: {{service.cilium.io/global: "true", weir.dev/health-check: none}}
spec:
  clusterIP: 10.96.{svc // 250}.{svc % 250 + 1}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: svc-{svc}-1, namespace: bench, labels: {{kubernetes.io/service-name: svc-{svc}}}}}
addressType: IPv4
ports: [{{protocol: TCP, port: 8080}}]
endpoints:
{eps}"""






def etcd(cluster):
    """(netns, url, pid) of the cluster's etcd."""
    node = plan(cluster)["nodes"][0]
    with open(f"/run/weir/labs/{cluster}/etcd.pid") as f:
        pid = int(f.read().strip())
    return node["netns"], f"http://{node['address']}:2379", pid


def etcd_load(cluster):
    """Keys, watch events sent, and CPU seconds (user+system) of the cluster's etcd now."""
    netns, url, pid = etcd(cluster)
    every = base64.b64encode(b"\0").decode()
    body = json.dumps({"key": every, "range_end": every, "count_only": True})
    keys = subprocess.run(["ip", "netns", "exec", netns, "curl", "-s", "-X", "POST", f"{url}/v3/kv/range", "-d", body],
                          capture_output=True, text=True).stdout
    keys = int(json.loads(keys).get("count", 0))
    metrics = subprocess.run(["ip", "netns", "exec", netns, "curl", "-s", f"{url}/metrics"],
                             capture_output=True, text=True).stdout
    counters = {"events": 0, "ranges": 0, "puts": 0}
    names = {"etcd_debugging_mvcc_events_total": "events", "etcd_mvcc_range_total": "ranges",
             "etcd_debugging_mvcc_range_total": "ranges", "etcd_mvcc_put_total": "puts",
             "etcd_debugging_mvcc_put_total": "puts"}
    for line in metrics.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            counters[names[name]] = int(float(value))
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    return keys, counters, cpu


def remote_services(cluster, name):
    r = meshlab.remote(cluster, name)
    return r.get("globalServices", 0), r.get("backends", 0)


def applied(cluster, name):
    """(revision, unix ns) of `name`'s store that `cluster`'s node last merged into its tables."""
    r = meshlab.remote(cluster, name)
    return r.get("appliedRevision", 0), r.get("appliedUnixNs", 0)


def wait(what, cond, deadline=600):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def holds(cluster, svc, address):
    out = weir("service", "get", "--lab", cluster, f"bench/svc-{svc}", "-o", "json", check=False)
    return f'"{address}"' in out.stdout


def load_table(title, before, after):
    print(f"{title}:")
    print(f"  {'cluster':<14} {'keys':>7} {'watch events sent':>18} {'ranges':>7} {'puts':>6} {'cpu s':>7}")
    for c in CLUSTERS:
        (_, m0, c0), (k1, m1, c1) = before[c], after[c]
        d = {k: m1[k] - m0[k] for k in m1}
        print(f"  {c:<14} {k1:>7} {d['events']:>18} {d['ranges']:>7} {d['puts']:>6} {c1 - c0:>7.2f}")


def main():
    with open(MESH_FILE, "w") as f:
        f.write(mesh_yaml())
    t = time.monotonic()
    weir("lab", "up", "-f", MESH_FILE, "--agent-log-level", os.environ.get("AGENT_LOG_LEVEL", "info"))
    print(f"mesh of 3 clusters up in {time.monotonic() - t:.1f} s", flush=True)
    idle = {c: etcd_load(c) for c in CLUSTERS}

    t = time.monotonic()
    for i, c in enumerate(CLUSTERS):
        apply(c, "".join(service(i, s) for s in range(SERVICES)))
    load_time = time.monotonic() - t
    for c in CLUSTERS:
        for r in CLUSTERS:
            if r != c:
                wait(f"{c} to merge {r}'s services",
                     lambda: remote_services(c, r) == (SERVICES, SERVICES * ENDPOINTS))
    print(f"{SERVICES} global services of {ENDPOINTS} endpoint(s) each applied in each cluster in {load_time:.1f} s; "
          f"every cluster held the others' {time.monotonic() - t:.1f} s after the first apply", flush=True)
    loaded = {c: etcd_load(c) for c in CLUSTERS}
    load_table(f"etcd during the load of {SERVICES} services x 3 clusters", idle, loaded)

    exact, after_return = [], []
    others = CLUSTERS[1:]

    def merged_past(revision):
        """Waits until both other clusters' tables took a revision of the
        first cluster's store past `revision`; returns their map-write times.
        Asks `weir clustermesh status`, which does not hold the service
        table's lock (polling `weir service get` did, and delayed the merge
        it was waiting for)."""
        end = time.monotonic() + 60
        while time.monotonic() < end:
            writes = [applied(c, CLUSTERS[0]) for c in others]
            if all(rev > revision for rev, _ in writes):
                return [at for _, at in writes]
            time.sleep(0.01)
        raise SystemExit(f"the other clusters never took a revision past {revision}: {writes}")

    def apply_returning_revision(yaml):
        path = f"/tmp/{MESH}.change.yaml"
        with open(path, "w") as f:
            f.write(yaml)
        started = time.time_ns()
        out = subprocess.run([WEIR, "apply", "--lab", CLUSTERS[0], "-f", path], check=True, capture_output=True,
                             text=True).stdout
        returned = time.time_ns()
        os.unlink(path)
        # The change's transaction; the first cluster's agent then shares the
        # service at a later revision, which the others' tables take.
        return started, returned, int(re.search(r"revision (\d+)", out).group(1))

    for n in range(CHANGES):
        svc = (n * 37) % SERVICES
        address = "10.244.0.250"
        started, returned, committed = apply_returning_revision(service(0, svc, extra_backend=True))
        last_write = max(merged_past(committed))
        exact.append((last_write - started) / 1e6)
        after_return.append((last_write - returned) / 1e6)
        for c in others:
            if not holds(c, svc, address):
                raise SystemExit(f"{c} took the change but does not hold the added backend of bench/svc-{svc}")
        print(f"change {n + 1}/{CHANGES} (bench/svc-{svc}): in both other clusters' tables "
              f"{exact[-1]:.1f} ms after `weir apply` started, {after_return[-1]:+.1f} ms from its return", flush=True)
        # Back to one backend, taken by both, before the next change.
        _, _, undone = apply_returning_revision(service(0, svc))
        merged_past(undone)
        for c in others:
            if holds(c, svc, address):
                raise SystemExit(f"{c} took the undo but still holds the added backend of bench/svc-{svc}")
    changed = {c: etcd_load(c) for c in CLUSTERS}
    load_table(f"etcd during the {CHANGES} changes (and their undoing)", loaded, changed)
    print()
    print("to the last other cluster's map write (each agent's appliedUnixNs), "
          f"{len(exact)} of {CHANGES} changes (goal: p99 < 100 ms from `weir apply` returning):")
    if exact:
        print(f"  from `weir apply` starting (its whole run included): p50 {pct(exact, .5):.1f} ms   "
              f"p99 {pct(exact, .99):.1f} ms   max {max(exact):.1f} ms")
        print(f"  from `weir apply` returning (negative: before it returned): p50 {pct(after_return, .5):+.1f} ms   "
              f"p99 {pct(after_return, .99):+.1f} ms   max {max(after_return):+.1f} ms")
    os.unlink(MESH_FILE)


main()
