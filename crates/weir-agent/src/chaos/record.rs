//! The agent's record of its experiments, `<state dir>/chaos.json`, written
//! whole (by rename) after every change: a restarted agent lists, stops
//! and ends the experiments it had, starts their delay line again, and
//! thaws the pods of a pod-failure (or guards their thaw). The
//! kernel's entries need nothing: they live in pinned maps.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{ChaosError, Running};

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    kind: String,
    yaml: String,
    slot: u32,
    pods: Vec<String>,
    targets: Vec<String>,
    pairs: Vec<(IpAddr, IpAddr)>,
    buckets: Vec<(IpAddr, u16)>,
    connects: Vec<(u64, IpAddr)>,
    done: u64,
    /// PodChaos pod-failure (absent from older records).
    #[serde(default)]
    frozen: Vec<(String, std::path::PathBuf)>,
    #[serde(default)]
    thaw_helper: Option<i32>,
    end_unix_ns: Option<u64>,
    ended: bool,
}

fn failed(path: &Path, e: impl std::fmt::Display) -> ChaosError {
    ChaosError::Record(format!("{}: {e}", path.display()))
}

/// Writes `running` to `path` (a temporary file renamed over it).
pub(super) fn save(path: &Path, running: &BTreeMap<String, Running>) -> Result<(), ChaosError> {
    let saved: BTreeMap<&String, Saved> = running
        .iter()
        .map(|(key, run)| {
            let saved = Saved {
                kind: run.kind.clone(),
                yaml: run.yaml.clone(),
                slot: run.slot,
                pods: run.pods.clone(),
                targets: run.targets.clone(),
                pairs: run.pairs.clone(),
                buckets: run.buckets.iter().map(|(a, m)| (*a, *m)).collect(),
                connects: run.connects.clone(),
                done: run.done,
                frozen: run.frozen.clone(),
                thaw_helper: run.thaw_helper,
                end_unix_ns: run.end_unix_ns,
                ended: run.ended,
            };
            (key, saved)
        })
        .collect();
    let json = serde_json::to_vec_pretty(&saved).map_err(|e| failed(path, e))?;
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, json).map_err(|e| failed(&temporary, e))?;
    std::fs::rename(&temporary, path).map_err(|e| failed(path, e))
}

/// Reads what `save` wrote; nothing when there is no record.
pub(super) fn load(path: &Path) -> Result<BTreeMap<String, Running>, ChaosError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(failed(path, e)),
    };
    let saved: BTreeMap<String, Saved> = serde_json::from_slice(&bytes).map_err(|e| failed(path, e))?;
    let mut running = BTreeMap::new();
    for (key, s) in saved {
        let experiment = weir_chaos::parse(&s.kind, &s.yaml).map_err(|e| failed(path, format!("{key}: {e}")))?;
        running.insert(
            key,
            Running {
                experiment,
                kind: s.kind,
                yaml: s.yaml,
                slot: s.slot,
                pods: s.pods,
                targets: s.targets,
                pairs: s.pairs,
                buckets: s.buckets.into_iter().collect(),
                connects: s.connects,
                service_keys: Vec::new(),
                local_pods: Vec::new(),
                done: s.done,
                frozen: s.frozen,
                thaw_helper: s.thaw_helper,
                end_unix_ns: s.end_unix_ns,
                ended: s.ended,
            },
        );
    }
    Ok(running)
}
