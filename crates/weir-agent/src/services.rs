//! Services as the agent runs them: the applied Kubernetes objects (kept in
//! the state dir), the kernel's socket-LB tables, and backend health.
//!
//! **Invariant: every change is planned against what the kernel holds.** At
//! start the tables are read back from the pinned maps, so an agent killed
//! in the middle of a change finishes it on restart, and a change that fails
//! half-way is rolled back to the previous tables.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use weir_bpf::datapath::PinLayout;
use weir_bpf::socklb::{self, CgroupAttachment, LbMaps, ServiceCounters};
use weir_service::plan::{self, BackendKey, FrontendKey, KernelBackendState, Tables};
use weir_service::{ApplyReport, ClusterState, Frontend, HealthCheck, NodeContext, ObjectKey};
use weir_spec::SpecError;

const STATE_FILE: &str = "services.json";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Bpf(#[from] weir_bpf::BpfError),
    #[error("service state file {path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("the socket load balancer is not running on this node: {0}")]
    Unavailable(String),
    #[error("no {kind} {key}")]
    NotFound { kind: String, key: String },
}

/// What an apply or delete did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub report: ApplyReport,
    pub deleted: Vec<String>,
    pub map_writes: usize,
    /// Writing the kernel's maps.
    pub apply_ns: u64,
    /// The whole change: parsing, checking, planning, recording and writing.
    pub total_ns: u64,
}

/// One backend of one frontend, with the kernel's view of it.
#[derive(Debug, Clone, Serialize)]
pub struct BackendView {
    pub id: u32,
    pub address: IpAddr,
    pub port: u16,
    pub state: KernelBackendState,
    pub connects: u64,
    pub node_name: Option<String>,
    pub zone: Option<String>,
}

/// One frontend as the kernel holds it.
#[derive(Debug, Clone, Serialize)]
pub struct FrontendView {
    pub frontend: Frontend,
    pub key: FrontendKey,
    pub service_id: u32,
    /// Backend ids in slot order (slots 1..): active first, then draining.
    pub slots: Vec<u32>,
    pub active: u16,
    pub counters: ServiceCounters,
    pub backends: Vec<BackendView>,
}

#[derive(Debug)]
pub struct ServiceState {
    maps: LbMaps,
    state_path: PathBuf,
    cluster: ClusterState,
    node: NodeContext,
    quarantined: BTreeSet<BackendKey>,
    tables: Tables,
    desired: Vec<Frontend>,
    pub attachments: Vec<CgroupAttachment>,
}

impl ServiceState {
    /// Attaches the socket load balancer to `cgroup`, marks `opt_out`
    /// cgroups, and makes the kernel hold the services in the state dir.
    pub fn open(
        pins: &PinLayout,
        state_dir: &Path,
        cgroup: &Path,
        node: NodeContext,
        opt_out: &[PathBuf],
    ) -> Result<Self, ServiceError> {
        let attachments = socklb::establish(pins, cgroup)?;
        let maps = LbMaps::open(pins)?;
        for dir in opt_out {
            let id = weir_host::Cgroup::new(dir).id().map_err(|e| ServiceError::State {
                path: dir.clone(),
                message: format!("opting out of the socket load balancer: {e}"),
            })?;
            maps.set_opt_out(id, true)?;
        }
        let state_path = state_dir.join(STATE_FILE);
        let cluster = match std::fs::read_to_string(&state_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| ServiceError::State { path: state_path.clone(), message: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ClusterState::default(),
            Err(e) => return Err(ServiceError::State { path: state_path, message: e.to_string() }),
        };
        let tables = maps.read_tables()?;
        let mut state = Self {
            maps,
            state_path,
            cluster: ClusterState::default(),
            node,
            quarantined: BTreeSet::new(),
            tables,
            desired: Vec::new(),
            attachments,
        };
        state.commit(cluster)?;
        Ok(state)
    }

    /// Applies a YAML stream of Services and EndpointSlices, all or nothing.
    pub fn apply(&mut self, yaml: &str) -> Result<Outcome, ServiceError> {
        let started = Instant::now();
        let objects = weir_service::parse_stream(yaml)?;
        let (next, report) = self.cluster.apply(objects)?;
        let mut outcome = self.commit(next)?;
        outcome.report = report;
        outcome.total_ns = started.elapsed().as_nanos() as u64;
        Ok(outcome)
    }

    pub fn delete(&mut self, kind: &str, key: &ObjectKey) -> Result<Outcome, ServiceError> {
        let started = Instant::now();
        let (next, removed) = self.cluster.delete(kind, key)?;
        if !removed {
            return Err(ServiceError::NotFound { kind: kind.to_string(), key: key.to_string() });
        }
        let mut outcome = self.commit(next)?;
        outcome.deleted.push(format!("{kind} {key}"));
        outcome.total_ns = started.elapsed().as_nanos() as u64;
        Ok(outcome)
    }

    /// Backends that fail their probe take no new connections until they pass again.
    pub fn set_quarantined(&mut self, quarantined: BTreeSet<BackendKey>) -> Result<(), ServiceError> {
        if quarantined == self.quarantined {
            return Ok(());
        }
        let previous = std::mem::replace(&mut self.quarantined, quarantined);
        let cluster = self.cluster.clone();
        if let Err(e) = self.commit(cluster) {
            self.quarantined = previous;
            return Err(e);
        }
        Ok(())
    }

    pub fn quarantined(&self) -> &BTreeSet<BackendKey> {
        &self.quarantined
    }

    /// Every (backend, check) the prober should run.
    pub fn probes(&self) -> BTreeSet<(BackendKey, HealthCheck)> {
        let mut out = BTreeSet::new();
        for fe in &self.desired {
            if fe.health == HealthCheck::None {
                continue;
            }
            for b in &fe.backends {
                let key =
                    BackendKey { address: b.address, port: b.port, proto: plan::proto_number(fe.service.protocol) };
                out.insert((key, fe.health.clone()));
            }
        }
        out
    }

    /// Records the wanted state, then plans against the kernel and writes.
    fn commit(&mut self, next: ClusterState) -> Result<Outcome, ServiceError> {
        let desired = weir_service::frontends(&next, &self.node);
        let (ops, tables) = plan::plan(&self.tables, &desired, &self.quarantined)?;
        self.store(&next)?;
        let started = Instant::now();
        if let Err(err) = self.maps.execute(&ops) {
            // Put back what was there: plan from what the kernel holds now.
            let rollback = self.maps.read_tables().and_then(|now| {
                let (ops, tables) =
                    plan::plan(&now, &self.desired, &self.quarantined).map_err(|e| weir_bpf::BpfError::Query {
                        what: format!("rollback plan: {e}"),
                        source: std::io::Error::other("plan"),
                    })?;
                self.maps.execute(&ops)?;
                Ok(tables)
            });
            match rollback {
                Ok(tables) => self.tables = tables,
                Err(e) => tracing::error!(error = %e, "rolling back a failed service change failed"),
            }
            self.store(&self.cluster.clone())?;
            return Err(err.into());
        }
        let apply_ns = started.elapsed().as_nanos() as u64;
        self.tables = tables;
        self.cluster = next;
        self.desired = desired;
        Ok(Outcome { map_writes: ops.len(), apply_ns, ..Outcome::default() })
    }

    fn store(&self, cluster: &ClusterState) -> Result<(), ServiceError> {
        let err = |message: String| ServiceError::State { path: self.state_path.clone(), message };
        let json = serde_json::to_string(cluster).map_err(|e| err(e.to_string()))?;
        let tmp = self.state_path.with_extension("json.tmp");
        std::fs::write(&tmp, json).map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, &self.state_path).map_err(|e| err(e.to_string()))
    }

    /// Every frontend with the kernel's tables and counters, read from the maps.
    pub fn views(&self) -> Result<Vec<FrontendView>, ServiceError> {
        let held = self.maps.read_tables()?;
        let mut out = Vec::new();
        for fe in &self.desired {
            let key =
                FrontendKey { address: fe.address, port: fe.port, proto: plan::proto_number(fe.service.protocol) };
            let Some(entry) = held.frontends.get(&key) else { continue };
            let counters = self.maps.service_counters(entry.meta.service_id)?;
            let mut backends = Vec::new();
            for id in &entry.slots {
                let Some((bkey, state)) = held.backends.get(id) else { continue };
                let spec = fe.backends.iter().find(|b| b.address == bkey.address && b.port == bkey.port);
                backends.push(BackendView {
                    id: *id,
                    address: bkey.address,
                    port: bkey.port,
                    state: *state,
                    connects: self.maps.backend_connects(*id)?,
                    node_name: spec.and_then(|b| b.node_name.clone()),
                    zone: spec.and_then(|b| b.zone.clone()),
                });
            }
            // Quarantined backends hold no slot; show them too.
            for b in &fe.backends {
                let bkey = BackendKey { address: b.address, port: b.port, proto: key.proto };
                if self.quarantined.contains(&bkey)
                    && !backends.iter().any(|v| v.address == b.address && v.port == b.port)
                {
                    let id = held.backends.iter().find(|(_, (k, _))| *k == bkey).map_or(0, |(id, _)| *id);
                    backends.push(BackendView {
                        id,
                        address: b.address,
                        port: b.port,
                        state: KernelBackendState::Quarantined,
                        connects: if id == 0 { 0 } else { self.maps.backend_connects(id)? },
                        node_name: b.node_name.clone(),
                        zone: b.zone.clone(),
                    });
                }
            }
            out.push(FrontendView {
                frontend: fe.clone(),
                key,
                service_id: entry.meta.service_id,
                slots: entry.slots.clone(),
                active: entry.meta.active,
                counters,
                backends,
            });
        }
        Ok(out)
    }
}

/// The addresses NodePort frontends listen on: the IPv4 and IPv6 addresses
/// of `interface` (global scope).
pub fn node_addresses(interface: &str) -> Vec<IpAddr> {
    let Ok(json) = weir_host::iproute::ip(None, &["-j", "addr", "show", "dev", interface]) else {
        return Vec::new();
    };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&json) else { return Vec::new() };
    value
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|link| link.get("addr_info").and_then(|a| a.as_array()).cloned().unwrap_or_default())
        .filter(|a| a.get("scope").and_then(|s| s.as_str()) == Some("global"))
        .filter_map(|a| a.get("local")?.as_str()?.parse().ok())
        .collect()
}

/// Runs one probe: TCP connect, or an HTTP GET that must answer 2xx or 3xx.
pub async fn probe(backend: &BackendKey, check: &HealthCheck, timeout: Duration) -> bool {
    let addr = SocketAddr::new(backend.address, backend.port);
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        if let HealthCheck::Http { path } = check {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: weir-health\r\n\r\n");
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut head = [0u8; 12];
            stream.read_exact(&mut head).await.ok()?;
            let status = std::str::from_utf8(&head[9..12]).ok()?;
            return Some(status.starts_with('2') || status.starts_with('3'));
        }
        Some(true)
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}

/// Probes every backend each `interval` and quarantines the failing ones;
/// a backend that passes again returns. Stops when `stop` turns true.
pub async fn run_health_checks(
    state: std::sync::Arc<std::sync::Mutex<ServiceState>>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let probes = match state.lock() {
            Ok(s) => s.probes(),
            Err(_) => return,
        };
        // UDP has no connection to probe: only TCP backends are checked, all at once.
        let mut checks = tokio::task::JoinSet::new();
        for (backend, check) in probes.into_iter().filter(|(b, _)| b.proto == plan::IPPROTO_TCP) {
            checks.spawn(async move { (backend, probe(&backend, &check, interval.mul_f32(0.8)).await) });
        }
        let results = checks.join_all().await;
        let failing: BTreeSet<BackendKey> = results.into_iter().filter(|(_, ok)| !ok).map(|(b, _)| b).collect();
        let state = state.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let Ok(mut s) = state.lock() else { return };
            let before = s.quarantined().clone();
            for b in failing.difference(&before) {
                tracing::warn!(backend = %SocketAddr::new(b.address, b.port), "backend failed its health check; quarantined");
            }
            for b in before.difference(&failing) {
                tracing::info!(backend = %SocketAddr::new(b.address, b.port), "backend passed its health check; back in service");
            }
            if let Err(e) = s.set_quarantined(failing) {
                tracing::error!(error = %e, "updating quarantined backends failed");
            }
        })
        .await;
    }
}
