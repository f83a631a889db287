//! The backend choice array (`lb_picks`): each frontend's active slots,
//! copied into a run of an array, so connect4/6 and sendmsg4/6 choose a
//! backend with an array element instead of a second hash lookup. Runs are
//! allocated by [`weir_service::picks::PickRuns`]; a change writes a fresh
//! run before the frontend's slot 0 names it, and never rewrites a run that
//! slot 0 names.

use std::collections::BTreeMap;

use libbpf_rs::{MapCore, MapFlags};
use weir_service::picks::{PickRuns, Run};
use weir_service::plan::{BackendKey, FrontendKey};

use super::{backend_value, key_of, read_pod, types, LbMaps, F_MAGLEV};
use crate::api::bytes_of;
use crate::error::map_error;
use crate::BpfError;

/// Slots written by the change being executed: frontend -> slot -> (backend id, backend).
pub(super) type Written = BTreeMap<FrontendKey, BTreeMap<u16, (u32, BackendKey)>>;

impl LbMaps {
    /// The runs the kernel's frontends name, read back once per agent.
    pub(super) fn held_runs(&self) -> Result<PickRuns, BpfError> {
        let mut held = Vec::new();
        for key_bytes in self.services.keys() {
            let key: types::weir_lb_key = read_pod(&key_bytes);
            if key.slot != 0 {
                continue;
            }
            let Some(value) = self.services.lookup(&key_bytes, MapFlags::ANY).map_err(map_error("lb_services"))? else {
                continue;
            };
            let value: types::weir_lb_slot = read_pod(&value);
            held.extend(Run::of(value.picks, value.active));
        }
        Ok(PickRuns::from_held(self.picks.max_entries(), held))
    }

    /// Frontend `frontend`'s slot 0 as the kernel holds it now.
    pub(super) fn frontend_value(&self, frontend: &FrontendKey) -> Result<Option<types::weir_lb_slot>, BpfError> {
        let value =
            self.services.lookup(bytes_of(&key_of(frontend, 0)), MapFlags::ANY).map_err(map_error("lb_services"))?;
        Ok(value.map(|v| read_pod(&v)))
    }

    /// Copies slots 1..=active of `frontend` (this change's writes, else what
    /// the kernel holds) into a fresh run, and returns its first element, or
    /// 0 for none (Maglev chooses through its table; no backend; no room).
    pub(super) fn renew_run(
        &self,
        runs: &mut PickRuns,
        frontend: &FrontendKey,
        (active, flags): (u16, u16),
        written: &Written,
    ) -> Result<u32, BpfError> {
        if active == 0 || flags & F_MAGLEV != 0 {
            return Ok(0);
        }
        let mine = written.get(frontend);
        let mut values = Vec::with_capacity(usize::from(active));
        for slot in 1..=active {
            let pick = match mine.and_then(|m| m.get(&slot)) {
                Some((backend_id, backend)) => {
                    types::weir_lb_pick { backend_id: *backend_id, pad: 0, backend: backend_value(backend, 0) }
                }
                None => {
                    let Some(held) = self
                        .services
                        .lookup(bytes_of(&key_of(frontend, slot)), MapFlags::ANY)
                        .map_err(map_error("lb_services"))?
                    else {
                        // A slot the kernel does not hold: choose through the slots, as before.
                        return Ok(0);
                    };
                    let held: types::weir_lb_slot = read_pod(&held);
                    types::weir_lb_pick { backend_id: held.backend_id, pad: 0, backend: held.backend }
                }
            };
            values.push(pick);
        }
        let Some(run) = runs.take(values.len()) else {
            return Ok(0);
        };
        let keys: Vec<u8> = (run.start..run.start + u32::from(active)).flat_map(u32::to_ne_bytes).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| bytes_of(v).to_vec()).collect();
        if let Err(e) = self.picks.update_batch(&keys, &bytes, u32::from(active), MapFlags::ANY, MapFlags::ANY) {
            runs.retire(run);
            return Err(map_error("lb_picks")(e));
        }
        Ok(run.start)
    }

    /// Writes slot 0 of `frontend` naming run `picks`; then, and only then,
    /// the run `old` named is retired (free once this change is done). If
    /// the write fails, the new run is retired instead: slot 0 still names the old.
    pub(super) fn point_at_run(
        &self,
        runs: &mut PickRuns,
        frontend: &FrontendKey,
        value: &types::weir_lb_slot,
        old: Option<&types::weir_lb_slot>,
    ) -> Result<(), BpfError> {
        let written = self.services.update(bytes_of(&key_of(frontend, 0)), bytes_of(value), MapFlags::ANY);
        let retired = match written {
            Ok(()) => old.and_then(|o| Run::of(o.picks, o.active)),
            Err(_) => Run::of(value.picks, value.active),
        };
        if let Some(run) = retired {
            runs.retire(run);
        }
        written.map_err(map_error("lb_services"))
    }
}
