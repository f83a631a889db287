//! What this node knows of the mesh: each remote cluster's state, since
//! when, what was learned from it and its last error. Served by the
//! `ClusterMesh` gRPC service (`weir clustermesh status`), rendered as
//! Prometheus metrics, and written to `<state dir>/clustermesh.json`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use weir_proto::clustermesh::v1 as pb;

use super::{Learned, MeshContext, MeshNode};

/// Where this node stands with a remote cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemoteState {
    /// Not reached yet since the agent started: nothing learned.
    Connecting,
    /// Its etcd is read and watched.
    Connected,
    /// Its etcd cannot be reached but its nodes answer: what was learned
    /// stays (until the stale time, if one is set).
    EtcdAway,
    /// Its etcd stayed away longer than the stale time: its backends left
    /// this node's tables.
    Stale,
    /// Its etcd and every node of it are gone: its backends left this
    /// node's tables.
    Lost,
}

impl RemoteState {
    pub fn name(self) -> &'static str {
        match self {
            RemoteState::Connecting => "connecting",
            RemoteState::Connected => "connected",
            RemoteState::EtcdAway => "etcd-away",
            RemoteState::Stale => "stale",
            RemoteState::Lost => "lost",
        }
    }

    /// Whether the cluster's backends are out of this node's tables.
    pub fn dropped(self) -> bool {
        matches!(self, RemoteState::Stale | RemoteState::Lost)
    }
}

/// One remote cluster, as this node sees it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteStatus {
    pub etcd: String,
    pub state: RemoteState,
    /// When the state last changed.
    #[serde(serialize_with = "unix_seconds")]
    pub since: SystemTime,
    pub nodes: Vec<MeshNode>,
    /// Distinct identities of its pods known here.
    pub identities: usize,
    /// Its global services shared with this cluster, and their backends.
    pub global_services: usize,
    pub backends: usize,
    /// Whether its last read found its sync canary (its services were all
    /// published): until then its previous services are kept.
    pub synced: bool,
    /// The revision of its store last merged into this node's tables, and when.
    pub applied_revision: i64,
    #[serde(serialize_with = "unix_seconds_opt")]
    pub applied_at: Option<SystemTime>,
    /// Times its etcd was lost, or a read of it failed.
    pub failures: u64,
    pub last_error: Option<String>,
    #[serde(serialize_with = "unix_seconds_opt")]
    pub last_error_at: Option<SystemTime>,
}

fn unix_seconds<S: serde::Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

fn unix_seconds_opt<S: serde::Serializer>(at: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => unix_seconds(at, s),
        None => s.serialize_none(),
    }
}

/// This node's view of the mesh.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshStatus {
    pub cluster: String,
    pub cluster_id: u8,
    pub node: String,
    /// This cluster's global services it shares (on the node that publishes them).
    pub shared_services: Option<usize>,
    pub remotes: BTreeMap<String, RemoteStatus>,
}

pub type SharedMeshStatus = Arc<Mutex<MeshStatus>>;

impl MeshStatus {
    pub fn new(cluster: &str, cluster_id: u8, node: &str, remotes: &[(String, String)]) -> Self {
        let now = SystemTime::now();
        let remotes = remotes
            .iter()
            .map(|(name, etcd)| {
                let status = RemoteStatus {
                    etcd: etcd.clone(),
                    state: RemoteState::Connecting,
                    since: now,
                    nodes: Vec::new(),
                    identities: 0,
                    global_services: 0,
                    backends: 0,
                    synced: false,
                    applied_revision: 0,
                    applied_at: None,
                    failures: 0,
                    last_error: None,
                    last_error_at: None,
                };
                (name.clone(), status)
            })
            .collect();
        MeshStatus { cluster: cluster.to_string(), cluster_id, node: node.to_string(), shared_services: None, remotes }
    }

    /// Moves `cluster` to `state`, keeping `since` when it is already there.
    pub fn set_state(&mut self, cluster: &str, state: RemoteState) {
        if let Some(remote) = self.remotes.get_mut(cluster) {
            if remote.state != state {
                remote.state = state;
                remote.since = SystemTime::now();
            }
        }
    }

    pub fn failed(&mut self, cluster: &str, error: String) {
        if let Some(remote) = self.remotes.get_mut(cluster) {
            remote.failures += 1;
            remote.last_error = Some(error);
            remote.last_error_at = Some(SystemTime::now());
        }
    }

    pub fn to_proto(&self) -> pb::StatusResponse {
        let unix = |at: SystemTime| at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        pb::StatusResponse {
            enabled: true,
            cluster: self.cluster.clone(),
            cluster_id: u32::from(self.cluster_id),
            node: self.node.clone(),
            shares_services: self.shared_services.is_some(),
            shared_services: self.shared_services.unwrap_or(0) as u64,
            remotes: self
                .remotes
                .iter()
                .map(|(name, r)| pb::RemoteCluster {
                    name: name.clone(),
                    cluster_id: r.nodes.first().map_or(0, |n| u32::from(n.cluster_id)),
                    etcd: r.etcd.clone(),
                    state: r.state.name().to_string(),
                    ready: r.state == RemoteState::Connected,
                    since_unix_ns: unix(r.since),
                    nodes: r.nodes.len() as u64,
                    identities: r.identities as u64,
                    global_services: r.global_services as u64,
                    backends: r.backends as u64,
                    synced: r.synced,
                    failures: r.failures,
                    last_error: r.last_error.clone().unwrap_or_default(),
                    last_error_unix_ns: r.last_error_at.map_or(0, unix),
                    applied_revision: r.applied_revision,
                    applied_unix_ns: r.applied_at.map_or(0, unix),
                })
                .collect(),
        }
    }
}

/// `<state dir>/clustermesh.json`: [`MeshStatus`], with each remote
/// cluster's nodes. Written under the status lock: several tasks write it.
pub(super) fn write_status(context: &MeshContext, learned: &Mutex<Learned>) {
    let Ok(guard) = context.status.lock() else { return };
    let mut status = guard.clone();
    if let Ok(l) = learned.lock() {
        for (cluster, remote) in &mut status.remotes {
            remote.nodes = l.clusters.get(cluster).map(|n| n.values().cloned().collect()).unwrap_or_default();
        }
    }
    let path = context.state_dir.join("clustermesh.json");
    let tmp = context.state_dir.join("clustermesh.json.tmp");
    let written = serde_json::to_vec_pretty(&status)
        .map_err(std::io::Error::other)
        .and_then(|json| std::fs::write(&tmp, json))
        .and_then(|()| std::fs::rename(&tmp, &path));
    drop(guard);
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "writing the mesh's status");
    }
}

/// The `ClusterMesh` gRPC service: this node's [`MeshStatus`], or
/// `enabled: false` outside a mesh.
#[derive(Debug, Clone)]
pub struct ClusterMeshService(pub Option<SharedMeshStatus>);

#[tonic::async_trait]
impl pb::cluster_mesh_server::ClusterMesh for ClusterMeshService {
    async fn status(
        &self,
        _request: tonic::Request<pb::StatusRequest>,
    ) -> Result<tonic::Response<pb::StatusResponse>, tonic::Status> {
        let status = match &self.0 {
            Some(status) => status.lock().map(|s| s.to_proto()).unwrap_or_default(),
            None => pb::StatusResponse::default(),
        };
        Ok(tonic::Response::new(status))
    }
}
