"""What the ClusterMesh benchmarks share: running `weir`, applying a
document to one cluster of a lab mesh, a cluster's lab record, what an
agent says of another cluster, and nearest-rank percentiles."""
import json
import os
import subprocess

# The weir binary: each driver sets it from its command line.
WEIR = "weir"


def weir(*args, check=True):
    out = subprocess.run([WEIR, *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise SystemExit(f"weir {' '.join(args)} failed: {out.stderr.strip()}")
    return out


def apply(cluster, yaml):
    """`weir apply --lab CLUSTER` of the YAML text."""
    path = f"/tmp/{cluster}.{os.getpid()}.svc.yaml"
    with open(path, "w") as f:
        f.write(yaml)
    try:
        weir("apply", "--lab", cluster, "-f", path)
    finally:
        os.unlink(path)


def plan(cluster):
    """The cluster's lab record (its nodes, pods, addresses)."""
    with open(f"/run/weir/labs/{cluster}/lab.json") as f:
        return json.load(f)


def remote(cluster, name):
    """What `cluster`'s first node says of cluster `name` (`weir clustermesh
    status -o json`), or {} while it cannot say."""
    out = weir("clustermesh", "status", "--lab", cluster, "-o", "json", check=False)
    try:
        return next((r for r in json.loads(out.stdout)[0]["remotes"] if r["name"] == name), {})
    except (ValueError, KeyError, IndexError):
        return {}


def pct(values, p):
    """The nearest-rank percentile p (0-1) of values."""
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(p * len(v) + 0.5)) - 1))]
