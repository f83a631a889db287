//! What a node of a cluster of several remembers of the cluster's etcd, so
//! that it restarts and enforces while etcd is away: the other nodes' pods
//! and the identity numbers it last read (`<state dir>/cluster.json`,
//! rewritten whenever they change). Label sets etcd never numbered wait for
//! etcd's return; nothing is published meanwhile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{NetPolicyError, NetPolicyState};
use crate::identities::{Allocator, IdentityError};
use crate::kvstore::Kvstore;
use crate::pods::PodRecord;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterMemory {
    pub remote_pods: Vec<PodRecord>,
    /// Label set (as written in etcd's keys) → identity number.
    pub numbers: BTreeMap<String, u32>,
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("cluster.json")
}

/// The memory of an earlier run, if there is one.
pub fn load(state_dir: &Path) -> Option<ClusterMemory> {
    let text = std::fs::read_to_string(path(state_dir)).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn save(state_dir: &Path, memory: &ClusterMemory) -> std::io::Result<()> {
    let file = path(state_dir);
    let text = serde_json::to_string(memory).map_err(std::io::Error::other)?;
    // Write-then-rename: a crash never leaves a torn file.
    let tmp = file.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &file)
}

/// The clients of a cluster of several nodes: identity numbers and pods,
/// both in etcd. Call on a blocking thread of the agent's runtime.
pub fn connect_cluster(
    endpoints: &[String],
    node: &str,
    cluster_id: u8,
) -> Result<(Allocator, Kvstore), IdentityError> {
    let allocator = Allocator::etcd(endpoints, cluster_id, tokio::runtime::Handle::current())?;
    let mut kvstore = Kvstore::connect(endpoints, node, tokio::runtime::Handle::current())?;
    // Connecting is lazy: one read says whether etcd answers.
    kvstore.revision()?;
    Ok((allocator, kvstore))
}

impl NetPolicyState {
    /// Keeps, in the state dir, the other nodes' pods and the identity
    /// numbers read from etcd, for a start while etcd is away.
    pub(super) fn remember_cluster(&mut self) {
        if self.kvstore.is_none() {
            return;
        }
        let memory = ClusterMemory {
            remote_pods: self.records.iter().filter(|r| r.node != self.options.node).cloned().collect(),
            numbers: self.cluster.identities.iter().map(|(labels, id)| (labels.to_string(), *id)).collect(),
        };
        let text = serde_json::to_string(&memory).unwrap_or_default();
        if self.memory_written.as_ref() == Some(&text) {
            return;
        }
        match save(&self.options.state_dir, &memory) {
            Ok(()) => self.memory_written = Some(text),
            Err(e) => tracing::warn!(error = %e, "remembering the cluster in the state dir"),
        }
    }

    /// Where etcd is, while this node started without it (and not since
    /// reached): the agent reconnects with [`connect_cluster`] off the lock,
    /// then hands the clients to [`NetPolicyState::etcd_back`].
    pub fn etcd_away(&self) -> Option<(Vec<String>, String, u8)> {
        self.remembered
            .as_ref()
            .map(|_| (self.options.etcd.clone(), self.options.node.clone(), self.options.cluster_id))
    }

    /// etcd is back: identities and pods come from it again, and this
    /// node's pods are published.
    pub fn etcd_back(&mut self, allocator: Allocator, kvstore: Kvstore) -> Result<(), NetPolicyError> {
        self.allocator = allocator;
        self.kvstore = Some(kvstore);
        self.remembered = None;
        self.published = None;
        tracing::info!("etcd reached: the cluster's pods and identities follow it again");
        self.reload_pods()?;
        self.install()?;
        self.record_applied();
        Ok(())
    }
}
