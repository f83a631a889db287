//! The agent's gRPC services, one module per capability (`status`: the
//! `Agent` service; `filter`, `services`, `runtime`, `netpolicy`,
//! `endpoints`, `chaos`, `lb`), each handler handing the work to the module
//! that owns the capability. Here: `AgentState`, the capabilities' states
//! the services share (each service holds it), and the agent's metrics.
//! `convert` turns errors and results into gRPC messages.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tonic::Status;
use weir_bpf::datapath::{EstablishReport, PinLayout};
use weir_proto::agent::v1 as pb;

use crate::config::{AgentConfig, DesiredState};
use crate::snapshot::{self, Snapshot};

mod chaos;
mod convert;
mod endpoints;
mod filter;
mod lb;
mod netpolicy;
mod runtime;
mod services;
mod status;

pub use chaos::ChaosApi;
pub use endpoints::{learn_unfinished_endpoints, EndpointsApi};
pub use filter::FilterApi;
pub use lb::LoadBalancerApi;
pub use netpolicy::NetworkPolicyApi;
pub use runtime::RuntimeApi;
pub use services::ServicesApi;
pub use status::AgentApi;

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

    /// Hands the Services of loadBalancerClass weir.dev/xdp, as they are
    /// now, to this node's XDP load balancer, if it runs one. A failure
    /// is the load balancer's, not the Service change's: it is logged, and
    /// `weir lb status` shows what the kernel holds.
    pub(crate) async fn sync_lb_services(&self) {
        let Some(lb) = self.lb.clone() else { return };
        let services = self.services.clone().ok();
        let synced = tokio::task::spawn_blocking(move || crate::lb::sync_services(services.as_deref(), &lb)).await;
        match synced {
            Ok(Ok(lines)) if !lines.is_empty() => tracing::info!(changes = %lines.join("; "), "LoadBalancer Services"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "writing the LoadBalancer Services' VIPs failed"),
            Err(e) => tracing::error!(error = %e, "writing the LoadBalancer Services' VIPs failed"),
        }
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

    /// Whether the pod path's network policy (and so CNI endpoints) runs.
    pub fn has_netpolicy(&self) -> bool {
        self.netpolicy.is_some()
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
