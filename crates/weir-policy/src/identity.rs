//! Security identities: a number for each distinct set of identity-relevant
//! labels (the namespace, its labels and the pod's labels), the same on every
//! node. Reserved numbers follow Cilium's, so its users read them as before.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The node itself (every address of this node).
pub const HOST: u32 = 1;
/// Anything outside the cluster that no CIDR of a policy names.
pub const WORLD: u32 = 2;
/// Another node of the cluster.
pub const REMOTE_NODE: u32 = 6;
/// The first number handed to a label set.
pub const FIRST_ALLOCATED: u32 = 256;
/// The largest number the VXLAN header can carry (24 bits): pod identities
/// never exceed it, since they travel in the tunnel.
pub const MAX_ALLOCATED: u32 = (1 << 24) - 1;
/// CIDRs named by policies get node-local identities from here up; they
/// never travel.
pub const FIRST_CIDR: u32 = 1 << 24;
/// In a policy entry: every identity.
pub const ANY: u32 = 0;

/// The labels that decide a pod's identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IdentityLabels {
    pub namespace: String,
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Cilium's label keys for the namespace and its labels.
pub const NAMESPACE_KEY: &str = "io.kubernetes.pod.namespace";
pub const NAMESPACE_LABEL_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

impl IdentityLabels {
    /// One flat label map, as Cilium's endpoint selectors see it: the pod's
    /// labels, the namespace under `io.kubernetes.pod.namespace`, and the
    /// namespace's labels under `io.cilium.k8s.namespace.labels.`.
    pub fn flat(&self) -> BTreeMap<String, String> {
        let mut flat = self.labels.clone();
        flat.insert(NAMESPACE_KEY.into(), self.namespace.clone());
        for (k, v) in &self.namespace_labels {
            flat.insert(format!("{NAMESPACE_LABEL_PREFIX}{k}"), v.clone());
        }
        flat
    }
}

/// The canonical text of a label set: sorted `k8s:key=value` pairs joined
/// by `;`. It is the label set's key in etcd, so it never changes shape.
impl fmt::Display for IdentityLabels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pairs: Vec<String> = self.flat().iter().map(|(k, v)| format!("k8s:{k}={v}")).collect();
        f.write_str(&pairs.join(";"))
    }
}

/// The name of a reserved identity, if it is one.
pub fn reserved_name(identity: u32) -> Option<&'static str> {
    match identity {
        HOST => Some("host"),
        WORLD => Some("world"),
        REMOTE_NODE => Some("remote-node"),
        ANY => Some("any"),
        _ => None,
    }
}

/// The numbers a cluster allocates. Outside a mesh (cluster id 0), every
/// number from FIRST_ALLOCATED; in a mesh, as Cilium numbers them, the
/// cluster id sits in bits 16-23 and the cluster numbers its label sets in
/// the 16 bits below (from 256), so two clusters never give one number.
pub fn cluster_range(cluster_id: u8) -> std::ops::RangeInclusive<u32> {
    match u32::from(cluster_id) {
        0 => FIRST_ALLOCATED..=MAX_ALLOCATED,
        id => (id << 16 | FIRST_ALLOCATED)..=(id << 16 | 0xffff),
    }
}

/// The cluster id an allocated identity carries (0 outside a mesh).
pub fn cluster_of(identity: u32) -> u8 {
    ((identity >> 16) & 0xff) as u8
}

/// Hands out numbers to label sets on one node (a cluster of one): the
/// lowest free number from FIRST_ALLOCATED. A cluster of several nodes
/// allocates through etcd instead, with the same numbering.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LocalAllocator {
    pub identities: BTreeMap<String, u32>,
}

impl LocalAllocator {
    pub fn allocate(&mut self, labels: &IdentityLabels) -> Option<u32> {
        let key = labels.to_string();
        if let Some(id) = self.identities.get(&key) {
            return Some(*id);
        }
        let used: std::collections::BTreeSet<u32> = self.identities.values().copied().collect();
        let id = (FIRST_ALLOCATED..=MAX_ALLOCATED).find(|id| !used.contains(id))?;
        self.identities.insert(key, id);
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_of_a_mesh_number_identities_apart_with_their_id_in_bits_16_to_23() {
        assert_eq!(cluster_range(0), FIRST_ALLOCATED..=MAX_ALLOCATED);
        let (one, two, last) = (cluster_range(1), cluster_range(2), cluster_range(255));
        assert_eq!((*one.start(), *one.end()), (0x1_0100, 0x1_ffff));
        assert_eq!((*two.start(), *two.end()), (0x2_0100, 0x2_ffff));
        assert_eq!(*last.end(), MAX_ALLOCATED);
        assert!(one.end() < two.start());
        assert_eq!(cluster_of(*two.start()), 2);
        assert_eq!(cluster_of(*last.end()), 255);
    }

    fn labels(ns: &str, pairs: &[(&str, &str)]) -> IdentityLabels {
        IdentityLabels {
            namespace: ns.into(),
            namespace_labels: BTreeMap::new(),
            labels: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn label_sets_get_stable_numbers_from_256() {
        let mut alloc = LocalAllocator::default();
        let web = alloc.allocate(&labels("a", &[("app", "web")])).expect("id");
        let api = alloc.allocate(&labels("b", &[("app", "web")])).expect("id");
        assert_eq!((web, api), (256, 257));
        assert_eq!(alloc.allocate(&labels("a", &[("app", "web")])), Some(256));
        assert_eq!(labels("a", &[("app", "web")]).to_string(), "k8s:app=web;k8s:io.kubernetes.pod.namespace=a");
    }
}
