#!/usr/bin/env bash
# Benchmark: ClusterMesh failover time under load. A mesh of two clusters
# (one node each) with a global Service `shop/api` whose backends are a
# process in each cluster answering with its cluster's name; a client pod of
# the first cluster sends a request (new TCP connection, read the name,
# 1 s timeout) every 10 ms (crates/weir/tests/fixtures/paced_client.py).
# For each kind of event, TRIALS times: the failover time is from the event
# to the first request answered by the surviving cluster after the last one
# that failed or was answered by the cluster going away (its send time):
#  - deletion: the second cluster's backend leaves its EndpointSlice (from
#    `weir apply` returning), goal < 100 ms;
#  - process-death: the first cluster's backend process is SIGKILLed (from
#    the kill), goal < 1 s;
#  - partition: the second cluster's node cut off the fabric (its bridge
#    port down, from the command starting): its etcd, node and backend
#    blackholed, nothing refuses, so this is the agent's loss detection
#    alone; goal < 3 s (as a lost cluster); restored by the port up;
#  - cluster-loss: `weir lab down` of the second cluster (from the command
#    starting), goal < 3 s. The backend processes run in their pods'
#    network namespaces but not their cgroups, so `lab down` does not stop
#    them first: the cluster vanishes and requests to it are blackholed
#    until the loss is found (or a refusal or ICMP error seen on the way
#    down steers the node earlier). Each trial brings the cluster back
#    (`weir lab up -f` of the mesh, its Service applied, its server
#    started): about 4-5 s a trial on a debug build at load 3-5 on 2 cores.
# After each event the client must answer from one cluster 100 times in a
# row (1 s) before the next; the state is then restored and both clusters
# must answer again. Prints each trial, then p50/p99 per kind (nearest rank;
# with 20 trials p99 is the worst).
# Usage: scripts/bench/clustermesh-failover.sh [TRIALS] [KINDS]
#   (default: 20 deletion,process-death,partition,cluster-loss)
# WEIR=path/to/weir uses that binary instead of building a release one.
set -euo pipefail
cd "$(dirname "$0")/../.."
TRIALS=${1:-20}
KINDS=${2:-deletion,process-death,partition,cluster-loss}
if [ -z "${WEIR:-}" ]; then
  source scripts/setup.sh >/dev/null
  cargo build --release -p weir --locked -q
  WEIR=${CARGO_TARGET_DIR:-$PWD/target}/release/weir
fi
MESH=bcf$(( $$ % 100000 ))
cleanup() { "$WEIR" lab down "$MESH" >/dev/null 2>&1 || true; rm -f "/tmp/$MESH.mesh.yaml"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 scripts/bench/clustermesh_failover.py "$WEIR" "$MESH" "$TRIALS" "$KINDS"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
