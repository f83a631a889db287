//! Reading another cluster's etcd, read-only: its nodes, pods, identities
//! and global services.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use etcd_client::{Client, GetOptions, WatchOptions};
use ipnet::Ipv4Net;
use weir_policy::identity::cluster_of;

use super::liveness::{AwaySince, ETCD_TIMEOUT, HEARTBEAT};
use super::routes::apply;
use super::shared::{merge, RemoteServices};
use super::status::{write_status, RemoteState};
use super::{
    connect, labels_in_cluster, Learned, MeshContext, MeshNode, RemotePod, ENDPOINTS, IDENTITY_LABELS, MESH, NODES,
    RETRY, SERVICES, SYNCED,
};
use crate::pods::PodRecord;

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
    let (nodes_prefix, services_prefix) = (format!("{NODES}{cluster}/"), format!("{SERVICES}{cluster}/"));
    let canary = format!("{SYNCED}{cluster}");
    loop {
        let attempt = async {
            // Read-only: gets, a watch and status calls, nothing else, on a remote store.
            let mut client = connect(std::slice::from_ref(&url)).await.map_err(|e| e.to_string())?;
            let (mut revision, mut services) =
                read_cluster(&context, &learned, &away, &cluster, &mut client).await.map_err(|e| e.to_string())?;
            apply(&context, &learned).await;
            loop {
                // Its mesh keys (nodes, services, canary), pods and identities, from the revision read.
                let options = || WatchOptions::new().with_prefix().with_start_revision(revision + 1);
                let mut stream = client.watch(MESH, Some(options())).await.map_err(|e| e.to_string())?;
                for prefix in [ENDPOINTS, IDENTITY_LABELS] {
                    stream.watch(prefix, Some(options())).await.map_err(|e| e.to_string())?;
                }
                let mut heartbeat = tokio::time::interval(HEARTBEAT);
                let mut whole = false;
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
                        whole = true;
                        break;
                    }
                    // A service (or the canary) changed: that key alone is applied.
                    // Nodes, pods or identities: the cluster is read again whole.
                    let mut touched = false;
                    for event in reply.events() {
                        let Some(kv) = event.kv() else { continue };
                        let Ok(key) = kv.key_str() else { continue };
                        revision = revision.max(kv.mod_revision());
                        let put = event.event_type() == etcd_client::EventType::Put;
                        if key.starts_with(services_prefix.as_str()) {
                            touched = true;
                            if put {
                                services.put(&cluster, key, kv.value());
                            } else {
                                services.delete(key);
                            }
                        } else if key == canary {
                            touched = true;
                            services.synced = put;
                        } else if key.starts_with(nodes_prefix.as_str())
                            || key.starts_with(ENDPOINTS)
                            || key.starts_with(IDENTITY_LABELS)
                        {
                            whole = true;
                        }
                    }
                    if whole {
                        break;
                    }
                    if touched {
                        if let Ok(mut status) = context.status.lock() {
                            merge(&context, &cluster, &services, revision, &mut status);
                        }
                        write_status(&context, &learned);
                    }
                }
                if !whole {
                    return Ok(());
                }
                (revision, services) =
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
/// Returns the revision read at, and the services as read.
async fn read_cluster(
    context: &MeshContext,
    learned: &Mutex<Learned>,
    away: &AwaySince,
    cluster: &str,
    client: &mut Client,
) -> Result<(i64, RemoteServices), etcd_client::Error> {
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
    // A remote backend is one of the remote cluster's pods or nodes: it may
    // not claim addresses outside them (this cluster's, say).
    let theirs: Vec<Ipv4Net> = nodes.values().flat_map(|n| [n.pod_cidr, Ipv4Net::from(n.address)]).collect();
    let mut services = RemoteServices::new(theirs, synced);
    for kv in services_reply.kvs() {
        services.put(cluster, kv.key_str().unwrap_or_default(), kv.value());
    }
    if let Ok(mut status) = context.status.lock() {
        if let Ok(mut a) = away.lock() {
            a.remove(cluster);
        }
        status.set_state(cluster, RemoteState::Connected);
        if let Some(remote) = status.remotes.get_mut(cluster) {
            remote.identities = identities;
            remote.nodes = nodes.values().cloned().collect();
            remote.synced = synced;
        }
        merge(context, cluster, &services, revision, &mut status);
    }
    Ok((revision, services))
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
