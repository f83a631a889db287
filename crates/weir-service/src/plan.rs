//! From desired frontends to the few map writes that make the kernel hold
//! them, in an order that never shows a reader a half-made frontend.
//!
//! Ids: each service port gets a service id (counters, affinity, Maglev) and
//! each backend address:port/protocol a backend id. Ids are kept for as long
//! as their thing exists, so counters and affinity survive changes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::k8s::Protocol;
use crate::table::{Algorithm, BackendState, Frontend};

/// Ids run 1..=MAX; 0 means none.
pub const MAX_SERVICES: u32 = 65535;
pub const MAX_BACKENDS: u32 = 65535;
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
    pub no_backend_errno: u16,
    pub affinity_timeout: u32,
}

/// One frontend as the kernel holds it: slot 0 and the backend ids of slots 1..=total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendEntry {
    pub meta: FrontendMeta,
    pub slots: Vec<u32>,
}

/// Everything the socket load balancer's maps hold that the agent writes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tables {
    pub frontends: BTreeMap<FrontendKey, FrontendEntry>,
    pub backends: BTreeMap<u32, (BackendKey, KernelBackendState)>,
    /// Service ids with a Maglev table, and the backend ids it was built from.
    pub maglev: BTreeMap<u32, Vec<u32>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    PutBackend {
        id: u32,
        key: BackendKey,
        state: KernelBackendState,
    },
    ResetBackendCounters {
        id: u32,
    },
    ResetServiceCounters {
        id: u32,
    },
    PutSlot {
        frontend: FrontendKey,
        slot: u16,
        backend_id: u32,
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
    DeleteBackend {
        id: u32,
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

fn lowest_free(used: &BTreeSet<u32>, max: u32) -> Option<u32> {
    (1..=max).find(|id| !used.contains(id))
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

/// Plans the writes from `current` to `desired`. `quarantined` backends take
/// no new connections. Returns the ops and the tables they produce.
pub fn plan(
    current: &Tables,
    desired: &[Frontend],
    quarantined: &BTreeSet<BackendKey>,
) -> Result<(Vec<Op>, Tables), PlanError> {
    let mut ops = Vec::new();
    let mut next = Tables::default();

    // Backend ids: keep existing ones, allocate the rest.
    let existing_backends: BTreeMap<BackendKey, u32> =
        current.backends.iter().map(|(id, (key, _))| (*key, *id)).collect();
    let mut used_backend_ids: BTreeSet<u32> = BTreeSet::new();
    let mut wanted_backends: BTreeMap<BackendKey, KernelBackendState> = BTreeMap::new();
    for fe in desired {
        for b in &fe.backends {
            let key = BackendKey { address: b.address, port: b.port, proto: proto_number(fe.service.protocol) };
            let state = if quarantined.contains(&key) {
                KernelBackendState::Quarantined
            } else if b.state == BackendState::Terminating {
                KernelBackendState::Terminating
            } else {
                KernelBackendState::Active
            };
            // A backend terminating for one service is terminating; active wins only over absent.
            wanted_backends.entry(key).and_modify(|s| *s = (*s).max(state)).or_insert(state);
        }
    }
    let mut backend_ids: BTreeMap<BackendKey, u32> = BTreeMap::new();
    for key in wanted_backends.keys() {
        if let Some(id) = existing_backends.get(key) {
            backend_ids.insert(*key, *id);
            used_backend_ids.insert(*id);
        }
    }
    for (key, state) in &wanted_backends {
        let id = match backend_ids.get(key) {
            Some(id) => *id,
            None => {
                let id = lowest_free(&used_backend_ids, MAX_BACKENDS).ok_or(PlanError::TooManyBackends)?;
                used_backend_ids.insert(id);
                backend_ids.insert(*key, id);
                ops.push(Op::ResetBackendCounters { id });
                id
            }
        };
        if current.backends.get(&id) != Some(&(*key, *state)) {
            ops.push(Op::PutBackend { id, key: *key, state: *state });
        }
        next.backends.insert(id, (*key, *state));
    }

    // Service ids: a service port keeps the id any of its frontends had.
    let mut service_ids: BTreeMap<&crate::table::ServicePortRef, u32> = BTreeMap::new();
    let mut used_service_ids: BTreeSet<u32> = BTreeSet::new();
    for fe in desired {
        let key = FrontendKey { address: fe.address, port: fe.port, proto: proto_number(fe.service.protocol) };
        if let Some(entry) = current.frontends.get(&key) {
            if !service_ids.contains_key(&fe.service) && !used_service_ids.contains(&entry.meta.service_id) {
                service_ids.insert(&fe.service, entry.meta.service_id);
                used_service_ids.insert(entry.meta.service_id);
            }
        }
    }
    for fe in desired {
        if !service_ids.contains_key(&fe.service) {
            let id = lowest_free(&used_service_ids, MAX_SERVICES).ok_or(PlanError::TooManyServices)?;
            used_service_ids.insert(id);
            service_ids.insert(&fe.service, id);
            ops.push(Op::ResetServiceCounters { id });
        }
    }

    // Maglev tables, one per service port, over its active backends.
    let mut maglev_done: BTreeSet<u32> = BTreeSet::new();
    for fe in desired.iter().filter(|f| f.algorithm == Algorithm::Maglev) {
        let service_id = service_ids[&fe.service];
        if !maglev_done.insert(service_id) {
            continue;
        }
        let proto = proto_number(fe.service.protocol);
        let mut active: Vec<(String, u32)> = fe
            .backends
            .iter()
            .map(|b| BackendKey { address: b.address, port: b.port, proto })
            .filter(|k| wanted_backends.get(k) == Some(&KernelBackendState::Active))
            .map(|k| (format!("{}:{}", k.address, k.port), backend_ids[&k]))
            .collect();
        active.sort();
        let ids: Vec<u32> = active.iter().map(|a| a.1).collect();
        if current.maglev.get(&service_id) != Some(&ids) {
            let names: Vec<String> = active.iter().map(|a| a.0.clone()).collect();
            let table = crate::maglev::table(&names, MAGLEV_SIZE).into_iter().map(|i| ids[i as usize]).collect();
            ops.push(Op::PutMaglev { service_id, table });
        }
        next.maglev.insert(service_id, ids);
    }

    // Frontends: backend slots first, slot 0 last, then shrink.
    for fe in desired {
        let key = FrontendKey { address: fe.address, port: fe.port, proto: proto_number(fe.service.protocol) };
        let mut active = Vec::new();
        let mut draining = Vec::new();
        for b in &fe.backends {
            let bkey = BackendKey { address: b.address, port: b.port, proto: key.proto };
            let id = backend_ids[&bkey];
            match wanted_backends[&bkey] {
                KernelBackendState::Active => active.push(id),
                _ => draining.push(id),
            }
        }
        let old = current.frontends.get(&key);
        let old_active: &[u32] = old.map_or(&[], |o| &o.slots[..usize::from(o.meta.active).min(o.slots.len())]);
        let mut slots = stable_slots(old_active, &active);
        slots.extend(&draining);
        if slots.len() > usize::from(u16::MAX) {
            return Err(PlanError::TooManyBackendsForFrontend(fe.address, fe.port));
        }
        let meta = FrontendMeta {
            service_id: service_ids[&fe.service],
            active: active.len() as u16,
            total: slots.len() as u16,
            affinity: fe.affinity_timeout.is_some(),
            maglev: fe.algorithm == Algorithm::Maglev,
            no_backend_errno: fe.no_backend_errno,
            affinity_timeout: fe.affinity_timeout.unwrap_or(0),
        };
        let old_slots: &[u32] = old.map_or(&[], |o| &o.slots);
        for (i, id) in slots.iter().enumerate() {
            if old_slots.get(i) != Some(id) {
                ops.push(Op::PutSlot { frontend: key, slot: (i + 1) as u16, backend_id: *id });
            }
        }
        if old.map(|o| o.meta) != Some(meta) {
            ops.push(Op::PutFrontend { frontend: key, meta });
        }
        for slot in slots.len()..old_slots.len() {
            ops.push(Op::DeleteSlot { frontend: key, slot: (slot + 1) as u16 });
        }
        next.frontends.insert(key, FrontendEntry { meta, slots });
    }

    // Gone: frontends (slot 0 first, so no reader finds a frontend without slots), Maglev tables, backends.
    for (key, entry) in &current.frontends {
        if !next.frontends.contains_key(key) {
            ops.push(Op::DeleteSlot { frontend: *key, slot: 0 });
            for slot in 1..=entry.slots.len() {
                ops.push(Op::DeleteSlot { frontend: *key, slot: slot as u16 });
            }
        }
    }
    for service_id in current.maglev.keys() {
        if !next.maglev.contains_key(service_id) {
            ops.push(Op::DeleteMaglev { service_id: *service_id });
        }
    }
    for id in current.backends.keys() {
        if !next.backends.contains_key(id) {
            ops.push(Op::DeleteBackend { id: *id });
        }
    }
    Ok((ops, next))
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
