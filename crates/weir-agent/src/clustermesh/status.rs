//! What the node knows of the mesh, for `weir clustermesh status`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Learned, MeshContext, MeshNode};

/// `<state dir>/clustermesh.json`: each remote cluster, whether its etcd is
/// reached, and its nodes as learned.
pub(super) fn write_status(context: &MeshContext, learned: &Mutex<Learned>) {
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
