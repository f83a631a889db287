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
//! A remote cluster whose etcd goes away keeps its routes, pods and
//! backends (Cilium keeps remote state on disconnect too) while its nodes
//! answer, for `--clustermesh-stale-after` at most; one whose etcd and nodes
//! are all gone is lost, and its backends leave at once ([`liveness`]). The
//! agent reconnects every 2 s. A remote node
//! whose pod CIDR overlaps this cluster's, or that claims another cluster
//! than the etcd it came from, is refused and logged.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use weir_bpf::datapath::PinLayout;
use weir_policy::identity::IdentityLabels;
use weir_service::k8s::EndpointSlice;

use crate::pods::PodRecord;
use crate::services::ServiceState;

mod liveness;
mod publish;
mod remote;
mod routes;
mod shared;
pub mod status;

pub use status::{ClusterMeshService, MeshStatus, RemoteState, SharedMeshStatus};

use publish::{publish, publish_services, publishes_services};
use remote::follow;

/// Everything a cluster publishes for the mesh, in its own etcd.
pub const MESH: &str = "weir/clustermesh/v1/";
/// Where every cluster publishes its nodes, in its own etcd.
pub const NODES: &str = "weir/clustermesh/v1/nodes/";
/// Where every cluster publishes its global, shared services
/// (`<cluster>/<namespace>/<name>`, JSON [`MeshService`]), in its own etcd.
pub const SERVICES: &str = "weir/clustermesh/v1/services/";
/// Each cluster's sync canary (`<cluster>`), written by the agent that
/// shares its services once it has shared them all since it (re)connected:
/// until it is there, other clusters keep what they last read.
pub const SYNCED: &str = "weir/clustermesh/v1/synced/";
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
    /// How long a remote cluster whose etcd is away, but whose nodes
    /// answer, keeps its backends here; None: until it is reached again.
    pub stale_after: Option<Duration>,
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
    /// Every node of this cluster (`--cluster-node`): no remote node may claim one's address.
    pub own_nodes: Vec<Ipv4Addr>,
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
    /// What this node knows of the mesh, for `weir clustermesh status` and metrics.
    pub status: SharedMeshStatus,
}

/// Remote nodes, by cluster then node, and the routes installed for them.
#[derive(Default)]
struct Learned {
    clusters: BTreeMap<String, BTreeMap<String, MeshNode>>,
    routes: BTreeSet<(Ipv4Net, Ipv4Addr)>,
    /// Held while routes and tables are written ([`routes::apply`]).
    routes_turn: Arc<tokio::sync::Mutex<()>>,
}

/// Publishes this node and follows every remote cluster until `stop`.
pub async fn run(context: MeshContext, stop: tokio::sync::watch::Receiver<bool>) {
    let context = Arc::new(context);
    let learned = Arc::new(Mutex::new(Learned::default()));
    let away = liveness::AwaySince::default();
    let mut tasks = vec![tokio::spawn(publish(context.clone(), stop.clone()))];
    if context.services.is_some() && publishes_services(&context) {
        tasks.push(tokio::spawn(publish_services(context.clone(), stop.clone())));
    }
    for (cluster, url) in context.config.remotes.clone() {
        let (context, learned, away) = (context.clone(), learned.clone(), away.clone());
        tasks.push(tokio::spawn(liveness::watch(
            context.clone(),
            learned.clone(),
            away.clone(),
            cluster.clone(),
            stop.clone(),
        )));
        tasks.push(tokio::spawn(follow(context, learned, away, cluster, url, stop.clone())));
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
