//! The `Agent` service: how the node is doing (`weir status`) and its
//! profiles (`weir profile`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use weir_proto::agent::v1 as pb;

use super::{AgentState, DisplayChain};
use crate::snapshot::{hook_name, mode_name};

/// Bounds on what a profile request may ask for.
const MAX_PROFILE_DURATION: Duration = Duration::from_secs(3600);
const MAX_FREQUENCY_HZ: u32 = 10_000;
const MAX_STACKS: u32 = 1 << 20;

/// The `Agent` service, on the agent's state.
#[derive(Debug, Clone)]
pub struct AgentApi(pub Arc<AgentState>);

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentApi {
    async fn profile(&self, request: Request<pb::ProfileRequest>) -> Result<Response<pb::ProfileResponse>, Status> {
        let request = request.into_inner();
        let mut spec = profile_spec(&request)?;
        let known = crate::profiling::known_pods(
            &self.0.config.state_dir,
            self.0.config.pods_file.as_deref(),
            &self.0.desired.node,
        );
        for pod in &request.pods {
            let cgroup = known.iter().find(|(name, _)| name == pod).map(|(_, c)| c.clone()).ok_or_else(|| {
                Status::not_found(format!(
                    "pods: {pod} is not a pod of node {} whose cgroup the agent knows (a CNI container's is found once it runs a process)",
                    self.0.desired.node
                ))
            })?;
            spec.cgroups.push(cgroup);
        }
        let named: std::collections::HashMap<u64, String> = known
            .into_iter()
            .filter_map(|(name, cgroup)| {
                Some((std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(cgroup).ok()?), name))
            })
            .collect();
        // The turn is held by the sampling thread itself, so it is released
        // only once sampling has really stopped.
        let turn = self.0.profile_turn.clone().lock_owned().await;
        let node = self.0.desired.node.clone();
        let cgroup2 = self.0.config.cgroup2.clone();
        let node_cgroup = self.0.config.node_cgroup.clone();
        if let Some(pid) = spec.pid {
            crate::profiling::check_pid(pid, &cgroup2, node_cgroup.as_deref(), &node).map_err(Status::not_found)?;
        }
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
            crate::profiling::collect(&node, &cgroup2, node_cgroup.as_deref(), &named, &task_spec, &cancelled)
        })
        .await
        .map_err(|e| Status::internal(format!("profiling task failed: {e}")))?
        .map_err(|e| Status::internal(format!("profiling: {:#}", DisplayChain(&e))))?;
        self.0.profile_samples.fetch_add(result.samples, Ordering::Relaxed);
        if let Ok(mut totals) = self.0.profile_losses.lock() {
            for (reason, n) in &result.losses {
                *totals.entry(reason).or_default() += n;
            }
        }
        Ok(Response::new(pb::ProfileResponse {
            node: self.0.desired.node.clone(),
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
            event: result.event.to_string(),
        }))
    }

    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let sample_ms = request.into_inner().sample_ms.min(60_000);
        let mut snap = self.0.snapshot().await;
        let mut stats_window_ms = 0;
        if sample_ms > 0 && !self.0.run_time_stats {
            // Account run time only for the window, then report the difference.
            let fd = weir_bpf::stats::enable_run_time_stats()
                .map_err(|e| Status::unavailable(format!("kernel run-time statistics: {e}")))?;
            let before = self.0.snapshot().await.inspection.programs;
            tokio::time::sleep(Duration::from_millis(u64::from(sample_ms))).await;
            snap = self.0.snapshot().await;
            drop(fd);
            for program in &mut snap.inspection.programs {
                if let Some(old) = before.iter().find(|p| p.id == program.id) {
                    program.run_count -= old.run_count.min(program.run_count);
                    program.run_time_ns -= old.run_time_ns.min(program.run_time_ns);
                }
            }
            stats_window_ms = sample_ms;
        }
        let health = if snap.problems.is_empty() { pb::Health::Ok } else { pb::Health::Degraded };
        let runtime_backend = match &self.0.runtime {
            Ok(_) => self
                .0
                .with_runtime(|r| {
                    let why =
                        r.report().lsm_unavailable.clone().map(|w| format!(" (no BPF LSM: {w})")).unwrap_or_default();
                    Ok(format!("{}{why}", r.backend().name()))
                })
                .await
                .unwrap_or_default(),
            Err(why) => format!("off: {why}"),
        };
        Ok(Response::new(pb::GetStatusResponse {
            runtime_backend,
            node: self.0.desired.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            health: health.into(),
            health_detail: snap.problems.clone(),
            started_unix_ms: self.0.started_unix().as_millis() as u64,
            restored: self.0.restored,
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
                    program_id: a.program_id,
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
            run_time_stats: self.0.run_time_stats || stats_window_ms > 0,
            stats_window_ms,
            pin_dir: self.0.config.pin_dir.display().to_string(),
            state_dir: self.0.config.state_dir.display().to_string(),
            metrics_addr: self.0.config.metrics_addr.clone().unwrap_or_default(),
            lab: self.0.config.lab.clone().unwrap_or_default(),
        }))
    }
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

/// Sets its flag when dropped, i.e. when the request future is abandoned.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
