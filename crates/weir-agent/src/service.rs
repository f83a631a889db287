//! The gRPC `Agent` service.

use std::time::{SystemTime, UNIX_EPOCH};

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
}

impl AgentState {
    pub fn new(
        config: AgentConfig,
        desired: DesiredState,
        pins: PinLayout,
        report: EstablishReport,
        restored: bool,
        run_time_stats: bool,
    ) -> Self {
        Self { config, desired, pins, report, restored, run_time_stats, started: SystemTime::now() }
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
        crate::metrics::render(&self.desired.node, self.started_unix().as_secs(), &self.snapshot().await)
    }
}

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentState {
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
