//! Which interfaces the node datapath serves besides the uplinks (pods'
//! veths, the overlay device), and bringing the kernel's attachments in
//! step when pods come and go.

use std::collections::BTreeMap;

use weir_bpf::datapath::PodVethsChange;

use super::NetPolicyState;

/// The interfaces the node datapath is to serve, and those that came or
/// went. A veth made again under the same name (a new index) came: its
/// old links died with the old device.
#[derive(Debug)]
pub(super) struct VethChange {
    pub wanted: BTreeMap<String, u32>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// Those of `names` that are there, with their current indexes: an
/// interface that is gone (a lab pod's veth, with its namespace) cannot be
/// served, and one that comes back is a new one.
pub(super) fn by_index<'a>(names: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, u32> {
    names.into_iter().map(|name| (name.clone(), crate::pods::ifindex(name))).filter(|(_, index)| *index != 0).collect()
}

impl NetPolicyState {
    /// Which interfaces the node datapath serves from now on, given the
    /// local pods' veths, and what changes; None when nothing does.
    pub(super) fn veth_change(&self, local_veths: &[String]) -> Option<VethChange> {
        let others =
            self.options.pod_interfaces.iter().filter(|i| !self.records.iter().any(|r| &r.host_interface == *i));
        let wanted = by_index(others.chain(local_veths));
        let added: Vec<String> = wanted
            .iter()
            .filter(|(name, index)| self.served.get(*name) != Some(index))
            .map(|(n, _)| n.clone())
            .collect();
        let removed: Vec<String> = self.served.keys().filter(|name| !wanted.contains_key(*name)).cloned().collect();
        (!added.is_empty() || !removed.is_empty()).then_some(VethChange { wanted, added, removed })
    }

    /// Records what [`weir_bpf::datapath::serve_pod_veths`] did for `change`.
    pub(super) fn served(&mut self, change: VethChange, done: PodVethsChange) {
        let VethChange { wanted, added, removed } = change;
        tracing::info!(
            ?added,
            ?removed,
            links_removed = done.links_removed.len(),
            "pods changed: the node datapath serves their veths"
        );
        if let Ok(mut a) = self.options.attachments.lock() {
            a.retain(|a| !added.contains(&a.interface) && !removed.contains(&a.interface));
            a.extend(done.attached);
        }
        self.served = wanted;
    }
}
