//! What the kernel holds for a load balancer, and the map writes of a
//! change. VIPs and reals keep their indexes across changes (a VIP's ring
//! block and counters, a real's slot and counters), so adding a VIP,
//! changing a weight or removing a real is a map update, never a reload,
//! and established connections in the LRU keep pointing at the same real.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::hash::{self, FlowTuple, HashInput};
use crate::spec::{Forwarding, LoadBalancer, NextHop, RealKey, Vip, VipKey};
use crate::{MAX_REALS, MAX_VIPS, RING_SIZE};

/// VIP flag bits (bpf/api/xlb.h WEIR_XLB_VIP_FLAGS: the flag is 1 << code).
pub const F_NO_SOURCE_PORT: u32 = 1 << 0;
pub const F_DPORT_ONLY: u32 = 1 << 1;
pub const F_LRU_BYPASS: u32 = 1 << 2;
pub const F_LOCAL: u32 = 1 << 3;
pub const F_SOURCE_ROUTES: u32 = 1 << 4;
pub const F_QUIC: u32 = 1 << 5;

/// The program's configuration entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelConfig {
    pub next_hop: NextHop,
    pub gateway_mac: [u8; 6],
    pub encap_source4: Ipv4Addr,
    pub encap_source6: Ipv6Addr,
    pub nat_enabled: bool,
    pub flood_limit: u32,
    /// Some VIP takes any port: a packet that misses its port's VIP looks
    /// the any-port one up (the kernel skips that lookup otherwise).
    pub any_port_vips: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedVip {
    pub vip: Vip,
    pub index: u32,
    pub flags: u32,
    /// RING_SIZE real indexes (0: no real, when no real has weight).
    pub ring: Vec<u32>,
    /// (client prefix, length, real index).
    pub source_routes: Vec<(IpAddr, u8, u32)>,
}

/// A source route as the kernel keys it: (VIP index, prefix, length).
pub type SourceKey = (u32, IpAddr, u8);

/// Everything the kernel holds, indexes assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub config: KernelConfig,
    pub vips: Vec<PlannedVip>,
    /// Real index (from 1) to the real.
    pub reals: BTreeMap<u32, RealKey>,
    /// QUIC server id to real index.
    pub quic_servers: BTreeMap<u32, u32>,
}

/// The map writes that take the kernel from one plan to the next, in the
/// order they must be applied: removed VIPs stop matching first, reals
/// exist before rings name them, rings are whole before their VIP entry
/// appears, and reals are cleared only when no ring names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub config: Option<KernelConfig>,
    pub vips_deleted: Vec<VipKey>,
    pub reals_written: Vec<(u32, RealKey)>,
    /// (VIP index, its ring): whole rings, where the kernel's block at
    /// that index holds another VIP's ring, or none, or one not known.
    pub rings_written: Vec<(u32, Vec<u32>)>,
    /// (VIP index, its changed slots as (slot, real index)): a ring the
    /// kernel holds at that index, rewritten where it changed only (a real
    /// in or out moves about 1/N of the slots; writing 65,537 costs far
    /// more than the slots that moved).
    pub ring_slots_written: Vec<(u32, Vec<(u32, u32)>)>,
    pub vips_written: Vec<(VipKey, VipEntry)>,
    pub reals_cleared: Vec<u32>,
    /// Every source route the kernel holds is deleted first (a restart:
    /// they are not read back).
    pub source_routes_reset: bool,
    /// Written before the VIP entries that turn them on.
    pub source_routes_written: Vec<(SourceKey, u32)>,
    /// Deleted last.
    pub source_routes_deleted: Vec<SourceKey>,
    /// QUIC server ids, like the source routes.
    pub quic_reset: bool,
    pub quic_written: Vec<(u32, u32)>,
    pub quic_deleted: Vec<u32>,
}

/// struct weir_xlb_vip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VipEntry {
    pub index: u32,
    pub flags: u32,
    pub forwarding: u32,
}

/// Where a packet goes, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub vip: String,
    pub vip_index: u32,
    /// The ring slot, or None for a local VIP or a source route.
    pub slot: Option<usize>,
    /// The client's source route (prefix, length), when one decides.
    pub source_route: Option<(IpAddr, u8)>,
    pub hash: u32,
    /// None: no real (a VIP whose reals all have weight 0, or local).
    pub real: Option<(u32, RealKey)>,
}

impl PlannedVip {
    fn entry(&self) -> VipEntry {
        VipEntry { index: self.index, flags: self.flags, forwarding: self.vip.forwarding.code() }
    }
}

/// The flags a VIP's settings become.
pub fn vip_flags(vip: &Vip) -> u32 {
    let mut flags = match vip.hash {
        HashInput::ClientAddressAndPort => 0,
        HashInput::ClientAddress => F_NO_SOURCE_PORT,
        HashInput::DestinationPort => F_DPORT_ONLY,
    };
    if vip.lru_bypass {
        flags |= F_LRU_BYPASS;
    }
    if vip.local {
        flags |= F_LOCAL;
    }
    if !vip.source_routes.is_empty() {
        flags |= F_SOURCE_ROUTES;
    }
    if vip.quic {
        flags |= F_QUIC;
    }
    flags
}

/// What the kernel holds of a plan apart from its rings: enough to plan
/// the next one with the same indexes, and to diff against, after the
/// agent restarted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    pub vips: BTreeMap<VipKey, VipEntry>,
    /// Real index to the real; index 0 and cleared slots are absent.
    pub reals: BTreeMap<u32, RealKey>,
}

/// Plans `lb`, keeping the indexes `previous` gave VIPs and reals that remain.
pub fn plan(lb: &LoadBalancer, previous: Option<&Plan>) -> Plan {
    plan_over(lb, &previous.map(Plan::kernel_state).unwrap_or_default())
}

/// Plans `lb`, keeping the indexes the kernel's tables hold.
pub fn plan_over(lb: &LoadBalancer, kernel: &KernelState) -> Plan {
    let old_vips: BTreeMap<VipKey, u32> = kernel.vips.iter().map(|(k, e)| (*k, e.index)).collect();
    let old_reals: BTreeMap<RealKey, u32> = kernel.reals.iter().map(|(i, k)| (*k, *i)).collect();

    let wanted_reals: BTreeSet<RealKey> = lb.vips.iter().flat_map(|v| v.reals.iter().map(|r| r.key)).collect();
    let mut reals = BTreeMap::new();
    let mut real_index = BTreeMap::new();
    for key in &wanted_reals {
        if let Some(&i) = old_reals.get(key) {
            reals.insert(i, *key);
            real_index.insert(*key, i);
        }
    }
    for key in &wanted_reals {
        if real_index.contains_key(key) {
            continue;
        }
        let free = (1..MAX_REALS as u32).find(|i| !reals.contains_key(i)).unwrap_or(0);
        reals.insert(free, *key);
        real_index.insert(*key, free);
    }

    let mut used: BTreeSet<u32> =
        lb.vips.iter().filter_map(|v| old_vips.get(&v.key).copied()).collect::<BTreeSet<u32>>();
    let mut vips = Vec::with_capacity(lb.vips.len());
    for vip in &lb.vips {
        let index = match old_vips.get(&vip.key) {
            Some(&i) => i,
            None => {
                let free = (0..MAX_VIPS as u32).find(|i| !used.contains(i)).unwrap_or(0);
                used.insert(free);
                free
            }
        };
        let source_routes = vip
            .source_routes
            .iter()
            .map(|(prefix, len, real)| (*prefix, *len, real_index.get(real).copied().unwrap_or(0)))
            .collect();
        vips.push(PlannedVip {
            vip: vip.clone(),
            index,
            flags: vip_flags(vip),
            ring: ring(vip, &real_index),
            source_routes,
        });
    }
    vips.sort_by_key(|v| v.index);
    let config = KernelConfig {
        next_hop: lb.next_hop,
        gateway_mac: lb.gateway_mac,
        encap_source4: lb.encap_source4,
        encap_source6: lb.encap_source6,
        nat_enabled: lb.vips.iter().any(|v| v.forwarding == Forwarding::Nat),
        flood_limit: lb.flood_limit,
        any_port_vips: lb.vips.iter().any(|v| v.key.port == 0),
    };
    let quic_servers =
        lb.quic_servers.iter().filter_map(|(id, key)| Some((u32::from(*id), *real_index.get(key)?))).collect();
    Plan { config, vips, reals, quic_servers }
}

/// The VIP's weighted Maglev ring, as real indexes. Reals are named by
/// address (and NAT port), so load balancers configured alike build the
/// same ring whatever order the reals are listed in.
fn ring(vip: &Vip, real_index: &BTreeMap<RealKey, u32>) -> Vec<u32> {
    let mut reals: Vec<(String, u32, u32)> = vip
        .reals
        .iter()
        .map(|r| (format!("{}:{}", r.key.address, r.key.port), r.weight, real_index.get(&r.key).copied().unwrap_or(0)))
        .collect();
    reals.sort();
    let names: Vec<String> = reals.iter().map(|r| r.0.clone()).collect();
    let weights: Vec<u32> = reals.iter().map(|r| r.1).collect();
    let table = weir_service::maglev::weighted_table(&names, &weights, RING_SIZE);
    if table.is_empty() {
        return vec![0; RING_SIZE];
    }
    table.into_iter().map(|i| reals[i as usize].2).collect()
}

impl Plan {
    /// The plan's VIP entries and reals, as the kernel holds them.
    pub fn kernel_state(&self) -> KernelState {
        KernelState { vips: self.vips.iter().map(|v| (v.vip.key, v.entry())).collect(), reals: self.reals.clone() }
    }

    /// The VIP a packet to (address, port, proto) matches: its port's, else the any-port one.
    pub fn vip_for(&self, address: IpAddr, port: u16, proto: u8) -> Option<&PlannedVip> {
        let exact = VipKey { address, port, proto };
        let any = VipKey { address, port: 0, proto };
        self.vips.iter().find(|v| v.vip.key == exact).or_else(|| self.vips.iter().find(|v| v.vip.key == any))
    }

    /// Where a new connection (a SYN, or any packet of an LRU-bypass VIP) goes.
    pub fn choose(&self, tuple: &FlowTuple, vip_address: IpAddr) -> Option<Choice> {
        let vip = self.vip_for(vip_address, tuple.vip_port, tuple.proto)?;
        let hash = hash::flow_hash(tuple, vip.vip.hash);
        let name = vip.vip.name.clone();
        if vip.vip.local {
            return Some(Choice { vip: name, vip_index: vip.index, slot: None, source_route: None, hash, real: None });
        }
        let routed = vip
            .source_routes
            .iter()
            .filter(|(prefix, len, _)| crate::spec::cidr_contains(*prefix, *len, tuple.client))
            .max_by_key(|(_, len, _)| *len)
            .and_then(|(prefix, len, index)| Some(((*prefix, *len), (*index, *self.reals.get(index)?))));
        if let Some((route, real)) = routed {
            return Some(Choice {
                vip: name,
                vip_index: vip.index,
                slot: None,
                source_route: Some(route),
                hash,
                real: Some(real),
            });
        }
        let slot = hash as usize % RING_SIZE;
        let index = vip.ring[slot];
        let real = self.reals.get(&index).map(|k| (index, *k));
        Some(Choice { vip: name, vip_index: vip.index, slot: Some(slot), source_route: None, hash, real })
    }

    /// The real with `index`.
    pub fn real(&self, index: u32) -> Option<&RealKey> {
        self.reals.get(&index)
    }
}

/// The writes from `old` (None: an empty kernel) to `new`.
pub fn changes(old: Option<&Plan>, new: &Plan) -> Changes {
    let mut out = Changes::default();
    if old.map(|o| &o.config) != Some(&new.config) {
        out.config = Some(new.config.clone());
    }
    let old_vips: BTreeMap<VipKey, &PlannedVip> =
        old.map(|o| o.vips.iter().map(|v| (v.vip.key, v)).collect()).unwrap_or_default();
    let new_keys: BTreeSet<VipKey> = new.vips.iter().map(|v| v.vip.key).collect();
    out.vips_deleted = old_vips.keys().filter(|k| !new_keys.contains(k)).copied().collect();
    let empty = BTreeMap::new();
    let old_reals = old.map(|o| &o.reals).unwrap_or(&empty);
    out.reals_written = new.reals.iter().filter(|(i, k)| old_reals.get(i) != Some(k)).map(|(i, k)| (*i, *k)).collect();
    for vip in &new.vips {
        let before = old_vips.get(&vip.vip.key);
        match before.filter(|b| b.index == vip.index) {
            Some(b) if b.ring != vip.ring => {
                out.ring_slots_written.push((vip.index, changed_slots(&b.ring, &vip.ring)))
            }
            Some(_) => {}
            None => out.rings_written.push((vip.index, vip.ring.clone())),
        }
        if before.map(|b| b.entry()) != Some(vip.entry()) {
            out.vips_written.push((vip.vip.key, vip.entry()));
        }
    }
    out.reals_cleared = old_reals.keys().filter(|i| !new.reals.contains_key(i)).copied().collect();
    let old_routes = old.map(source_routes).unwrap_or_default();
    let new_routes = source_routes(new);
    out.source_routes_written =
        new_routes.iter().filter(|(k, r)| old_routes.get(k) != Some(r)).map(|(k, r)| (*k, *r)).collect();
    out.source_routes_deleted = old_routes.keys().filter(|k| !new_routes.contains_key(k)).copied().collect();
    let empty_quic = BTreeMap::new();
    let old_quic = old.map(|o| &o.quic_servers).unwrap_or(&empty_quic);
    out.quic_written =
        new.quic_servers.iter().filter(|(id, r)| old_quic.get(id) != Some(r)).map(|(id, r)| (*id, *r)).collect();
    out.quic_deleted = old_quic.keys().filter(|id| !new.quic_servers.contains_key(id)).copied().collect();
    out
}

/// The slots where `new` differs from `old`, as (slot, real index).
fn changed_slots(old: &[u32], new: &[u32]) -> Vec<(u32, u32)> {
    old.iter().zip(new).enumerate().filter(|(_, (o, n))| o != n).map(|(slot, (_, n))| (slot as u32, *n)).collect()
}

fn source_routes(plan: &Plan) -> BTreeMap<SourceKey, u32> {
    plan.vips
        .iter()
        .flat_map(|v| v.source_routes.iter().map(move |(prefix, len, real)| ((v.index, *prefix, *len), *real)))
        .collect()
}

/// The writes from what the kernel holds (rings unknown: all are written)
/// to `new`; the first apply after the agent restarts.
pub fn changes_from_kernel(kernel: &KernelState, new: &Plan) -> Changes {
    let wanted = new.kernel_state();
    Changes {
        config: Some(new.config.clone()),
        vips_deleted: kernel.vips.keys().filter(|k| !wanted.vips.contains_key(k)).copied().collect(),
        reals_written: new
            .reals
            .iter()
            .filter(|(i, k)| kernel.reals.get(i) != Some(k))
            .map(|(i, k)| (*i, *k))
            .collect(),
        rings_written: new.vips.iter().map(|v| (v.index, v.ring.clone())).collect(),
        ring_slots_written: Vec::new(),
        vips_written: wanted
            .vips
            .iter()
            .filter(|(k, e)| kernel.vips.get(k) != Some(e))
            .map(|(k, e)| (*k, *e))
            .collect(),
        reals_cleared: kernel.reals.keys().filter(|i| !new.reals.contains_key(i)).copied().collect(),
        source_routes_reset: true,
        source_routes_written: source_routes(new).into_iter().collect(),
        source_routes_deleted: Vec::new(),
        quic_reset: true,
        quic_written: new.quic_servers.iter().map(|(id, r)| (*id, *r)).collect(),
        quic_deleted: Vec::new(),
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
