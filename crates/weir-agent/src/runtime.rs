//! Runtime security on this node: the sensors, the policies (one file each
//! in the state dir), the process cache that gives every event its
//! ancestry and pod, and the fan-out of events to `weir events` streams.
//!
//! Events are enriched on the sensors' thread as they are read, then sent
//! to every stream through a bounded broadcast channel; a stream that falls
//! behind loses events and they are counted (`slow_stream`).

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio::sync::broadcast;
use weir_bpf::runtime::{self, EventDetail, EventKind, KernelEvent, SensorOptions, Sensors};
use weir_proto::agent::v1 as pb;
use weir_runtime::{
    compile, Action, Backend, KernelRule, ProcessCache, ProcessInfo, ProgramMarks, RuntimePolicy, Workload,
};
use weir_spec::SpecError;

mod losses;
mod procfs;

use losses::lost_record;
pub use losses::{LossSource, LossTotals, LOST_EVENTS};
use procfs::procfs_processes;

/// Streams may fall this many events behind before they lose some.
const STREAM_BUFFER: usize = 8192;
const POLICY_DIR: &str = "runtime";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error("no RuntimePolicy {0}")]
    NotFound(String),
    #[error("kernel")]
    Bpf(#[from] weir_bpf::BpfError),
    #[error("{what} {}", path.display())]
    State {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How the agent was told to run runtime security.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub scope: PathBuf,
    pub cgroup2: PathBuf,
    pub lsm: bool,
    pub network_events: bool,
    pub cache_size: usize,
    pub ring_bytes: u32,
    /// The lab's pods (JSON), if any: pod attribution and pod selectors.
    pub pods_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
struct PodInfo {
    pod: pb::Pod,
    cgroup: String,
}

/// Counted for metrics.
#[derive(Debug, Default)]
pub struct Counts {
    pub events: BTreeMap<&'static str, u64>,
    /// (policy, action) → events.
    pub actions: BTreeMap<(String, &'static str), u64>,
    pub slow_stream: u64,
}

/// What the sensor thread needs to enrich events.
#[derive(Debug)]
struct Shared {
    node: String,
    own_pid: u32,
    cgroup2: PathBuf,
    scope: PathBuf,
    pods_file: Option<PathBuf>,
    /// Where the CNI endpoints are recorded, with their containers' cgroups.
    state_dir: PathBuf,
    cache: Mutex<ProcessCache>,
    /// cgroup id → pod (lab) or path.
    cgroups: RwLock<HashMap<u64, PodInfo>>,
    last_rescan: Mutex<Option<Instant>>,
    /// Rule origins of each kernel bank, so a slot names its policy.
    origins: RwLock<[Vec<weir_runtime::RuleOrigin>; 2]>,
    /// Wall clock minus the kernel's monotonic clock.
    wall_offset_ns: i128,
    tx: broadcast::Sender<Arc<pb::RuntimeEvent>>,
    counts: Mutex<Counts>,
}

#[derive(Debug)]
pub struct RuntimeState {
    sensors: Sensors,
    shared: Arc<Shared>,
    policies: BTreeMap<String, RuntimePolicy>,
    rules: Vec<KernelRule>,
    dir: PathBuf,
    options: RuntimeOptions,
}

/// The outcome of an apply or delete.
#[derive(Debug, Default)]
pub struct Change {
    pub created: Vec<String>,
    pub configured: Vec<String>,
    pub unchanged: Vec<String>,
    pub deleted: Vec<String>,
    pub installed: Option<runtime::Installed>,
    pub apply_ns: u64,
}

fn monotonic_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec to write.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Shared {
    /// Re-reads pods and cgroup paths, at most once a second.
    fn rescan(&self, force: bool) {
        {
            let mut last = self.last_rescan.lock().unwrap_or_else(|e| e.into_inner());
            if !force && last.is_some_and(|t| t.elapsed().as_secs() < 1) {
                return;
            }
            *last = Some(Instant::now());
        }
        let mut table = HashMap::new();
        for (id, path) in crate::profiling::cgroup_paths(&self.scope) {
            let cgroup = path
                .strip_prefix(&self.cgroup2)
                .map_or_else(|_| path.display().to_string(), |p| format!("/{}", p.display()));
            table.insert(id, PodInfo { pod: pb::Pod::default(), cgroup });
        }
        // Only this node's pods: the file lists the whole lab. Then the CNI
        // containers whose cgroups the agent has found.
        let containers = crate::cni_endpoints::read_records(&self.state_dir);
        for pod in self
            .pods_file
            .as_deref()
            .map(crate::pods::read)
            .unwrap_or_default()
            .into_iter()
            .chain(containers)
            .filter(|p| !p.cgroup.as_os_str().is_empty() && p.cgroup.starts_with(&self.scope))
        {
            if let Ok(meta) = std::fs::metadata(&pod.cgroup) {
                let cgroup = table.get(&meta.ino()).map(|p| p.cgroup.clone()).unwrap_or_default();
                table.insert(
                    meta.ino(),
                    PodInfo {
                        pod: pb::Pod {
                            namespace: pod.namespace,
                            name: pod.name,
                            labels: pod.labels.into_iter().collect(),
                        },
                        cgroup,
                    },
                );
            }
        }
        *self.cgroups.write().unwrap_or_else(|e| e.into_inner()) = table;
    }

    fn workloads(&self) -> Vec<Workload> {
        self.rescan(true);
        self.cgroups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, p)| !p.pod.name.is_empty())
            .map(|(id, p)| Workload {
                namespace: p.pod.namespace.clone(),
                name: p.pod.name.clone(),
                labels: p.pod.labels.clone().into_iter().collect(),
                cgroup_id: *id,
            })
            .collect()
    }

    fn cgroup_info(&self, id: u64) -> Option<PodInfo> {
        if let Some(info) = self.cgroups.read().unwrap_or_else(|e| e.into_inner()).get(&id) {
            return Some(info.clone());
        }
        self.rescan(false);
        self.cgroups.read().unwrap_or_else(|e| e.into_inner()).get(&id).cloned()
    }

    fn wall(&self, ktime: u64) -> u64 {
        u64::try_from(i128::from(ktime) + self.wall_offset_ns).unwrap_or(0)
    }

    fn process_message(&self, p: &ProcessInfo) -> pb::Process {
        let info = self.cgroup_info(p.cgroup_id);
        pb::Process {
            exec_id: p.exec_id.clone(),
            parent_exec_id: p.parent_exec_id.clone().unwrap_or_default(),
            pid: p.pid,
            ppid: p.ppid,
            uid: p.uid,
            gid: p.gid,
            binary: p.binary.clone(),
            args: p.args.clone(),
            args_truncated: p.args_truncated,
            cwd: p.cwd.clone(),
            start_time_unix_ns: self.wall(p.start_ktime),
            cgroup_id: p.cgroup_id,
            cgroup: info.as_ref().map(|i| i.cgroup.clone()).unwrap_or_default(),
            pod: info.map(|i| i.pod).filter(|p| !p.name.is_empty()),
            from_procfs: p.from_procfs,
            fileless: p.marks.fileless,
            binary_deleted: p.marks.binary_deleted,
            cwd_deleted: p.marks.cwd_deleted,
            via_loader: p.marks.loader,
        }
    }

    /// Updates the cache and the counts with a kernel event, and turns it
    /// into the API's when a stream is listening (None otherwise).
    fn enrich(&self, e: KernelEvent) -> Option<pb::RuntimeEvent> {
        if e.pid == self.own_pid {
            return None;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let process = match (&e.kind, &e.detail) {
            (EventKind::Exec, EventDetail::Exec { path, cwd, args }) => {
                let info = ProcessInfo {
                    binary: path.clone(),
                    args: args.clone(),
                    args_truncated: e.flags & runtime::F_ARGS_TRUNCATED != 0,
                    cwd: cwd.clone(),
                    start_ktime: e.ktime,
                    marks: ProgramMarks {
                        fileless: e.flags & runtime::F_FILELESS != 0,
                        binary_deleted: e.flags & runtime::F_DELETED != 0,
                        cwd_deleted: e.flags & runtime::F_CWD_DELETED != 0,
                        loader: e.flags & runtime::F_LOADER != 0,
                    },
                    ..unknown(&e)
                };
                if e.action == Some(Action::Deny) {
                    // Refused by execve: the process still runs its old program.
                    let mut refused = info;
                    refused.exec_id = cache.exec_id(e.ktime, e.pid);
                    refused.parent_exec_id = cache.get(e.ppid).map(|p| p.exec_id.clone());
                    refused
                } else {
                    cache.on_exec(info)
                }
            }
            (EventKind::Fork, _) => cache.on_fork(e.pid, e.ppid, e.uid, e.gid, e.ktime, e.cgroup_id),
            (EventKind::Exit, _) => cache.on_exit(e.pid).unwrap_or_else(|| unknown(&e)),
            _ => cache.get(e.pid).cloned().unwrap_or_else(|| unknown(&e)),
        };
        // Counted whether or not anyone streams; the rest is only for streams.
        let matched = e.action.map(|action| {
            let origins = self.origins.read().unwrap_or_else(|e| e.into_inner());
            let origin = e.rule_slot.and_then(|slot| origins.get((slot / 256) as usize)?.get((slot % 256) as usize));
            (action, origin.map(|o| o.policy.clone()).unwrap_or_default(), origin.map_or(0, |o| o.rule as u32))
        });
        {
            let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            *counts.events.entry(e.kind.name()).or_default() += 1;
            if let Some((action, policy, _)) = &matched {
                *counts.actions.entry((policy.clone(), action.name())).or_default() += 1;
            }
        }
        if self.tx.receiver_count() == 0 {
            return None;
        }
        let parent = cache.get(process.ppid).cloned();
        let ancestors: Vec<String> = cache.ancestors(process.pid).iter().skip(1).map(|p| p.binary.clone()).collect();
        drop(cache);

        let mut out = pb::RuntimeEvent {
            node: self.node.clone(),
            r#type: e.kind.name().to_string(),
            time_unix_ns: self.wall(e.ktime),
            tid: e.tid,
            process: Some(self.process_message(&process)),
            parent: parent.as_ref().map(|p| self.process_message(p)),
            ancestors,
            errno: e.errno,
            lsm: e.flags & runtime::F_LSM != 0,
            ..Default::default()
        };
        if e.kind == EventKind::Exit {
            // The kernel's exit_code: status << 8, or the signal in the low 7 bits.
            out.exit_signal = (e.exit_code & 0x7f) as i32;
            out.exit_status = ((e.exit_code >> 8) & 0xff) as i32;
        }
        match &e.detail {
            EventDetail::Network { family, protocol, local, remote, .. } => {
                out.family = match family {
                    4 => "ipv4".into(),
                    6 => "ipv6".into(),
                    1 => "unix".into(),
                    16 => "netlink".into(),
                    17 => "packet".into(),
                    other => format!("af{other}"),
                };
                out.protocol = match protocol {
                    6 => "tcp".into(),
                    17 => "udp".into(),
                    0 => String::new(),
                    other => other.to_string(),
                };
                if *family == 4 || *family == 6 {
                    out.local_address = local.0.to_string();
                    out.local_port = u32::from(local.1);
                    out.remote_address = remote.0.to_string();
                    out.remote_port = u32::from(remote.1);
                }
            }
            EventDetail::File { path } => out.path.clone_from(path),
            _ => {}
        }
        if let Some((action, policy, rule)) = matched {
            out.policy = policy;
            out.policy_rule = rule;
            out.action = action.name().to_string();
        }
        Some(out)
    }
}

/// What an event alone says of its process.
fn unknown(e: &KernelEvent) -> ProcessInfo {
    ProcessInfo {
        exec_id: String::new(),
        parent_exec_id: None,
        pid: e.pid,
        ppid: e.ppid,
        uid: e.uid,
        gid: e.gid,
        binary: String::new(),
        args: Vec::new(),
        args_truncated: false,
        cwd: String::new(),
        start_ktime: e.start_time,
        cgroup_id: e.cgroup_id,
        from_procfs: false,
        exited: false,
        marks: ProgramMarks::default(),
    }
}

impl RuntimeState {
    /// A pid's (exec id, binary, exec time) as the process cache holds
    /// them, for flows that name a process; usable from any thread.
    pub fn process_lookup(&self) -> crate::hubble::process::ProcessLookup {
        let shared = self.shared.clone();
        Arc::new(move |pid| {
            let cache = shared.cache.lock().ok()?;
            cache.get(pid).map(|p| (p.exec_id.clone(), p.binary.clone(), p.start_ktime))
        })
    }

    /// Starts the sensors, seeds the process cache and the kernel's process
    /// table from /proc, and re-installs the policies of the state dir.
    pub fn open(node: &str, state_dir: &Path, options: RuntimeOptions) -> Result<Self, RuntimeError> {
        let (tx, _) = broadcast::channel(STREAM_BUFFER);
        let shared = Arc::new(Shared {
            node: node.to_string(),
            own_pid: std::process::id(),
            cgroup2: options.cgroup2.clone(),
            scope: options.scope.clone(),
            pods_file: options.pods_file.clone(),
            state_dir: state_dir.to_path_buf(),
            cache: Mutex::new(ProcessCache::new(node, options.cache_size)),
            cgroups: RwLock::default(),
            last_rescan: Mutex::new(None),
            origins: RwLock::default(),
            wall_offset_ns: monotonic_ns(libc::CLOCK_REALTIME) - monotonic_ns(libc::CLOCK_MONOTONIC),
            tx,
            counts: Mutex::default(),
        });
        shared.rescan(true);
        let sink = shared.clone();
        let sensors = runtime::start(
            SensorOptions { scope_cgroup: options.scope.clone(), lsm: options.lsm, ring_bytes: options.ring_bytes },
            move |event| {
                if let Some(out) = sink.enrich(event) {
                    // No stream listening is not a loss: nobody asked.
                    let _ = sink.tx.send(Arc::new(out));
                }
            },
        )?;
        // Processes that exec'd before the sensors came up.
        {
            let seeded = procfs_processes(&options.scope, &options.cgroup2);
            let mut cache = shared.cache.lock().unwrap_or_else(|e| e.into_inner());
            for p in seeded {
                let _ = sensors.maps.seed_process(p.pid, p.ppid, &p.binary, p.start_ktime);
                if cache.get(p.pid).is_none() {
                    cache.seed(p);
                }
            }
            cache.link_seeded();
        }
        let dir = state_dir.join(POLICY_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| RuntimeError::State {
            what: "creating",
            path: dir.clone(),
            source,
        })?;
        let mut state = Self { sensors, shared, policies: BTreeMap::new(), rules: Vec::new(), dir, options };
        let mut stored = BTreeMap::new();
        for entry in std::fs::read_dir(&state.dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                match RuntimePolicy::parse(&text) {
                    Ok(p) => {
                        stored.insert(p.metadata.name.clone(), p);
                    }
                    Err(e) => tracing::warn!(file = %path.display(), error = %e, "skipping a stored RuntimePolicy"),
                }
            }
        }
        if let Err(e) = state.install(stored.clone()) {
            tracing::warn!(error = %e, "stored RuntimePolicies no longer compile here; starting with none");
        } else {
            state.policies = stored;
        }
        Ok(state)
    }

    /// Reads the pods and the CNI containers' cgroups again now: a
    /// container whose cgroup was just found is named from its next event,
    /// and the policies whose pod selectors take it are installed again so
    /// that they cover it.
    pub fn refresh_pods(&mut self) -> Result<(), RuntimeError> {
        if self.policies.is_empty() {
            self.shared.rescan(true);
            return Ok(());
        }
        self.install(self.policies.clone()).map(|_| ())
    }

    pub fn backend(&self) -> Backend {
        Backend { lsm: self.sensors.report.lsm }
    }

    pub fn report(&self) -> &runtime::SensorReport {
        &self.sensors.report
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<pb::RuntimeEvent>> {
        self.shared.tx.subscribe()
    }

    pub fn note_slow_stream(&self, lost: u64) {
        self.shared.counts.lock().unwrap_or_else(|e| e.into_inner()).slow_stream += lost;
    }

    /// Events lost so far on this node, by source, for streams to report
    /// what they missed while connected: events the kernel could not put
    /// in the ring, and processes evicted from the cache.
    pub fn loss_totals(&self) -> LossTotals {
        let ring_full = self
            .sensors
            .maps
            .counters()
            .unwrap_or_default()
            .iter()
            .find(|(name, _)| *name == "ring_full")
            .map_or(0, |(_, n)| *n);
        let evicted = self.shared.cache.lock().map_or(0, |c| c.evictions());
        LossTotals { kernel_ring: ring_full, process_cache_evicted: evicted }
    }

    pub fn node(&self) -> &str {
        &self.shared.node
    }

    /// A stream's record of `count` events lost from `source`.
    pub fn lost_record(&self, source: LossSource, count: u64) -> pb::RuntimeEvent {
        lost_record(&self.shared.node, source, count)
    }

    fn install(&mut self, policies: BTreeMap<String, RuntimePolicy>) -> Result<runtime::Installed, RuntimeError> {
        let list: Vec<RuntimePolicy> = policies.values().cloned().collect();
        let rules = compile(&list, &self.shared.workloads(), self.backend())?;
        let next = (self.sensors.maps.installed()?.bank + 1) & 1;
        self.shared.origins.write().unwrap_or_else(|e| e.into_inner())[next as usize] =
            rules.iter().map(|r| r.origin.clone()).collect();
        let installed = self.sensors.maps.install(&rules, self.options.network_events)?;
        self.rules = rules;
        Ok(installed)
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.yaml"))
    }

    fn write_record(&self, policy: &RuntimePolicy) -> Result<(), RuntimeError> {
        let path = self.path_of(&policy.metadata.name);
        let text = serde_yaml::to_string(policy).unwrap_or_default();
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, text).map_err(|source| RuntimeError::State {
            what: "writing",
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &path).map_err(|source| RuntimeError::State { what: "renaming", path, source })
    }

    /// Applies policies all or none: they replace policies of the same name.
    pub fn apply(&mut self, yaml: &str) -> Result<Change, RuntimeError> {
        let start = Instant::now();
        let mut incoming = Vec::new();
        for doc in weir_spec::split_documents(yaml)? {
            if doc.kind != weir_runtime::spec::KIND {
                return Err(doc.locate(weir_spec::err("kind", "this call takes RuntimePolicy documents only")).into());
            }
            incoming.push(RuntimePolicy::parse(&doc.text).map_err(|e| doc.locate(e))?);
        }
        let mut next = self.policies.clone();
        let mut change = Change::default();
        for policy in incoming {
            let name = policy.metadata.name.clone();
            match next.insert(name.clone(), policy.clone()) {
                None => change.created.push(name),
                Some(old) if old == policy => change.unchanged.push(name),
                Some(_) => change.configured.push(name),
            }
        }
        if change.created.is_empty() && change.configured.is_empty() {
            return Ok(change);
        }
        let installed = self.install(next.clone())?;
        for name in change.created.iter().chain(&change.configured) {
            if let Err(e) = self.write_record(&next[name]) {
                // The kernel took it but the record did not: go back to what is recorded.
                let _ = self.install(self.policies.clone());
                return Err(e);
            }
        }
        self.policies = next;
        change.installed = Some(installed);
        change.apply_ns = start.elapsed().as_nanos() as u64;
        Ok(change)
    }

    pub fn delete(&mut self, names: &[String]) -> Result<Change, RuntimeError> {
        let start = Instant::now();
        let mut next = self.policies.clone();
        for name in names {
            if next.remove(name).is_none() {
                return Err(RuntimeError::NotFound(name.clone()));
            }
        }
        let installed = self.install(next.clone())?;
        for name in names {
            let path = self.path_of(name);
            let _ = std::fs::remove_file(&path);
        }
        self.policies = next;
        Ok(Change {
            deleted: names.to_vec(),
            installed: Some(installed),
            apply_ns: start.elapsed().as_nanos() as u64,
            ..Default::default()
        })
    }

    pub fn list(&self) -> Result<pb::RuntimeListResponse, RuntimeError> {
        let installed = self.sensors.maps.installed()?;
        let report = &self.sensors.report;
        let rules = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let exec = r.operations.contains(&weir_runtime::Operation::Exec);
                let enforcement = match r.action {
                    Action::Audit => "report",
                    Action::Kill => "kill at exec",
                    Action::Deny if exec && r.lsm_exec => "lsm errno",
                    Action::Deny if exec => "kill at exec",
                    Action::Deny if r.operations.contains(&weir_runtime::Operation::FileOpen) => "lsm errno",
                    Action::Deny => "cgroup errno",
                };
                pb::RuntimeKernelRule {
                    index: i as u32,
                    policy: r.origin.policy.clone(),
                    rule: r.origin.rule as u32,
                    action: r.action.name().into(),
                    operations: r.operations.iter().map(|o| o.name().to_string()).collect(),
                    enforcement: enforcement.into(),
                    pods: r.cgroups.as_ref().map_or(-1, |c| c.len() as i32),
                }
            })
            .collect();
        Ok(pb::RuntimeListResponse {
            backend: self.backend().name().into(),
            lsm_unavailable: report.lsm_unavailable.clone().unwrap_or_default(),
            scope: self.options.scope.display().to_string(),
            policies: self.policies.keys().cloned().collect(),
            rules,
            generation: installed.generation,
            hooks: report.attached.clone(),
            missing_hooks: report.missing.iter().map(|(p, why)| format!("{p}: {why}")).collect(),
            processes: self.shared.cache.lock().map(|c| c.len() as u64).unwrap_or(0),
            problem: String::new(),
            chosen_errno: report.chosen_errno,
        })
    }

    /// Everything the metrics page shows about runtime security.
    pub fn metrics(&self) -> RuntimeMetrics {
        let counts = self.shared.counts.lock().unwrap_or_else(|e| e.into_inner());
        let cache = self.shared.cache.lock().unwrap_or_else(|e| e.into_inner());
        let kernel = self.sensors.maps.counters().unwrap_or_default();
        let mut lost: Vec<(&'static str, u64)> =
            kernel.iter().filter(|(n, _)| *n == "ring_full").map(|(n, v)| (*n, *v)).collect();
        lost.push(("slow_stream", counts.slow_stream));
        lost.push(("process_cache_evicted", cache.evictions()));
        RuntimeMetrics {
            backend: self.backend().name(),
            events: counts.events.iter().map(|(k, v)| (*k, *v)).collect(),
            actions: counts.actions.iter().map(|((p, a), v)| (p.clone(), *a, *v)).collect(),
            lost,
            kernel,
            processes: cache.len() as u64,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct RuntimeMetrics {
    pub backend: &'static str,
    pub events: Vec<(&'static str, u64)>,
    pub actions: Vec<(String, &'static str, u64)>,
    pub lost: Vec<(&'static str, u64)>,
    pub kernel: Vec<(&'static str, u64)>,
    pub processes: u64,
}

/// Whether an event passes a stream's filters. Lost-event records always
/// do: whatever the filters, the reader must know what it missed.
pub fn wanted(event: &pb::RuntimeEvent, request: &pb::EventsRequest) -> bool {
    if event.r#type == LOST_EVENTS {
        return true;
    }
    if !request.types.is_empty() && !request.types.contains(&event.r#type) {
        return false;
    }
    if request.policy_only && event.policy.is_empty() {
        return false;
    }
    let process = event.process.as_ref();
    if !request.binary.is_empty() && !process.is_some_and(|p| p.binary.contains(&request.binary)) {
        return false;
    }
    if !request.pod.is_empty() {
        let pod = process.and_then(|p| p.pod.as_ref()).map(|p| format!("{}/{}", p.namespace, p.name));
        if pod.as_deref() != Some(request.pod.as_str()) {
            return false;
        }
    }
    true
}

pub fn event_types() -> Vec<&'static str> {
    EventKind::ALL.iter().map(|k| k.name()).collect()
}
