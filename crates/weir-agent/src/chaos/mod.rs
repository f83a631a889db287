//! Chaos experiments on this node: NetworkChaos documents resolved to pod
//! address pairs, written to the kernel with their end time (which the
//! kernel enforces alone), listed with what each did (packets dropped,
//! sent twice or corrupted), and stopped.
//!
//! Every agent gets the same documents and start time, and selects from
//! the same cluster view with draws seeded by both, so all pick the same
//! pods; each judges the packets its own pods send. Bandwidth experiments
//! also need the node's shaper ([`shaper`]): one token bucket per sending
//! pod and experiment; delay experiments the agent's delay line
//! ([`delay_line`]), which uses the shaper's veth pair too.

mod acts;
mod delay_line;
mod dns;
mod ends;
mod external;
mod freeze;
mod list;
mod plan;
mod record;
mod service_faults;
mod shaper;

use acts::kill_pods;
pub use ends::end_on_time;
use freeze::{freeze_planned, release};
pub use freeze::{thaw_at, THAW_COMMAND};
use service_faults::{is_service, service_action};

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use weir_bpf::chaos::{ChaosEntry, ChaosFault, ChaosMaps, ConnectFault, ConnectFaults, MAX_EXPERIMENTS};
use weir_bpf::chaos_dns::DnsFaults;
use weir_bpf::chaos_service::{ServiceFault, ServiceFaultKey, ServiceFaults};
use weir_bpf::datapath::PinLayout;
use weir_bpf::BpfError;
use weir_chaos::{Experiment, Fault};

use crate::pods::PodRecord;

/// Most address pairs held at once (the kernel map's size).
const MAX_PAIRS: usize = 65536;

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("{0}")]
    Spec(String),
    #[error("no running experiment {0}")]
    NotFound(String),
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error("the bandwidth shaper: {0}")]
    Shaper(String),
    #[error("the chaos record: {0}")]
    Record(String),
}

#[derive(Debug)]
struct Running {
    experiment: Experiment,
    /// The document as applied, and its kind: what the record keeps.
    kind: String,
    yaml: String,
    slot: u32,
    pods: Vec<String>,
    targets: Vec<String>,
    pairs: Vec<(IpAddr, IpAddr)>,
    /// Bandwidth: each sending pod's bucket (a class minor of the shaper),
    /// by the pod's addresses.
    buckets: BTreeMap<IpAddr, u16>,
    /// SocketChaos: the (cgroup id, destination) of each connect() fault.
    connects: Vec<(u64, IpAddr)>,
    /// ServiceChaos: the (client cgroup, frontend) of each service fault
    /// (not recorded: a restarted agent removes them by slot).
    service_keys: Vec<ServiceFaultKey>,
    /// Acting once (PodChaos pod-kill, SocketChaos tcp-reset): the pods of
    /// this node it acts on, and what it did (processes signalled,
    /// connections reset).
    local_pods: Vec<PodRecord>,
    done: u64,
    /// PodChaos pod-failure: the pods of this node it froze ("namespace/name",
    /// cgroup), and the helper that thaws them at the end time.
    frozen: Vec<(String, std::path::PathBuf)>,
    thaw_helper: Option<i32>,
    end_unix_ns: Option<u64>,
    /// Past its end: its pairs are gone from the kernel, its count stays.
    ended: bool,
}

#[derive(Debug)]
pub struct ChaosState {
    pins: PinLayout,
    /// This node's name: PodChaos kills only its own pods.
    node: String,
    /// `<state dir>/chaos.json`.
    record: std::path::PathBuf,
    /// Experiments' names by slot, for the flows their drops make.
    names: crate::netpolicy::ChaosNames,
    maps: ChaosMaps,
    /// DNSChaos's entries, by sending pod address.
    dns: DnsFaults,
    /// Running while a delay experiment is live.
    delay_line: Option<delay_line::DelayLine>,
    /// The socket load balancer's fault map, once a SocketChaos needed it.
    connect_faults: Option<ConnectFaults>,
    /// The socket load balancer's service fault map, once a ServiceChaos needed it.
    service_faults: Option<ServiceFaults>,
    /// By "namespace/name".
    running: BTreeMap<String, Running>,
}

fn now_unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A delay experiment's pairs (a DNS delay's: its senders and any server),
/// each with its slot and model.
fn delay_routes_of(run: &Running) -> Vec<((IpAddr, IpAddr), (u32, weir_chaos::DelayModel))> {
    match dns::delay_model(&run.experiment.fault) {
        Some(model) => run.pairs.iter().map(|pair| (*pair, (run.slot, model))).collect(),
        None => Vec::new(),
    }
}

/// Each sending address of `pairs`, with the pod ("namespace/name") it is.
fn sender_pods(pairs: &[(IpAddr, IpAddr)], pods: &[PodRecord]) -> Vec<(IpAddr, String)> {
    let senders: BTreeSet<IpAddr> = pairs.iter().map(|(src, _)| *src).collect();
    senders
        .into_iter()
        .filter_map(|addr| {
            let pod = pods.iter().find(|p| IpAddr::V4(p.ip) == addr || p.ipv6.map(IpAddr::V6) == Some(addr))?;
            Some((addr, format!("{}/{}", pod.namespace, pod.name)))
        })
        .collect()
}

/// The kernel's fault for a pair whose sender is at `src`; `shaper` is the
/// shaper's ifindex (bandwidth experiments only). None for socket faults,
/// which are no pair's.
fn fault(run: &Running, src: IpAddr, shaper: u32) -> Option<ChaosFault> {
    Some(match run.experiment.fault {
        Fault::Bandwidth(_) => ChaosFault::Bandwidth {
            shaper_ifindex: shaper,
            class: shaper::class_handle(run.buckets.get(&src).copied().unwrap_or(0)),
        },
        Fault::Delay(_) => ChaosFault::Delay,
        Fault::Partition => ChaosFault::Partition,
        Fault::Loss { probability, correlation } => ChaosFault::Loss { probability, correlation },
        Fault::Duplicate { probability, correlation } => ChaosFault::Duplicate { probability, correlation },
        Fault::Corrupt { probability, correlation, fix_checksum } => {
            ChaosFault::Corrupt { probability, correlation, fix_checksum }
        }
        Fault::ConnectError { .. }
        | Fault::PodKill { .. }
        | Fault::PodFailure
        | Fault::Dns(_)
        | Fault::TcpReset
        | Fault::ServiceRefuse { .. }
        | Fault::ServiceBlackhole { .. } => return None,
    })
}

impl ChaosState {
    /// Opens the pinned chaos maps and the record of the experiments an
    /// earlier agent ran (resumed: listed, stopped, ended; delayed pairs
    /// delayed again). Kernel entries outside the record stay (they end on
    /// their own time; `stop --all` removes them); their slots are not
    /// reused.
    pub fn open(
        pins: &PinLayout,
        node: &str,
        state_dir: &std::path::Path,
        names: crate::netpolicy::ChaosNames,
    ) -> Result<Self, ChaosError> {
        let record = state_dir.join("chaos.json");
        let running = record::load(&record)?;
        let mut state = Self {
            pins: pins.clone(),
            node: node.to_string(),
            record,
            names,
            maps: ChaosMaps::open(pins)?,
            dns: DnsFaults::open(pins)?,
            delay_line: None,
            connect_faults: None,
            service_faults: None,
            running,
        };
        // Experiments an earlier agent ran: the kernel still holds them;
        // those that ended meanwhile are cleaned up, and the delay line and
        // the shaper's return program of the others need this agent.
        state.sweep()?;
        state.guard_thaws();
        let live = || state.running.values().filter(|r| !r.ended);
        if live().any(|r| matches!(r.experiment.fault, Fault::ConnectError { .. })) {
            state.connect_faults = ConnectFaults::open(pins).ok();
        }
        if live().any(|r| is_service(&r.experiment.fault)) {
            state.service_faults = ServiceFaults::open(pins).ok();
        }
        let delays = state.delay_routes();
        if !delays.is_empty() || live().any(|r| !r.buckets.is_empty()) {
            let ifindex = shaper::ensure(pins)?;
            if !delays.is_empty() {
                state.delay_line = Some(delay_line::DelayLine::start(pins, ifindex, delays)?);
            }
        }
        if !state.running.is_empty() {
            tracing::info!(experiments = state.running.len(), "chaos experiments resumed from the record");
            state.save()?;
        }
        Ok(state)
    }

    /// Records the experiments, and names their slots for the flows.
    fn save(&self) -> Result<(), ChaosError> {
        self.name_slots(&[]);
        record::save(&self.record, &self.running)
    }

    /// Names the slots of the running experiments and of `starting` for
    /// the flows: before the kernel holds a new experiment's entries, so
    /// its first packets' events already have a name.
    fn name_slots(&self, starting: &[(String, Running)]) {
        if let Ok(mut names) = self.names.write() {
            *names = std::sync::Arc::new(
                self.running
                    .iter()
                    .chain(starting.iter().map(|(key, run)| (key, run)))
                    .map(|(key, run)| {
                        let effect = run.experiment.fault.effect().unwrap_or_default();
                        (run.slot, crate::netpolicy::ChaosName { name: key.clone(), effect })
                    })
                    .collect(),
            );
        }
    }

    /// Starts (or restarts, by name) every experiment of `yaml`, all or none.
    /// `frontends`: the socket load balancer's, for ServiceChaos (or why it
    /// is not running).
    pub fn apply(
        &mut self,
        yaml: &str,
        started_unix_ns: u64,
        pods: &[PodRecord],
        frontends: Result<&[weir_service::table::Frontend], String>,
    ) -> Result<Vec<String>, ChaosError> {
        self.sweep()?;
        let docs = weir_spec::split_documents(yaml).map_err(|e| ChaosError::Spec(e.to_string()))?;
        let mut planned = Vec::new();
        for doc in &docs {
            let (key, run) = self.plan(doc, started_unix_ns, pods, frontends.clone())?;
            if planned.iter().any(|(k, _): &(String, Running)| *k == key) {
                return Err(ChaosError::Spec(format!("{} {key}: named twice", doc.kind)));
            }
            planned.push((key, run));
        }
        // A pair holds one fault of each kind (packets, sockets): refuse
        // overlaps with other experiments and within the batch.
        let replaced: BTreeSet<String> =
            planned.iter().map(|(k, _)| k.clone()).filter(|k| self.running.contains_key(k)).collect();
        let socket = |run: &Running| matches!(run.experiment.fault, Fault::ConnectError { .. });
        let mut owner: BTreeMap<(bool, IpAddr, IpAddr), &str> = BTreeMap::new();
        for (key, run) in self.running.iter().filter(|(k, r)| !replaced.contains(*k) && !r.ended) {
            for pair in &run.pairs {
                owner.insert((socket(run), pair.0, pair.1), key);
            }
        }
        for (key, run) in &planned {
            for pair in &run.pairs {
                if let Some(other) = owner.insert((socket(run), pair.0, pair.1), key) {
                    let what = if pair.1.is_unspecified() {
                        format!("the DNS queries of {}", pair.0)
                    } else {
                        format!("{} -> {}", pair.0, pair.1)
                    };
                    return Err(ChaosError::Spec(format!("{key}: {what} is already under experiment {other}")));
                }
            }
        }
        // A pod is frozen by one pod-failure at a time (a thaw would end the other's).
        let mut frozen_by: BTreeMap<&str, &str> = BTreeMap::new();
        for (key, run) in self.running.iter().filter(|(k, r)| !replaced.contains(*k) && !r.ended) {
            run.frozen.iter().for_each(|(pod, _)| _ = frozen_by.insert(pod, key));
        }
        for (key, run) in &planned {
            for (pod, _) in &run.frozen {
                if let Some(other) = frozen_by.insert(pod, key) {
                    return Err(ChaosError::Spec(format!("{key}: pod {pod} is already frozen by experiment {other}")));
                }
            }
        }
        if planned.iter().any(|(_, run)| socket(run)) && self.connect_faults.is_none() {
            self.connect_faults = Some(ConnectFaults::open(&self.pins).map_err(|e| {
                ChaosError::Spec(format!(
                    "SocketChaos needs the socket load balancer on this node, whose connect hooks judge it: {e}"
                ))
            })?);
        }
        if owner.len() > MAX_PAIRS {
            return Err(ChaosError::Spec(format!(
                "{} address pairs: more than the {MAX_PAIRS} the kernel holds",
                owner.len()
            )));
        }
        self.prepare_service_faults(&planned, &replaced)?;
        // Slots: free ones, neither running nor left in the kernel by an earlier agent.
        let leftover: BTreeSet<u32> = self
            .maps
            .entries()
            .iter()
            .map(|(_, _, e)| e.experiment)
            .chain(self.dns.entries().into_iter().map(|(_, slot)| slot))
            .collect();
        let kept: BTreeSet<u32> =
            self.running.iter().filter(|(k, _)| !replaced.contains(*k)).map(|(_, r)| r.slot).collect();
        let mut free = (0..MAX_EXPERIMENTS).filter(|s| !kept.contains(s) && !leftover.contains(s));
        for (_, run) in planned.iter_mut() {
            run.slot = free.next().ok_or_else(|| {
                ChaosError::Spec(format!("more than {MAX_EXPERIMENTS} experiments at once on this node"))
            })?;
        }
        // Buckets: one per sending pod of each bandwidth experiment.
        let taken: BTreeSet<u16> = self
            .running
            .iter()
            .filter(|(k, _)| !replaced.contains(*k))
            .flat_map(|(_, r)| r.buckets.values().copied())
            .collect();
        let mut minors = (shaper::FIRST_MINOR..=u16::MAX).filter(|m| !taken.contains(m));
        for (key, run) in planned.iter_mut() {
            if !matches!(run.experiment.fault, Fault::Bandwidth(_)) {
                continue;
            }
            let senders = sender_pods(&run.pairs, pods);
            let mut by_pod: BTreeMap<String, u16> = BTreeMap::new();
            for (addr, pod) in senders {
                let minor = match by_pod.get(&pod) {
                    Some(minor) => *minor,
                    None => {
                        let minor = minors.next().ok_or_else(|| {
                            ChaosError::Spec(format!("NetworkChaos {key}: more token buckets than the shaper holds"))
                        })?;
                        by_pod.insert(pod, minor);
                        minor
                    }
                };
                run.buckets.insert(addr, minor);
            }
        }
        for key in &replaced {
            if let Some(old) = self.running.remove(key) {
                self.forget(old.slot)?;
                old.buckets.values().for_each(|m| shaper::remove_bucket(*m));
                if !old.ended {
                    release(key, &old);
                }
            }
        }
        let delays = planned.iter().any(|(_, r)| dns::delay_model(&r.experiment.fault).is_some());
        let shaper_ifindex = if delays || planned.iter().any(|(_, r)| !r.buckets.is_empty()) {
            let prepared = shaper::ensure(&self.pins).and_then(|ifindex| {
                for (_, run) in &planned {
                    if let Fault::Bandwidth(shaping) = &run.experiment.fault {
                        let minors: BTreeSet<u16> = run.buckets.values().copied().collect();
                        minors.iter().try_for_each(|m| shaper::add_bucket(*m, shaping))?;
                    }
                }
                if delays {
                    // The line knows the new pairs before the kernel sends it any.
                    let mut routes = self.delay_routes();
                    routes.extend(planned.iter().flat_map(|(_, run)| delay_routes_of(run)));
                    match &self.delay_line {
                        Some(line) => line.set_routes(routes),
                        None => self.delay_line = Some(delay_line::DelayLine::start(&self.pins, ifindex, routes)?),
                    }
                }
                Ok(ifindex)
            });
            match prepared {
                Ok(ifindex) => ifindex,
                Err(e) => {
                    planned.iter().flat_map(|(_, r)| r.buckets.values()).for_each(|m| shaper::remove_bucket(*m));
                    self.settle_detours();
                    return Err(e);
                }
            }
        } else {
            0
        };
        if let Err(e) = freeze_planned(&mut planned) {
            planned.iter().flat_map(|(_, r)| r.buckets.values()).for_each(|m| shaper::remove_bucket(*m));
            self.settle_detours();
            return Err(e);
        }
        self.name_slots(&planned);
        let mono_now = weir_bpf::ktime_now_ns();
        let unix_now = now_unix_ns();
        let mut started = Vec::new();
        for (index, (key, run)) in planned.iter().enumerate() {
            let end_ns = run.end_unix_ns.map_or(u64::MAX, |end| mono_now + end.saturating_sub(unix_now));
            let inserted = if let Fault::ConnectError { errno, probability } = run.experiment.fault {
                let fault = ConnectFault { error: errno, probability, end_ns, experiment: run.slot };
                let faults = self.connect_faults.as_ref();
                run.connects.iter().try_for_each(|(cgroup, dst)| match faults {
                    Some(faults) => faults.insert(*cgroup, *dst, &fault),
                    None => Ok(()),
                })
            } else if let Some(action) = service_action(&run.experiment.fault) {
                let (action, probability) = action;
                let fault = ServiceFault { action, probability, end_ns, experiment: run.slot };
                let faults = self.service_faults.as_ref();
                run.service_keys.iter().try_for_each(|key| match faults {
                    Some(faults) => faults.insert(key, &fault),
                    None => Ok(()),
                })
            } else if dns::dns_fault(run).is_some() {
                dns::insert(&self.dns, run, end_ns)
            } else {
                run.pairs.iter().try_for_each(|(src, dst)| match fault(run, *src, shaper_ifindex) {
                    Some(fault) => self.maps.insert(*src, *dst, &ChaosEntry { fault, end_ns, experiment: run.slot }),
                    None => Ok(()),
                })
            };
            if let Err(e) = inserted {
                // Nothing half-applied: this batch's entries and buckets go again.
                for (_, done) in &planned[..=index] {
                    let _ = self.forget(done.slot);
                }
                planned.iter().flat_map(|(_, r)| r.buckets.values()).for_each(|m| shaper::remove_bucket(*m));
                planned.iter().for_each(|(key, run)| release(key, run));
                self.settle_detours();
                return Err(e.into());
            }
            started.push(key.clone());
        }
        for (key, mut run) in planned {
            match run.experiment.fault {
                Fault::PodKill { grace } => {
                    run.done = kill_pods(&run.local_pods, grace);
                    tracing::info!(experiment = %key, processes = run.done, "pod-kill: pods' processes signalled");
                }
                Fault::TcpReset => {
                    run.done = self.reset_connections(&run)?;
                    tracing::info!(experiment = %key, connections = run.done, "tcp-reset: connections aborted");
                }
                _ => {}
            }
            tracing::info!(experiment = %key, pairs = run.pairs.len(), "chaos experiment started");
            self.running.insert(key, run);
        }
        self.settle_detours();
        self.save()?;
        Ok(started)
    }

    /// Stops the named experiments (all of them, and whatever an earlier
    /// agent left in the kernel, with `all`). An unknown name is an error,
    /// and then nothing is stopped.
    pub fn stop(&mut self, names: &[String], all: bool) -> Result<Vec<String>, ChaosError> {
        self.sweep()?;
        if all {
            let stopped: Vec<String> = self.running.keys().cloned().collect();
            let slots: BTreeSet<u32> = self.maps.entries().iter().map(|(_, _, e)| e.experiment).collect();
            for slot in slots.into_iter().chain(self.running.values().map(|r| r.slot)) {
                self.maps.remove_experiment(slot)?;
            }
            self.dns.remove(|_| true)?;
            // Socket faults, this agent's and any an earlier one left.
            if let Ok(faults) = ConnectFaults::open(&self.pins) {
                faults.remove(|_| true)?;
            }
            if let Ok(faults) = ServiceFaults::open(&self.pins) {
                faults.remove(|_| true)?;
            }
            self.running.iter().filter(|(_, r)| !r.ended).for_each(|(key, run)| release(key, run));
            self.running.clear();
            if let Some(line) = self.delay_line.take() {
                line.stop();
            }
            shaper::remove(&self.pins)?;
            self.save()?;
            return Ok(stopped);
        }
        if let Some(missing) = names.iter().find(|n| !self.running.contains_key(*n)) {
            return Err(ChaosError::NotFound(missing.clone()));
        }
        let mut stopped = Vec::new();
        for name in names {
            if let Some(run) = self.running.remove(name) {
                self.forget(run.slot)?;
                run.buckets.values().for_each(|m| shaper::remove_bucket(*m));
                // An ended one was thawed when it ended; its pods may be
                // another's now.
                if !run.ended {
                    release(name, &run);
                }
                tracing::info!(experiment = %name, "chaos experiment stopped");
                stopped.push(name.clone());
            }
        }
        self.settle_detours();
        self.save()?;
        Ok(stopped)
    }

    /// Removes the kernel entries of experiments past their end (the
    /// kernel already ignores them): at each apply, stop and list, and
    /// within a tick of the end ([`end_on_time`]). Their counters and
    /// slots stay until they are stopped.
    fn sweep(&mut self) -> Result<(), ChaosError> {
        let now = now_unix_ns();
        let mut ended = BTreeSet::new();
        for run in self.running.values_mut() {
            if !run.ended && run.end_unix_ns.is_some_and(|end| end <= now) {
                run.ended = true;
                ended.insert(run.slot);
            }
        }
        if !ended.is_empty() {
            let mut removed = self.maps.remove_pairs(|slot| ended.contains(&slot))?;
            removed += self.dns.remove(|slot| ended.contains(&slot))?;
            if let Some(faults) = &self.connect_faults {
                removed += faults.remove(|slot| ended.contains(&slot))?;
            }
            if let Some(faults) = &self.service_faults {
                removed += faults.remove(|slot| ended.contains(&slot))?;
            }
            for (key, run) in self.running.iter().filter(|(_, r)| ended.contains(&r.slot)) {
                run.buckets.values().for_each(|m| shaper::remove_bucket(*m));
                release(key, run);
            }
            self.settle_detours();
            self.save()?;
            tracing::info!(experiments = ended.len(), pairs = removed, "ended chaos experiments' entries removed");
        }
        Ok(())
    }

    /// Aborts the established TCP connections of a tcp-reset's pairs from
    /// its pods of this node; the connections reset.
    fn reset_connections(&self, run: &Running) -> Result<u64, ChaosError> {
        let pairs: Vec<(IpAddr, IpAddr, u32)> = run.pairs.iter().map(|(src, dst)| (*src, *dst, run.slot)).collect();
        let namespaces: Vec<std::fs::File> =
            run.local_pods.iter().filter_map(|p| weir_host::netns::open(&p.netns).ok()).collect();
        let resets = weir_bpf::chaos::reset_tcp(&self.pins, &pairs, &namespaces)?;
        if resets.kept > 0 {
            return Err(ChaosError::Spec(format!(
                "tcp-reset found {} connections but this kernel cannot end them (bpf_sock_destroy, Linux 6.5+)",
                resets.kept
            )));
        }
        Ok(resets.reset)
    }

    /// Removes the kernel's entries of the experiment in `slot` (packet and
    /// socket faults) and zeroes its counter.
    fn forget(&self, slot: u32) -> Result<(), ChaosError> {
        self.maps.remove_experiment(slot)?;
        self.dns.remove(|s| s == slot)?;
        if let Some(faults) = &self.connect_faults {
            faults.remove(|s| s == slot)?;
        }
        if let Some(faults) = &self.service_faults {
            faults.remove(|s| s == slot)?;
        }
        Ok(())
    }

    /// The pairs of live delay experiments, for the delay line.
    fn delay_routes(&self) -> delay_line::Routes {
        self.running.values().filter(|r| !r.ended).flat_map(delay_routes_of).collect()
    }

    /// Gives the delay line the live delay pairs, or stops it when there
    /// are none; removes the shaper when no live bandwidth or delay
    /// experiment needs it (a failure is logged: the pair is inert without
    /// entries sending to it).
    fn settle_detours(&mut self) {
        let routes = self.delay_routes();
        if routes.is_empty() {
            if let Some(line) = self.delay_line.take() {
                line.stop();
            }
        } else if let Some(line) = &self.delay_line {
            line.set_routes(routes);
        }
        let delays = !self.delay_routes().is_empty();
        if delays || self.running.values().any(|r| !r.ended && !r.buckets.is_empty()) {
            return;
        }
        if let Err(e) = shaper::remove(&self.pins) {
            tracing::warn!(error = %e, "removing the idle bandwidth shaper");
        }
    }
}
