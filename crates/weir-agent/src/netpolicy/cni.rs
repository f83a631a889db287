//! What the agent learns of a CNI endpoint after ADD: the cgroup its
//! container runs in (see `cni_cgroups`).

use std::path::Path;

use super::{NetPolicyError, NetPolicyState};
use crate::pods::PodRecord;

impl NetPolicyState {
    /// The CNI endpoint on `host_interface`, if the agent has it.
    pub fn cni_endpoint(&self, host_interface: &str) -> Option<PodRecord> {
        self.cni.get(host_interface).cloned()
    }

    /// Every CNI endpoint the agent has.
    pub fn cni_endpoints(&self) -> Vec<PodRecord> {
        self.cni.records().cloned().collect()
    }

    /// Records the cgroup of the container on `host_interface`, if the
    /// endpoint there is still the one in `netns` (not deleted, nor replaced
    /// by another container's); returns whether it did. The kernel's maps do
    /// not depend on it: nothing is installed again.
    pub fn set_cni_cgroup(&mut self, host_interface: &str, netns: &str, cgroup: &Path) -> Result<bool, NetPolicyError> {
        let Some(mut record) = self.cni.get(host_interface).filter(|r| r.netns == netns).cloned() else {
            return Ok(false);
        };
        if record.cgroup == cgroup {
            return Ok(true);
        }
        record.cgroup = cgroup.to_path_buf();
        self.cni.insert(record)?;
        if let Some(r) = self.records.iter_mut().find(|r| r.host_interface == host_interface) {
            r.cgroup = cgroup.to_path_buf();
        }
        Ok(true)
    }
}
