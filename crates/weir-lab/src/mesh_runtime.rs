//! Building, inspecting and tearing down a mesh: its fabric, then each
//! cluster as a lab of its own on it.
//!
//! A mesh's record (`<labs dir>/<mesh>/mesh.json`) is its spec; each
//! cluster keeps its own lab record, which names the mesh. `down` of the
//! mesh takes its clusters down first, then the fabric; `down` of one
//! cluster leaves the others and the fabric running.

use std::fs;
use std::time::Instant;

use serde::Serialize;
use weir_host::{netns, paths};

use crate::mesh::{fabric_netns, MeshSpec};
use crate::runtime::{self, io_err, LabError, LabSummary, UpOptions, UpReport, MESH_RECORD};

/// What `up` of a mesh did, cluster by cluster.
#[derive(Debug, Clone, Serialize)]
pub struct MeshUpReport {
    pub name: String,
    /// False when the fabric was already up.
    pub built: bool,
    pub clusters: Vec<UpReport>,
    pub elapsed_ms: u128,
}

/// The mesh's recorded spec, if `name` is a mesh.
pub fn load(name: &str) -> Option<MeshSpec> {
    let text = fs::read_to_string(paths::lab_dir(name).join(MESH_RECORD)).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn is_mesh(name: &str) -> bool {
    paths::lab_dir(name).join(MESH_RECORD).exists()
}

/// The clusters of mesh `name` (none when it is not a mesh).
pub fn clusters_of(name: &str) -> Vec<String> {
    load(name).map(|m| m.spec.clusters.into_iter().map(|c| c.name).collect()).unwrap_or_default()
}

/// Builds the mesh's fabric (unless it is up) and every cluster on it;
/// a mesh that is up takes the changes a lab takes (pods and namespaces).
pub fn up(mesh: &MeshSpec, options: &UpOptions) -> Result<MeshUpReport, LabError> {
    let start = Instant::now();
    mesh.validate()?;
    let name = mesh.name().to_string();
    if runtime::load_plan(&name).is_ok() {
        return Err(LabError::Conflict { name, what: "kind (it is a Lab, not a ClusterMesh)" });
    }
    let plans = mesh.plans();
    // Every cluster is checked before any changes: a refused change leaves
    // the whole mesh as it was.
    for plan in &plans {
        if let Ok(existing) = runtime::load_plan(&plan.name) {
            if existing.mesh.as_ref().map(|m| m.mesh.as_str()) != Some(name.as_str()) {
                return Err(LabError::Conflict {
                    name: plan.name.clone(),
                    what: "mesh membership (a lab of that name is up outside this mesh)",
                });
            }
        }
        runtime::check_change(plan)?;
    }
    let fabric = fabric_netns(&name);
    let built = match load(&name) {
        Some(existing) if netns::exists(&fabric) => {
            let same_clusters = |m: &MeshSpec| -> Vec<(String, u32)> {
                m.spec.clusters.iter().map(|c| (c.name.clone(), c.id)).collect()
            };
            if existing.spec.fabric != mesh.spec.fabric {
                return Err(LabError::Conflict { name, what: "fabric" });
            }
            if same_clusters(&existing) != same_clusters(mesh) {
                return Err(LabError::Conflict { name, what: "cluster list (names and ids)" });
            }
            false
        }
        _ => {
            runtime::down(&name)?;
            let dir = paths::lab_dir(&name);
            fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
            weir_host::iproute::batch(None, &[format!("netns add {fabric}")])?;
            runtime::build_fabric(&fabric)?;
            true
        }
    };
    let record = paths::lab_dir(&name).join(MESH_RECORD);
    let json = serde_json::to_string_pretty(mesh)
        .map_err(|e| LabError::Record { path: record.clone(), message: e.to_string() })?;
    fs::write(&record, json).map_err(io_err("writing", &record))?;
    let mut clusters = Vec::new();
    for plan in plans {
        clusters.push(runtime::up_plan(plan, options)?);
    }
    Ok(MeshUpReport { name, built, clusters, elapsed_ms: start.elapsed().as_millis() })
}

/// A mesh as `weir lab list` shows it: its nodes and pods, all clusters together.
pub(crate) fn summary(name: String) -> LabSummary {
    let plans: Vec<_> = clusters_of(&name).iter().filter_map(|c| runtime::load_plan(c).ok()).collect();
    LabSummary {
        state: format!("mesh of {}", clusters_of(&name).join(",")),
        nodes: plans.iter().map(|p| p.nodes.len()).sum(),
        pods: plans.iter().map(|p| p.pods.len()).sum(),
        agents_running: plans.iter().flat_map(|p| &p.nodes).filter(|n| runtime::agent_pid(n).is_some()).count(),
        name,
    }
}
