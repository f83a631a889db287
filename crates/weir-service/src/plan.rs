//! From desired frontends to the few map writes that make the kernel hold
//! them, in an order that never shows a reader a half-made frontend.
//!
//! Ids: each service port gets a service id (counters, affinity, Maglev), and
//! each of its backends a backend id of its own, so a backend's state
//! (active, terminating, quarantined) and counters are per service, and one
//! service port can be planned without looking at any other. Ids are kept
//! for as long as their thing exists, so counters and affinity survive changes.
//!
//! [`plan_service`] plans one service port's change in time independent of
//! how many other services there are; [`plan`] plans everything (at start).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::k8s::Protocol;
use crate::table::{Algorithm, BackendState, Frontend, ServicePortRef};

/// Ids run 1..=MAX; 0 means none. Must fit WEIR_LB_MAX_SERVICES and
/// WEIR_LB_MAX_BACKENDS in bpf/api/service.h.
pub const MAX_SERVICES: u32 = 65535;
pub const MAX_BACKENDS: u32 = 262143;
/// Maglev table size (prime); must equal WEIR_LB_MAGLEV_SIZE in bpf/api/service.h.
pub const MAGLEV_SIZE: usize = 16381;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

pub fn proto_number(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Udp => IPPROTO_UDP,
        _ => IPPROTO_TCP,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FrontendKey {
    pub address: IpAddr,
    pub port: u16,
    pub proto: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BackendKey {
    pub address: IpAddr,
    pub port: u16,
    pub proto: u8,
}

/// The kernel's backend states (bpf/api/service.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelBackendState {
    Active = 0,
    Terminating = 1,
    Quarantined = 2,
}

/// Slot 0 of a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendMeta {
    pub service_id: u32,
    pub active: u16,
    pub total: u16,
    pub affinity: bool,
    pub maglev: bool,
    /// NodePort, LoadBalancer or external IP: translated at tc as well.
    pub external: bool,
    pub no_backend_errno: u16,
    pub affinity_timeout: u32,
    /// loadBalancerSourceRanges restrict who opens flows from outside the node.
    pub source_ranges: bool,
}

/// One frontend as the kernel holds it: slot 0 and the backend ids of slots 1..=total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendEntry {
    pub meta: FrontendMeta,
    pub slots: Vec<u32>,
}

/// One backend of one service port, as the kernel holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendEntry {
    pub key: BackendKey,
    pub state: KernelBackendState,
    pub service_id: u32,
}

/// Everything the socket load balancer's maps hold that the agent writes,
/// with indexes that keep one service's plan independent of the others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tables {
    pub frontends: BTreeMap<FrontendKey, FrontendEntry>,
    pub backends: BTreeMap<u32, BackendEntry>,
    /// Service ids with a Maglev table, and the backend ids it was built from.
    pub maglev: BTreeMap<u32, Vec<u32>>,
    /// Service id -> its loadBalancerSourceRanges in the kernel (IPv4: the
    /// north-south path's family).
    pub source_ranges: BTreeMap<u32, BTreeSet<Ipv4Net>>,
    /// service id -> its backends.
    by_service: BTreeMap<u32, BTreeMap<BackendKey, u32>>,
    /// service id -> its frontends.
    frontends_of: BTreeMap<u32, BTreeSet<FrontendKey>>,
    /// service id -> the service port that holds it; unknown for ids read back from the kernel.
    owners: BTreeMap<u32, ServicePortRef>,
}

impl Tables {
    /// Tables from what the kernel's maps hold.
    pub fn from_kernel(
        frontends: BTreeMap<FrontendKey, FrontendEntry>,
        backends: BTreeMap<u32, BackendEntry>,
        maglev: BTreeMap<u32, Vec<u32>>,
        source_ranges: BTreeMap<u32, BTreeSet<Ipv4Net>>,
    ) -> Self {
        let mut tables = Tables { frontends, backends, maglev, source_ranges, ..Tables::default() };
        for (id, b) in &tables.backends {
            tables.by_service.entry(b.service_id).or_default().insert(b.key, *id);
        }
        for (key, f) in &tables.frontends {
            tables.frontends_of.entry(f.meta.service_id).or_default().insert(*key);
        }
        tables
    }

    /// The service id that holds a frontend key, and its owner if known.
    pub fn owner_of(&self, key: &FrontendKey) -> Option<(u32, Option<&ServicePortRef>)> {
        let id = self.frontends.get(key)?.meta.service_id;
        Some((id, self.owners.get(&id)))
    }

    fn service_id_used(&self, id: u32) -> bool {
        self.frontends_of.contains_key(&id) || self.owners.contains_key(&id) || self.by_service.contains_key(&id)
    }

    fn free_service_id(&self) -> Option<u32> {
        let top =
            [self.frontends_of.keys().next_back(), self.owners.keys().next_back(), self.by_service.keys().next_back()]
                .into_iter()
                .flatten()
                .max()
                .copied();
        free_id(top, |id| self.service_id_used(id), MAX_SERVICES)
    }

    fn free_backend_id(&self) -> Option<u32> {
        free_id(self.backends.keys().next_back().copied(), |id| self.backends.contains_key(&id), MAX_BACKENDS)
    }
}

/// An id not in use, in 1..=max: one past the highest while there is room
/// (O(log n)), else the first gap.
fn free_id(top: Option<u32>, used: impl Fn(u32) -> bool, max: u32) -> Option<u32> {
    match top {
        None => Some(1),
        Some(top) if top < max => Some(top + 1),
        _ => (1..=max).find(|id| !used(*id)),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    PutBackend {
        id: u32,
        entry: BackendEntry,
    },
    ResetBackendCounters {
        id: u32,
    },
    ResetServiceCounters {
        id: u32,
    },
    /// A backend slot: its id, and a copy of its address, so the kernel's
    /// random choice needs no second lookup.
    PutSlot {
        frontend: FrontendKey,
        slot: u16,
        backend_id: u32,
        backend: BackendKey,
    },
    PutFrontend {
        frontend: FrontendKey,
        meta: FrontendMeta,
    },
    DeleteSlot {
        frontend: FrontendKey,
        slot: u16,
    },
    /// A whole new table, swapped in with one update of the outer map.
    PutMaglev {
        service_id: u32,
        table: Vec<u32>,
    },
    DeleteMaglev {
        service_id: u32,
    },
    /// `entry` is what the backend was, for what must follow its departure
    /// (ending its connected UDP sockets).
    DeleteBackend {
        id: u32,
        entry: BackendEntry,
    },
    /// One of a service port's loadBalancerSourceRanges.
    PutSourceRange {
        service_id: u32,
        range: Ipv4Net,
    },
    DeleteSourceRange {
        service_id: u32,
        range: Ipv4Net,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("more than {MAX_SERVICES} service ports")]
    TooManyServices,
    #[error("more than {MAX_BACKENDS} backends")]
    TooManyBackends,
    #[error("frontend {0}:{1} has more than 65535 backends")]
    TooManyBackendsForFrontend(IpAddr, u16),
}

/// Keeps surviving backends in their slots: a leaving backend's slot takes a
/// newcomer, or else the last survivor, so a change writes few slots.
fn stable_slots(old: &[u32], wanted: &[u32]) -> Vec<u32> {
    let wanted_set: BTreeSet<u32> = wanted.iter().copied().collect();
    let mut additions: Vec<u32> = wanted.iter().copied().filter(|id| !old.contains(id)).collect();
    additions.reverse();
    let mut slots: Vec<u32> = old.to_vec();
    let mut i = 0;
    while i < slots.len() {
        if wanted_set.contains(&slots[i]) {
            i += 1;
            continue;
        }
        if let Some(new) = additions.pop() {
            slots[i] = new;
            i += 1;
        } else {
            // Move the last slot here (or drop this one if it is the last).
            let last = slots.pop().unwrap_or_default();
            if i < slots.len() {
                slots[i] = last;
            }
        }
    }
    while let Some(new) = additions.pop() {
        slots.push(new);
    }
    slots
}

pub(crate) fn frontend_key(fe: &Frontend) -> FrontendKey {
    FrontendKey { address: fe.address, port: fe.port, proto: proto_number(fe.service.protocol) }
}

/// Deletes a frontend: slot 0 first, so no reader finds a frontend whose slots are going.
fn remove_frontend(tables: &mut Tables, key: &FrontendKey, ops: &mut Vec<Op>) {
    let Some(entry) = tables.frontends.remove(key) else { return };
    ops.push(Op::DeleteSlot { frontend: *key, slot: 0 });
    for slot in 1..=entry.slots.len() {
        ops.push(Op::DeleteSlot { frontend: *key, slot: slot as u16 });
    }
    if let Some(set) = tables.frontends_of.get_mut(&entry.meta.service_id) {
        set.remove(key);
        if set.is_empty() {
            tables.frontends_of.remove(&entry.meta.service_id);
        }
    }
}

/// Removes what remains of a service id once it has no frontends: backends, Maglev table, owner.
fn release_service(tables: &mut Tables, service_id: u32, ops: &mut Vec<Op>) {
    if tables.frontends_of.contains_key(&service_id) {
        return;
    }
    if tables.maglev.remove(&service_id).is_some() {
        ops.push(Op::DeleteMaglev { service_id });
    }
    for range in tables.source_ranges.remove(&service_id).unwrap_or_default() {
        ops.push(Op::DeleteSourceRange { service_id, range });
    }
    for (_, id) in tables.by_service.remove(&service_id).unwrap_or_default() {
        if let Some(entry) = tables.backends.remove(&id) {
            ops.push(Op::DeleteBackend { id, entry });
        }
    }
    tables.owners.remove(&service_id);
}

/// Plans the change of one service port's frontends: `old` are the keys it
/// had (none when new), `new` its frontends now (none when it is gone). All
/// of `new` must belong to one service port. Updates `tables` to match the
/// ops, which must then be executed in order.
pub fn plan_service(
    tables: &mut Tables,
    reference: &ServicePortRef,
    old: &[FrontendKey],
    new: &[Frontend],
    quarantined: &BTreeSet<BackendKey>,
) -> Result<Vec<Op>, PlanError> {
    let mut ops = Vec::new();
    let new_keys: BTreeSet<FrontendKey> = new.iter().map(frontend_key).collect();
    // The service id: the one its frontends hold, unless another service port owns it.
    let held = new_keys
        .iter()
        .chain(old)
        .filter_map(|k| tables.frontends.get(k))
        .map(|f| f.meta.service_id)
        .find(|id| tables.owners.get(id).is_none_or(|owner| owner == reference));
    for key in old.iter().filter(|k| !new_keys.contains(k)) {
        if tables.frontends.get(key).is_some_and(|f| Some(f.meta.service_id) == held) {
            remove_frontend(tables, key, &mut ops);
        }
    }
    if new.is_empty() {
        if let Some(id) = held {
            release_service(tables, id, &mut ops);
        }
        return Ok(ops);
    }
    let service_id = match held {
        Some(id) => id,
        None => {
            let id = tables.free_service_id().ok_or(PlanError::TooManyServices)?;
            ops.push(Op::ResetServiceCounters { id });
            id
        }
    };
    tables.owners.insert(service_id, reference.clone());
    let proto = proto_number(reference.protocol);

    // Backends: each (address, port) once, in the state its endpoints give it.
    // Standby ones (a global service's non-preferred cluster) drain while a
    // preferred backend is ready and not quarantined.
    let quarantined_key =
        |b: &crate::table::Backend| quarantined.contains(&BackendKey { address: b.address, port: b.port, proto });
    let preferred_ready = new
        .iter()
        .flat_map(|fe| &fe.backends)
        .any(|b| !b.standby && b.state == BackendState::Active && !quarantined_key(b));
    let mut wanted: BTreeMap<BackendKey, KernelBackendState> = BTreeMap::new();
    for fe in new {
        for b in &fe.backends {
            let key = BackendKey { address: b.address, port: b.port, proto };
            let state = if quarantined.contains(&key) {
                KernelBackendState::Quarantined
            } else if b.state == BackendState::Terminating || (b.standby && preferred_ready) {
                KernelBackendState::Terminating
            } else {
                KernelBackendState::Active
            };
            wanted.insert(key, state);
        }
    }
    let mut ids = tables.by_service.remove(&service_id).unwrap_or_default();
    let mut gone: Vec<u32> = Vec::new();
    ids.retain(|key, id| {
        let keep = wanted.contains_key(key);
        if !keep {
            gone.push(*id);
        }
        keep
    });
    for (key, state) in &wanted {
        let id = match ids.get(key) {
            Some(id) => *id,
            None => {
                let id = tables.free_backend_id().ok_or(PlanError::TooManyBackends)?;
                ops.push(Op::ResetBackendCounters { id });
                ids.insert(*key, id);
                id
            }
        };
        let entry = BackendEntry { key: *key, state: *state, service_id };
        if tables.backends.get(&id) != Some(&entry) {
            ops.push(Op::PutBackend { id, entry });
            tables.backends.insert(id, entry);
        }
    }

    // The Maglev table, over the active backends, by name so every node agrees.
    let maglev = new.iter().any(|f| f.algorithm == Algorithm::Maglev);
    if maglev {
        let mut active: Vec<(String, u32)> = wanted
            .iter()
            .filter(|(_, state)| **state == KernelBackendState::Active)
            .map(|(key, _)| (format!("{}:{}", key.address, key.port), ids[key]))
            .collect();
        active.sort();
        let members: Vec<u32> = active.iter().map(|a| a.1).collect();
        if tables.maglev.get(&service_id) != Some(&members) {
            let names: Vec<String> = active.iter().map(|a| a.0.clone()).collect();
            let table = crate::maglev::table(&names, MAGLEV_SIZE).into_iter().map(|i| members[i as usize]).collect();
            ops.push(Op::PutMaglev { service_id, table });
            tables.maglev.insert(service_id, members);
        }
    } else if tables.maglev.remove(&service_id).is_some() {
        ops.push(Op::DeleteMaglev { service_id });
    }

    // Source ranges: new ones before a frontend's flag turns them on, old
    // ones after the frontends (below), so no allowed client is refused mid-change.
    let wanted_ranges: BTreeSet<Ipv4Net> = new
        .iter()
        .flat_map(|fe| &fe.source_ranges)
        .filter_map(|net| match net {
            IpNet::V4(v4) => Some(*v4),
            IpNet::V6(_) => None,
        })
        .collect();
    let held_ranges = tables.source_ranges.remove(&service_id).unwrap_or_default();
    for range in wanted_ranges.difference(&held_ranges) {
        ops.push(Op::PutSourceRange { service_id, range: *range });
    }

    // Frontends: backend slots first, slot 0 last, then shrink.
    for fe in new {
        let key = frontend_key(fe);
        let mut active = Vec::new();
        let mut draining = Vec::new();
        for b in &fe.backends {
            let bkey = BackendKey { address: b.address, port: b.port, proto };
            let id = ids[&bkey];
            match wanted[&bkey] {
                KernelBackendState::Active => active.push(id),
                _ => draining.push(id),
            }
        }
        let old_entry = tables.frontends.get(&key).filter(|f| f.meta.service_id == service_id);
        let old_active: &[u32] = old_entry.map_or(&[], |o| &o.slots[..usize::from(o.meta.active).min(o.slots.len())]);
        let mut slots = stable_slots(old_active, &active);
        slots.extend(&draining);
        if slots.len() > usize::from(u16::MAX) {
            return Err(PlanError::TooManyBackendsForFrontend(fe.address, fe.port));
        }
        let meta = FrontendMeta {
            service_id,
            active: active.len() as u16,
            total: slots.len() as u16,
            affinity: fe.affinity_timeout.is_some(),
            maglev: fe.algorithm == Algorithm::Maglev,
            external: fe.kind != crate::table::FrontendKind::ClusterIP,
            no_backend_errno: fe.no_backend_errno,
            affinity_timeout: fe.affinity_timeout.unwrap_or(0),
            source_ranges: !fe.source_ranges.is_empty(),
        };
        let old_slots: Vec<u32> = tables.frontends.get(&key).map(|o| o.slots.clone()).unwrap_or_default();
        for (i, id) in slots.iter().enumerate() {
            if old_slots.get(i) != Some(id) {
                let backend = tables.backends.get(id).map(|b| b.key).unwrap_or(BackendKey {
                    address: fe.address,
                    port: 0,
                    proto,
                });
                ops.push(Op::PutSlot { frontend: key, slot: (i + 1) as u16, backend_id: *id, backend });
            }
        }
        if tables.frontends.get(&key).map(|o| o.meta) != Some(meta) {
            ops.push(Op::PutFrontend { frontend: key, meta });
        }
        for slot in slots.len()..old_slots.len() {
            ops.push(Op::DeleteSlot { frontend: key, slot: (slot + 1) as u16 });
        }
        if let Some(previous) = tables.frontends.insert(key, FrontendEntry { meta, slots }) {
            if previous.meta.service_id != service_id {
                if let Some(set) = tables.frontends_of.get_mut(&previous.meta.service_id) {
                    set.remove(&key);
                }
            }
        }
        tables.frontends_of.entry(service_id).or_default().insert(key);
    }

    for range in held_ranges.difference(&wanted_ranges) {
        ops.push(Op::DeleteSourceRange { service_id, range: *range });
    }
    if !wanted_ranges.is_empty() {
        tables.source_ranges.insert(service_id, wanted_ranges);
    }

    // Backends no frontend uses any more go last.
    for id in gone {
        if let Some(entry) = tables.backends.remove(&id) {
            ops.push(Op::DeleteBackend { id, entry });
        }
    }
    tables.by_service.insert(service_id, ids);
    Ok(ops)
}

/// Plans everything: every service port of `desired`, and the removal of
/// whatever else `current` holds. Used at start, against what the kernel holds.
pub fn plan(
    current: &Tables,
    desired: &[Frontend],
    quarantined: &BTreeSet<BackendKey>,
) -> Result<(Vec<Op>, Tables), PlanError> {
    let mut next = current.clone();
    let mut ops = Vec::new();
    let mut groups: BTreeMap<&ServicePortRef, Vec<Frontend>> = BTreeMap::new();
    for fe in desired {
        groups.entry(&fe.service).or_default().push(fe.clone());
    }
    let wanted_keys: BTreeSet<FrontendKey> = desired.iter().map(frontend_key).collect();
    // Frontends nobody wants go first, so their keys are free for whoever wants them now.
    let unwanted: Vec<FrontendKey> = next.frontends.keys().filter(|k| !wanted_keys.contains(k)).copied().collect();
    for key in &unwanted {
        remove_frontend(&mut next, key, &mut ops);
    }
    for (reference, frontends) in groups {
        ops.extend(plan_service(&mut next, reference, &[], &frontends, quarantined)?);
    }
    // Service ids left without frontends (their services are gone).
    let orphans: Vec<u32> = next
        .by_service
        .keys()
        .chain(next.maglev.keys())
        .chain(next.source_ranges.keys())
        .filter(|id| !next.frontends_of.contains_key(id))
        .copied()
        .collect::<BTreeSet<u32>>()
        .into_iter()
        .collect();
    for id in orphans {
        release_service(&mut next, id, &mut ops);
    }
    Ok((ops, next))
}

/// The (service id, backend) pairs of UDP backends that `ops` take out of
/// service, removed or quarantined: their connected sockets must be ended,
/// as kube-proxy flushes their conntrack entries. Terminating backends keep
/// theirs (they drain).
pub fn udp_departures(ops: &[Op]) -> BTreeSet<(u32, BackendKey)> {
    ops.iter()
        .filter_map(|op| match op {
            Op::DeleteBackend { entry, .. } => Some(entry),
            Op::PutBackend { entry, .. } if entry.state == KernelBackendState::Quarantined => Some(entry),
            _ => None,
        })
        .filter(|entry| entry.key.proto == IPPROTO_UDP)
        .map(|entry| (entry.service_id, entry.key))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_slots_move_little() {
        assert_eq!(stable_slots(&[1, 2, 3, 4, 5], &[1, 2, 4, 5]), [1, 2, 5, 4]);
        assert_eq!(stable_slots(&[1, 2, 3], &[1, 2, 3, 9]), [1, 2, 3, 9]);
        assert_eq!(stable_slots(&[1, 2, 3], &[1, 3, 9]), [1, 9, 3]);
        assert_eq!(stable_slots(&[1, 2, 3], &[]), Vec::<u32>::new());
        assert_eq!(stable_slots(&[1, 2, 3], &[3]), [3]);
        assert_eq!(stable_slots(&[], &[4, 5]), [4, 5]);
    }
}
