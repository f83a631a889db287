#!/usr/bin/env bash
# Benchmark: propagation of a global-service change across a ClusterMesh,
# and the load it puts on each cluster's etcd. Three clusters of one node;
# SERVICES global Services (a ClusterIP, one endpoint each, no health check)
# applied in each cluster, each cluster then holding the other two's
# backends. Then CHANGES times: one backend added to one service in the
# first cluster (and undone after); the time until both other clusters'
# tables hold it: exactly, from each agent's own record of the merge's map
# write (`weir clustermesh status`: appliedRevision, appliedUnixNs),
# measured from `weir apply` starting and from its return (then checked
# once with `weir service get`: polling it would hold the table's lock). Also prints, per cluster's etcd, its keys,
# watch events sent (etcd_debugging_mvcc_events_total), ranges and puts
# served (etcd_mvcc_range_total, etcd_mvcc_put_total) and CPU time
# (utime+stime from /proc) during the load and during the changes.
# Usage: scripts/bench/clustermesh-propagation.sh [SERVICES] [CHANGES] [ENDPOINTS]
#   (default: 1000 20 5: 1,000 services of 5 endpoints, 5,000 endpoints per cluster)
# WEIR=path/to/weir uses that binary instead of building a release one.
set -euo pipefail
cd "$(dirname "$0")/../.."
SERVICES=${1:-1000}
CHANGES=${2:-20}
ENDPOINTS=${3:-5}
if [ -z "${WEIR:-}" ]; then
  source scripts/setup.sh >/dev/null
  cargo build --release -p weir --locked -q
  WEIR=${CARGO_TARGET_DIR:-$PWD/target}/release/weir
fi
MESH=bcp$(( $$ % 100000 ))
cleanup() { "$WEIR" lab down "$MESH" >/dev/null 2>&1 || true; rm -f "/tmp/$MESH".*; }
trap cleanup EXIT
trap 'exit 130' INT TERM
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 scripts/bench/clustermesh_propagation.py "$WEIR" "$MESH" "$SERVICES" "$CHANGES" "$ENDPOINTS"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
