//! Kubernetes `ipBlock`s select by address, and an address inside one is
//! matched whoever owns it: an external host, a node, or a pod (the
//! upstream e2e suite allows egress to a pod's `/32`, and to a wide CIDR
//! with an `except` for one pod). Cilium's CIDR rules keep Cilium's meaning:
//! they select only addresses outside the cluster.
//!
//! Policy entries are keyed by identity, and an identity is shared by every
//! pod with the same labels, so an ipBlock that covers some of an
//! identity's addresses and not others cannot be written against that
//! identity. Those addresses get a node-local *address identity* instead:
//! one per (identity, set of ipBlocks covering the address). The ipcache
//! keeps the label identity for the address (flows and VXLAN carry it) and
//! names the address identity beside it; the datapath keys the policy
//! lookup by the address identity when the packet's identity is the
//! address's own. Every peer that selects the label identity selects its
//! address identities too, so only the ipBlocks tell them apart.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::compile::{CidrIdentities, Cluster};
use crate::identity::{HOST, REMOTE_NODE, WORLD};
use crate::rules::{Direction, Kind, Peer, Policy};

/// Does an ipBlock (or a Cilium CIDR set) cover `ip`?
pub fn covers(cidr: &IpNet, except: &[IpNet], ip: IpAddr) -> bool {
    cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
}

/// An ipBlock as the compiler numbers it: its CIDR and excepts.
pub type Block = (IpNet, Vec<IpNet>);

/// Which addresses ipBlocks tell apart from others of their identity.
#[derive(Debug, Clone, Default)]
pub struct Refinement {
    blocks: Vec<Block>,
    /// A label identity whose addresses every ipBlock covers alike: the
    /// blocks covering all of them, which select the identity itself.
    uniform: BTreeMap<u32, BTreeSet<usize>>,
    /// An address's address identity.
    by_address: BTreeMap<IpAddr, u32>,
    /// An address identity's label identity and covering blocks.
    refined: BTreeMap<u32, (u32, BTreeSet<usize>)>,
}

/// Every address the cluster owns, with its label identity: pods, other
/// nodes and this node.
fn owned_addresses(cluster: &Cluster) -> Vec<(IpAddr, u32)> {
    let mut out = Vec::new();
    for pod in &cluster.pods {
        let id = cluster.identity_of(pod);
        if id == WORLD {
            continue; // no identity yet: it is outside as far as policy knows
        }
        out.push((IpAddr::V4(pod.ip), id));
        out.extend(pod.ipv6.map(|a| (IpAddr::V6(a), id)));
    }
    for (name, addr) in &cluster.nodes {
        if *name != cluster.local_node {
            out.push((IpAddr::V4(*addr), REMOTE_NODE));
        }
    }
    out.extend(cluster.node_addresses6.iter().map(|a| (IpAddr::V6(*a), REMOTE_NODE)));
    out.extend(cluster.host_addresses.iter().map(|a| (*a, HOST)));
    out
}

impl Refinement {
    /// Numbers the ipBlocks of `policies` and refines the identities they
    /// split; address identities come from `numbers`, stable across compiles.
    pub fn new(policies: &[Policy], cluster: &Cluster, numbers: &mut CidrIdentities) -> Refinement {
        let blocks: Vec<Block> = policies
            .iter()
            .flat_map(|p| &p.rules)
            .flat_map(|r| &r.peers)
            .filter_map(|peer| match peer {
                Peer::IpBlock { cidr, except } => Some((*cidr, except.clone())),
                _ => None,
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut refinement = Refinement { blocks, ..Default::default() };
        if refinement.blocks.is_empty() {
            return refinement;
        }
        let mut by_identity: BTreeMap<u32, Vec<(IpAddr, BTreeSet<usize>)>> = BTreeMap::new();
        for (addr, id) in owned_addresses(cluster) {
            let covering = refinement.covering(addr);
            by_identity.entry(id).or_default().push((addr, covering));
        }
        for (id, addresses) in by_identity {
            let first = &addresses[0].1;
            if addresses.iter().all(|(_, c)| c == first) {
                if !first.is_empty() {
                    refinement.uniform.insert(id, first.clone());
                }
                continue;
            }
            for (addr, covering) in addresses.into_iter().filter(|(_, c)| !c.is_empty()) {
                let blocks: Vec<Block> = covering.iter().map(|b| refinement.blocks[*b].clone()).collect();
                let number = numbers.address_number(id, blocks);
                refinement.by_address.insert(addr, number);
                refinement.refined.insert(number, (id, covering));
            }
        }
        refinement
    }

    fn covering(&self, addr: IpAddr) -> BTreeSet<usize> {
        self.blocks.iter().enumerate().filter(|(_, (c, e))| covers(c, e, addr)).map(|(i, _)| i).collect()
    }

    /// The address identity of an address, when ipBlocks split its identity.
    pub fn address_identity(&self, addr: IpAddr) -> Option<u32> {
        self.by_address.get(&addr).copied()
    }

    /// The label identity behind an identity (itself when not refined).
    pub fn label_identity(&self, id: u32) -> u32 {
        self.refined.get(&id).map_or(id, |(base, _)| *base)
    }

    /// The identities of the cluster's addresses an ipBlock selects.
    pub fn block_identities(&self, cidr: &IpNet, except: &[IpNet]) -> BTreeSet<u32> {
        let Some(index) = self.blocks.iter().position(|(c, e)| c == cidr && e.as_slice() == except) else {
            return BTreeSet::new();
        };
        let uniform = self.uniform.iter().filter(|(_, b)| b.contains(&index)).map(|(id, _)| *id);
        let refined = self.refined.iter().filter(|(_, (_, b))| b.contains(&index)).map(|(id, _)| *id);
        uniform.chain(refined).collect()
    }

    /// `ids` with the address identities of each label identity in it.
    pub fn with_address_identities(&self, mut ids: BTreeSet<u32>) -> BTreeSet<u32> {
        let extra: Vec<u32> =
            self.refined.iter().filter(|(_, (base, _))| ids.contains(base)).map(|(id, _)| *id).collect();
        ids.extend(extra);
        ids
    }
}

/// How each CIDR rule of the policies judging `subject` in `direction` treats
/// `peer`, in words: which ipBlocks matched it and why the others did not.
/// `owner` names the pod or node owning `peer`, if the cluster owns it.
pub fn explain(
    policies: &[Policy],
    subject: &crate::identity::IdentityLabels,
    direction: Direction,
    peer: IpAddr,
    owner: Option<&str>,
) -> Vec<String> {
    let mut notes = Vec::new();
    for policy in policies.iter().filter(|p| p.selects(subject)) {
        let enforced = match direction {
            Direction::Ingress => policy.enforces_ingress,
            Direction::Egress => policy.enforces_egress,
        };
        if !enforced {
            continue;
        }
        for rule in policy.rules.iter().filter(|r| r.direction == direction) {
            let side = if direction == Direction::Ingress { "from" } else { "to" };
            for (i, p) in rule.peers.iter().enumerate() {
                let at = format!("{} {}", policy.key, rule.path(policy.key.kind));
                match p {
                    Peer::IpBlock { cidr, except } => {
                        let why = if !cidr.contains(&peer) {
                            format!("does not match {peer}: outside {cidr}")
                        } else if let Some(e) = except.iter().find(|e| e.contains(&peer)) {
                            format!("does not match {peer}: it is inside except {e}")
                        } else {
                            match owner {
                                Some(o) => format!("matches {peer} ({o}: an ipBlock covers pods and nodes too)"),
                                None => format!("matches {peer}"),
                            }
                        };
                        notes.push(format!("{at}.{side}[{i}].ipBlock {cidr} {why}"));
                    }
                    Peer::Cidr { cidr, except } if policy.key.kind == Kind::CiliumNetworkPolicy => {
                        let why = match owner {
                            Some(o) if covers(cidr, except, peer) => format!(
                                "does not match {peer}: it is {o}, and Cilium's CIDR rules select only addresses \
                                 outside the cluster (select it with {side}Endpoints or {side}Entities)"
                            ),
                            _ if covers(cidr, except, peer) => format!("matches {peer}"),
                            _ if cidr.contains(&peer) => format!("does not match {peer}: it is inside an except"),
                            _ => format!("does not match {peer}: outside {cidr}"),
                        };
                        notes.push(format!("{at} CIDR {cidr} {why}"));
                    }
                    _ => {}
                }
            }
        }
    }
    notes
}
