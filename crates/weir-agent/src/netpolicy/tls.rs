//! HTTPS flows: OpenSSL's probes (`weir_bpf::tls`) started beside the pod
//! path's flow reader, each sighting's process named
//! (`hubble::process`), sightings paired into messages (`hubble::tls`)
//! and handed to the same pipeline as the pod path's flows. A host
//! without libssl, or a kernel that refuses the probes, runs without
//! them, said once in the log and in the metrics.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use weir_bpf::tls::{TlsEvent, TlsProbes};

use super::FlowShared;
use crate::hubble::process::{ProcessLookup, Processes, Seen};
use crate::hubble::tls::{Pairing, Sighting};

/// What the probes need from the agent.
#[derive(Clone)]
pub struct TlsSetup {
    /// Only processes below this cgroup are followed (a lab node's, or the host's root).
    pub scope_cgroup: PathBuf,
    /// The runtime's process cache, once runtime security runs.
    pub runtime: Option<ProcessLookup>,
}

impl std::fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSetup").field("scope_cgroup", &self.scope_cgroup).finish_non_exhaustive()
    }
}

/// The probes, when they run (why not is logged once at start).
#[derive(Debug)]
pub(super) enum TlsFlows {
    Running(Box<TlsProbes>),
    Off,
}

impl TlsFlows {
    /// The kernel's outcome counters and the agent's (`elsewhere`: left to
    /// the client's node; `not_pods`: no pod of this node at either end, not
    /// reported); none when off.
    pub(super) fn outcomes(&self, shared: &FlowShared) -> Vec<(&'static str, u64)> {
        match self {
            Self::Running(probes) => {
                let mut outcomes = probes.outcomes().unwrap_or_default();
                outcomes.push(("elsewhere", shared.tls_elsewhere.load(std::sync::atomic::Ordering::Relaxed)));
                outcomes.push(("not_pods", shared.tls_not_pods.load(std::sync::atomic::Ordering::Relaxed)));
                outcomes
            }
            Self::Off => Vec::new(),
        }
    }
}

pub(super) fn start(shared: &Arc<FlowShared>, setup: Option<&TlsSetup>, l7_flows: bool) -> TlsFlows {
    let Some(setup) = setup.filter(|_| l7_flows) else {
        let why = if l7_flows { "--no-tls-flows" } else { "--no-l7-flows" };
        tracing::info!(flag = why, "HTTPS flows are turned off");
        return TlsFlows::Off;
    };
    let libraries = weir_bpf::tls::find_libssl();
    let pairing = Arc::new(Mutex::new(Pairing::new()));
    let mut processes = Processes::new(shared.node(), setup.runtime.clone());
    let (event_shared, event_pairing) = (shared.clone(), pairing.clone());
    let on_event = move |event: TlsEvent| {
        let seen = Seen {
            pid: event.pid,
            start_ns: event.start_ns,
            uid: event.uid,
            exe: if event.exe.is_empty() { event.comm.clone() } else { event.exe.clone() },
        };
        let sighting = Sighting {
            time_ns: event.time_ns,
            local: event.local,
            remote: event.remote,
            write: event.write,
            process: processes.process(&seen),
            data: event.data,
        };
        let ready = event_pairing.lock().map(|mut p| p.observe(sighting)).unwrap_or_default();
        for message in ready {
            event_shared.on_tls(message);
        }
    };
    let tick_shared = shared.clone();
    let on_tick = move || {
        let ready = pairing.lock().map(|mut p| p.expire(weir_bpf::clock::boot_now_ns())).unwrap_or_default();
        for message in ready {
            tick_shared.on_tls(message);
        }
    };
    let options = weir_bpf::tls::TlsOptions { scope_cgroup: setup.scope_cgroup.clone(), libraries };
    match weir_bpf::tls::start(options, on_event, on_tick) {
        Ok(probes) => {
            tracing::info!(attached = ?probes.report.attached, missing = ?probes.report.missing, "HTTPS flows: OpenSSL's read and write functions are probed");
            TlsFlows::Running(Box::new(probes))
        }
        Err(e) => {
            let why = crate::service::DisplayChain(&e).to_string();
            tracing::warn!(error = %why, "HTTPS flows unavailable on this node: running without them");
            TlsFlows::Off
        }
    }
}
