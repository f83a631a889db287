//! ClusterMesh: what this node's cluster publishes for the others, and
//! what this node learns from theirs.
//!
//! Every agent publishes its own node in its own cluster's etcd
//! (`weir/clustermesh/v1/nodes/<cluster>/<node>`, JSON [`MeshNode`], on a
//! lease of 15 minutes as Cilium's kvstore keys are). For every other
//! cluster it reads that cluster's etcd **read-only** (a get, then a watch
//! from the revision read; this module writes nothing through a remote
//! client) and routes each remote node's pod CIDR via that node's fabric
//! address. On the pod path the remote pod CIDRs are also added to the
//! cluster CIDRs, so pods' traffic to them is not masqueraded, and the
//! remote cluster's pods (`weir/endpoints/v1/`) with the identity numbers
//! its store gave them (`weir/identities/v1/labels/`) are handed to network
//! policy ([`RemotePods`]): its ipcache knows them by their identity.
//!
//! With an overlay (`routing: vxlan`, which a mesh takes only when every
//! cluster has it) remote pod CIDRs go into the tunnel table instead of
//! routes: their packets are tunnelled to the remote node.
//!
//! A remote cluster that goes away keeps its routes (Cilium keeps remote
//! state on disconnect too); the agent reconnects every 2 s. A remote node
//! whose pod CIDR overlaps this cluster's, or that claims another cluster
//! than the etcd it came from, is refused and logged.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, PutOptions, WatchOptions};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use weir_bpf::datapath::PinLayout;
use weir_policy::identity::{cluster_of, IdentityLabels};

use weir_service::k8s::EndpointSlice;
use weir_service::ObjectKey;

use crate::pods::PodRecord;
use crate::services::ServiceState;

/// Where every cluster publishes its nodes, in its own etcd.
pub const NODES: &str = "weir/clustermesh/v1/nodes/";
/// Where every cluster publishes its global, shared services
/// (`<cluster>/<namespace>/<name>`, JSON [`MeshService`]), in its own etcd.
pub const SERVICES: &str = "weir/clustermesh/v1/services/";
const LEASE_TTL_SECS: i64 = 900;
const RETRY: Duration = Duration::from_secs(2);

/// This node's place in a mesh (`--cluster-name`, `--cluster-id`,
/// `--node-address`, `--node-pod-cidr`, `--clustermesh`).
#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub name: String,
    /// 1–255: bits 16–23 of every identity the cluster allocates.
    pub id: u8,
    pub address: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    /// Every other cluster by name, with its etcd's client URL.
    pub remotes: Vec<(String, String)>,
}

/// A node as its cluster publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshNode {
    pub cluster: String,
    pub cluster_id: u8,
    pub name: String,
    pub address: Ipv4Addr,
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Ipv4Net,
}

/// A global service as its cluster shares it: its EndpointSlices, with
/// their ready endpoints only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshService {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    pub endpoint_slices: Vec<EndpointSlice>,
}

/// The label every pod of a mesh carries, naming its cluster (Cilium's):
/// policies select other clusters' pods with it.
pub const CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";
const ENDPOINTS: &str = "weir/endpoints/v1/";
const IDENTITY_LABELS: &str = "weir/identities/v1/labels/";

/// A pod of another cluster, with the identity its cluster's store gave it.
#[derive(Debug, Clone)]
pub struct RemotePod {
    pub cluster: String,
    pub record: PodRecord,
    pub identity: u32,
}

/// Every other cluster's pods, shared with network policy; `version` moves
/// with every change.
#[derive(Debug, Default)]
pub struct RemotePods {
    pub version: u64,
    pub by_cluster: BTreeMap<String, Vec<RemotePod>>,
}

pub type SharedRemotePods = Arc<Mutex<RemotePods>>;

/// A pod's identity labels in a mesh: its own, its namespace's, and its cluster.
pub fn labels_in_cluster(record: &PodRecord, cluster: Option<&str>) -> IdentityLabels {
    let mut labels = record.labels.clone();
    match cluster {
        Some(cluster) => labels.insert(CLUSTER_LABEL.to_string(), cluster.to_string()),
        // Outside a mesh nobody may claim a cluster.
        None => labels.remove(CLUSTER_LABEL),
    };
    IdentityLabels { namespace: record.namespace.clone(), namespace_labels: record.namespace_labels.clone(), labels }
}

/// What the node's routes and tables are built from.
#[derive(Debug)]
pub struct MeshContext {
    pub config: MeshConfig,
    pub node: String,
    /// This cluster's etcd.
    pub etcd: Vec<String>,
    /// The node's fabric interface: remote pod CIDRs are routed through it.
    pub uplink: String,
    /// This cluster's CIDRs (`--cluster-cidr`): no remote node may claim them.
    pub own_cidrs: Vec<Ipv4Net>,
    /// On the pod path: the pins of the cluster-CIDR table.
    pub pod_path: Option<PinLayout>,
    /// With an overlay (`routing: vxlan`): remote pod CIDRs are reached
    /// through its tunnel table, not routes; this cluster's tunnels stay.
    pub overlay: Option<crate::config::Overlay>,
    pub state_dir: PathBuf,
    /// Where the other clusters' pods go for network policy.
    pub remote_pods: SharedRemotePods,
    /// The socket load balancer: this cluster's global services are shared
    /// from it, the other clusters' merged into it.
    pub services: Option<Arc<Mutex<ServiceState>>>,
}

/// Remote nodes, by cluster then node, and the routes installed for them.
#[derive(Default)]
struct Learned {
    clusters: BTreeMap<String, BTreeMap<String, MeshNode>>,
    connected: BTreeMap<String, bool>,
    routes: BTreeSet<(Ipv4Net, Ipv4Addr)>,
}

/// Publishes this node and follows every remote cluster until `stop`.
pub async fn run(context: MeshContext, stop: tokio::sync::watch::Receiver<bool>) {
    let context = Arc::new(context);
    let learned = Arc::new(Mutex::new(Learned::default()));
    let mut tasks = vec![tokio::spawn(publish(context.clone(), stop.clone()))];
    if context.services.is_some() && publishes_services(&context) {
        tasks.push(tokio::spawn(publish_services(context.clone(), stop.clone())));
    }
    for (cluster, url) in context.config.remotes.clone() {
        tasks.push(tokio::spawn(follow(context.clone(), learned.clone(), cluster, url, stop.clone())));
    }
    for task in tasks {
        let _ = task.await;
    }
}

async fn connect(endpoints: &[String]) -> Result<Client, etcd_client::Error> {
    let options =
        ConnectOptions::new().with_connect_timeout(Duration::from_secs(5)).with_timeout(Duration::from_secs(5));
    Client::connect(endpoints, Some(options)).await
}

/// Keeps this node's key in its own cluster's etcd, re-publishing after a failure.
async fn publish(context: Arc<MeshContext>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let config = &context.config;
    let key = format!("{NODES}{}/{}", config.name, context.node);
    let node = MeshNode {
        cluster: config.name.clone(),
        cluster_id: config.id,
        name: context.node.clone(),
        address: config.address,
        pod_cidr: config.pod_cidr,
    };
    let value = serde_json::to_string(&node).expect("a MeshNode serializes");
    loop {
        let attempt = async {
            let mut client = connect(&context.etcd).await?;
            let lease = client.lease_grant(LEASE_TTL_SECS, None).await?.id();
            client.put(key.as_str(), value.as_str(), Some(PutOptions::new().with_lease(lease))).await?;
            tracing::info!(key, "published this node to the cluster's etcd for the mesh");
            let (mut keeper, mut answers) = client.lease_keep_alive(lease).await?;
            loop {
                tokio::time::sleep(Duration::from_secs((LEASE_TTL_SECS / 3) as u64)).await;
                keeper.keep_alive().await?;
                answers.message().await?;
            }
            #[allow(unreachable_code)]
            Ok::<(), etcd_client::Error>(())
        };
        tokio::select! {
            result = attempt => if let Err(e) = result {
                tracing::warn!(error = %e, "publishing this node for the mesh failed; retrying");
            },
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One writer per cluster shares its global services: the agent of the node
/// that runs the cluster's etcd (its first node). Every node holds the same
/// Services and EndpointSlices (from the store), so any one would do.
fn publishes_services(context: &MeshContext) -> bool {
    let me = format!("//{}:", context.config.address);
    context.etcd.iter().any(|url| url.contains(&me))
}

/// Keeps `SERVICES<cluster>/` in this cluster's etcd equal to what its socket
/// load balancer holds as global and shared, after every change to it.
async fn publish_services(context: Arc<MeshContext>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(services) = context.services.clone() else { return };
    let Ok(mut changes) = services.lock().map(|s| s.subscribe()) else { return };
    let prefix = format!("{SERVICES}{}/", context.config.name);
    loop {
        let attempt = async {
            let mut client = connect(&context.etcd).await?;
            loop {
                changes.borrow_and_update();
                let shared = services.lock().map(|s| s.global_shared()).unwrap_or_default();
                let wanted: BTreeMap<String, String> = shared
                    .into_iter()
                    .map(|(key, endpoint_slices)| {
                        let service = MeshService {
                            cluster: context.config.name.clone(),
                            namespace: key.namespace.clone(),
                            name: key.name.clone(),
                            endpoint_slices,
                        };
                        let value = serde_json::to_string(&service).expect("a MeshService serializes");
                        (format!("{prefix}{}/{}", key.namespace, key.name), value)
                    })
                    .collect();
                let held = client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())).await?;
                let held: BTreeMap<String, Vec<u8>> = held
                    .kvs()
                    .iter()
                    .filter_map(|kv| Some((kv.key_str().ok()?.to_string(), kv.value().to_vec())))
                    .collect();
                for (key, value) in &wanted {
                    if held.get(key).map(Vec::as_slice) != Some(value.as_bytes()) {
                        client.put(key.as_str(), value.as_str(), None).await?;
                    }
                }
                for key in held.keys().filter(|k| !wanted.contains_key(*k)) {
                    client.delete(key.as_str(), None).await?;
                }
                tracing::debug!(services = wanted.len(), "this cluster's global services shared with the mesh");
                if changes.changed().await.is_err() {
                    return Ok(());
                }
            }
        };
        tokio::select! {
            result = attempt => if let Err(e) = result {
                let e: etcd_client::Error = e;
                tracing::warn!(error = %e, "sharing the global services with the mesh failed; retrying");
            },
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

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

/// Reads cluster `cluster`'s nodes from its etcd, then follows them;
/// reconnects after a failure, keeping what it learned meanwhile.
async fn follow(
    context: Arc<MeshContext>,
    learned: Arc<Mutex<Learned>>,
    cluster: String,
    url: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let nodes_prefix = format!("{NODES}{cluster}/");
    let services_prefix = format!("{SERVICES}{cluster}/");
    loop {
        let attempt = async {
            // Read-only: gets and a watch, nothing else, on a remote store.
            let mut client = connect(std::slice::from_ref(&url)).await?;
            let mut revision = read_cluster(&context, &learned, &cluster, &mut client).await?;
            if let Ok(mut l) = learned.lock() {
                l.connected.insert(cluster.clone(), true);
            }
            apply(&context, &learned).await;
            loop {
                // Whatever of its nodes, pods or identities changes, the
                // cluster is read again whole (from the revision of the change).
                let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
                let mut stream = client.watch("weir/", Some(options)).await?;
                let mut changed = false;
                while let Some(reply) = stream.message().await? {
                    if reply.canceled() || reply.compact_revision() != 0 {
                        break;
                    }
                    changed = reply.events().iter().filter_map(|e| e.kv()?.key_str().ok()).any(|k| {
                        k.starts_with(&nodes_prefix)
                            || k.starts_with(&services_prefix)
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
                revision = read_cluster(&context, &learned, &cluster, &mut client).await?;
                apply(&context, &learned).await;
            }
        };
        tokio::select! {
            result = attempt => {
                let why = result.err().map_or("the watch ended".to_string(), |e: etcd_client::Error| e.to_string());
                tracing::warn!(cluster, url, error = why, "remote cluster's etcd lost; its nodes stay routed; reconnecting");
                if let Ok(mut l) = learned.lock() {
                    l.connected.insert(cluster.clone(), false);
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

/// Reads a remote cluster whole: its nodes, its pods and the numbers its
/// store gave their label sets. Returns the revision read at.
async fn read_cluster(
    context: &MeshContext,
    learned: &Mutex<Learned>,
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
    let nodes: BTreeMap<String, MeshNode> = nodes_reply
        .kvs()
        .iter()
        .filter_map(|kv| accept(context, cluster, kv.key_str().ok()?, kv.value()))
        .map(|n| (n.name.clone(), n))
        .collect();
    if let Some(services) = &context.services {
        // A remote backend is one of the remote cluster's pods or nodes:
        // it may not claim addresses outside them (this cluster's, say).
        let theirs: Vec<Ipv4Net> = nodes.values().flat_map(|n| [n.pod_cidr, Ipv4Net::from(n.address)]).collect();
        let shared = remote_services(cluster, services_reply.kvs(), &theirs);
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
        }
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
    if let Ok(mut l) = learned.lock() {
        l.clusters.insert(cluster.to_string(), nodes);
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

/// Makes the node's routes (and, on the pod path, its cluster CIDRs) follow
/// every remote node learned.
async fn apply(context: &Arc<MeshContext>, learned: &Arc<Mutex<Learned>>) {
    let (wanted, installed) = {
        let Ok(l) = learned.lock() else { return };
        let wanted: BTreeSet<(Ipv4Net, Ipv4Addr)> =
            l.clusters.values().flat_map(|nodes| nodes.values()).map(|n| (n.pod_cidr, n.address)).collect();
        (wanted, l.routes.clone())
    };
    if wanted == installed {
        write_status(context, learned);
        return;
    }
    let (context2, wanted2) = (context.clone(), wanted.clone());
    let done = tokio::task::spawn_blocking(move || install(&context2, &installed, &wanted2)).await;
    match done {
        Ok(Ok(())) => {
            if let Ok(mut l) = learned.lock() {
                l.routes = wanted;
            }
            tracing::info!(routes = routes_installed(learned), "routes to the mesh's remote pods updated");
        }
        Ok(Err(e)) => tracing::warn!(error = e, "routing the mesh's remote pods failed; retried on the next change"),
        Err(e) => tracing::warn!(error = %e, "routing the mesh's remote pods failed"),
    }
    write_status(context, learned);
}

fn routes_installed(learned: &Mutex<Learned>) -> usize {
    learned.lock().map_or(0, |l| l.routes.len())
}

fn install(
    context: &MeshContext,
    installed: &BTreeSet<(Ipv4Net, Ipv4Addr)>,
    wanted: &BTreeSet<(Ipv4Net, Ipv4Addr)>,
) -> Result<(), String> {
    if context.overlay.is_none() {
        let uplink = &context.uplink;
        let mut commands: Vec<String> =
            wanted.iter().map(|(cidr, via)| format!("route replace {cidr} via {via} dev {uplink}")).collect();
        let kept: BTreeSet<Ipv4Net> = wanted.iter().map(|(cidr, _)| *cidr).collect();
        commands.extend(
            installed.iter().filter(|(cidr, _)| !kept.contains(cidr)).map(|(cidr, _)| format!("route del {cidr}")),
        );
        // The agent runs in the node's network namespace: `ip` inherits it.
        weir_host::iproute::batch(None, &commands).map_err(|e| e.to_string())?;
    }
    if let Some(pins) = &context.pod_path {
        let mut cidrs: Vec<(Ipv4Addr, u8)> = context.own_cidrs.iter().map(|c| (c.network(), c.prefix_len())).collect();
        for (cidr, via) in wanted {
            cidrs.push((cidr.network(), cidr.prefix_len()));
            cidrs.push((*via, 32));
        }
        let table = weir_bpf::pods::PodEndpoints::open(pins).map_err(|e| e.to_string())?;
        table.set_pod_cidrs(&cidrs).map_err(|e| e.to_string())?;
        if let Some(overlay) = &context.overlay {
            let index = crate::pods::ifindex(&overlay.device);
            if index == 0 {
                return Err(format!("no overlay device {}", overlay.device));
            }
            let mut tunnels = overlay.tunnels.clone();
            tunnels.extend(wanted.iter().map(|(cidr, via)| ((cidr.network(), cidr.prefix_len()), *via)));
            table.set_overlay(index, &tunnels).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// `<state dir>/clustermesh.json`: each remote cluster, whether its etcd is
/// reached, and its nodes as learned.
fn write_status(context: &MeshContext, learned: &Mutex<Learned>) {
    let Ok(l) = learned.lock() else { return };
    let status: BTreeMap<&String, serde_json::Value> = context
        .config
        .remotes
        .iter()
        .map(|(cluster, url)| {
            let nodes: Vec<&MeshNode> = l.clusters.get(cluster).map(|n| n.values().collect()).unwrap_or_default();
            let connected = l.connected.get(cluster).copied().unwrap_or(false);
            (cluster, serde_json::json!({"etcd": url, "connected": connected, "nodes": nodes}))
        })
        .collect();
    let path = context.state_dir.join("clustermesh.json");
    let tmp = context.state_dir.join("clustermesh.json.tmp");
    let written = serde_json::to_vec_pretty(&status)
        .map_err(std::io::Error::other)
        .and_then(|json| std::fs::write(&tmp, json))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "writing the mesh's status");
    }
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
