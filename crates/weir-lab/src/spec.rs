//! The `Lab` document: parsing and validation, with no I/O.
//!
//! **Invariant: a spec that passes [`LabSpec::parse`] can be built.** Every
//! check that could make `weir lab up` fail half-way (overlaps, duplicates,
//! dangling references, exhausted address ranges) runs here first, so a bad
//! spec creates nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "weir.dev/v1alpha1";
pub const KIND: &str = "Lab";
/// Lab names become part of netns, cgroup and pin names; keep them short.
pub const MAX_LAB_NAME: usize = 20;
pub const DEFAULT_FABRIC_CIDR: &str = "172.30.0.0/24";

/// A whole lab cluster, as written in YAML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabSpec {
    /// Must be `weir.dev/v1alpha1`.
    pub api_version: String,
    /// Must be `Lab`.
    pub kind: String,
    pub metadata: Metadata,
    pub spec: LabBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The lab's name: a DNS label of at most 20 characters.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabBody {
    /// The shared L2 segment nodes and external hosts sit on.
    #[serde(default)]
    pub fabric: Fabric,
    /// How pods reach pods on other nodes: `kernel` (each node's kernel
    /// forwards, with a route per other node's pod CIDR), `weir` (the same
    /// routes, but Weir's datapath carries pod traffic past each node's IP
    /// stack: into a pod with bpf_redirect_peer, out of a node with a FIB
    /// lookup), `vxlan` (Weir's datapath, with other nodes' pods reached
    /// through a VXLAN overlay: the fabric carries no pod routes) or `none`
    /// (pods reach only their own node).
    #[serde(default)]
    pub routing: Routing,
    /// Give nodes, pods and external hosts IPv6 addresses too (derived:
    /// fabric fd00:fab::/64, node i's pods fd00:10:244:i::/64).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dual_stack: bool,
    pub nodes: Vec<NodeSpec>,
    #[serde(default)]
    pub namespaces: Vec<NamespaceSpec>,
    #[serde(default)]
    pub pods: Vec<PodSpec>,
    /// Hosts on the fabric that are not part of the cluster, e.g. a client "on the internet".
    #[serde(default)]
    pub external_hosts: Vec<ExternalHostSpec>,
    /// The cluster's edge, as a deployment in front of it has: XDP load
    /// balancers (`weir lb`) on the fabric, a router sending the VIPs to
    /// all of them (ECMP), and clients behind that router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<EdgeSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EdgeSpec {
    /// The load-balancer nodes: each runs an agent with `--lb-interface`
    /// on its fabric link, and serves every Service of type LoadBalancer
    /// with `loadBalancerClass: weir.dev/xdp`.
    pub load_balancers: Vec<EdgeMemberSpec>,
    /// Hosts behind the router: what reaches the VIPs from "the internet".
    #[serde(default)]
    pub clients: Vec<EdgeMemberSpec>,
    /// The subnet between the router and the clients (the router holds its
    /// first host address).
    #[serde(default = "default_client_cidr", rename = "clientCIDR")]
    pub client_cidr: Ipv4Net,
    /// The VIPs: the router sends this prefix to every load balancer, one
    /// equal-cost path each, hashing flows by their addresses and ports.
    #[serde(default = "default_vip_cidr", rename = "vipCIDR")]
    pub vip_cidr: Ipv4Net,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeMemberSpec {
    pub name: String,
}

/// TEST-NET-1 (RFC 5737): never routed on the real Internet.
pub const DEFAULT_CLIENT_CIDR: &str = "192.0.2.0/24";
/// TEST-NET-2 (RFC 5737).
pub const DEFAULT_VIP_CIDR: &str = "198.51.100.0/24";
/// Enough for an ECMP group on one router.
pub const MAX_LOAD_BALANCERS: usize = 8;

fn default_client_cidr() -> Ipv4Net {
    DEFAULT_CLIENT_CIDR.parse().expect("the default client CIDR parses")
}

fn default_vip_cidr() -> Ipv4Net {
    DEFAULT_VIP_CIDR.parse().expect("the default VIP CIDR parses")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fabric {
    /// IPv4 subnet of the fabric; node and external host addresses come from it.
    pub cidr: Ipv4Net,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    #[default]
    Kernel,
    Weir,
    Vxlan,
    None,
}

impl Routing {
    /// Nodes route between each other's pod CIDRs over the fabric.
    pub fn routes(self) -> bool {
        matches!(self, Self::Kernel | Self::Weir)
    }

    /// Weir's pod path carries pod traffic.
    pub fn pod_path(self) -> bool {
        matches!(self, Self::Weir | Self::Vxlan)
    }
}

/// A pod with this label set to `disabled` is left alone by the socket load balancer.
pub const SOCKET_LB_LABEL: &str = "weir.dev/socket-lb";

impl Default for Fabric {
    fn default() -> Self {
        Self { cidr: DEFAULT_FABRIC_CIDR.parse().expect("default fabric CIDR parses") }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSpec {
    pub name: String,
    /// IPv4 subnet this node's pods take addresses from.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Ipv4Net,
    /// The node's fabric address; assigned in order when absent.
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    /// Node labels, for later node-selecting features.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceSpec {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub node: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// As a pod's `metadata.generateName`: the prefix its controller named
    /// it from (`web-5d8f7c9b4-`), which marks it as a controller's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<String>,
    /// As a pod's `metadata.ownerReferences`: the controller that owns it
    /// (Hubble names the pod's workload from it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<weir_spec::OwnerReference>,
    /// The pod's address; assigned in order from the node's podCIDR when absent.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// Ports the pod declares, as a container's `ports`: network policies
    /// name them (named ports).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PodPort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodPort {
    pub name: String,
    pub container_port: u16,
    /// TCP (the default), UDP or SCTP.
    #[serde(default = "default_port_protocol")]
    pub protocol: String,
}

fn default_port_protocol() -> String {
    "TCP".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalHostSpec {
    pub name: String,
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
}

use weir_spec::err;
pub use weir_spec::{check_dns_label, SpecError};

/// Checks label keys and values as Kubernetes does (simplified: prefix/name, 63-char parts).
fn check_labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), SpecError> {
    let part_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
    };
    for (key, value) in labels {
        let name =
            key.rsplit_once('/')
                .map_or(key.as_str(), |(prefix, name)| if prefix.is_empty() || prefix.len() > 253 { "" } else { name });
        if !part_ok(name) {
            return Err(err(format!("{field}[{key:?}]"), "invalid label key: a name of at most 63 alphanumerics, '-', '_' or '.', optionally behind a DNS prefix and '/'"));
        }
        if !value.is_empty() && !part_ok(value) {
            return Err(err(format!("{field}[{key:?}]"), format!("invalid label value {value:?}: at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric")));
        }
    }
    Ok(())
}

/// A pod's owners name their kind and object, and at most one is its controller.
fn check_owners(field: &str, pod: &PodSpec) -> Result<(), SpecError> {
    for (j, owner) in pod.owner_references.iter().enumerate() {
        let at = format!("{field}.ownerReferences[{j}]");
        for (name, value) in [("apiVersion", &owner.api_version), ("kind", &owner.kind), ("name", &owner.name)] {
            if value.trim().is_empty() {
                return Err(err(format!("{at}.{name}"), "must not be empty"));
            }
        }
    }
    if pod.owner_references.iter().filter(|o| o.controller == Some(true)).count() > 1 {
        return Err(err(format!("{field}.ownerReferences"), "at most one owner may be the controller"));
    }
    if pod.generate_name.as_deref().is_some_and(|g| g.trim().is_empty()) {
        return Err(err(format!("{field}.generateName"), "must not be empty when given"));
    }
    Ok(())
}

impl LabSpec {
    /// Parses and validates a YAML document.
    pub fn parse(yaml: &str) -> Result<Self, SpecError> {
        let spec: LabSpec = weir_spec::parse_yaml(yaml)?;
        spec.validate()?;
        Ok(spec)
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// Every check that `weir lab up` relies on.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.api_version != API_VERSION {
            return Err(err("apiVersion", format!("must be {API_VERSION:?}, not {:?}", self.api_version)));
        }
        if self.kind != KIND {
            return Err(err("kind", format!("must be {KIND:?}, not {:?}", self.kind)));
        }
        check_dns_label("metadata.name", &self.metadata.name, MAX_LAB_NAME)?;
        let body = &self.spec;
        let fabric = body.fabric.cidr;
        if fabric.prefix_len() > 29 {
            return Err(err("spec.fabric.cidr", format!("{fabric} is too small: use a prefix of /29 or shorter")));
        }
        if body.nodes.is_empty() {
            return Err(err("spec.nodes", "a lab needs at least one node"));
        }

        let mut host_names = BTreeSet::new();
        let mut cidrs: Vec<(String, Ipv4Net)> = vec![("spec.fabric.cidr".into(), fabric)];
        for (i, node) in body.nodes.iter().enumerate() {
            let field = format!("spec.nodes[{i}]");
            check_dns_label(&format!("{field}.name"), &node.name, 32)?;
            if !host_names.insert(node.name.as_str()) {
                return Err(err(format!("{field}.name"), format!("duplicate node name {:?}", node.name)));
            }
            check_labels(&format!("{field}.labels"), &node.labels)?;
            let cidr = node.pod_cidr;
            if cidr.trunc() != cidr {
                return Err(err(
                    format!("{field}.podCIDR"),
                    format!("{cidr} has host bits set; did you mean {}?", cidr.trunc()),
                ));
            }
            if cidr.prefix_len() > 29 {
                return Err(err(
                    format!("{field}.podCIDR"),
                    format!("{cidr} is too small: use a prefix of /29 or shorter"),
                ));
            }
            for (other_field, other) in &cidrs {
                if other.contains(&cidr.network()) || cidr.contains(&other.network()) {
                    return Err(err(format!("{field}.podCIDR"), format!("{cidr} overlaps {other} ({other_field})")));
                }
            }
            cidrs.push((format!("{field}.podCIDR"), cidr));
        }

        let mut fabric_addrs = BTreeSet::new();
        let hosts = body
            .nodes
            .iter()
            .map(|n| (n.address, "nodes", n.name.as_str()))
            .chain(body.external_hosts.iter().map(|h| (h.address, "externalHosts", h.name.as_str())));
        for (i, (address, list, _)) in hosts.enumerate() {
            let Some(address) = address else { continue };
            let index = if list == "nodes" { i } else { i - body.nodes.len() };
            let field = format!("spec.{list}[{index}].address");
            if !fabric.contains(&address) || address == fabric.network() || address == fabric.broadcast() {
                return Err(err(field, format!("{address} is not a host address of the fabric {fabric}")));
            }
            if !fabric_addrs.insert(address) {
                return Err(err(field, format!("duplicate fabric address {address}")));
            }
        }
        let edge_hosts = body.edge.as_ref().map_or(0, |e| e.load_balancers.len() + 1);
        let wanted_fabric_hosts = body.nodes.len() + body.external_hosts.len() + edge_hosts;
        if (fabric.hosts().count()) < wanted_fabric_hosts {
            return Err(err(
                "spec.fabric.cidr",
                format!("{fabric} has fewer host addresses than the {wanted_fabric_hosts} nodes, external hosts, load balancers and router"),
            ));
        }

        for (i, host) in body.external_hosts.iter().enumerate() {
            let field = format!("spec.externalHosts[{i}].name");
            check_dns_label(&field, &host.name, 32)?;
            if !host_names.insert(host.name.as_str()) {
                return Err(err(
                    field,
                    format!(
                        "duplicate host name {:?}: nodes and external hosts share one fabric and one name space",
                        host.name
                    ),
                ));
            }
        }

        if let Some(edge) = &body.edge {
            validate_edge(edge, &mut host_names, &mut cidrs)?;
        }

        let mut namespaces = BTreeSet::new();
        for (i, ns) in body.namespaces.iter().enumerate() {
            let field = format!("spec.namespaces[{i}]");
            check_dns_label(&format!("{field}.name"), &ns.name, 63)?;
            if !namespaces.insert(ns.name.as_str()) {
                return Err(err(format!("{field}.name"), format!("duplicate namespace {:?}", ns.name)));
            }
            check_labels(&format!("{field}.labels"), &ns.labels)?;
        }

        let mut pod_names = BTreeSet::new();
        let mut pod_ips = BTreeSet::new();
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, pod) in body.pods.iter().enumerate() {
            let field = format!("spec.pods[{i}]");
            check_dns_label(&format!("{field}.name"), &pod.name, 63)?;
            if !namespaces.contains(pod.namespace.as_str()) {
                return Err(err(
                    format!("{field}.namespace"),
                    format!("namespace {:?} is not declared in spec.namespaces", pod.namespace),
                ));
            }
            let Some(node) = body.nodes.iter().find(|n| n.name == pod.node) else {
                return Err(err(format!("{field}.node"), format!("node {:?} is not declared in spec.nodes", pod.node)));
            };
            if !pod_names.insert((pod.namespace.as_str(), pod.name.as_str())) {
                return Err(err(format!("{field}.name"), format!("duplicate pod {}/{}", pod.namespace, pod.name)));
            }
            check_labels(&format!("{field}.labels"), &pod.labels)?;
            check_owners(&field, pod)?;
            for (j, port) in pod.ports.iter().enumerate() {
                let at = format!("{field}.ports[{j}]");
                weir_spec::check_port_name(&format!("{at}.name"), &port.name)?;
                if port.container_port == 0 {
                    return Err(err(format!("{at}.containerPort"), "0 is not a port (1-65535)"));
                }
                if !["TCP", "UDP", "SCTP"].contains(&port.protocol.as_str()) {
                    return Err(err(format!("{at}.protocol"), format!("{:?}: TCP, UDP or SCTP", port.protocol)));
                }
            }
            if let Some(ip) = pod.ip {
                let cidr = node.pod_cidr;
                if !cidr.contains(&ip) || ip == cidr.network() || ip == cidr.broadcast() || ip == gateway(cidr) {
                    return Err(err(format!("{field}.ip"), format!("{ip} is not a pod address of node {}'s podCIDR {cidr} (its first host address is the node's gateway)", node.name)));
                }
                if !pod_ips.insert(ip) {
                    return Err(err(format!("{field}.ip"), format!("duplicate pod address {ip}")));
                }
            }
            *per_node.entry(pod.node.as_str()).or_default() += 1;
        }
        for node in &body.nodes {
            let capacity = node.pod_cidr.hosts().count().saturating_sub(1);
            let wanted = per_node.get(node.name.as_str()).copied().unwrap_or(0);
            if wanted > capacity {
                return Err(err(
                    "spec.pods",
                    format!("node {} has {wanted} pods but its podCIDR {} holds {capacity}", node.name, node.pod_cidr),
                ));
            }
        }
        Ok(())
    }
}

/// The edge's names share the one name space of nodes and external hosts;
/// its two CIDRs overlap nothing else of the lab.
fn validate_edge<'a>(
    edge: &'a EdgeSpec,
    host_names: &mut BTreeSet<&'a str>,
    cidrs: &mut Vec<(String, Ipv4Net)>,
) -> Result<(), SpecError> {
    if edge.load_balancers.is_empty() {
        return Err(err("spec.edge.loadBalancers", "an edge needs at least one load balancer"));
    }
    if edge.load_balancers.len() > MAX_LOAD_BALANCERS {
        return Err(err(
            "spec.edge.loadBalancers",
            format!("{} load balancers: at most {MAX_LOAD_BALANCERS} (one ECMP group)", edge.load_balancers.len()),
        ));
    }
    let members = edge
        .load_balancers
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("spec.edge.loadBalancers[{i}].name"), m))
        .chain(edge.clients.iter().enumerate().map(|(i, m)| (format!("spec.edge.clients[{i}].name"), m)));
    for (field, member) in members {
        check_dns_label(&field, &member.name, 32)?;
        if member.name == "router" {
            return Err(err(field, "\"router\" is the edge router's own name"));
        }
        if !host_names.insert(member.name.as_str()) {
            return Err(err(
                field,
                format!(
                    "duplicate host name {:?}: nodes, external hosts, load balancers and clients share one name space",
                    member.name
                ),
            ));
        }
    }
    for (field, cidr) in [("spec.edge.clientCIDR", edge.client_cidr), ("spec.edge.vipCIDR", edge.vip_cidr)] {
        if cidr.trunc() != cidr {
            return Err(err(field, format!("{cidr} has host bits set; did you mean {}?", cidr.trunc())));
        }
        for (other_field, other) in cidrs.iter() {
            if other.contains(&cidr.network()) || cidr.contains(&other.network()) {
                return Err(err(field, format!("{cidr} overlaps {other} ({other_field})")));
            }
        }
        cidrs.push((field.to_string(), cidr));
    }
    let room = edge.client_cidr.hosts().count();
    if room < edge.clients.len() + 1 {
        return Err(err(
            "spec.edge.clientCIDR",
            format!(
                "{} holds {room} hosts: too few for the router and {} clients",
                edge.client_cidr,
                edge.clients.len()
            ),
        ));
    }
    Ok(())
}

/// The node-side gateway of a pod CIDR: its first host address.
pub fn gateway(cidr: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.network()) + 1)
}
