//! The `ClusterMesh` document: several clusters on one fabric, parsed,
//! validated and lowered to one `Lab` per cluster, with no I/O.
//!
//! Each cluster is a lab of its own (its name is the lab's name): its own
//! nodes, pods, etcd and agents, its own pods file. What the clusters share
//! is the fabric, a bridge in the mesh's namespace `weir.<mesh>.fabric`, so
//! nodes of different clusters reach each other. Fabric addresses are
//! assigned mesh-wide, so lowering gives every node and external host an
//! explicit one.
//!
//! **Invariant: a mesh that passes [`MeshSpec::parse`] lowers to labs that
//! each pass [`LabSpec::validate`], and that never collide** (names, ids,
//! fabric addresses, pod CIDRs, pod addresses).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use weir_spec::err;

use crate::plan::LabPlan;
use crate::spec::{
    check_dns_label, ExternalHostSpec, Fabric, LabBody, LabSpec, Metadata, NamespaceSpec, NodeSpec, PodSpec, Routing,
    SpecError, API_VERSION, MAX_LAB_NAME,
};

pub const KIND: &str = "ClusterMesh";
/// Cilium's limit: a cluster id is 1–255 and sits in bits 16–23 of every
/// identity the cluster allocates.
pub const MAX_CLUSTER_ID: u32 = 255;

/// Several clusters on one fabric, as written in YAML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshSpec {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: MeshBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshBody {
    /// The fabric every cluster's nodes sit on.
    #[serde(default)]
    pub fabric: Fabric,
    pub clusters: Vec<ClusterSpec>,
    /// How long a remote cluster whose etcd cannot be reached, while its
    /// nodes still answer, keeps its last known backends in the others'
    /// tables (`500ms`, `30s`, `10m`; `0`: until it is reached again, as
    /// Cilium). A cluster whose etcd and nodes are all gone is dropped at
    /// once, whatever this says. Default: 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_stale_after: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterSpec {
    /// The cluster's name, also its lab's name (a DNS label of at most 20 characters).
    pub name: String,
    /// 1–255, unique in the mesh.
    pub id: u32,
    /// The cluster, as a `Lab`'s spec without what the mesh decides (the
    /// fabric is the mesh's; a mesh is IPv4 only).
    pub spec: ClusterBody,
}

/// A `Lab`'s spec less `fabric` and `dualStack`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterBody {
    /// `kernel` or `weir` (native routing: each node routes other clusters'
    /// pod CIDRs via their nodes, as it learns them from their etcd), or
    /// `vxlan` (tunnelled to their nodes; then every cluster uses vxlan).
    #[serde(default)]
    pub routing: Routing,
    pub nodes: Vec<NodeSpec>,
    #[serde(default)]
    pub namespaces: Vec<NamespaceSpec>,
    #[serde(default)]
    pub pods: Vec<PodSpec>,
    #[serde(default)]
    pub external_hosts: Vec<ExternalHostSpec>,
}

/// What a cluster's lab knows of the mesh it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshMember {
    pub mesh: String,
    pub cluster_id: u32,
    /// Every other cluster of the mesh by name, with its etcd's client URL.
    pub peers: Vec<(String, String)>,
    /// `spec.remoteStaleAfter`, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_after: Option<String>,
}

/// The `kind` of a YAML document, to tell a `Lab` from a `ClusterMesh`.
pub fn document_kind(yaml: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Kind {
        kind: String,
    }
    weir_spec::parse_yaml::<Kind>(yaml).ok().map(|k| k.kind)
}

impl MeshSpec {
    pub fn parse(yaml: &str) -> Result<Self, SpecError> {
        let mesh: MeshSpec = weir_spec::parse_yaml(yaml)?;
        mesh.validate()?;
        Ok(mesh)
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// Every check the lowering and `weir lab up` rely on.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.api_version != API_VERSION {
            return Err(err("apiVersion", format!("must be {API_VERSION:?}, not {:?}", self.api_version)));
        }
        if self.kind != KIND {
            return Err(err("kind", format!("must be {KIND:?}, not {:?}", self.kind)));
        }
        check_dns_label("metadata.name", self.name(), MAX_LAB_NAME)?;
        if self.spec.clusters.is_empty() {
            return Err(err("spec.clusters", "a mesh needs at least one cluster"));
        }
        if let Some(after) = &self.spec.remote_stale_after {
            weir_spec::parse_duration_or_zero(after).map_err(|e| err("spec.remoteStaleAfter", e))?;
        }
        let fabric = self.spec.fabric.cidr;
        let mut names = BTreeSet::new();
        let mut ids = BTreeSet::new();
        let mut node_names = BTreeSet::new();
        let mut cidrs: Vec<(String, Ipv4Net)> = Vec::new();
        for (i, cluster) in self.spec.clusters.iter().enumerate() {
            let at = format!("spec.clusters[{i}]");
            check_dns_label(&format!("{at}.name"), &cluster.name, MAX_LAB_NAME)?;
            if cluster.name == self.name() {
                return Err(err(format!("{at}.name"), "a cluster cannot have the mesh's name: both name labs"));
            }
            if !names.insert(cluster.name.as_str()) {
                return Err(err(format!("{at}.name"), format!("duplicate cluster name {:?}", cluster.name)));
            }
            if !(1..=MAX_CLUSTER_ID).contains(&cluster.id) {
                return Err(err(format!("{at}.id"), format!("{} is out of range: a cluster id is 1-255", cluster.id)));
            }
            if !ids.insert(cluster.id) {
                return Err(err(format!("{at}.id"), format!("duplicate cluster id {}", cluster.id)));
            }
            let body = &cluster.spec;
            if body.routing == Routing::None {
                return Err(err(format!("{at}.spec.routing"), "none: a cluster of a mesh routes to the others"));
            }
            // An overlay cluster tunnels to the other clusters' nodes: they
            // must all take VXLAN.
            let overlay = |c: &ClusterSpec| c.spec.routing == Routing::Vxlan;
            if overlay(cluster) != overlay(&self.spec.clusters[0]) {
                return Err(err(
                    format!("{at}.spec.routing"),
                    format!(
                        "{}: in a mesh either every cluster uses vxlan or none does (cluster {} uses {})",
                        routing_name(body.routing),
                        self.spec.clusters[0].name,
                        routing_name(self.spec.clusters[0].spec.routing)
                    ),
                ));
            }
            // Each cluster on its own first: its errors name its fields.
            self.cluster_lab(cluster, body.nodes.iter().map(|n| n.address).collect()).validate().map_err(|e| {
                // The fabric is the mesh's field, not the cluster's.
                let field = if e.field.starts_with("spec.fabric") { e.field } else { format!("{at}.{}", e.field) };
                err(field, e.message)
            })?;
            for (j, node) in body.nodes.iter().enumerate() {
                // Node names name agents and metrics everywhere; keep them apart.
                if !node_names.insert(node.name.as_str()) {
                    return Err(err(
                        format!("{at}.spec.nodes[{j}].name"),
                        format!("node {:?} is in another cluster too", node.name),
                    ));
                }
                let field = format!("{at}.spec.nodes[{j}].podCIDR");
                let cidr = node.pod_cidr;
                for (other_field, other) in &cidrs {
                    if other.contains(&cidr.network()) || cidr.contains(&other.network()) {
                        return Err(err(field, format!("{cidr} overlaps {other} ({other_field})")));
                    }
                }
                cidrs.push((field, cidr));
            }
        }
        let mut addresses = BTreeSet::new();
        let mut wanted = 0;
        for (i, cluster) in self.spec.clusters.iter().enumerate() {
            let body = &cluster.spec;
            let explicit =
                body.nodes.iter().enumerate().map(|(j, n)| (n.address, format!("nodes[{j}]"))).chain(
                    body.external_hosts.iter().enumerate().map(|(j, h)| (h.address, format!("externalHosts[{j}]"))),
                );
            for (address, field) in explicit {
                wanted += 1;
                let Some(address) = address else { continue };
                if !addresses.insert(address) {
                    return Err(err(
                        format!("spec.clusters[{i}].spec.{field}.address"),
                        format!("duplicate fabric address {address}: the clusters share one fabric"),
                    ));
                }
            }
        }
        if fabric.hosts().count() < wanted {
            return Err(err(
                "spec.fabric.cidr",
                format!("{fabric} has fewer host addresses than the mesh's {wanted} nodes and external hosts"),
            ));
        }
        Ok(())
    }

    fn cluster_lab(&self, cluster: &ClusterSpec, addresses: Vec<Option<Ipv4Addr>>) -> LabSpec {
        let c = &cluster.spec;
        let mut body = LabBody {
            fabric: self.spec.fabric.clone(),
            routing: c.routing,
            dual_stack: false,
            nodes: c.nodes.clone(),
            namespaces: c.namespaces.clone(),
            pods: c.pods.clone(),
            external_hosts: c.external_hosts.clone(),
            edge: None,
        };
        for (node, address) in body.nodes.iter_mut().zip(addresses) {
            node.address = address;
        }
        LabSpec {
            api_version: API_VERSION.into(),
            kind: crate::spec::KIND.into(),
            metadata: Metadata { name: cluster.name.clone() },
            spec: body,
        }
    }

    /// One `Lab` per cluster, every fabric address explicit (the lowest free
    /// ones, in order of clusters, nodes, then external hosts), each with its
    /// cluster id. The mesh must have passed validation.
    pub fn lower(&self) -> Vec<(LabSpec, u32)> {
        let taken: BTreeSet<Ipv4Addr> = self
            .spec
            .clusters
            .iter()
            .flat_map(|c| {
                c.spec
                    .nodes
                    .iter()
                    .filter_map(|n| n.address)
                    .chain(c.spec.external_hosts.iter().filter_map(|h| h.address))
            })
            .collect();
        let mut free = self.spec.fabric.cidr.hosts().filter(|a| !taken.contains(a));
        let mut labs = Vec::new();
        for cluster in &self.spec.clusters {
            let nodes: Vec<Option<Ipv4Addr>> =
                cluster.spec.nodes.iter().map(|n| n.address.or_else(|| free.next())).collect();
            let mut lab = self.cluster_lab(cluster, nodes);
            for host in &mut lab.spec.external_hosts {
                host.address = host.address.or_else(|| free.next());
            }
            labs.push((lab, cluster.id));
        }
        labs
    }

    /// Each cluster's resolved lab: its fabric is the mesh's, its fabric
    /// ports carry its cluster id (they share one bridge), and it knows
    /// every other cluster's etcd.
    pub fn plans(&self) -> Vec<LabPlan> {
        let lowered = self.lower();
        let etcd_urls: Vec<(String, String)> = lowered
            .iter()
            .map(|(lab, _)| {
                let first = lab.spec.nodes[0].address.expect("lowered: every address is explicit");
                (lab.name().to_string(), crate::runtime::etcd_client_url(first))
            })
            .collect();
        lowered
            .into_iter()
            .map(|(lab, id)| {
                let mut plan = LabPlan::resolve(&lab, &weir_host::paths::lab_dir(lab.name()));
                plan.fabric_netns = fabric_netns(self.name());
                for (i, node) in plan.nodes.iter_mut().enumerate() {
                    node.fabric_port = format!("c{id}n{i}");
                }
                for (i, ext) in plan.externals.iter_mut().enumerate() {
                    ext.fabric_port = format!("c{id}x{i}");
                }
                plan.mesh = Some(MeshMember {
                    mesh: self.name().to_string(),
                    cluster_id: id,
                    peers: etcd_urls.iter().filter(|(name, _)| *name != plan.name).cloned().collect(),
                    stale_after: self.spec.remote_stale_after.clone(),
                });
                plan
            })
            .collect()
    }
}

fn routing_name(routing: Routing) -> &'static str {
    match routing {
        Routing::Kernel => "kernel",
        Routing::Weir => "weir",
        Routing::Vxlan => "vxlan",
        Routing::None => "none",
    }
}

/// The namespace of a mesh's shared fabric.
pub fn fabric_netns(mesh: &str) -> String {
    format!("weir.{mesh}.fabric")
}
