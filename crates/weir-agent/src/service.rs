//! The gRPC `Agent` service.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::{Request, Response, Status};
use weir_bpf::datapath::{EstablishReport, PinLayout};
use weir_proto::agent::v1 as pb;

use crate::config::{AgentConfig, DesiredState};
use crate::snapshot::{self, hook_name, mode_name, Snapshot};

/// What the running agent knows about itself.
#[derive(Debug)]
pub struct AgentState {
    config: AgentConfig,
    desired: DesiredState,
    pins: PinLayout,
    report: EstablishReport,
    restored: bool,
    run_time_stats: bool,
    started: SystemTime,
    /// One profile at a time: two samplers would only slow each other.
    profile_turn: Arc<tokio::sync::Mutex<()>>,
    profile_samples: AtomicU64,
    profile_losses: Mutex<BTreeMap<&'static str, u64>>,
}

/// Bounds on what a profile request may ask for.
const MAX_PROFILE_DURATION: Duration = Duration::from_secs(3600);
const MAX_FREQUENCY_HZ: u32 = 10_000;
const MAX_STACKS: u32 = 1 << 20;

impl AgentState {
    pub fn new(
        config: AgentConfig,
        desired: DesiredState,
        pins: PinLayout,
        report: EstablishReport,
        restored: bool,
        run_time_stats: bool,
    ) -> Self {
        Self {
            config,
            desired,
            pins,
            report,
            restored,
            run_time_stats,
            started: SystemTime::now(),
            profile_turn: Arc::new(tokio::sync::Mutex::new(())),
            profile_samples: AtomicU64::new(0),
            profile_losses: Mutex::new(BTreeMap::new()),
        }
    }

    fn started_unix(&self) -> std::time::Duration {
        self.started.duration_since(UNIX_EPOCH).unwrap_or_default()
    }

    async fn snapshot(&self) -> Snapshot {
        let pins = self.pins.clone();
        let attachments = self.report.attachments.clone();
        tokio::task::spawn_blocking(move || snapshot::take(&pins, &attachments)).await.unwrap_or_else(|err| Snapshot {
            problems: vec![format!("reading the datapath failed: {err}")],
            ..Snapshot::default()
        })
    }

    /// The Prometheus exposition of a fresh snapshot.
    pub async fn metrics_text(&self) -> String {
        let mut text =
            crate::metrics::render(&self.desired.node, self.started_unix().as_secs(), &self.snapshot().await);
        let losses = self.profile_losses.lock().map(|l| l.clone()).unwrap_or_default();
        crate::metrics::render_profiling(
            &mut text,
            &self.desired.node,
            self.profile_samples.load(Ordering::Relaxed),
            &losses,
        );
        text
    }

    fn profile_spec(request: &pb::ProfileRequest) -> Result<crate::profiling::ProfileSpec, Status> {
        let duration = Duration::from_millis(u64::from(request.duration_ms));
        if duration.is_zero() || duration > MAX_PROFILE_DURATION {
            return Err(Status::invalid_argument(format!(
                "duration_ms: must be between 1 and {}",
                MAX_PROFILE_DURATION.as_millis()
            )));
        }
        let frequency = if request.frequency_hz == 0 { 99 } else { request.frequency_hz };
        if frequency > MAX_FREQUENCY_HZ {
            return Err(Status::invalid_argument(format!("frequency_hz: at most {MAX_FREQUENCY_HZ}")));
        }
        let max_stacks = if request.max_stacks == 0 { 16384 } else { request.max_stacks };
        if max_stacks > MAX_STACKS {
            return Err(Status::invalid_argument(format!("max_stacks: at most {MAX_STACKS}")));
        }
        let cgroups = request.cgroups.iter().map(std::path::PathBuf::from).collect::<Vec<_>>();
        if let Some(bad) = cgroups.iter().find(|c| !c.is_absolute() || !c.join("cgroup.procs").exists()) {
            return Err(Status::invalid_argument(format!("cgroups: {} is not a cgroup directory", bad.display())));
        }
        Ok(crate::profiling::ProfileSpec {
            duration,
            frequency_hz: u64::from(frequency),
            max_stacks,
            cgroups,
            pid: (request.pid != 0).then_some(request.pid),
            binary: (!request.binary.is_empty()).then(|| request.binary.clone()),
            kernel: request.kernel,
        })
    }
}

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentState {
    async fn profile(&self, request: Request<pb::ProfileRequest>) -> Result<Response<pb::ProfileResponse>, Status> {
        let request = request.into_inner();
        let spec = Self::profile_spec(&request)?;
        // The turn is held by the sampling thread itself, so it is released
        // only once sampling has really stopped.
        let turn = self.profile_turn.clone().lock_owned().await;
        let node = self.desired.node.clone();
        let cgroup2 = self.config.cgroup2.clone();
        let node_cgroup = self.config.node_cgroup.clone();
        let task_spec = spec.clone();
        // A client that hangs up cancels the session: this future is dropped.
        let cancelled = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = CancelOnDrop(cancelled.clone());
        tracing::info!(
            duration_ms = request.duration_ms,
            frequency_hz = spec.frequency_hz,
            cgroups = spec.cgroups.len(),
            pid = request.pid,
            "profiling"
        );
        let result = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            crate::profiling::collect(&node, &cgroup2, node_cgroup.as_deref(), &task_spec, &cancelled)
        })
        .await
        .map_err(|e| Status::internal(format!("profiling task failed: {e}")))?
        .map_err(|e| Status::internal(format!("profiling: {:#}", DisplayChain(&e))))?;
        self.profile_samples.fetch_add(result.samples, Ordering::Relaxed);
        if let Ok(mut totals) = self.profile_losses.lock() {
            for (reason, n) in &result.losses {
                *totals.entry(reason).or_default() += n;
            }
        }
        Ok(Response::new(pb::ProfileResponse {
            node: self.desired.node.clone(),
            stacks: result
                .profile
                .stacks
                .into_iter()
                .map(|(frames, count)| pb::FoldedStack { frames, count })
                .collect(),
            samples: result.samples,
            losses: result.losses.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            truncated_stacks: result.truncated_stacks,
            frequency_hz: spec.frequency_hz as u32,
            duration_ms: request.duration_ms,
            processes: result.processes,
            processes_unresolved: result.processes_unresolved,
        }))
    }

    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let snap = self.snapshot().await;
        let health = if snap.problems.is_empty() { pb::Health::Ok } else { pb::Health::Degraded };
        Ok(Response::new(pb::GetStatusResponse {
            node: self.desired.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            health: health.into(),
            health_detail: snap.problems.clone(),
            started_unix_ms: self.started_unix().as_millis() as u64,
            restored: self.restored,
            programs: snap
                .inspection
                .programs
                .iter()
                .map(|p| pb::Program {
                    name: p.name.clone(),
                    id: p.id,
                    run_count: p.run_count,
                    run_time_ns: p.run_time_ns,
                })
                .collect(),
            maps: snap
                .inspection
                .maps
                .iter()
                .map(|m| pb::Map {
                    name: m.name.clone(),
                    id: m.id,
                    r#type: m.map_type.clone(),
                    max_entries: m.max_entries,
                    in_use: m.in_use,
                })
                .collect(),
            attachments: snap
                .attachments
                .iter()
                .map(|a| pb::Attachment {
                    program: a.attachment.program.clone(),
                    hook: hook_name(a.attachment.hook).to_string(),
                    interface: a.attachment.interface.clone(),
                    ifindex: a.attachment.ifindex,
                    mode: mode_name(a.attachment.mode).to_string(),
                    attached: a.attached,
                    link_id: a.link_id,
                    adopted: a.attachment.adopted,
                })
                .collect(),
            traffic: snap
                .traffic
                .iter()
                .map(|(d, c, v)| pb::TrafficCounter {
                    direction: d.to_string(),
                    class: c.to_string(),
                    packets: v.packets,
                    bytes: v.bytes,
                })
                .collect(),
            run_time_stats: self.run_time_stats,
            pin_dir: self.config.pin_dir.display().to_string(),
            state_dir: self.config.state_dir.display().to_string(),
            metrics_addr: self.config.metrics_addr.clone().unwrap_or_default(),
            lab: self.config.lab.clone().unwrap_or_default(),
        }))
    }
}

/// Formats an error with its chain of sources, for status messages.
struct DisplayChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

/// Sets its flag when dropped, i.e. when the request future is abandoned.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
