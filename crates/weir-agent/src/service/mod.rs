//! The gRPC `Agent` service: its state, and one handler per call, each
//! handing the work to the module that owns the capability. `convert` turns
//! their errors and results into gRPC messages.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::{Request, Response, Status};
use weir_bpf::datapath::{EstablishReport, PinLayout};
use weir_proto::agent::v1 as pb;

use crate::config::{AgentConfig, DesiredState};
use crate::snapshot::{self, hook_name, mode_name, Snapshot};

mod convert;
mod streams;

use convert::*;

/// What the running agent knows about itself.
#[derive(Debug)]
pub struct AgentState {
    config: AgentConfig,
    desired: DesiredState,
    pins: PinLayout,
    /// What the node datapath is attached to now (re-established as pods come and go).
    attachments: crate::netpolicy::Attachments,
    restored: bool,
    run_time_stats: bool,
    started: SystemTime,
    /// One profile at a time: two samplers would only slow each other.
    profile_turn: Arc<tokio::sync::Mutex<()>>,
    profile_samples: AtomicU64,
    profile_losses: Mutex<BTreeMap<&'static str, u64>>,
    filter: Arc<Mutex<crate::filtering::FilterState>>,
    /// Trace streams open now; events are emitted while any is.
    traces: Arc<AtomicUsize>,
    /// The socket load balancer, or why it is not running.
    services: Result<Arc<Mutex<crate::services::ServiceState>>, String>,
    /// Runtime security, or why it is not running.
    runtime: Result<Arc<Mutex<crate::runtime::RuntimeState>>, String>,
    /// The pod path's network policy; None without the pod path.
    netpolicy: Option<Arc<Mutex<crate::netpolicy::NetPolicyState>>>,
    /// Chaos experiments on the pod path, or why they are not available.
    chaos: Result<Arc<Mutex<crate::chaos::ChaosState>>, String>,
    /// The XDP load balancer and real-server decapsulation, when the flags ask for them.
    lb: Option<Arc<Mutex<crate::lb::LbState>>>,
    /// Turns true when the agent begins to stop: open streams end, so a
    /// graceful shutdown does not wait for clients that never hang up.
    closing: tokio::sync::watch::Sender<bool>,
}

/// The parts of the agent beyond the node datapath; services and runtime
/// security may be missing on a kernel that refuses them (the reason says why).
#[derive(Debug)]
pub struct Subsystems {
    pub filter: crate::filtering::FilterState,
    pub services: Result<Arc<Mutex<crate::services::ServiceState>>, String>,
    pub runtime: Result<Arc<Mutex<crate::runtime::RuntimeState>>, String>,
    pub netpolicy: Option<Arc<Mutex<crate::netpolicy::NetPolicyState>>>,
    pub lb: Option<Arc<Mutex<crate::lb::LbState>>>,
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
        attachments: crate::netpolicy::Attachments,
        run_time_stats: bool,
        subsystems: Subsystems,
    ) -> Self {
        let Subsystems { filter, services, runtime, netpolicy, lb } = subsystems;
        // Maps reused from pins mean the kernel kept state across a restart.
        let restored = !report.maps_reused.is_empty();
        let chaos = match &netpolicy {
            Some(netpolicy) => netpolicy
                .lock()
                .map_err(|_| crate::chaos::ChaosError::Spec("network policy state poisoned".into()))
                .map(|n| n.shared().chaos_names.clone())
                .and_then(|names| crate::chaos::ChaosState::open(&pins, &desired.node, &config.state_dir, names))
                .map(|c| Arc::new(Mutex::new(c)))
                .map_err(|e| DisplayChain(&e).to_string()),
            None => {
                Err("chaos needs the pod path, which is off on this node (a lab with routing: weir or vxlan)".into())
            }
        };
        if let Ok(chaos) = &chaos {
            crate::chaos::end_on_time(chaos.clone());
        }
        Self {
            config,
            desired,
            pins,
            attachments,
            restored,
            run_time_stats,
            started: SystemTime::now(),
            profile_turn: Arc::new(tokio::sync::Mutex::new(())),
            profile_samples: AtomicU64::new(0),
            profile_losses: Mutex::new(BTreeMap::new()),
            filter: Arc::new(Mutex::new(filter)),
            traces: Arc::new(AtomicUsize::new(0)),
            services,
            runtime,
            netpolicy,
            chaos,
            lb,
            closing: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Turns true when the agent begins to stop.
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Ends every open stream (trace, events); called as shutdown begins.
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Runs `work` on the load balancer's state off the async threads.
    async fn with_lb<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut crate::lb::LbState) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let lb = self.lb.clone().ok_or_else(|| {
            Status::failed_precondition(
                "the XDP load balancer is not running on this node (agent flags --lb-interface, --lb-decap-interface)",
            )
        })?;
        locked(lb, "load balancer", work).await
    }

    /// Runs `work` on the runtime state off the async threads.
    async fn with_runtime<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut crate::runtime::RuntimeState) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let runtime = self.runtime.clone().map_err(|why| {
            Status::failed_precondition(format!("runtime security is not running on this node: {why}"))
        })?;
        locked(runtime, "runtime", work).await
    }

    /// Runs `work` on the network policy state off the async threads.
    async fn with_netpolicy<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut crate::netpolicy::NetPolicyState) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let state = self.netpolicy.clone().ok_or_else(|| {
            Status::failed_precondition(
                "network policy needs the pod path, which is off on this node (a lab with routing: weir or vxlan)",
            )
        })?;
        locked(state, "network policy", work).await
    }

    /// Runs `work` on the chaos state off the async threads.
    async fn with_chaos<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut crate::chaos::ChaosState) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let chaos = self.chaos.clone().map_err(Status::failed_precondition)?;
        locked(chaos, "chaos", work).await
    }

    /// Runs `work` on the service state off the async threads.
    async fn with_services<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut crate::services::ServiceState) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let services = self.services.clone().map_err(|why| {
            Status::failed_precondition(format!("the socket load balancer is not running on this node: {why}"))
        })?;
        locked(services, "service", work).await
    }

    fn started_unix(&self) -> std::time::Duration {
        self.started.duration_since(UNIX_EPOCH).unwrap_or_default()
    }

    async fn snapshot(&self) -> Snapshot {
        let pins = self.pins.clone();
        let attachments = self.attachments.lock().map(|a| a.clone()).unwrap_or_default();
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
        let filter = self.filter.clone();
        let node = self.desired.node.clone();
        let filter_text = tokio::task::spawn_blocking(move || {
            let state = filter.lock().map_err(|_| ())?;
            let counters = crate::filtering::counters_by_rule(&state);
            let drops = state.drops().unwrap_or_default();
            let lost = state.events_lost().unwrap_or_default();
            let mut out = String::new();
            crate::metrics::render_filter(&mut out, &node, &counters, &drops, lost);
            Ok::<String, ()>(out)
        })
        .await;
        if let Ok(Ok(more)) = filter_text {
            text.push_str(&more);
        }
        if let Ok(views) = self.with_services(|s| s.views().map_err(service_status)).await {
            crate::metrics::render_services(&mut text, &self.desired.node, &views);
        }
        if self.config.pod_routing {
            let pins = self.pins.clone();
            let paths = tokio::task::spawn_blocking(move || weir_bpf::pods::PodEndpoints::open(&pins)?.paths()).await;
            if let Ok(Ok(paths)) = paths {
                crate::metrics::render_pod_paths(&mut text, &self.desired.node, &paths);
            }
        }
        if let Ok(m) = self.with_netpolicy(|p| Ok(p.metrics())).await {
            crate::metrics::render_netpolicy(&mut text, &self.desired.node, &m);
        }
        if self.lb.is_some() {
            if let Ok(status) = self.with_lb(|lb| lb.status().map_err(lb_status)).await {
                crate::metrics::render_lb(&mut text, &self.desired.node, &status);
            }
        }
        if let Ok(runtime) = self.with_runtime(|r| Ok(r.metrics())).await {
            crate::metrics::render_runtime(&mut text, &self.desired.node, &runtime);
        }
        text
    }

    /// Runs `work` on the filter state off the async threads.
    async fn with_filter<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut crate::filtering::FilterState) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        locked(self.filter.clone(), "filter", work).await
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

/// Runs `work` on one subsystem's state under its lock, on a blocking thread:
/// its calls touch the kernel and the disk.
async fn locked<S: Send + 'static, T: Send + 'static>(
    state: Arc<Mutex<S>>,
    what: &'static str,
    work: impl FnOnce(&mut S) -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(move || {
        let mut state =
            state.lock().map_err(|_| Status::internal(format!("the {what} state is poisoned by an earlier panic")))?;
        work(&mut state)
    })
    .await
    .map_err(|e| Status::internal(format!("{what} task failed: {e}")))?
}

/// Turns tracing off when the last trace stream ends.
struct TraceGuard {
    traces: Arc<AtomicUsize>,
    maps: weir_bpf::filter::FilterMaps,
}

impl Drop for TraceGuard {
    fn drop(&mut self) {
        if self.traces.fetch_sub(1, Ordering::SeqCst) == 1 {
            let _ = self.maps.set_trace(false, 1);
        }
    }
}

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentState {
    async fn service_apply(
        &self,
        request: Request<pb::ServiceApplyRequest>,
    ) -> Result<Response<pb::ServiceChangeResponse>, Status> {
        let yaml = request.into_inner().yaml;
        let outcome = self.with_services(move |s| s.apply(&yaml).map_err(service_status)).await?;
        Ok(Response::new(change_response(outcome)))
    }

    async fn service_delete(
        &self,
        request: Request<pb::ServiceDeleteRequest>,
    ) -> Result<Response<pb::ServiceChangeResponse>, Status> {
        let r = request.into_inner();
        let key = weir_service::ObjectKey { namespace: r.namespace, name: r.name };
        let outcome = self.with_services(move |s| s.delete(&r.kind, &key).map_err(service_status)).await?;
        Ok(Response::new(change_response(outcome)))
    }

    async fn service_list(
        &self,
        _request: Request<pb::ServiceListRequest>,
    ) -> Result<Response<pb::ServiceListResponse>, Status> {
        let cgroup = self.config.socket_lb_cgroup().display().to_string();
        if let Err(why) = &self.services {
            return Ok(Response::new(pb::ServiceListResponse { cgroup, problem: why.clone(), ..Default::default() }));
        }
        let (views, hooks) = self
            .with_services(|s| {
                let hooks = s.attachments.iter().map(|a| a.hook.clone()).collect::<Vec<_>>();
                Ok((s.views().map_err(service_status)?, hooks))
            })
            .await?;
        Ok(Response::new(pb::ServiceListResponse {
            frontends: views.into_iter().map(frontend_message).collect(),
            cgroup,
            hooks,
            problem: String::new(),
        }))
    }

    async fn runtime_apply(
        &self,
        request: Request<pb::RuntimeApplyRequest>,
    ) -> Result<Response<pb::RuntimeChangeResponse>, Status> {
        let yaml = request.into_inner().yaml;
        let change = self.with_runtime(move |r| r.apply(&yaml).map_err(runtime_status)).await?;
        Ok(Response::new(runtime_change(change)))
    }

    async fn runtime_delete(
        &self,
        request: Request<pb::RuntimeDeleteRequest>,
    ) -> Result<Response<pb::RuntimeChangeResponse>, Status> {
        let names = request.into_inner().names;
        let change = self.with_runtime(move |r| r.delete(&names).map_err(runtime_status)).await?;
        Ok(Response::new(runtime_change(change)))
    }

    async fn runtime_list(
        &self,
        _request: Request<pb::RuntimeListRequest>,
    ) -> Result<Response<pb::RuntimeListResponse>, Status> {
        if let Err(why) = &self.runtime {
            return Ok(Response::new(pb::RuntimeListResponse { problem: why.clone(), ..Default::default() }));
        }
        Ok(Response::new(self.with_runtime(|r| r.list().map_err(runtime_status)).await?))
    }

    async fn policy_apply(
        &self,
        request: Request<pb::PolicyApplyRequest>,
    ) -> Result<Response<pb::PolicyChangeResponse>, Status> {
        let yaml = request.into_inner().yaml;
        let reply = self
            .with_netpolicy(move |p| {
                let change = p.apply(&yaml).map_err(netpolicy_status)?;
                Ok(netpolicy_change(change, p.list().revision))
            })
            .await?;
        Ok(Response::new(reply))
    }

    async fn policy_delete(
        &self,
        request: Request<pb::PolicyDeleteRequest>,
    ) -> Result<Response<pb::PolicyChangeResponse>, Status> {
        let names = request.into_inner().names;
        let reply = self
            .with_netpolicy(move |p| {
                let change = p.delete(&names).map_err(netpolicy_status)?;
                Ok(netpolicy_change(change, p.list().revision))
            })
            .await?;
        Ok(Response::new(reply))
    }

    async fn policy_list(
        &self,
        _request: Request<pb::PolicyListRequest>,
    ) -> Result<Response<pb::PolicyListResponse>, Status> {
        if self.netpolicy.is_none() {
            return Ok(Response::new(pb::PolicyListResponse {
                problem: "the pod path is off on this node (a lab with routing: weir or vxlan)".into(),
                ..Default::default()
            }));
        }
        Ok(Response::new(self.with_netpolicy(|p| Ok(p.list())).await?))
    }

    async fn policy_explain(
        &self,
        request: Request<pb::PolicyExplainRequest>,
    ) -> Result<Response<pb::PolicyExplainResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(self.with_netpolicy(move |p| p.explain(&request).map_err(netpolicy_status)).await?))
    }

    async fn endpoint_add(
        &self,
        request: Request<pb::EndpointAddRequest>,
    ) -> Result<Response<pb::EndpointAddResponse>, Status> {
        let request = request.into_inner();
        let record = crate::cni_endpoints::record_of(&request, &self.desired.node)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let veth = record.host_interface.clone();
        // Host ports first: a port someone holds refuses the endpoint before anything else changes.
        let published = match (&self.services, record.host_ports.is_empty()) {
            (Err(why), false) => {
                return Err(Status::failed_precondition(format!(
                    "port mappings need the socket load balancer, which is unavailable on this node: {why}"
                )))
            }
            (Err(_), true) => None,
            (Ok(_), _) => {
                let (container, veth) = (record.clone(), veth.clone());
                Some(self.with_services(move |s| s.publish(&veth, Some(&container)).map_err(service_status)).await?)
            }
        };
        let added = self.with_netpolicy(move |p| p.add_cni_endpoint(record).map_err(netpolicy_status)).await;
        match (added, published) {
            (Ok(identity), _) => Ok(Response::new(pb::EndpointAddResponse { identity })),
            (Err(status), Some(previous)) => {
                let undone =
                    self.with_services(move |s| s.restore_host_ports(&veth, previous).map_err(service_status)).await;
                if let Err(e) = undone {
                    tracing::error!(error = %e, "putting a refused endpoint's host ports back failed");
                }
                Err(status)
            }
            (Err(status), None) => Err(status),
        }
    }

    async fn endpoint_delete(
        &self,
        request: Request<pb::EndpointDeleteRequest>,
    ) -> Result<Response<pb::EndpointDeleteResponse>, Status> {
        let veth = request.into_inner().host_interface;
        if self.services.is_ok() {
            let veth = veth.clone();
            self.with_services(move |s| s.publish(&veth, None).map_err(service_status)).await?;
        }
        let existed = self.with_netpolicy(move |p| p.delete_cni_endpoint(&veth).map_err(netpolicy_status)).await?;
        Ok(Response::new(pb::EndpointDeleteResponse { existed }))
    }

    async fn chaos_apply(
        &self,
        request: Request<pb::ChaosApplyRequest>,
    ) -> Result<Response<pb::ChaosChangeResponse>, Status> {
        let request = request.into_inner();
        let pods = self.with_netpolicy(|p| Ok(p.pods().to_vec())).await?;
        // ServiceChaos names Services: their frontends, as this node's socket load balancer holds them.
        let frontends = match &self.services {
            Ok(_) => Ok(self.with_services(|s| Ok(s.frontends())).await?),
            Err(why) => Err(why.clone()),
        };
        let started = self
            .with_chaos(move |c| {
                let frontends = frontends.as_deref().map_err(Clone::clone);
                c.apply(&request.yaml, request.started_unix_ns, &pods, frontends).map_err(chaos_status)
            })
            .await?;
        Ok(Response::new(pb::ChaosChangeResponse { started, stopped: Vec::new() }))
    }

    async fn chaos_stop(
        &self,
        request: Request<pb::ChaosStopRequest>,
    ) -> Result<Response<pb::ChaosChangeResponse>, Status> {
        let request = request.into_inner();
        let stopped = self.with_chaos(move |c| c.stop(&request.names, request.all).map_err(chaos_status)).await?;
        Ok(Response::new(pb::ChaosChangeResponse { started: Vec::new(), stopped }))
    }

    async fn chaos_list(
        &self,
        _request: Request<pb::ChaosListRequest>,
    ) -> Result<Response<pb::ChaosListResponse>, Status> {
        if let Err(why) = &self.chaos {
            return Ok(Response::new(pb::ChaosListResponse { problem: why.clone(), ..Default::default() }));
        }
        Ok(Response::new(self.with_chaos(|c| c.list().map_err(chaos_status)).await?))
    }

    async fn lb_apply(&self, request: Request<pb::LbApplyRequest>) -> Result<Response<pb::LbApplyResponse>, Status> {
        let yaml = request.into_inner().yaml;
        let changes = self.with_lb(move |lb| lb.apply(&yaml).map_err(lb_status)).await?;
        Ok(Response::new(pb::LbApplyResponse { changes }))
    }

    async fn lb_status(
        &self,
        _request: Request<pb::LbStatusRequest>,
    ) -> Result<Response<pb::LbStatusResponse>, Status> {
        if self.lb.is_none() {
            let problem = "not running on this node (agent flags --lb-interface, --lb-decap-interface)".to_string();
            return Ok(Response::new(pb::LbStatusResponse { problem, ..Default::default() }));
        }
        Ok(Response::new(self.with_lb(|lb| lb.status().map_err(lb_status)).await?))
    }

    async fn lb_simulate(
        &self,
        request: Request<pb::LbSimulateRequest>,
    ) -> Result<Response<pb::LbSimulateResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(self.with_lb(move |lb| lb.simulate(&request).map_err(lb_status)).await?))
    }

    type FlowsStream = tokio_stream::wrappers::ReceiverStream<Result<pb::Flow, Status>>;

    async fn flows(&self, request: Request<pb::FlowsRequest>) -> Result<Response<Self::FlowsStream>, Status> {
        self.flows_stream(request).await
    }

    type EventsStream = tokio_stream::wrappers::ReceiverStream<Result<pb::RuntimeEvent, Status>>;

    async fn events(&self, request: Request<pb::EventsRequest>) -> Result<Response<Self::EventsStream>, Status> {
        self.events_stream(request).await
    }

    type FilterTraceStream = tokio_stream::wrappers::ReceiverStream<Result<pb::FilterEvent, Status>>;

    async fn filter_update(
        &self,
        request: Request<pb::FilterUpdateRequest>,
    ) -> Result<Response<pb::FilterUpdateResponse>, Status> {
        let mut request = request.into_inner();
        let mode = request.mode();
        // The request's JSON is dropped once parsed: it is as large as the rules.
        let rules = crate::filtering::parse_rules(&std::mem::take(&mut request.rules_json))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let origin = if request.origin.is_empty() { "cli".to_string() } else { request.origin.clone() };
        let outcome = self
            .with_filter(move |state| {
                match mode {
                    pb::filter_update_request::Mode::ReplaceOrigin => state.replace_origin(&origin, rules),
                    pb::filter_update_request::Mode::Add => state.add(&origin, rules),
                    pb::filter_update_request::Mode::Delete => state.delete(&request.delete),
                }
                .map_err(filter_status)
            })
            .await?;
        tracing::info!(
            added = outcome.added.len(),
            removed = outcome.removed.len(),
            changed = outcome.changed.len(),
            apply_ns = outcome.apply_ns,
            "filter updated"
        );
        Ok(Response::new(pb::FilterUpdateResponse {
            added: outcome.added,
            removed: outcome.removed,
            changed: outcome.changed,
            unchanged: outcome.unchanged as u32,
            apply_ns: outcome.apply_ns,
            total_rules: outcome.total as u32,
        }))
    }

    async fn filter_list(
        &self,
        _request: Request<pb::FilterListRequest>,
    ) -> Result<Response<pb::FilterListResponse>, Status> {
        let response = self
            .with_filter(|state| {
                let rows = state.list().map_err(filter_status)?;
                let drops = state.drops().map_err(filter_status)?;
                Ok(pb::FilterListResponse {
                    rules: rows
                        .into_iter()
                        .map(|(rule, slot, counter)| pb::FilterRule {
                            name: rule.spec.name.clone(),
                            origin: rule.origin.clone(),
                            spec_json: serde_json::to_string(&rule.spec).unwrap_or_default(),
                            packets: counter.packets,
                            bytes: counter.bytes,
                            slot,
                        })
                        .collect(),
                    drops: drops.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                    trace_events_lost: state.events_lost().map_err(filter_status)?,
                    expression_program: state.has_expression_program(),
                })
            })
            .await?;
        Ok(Response::new(response))
    }

    async fn filter_simulate(
        &self,
        request: Request<pb::FilterSimulateRequest>,
    ) -> Result<Response<pb::FilterSimulateResponse>, Status> {
        let request = request.into_inner();
        let packets = if request.packets.is_empty() { vec![request.packet] } else { request.packets };
        let report = self.with_filter(move |state| state.simulate(&packets).map_err(filter_status)).await?;
        tracing::debug!(packets = report.packets.len(), program_id = report.program_id, "filter simulation");
        let results: Vec<pb::FilterSimulateResult> = report
            .packets
            .into_iter()
            .map(|packet| match packet {
                Ok(p) => pb::FilterSimulateResult {
                    verdict: verdict_name(p.verdict),
                    rule: p.rule.unwrap_or_default(),
                    action: p.action.map(action_name).unwrap_or_default().to_string(),
                    error: String::new(),
                },
                Err(error) => pb::FilterSimulateResult { error, ..Default::default() },
            })
            .collect();
        let first = results.first().cloned().unwrap_or_default();
        Ok(Response::new(pb::FilterSimulateResponse {
            verdict: first.verdict,
            rule: first.rule,
            results,
            program_id: report.program_id,
        }))
    }

    async fn filter_trace(
        &self,
        request: Request<pb::FilterTraceRequest>,
    ) -> Result<Response<Self::FilterTraceStream>, Status> {
        self.filter_trace_stream(request).await
    }

    async fn profile(&self, request: Request<pb::ProfileRequest>) -> Result<Response<pb::ProfileResponse>, Status> {
        let request = request.into_inner();
        let spec = Self::profile_spec(&request)?;
        // The turn is held by the sampling thread itself, so it is released
        // only once sampling has really stopped.
        let turn = self.profile_turn.clone().lock_owned().await;
        let node = self.desired.node.clone();
        let cgroup2 = self.config.cgroup2.clone();
        let node_cgroup = self.config.node_cgroup.clone();
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
            event: result.event.to_string(),
        }))
    }

    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let sample_ms = request.into_inner().sample_ms.min(60_000);
        let mut snap = self.snapshot().await;
        let mut stats_window_ms = 0;
        if sample_ms > 0 && !self.run_time_stats {
            // Account run time only for the window, then report the difference.
            let fd = weir_bpf::stats::enable_run_time_stats()
                .map_err(|e| Status::unavailable(format!("kernel run-time statistics: {e}")))?;
            let before = self.snapshot().await.inspection.programs;
            tokio::time::sleep(Duration::from_millis(u64::from(sample_ms))).await;
            snap = self.snapshot().await;
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
        let runtime_backend = match &self.runtime {
            Ok(_) => self
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
            run_time_stats: self.run_time_stats || stats_window_ms > 0,
            stats_window_ms,
            pin_dir: self.config.pin_dir.display().to_string(),
            state_dir: self.config.state_dir.display().to_string(),
            metrics_addr: self.config.metrics_addr.clone().unwrap_or_default(),
            lab: self.config.lab.clone().unwrap_or_default(),
        }))
    }
}

/// Formats an error with its chain of sources, for status messages.
/// An error and every source under it, on one line.
pub(crate) struct DisplayChain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

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
