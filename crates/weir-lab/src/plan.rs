//! The resolved lab: every name and address `up` will create, computed from a
//! validated spec with no I/O, and recorded so `down` and `status` need no guessing.
//!
//! Names use '.' as separator because lab, node, namespace and pod names are
//! DNS labels and cannot contain one: `weir.<lab>.pod.<ns>.<pod>` can never
//! collide with another lab's or another pod's name.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::spec::{gateway, LabSpec};

/// Interface name of every node's, pod's and external host's link to its peer.
pub const UPLINK: &str = "eth0";
/// The bridge in the fabric namespace.
pub const FABRIC_BRIDGE: &str = "fabric0";
/// Port of the agent's Prometheus endpoint, on the node's fabric address.
pub const AGENT_METRICS_PORT: u16 = 9690;

/// Prefix of every namespace of lab `lab`.
pub fn netns_prefix(lab: &str) -> String {
    format!("weir.{lab}.")
}

/// Where a node agent keeps its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPaths {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    pub pid_file: PathBuf,
    /// Relative to the bpffs mount.
    pub pin_dir: PathBuf,
    pub metrics_addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    pub name: String,
    pub netns: String,
    pub address: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    /// The node's address on every pod link: the pods' default gateway.
    pub gateway: Ipv4Addr,
    /// Dual-stack: the node's fabric IPv6 address, its pods' IPv6 prefix
    /// (a /64) and its IPv6 gateway address on every pod link.
    #[serde(default)]
    pub address6: Option<Ipv6Addr>,
    #[serde(default)]
    pub pod_prefix6: Option<Ipv6Addr>,
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
    /// This node's port on the fabric bridge.
    pub fabric_port: String,
    /// Relative to the cgroup2 root; pods and the agent live below it.
    pub cgroup: PathBuf,
    pub agent: AgentPaths,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPlan {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// Dual-stack: its IPv6 address.
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    /// The node-side end of the pod's veth.
    pub host_interface: String,
    pub labels: BTreeMap<String, String>,
    /// Relative to the cgroup2 root.
    pub cgroup: PathBuf,
    #[serde(default)]
    pub ports: Vec<crate::spec::PodPort>,
    /// Its namespace's labels.
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, String>,
    /// As the pod's `metadata.generateName` and `ownerReferences`.
    #[serde(default)]
    pub generate_name: Option<String>,
    #[serde(default)]
    pub owner_references: Vec<weir_spec::OwnerReference>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalPlan {
    pub name: String,
    pub netns: String,
    pub address: Ipv4Addr,
    /// Dual-stack: its fabric IPv6 address.
    #[serde(default)]
    pub address6: Option<Ipv6Addr>,
    pub fabric_port: String,
}

/// A load-balancer node of the edge: an agent balancing at XDP on its
/// fabric link (`eth0`); its node datapath serves a dummy `mgmt0` (an
/// interface holds one XDP program).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalancerPlan {
    pub name: String,
    pub netns: String,
    pub address: Ipv4Addr,
    pub fabric_port: String,
    /// Relative to the cgroup2 root.
    pub cgroup: PathBuf,
    pub agent: AgentPaths,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientPlan {
    pub name: String,
    pub netns: String,
    pub address: Ipv4Addr,
    /// The router's end of its link.
    pub router_port: String,
}

/// The edge: load balancers on the fabric, a router in front of them
/// (fabric address on its `eth0`, the clients' gateway on each client
/// link), clients behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgePlan {
    pub router_netns: String,
    pub router_address: Ipv4Addr,
    pub router_fabric_port: String,
    /// The router's address on every client link: the clients' gateway.
    pub client_gateway: Ipv4Addr,
    pub client_cidr: Ipv4Net,
    pub vip_cidr: Ipv4Net,
    pub load_balancers: Vec<BalancerPlan>,
    pub clients: Vec<ClientPlan>,
}

/// Interface of a load balancer's node datapath (see [`BalancerPlan`]).
pub const BALANCER_MGMT: &str = "mgmt0";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPlan {
    pub name: String,
    pub spec: LabSpec,
    pub fabric_netns: String,
    pub fabric_cidr: Ipv4Net,
    pub nodes: Vec<NodePlan>,
    pub pods: Vec<PodPlan>,
    pub externals: Vec<ExternalPlan>,
    /// Relative to the cgroup2 root: the whole lab's cgroup subtree.
    pub cgroup: PathBuf,
    /// Relative to the bpffs mount: the whole lab's pins.
    pub pin_dir: PathBuf,
    /// The mesh this lab is a cluster of; its fabric is then the mesh's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<crate::mesh::MeshMember>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<EdgePlan>,
}

/// Dual-stack addresses, derived so that nothing more needs declaring: the
/// fabric is fd00:fab::/64 and node i's pods are fd00:10:244:i::/64; a
/// member's IPv6 host part is the last 16 bits of its IPv4 address.
pub fn fabric6(v4: Ipv4Addr) -> Ipv6Addr {
    with_host([0xfd00, 0xfab, 0, 0], v4)
}

pub fn pod_prefix6(node_index: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x244, node_index as u16, 0, 0, 0, 0)
}

pub fn pod6(prefix: Ipv6Addr, v4: Ipv4Addr) -> Ipv6Addr {
    let s = prefix.segments();
    with_host([s[0], s[1], s[2], s[3]], v4)
}

fn with_host(prefix: [u16; 4], v4: Ipv4Addr) -> Ipv6Addr {
    let o = v4.octets();
    Ipv6Addr::new(prefix[0], prefix[1], prefix[2], prefix[3], 0, 0, 0, u16::from_be_bytes([o[2], o[3]]))
}

/// FNV-1a: a stable, dependency-free hash for short interface names.
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

impl LabPlan {
    /// Resolves names and addresses. `spec` must have passed validation.
    pub fn resolve(spec: &LabSpec, lab_dir: &Path) -> Self {
        let lab = spec.name().to_string();
        let body = &spec.spec;
        let cgroup = PathBuf::from(weir_host::paths::CGROUP_SUBDIR).join("labs").join(&lab);
        let pin_dir = PathBuf::from(weir_host::paths::PIN_SUBDIR).join("labs").join(&lab);

        // Fabric addresses: explicit ones first, then the lowest free ones in order.
        let taken: Vec<Ipv4Addr> = body
            .nodes
            .iter()
            .filter_map(|n| n.address)
            .chain(body.external_hosts.iter().filter_map(|h| h.address))
            .collect();
        let mut free = body.fabric.cidr.hosts().filter(|a| !taken.contains(a));
        let mut next_fabric =
            |explicit: Option<Ipv4Addr>| explicit.or_else(|| free.next()).expect("validated: the fabric has room");

        let nodes: Vec<NodePlan> = body
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let node_dir = lab_dir.join("nodes").join(&n.name);
                let address = next_fabric(n.address);
                NodePlan {
                    name: n.name.clone(),
                    netns: format!("weir.{lab}.node.{}", n.name),
                    address,
                    pod_cidr: n.pod_cidr,
                    gateway: gateway(n.pod_cidr),
                    address6: body.dual_stack.then(|| fabric6(address)),
                    pod_prefix6: body.dual_stack.then(|| pod_prefix6(i)),
                    gateway6: body.dual_stack.then(|| pod6(pod_prefix6(i), Ipv4Addr::new(0, 0, 0, 1))),
                    fabric_port: format!("node{i}"),
                    cgroup: cgroup.join(&n.name),
                    agent: AgentPaths {
                        socket: node_dir.join("agent.sock"),
                        state_dir: node_dir.join("state"),
                        log: node_dir.join("agent.log"),
                        pid_file: node_dir.join("agent.pid"),
                        pin_dir: pin_dir.join(&n.name),
                        metrics_addr: format!("{address}:{AGENT_METRICS_PORT}"),
                    },
                }
            })
            .collect();
        let externals = body
            .external_hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let address = next_fabric(h.address);
                ExternalPlan {
                    name: h.name.clone(),
                    netns: format!("weir.{lab}.ext.{}", h.name),
                    address,
                    address6: body.dual_stack.then(|| fabric6(address)),
                    fabric_port: format!("ext{i}"),
                }
            })
            .collect();

        let edge = body.edge.as_ref().map(|e| {
            let router_address = next_fabric(None);
            let load_balancers = e
                .load_balancers
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let dir = lab_dir.join("balancers").join(&b.name);
                    let address = next_fabric(None);
                    BalancerPlan {
                        name: b.name.clone(),
                        netns: format!("weir.{lab}.lb.{}", b.name),
                        address,
                        fabric_port: format!("lb{i}"),
                        cgroup: cgroup.join("balancers").join(&b.name),
                        agent: AgentPaths {
                            socket: dir.join("agent.sock"),
                            state_dir: dir.join("state"),
                            log: dir.join("agent.log"),
                            pid_file: dir.join("agent.pid"),
                            pin_dir: pin_dir.join("balancers").join(&b.name),
                            metrics_addr: format!("{address}:{AGENT_METRICS_PORT}"),
                        },
                    }
                })
                .collect();
            let mut hosts = e.client_cidr.hosts();
            let client_gateway = hosts.next().expect("validated: the client CIDR has room");
            let clients = e
                .clients
                .iter()
                .enumerate()
                .map(|(i, c)| ClientPlan {
                    name: c.name.clone(),
                    netns: format!("weir.{lab}.client.{}", c.name),
                    address: hosts.next().expect("validated: the client CIDR has room"),
                    router_port: format!("cl{i}"),
                })
                .collect();
            EdgePlan {
                router_netns: format!("weir.{lab}.router"),
                router_address,
                router_fabric_port: "router".into(),
                client_gateway,
                client_cidr: e.client_cidr,
                vip_cidr: e.vip_cidr,
                load_balancers,
                clients,
            }
        });

        // Pod addresses: explicit ones first, then the lowest free ones after the gateway.
        let explicit: Vec<Ipv4Addr> = body.pods.iter().filter_map(|p| p.ip).collect();
        let mut next_host: BTreeMap<&str, Box<dyn Iterator<Item = Ipv4Addr>>> = nodes
            .iter()
            .map(|n| {
                let gw = n.gateway;
                let taken = explicit.clone();
                (
                    n.name.as_str(),
                    Box::new(n.pod_cidr.hosts().filter(move |a| *a != gw && !taken.contains(a)))
                        as Box<dyn Iterator<Item = Ipv4Addr>>,
                )
            })
            .collect();
        let pods = body
            .pods
            .iter()
            .map(|p| {
                let ip =
                    p.ip.or_else(|| next_host.get_mut(p.node.as_str()).and_then(Iterator::next))
                        .expect("validated: the podCIDR has room");
                let node = nodes.iter().find(|n| n.name == p.node).expect("validated: the pod's node exists");
                PodPlan {
                    ipv6: node.pod_prefix6.map(|prefix| pod6(prefix, ip)),
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    node: p.node.clone(),
                    netns: format!("weir.{lab}.pod.{}.{}", p.namespace, p.name),
                    ip,
                    host_interface: format!("lxc{:08x}", fnv1a(&format!("{}/{}", p.namespace, p.name))),
                    labels: p.labels.clone(),
                    cgroup: node.cgroup.join("pods").join(format!("{}.{}", p.namespace, p.name)),
                    ports: p.ports.clone(),
                    namespace_labels: body
                        .namespaces
                        .iter()
                        .find(|n| n.name == p.namespace)
                        .map(|n| n.labels.clone())
                        .unwrap_or_default(),
                    generate_name: p.generate_name.clone(),
                    owner_references: p.owner_references.clone(),
                }
            })
            .collect();
        LabPlan {
            name: lab.clone(),
            spec: spec.clone(),
            fabric_netns: format!("weir.{lab}.fabric"),
            fabric_cidr: body.fabric.cidr,
            nodes,
            pods,
            externals,
            cgroup,
            pin_dir,
            mesh: None,
            edge,
        }
    }

    /// Every namespace of the lab, fabric first (a mesh's fabric is the mesh's, not the cluster's).
    pub fn all_netns(&self) -> Vec<&str> {
        self.own_fabric()
            .then_some(self.fabric_netns.as_str())
            .into_iter()
            .chain(self.nodes.iter().map(|n| n.netns.as_str()))
            .chain(self.pods.iter().map(|p| p.netns.as_str()))
            .chain(self.externals.iter().map(|e| e.netns.as_str()))
            .chain(self.edge.iter().flat_map(|e| {
                std::iter::once(e.router_netns.as_str())
                    .chain(e.load_balancers.iter().map(|b| b.netns.as_str()))
                    .chain(e.clients.iter().map(|c| c.netns.as_str()))
            }))
            .collect()
    }

    /// Whether the fabric is this lab's own (not a mesh's it shares).
    pub fn own_fabric(&self) -> bool {
        self.mesh.is_none()
    }

    /// Finds a pod by `NAMESPACE/NAME`.
    pub fn pod(&self, qualified: &str) -> Option<&PodPlan> {
        let (ns, name) = qualified.split_once('/')?;
        self.pods.iter().find(|p| p.namespace == ns && p.name == name)
    }

    /// The network namespace of a host off the cluster: an external host
    /// or an edge client, by name.
    pub fn host_netns(&self, name: &str) -> Option<&str> {
        let externals = self.externals.iter().map(|e| (&e.name, &e.netns));
        let clients = self.edge.iter().flat_map(|e| e.clients.iter().map(|c| (&c.name, &c.netns)));
        externals.chain(clients).find(|(n, _)| *n == name).map(|(_, netns)| netns.as_str())
    }

    pub fn node(&self, name: &str) -> Option<&NodePlan> {
        self.nodes.iter().find(|n| n.name == name)
    }
}
