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
            let read = read_cluster(&context, &learned, &cluster, &mut client).await.map_err(|e| e.to_string())?;
            // Routes first: a new remote backend is reachable unmasqueraded once merged.
            apply(&context, &learned).await;
            let (mut revision, mut services) = reached(&context, &away, &cluster, read);
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
                let read = read_cluster(&context, &learned, &cluster, &mut client).await.map_err(|e| e.to_string())?;
                apply(&context, &learned).await;
                (revision, services) = reached(&context, &away, &cluster, read);
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
/// store gave their label sets and its global services (merged by
/// [`reached`], once its sync canary says they were all published).
async fn read_cluster(
    context: &MeshContext,
    learned: &Mutex<Learned>,
    cluster: &str,
    client: &mut Client,
) -> Result<Read, etcd_client::Error> {
    let nodes_reply = client.get(format!("{NODES}{cluster}/"), Some(GetOptions::new().with_prefix())).await?;
    let revision = nodes_reply.header().map_or(0, |h| h.revision());
    // At the nodes' revision, so the three reads are of one moment.
    let at = || GetOptions::new().with_prefix().with_revision(revision);
    let pods_reply = client.get(ENDPOINTS, Some(at())).await?;
    let numbers_reply = client.get(IDENTITY_LABELS, Some(at())).await?;
    let services_reply = client.get(format!("{SERVICES}{cluster}/"), Some(at())).await?;
    let canary = client.get(format!("{SYNCED}{cluster}"), Some(GetOptions::new().with_revision(revision))).await?;
    let synced = !canary.kvs().is_empty();
    // What the other remote clusters claim: first learned, first kept.
    let others: Vec<MeshNode> = learned
        .lock()
        .map(|l| l.clusters.iter().filter(|(c, _)| *c != cluster).flat_map(|(_, n)| n.values().cloned()).collect())
        .unwrap_or_default();
    let mut nodes: BTreeMap<String, MeshNode> = nodes_reply
        .kvs()
        .iter()
        .filter_map(|kv| accept(context, cluster, kv.key_str().ok()?, kv.value(), &others))
        .map(|n| (n.name.clone(), n))
        .collect();
    // One cluster, one id, its own: otherwise its identities could pass for another's.
    let ids: std::collections::BTreeSet<u8> = nodes.values().map(|n| n.cluster_id).collect();
    if ids.len() > 1 {
        tracing::warn!(cluster, ids = ?ids, "a remote cluster's nodes disagree on its id; none is taken");
        nodes.clear();
    }
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
    Ok(Read { revision, services, identities, nodes: nodes.into_values().collect() })
}

/// A remote cluster as read whole, before it is marked reached.
pub(super) struct Read {
    revision: i64,
    services: RemoteServices,
    identities: usize,
    nodes: Vec<MeshNode>,
}

/// After a whole read (and the routes to its nodes): in one step the
/// liveness judge cannot come between, marks the cluster reached and
/// merges its services. Returns the revision read at, and the services.
fn reached(context: &MeshContext, away: &AwaySince, cluster: &str, read: Read) -> (i64, RemoteServices) {
    if let Ok(mut status) = context.status.lock() {
        if let Ok(mut a) = away.lock() {
            a.remove(cluster);
        }
        status.set_state(cluster, RemoteState::Connected);
        if let Some(remote) = status.remotes.get_mut(cluster) {
            remote.identities = read.identities;
            remote.nodes = read.nodes;
        }
        merge(context, cluster, &read.services, read.revision, &mut status);
    }
    (read.revision, read.services)
}

/// A remote node, if it may be routed: it names the cluster whose etcd it
/// came from, under its own key, and claims none of this cluster's addresses.
fn accept(context: &MeshContext, cluster: &str, key: &str, value: &[u8], others: &[MeshNode]) -> Option<MeshNode> {
    let node: MeshNode = match serde_json::from_slice(value) {
        Ok(node) => node,
        Err(e) => {
            tracing::warn!(cluster, key, error = %e, "a remote node is not what weir publishes; ignored");
            return None;
        }
    };
    let problem = refusal(&node, cluster, key, context.config.id, &context.own_cidrs, &context.own_nodes, others);
    if let Some(problem) = problem {
        tracing::warn!(cluster, key, problem, "a remote node is refused");
        return None;
    }
    Some(node)
}

/// Why a remote node may not be routed, if it may not: it must name the
/// cluster whose etcd it came from under its own key, claim none of this
/// cluster's addresses or id, be a plain unicast host with a network for a
/// pod CIDR, and collide with no node another remote cluster claimed first. Pure.
fn refusal(
    node: &MeshNode,
    cluster: &str,
    key: &str,
    own_id: u8,
    own: &[Ipv4Net],
    own_nodes: &[std::net::Ipv4Addr],
    others: &[MeshNode],
) -> Option<String> {
    if node.cluster != cluster || key != format!("{NODES}{cluster}/{}", node.name) {
        Some("it names another cluster or node than its key".to_string())
    } else if node.cluster_id == own_id {
        Some(format!("it has this cluster's id {}", node.cluster_id))
    } else if let Some(mine) =
        own.iter().find(|c| c.contains(&node.pod_cidr.network()) || node.pod_cidr.contains(&c.network()))
    {
        Some(format!("its pod CIDR {} overlaps this cluster's {mine}", node.pod_cidr))
    } else if own.iter().any(|c| c.contains(&node.address)) || own_nodes.contains(&node.address) {
        Some(format!("its address {} is inside this cluster", node.address))
    } else if node.pod_cidr != node.pod_cidr.trunc() {
        Some(format!("its pod CIDR {} has host bits set", node.pod_cidr))
    } else if node.address.is_unspecified()
        || node.address.is_loopback()
        || node.address.is_multicast()
        || node.address.is_broadcast()
        || node.address.is_link_local()
    {
        Some(format!("its address {} is no unicast host address", node.address))
    } else {
        let collides = |o: &&MeshNode| {
            o.cluster_id == node.cluster_id
                || o.address == node.address
                || o.pod_cidr.contains(&node.pod_cidr.network())
                || node.pod_cidr.contains(&o.pod_cidr.network())
        };
        others.iter().find(collides).map(|other| {
            format!(
                "it collides with cluster {}'s node {} (id {}, address {}, pod CIDR {})",
                other.cluster, other.name, other.cluster_id, other.address, other.pod_cidr
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_node_claiming_this_clusters_addresses_another_clusters_or_a_bad_address_is_refused() {
        let node = |cluster: &str, id: u8, name: &str, address: &str, cidr: &str| MeshNode {
            cluster: cluster.into(),
            cluster_id: id,
            name: name.into(),
            address: address.parse().expect("address"),
            pod_cidr: cidr.parse().expect("cidr"),
        };
        let own: Vec<Ipv4Net> = vec!["10.244.0.0/16".parse().expect("net")];
        let own_nodes = ["172.30.0.1".parse().expect("ip"), "172.30.0.2".parse().expect("ip")];
        let others = [node("north", 3, "north-a", "172.30.0.9", "10.246.0.0/24")];
        let judge = |n: &MeshNode| {
            refusal(n, "west", &format!("{NODES}west/{}", n.name), 1, &own, &own_nodes, &others).unwrap_or_default()
        };
        assert_eq!(judge(&node("west", 2, "west-a", "172.30.0.5", "10.245.0.0/24")), "");
        assert!(judge(&node("east", 2, "west-a", "172.30.0.5", "10.245.0.0/24")).contains("another cluster"));
        assert!(judge(&node("west", 1, "west-a", "172.30.0.5", "10.245.0.0/24")).contains("this cluster's id"));
        assert!(judge(&node("west", 2, "west-a", "172.30.0.5", "10.244.3.0/24")).contains("overlaps"));
        // Another node of this cluster (the one that runs its etcd, say).
        assert!(judge(&node("west", 2, "west-a", "172.30.0.1", "10.245.0.0/24")).contains("inside this cluster"));
        assert!(judge(&node("west", 2, "west-a", "172.30.0.5", "10.245.0.1/24")).contains("host bits"));
        assert!(judge(&node("west", 2, "west-a", "0.0.0.0", "10.245.0.0/24")).contains("unicast"));
        assert!(judge(&node("west", 2, "west-a", "224.0.0.1", "10.245.0.0/24")).contains("unicast"));
        // What another remote cluster claimed first: its id, address or pod CIDR.
        assert!(judge(&node("west", 3, "west-a", "172.30.0.5", "10.245.0.0/24")).contains("north"));
        assert!(judge(&node("west", 2, "west-a", "172.30.0.9", "10.245.0.0/24")).contains("north"));
        assert!(judge(&node("west", 2, "west-a", "172.30.0.5", "10.246.0.0/16")).contains("north"));
    }
}
