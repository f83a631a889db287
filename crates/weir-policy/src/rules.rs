//! Both policy kinds in one shape: who a policy selects, which directions it
//! puts into default deny, and its rules as peers and ports. Every check a
//! document fails names its field; a policy that converts can be compiled.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
pub use weir_spec::check_port_name;
use weir_spec::{check_dns_label, err, IntOrString, LabelSelector, SpecError};

use crate::cilium::{self, CiliumNetworkPolicy, Entity};
use crate::identity::{IdentityLabels, NAMESPACE_KEY, NAMESPACE_LABEL_PREFIX};
use crate::k8s::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, PolicyType};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    NetworkPolicy,
    CiliumNetworkPolicy,
}

pub const NETWORK_POLICY_API: &str = "networking.k8s.io/v1";
pub const CILIUM_POLICY_API: &str = "cilium.io/v2";

/// A policy's name: kind, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// The endpoints a peer names.
#[derive(Debug, Clone, PartialEq)]
pub enum Peer {
    /// Everything: every pod, node and address outside.
    Any,
    /// NetworkPolicy's pod and namespace selectors: pods matching `pods`
    /// in the policy's namespace, or in every namespace `namespaces` selects.
    Pods {
        namespace: String,
        namespaces: Option<LabelSelector>,
        pods: LabelSelector,
    },
    /// Cilium's endpoint selector over the flat labels; without a namespace
    /// key it stays in the policy's namespace.
    Endpoints {
        namespace: String,
        selector: LabelSelector,
    },
    /// Cilium's CIDR rules: addresses outside the cluster's pods and nodes.
    Cidr {
        cidr: IpNet,
        except: Vec<IpNet>,
    },
    /// Kubernetes' ipBlock: every address it covers, the cluster's included
    /// (resolved per address in `ipblock`).
    IpBlock {
        cidr: IpNet,
        except: Vec<IpNet>,
    },
    Entity(Entity),
}

impl Peer {
    /// Does this peer select a pod with these labels? CIDRs and entities are
    /// resolved by identity in `compile`.
    pub fn selects_pod(&self, pod: &IdentityLabels) -> bool {
        match self {
            Peer::Any => true,
            Peer::Pods { namespace, namespaces, pods } => {
                let in_namespace = match namespaces {
                    Some(sel) => sel.matches(&namespace_labels_with_name(pod)),
                    None => &pod.namespace == namespace,
                };
                in_namespace && pods.matches(&pod.labels)
            }
            Peer::Endpoints { namespace, selector } => {
                let names_namespace = selector.match_labels.contains_key(NAMESPACE_KEY)
                    || selector.match_expressions.iter().any(|r| r.key == NAMESPACE_KEY);
                (names_namespace || &pod.namespace == namespace) && selector.matches(&pod.flat())
            }
            Peer::Entity(Entity::Cluster | Entity::All) => true,
            Peer::Cidr { .. } | Peer::IpBlock { .. } | Peer::Entity(_) => false,
        }
    }
}

/// A namespace's labels as Kubernetes sets them: its own plus
/// `kubernetes.io/metadata.name`.
pub fn namespace_labels_with_name(pod: &IdentityLabels) -> std::collections::BTreeMap<String, String> {
    let mut labels = pod.namespace_labels.clone();
    labels.insert("kubernetes.io/metadata.name".into(), pod.namespace.clone());
    labels
}

/// IP protocol numbers.
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMatch {
    /// Every protocol and port (ICMP included).
    Any,
    /// One protocol, all ports (`None`) or a range.
    Range { protocol: u8, range: Option<(u16, u16)> },
    /// A named container port of the pod on the policy's side that listens.
    Named { protocol: u8, name: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub direction: Direction,
    /// Its index in the document's list (`ingress[2]`, `egressDeny[0]`).
    pub index: usize,
    pub deny: bool,
    /// Empty: the rule selects no peer (it only puts the direction into default deny).
    pub peers: Vec<Peer>,
    pub ports: Vec<PortMatch>,
}

impl Rule {
    /// The rule's place in its document, as `weir policy explain` names it.
    pub fn path(&self, kind: Kind) -> String {
        let list = match (kind, self.direction, self.deny) {
            (Kind::CiliumNetworkPolicy, Direction::Ingress, true) => "ingressDeny",
            (Kind::CiliumNetworkPolicy, Direction::Egress, true) => "egressDeny",
            (_, Direction::Ingress, _) => "ingress",
            (_, Direction::Egress, _) => "egress",
        };
        format!("spec.{list}[{}]", self.index)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub key: PolicyKey,
    /// The pods it selects: those in `key.namespace` matching this.
    pub subject: LabelSelector,
    pub enforces_ingress: bool,
    pub enforces_egress: bool,
    pub rules: Vec<Rule>,
}

impl Policy {
    pub fn selects(&self, pod: &IdentityLabels) -> bool {
        pod.namespace == self.key.namespace && self.subject.matches(&pod.labels)
    }
}

fn check_meta(meta: &weir_spec::ObjectMeta) -> Result<(), SpecError> {
    check_dns_label("metadata.name", &meta.name, 253).or_else(|_| check_subdomain("metadata.name", &meta.name))?;
    check_dns_label("metadata.namespace", &meta.namespace, 63)
}

fn check_subdomain(field: &str, value: &str) -> Result<(), SpecError> {
    if value.len() > 253 || value.split('.').any(|part| check_dns_label(field, part, 63).is_err()) {
        return Err(err(field, format!("{value:?} is not a DNS subdomain (lowercase letters, digits, '-' and '.')")));
    }
    Ok(())
}

/// A CIDR, its host bits cleared; an IPv4-mapped IPv6 CIDR
/// (`::ffff:10.0.0.0/104`) is the IPv4 CIDR it spells, since packets and
/// sockets carry those addresses as IPv4.
fn parse_cidr(field: &str, text: &str) -> Result<IpNet, SpecError> {
    let net: IpNet =
        text.parse().map_err(|_| err(field, format!("{text:?} is not a CIDR like 10.0.0.0/8 or fd00::/64")))?;
    if let IpNet::V6(v6) = net {
        if let (Some(v4), true) = (v6.addr().to_ipv4_mapped(), v6.prefix_len() >= 96) {
            let v4 = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_err(|e| err(field, e.to_string()))?;
            return Ok(IpNet::V4(v4.trunc()));
        }
    }
    Ok(net.trunc())
}

fn cidr_peer(field: &str, cidr: &str, except: &[String]) -> Result<Peer, SpecError> {
    let (cidr, except) = cidr_and_except(field, cidr, except)?;
    Ok(Peer::Cidr { cidr, except })
}

fn cidr_and_except(field: &str, cidr: &str, except: &[String]) -> Result<(IpNet, Vec<IpNet>), SpecError> {
    let net = parse_cidr(&format!("{field}.cidr"), cidr)?;
    let mut excepts = Vec::new();
    for (i, e) in except.iter().enumerate() {
        let at = format!("{field}.except[{i}]");
        let e = parse_cidr(&at, e)?;
        if !net.contains(&e) || net.prefix_len() > e.prefix_len() {
            return Err(err(at, format!("{e} is not inside {net}")));
        }
        excepts.push(e);
    }
    Ok((net, excepts))
}

fn protocol(field: &str, text: Option<&str>, default: Option<u8>) -> Result<Option<u8>, SpecError> {
    match text {
        None => Ok(default),
        Some("TCP") => Ok(Some(TCP)),
        Some("UDP") => Ok(Some(UDP)),
        Some("SCTP") => Ok(Some(SCTP)),
        Some("ANY") if default.is_none() => Ok(None),
        Some(other) => Err(err(field, format!("unknown protocol {other:?}: TCP, UDP or SCTP"))),
    }
}

fn port_number(field: &str, port: i64) -> Result<u16, SpecError> {
    u16::try_from(port).ok().filter(|p| *p >= 1).ok_or_else(|| err(field, format!("{port} is not a port (1-65535)")))
}

fn k8s_port(field: &str, port: &NetworkPolicyPort) -> Result<PortMatch, SpecError> {
    let proto = protocol(&format!("{field}.protocol"), port.protocol.as_deref(), Some(TCP))?.unwrap_or(TCP);
    match (&port.port, port.end_port) {
        (None, None) => Ok(PortMatch::Range { protocol: proto, range: None }),
        (None, Some(_)) => Err(err(format!("{field}.endPort"), "needs a numeric port")),
        (Some(IntOrString::String(name)), end) => {
            if end.is_some() {
                return Err(err(format!("{field}.endPort"), "needs a numeric port, not a named one"));
            }
            check_port_name(&format!("{field}.port"), name)?;
            Ok(PortMatch::Named { protocol: proto, name: name.clone() })
        }
        (Some(IntOrString::Int(p)), end) => {
            let lo = port_number(&format!("{field}.port"), *p)?;
            let hi = match end {
                Some(e) => {
                    let hi = port_number(&format!("{field}.endPort"), e)?;
                    if hi < lo {
                        return Err(err(format!("{field}.endPort"), format!("{hi} is below port {lo}")));
                    }
                    hi
                }
                None => lo,
            };
            Ok(PortMatch::Range { protocol: proto, range: Some((lo, hi)) })
        }
    }
}

fn k8s_peer(field: &str, namespace: &str, peer: &NetworkPolicyPeer) -> Result<Peer, SpecError> {
    match (&peer.pod_selector, &peer.namespace_selector, &peer.ip_block) {
        (None, None, None) => Err(err(field, "names none of podSelector, namespaceSelector and ipBlock")),
        (None, None, Some(block)) => {
            let (cidr, except) = cidr_and_except(&format!("{field}.ipBlock"), &block.cidr, &block.except)?;
            Ok(Peer::IpBlock { cidr, except })
        }
        (_, _, Some(_)) => {
            Err(err(format!("{field}.ipBlock"), "cannot be combined with podSelector or namespaceSelector"))
        }
        (pods, namespaces, None) => {
            if let Some(sel) = pods {
                sel.validate(&format!("{field}.podSelector"))?;
            }
            if let Some(sel) = namespaces {
                sel.validate(&format!("{field}.namespaceSelector"))?;
            }
            Ok(Peer::Pods {
                namespace: namespace.to_string(),
                namespaces: namespaces.clone(),
                pods: pods.clone().unwrap_or_default(),
            })
        }
    }
}

/// Converts a Kubernetes NetworkPolicy, checking every field.
pub fn from_network_policy(np: &NetworkPolicy) -> Result<Policy, SpecError> {
    if np.api_version != NETWORK_POLICY_API {
        return Err(err("apiVersion", format!("{:?}: a NetworkPolicy is {NETWORK_POLICY_API}", np.api_version)));
    }
    check_meta(&np.metadata)?;
    let spec = &np.spec;
    spec.pod_selector.validate("spec.podSelector")?;
    let namespace = &np.metadata.namespace;
    let (enforces_ingress, enforces_egress) = match &spec.policy_types {
        Some(types) => {
            if types.is_empty() {
                return Err(err("spec.policyTypes", "is empty: name Ingress, Egress or both"));
            }
            (types.contains(&PolicyType::Ingress), types.contains(&PolicyType::Egress))
        }
        // Kubernetes: every policy affects ingress; those with an egress section, egress too.
        None => (true, spec.egress.is_some()),
    };
    let mut rules = Vec::new();
    let sections = [
        (Direction::Ingress, "ingress", spec.ingress.iter().flatten().map(|r| (&r.from, &r.ports)).collect::<Vec<_>>()),
        (Direction::Egress, "egress", spec.egress.iter().flatten().map(|r| (&r.to, &r.ports)).collect::<Vec<_>>()),
    ];
    for (direction, name, list) in sections {
        let peer_field = if direction == Direction::Ingress { "from" } else { "to" };
        for (index, (peers, ports)) in list.into_iter().enumerate() {
            let at = format!("spec.{name}[{index}]");
            let peers = if peers.is_empty() {
                vec![Peer::Any]
            } else {
                peers
                    .iter()
                    .enumerate()
                    .map(|(i, p)| k8s_peer(&format!("{at}.{peer_field}[{i}]"), namespace, p))
                    .collect::<Result<_, _>>()?
            };
            let ports = if ports.is_empty() {
                vec![PortMatch::Any]
            } else {
                ports
                    .iter()
                    .enumerate()
                    .map(|(i, p)| k8s_port(&format!("{at}.ports[{i}]"), p))
                    .collect::<Result<_, _>>()?
            };
            rules.push(Rule { direction, index, deny: false, peers, ports });
        }
    }
    Ok(Policy {
        key: PolicyKey { kind: Kind::NetworkPolicy, namespace: namespace.clone(), name: np.metadata.name.clone() },
        subject: spec.pod_selector.clone(),
        enforces_ingress,
        enforces_egress,
        rules,
    })
}

/// Cilium's selector keys may carry a source (`k8s:app`, `any:app`); Weir's
/// labels all come from Kubernetes, so the source is dropped.
fn cilium_selector(field: &str, sel: &LabelSelector) -> Result<LabelSelector, SpecError> {
    sel.validate(field)?;
    let strip = |key: &str| -> String {
        key.strip_prefix("k8s:").or_else(|| key.strip_prefix("any:")).unwrap_or(key).to_string()
    };
    let mut out = sel.clone();
    out.match_labels = sel.match_labels.iter().map(|(k, v)| (strip(k), v.clone())).collect();
    for req in &mut out.match_expressions {
        req.key = strip(&req.key);
    }
    Ok(out)
}

fn cilium_ports(field: &str, rules: &Option<Vec<cilium::PortRule>>) -> Result<Vec<PortMatch>, SpecError> {
    let Some(rules) = rules else { return Ok(vec![PortMatch::Any]) };
    let mut out = Vec::new();
    for (r, rule) in rules.iter().enumerate() {
        for (p, port) in rule.ports.iter().enumerate() {
            let at = format!("{field}[{r}].ports[{p}]");
            let protos = match protocol(&format!("{at}.protocol"), port.protocol.as_deref(), None)? {
                Some(p) => vec![p],
                None => vec![TCP, UDP, SCTP],
            };
            let number = match &port.port {
                None => None,
                Some(IntOrString::Int(n)) => Some(*n),
                Some(IntOrString::String(text)) => match text.parse::<i64>() {
                    Ok(n) => Some(n),
                    Err(_) => {
                        check_port_name(&format!("{at}.port"), text)?;
                        out.extend(protos.iter().map(|&protocol| PortMatch::Named { protocol, name: text.clone() }));
                        continue;
                    }
                },
            };
            let range = match (number, port.end_port) {
                (None | Some(0), None) => None,
                (None | Some(0), Some(_)) => return Err(err(format!("{at}.endPort"), "needs a port")),
                (Some(n), end) => {
                    let lo = port_number(&format!("{at}.port"), n)?;
                    let hi = match end {
                        Some(e) => port_number(&format!("{at}.endPort"), e)?,
                        None => lo,
                    };
                    if hi < lo {
                        return Err(err(format!("{at}.endPort"), format!("{hi} is below port {lo}")));
                    }
                    Some((lo, hi))
                }
            };
            out.extend(protos.iter().map(|&protocol| PortMatch::Range { protocol, range }));
        }
    }
    if out.is_empty() {
        out.push(PortMatch::Any);
    }
    Ok(out)
}

struct CiliumSide<'a> {
    endpoints: &'a Option<Vec<LabelSelector>>,
    cidrs: &'a Option<Vec<String>>,
    cidr_sets: &'a Option<Vec<cilium::CidrRule>>,
    entities: &'a Option<Vec<Entity>>,
    ports: &'a Option<Vec<cilium::PortRule>>,
}

fn cilium_rule(
    at: &str,
    names: [&str; 5],
    namespace: &str,
    side: CiliumSide<'_>,
    direction: Direction,
    index: usize,
    deny: bool,
) -> Result<Rule, SpecError> {
    let [endpoints_f, cidr_f, cidr_set_f, _entities, ports_f] = names;
    let mut peers = Vec::new();
    for (i, sel) in side.endpoints.iter().flatten().enumerate() {
        let selector = cilium_selector(&format!("{at}.{endpoints_f}[{i}]"), sel)?;
        peers.push(Peer::Endpoints { namespace: namespace.to_string(), selector });
    }
    for (i, c) in side.cidrs.iter().flatten().enumerate() {
        peers.push(Peer::Cidr { cidr: parse_cidr(&format!("{at}.{cidr_f}[{i}]"), c)?, except: Vec::new() });
    }
    for (i, set) in side.cidr_sets.iter().flatten().enumerate() {
        peers.push(cidr_peer(&format!("{at}.{cidr_set_f}[{i}]"), &set.cidr, &set.except)?);
    }
    peers.extend(side.entities.iter().flatten().map(|e| Peer::Entity(*e)));
    let has_l3 =
        side.endpoints.is_some() || side.cidrs.is_some() || side.cidr_sets.is_some() || side.entities.is_some();
    // Cilium: ports alone apply to every peer; a rule with neither selects nothing.
    if !has_l3 && side.ports.is_some() {
        peers.push(Peer::Any);
    }
    let ports = cilium_ports(&format!("{at}.{ports_f}"), side.ports)?;
    Ok(Rule { direction, index, deny, peers, ports })
}

/// Converts the common subset of a CiliumNetworkPolicy, checking every field.
pub fn from_cilium_policy(cnp: &CiliumNetworkPolicy) -> Result<Policy, SpecError> {
    if cnp.api_version != CILIUM_POLICY_API {
        return Err(err("apiVersion", format!("{:?}: a CiliumNetworkPolicy is {CILIUM_POLICY_API}", cnp.api_version)));
    }
    check_meta(&cnp.metadata)?;
    let spec = &cnp.spec;
    let namespace = &cnp.metadata.namespace;
    let subject = cilium_selector("spec.endpointSelector", &spec.endpoint_selector)?;
    if subject
        .match_labels
        .keys()
        .chain(subject.match_expressions.iter().map(|r| &r.key))
        .any(|k| k == NAMESPACE_KEY || k.starts_with(NAMESPACE_LABEL_PREFIX))
    {
        return Err(err(
            "spec.endpointSelector",
            "selects pods of the policy's own namespace only; drop the namespace key",
        ));
    }
    let ingress_names = ["fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities", "toPorts"];
    let egress_names = ["toEndpoints", "toCIDR", "toCIDRSet", "toEntities", "toPorts"];
    let mut rules = Vec::new();
    for (list, deny, name) in [(&spec.ingress, false, "ingress"), (&spec.ingress_deny, true, "ingressDeny")] {
        for (index, r) in list.iter().enumerate() {
            let side = CiliumSide {
                endpoints: &r.from_endpoints,
                cidrs: &r.from_cidr,
                cidr_sets: &r.from_cidr_set,
                entities: &r.from_entities,
                ports: &r.to_ports,
            };
            let at = format!("spec.{name}[{index}]");
            rules.push(cilium_rule(&at, ingress_names, namespace, side, Direction::Ingress, index, deny)?);
        }
    }
    for (list, deny, name) in [(&spec.egress, false, "egress"), (&spec.egress_deny, true, "egressDeny")] {
        for (index, r) in list.iter().enumerate() {
            let side = CiliumSide {
                endpoints: &r.to_endpoints,
                cidrs: &r.to_cidr,
                cidr_sets: &r.to_cidr_set,
                entities: &r.to_entities,
                ports: &r.to_ports,
            };
            let at = format!("spec.{name}[{index}]");
            rules.push(cilium_rule(&at, egress_names, namespace, side, Direction::Egress, index, deny)?);
        }
    }
    Ok(Policy {
        key: PolicyKey {
            kind: Kind::CiliumNetworkPolicy,
            namespace: namespace.clone(),
            name: cnp.metadata.name.clone(),
        },
        subject: subject.clone(),
        enforces_ingress: !spec.ingress.is_empty() || !spec.ingress_deny.is_empty(),
        enforces_egress: !spec.egress.is_empty() || !spec.egress_deny.is_empty(),
        rules,
    })
}

/// A pod's declared port, for named ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamedPort {
    pub name: String,
    pub container_port: u16,
    #[serde(default = "default_protocol")]
    pub protocol: String,
}

fn default_protocol() -> String {
    "TCP".into()
}

impl NamedPort {
    pub fn protocol_number(&self) -> u8 {
        match self.protocol.as_str() {
            "UDP" => UDP,
            "SCTP" => SCTP,
            _ => TCP,
        }
    }
}
