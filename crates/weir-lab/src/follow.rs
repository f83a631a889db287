//! Waiting for the agents to apply a change of the lab's pods file.
//!
//! On the pod path each agent records, in its state directory, the digest
//! of the pods file whose pods — its own, and every other node's as they
//! published them — its kernel tables follow (see
//! `weir_host::pods_file`). `weir lab up` returns only once every running
//! agent has recorded the file it wrote, so a connection made right after it
//! meets the new identities and policies.

use std::path::Path;
use std::time::{Duration, Instant};

use weir_host::pods_file;

use crate::plan::LabPlan;
use crate::runtime::{agent_pid, LabError};

/// How long the agents get to apply a pods file.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether this lab's agents follow the pods file into kernel tables (the
/// pod path); elsewhere they read it when they use it, and there is nothing
/// to wait for.
pub fn agents_apply_pods(plan: &LabPlan) -> bool {
    plan.spec.spec.routing.pod_path()
}

/// The digest of the pods file at `file` as it is now.
pub fn current_digest(file: &Path) -> Result<String, LabError> {
    let bytes =
        std::fs::read(file).map_err(|source| LabError::Io { what: "reading", path: file.to_path_buf(), source })?;
    Ok(pods_file::digest(&bytes))
}

/// Waits until every running agent of `plan` has applied the pods file with
/// `digest`, or `timeout` passes (an error naming the agents behind).
pub fn wait_applied(plan: &LabPlan, digest: &str, timeout: Duration) -> Result<Duration, LabError> {
    let start = Instant::now();
    loop {
        let behind: Vec<&str> = plan
            .nodes
            .iter()
            .filter(|n| agent_pid(n).is_some())
            .filter(|n| pods_file::applied(&n.agent.state_dir).as_deref() != Some(digest))
            .map(|n| n.name.as_str())
            .collect();
        if behind.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(LabError::AgentsBehind { lab: plan.name.clone(), nodes: behind.join(", "), waited: timeout });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
