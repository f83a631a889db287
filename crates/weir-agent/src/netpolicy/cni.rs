//! What the agent learns of a CNI endpoint after ADD: the cgroup its
//! container runs in (see `cni_cgroups`) and a podman container's labels
//! (see `cni_podman`).

use std::collections::BTreeMap;
use std::path::Path;

use super::{NetPolicyError, NetPolicyState};
use crate::pods::{CniAttachment, PodRecord};

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

impl NetPolicyState {
    /// Gives the endpoint on `host_interface` podman's labels `podman_labels`
    /// under its own (which win, see `cni_podman::merge`) and marks podman's read, if
    /// the endpoint there is still the one in `netns` and has not had them
    /// yet; its identity and the policies that select it follow (nothing is
    /// installed when the labels are the same). Returns the endpoint's
    /// identity when it recorded them, None when it had nothing to do.
    pub fn set_cni_podman_labels(
        &mut self,
        host_interface: &str,
        netns: &str,
        podman_labels: BTreeMap<String, String>,
    ) -> Result<Option<u32>, NetPolicyError> {
        let Some(previous) = self.cni.get(host_interface).filter(|r| r.netns == netns).cloned() else {
            return Ok(None);
        };
        let Some(attachment) = previous.cni_attachment.clone().filter(|a| !a.podman_labels_read) else {
            return Ok(None);
        };
        // Merged here, under the lock: the labels ADD gave it now win.
        let (labels, _) = crate::cni_podman::merge(&previous.labels, podman_labels);
        let record = PodRecord {
            labels,
            cni_attachment: Some(CniAttachment { podman_labels_read: true, ..attachment }),
            ..previous.clone()
        };
        let identity_labels = super::pod_labels(&record, &self.options);
        let unchanged = record.labels == previous.labels;
        self.cni.insert(record)?;
        if unchanged {
            if let Some(r) = self.records.iter_mut().find(|r| r.host_interface == host_interface) {
                r.cni_attachment = self.cni.get(host_interface).and_then(|r| r.cni_attachment.clone());
            }
            return Ok(Some(self.cluster.identities.get(&identity_labels).copied().unwrap_or_default()));
        }
        if let Err(e) = self.reload_pods().and_then(|()| self.install()) {
            // As before: the old labels, podman's unread (a restart tries again).
            let _ = self.cni.insert(previous);
            self.installed.clear();
            let _ = self.reload_pods().and_then(|()| self.install());
            return Err(e);
        }
        Ok(Some(self.cluster.identities.get(&identity_labels).copied().unwrap_or_default()))
    }
}
