//! The per-node agent.
//!
//! # Layout
//! - [`client`]: connecting to an agent's socket (the CLI's side).
//! - [`config`]: what an agent is told at start, and the desired state it
//!   keeps in its state directory.
//! - [`snapshot`]: one consistent reading of the pinned datapath, from which
//!   both the gRPC status and the Prometheus metrics are rendered.
//! - [`filtering`]: the packet filter's desired and applied rules, journaled
//!   in the state dir, and the expression program in front of the node program.
//! - [`metrics`]: Prometheus text rendering (pure) and its HTTP endpoint.
//! - [`profiling`]: on-demand CPU profiles, rooted at node, pod and process.
//! - [`service`]: the gRPC services on a unix socket, one per capability
//!   (`Agent`, `Filter`, `Services`, `Runtime`, `NetworkPolicy`, `Endpoints`,
//!   `Chaos`, `LoadBalancer`), on the state they share.
//! - [`store`]: following the cluster's store (etcd) on a cluster of
//!   several nodes, one sink per capability; its `StoreSync` service.
//!
//! **Invariant: the datapath never depends on the agent being alive.** The
//! agent loads and pins; the kernel runs. Killing the agent with SIGKILL
//! leaves every program attached and every map pinned; the next start adopts
//! them (see `weir_bpf::datapath`). A clean SIGTERM removes only the socket.

pub mod chaos;
pub mod client;
pub mod clustermesh;
pub mod cni_cgroups;
pub mod cni_endpoints;
pub mod cni_podman;
pub mod config;
pub mod filtering;
pub mod flow_ring;
pub mod heap;
pub mod hubble;
pub mod identities;
pub mod kvstore;
pub mod lb;
pub mod metrics;
pub mod netpolicy;
pub mod pods;
pub mod probing;
pub mod profiling;
pub mod runtime;
pub mod service;
pub mod service_health;
pub mod services;
pub mod snapshot;
pub mod store;

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use weir_bpf::datapath::{self, PinLayout};

pub use config::AgentConfig;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("state directory {path}")]
    State {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("establishing the datapath")]
    Datapath(#[source] weir_bpf::BpfError),
    #[error("--lb-interface {0}: the node datapath serves it at XDP already (an interface has one XDP program); give the node datapath another with --interface")]
    LbInterface(String),
    #[error("starting the XDP load balancer")]
    Lb(#[source] lb::LbError),
    #[error("binding the API socket {path}")]
    Socket {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("binding the metrics address {addr}")]
    Metrics {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("binding the Hubble address {addr}")]
    Hubble {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the Hubble flow export file {path}")]
    HubbleExport {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--hubble-export-* {0}")]
    HubbleExportFilters(String),
    #[error("serving gRPC")]
    Serve(#[source] tonic::transport::Error),
    #[error("a blocking task failed")]
    Join(#[source] tokio::task::JoinError),
    #[error("no interface given and no default route to pick one from; pass --interface")]
    NoInterface,
    #[error("restoring the packet filter")]
    Filter(#[source] filtering::FilterError),
    #[error("restoring services from the state dir: {0}")]
    Services(String),
    #[error("writing the pod endpoint table: {0}")]
    PodRouting(String),
}

/// The socket load balancer and its services. A kernel without the cgroup
/// sock_addr hooks runs the agent without it; the reason is reported.
async fn open_services(
    config: &AgentConfig,
    desired: &config::DesiredState,
    pins: &PinLayout,
) -> Result<Result<Arc<std::sync::Mutex<services::ServiceState>>, String>, AgentError> {
    let node = weir_service::NodeContext {
        name: desired.node.clone(),
        addresses: desired.interfaces.first().map(|i| services::node_addresses(i)).unwrap_or_default(),
    };
    let network = services::Network { cluster: cluster_network(config, &node), pods_file: config.pods_file.clone() };
    let (pins, state_dir, cgroup, mut opt_out) =
        (pins.clone(), config.state_dir.clone(), config.socket_lb_cgroup(), config.socket_lb_opt_out.clone());
    // The XDP load balancer's health probes connect to its VIPs and must
    // leave encapsulated to the real they test: the socket load balancer
    // would translate them first (a LoadBalancer Service's address is one
    // of its frontends). The agent's own sockets are left alone.
    if config.lb_interface.is_some() {
        match weir_host::cgroup::own_cgroup(&config.cgroup2) {
            // Not the hierarchy's root (a private cgroup namespace shows "/"):
            // opting that out would leave every process of it untranslated.
            Some(own) if own != config.cgroup2 && own.is_dir() => opt_out.push(own),
            other => tracing::warn!(
                cgroup = ?other,
                "the agent's own cgroup is not one of its own: its health probes of Service VIPs may be translated by the socket load balancer"
            ),
        }
    }
    let opened = tokio::task::spawn_blocking(move || {
        // The CNI endpoints' host ports are published from the start, not
        // first taken down and then put back when the endpoints are read.
        let containers: Vec<pods::PodRecord> = match cni_endpoints::CniEndpoints::open(&state_dir) {
            Ok(endpoints) => endpoints.records().cloned().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "reading the CNI endpoints: their host ports are not published");
                Vec::new()
            }
        };
        services::ServiceState::open(&pins, &state_dir, &cgroup, node, network, &opt_out, &containers)
    })
    .await
    .map_err(AgentError::Join)?;
    Ok(match opened {
        Ok(state) => {
            for a in &state.attachments {
                tracing::info!(program = %a.program, hook = %a.hook, cgroup = %config.socket_lb_cgroup().display(), adopted = a.adopted, "attached");
            }
            Ok(Arc::new(std::sync::Mutex::new(state)))
        }
        Err(services::ServiceError::Spec(e)) => return Err(AgentError::Services(e.to_string())),
        Err(err) => {
            let why = service::DisplayChain(&err).to_string();
            tracing::warn!(error = %why, "socket load balancer unavailable; services are not served on this node");
            Err(why)
        }
    })
}

/// What a Service is checked against on this node: the node-port range, and
/// the addresses of this node, of the cluster's nodes and its pod CIDRs
/// (pods' own addresses come from the pods file at each apply).
fn cluster_network(config: &AgentConfig, node: &weir_service::NodeContext) -> weir_service::ClusterNetwork {
    let mut network =
        weir_service::ClusterNetwork { node_port_range: config.service_node_port_range.clone(), ..Default::default() };
    for address in &node.addresses {
        network.reserve_address(*address, format!("node {}'s address", node.name));
    }
    for (name, address) in &config.cluster_nodes {
        network.reserve_address((*address).into(), format!("node {name}'s address"));
    }
    for (name, address) in &config.cluster_nodes6 {
        network.reserve_address((*address).into(), format!("node {name}'s address"));
    }
    for (address, prefix) in &config.pod_cidrs {
        if let Ok(net) = ipnet::Ipv4Net::new(*address, *prefix) {
            network.reserve(net.into(), "a cluster CIDR (--cluster-cidr)");
        }
    }
    network
}

/// The runtime's process cache, set once runtime security runs.
type RuntimeProcesses = Arc<std::sync::OnceLock<hubble::process::ProcessLookup>>;

/// Runtime security. A kernel that refuses its sensors runs the agent
/// without it; the reason is reported.
async fn open_runtime(
    config: &AgentConfig,
    desired: &config::DesiredState,
) -> Result<Result<Arc<std::sync::Mutex<runtime::RuntimeState>>, String>, AgentError> {
    let Some(rt) = config.runtime.clone() else {
        return Ok(Err("turned off (--runtime=false)".into()));
    };
    let options = runtime::RuntimeOptions {
        scope: config.socket_lb_cgroup(),
        cgroup2: config.cgroup2.clone(),
        lsm: rt.lsm,
        network_events: rt.network_events,
        cache_size: rt.cache_size,
        ring_bytes: rt.ring_bytes,
        pods_file: config.pods_file.clone(),
    };
    let (node, state_dir) = (desired.node.clone(), config.state_dir.clone());
    let opened = tokio::task::spawn_blocking(move || runtime::RuntimeState::open(&node, &state_dir, options))
        .await
        .map_err(AgentError::Join)?;
    Ok(match opened {
        Ok(state) => {
            let report = state.report();
            tracing::info!(backend = state.backend().name(), lsm_unavailable = ?report.lsm_unavailable, hooks = report.attached.len(), missing = ?report.missing, "runtime security running");
            Ok(Arc::new(std::sync::Mutex::new(state)))
        }
        Err(err) => {
            let why = service::DisplayChain(&err).to_string();
            tracing::warn!(error = %why, "runtime security unavailable on this node");
            Err(why)
        }
    })
}

/// The pod path and network policy: the cluster's CIDRs, the overlay, and
/// the endpoint table, ipcache and policy maps (written by `NetPolicyState`).
async fn open_pod_path(
    config: &AgentConfig,
    desired: &config::DesiredState,
    pins: &PinLayout,
    attachments: netpolicy::Attachments,
    cni_veths_at_start: Vec<String>,
    remote_pods: &clustermesh::SharedRemotePods,
    runtime_processes: &RuntimeProcesses,
) -> Result<Arc<std::sync::Mutex<netpolicy::NetPolicyState>>, AgentError> {
    let file = config.pods_file.clone().ok_or(AgentError::PodRouting("--pod-routing needs --pods-file".into()))?;
    let options = netpolicy::NetPolicyOptions {
        node: desired.node.clone(),
        cluster_id: config.cluster.as_ref().map_or(0, |c| c.id),
        mesh: config.cluster.as_ref().map(|c| (c.name.clone(), remote_pods.clone())),
        state_dir: config.state_dir.clone(),
        pods_file: file,
        nodes: config.cluster_nodes.clone(),
        nodes6: config.cluster_nodes6.clone(),
        etcd: config.etcd.clone(),
        pod_interfaces: desired.pod_interfaces.clone(),
        cni_veths_at_start,
        attachments,
        hubble_metrics: (!config.hubble_metrics.is_empty()).then(|| {
            let ttl = u64::try_from(config.hubble_metrics_ttl.as_nanos()).unwrap_or(u64::MAX);
            hubble::metrics::HubbleMetrics::new(config.hubble_metrics.clone(), ttl)
        }),
        l7_flows: config.l7_flows,
        flow_ring_capacity: config.hubble_event_buffer_capacity,
        tls: config.tls_flows.then(|| {
            let slot = runtime_processes.clone();
            netpolicy::TlsSetup {
                scope_cgroup: config.socket_lb_cgroup(),
                runtime: Some(Arc::new(move |pid| slot.get().and_then(|lookup| lookup(pid)))),
            }
        }),
    };
    let (pins, cidrs, overlay) = (pins.clone(), config.pod_cidrs.clone(), config.overlay.clone());
    let node6 = config.cluster_nodes6.get(&desired.node).copied();
    let state = tokio::task::spawn_blocking(move || {
        let table = weir_bpf::pods::PodEndpoints::open(&pins).map_err(|e| e.to_string())?;
        table.set_pod_cidrs(&cidrs).map_err(|e| e.to_string())?;
        table.set_masquerade6(node6).map_err(|e| e.to_string())?;
        if let Some(overlay) = &overlay {
            let index = pods::ifindex(&overlay.device);
            if index == 0 {
                return Err(format!("no overlay device {}", overlay.device));
            }
            table.set_overlay(index, &overlay.tunnels).map_err(|e| e.to_string())?;
        }
        netpolicy::NetPolicyState::open(&pins, options).map_err(|e| service::DisplayChain(&e).to_string())
    })
    .await
    .map_err(AgentError::Join)?
    .map_err(AgentError::PodRouting)?;
    let (policies, identities, endpoints) = state.summary();
    tracing::info!(endpoints, identities, policies, allocator = %state.allocator(), "pods are reached through the pod path (bpf_redirect_peer), under network policy");
    let state = Arc::new(std::sync::Mutex::new(state));
    // Pods come and go: the pods file is watched, and identities, the
    // ipcache, the endpoint table and policy maps follow it.
    let watched = Arc::downgrade(&state);
    tokio::spawn(async move {
        let mut last_reconnect: Option<std::time::Instant> = None;
        loop {
            tokio::time::sleep(POD_REFRESH).await;
            let Some(state) = watched.upgrade() else { return };
            // Started while etcd was away: reach it off the lock, now and then.
            let away = state.lock().ok().and_then(|s| s.etcd_away());
            if let Some((endpoints, node, cluster_id)) = away {
                if last_reconnect.is_some_and(|t| t.elapsed() < ETCD_RECONNECT) {
                    continue;
                }
                last_reconnect = Some(std::time::Instant::now());
                let back = state.clone();
                let reached = tokio::task::spawn_blocking(move || {
                    let (allocator, kvstore) = netpolicy::connect_cluster(&endpoints, &node, cluster_id)?;
                    back.lock()
                        .map(|mut s| s.etcd_back(allocator, kvstore).map_err(|e| e.to_string()))
                        .map_err(|_| identities::IdentityError::State("the network policy state is poisoned".into()))?
                        .map_err(identities::IdentityError::State)
                })
                .await;
                if let Ok(Err(e)) = reached {
                    tracing::debug!(error = %e, "etcd still away");
                }
                continue;
            }
            let refreshed = tokio::task::spawn_blocking(move || state.lock().map(|mut s| s.refresh()).ok()).await;
            match refreshed {
                Ok(Some(Ok(true))) => tracing::info!("pods changed: identities, ipcache and policy maps updated"),
                Ok(Some(Err(e))) => tracing::warn!(error = %service::DisplayChain(&e), "following the pods file"),
                _ => {}
            }
        }
    });
    Ok(state)
}

/// How often the pods file is checked for change.
const POD_REFRESH: std::time::Duration = std::time::Duration::from_millis(250);
/// Flows name the Services their ends are, as the Services change.
fn name_services_in_flows(
    netpolicy: &Option<Arc<std::sync::Mutex<netpolicy::NetPolicyState>>>,
    services: &Result<Arc<std::sync::Mutex<services::ServiceState>>, String>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let (Some(netpolicy), Ok(services)) = (netpolicy, services) else { return };
    let (Ok(flows), Ok(mut changes)) = (netpolicy.lock().map(|p| p.shared()), services.lock().map(|s| s.subscribe()))
    else {
        return;
    };
    let services = services.clone();
    tokio::spawn(async move {
        loop {
            let frontends = services.lock().map(|s| s.frontends()).unwrap_or_default();
            flows.set_services(hubble::services::service_names(&frontends));
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    });
}

/// How often an agent that started while etcd was away tries to reach it.
const ETCD_RECONNECT: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs an agent until `shutdown` completes.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), AgentError> {
    let desired = config.desired_state()?;
    if let Some(lb) = config.lb_interface.as_ref().filter(|lb| desired.interfaces.contains(lb)) {
        return Err(AgentError::LbInterface(lb.clone()));
    }
    tracing::info!(node = %desired.node, interfaces = ?desired.interfaces, pin_dir = %config.pin_dir.display(), "starting agent");

    let pins = PinLayout::new(&config.pin_dir);
    // The CNI containers' veths keep their links across a restart.
    let cni_veths = if config.pod_routing { cni_endpoints::present_veths(&config.state_dir) } else { Vec::new() };
    let pod_interfaces: Vec<String> = desired.pod_interfaces.iter().chain(&cni_veths).cloned().collect();
    let interfaces: Vec<String> = desired.interfaces.iter().chain(&pod_interfaces).cloned().collect();
    let establish_pins = pins.clone();
    let report =
        tokio::task::spawn_blocking(move || datapath::establish(&establish_pins, &interfaces, &pod_interfaces))
            .await
            .map_err(AgentError::Join)?
            .map_err(AgentError::Datapath)?;
    let restored = !report.maps_reused.is_empty();
    for a in &report.attachments {
        tracing::info!(program = %a.program, interface = %a.interface, mode = ?a.mode, adopted = a.adopted, "attached");
    }
    for removed in &report.links_removed {
        tracing::info!(pin = %removed.display(), "removed stale attachment");
    }
    // Sockets made from now on remember their process, for the pod path's
    // flows to name it (no pod path, no flows: nothing to tag).
    if config.pod_routing {
        match weir_bpf::sock_owner::establish(&pins, &config.socket_lb_cgroup()) {
            Ok(adopted) => {
                tracing::info!(cgroup = %config.socket_lb_cgroup().display(), adopted, "sockets name their owners")
            }
            Err(err) => tracing::warn!(error = %err, "flows will not name their processes"),
        }
    }
    // Run-time accounting costs every BPF program on the host, so by default
    // it is on only while `weir status --sample` measures; `always` keeps it
    // on while the agent lives (the fd's lifetime).
    let stats_fd = if config.bpf_stats_always {
        match weir_bpf::stats::enable_run_time_stats() {
            Ok(fd) => Some(fd),
            Err(err) => {
                tracing::warn!(error = %err, "kernel run-time statistics unavailable");
                None
            }
        }
    } else {
        None
    };

    let attachments: netpolicy::Attachments = Arc::new(std::sync::Mutex::new(report.attachments.clone()));
    let filter_pins = pins.clone();
    let filter_attachments = attachments.clone();
    let state_dir = config.state_dir.clone();
    // Any rule map started afresh (first start, reboot, a new layout): write the rules again.
    let fresh_maps = !weir_bpf::filter::RULE_MAPS.iter().all(|name| report.maps_reused.iter().any(|m| m == name));
    let filter = tokio::task::spawn_blocking(move || {
        filtering::FilterState::open(&filter_pins, &state_dir, fresh_maps, filter_attachments)
    })
    .await
    .map_err(AgentError::Join)?
    .map_err(AgentError::Filter)?;
    // In a mesh: the other clusters' pods, filled by the clustermesh task below.
    let remote_pods = clustermesh::SharedRemotePods::default();
    // The runtime's process cache, for flows that name a process: the pod
    // path opens first, runtime security after.
    let runtime_processes = RuntimeProcesses::default();
    let netpolicy = if config.pod_routing {
        Some(
            open_pod_path(&config, &desired, &pins, attachments.clone(), cni_veths, &remote_pods, &runtime_processes)
                .await?,
        )
    } else {
        None
    };
    let hubble_netpolicy = netpolicy.clone();
    if let Some(export) = &config.hubble_export {
        let filters =
            hubble::filter::Filters::parse(&export.allow, &export.deny).map_err(AgentError::HubbleExportFilters)?;
        let shared = netpolicy.as_ref().and_then(|p| p.lock().ok().map(|p| p.shared())).ok_or_else(|| {
            AgentError::HubbleExportFilters("exports the pod path's flows, which is off on this node".into())
        })?;
        hubble::export::run(shared, export.clone(), filters)
            .map_err(|source| AgentError::HubbleExport { path: export.path.clone(), source })?;
        tracing::info!(path = %export.path.display(), "exporting flows");
    }
    let node = desired.node.clone();
    let services = open_services(&config, &desired, &pins).await?;
    let runtime = open_runtime(&config, &desired).await?;
    // Flows name their processes as runtime events do, when both run.
    if let Some(lookup) = runtime.as_ref().ok().and_then(|r| r.lock().ok().map(|r| r.process_lookup())) {
        if let Some(shared) = netpolicy.as_ref().and_then(|p| p.lock().ok().map(|p| p.shared())) {
            shared.processes.use_runtime(lookup.clone());
        }
        let _ = runtime_processes.set(lookup);
    }
    let (lb_pins, lb_state_dir, lb_interface, lb_decap) = (
        config.pin_dir.clone(),
        config.state_dir.clone(),
        config.lb_interface.clone(),
        config.lb_decap_interfaces.clone(),
    );
    let lb_nodes =
        weir_lb::services::ClusterNodes { v4: config.cluster_nodes.clone(), v6: config.cluster_nodes6.clone() };
    let lb_services = services.clone().ok();
    let lb = tokio::task::spawn_blocking(move || {
        let state = lb::LbState::start(&lb_pins, &lb_state_dir, lb_interface.as_deref(), &lb_decap, lb_nodes)?;
        let Some(state) = state else { return Ok(None) };
        let state = Arc::new(std::sync::Mutex::new(state));
        // The first write: the restored document with the restored Services' VIPs.
        lb::sync_services(lb_services.as_deref(), &state)?;
        Ok(Some(state))
    })
    .await
    .map_err(AgentError::Join)?
    .map_err(AgentError::Lb)?;
    let lb_health = lb.clone();
    let mesh_pins = pins.clone();
    let state = Arc::new(service::AgentState::new(
        config.clone(),
        desired,
        pins,
        report,
        attachments,
        stats_fd.is_some(),
        service::Subsystems { filter, services: services.clone(), runtime, netpolicy, lb },
    ));
    if state.has_netpolicy() {
        tokio::spawn(service::learn_unfinished_endpoints(state.clone()));
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    name_services_in_flows(&hubble_netpolicy, &services, stop_rx.clone());
    // A cluster of several nodes keeps its desired state in etcd: follow it.
    let follower = (!config.etcd.is_empty())
        .then(|| store::Follower::new(&node, config.etcd.clone(), &config.state_dir, state.clone()));
    let mesh_status: Option<clustermesh::SharedMeshStatus> = config.cluster.as_ref().map(|mesh| {
        Arc::new(std::sync::Mutex::new(clustermesh::MeshStatus::new(&mesh.name, mesh.id, &node, &mesh.remotes)))
    });
    let metrics_task = match &config.metrics_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Metrics { addr: addr.clone(), source })?;
            tracing::info!(addr, "serving Prometheus metrics on /metrics");
            Some(tokio::spawn(metrics::serve(
                listener,
                state.clone(),
                follower.clone(),
                mesh_status.clone(),
                stop_rx.clone(),
            )))
        }
        None => None,
    };

    let hubble = |address: String| {
        weir_proto::observer::observer_server::ObserverServer::new(hubble::HubbleObserver::new(
            // In a mesh, `cluster/node`, as its flows and the Peer service name it.
            config.cluster.as_ref().map_or_else(|| node.clone(), |mesh| format!("{}/{node}", mesh.name)),
            hubble_netpolicy.clone(),
            address,
            state.closing(),
        ))
    };
    let hubble_port = config
        .hubble_listen
        .as_deref()
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .map_or(hubble::peer::HUBBLE_PORT, |a| a.port());
    let mesh_peers = config.cluster.as_ref().zip(mesh_status.clone()).map(|(mesh, status)| hubble::peer::MeshPeers {
        cluster: mesh.name.clone(),
        status,
        port: hubble_port,
    });
    let peers = weir_proto::peer::peer_server::PeerServer::new(hubble::peer::HubblePeers::new(
        hubble::peer::cluster_peers(&node, config.hubble_listen.as_deref(), &config.socket, &config.cluster_nodes),
        mesh_peers,
        state.closing(),
    ));
    let hubble_task = match &config.hubble_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Hubble { addr: addr.clone(), source })?;
            tracing::info!(addr, "serving Hubble's Observer API");
            let mut stop = stop_rx.clone();
            let closing = state.clone();
            Some(tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(hubble(addr.clone()))
                    .add_service(peers.clone())
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        async move {
                            let _ = stop.wait_for(|s| *s).await;
                            closing.close_streams();
                        },
                    ),
            ))
        }
        None => None,
    };

    let store_task = follower.clone().map(|f| tokio::spawn(f.run(stop_rx.clone())));
    // In a mesh: publish this node for the other clusters, route to theirs.
    let mesh_task = config.cluster.clone().zip(mesh_status.clone()).map(|(mesh, status)| {
        let mut own_cidrs: Vec<ipnet::Ipv4Net> =
            config.pod_cidrs.iter().filter_map(|(a, p)| ipnet::Ipv4Net::new(*a, *p).ok()).collect();
        own_cidrs.push(mesh.pod_cidr);
        own_cidrs.push(ipnet::Ipv4Net::from(mesh.address));

        let context = clustermesh::MeshContext {
            config: mesh,
            node: node.clone(),
            etcd: config.etcd.clone(),
            uplink: config.interfaces.first().cloned().unwrap_or_else(|| "eth0".into()),
            own_cidrs,
            own_nodes: config.cluster_nodes.values().copied().collect(),
            pod_path: config.pod_routing.then_some(mesh_pins),
            overlay: config.overlay.clone(),
            state_dir: config.state_dir.clone(),
            remote_pods: remote_pods.clone(),
            services: services.clone().ok(),
            status,
        };
        tokio::spawn(clustermesh::run(context, stop_rx.clone()))
    });

    // On a cluster with a store, each node judges its own backends and shares its verdicts.
    let mut health_tasks = Vec::new();
    if let Ok(services) = services {
        let publish = if config.etcd.is_empty() {
            None
        } else {
            let peers = config.cluster_nodes.keys().filter(|n| **n != node).cloned().collect();
            if let Ok(mut s) = services.lock() {
                s.share_health(peers);
            }
            let (publish, verdicts) = tokio::sync::watch::channel(None);
            let ttl = service_health::shared::lease_ttl(config.health_interval);
            let (etcd, this) = (config.etcd.clone(), node.clone());
            health_tasks.push(tokio::spawn(service_health::shared::publish_verdicts(
                etcd.clone(),
                this.clone(),
                ttl,
                verdicts,
                stop_rx.clone(),
            )));
            health_tasks.push(tokio::spawn(service_health::shared::follow_verdicts(
                etcd,
                this,
                services.clone(),
                stop_rx.clone(),
            )));
            Some(publish)
        };
        health_tasks.push(tokio::spawn(service_health::run_health_checks(
            services,
            config.health_interval,
            publish,
            stop_rx.clone(),
        )));
    }
    let lb_health_task = lb_health
        .filter(|_| config.lb_interface.is_some())
        .map(|lb| tokio::spawn(lb::run_health_checks(lb, config.health_interval, stop_rx.clone())));

    let socket = config.socket.clone();
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent).map_err(|source| AgentError::Socket { path: socket.clone(), source })?;
    }
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(|source| AgentError::Socket { path: socket.clone(), source })?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| AgentError::Socket { path: socket.clone(), source })?;
    tracing::info!(socket = %socket.display(), restored, "agent ready");

    // One service per capability, each taking messages as large as the
    // agent's clients send (a whole cluster's Services in one apply).
    macro_rules! room {
        ($($server:ident)::+, $service:expr) => {
            $($server)::+::new($service)
                .max_decoding_message_size(client::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(client::MAX_MESSAGE_BYTES)
        };
    }
    use weir_proto::agent::v1 as agent_pb;
    let served = tonic::transport::Server::builder()
        .add_service(room!(agent_pb::agent_server::AgentServer, service::AgentApi(state.clone())))
        .add_service(room!(agent_pb::filter_server::FilterServer, service::FilterApi(state.clone())))
        .add_service(room!(agent_pb::services_server::ServicesServer, service::ServicesApi(state.clone())))
        .add_service(room!(agent_pb::runtime_server::RuntimeServer, service::RuntimeApi(state.clone())))
        .add_service(room!(
            agent_pb::network_policy_server::NetworkPolicyServer,
            service::NetworkPolicyApi(state.clone())
        ))
        .add_service(room!(agent_pb::endpoints_server::EndpointsServer, service::EndpointsApi(state.clone())))
        .add_service(room!(agent_pb::chaos_server::ChaosServer, service::ChaosApi(state.clone())))
        .add_service(room!(agent_pb::load_balancer_server::LoadBalancerServer, service::LoadBalancerApi(state.clone())))
        .add_service(weir_proto::store::v1::store_sync_server::StoreSyncServer::new(store::StoreSyncService(follower)))
        .add_service(weir_proto::clustermesh::v1::cluster_mesh_server::ClusterMeshServer::new(
            clustermesh::ClusterMeshService(mesh_status),
        ))
        .add_service(hubble(
            config.hubble_listen.clone().unwrap_or_else(|| format!("unix://{}", config.socket.display())),
        ))
        .add_service(peers)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), {
            let state = state.clone();
            async move {
                shutdown.await;
                state.close_streams();
            }
        })
        .await;
    let _ = stop_tx.send(true);
    for task in metrics_task.into_iter().chain(health_tasks).chain(store_task).chain(lb_health_task).chain(mesh_task) {
        let _ = task.await;
    }
    if let Some(task) = hubble_task {
        let _ = task.await;
    }
    let _ = std::fs::remove_file(&socket);
    drop(stats_fd);
    tracing::info!("agent stopped; the datapath stays attached");
    served.map_err(AgentError::Serve)
}
