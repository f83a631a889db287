//! Reading another cluster's etcd, read-only: its nodes, pods, identities
//! and global services.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use etcd_client::{Client, GetOptions, WatchOptions};
use ipnet::Ipv4Net;
use weir_policy::identity::cluster_of;
use weir_service::k8s::EndpointSlice;
use weir_service::ObjectKey;

use super::liveness::{AwaySince, ETCD_TIMEOUT, HEARTBEAT};
use super::routes::apply;
use super::status::{write_status, RemoteState};
use super::{
    connect, labels_in_cluster, Learned, MeshContext, MeshNode, MeshService, RemotePod, ENDPOINTS, IDENTITY_LABELS,
    NODES, RETRY, SERVICES, SYNCED,
};
use crate::pods::PodRecord;

/// A remote cluster's shared services, by namespace and name: those whose
/// key and value agree and whose slices are valid; the others are logged.
fn remote_services(
    cluster: &str,
    kvs: &[etcd_client::KeyValue],
    theirs: &[Ipv4Net],
) -> BTreeMap<ObjectKey, Vec<EndpointSlice>> {
    let mut out = BTreeMap::new();
    for kv in kvs {
        let key = kv.key_str().unwrap_or_default();
        let service: MeshService = match serde_json::from_slice(kv.value()) {
            Ok(service) => service,
            Err(e) => {
                tracing::warn!(cluster, key, error = %e, "a remote global service is not what weir publishes; ignored");
                continue;
            }
        };
        let problem = if service.cluster != cluster
            || key != format!("{SERVICES}{cluster}/{}/{}", service.namespace, service.name)
        {
            Some("it names another cluster or service than its key".to_string())
        } else {
            service
                .endpoint_slices
                .iter()
                .find_map(|s| weir_service::table::validate_slice(s).err())
                .map(|e| e.to_string())
        };
        if let Some(problem) = problem {
            tracing::warn!(cluster, key, problem, "a remote global service is refused");
            continue;
        }
        let mut slices = service.endpoint_slices;
        keep_theirs(cluster, key, &mut slices, theirs);
        out.insert(ObjectKey { namespace: service.namespace, name: service.name }, slices);
    }
    out
}

/// Keeps the endpoints whose addresses are all the remote cluster's (its
/// pod CIDRs and node addresses, `theirs`); the others are logged.
fn keep_theirs(cluster: &str, key: &str, slices: &mut [EndpointSlice], theirs: &[Ipv4Net]) {
    for slice in slices {
        slice.endpoints.retain(|e| {
            let inside = e
                .addresses
                .iter()
                .all(|a| a.parse::<Ipv4Addr>().is_ok_and(|a| theirs.iter().any(|n| n.contains(&a))));
            if !inside {
                tracing::warn!(cluster, key, addresses = ?e.addresses, "a remote backend outside its cluster's pod CIDRs and nodes is refused");
            }
            inside
        });
    }
}

/// Reads cluster `cluster` from its etcd, then follows it; checks the
/// etcd answers every heartbeat; reconnects after a failure, keeping what
/// it learned meanwhile (see [`super::liveness`] for what goes when).
pub(super) async fn follow(
    context: Arc<MeshContext>,
    learned: Arc<Mutex<Learned>>,
    away: AwaySince,
    cluster: String,
    url: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let watched = [format!("{NODES}{cluster}/"), format!("{SERVICES}{cluster}/"), format!("{SYNCED}{cluster}")];
    loop {
        let attempt = async {
            // Read-only: gets, a watch and status calls, nothing else, on a remote store.
            let mut client = connect(std::slice::from_ref(&url)).await.map_err(|e| e.to_string())?;
            let mut revision =
                read_cluster(&context, &learned, &away, &cluster, &mut client).await.map_err(|e| e.to_string())?;
            apply(&context, &learned).await;
            loop {
                // Whatever of its nodes, pods, identities or services changes,
                // the cluster is read again whole (from the revision of the change).
                let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
                let mut stream = client.watch("weir/", Some(options)).await.map_err(|e| e.to_string())?;
                let mut heartbeat = tokio::time::interval(HEARTBEAT);
                let mut changed = false;
                loop {
                    let reply = tokio::select! {
                        reply = stream.message() => reply.map_err(|e| e.to_string())?,
                        _ = heartbeat.tick() => {
                            // A watch says nothing when the other end vanishes: ask.
                            let mut maintenance = client.maintenance_client();
                            match tokio::time::timeout(ETCD_TIMEOUT, maintenance.status()).await {
                                Ok(answer) => { answer.map_err(|e| e.to_string())?; continue; }
                                Err(_) => return Err(format!("its etcd did not answer within {ETCD_TIMEOUT:?}")),
                            }
                        }
                    };
                    let Some(reply) = reply else { break };
                    if reply.canceled() || reply.compact_revision() != 0 {
                        break;
                    }
                    changed = reply.events().iter().filter_map(|e| e.kv()?.key_str().ok()).any(|k| {
                        watched.iter().any(|w| k.starts_with(w.as_str()))
                            || k.starts_with(ENDPOINTS)
                            || k.starts_with(IDENTITY_LABELS)
                    });
                    if changed {
                        break;
                    }
                }
                if !changed {
                    return Ok(());
                }
                revision =
                    read_cluster(&context, &learned, &away, &cluster, &mut client).await.map_err(|e| e.to_string())?;
                apply(&context, &learned).await;
            }
        };
        tokio::select! {
            result = attempt => {
                let why = result.err().unwrap_or_else(|| "the watch ended".to_string());
                tracing::warn!(cluster, url, error = why, "remote cluster's etcd lost; reconnecting");
                if let Ok(mut status) = context.status.lock() {
                    if let Ok(mut a) = away.lock() {
                        a.entry(cluster.clone()).or_insert_with(Instant::now);
                    }
                    status.failed(&cluster, why);
                    if status.remotes.get(&cluster).is_some_and(|r| r.state == RemoteState::Connected) {
                        status.set_state(&cluster, RemoteState::EtcdAway);
                    }
                }
                write_status(&context, &learned);
            },
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Reads a remote cluster whole: its nodes, its pods, the numbers its
/// store gave their label sets and its global services; then, in one step
/// the liveness judge cannot come between, marks it reached and merges its
/// services (only once its sync canary says they were all published).
/// Returns the revision read at.
async fn read_cluster(
    context: &MeshContext,
    learned: &Mutex<Learned>,
    away: &AwaySince,
    cluster: &str,
    client: &mut Client,
) -> Result<i64, etcd_client::Error> {
    let nodes_reply = client.get(format!("{NODES}{cluster}/"), Some(GetOptions::new().with_prefix())).await?;
    let revision = nodes_reply.header().map_or(0, |h| h.revision());
    // At the nodes' revision, so the three reads are of one moment.
    let at = || GetOptions::new().with_prefix().with_revision(revision);
    let pods_reply = client.get(ENDPOINTS, Some(at())).await?;
    let numbers_reply = client.get(IDENTITY_LABELS, Some(at())).await?;
    let services_reply = client.get(format!("{SERVICES}{cluster}/"), Some(at())).await?;
    let canary = client.get(format!("{SYNCED}{cluster}"), Some(GetOptions::new().with_revision(revision))).await?;
    let synced = !canary.kvs().is_empty();
    let nodes: BTreeMap<String, MeshNode> = nodes_reply
        .kvs()
        .iter()
        .filter_map(|kv| accept(context, cluster, kv.key_str().ok()?, kv.value()))
        .map(|n| (n.name.clone(), n))
        .collect();
    let numbers: BTreeMap<&str, u32> = numbers_reply
        .kvs()
        .iter()
        .filter_map(|kv| {
            let set = kv.key_str().ok()?.strip_prefix(IDENTITY_LABELS)?;
            Some((set, std::str::from_utf8(kv.value()).ok()?.parse().ok()?))
        })
        .collect();
    let remote_id = nodes.values().next().map(|n| n.cluster_id);
    let mut pods = Vec::new();
    for kv in pods_reply.kvs() {
        let Ok(record) = serde_json::from_slice::<PodRecord>(kv.value()) else { continue };
        let labels = labels_in_cluster(&record, Some(cluster)).to_string();
        let node = nodes.get(&record.node);
        let identity = numbers.get(labels.as_str()).copied();
        match (node, identity) {
            // A pod of one of the cluster's nodes, in that node's pod CIDR,
            // with a number of the cluster's own range.
            (Some(node), Some(identity))
                if node.pod_cidr.contains(&record.ip) && Some(cluster_of(identity)) == remote_id =>
            {
                pods.push(RemotePod { cluster: cluster.to_string(), record, identity })
            }
            _ => {
                tracing::debug!(cluster, pod = %format!("{}/{}", record.namespace, record.name), "a remote pod without a node, an address of it, or a number of its cluster; not known here yet")
            }
        }
    }
    let identities = pods.iter().map(|p| p.identity).collect::<std::collections::BTreeSet<_>>().len();
    if let Ok(mut l) = learned.lock() {
        l.clusters.insert(cluster.to_string(), nodes.clone());
    }
    if let Ok(mut shared) = context.remote_pods.lock() {
        let unchanged = shared.by_cluster.get(cluster).is_some_and(|old| {
            old.len() == pods.len()
                && old.iter().zip(&pods).all(|(a, b)| {
                    a.identity == b.identity
                        && serde_json::to_string(&a.record).ok() == serde_json::to_string(&b.record).ok()
                })
        });
        if !unchanged {
            shared.by_cluster.insert(cluster.to_string(), pods);
            shared.version += 1;
        }
    }
    let Ok(mut status) = context.status.lock() else { return Ok(revision) };
    if let Ok(mut a) = away.lock() {
        a.remove(cluster);
    }
    status.set_state(cluster, RemoteState::Connected);
    let Some(remote) = status.remotes.get_mut(cluster) else { return Ok(revision) };
    remote.identities = identities;
    remote.nodes = nodes.values().cloned().collect();
    remote.synced = synced;
    if let (Some(services), true) = (&context.services, synced) {
        // A remote backend is one of the remote cluster's pods or nodes:
        // it may not claim addresses outside them (this cluster's, say).
        let theirs: Vec<Ipv4Net> = nodes.values().flat_map(|n| [n.pod_cidr, Ipv4Net::from(n.address)]).collect();
        let shared = remote_services(cluster, services_reply.kvs(), &theirs);
        remote.global_services = shared.len();
        remote.backends = shared.values().flatten().map(|s| s.endpoints.len()).sum();
        let merged = services
            .lock()
            .map_err(|_| "poisoned".to_string())
            .and_then(|mut s| s.set_remote(cluster, shared).map_err(|e| e.to_string()));
        if let Err(e) = merged {
            tracing::warn!(
                cluster,
                error = e,
                "merging a remote cluster's global services failed; retried on its next change"
            );
            status.failed(cluster, format!("merging its global services: {e}"));
        }
    } else if !synced {
        tracing::info!(
            cluster,
            "remote cluster has not finished publishing its services (no sync canary); keeping what was read before"
        );
    }
    Ok(revision)
}

/// A remote node, if it may be routed: it names the cluster whose etcd it
/// came from, under its own key, and claims none of this cluster's addresses.
fn accept(context: &MeshContext, cluster: &str, key: &str, value: &[u8]) -> Option<MeshNode> {
    let node: MeshNode = match serde_json::from_slice(value) {
        Ok(node) => node,
        Err(e) => {
            tracing::warn!(cluster, key, error = %e, "a remote node is not what weir publishes; ignored");
            return None;
        }
    };
    let own = &context.own_cidrs;
    let problem = if node.cluster != cluster || key != format!("{NODES}{cluster}/{}", node.name) {
        Some("it names another cluster or node than its key".to_string())
    } else if node.cluster_id == context.config.id {
        Some(format!("it has this cluster's id {}", node.cluster_id))
    } else if let Some(mine) =
        own.iter().find(|c| c.contains(&node.pod_cidr.network()) || node.pod_cidr.contains(&c.network()))
    {
        Some(format!("its pod CIDR {} overlaps this cluster's {mine}", node.pod_cidr))
    } else if own.iter().any(|c| c.contains(&node.address)) {
        Some(format!("its address {} is inside this cluster", node.address))
    } else {
        None
    };
    if let Some(problem) = problem {
        tracing::warn!(cluster, key, problem, "a remote node is refused");
        return None;
    }
    Some(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_backend_outside_its_clusters_pod_cidrs_and_nodes_is_refused() {
        let slice = |addresses: &[&str]| -> EndpointSlice {
            let endpoints: String = addresses.iter().map(|a| format!("  - {{addresses: [\"{a}\"]}}\n")).collect();
            let yaml = format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: api-1, namespace: shop, labels: {{kubernetes.io/service-name: api}}}}\naddressType: IPv4\nendpoints:\n{endpoints}"
            );
            serde_yaml::from_str(&yaml).expect("a slice")
        };
        let theirs: Vec<Ipv4Net> = vec!["10.245.0.0/24".parse().expect("net"), "172.30.0.5/32".parse().expect("net")];
        // A pod of theirs, one of their nodes, one of ours, somewhere else, and a spelling that is no IPv4 address.
        let mut slices = vec![slice(&["10.245.0.7", "172.30.0.5", "10.244.0.2", "192.0.2.1", "::ffff:10.245.0.7"])];
        keep_theirs("west", "k", &mut slices, &theirs);
        let kept: Vec<&str> = slices[0].endpoints.iter().map(|e| e.addresses[0].as_str()).collect();
        assert_eq!(kept, ["10.245.0.7", "172.30.0.5"]);
    }
}
