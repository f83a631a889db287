//! What a node of a cluster of several remembers of the cluster's etcd, so
//! that it restarts and enforces while etcd is away: the other nodes' pods
//! and the identity numbers it last read (`<state dir>/cluster.json`,
//! rewritten whenever they change). Label sets etcd never numbered wait for
//! etcd's return; nothing is published meanwhile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
