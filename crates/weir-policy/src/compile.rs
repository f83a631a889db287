//! From policies and the cluster's pods to what the kernel holds: the
//! ipcache (address or CIDR to identity and tunnel endpoint) and, for each
//! pod, its policy entries keyed by {identity, direction, protocol, port
//! prefix}. `decide` evaluates entries exactly as the datapath does, so
//! `weir policy explain` and the kernel cannot disagree.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

use crate::cilium::Entity;
use crate::identity::{self, IdentityLabels, ANY, HOST, REMOTE_NODE, WORLD};
use crate::ipblock::{Block, Refinement};
use crate::rules::{Direction, NamedPort, Peer, Policy, PolicyKey, PortMatch, Rule};

/// A pod as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub labels: IdentityLabels,
    pub ip: Ipv4Addr,
    /// Dual-stack: its IPv6 address too.
    pub ipv6: Option<Ipv6Addr>,
    pub node: String,
    pub ports: Vec<NamedPort>,
}

/// What the compiler needs to know of the cluster besides its policies.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub pods: Vec<Pod>,
    /// Every pod's label set has its number here (allocated beforehand).
    pub identities: BTreeMap<IdentityLabels, u32>,
    /// The addresses of the node compiling: the host identity.
    pub host_addresses: Vec<IpAddr>,
    /// Every node by name, with its address: the remote-node identity and
    /// the tunnel endpoint of its pods.
    pub nodes: BTreeMap<String, Ipv4Addr>,
    /// Other nodes' IPv6 addresses (dual-stack): the remote-node identity.
    pub node_addresses6: Vec<Ipv6Addr>,
    /// The node compiling.
    pub local_node: String,
}

impl Cluster {
    pub fn identity_of(&self, pod: &Pod) -> u32 {
        self.identities.get(&pod.labels).copied().unwrap_or(WORLD)
    }

    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&Pod> {
        self.pods.iter().find(|p| IpAddr::V4(p.ip) == ip || p.ipv6.map(IpAddr::V6) == Some(ip))
    }
}

/// Node-local numbers for the CIDRs policies name and for the address
/// identities ipBlocks need (`ipblock`); kept across compiles so a number
/// never changes while it is in use.
#[derive(Debug, Clone, Default)]
pub struct CidrIdentities {
    numbers: BTreeMap<IpNet, u32>,
    addresses: BTreeMap<(u32, Vec<Block>), u32>,
    next: u32,
}

impl CidrIdentities {
    fn take(&mut self) -> u32 {
        self.next += 1;
        identity::FIRST_CIDR + self.next - 1
    }

    fn number(&mut self, cidr: IpNet) -> u32 {
        if cidr.prefix_len() == 0 {
            return WORLD;
        }
        if let Some(n) = self.numbers.get(&cidr) {
            return *n;
        }
        let n = self.take();
        self.numbers.insert(cidr, n);
        n
    }

    /// The address identity of the addresses of label identity `id` that
    /// exactly these ipBlocks cover.
    pub(crate) fn address_number(&mut self, id: u32, blocks: Vec<Block>) -> u32 {
        if let Some(n) = self.addresses.get(&(id, blocks.clone())) {
            return *n;
        }
        let n = self.take();
        self.addresses.insert((id, blocks), n);
        n
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IpcacheEntry {
    pub cidr: IpNet,
    pub identity: u32,
    /// The node to tunnel to (another node's pod); None: not behind the overlay.
    pub tunnel_endpoint: Option<Ipv4Addr>,
    /// The identity policy entries name this address by, when ipBlocks tell
    /// it apart from the others of its identity (`ipblock`).
    pub address_identity: Option<u32>,
}

/// One entry of a pod's policy map. `protocol` 0 matches every protocol
/// (then `port_prefix` is 0); otherwise the first `port_prefix` bits of
/// `port` must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct MapEntry {
    pub identity: u32,
    pub direction: Direction,
    pub protocol: u8,
    pub port: u16,
    pub port_prefix: u8,
    pub deny: bool,
    /// Index into `Compiled::rules`.
    pub rule: u32,
}

impl MapEntry {
    fn covers(&self, protocol: u8, port: u16) -> bool {
        if self.protocol == 0 {
            return true;
        }
        let mask = if self.port_prefix == 0 { 0 } else { u16::MAX << (16 - self.port_prefix) };
        self.protocol == protocol && (port & mask) == (self.port & mask)
    }

    /// How specific the entry is: the datapath's LPM prefix beyond identity and direction.
    fn specificity(&self) -> u8 {
        if self.protocol == 0 {
            0
        } else {
            8 + self.port_prefix
        }
    }

    fn contains(&self, other: &MapEntry) -> bool {
        other.specificity() >= self.specificity() && self.covers(other.protocol, other.port)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EndpointPolicy {
    pub identity: u32,
    pub ingress_enforced: bool,
    pub egress_enforced: bool,
    pub entries: Vec<MapEntry>,
}

/// Where a rule comes from, for events and explanations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    /// None for the reserved rule that lets the node reach its pods.
    pub policy: Option<PolicyKey>,
    pub path: String,
    pub deny: bool,
}

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.policy {
            Some(key) => write!(f, "{key} {}", self.path),
            None => f.write_str(&self.path),
        }
    }
}

/// Rule 0: the node always reaches its own pods (health checks), as in
/// Cilium's default `allow-localhost`.
pub const HOST_RULE: u32 = 0;

#[derive(Debug, Clone, Default)]
pub struct Compiled {
    pub ipcache: Vec<IpcacheEntry>,
    /// Every pod by address (callers install those of their node).
    pub endpoints: BTreeMap<Ipv4Addr, EndpointPolicy>,
    pub rules: Vec<RuleRef>,
}

/// Why a packet is allowed or dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Decision {
    /// No policy selects the endpoint in this direction.
    NotEnforced,
    Allowed {
        rule: u32,
    },
    Denied {
        rule: u32,
    },
    /// Selected in this direction, and no rule allows it.
    DefaultDeny,
}

impl Decision {
    pub fn allows(self) -> bool {
        matches!(self, Decision::NotEnforced | Decision::Allowed { .. })
    }
}

/// The smallest set of (value, prefix bits) covering [lo, hi] exactly.
pub fn port_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (lo as u32, hi as u32);
    while lo <= hi {
        let mut size = if lo == 0 { 1 << 16 } else { lo & lo.wrapping_neg() };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros() as u8));
        lo += size;
    }
    out
}

fn cidr_within(inner: &IpNet, outer: &IpNet) -> bool {
    outer.contains(inner) && outer.prefix_len() <= inner.prefix_len()
}

struct Compiler<'a> {
    cluster: &'a Cluster,
    cidr_numbers: BTreeMap<IpNet, u32>,
    refinement: Refinement,
    rules: Vec<RuleRef>,
}

impl Compiler<'_> {
    fn pod_identities(&self) -> BTreeSet<u32> {
        self.cluster.pods.iter().map(|p| self.cluster.identity_of(p)).collect()
    }

    fn cidr_identities(&self, cidr: &IpNet, except: &[IpNet]) -> BTreeSet<u32> {
        let mut ids: BTreeSet<u32> = self
            .cidr_numbers
            .iter()
            .filter(|(p, _)| cidr_within(p, cidr) && !except.iter().any(|e| cidr_within(p, e)))
            .map(|(_, id)| *id)
            .collect();
        if cidr.prefix_len() == 0 {
            ids.insert(WORLD);
        }
        ids
    }

    /// The identities a peer selects; ANY for every one.
    fn peer_identities(&self, peer: &Peer) -> BTreeSet<u32> {
        let ids = match peer {
            Peer::Any | Peer::Entity(Entity::All) => BTreeSet::from([ANY]),
            Peer::Pods { .. } | Peer::Endpoints { .. } => self
                .cluster
                .identities
                .iter()
                .filter(|(labels, _)| peer.selects_pod(labels))
                .map(|(_, id)| *id)
                .filter(|id| self.pod_identities().contains(id))
                .collect(),
            Peer::Cidr { cidr, except } => self.cidr_identities(cidr, except),
            Peer::IpBlock { cidr, except } => {
                let mut ids = self.cidr_identities(cidr, except);
                ids.extend(self.refinement.block_identities(cidr, except));
                return ids;
            }
            Peer::Entity(Entity::World) => {
                let mut ids: BTreeSet<u32> = self.cidr_numbers.values().copied().collect();
                ids.insert(WORLD);
                ids
            }
            Peer::Entity(Entity::Host) => BTreeSet::from([HOST]),
            Peer::Entity(Entity::RemoteNode) => BTreeSet::from([REMOTE_NODE]),
            Peer::Entity(Entity::Cluster) => {
                let mut ids = self.pod_identities();
                ids.extend([HOST, REMOTE_NODE]);
                ids
            }
        };
        // Whatever selects an identity selects the addresses ipBlocks split off it.
        self.refinement.with_address_identities(ids)
    }

    /// The port numbers a named port resolves to on these pods.
    fn named(&self, pods: &[&Pod], protocol: u8, name: &str) -> BTreeSet<u16> {
        pods.iter()
            .flat_map(|p| p.ports.iter())
            .filter(|np| np.name == name && np.protocol_number() == protocol)
            .map(|np| np.container_port)
            .collect()
    }

    /// (protocol, range) pairs of a port match; `resolve` names the pods a named port is looked up on.
    fn ranges(&self, port: &PortMatch, pods: &[&Pod]) -> Vec<(u8, Option<(u16, u16)>)> {
        match port {
            PortMatch::Any => vec![(0, None)],
            PortMatch::Range { protocol, range } => vec![(*protocol, *range)],
            PortMatch::Named { protocol, name } => {
                self.named(pods, *protocol, name).into_iter().map(|n| (*protocol, Some((n, n)))).collect()
            }
        }
    }

    fn rule_entries(&mut self, policy: &Policy, rule: &Rule, subject: &Pod, out: &mut Vec<MapEntry>) {
        let rule_id = self.rules.len() as u32;
        self.rules.push(RuleRef {
            policy: Some(policy.key.clone()),
            path: rule.path(policy.key.kind),
            deny: rule.deny,
        });
        for peer in &rule.peers {
            for identity in self.peer_identities(peer) {
                // Named ports: on ingress the subject's own ports; on egress the peer's.
                let pods: Vec<&Pod> = match rule.direction {
                    Direction::Ingress => vec![subject],
                    Direction::Egress => self
                        .cluster
                        .pods
                        .iter()
                        .filter(|p| {
                            identity == ANY || self.cluster.identity_of(p) == self.refinement.label_identity(identity)
                        })
                        .collect(),
                };
                for port in &rule.ports {
                    for (protocol, range) in self.ranges(port, &pods) {
                        let prefixes = match range {
                            None => vec![(0, 0)],
                            Some((lo, hi)) => port_prefixes(lo, hi),
                        };
                        for (value, bits) in prefixes {
                            out.push(MapEntry {
                                identity,
                                direction: rule.direction,
                                protocol,
                                port: value,
                                port_prefix: if protocol == 0 { 0 } else { bits },
                                deny: rule.deny,
                                rule: rule_id,
                            });
                        }
                    }
                }
            }
        }
    }
}

/// Deny wins: one entry per key (a deny over an allow, else the first
/// rule), and an allow inside a deny of the same identity becomes that
/// deny, since the kernel's longest-prefix lookup sees only the longer one.
fn resolve(mut entries: Vec<MapEntry>) -> Vec<MapEntry> {
    let key = |e: &MapEntry| (e.identity, e.direction, e.protocol, e.port, e.port_prefix);
    entries.sort_by_key(|e| (key(e), !e.deny, e.rule));
    entries.dedup_by_key(|e| key(e));
    let denies: Vec<MapEntry> = entries.iter().filter(|e| e.deny).copied().collect();
    for entry in entries.iter_mut().filter(|e| !e.deny) {
        if let Some(deny) = denies
            .iter()
            .filter(|d| d.identity == entry.identity && d.direction == entry.direction && d.contains(entry))
            .min_by_key(|d| d.rule)
        {
            entry.deny = true;
            entry.rule = deny.rule;
        }
    }
    entries
}

/// Compiles every policy for every pod of the cluster.
pub fn compile(policies: &[Policy], cluster: &Cluster, cidrs: &mut CidrIdentities) -> Compiled {
    // CIDR numbers first: peers resolve against them.
    let mut named: BTreeSet<IpNet> = BTreeSet::new();
    for rule in policies.iter().flat_map(|p| &p.rules) {
        for peer in &rule.peers {
            if let Peer::Cidr { cidr, except } | Peer::IpBlock { cidr, except } = peer {
                named.insert(*cidr);
                named.extend(except.iter().copied());
            }
        }
    }
    let cidr_numbers: BTreeMap<IpNet, u32> =
        named.iter().filter(|c| c.prefix_len() > 0).map(|c| (*c, cidrs.number(*c))).collect();
    let refinement = Refinement::new(policies, cluster, cidrs);

    // The ipcache: later writes of the same prefix win, so the most
    // specific kind of owner goes last.
    let mut ipcache: BTreeMap<IpNet, IpcacheEntry> = BTreeMap::new();
    let mut put = |cidr: IpNet, identity: u32, tunnel_endpoint: Option<Ipv4Addr>| {
        let address_identity =
            refinement.address_identity(cidr.addr()).filter(|_| cidr.prefix_len() == cidr.max_prefix_len());
        ipcache.insert(cidr, IpcacheEntry { cidr, identity, tunnel_endpoint, address_identity });
    };
    put(IpNet::V4(Ipv4Net::default()), WORLD, None);
    put(IpNet::V6(Ipv6Net::default()), WORLD, None);
    for (cidr, id) in &cidr_numbers {
        put(*cidr, *id, None);
    }
    for pod in &cluster.pods {
        let tunnel = (pod.node != cluster.local_node).then(|| cluster.nodes.get(&pod.node).copied()).flatten();
        put(IpNet::from(IpAddr::V4(pod.ip)), cluster.identity_of(pod), tunnel);
        if let Some(v6) = pod.ipv6 {
            put(IpNet::from(IpAddr::V6(v6)), cluster.identity_of(pod), tunnel);
        }
    }
    for (name, addr) in &cluster.nodes {
        if *name != cluster.local_node {
            put(IpNet::from(IpAddr::V4(*addr)), REMOTE_NODE, None);
        }
    }
    for addr in &cluster.node_addresses6 {
        put(IpNet::from(IpAddr::V6(*addr)), REMOTE_NODE, None);
    }
    for addr in &cluster.host_addresses {
        put(IpNet::from(*addr), HOST, None);
    }

    let mut compiler = Compiler {
        cluster,
        cidr_numbers,
        refinement,
        rules: vec![RuleRef { policy: None, path: "reserved: the node reaches its pods".into(), deny: false }],
    };
    let mut endpoints = BTreeMap::new();
    for pod in &cluster.pods {
        let mut ep = EndpointPolicy { identity: cluster.identity_of(pod), ..Default::default() };
        let mut entries = Vec::new();
        for policy in policies.iter().filter(|p| p.selects(&pod.labels)) {
            ep.ingress_enforced |= policy.enforces_ingress;
            ep.egress_enforced |= policy.enforces_egress;
            for rule in &policy.rules {
                let enforced = match rule.direction {
                    Direction::Ingress => policy.enforces_ingress,
                    Direction::Egress => policy.enforces_egress,
                };
                if enforced {
                    compiler.rule_entries(policy, rule, pod, &mut entries);
                }
            }
        }
        if ep.ingress_enforced {
            entries.push(MapEntry {
                identity: HOST,
                direction: Direction::Ingress,
                protocol: 0,
                port: 0,
                port_prefix: 0,
                deny: false,
                rule: HOST_RULE,
            });
        }
        ep.entries = resolve(entries);
        endpoints.insert(pod.ip, ep);
    }
    Compiled { ipcache: ipcache.into_values().collect(), endpoints, rules: compiler.rules }
}

impl Compiled {
    fn ipcache_entry(&self, ip: IpAddr) -> Option<&IpcacheEntry> {
        self.ipcache.iter().filter(|e| e.cidr.contains(&ip)).max_by_key(|e| e.cidr.prefix_len())
    }

    /// The identity the ipcache gives an address (longest prefix).
    pub fn identity_of(&self, ip: IpAddr) -> u32 {
        self.ipcache_entry(ip).map_or(WORLD, |e| e.identity)
    }

    /// The identity policy entries judge a packet of `ip` by, as the
    /// datapath picks it: the address identity when the packet's identity is
    /// the address's own, else the identity itself.
    pub fn policy_identity(&self, ip: IpAddr, identity: u32) -> u32 {
        match self.ipcache_entry(ip) {
            Some(e) if e.identity == identity => e.address_identity.unwrap_or(identity),
            _ => identity,
        }
    }
}

fn longest(entries: &[MapEntry], direction: Direction, identity: u32, protocol: u8, port: u16) -> Option<&MapEntry> {
    entries
        .iter()
        .filter(|e| e.identity == identity && e.direction == direction && e.covers(protocol, port))
        .max_by_key(|e| e.specificity())
}

/// The verdict of one endpoint's policy on a packet, as the datapath
/// reaches it: the longest entry for the peer's identity and the longest
/// for any identity; a deny in either wins, then an allow in either.
pub fn decide(ep: &EndpointPolicy, direction: Direction, peer: u32, protocol: u8, port: u16) -> Decision {
    let enforced = match direction {
        Direction::Ingress => ep.ingress_enforced,
        Direction::Egress => ep.egress_enforced,
    };
    if !enforced {
        return Decision::NotEnforced;
    }
    let specific = longest(&ep.entries, direction, peer, protocol, port);
    let any = longest(&ep.entries, direction, ANY, protocol, port);
    if let Some(e) = specific.filter(|e| e.deny).or(any.filter(|e| e.deny)) {
        return Decision::Denied { rule: e.rule };
    }
    match specific.or(any) {
        Some(e) => Decision::Allowed { rule: e.rule },
        None => Decision::DefaultDeny,
    }
}
