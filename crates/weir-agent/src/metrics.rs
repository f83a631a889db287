//! Prometheus metrics: a pure renderer and a minimal HTTP/1.1 endpoint.

use std::fmt::Write as _;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::service::AgentState;
use crate::snapshot::{hook_name, mode_name, Snapshot};

/// Escapes a label value per the Prometheus text format.
pub(crate) fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Renders a snapshot in the Prometheus text exposition format (0.0.4).
pub fn render(node: &str, started_unix_secs: u64, snapshot: &Snapshot) -> String {
    let node = label(node);
    let mut out = String::new();
    family(&mut out, "weir_agent_up", "gauge", "1 while the agent serves; 0 readings come from a dead scrape.");
    let _ = writeln!(out, "weir_agent_up{{node=\"{node}\"}} 1");
    family(&mut out, "weir_agent_start_time_seconds", "gauge", "Unix time the agent started.");
    let _ = writeln!(out, "weir_agent_start_time_seconds{{node=\"{node}\"}} {started_unix_secs}");
    family(&mut out, "weir_agent_healthy", "gauge", "1 when every attachment is in place.");
    let _ = writeln!(out, "weir_agent_healthy{{node=\"{node}\"}} {}", u8::from(snapshot.problems.is_empty()));

    family(&mut out, "weir_bpf_program_runs_total", "counter", "Runs of each program (kernel BPF stats).");
    for p in &snapshot.inspection.programs {
        let _ = writeln!(
            out,
            "weir_bpf_program_runs_total{{node=\"{node}\",program=\"{}\"}} {}",
            label(&p.name),
            p.run_count
        );
    }
    family(&mut out, "weir_bpf_program_run_seconds_total", "counter", "Time spent in each program (kernel BPF stats).");
    for p in &snapshot.inspection.programs {
        let _ = writeln!(
            out,
            "weir_bpf_program_run_seconds_total{{node=\"{node}\",program=\"{}\"}} {:.9}",
            label(&p.name),
            p.run_time_ns as f64 / 1e9
        );
    }
    family(&mut out, "weir_bpf_map_entries", "gauge", "Entries in use in each map.");
    for m in &snapshot.inspection.maps {
        let _ = writeln!(out, "weir_bpf_map_entries{{node=\"{node}\",map=\"{}\"}} {}", label(&m.name), m.in_use);
    }
    family(&mut out, "weir_bpf_map_max_entries", "gauge", "Capacity of each map.");
    for m in &snapshot.inspection.maps {
        let _ =
            writeln!(out, "weir_bpf_map_max_entries{{node=\"{node}\",map=\"{}\"}} {}", label(&m.name), m.max_entries);
    }
    family(&mut out, "weir_datapath_attached", "gauge", "1 when the program is attached to the interface.");
    for a in &snapshot.attachments {
        let at = &a.attachment;
        let _ = writeln!(
            out,
            "weir_datapath_attached{{node=\"{node}\",program=\"{}\",hook=\"{}\",interface=\"{}\",mode=\"{}\"}} {}",
            label(&at.program),
            hook_name(at.hook),
            label(&at.interface),
            mode_name(at.mode),
            u8::from(a.attached)
        );
    }
    family(
        &mut out,
        "weir_datapath_packets_total",
        "counter",
        "Packets seen by the node datapath, by direction and traffic class.",
    );
    for (direction, class, c) in snapshot.traffic.iter().filter(|t| t.0 != "invalid") {
        let _ = writeln!(
            out,
            "weir_datapath_packets_total{{node=\"{node}\",direction=\"{direction}\",class=\"{class}\"}} {}",
            c.packets
        );
    }
    family(
        &mut out,
        "weir_datapath_bytes_total",
        "counter",
        "Bytes seen by the node datapath, by direction and traffic class.",
    );
    for (direction, class, c) in snapshot.traffic.iter().filter(|t| t.0 != "invalid") {
        let _ = writeln!(
            out,
            "weir_datapath_bytes_total{{node=\"{node}\",direction=\"{direction}\",class=\"{class}\"}} {}",
            c.bytes
        );
    }
    family(
        &mut out,
        "weir_datapath_invalid_packets_total",
        "counter",
        "Invalid packets seen (counted, not dropped), by reason.",
    );
    for (_, reason, c) in snapshot.traffic.iter().filter(|t| t.0 == "invalid") {
        let _ =
            writeln!(out, "weir_datapath_invalid_packets_total{{node=\"{node}\",reason=\"{reason}\"}} {}", c.packets);
    }
    out
}

/// Appends the profiler's counters.
pub fn render_profiling(
    out: &mut String,
    node: &str,
    samples: u64,
    losses: &std::collections::BTreeMap<&'static str, u64>,
) {
    let node = label(node);
    family(out, "weir_profile_samples_total", "counter", "Stack samples taken for profiles served by this agent.");
    let _ = writeln!(out, "weir_profile_samples_total{{node=\"{node}\"}} {samples}");
    family(out, "weir_profile_samples_lost_total", "counter", "Samples lost or degraded while profiling, by reason.");
    for (_, reason, _) in
        weir_bpf::api::profile_loss::ALL.iter().filter(|(c, _, _)| *c != weir_bpf::api::profile_loss::NONE)
    {
        let _ = writeln!(
            out,
            "weir_profile_samples_lost_total{{node=\"{node}\",reason=\"{reason}\"}} {}",
            losses.get(reason).copied().unwrap_or(0)
        );
    }
}

/// Appends the packet filter's counters.
pub fn render_filter(
    out: &mut String,
    node: &str,
    rules: &std::collections::BTreeMap<String, weir_bpf::api::Counter>,
    drops: &[(&'static str, u64)],
    events_lost: u64,
) {
    let node = label(node);
    family(out, "weir_filter_rule_packets_total", "counter", "Packets matched by each filter rule.");
    for (rule, c) in rules {
        let _ =
            writeln!(out, "weir_filter_rule_packets_total{{node=\"{node}\",rule=\"{}\"}} {}", label(rule), c.packets);
    }
    family(out, "weir_filter_rule_bytes_total", "counter", "Bytes matched by each filter rule.");
    for (rule, c) in rules {
        let _ = writeln!(out, "weir_filter_rule_bytes_total{{node=\"{node}\",rule=\"{}\"}} {}", label(rule), c.bytes);
    }
    family(out, "weir_datapath_drops_total", "counter", "Packets dropped by the node datapath, by reason.");
    for (reason, n) in drops {
        let _ = writeln!(out, "weir_datapath_drops_total{{node=\"{node}\",reason=\"{reason}\"}} {n}");
    }
    family(out, "weir_filter_trace_events_lost_total", "counter", "Trace events lost to a full ring buffer.");
    let _ = writeln!(out, "weir_filter_trace_events_lost_total{{node=\"{node}\"}} {events_lost}");
}

/// Socket load balancer counters: per service port (shared by all its
/// frontends), per backend, and backends by state.
pub fn render_services(out: &mut String, node: &str, views: &[crate::services::FrontendView]) {
    use std::collections::BTreeMap;
    let node = label(node);
    let mut services: BTreeMap<String, (u64, u64, BTreeMap<&'static str, usize>)> = BTreeMap::new();
    let mut backends: BTreeMap<String, u64> = BTreeMap::new();
    for view in views {
        let entry = services.entry(view.frontend.service.to_string()).or_default();
        entry.0 = view.counters.connects;
        entry.1 = view.counters.no_backend;
        let mut states = BTreeMap::new();
        for b in &view.backends {
            let state = match b.state {
                weir_service::plan::KernelBackendState::Active if b.suspect => "suspect",
                weir_service::plan::KernelBackendState::Active => "active",
                weir_service::plan::KernelBackendState::Terminating => "terminating",
                weir_service::plan::KernelBackendState::Quarantined => "quarantined",
            };
            *states.entry(state).or_insert(0) += 1;
            let proto = view.frontend.service.protocol.as_str();
            backends.insert(format!("{}/{proto}", std::net::SocketAddr::new(b.address, b.port)), b.connects);
        }
        entry.2 = states;
    }
    family(
        out,
        "weir_service_connections_total",
        "counter",
        "Connections (and unconnected sends) translated to a backend, per service port.",
    );
    for (service, (connects, _, _)) in &services {
        let _ = writeln!(
            out,
            "weir_service_connections_total{{node=\"{node}\",service=\"{}\"}} {connects}",
            label(service)
        );
    }
    family(out, "weir_service_no_backend_total", "counter", "Calls to a service that found no backend to take them.");
    for (service, (_, none, _)) in &services {
        let _ = writeln!(out, "weir_service_no_backend_total{{node=\"{node}\",service=\"{}\"}} {none}", label(service));
    }
    family(out, "weir_service_backends", "gauge", "Backends of each service port by state.");
    for (service, (_, _, states)) in &services {
        for (state, n) in states {
            let _ = writeln!(
                out,
                "weir_service_backends{{node=\"{node}\",service=\"{}\",state=\"{state}\"}} {n}",
                label(service)
            );
        }
    }
    family(
        out,
        "weir_service_backend_connections_total",
        "counter",
        "Connections translated to each backend, over all services.",
    );
    for (backend, n) in &backends {
        let _ = writeln!(
            out,
            "weir_service_backend_connections_total{{node=\"{node}\",backend=\"{}\"}} {n}",
            label(backend)
        );
    }
}

/// The XDP load balancer (`weir lb status` as metrics): traffic per VIP and
/// per real, the program's counters, drops by reason, reals' weights and
/// health, and a real server's decapsulation.
pub fn render_lb(out: &mut String, node: &str, status: &weir_proto::agent::v1::LbStatusResponse) {
    let node = label(node);
    if !status.interface.is_empty() {
        for (name, what) in [("packets", "Packets"), ("bytes", "Bytes")] {
            family(out, &format!("weir_lb_vip_{name}_total"), "counter", &format!("{what} for each VIP."));
            for v in &status.vips {
                let n = if name == "packets" { v.packets } else { v.bytes };
                let _ = writeln!(out, "weir_lb_vip_{name}_total{{node=\"{node}\",vip=\"{}\"}} {n}", label(&v.name));
            }
        }
        let mut reals = std::collections::BTreeMap::new();
        for r in status.vips.iter().flat_map(|v| &v.reals) {
            reals.insert(label(&r.address), (r.packets, r.bytes));
        }
        for (name, what) in [("packets", "Packets"), ("bytes", "Bytes")] {
            family(
                out,
                &format!("weir_lb_real_{name}_total"),
                "counter",
                &format!("{what} sent to each real, over all VIPs."),
            );
            for (real, (packets, bytes)) in &reals {
                let n = if name == "packets" { packets } else { bytes };
                let _ = writeln!(out, "weir_lb_real_{name}_total{{node=\"{node}\",real=\"{real}\"}} {n}");
            }
        }
        family(out, "weir_lb_real_weight", "gauge", "Each real's weight in each VIP's ring (0: drained).");
        for v in &status.vips {
            for r in &v.reals {
                let _ = writeln!(
                    out,
                    "weir_lb_real_weight{{node=\"{node}\",vip=\"{}\",real=\"{}\"}} {}",
                    label(&v.name),
                    label(&r.address),
                    r.weight
                );
            }
        }
        family(
            out,
            "weir_lb_real_healthy",
            "gauge",
            "1 when a probed real passed its VIP's last health probe, 0 when it failed (out of the ring).",
        );
        for v in &status.vips {
            for r in v.reals.iter().filter(|r| r.probed) {
                let _ = writeln!(
                    out,
                    "weir_lb_real_healthy{{node=\"{node}\",vip=\"{}\",real=\"{}\"}} {}",
                    label(&v.name),
                    label(&r.address),
                    u8::from(!r.unhealthy)
                );
            }
        }
        family(
            out,
            "weir_lb_packets_total",
            "counter",
            "Packets by what the load balancer did (lru_hit, lru_miss, ring, passed, ...).",
        );
        for c in &status.counters {
            let _ =
                writeln!(out, "weir_lb_packets_total{{node=\"{node}\",event=\"{}\"}} {}", label(&c.name), c.packets);
        }
        family(out, "weir_lb_drops_total", "counter", "Packets the load balancer dropped, by reason.");
        for c in &status.drops {
            let _ = writeln!(out, "weir_lb_drops_total{{node=\"{node}\",reason=\"{}\"}} {}", label(&c.name), c.packets);
        }
    }
    if !status.decap_interfaces.is_empty() {
        family(
            out,
            "weir_lb_decapsulated_packets_total",
            "counter",
            "Packets a real server stripped of the load balancer's encapsulation.",
        );
        let done = status.decapsulated.as_ref().map(|c| c.packets).unwrap_or(0);
        let _ = writeln!(out, "weir_lb_decapsulated_packets_total{{node=\"{node}\"}} {done}");
        family(
            out,
            "weir_lb_decap_failures_total",
            "counter",
            "Encapsulated packets the kernel refused to strip (dropped).",
        );
        let failed = status.decap_failed.as_ref().map(|c| c.packets).unwrap_or(0);
        let _ = writeln!(out, "weir_lb_decap_failures_total{{node=\"{node}\"}} {failed}");
    }
}

pub fn render_pod_paths(out: &mut String, node: &str, paths: &[(&'static str, u64)]) {
    let node = label(node);
    family(out, "weir_pod_path_packets_total", "counter", "Packets to and from local pods by the path they took.");
    for (path, n) in paths {
        let _ = writeln!(out, "weir_pod_path_packets_total{{node=\"{node}\",path=\"{path}\"}} {n}");
    }
}

/// What network policy reports: drops by reason (Hubble's drop_total),
/// flow events by verdict, losses by cause, and the sizes of its state.
#[derive(Debug, Default)]
pub struct NetPolicyMetrics {
    /// (reason, packets, bytes)
    pub drops: Vec<(&'static str, u64, u64)>,
    /// (verdict, events)
    pub flows: Vec<(&'static str, u64)>,
    /// (cause, events)
    pub lost: Vec<(&'static str, u64)>,
    /// L7 messages by outcome: the kernel's, and those it reported that
    /// the agent could not read.
    pub l7: Vec<(&'static str, u64)>,
    /// HTTPS messages OpenSSL's probes returned, by outcome; empty when
    /// the probes do not run.
    pub tls: Vec<(&'static str, u64)>,
    pub policies: usize,
    pub identities: usize,
    pub endpoints: usize,
    /// Judged flow directions conntrack holds.
    pub conntrack: usize,
    /// Hubble's families (`--hubble-metrics`), rendered; empty when off.
    pub hubble: String,
}

pub fn render_netpolicy(out: &mut String, node: &str, m: &NetPolicyMetrics) {
    let node = label(node);
    family(out, "weir_pod_drops_total", "counter", "Packets the pod path dropped, by reason.");
    for (reason, packets, _) in &m.drops {
        let _ = writeln!(out, "weir_pod_drops_total{{node=\"{node}\",reason=\"{}\"}} {packets}", reason.to_lowercase());
    }
    family(out, "weir_flows_total", "counter", "Flow events read: new flows allowed (forwarded) and packets dropped.");
    for (verdict, n) in &m.flows {
        let _ = writeln!(out, "weir_flows_total{{node=\"{node}\",verdict=\"{verdict}\"}} {n}");
    }
    family(out, "weir_flow_events_lost_total", "counter", "Flow events lost, by cause.");
    for (cause, n) in &m.lost {
        let _ = writeln!(out, "weir_flow_events_lost_total{{node=\"{node}\",cause=\"{}\"}} {n}", cause.to_lowercase());
    }
    family(
        out,
        "weir_l7_messages_total",
        "counter",
        "Pods' DNS and HTTP/1.x messages the pod path looked at, by outcome (reported, unparsed, unmatched, lost, truncated: reported with only its first 512 bytes; unreadable: reported, but the agent could not read it).",
    );
    for (outcome, n) in &m.l7 {
        let _ = writeln!(out, "weir_l7_messages_total{{node=\"{node}\",outcome=\"{}\"}} {n}", outcome.to_lowercase());
    }
    if !m.tls.is_empty() {
        family(
            out,
            "weir_tls_messages_total",
            "counter",
            "HTTP/1.x heads OpenSSL's read and write functions returned, by outcome (reported; cut: reported, but longer than 512 bytes; lost: the ring was full; no_socket, not_inet, calls_full: not reported; nested: left to the outer call; elsewhere: a local server's exchange with a pod of another node, left to that node). Absent when the probes do not run.",
        );
        for (outcome, n) in &m.tls {
            let _ =
                writeln!(out, "weir_tls_messages_total{{node=\"{node}\",outcome=\"{}\"}} {n}", outcome.to_lowercase());
        }
    }
    family(out, "weir_network_policies", "gauge", "Network policies applied.");
    let _ = writeln!(out, "weir_network_policies{{node=\"{node}\"}} {}", m.policies);
    family(out, "weir_identities", "gauge", "Security identities of the cluster's pods.");
    let _ = writeln!(out, "weir_identities{{node=\"{node}\"}} {}", m.identities);
    family(out, "weir_policy_endpoints", "gauge", "Local pods with a policy map installed.");
    let _ = writeln!(out, "weir_policy_endpoints{{node=\"{node}\"}} {}", m.endpoints);
    family(out, "weir_conntrack_entries", "gauge", "Flow directions conntrack holds (an LRU table).");
    let _ = writeln!(out, "weir_conntrack_entries{{node=\"{node}\"}} {}", m.conntrack);
    out.push_str(&m.hubble);
}

pub fn render_runtime(out: &mut String, node: &str, m: &crate::runtime::RuntimeMetrics) {
    let node = label(node);
    family(out, "weir_runtime_backend", "gauge", "The enforcement backend in use (bpf-lsm or tracepoint).");
    let _ = writeln!(out, "weir_runtime_backend{{node=\"{node}\",backend=\"{}\"}} 1", m.backend);
    family(out, "weir_runtime_events_total", "counter", "Runtime events read from the kernel, by type.");
    for (kind, n) in &m.events {
        let _ = writeln!(out, "weir_runtime_events_total{{node=\"{node}\",type=\"{kind}\"}} {n}");
    }
    family(
        out,
        "weir_runtime_policy_actions_total",
        "counter",
        "Events a RuntimePolicy rule matched, by policy and action.",
    );
    for (policy, action, n) in &m.actions {
        let _ = writeln!(
            out,
            "weir_runtime_policy_actions_total{{node=\"{node}\",policy=\"{}\",action=\"{action}\"}} {n}",
            label(policy)
        );
    }
    family(out, "weir_runtime_events_lost_total", "counter", "Runtime events lost, by cause.");
    for (cause, n) in &m.lost {
        let _ = writeln!(out, "weir_runtime_events_lost_total{{node=\"{node}\",cause=\"{cause}\"}} {n}");
    }
    family(
        out,
        "weir_runtime_kernel_total",
        "counter",
        "The runtime sensors' own counters (weir_rt counter registry).",
    );
    for (counter, n) in &m.kernel {
        let _ = writeln!(out, "weir_runtime_kernel_total{{node=\"{node}\",counter=\"{counter}\"}} {n}");
    }
    family(out, "weir_runtime_processes", "gauge", "Processes in the agent's process cache.");
    let _ = writeln!(out, "weir_runtime_processes{{node=\"{node}\"}} {}", m.processes);
}

/// Serves `GET /metrics` until `stop` turns true.
/// How this node follows the cluster's store (etcd), for the endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreMetrics {
    pub revision: i64,
    pub connected: bool,
    pub objects: u64,
    pub refused: u64,
    pub relists: u64,
    pub watch_events: u64,
    pub changes: u64,
}

/// Renders the store follower's numbers (a cluster of several nodes only).
pub fn render_store(out: &mut String, node: &str, m: &StoreMetrics) {
    let node = label(node);
    let mut one = |name: &str, kind: &str, help: &str, value: String| {
        family(out, name, kind, help);
        let _ = writeln!(out, "{name}{{node=\"{node}\"}} {value}");
    };
    one("weir_store_revision", "gauge", "The store revision this node holds.", m.revision.to_string());
    one("weir_store_connected", "gauge", "1 while the watch on the store is live.", u8::from(m.connected).to_string());
    one("weir_store_objects", "gauge", "Objects of the store this node holds.", m.objects.to_string());
    one("weir_store_refused_objects", "gauge", "Objects of the store this node refused.", m.refused.to_string());
    one("weir_store_relists_total", "counter", "Times this node read the store whole.", m.relists.to_string());
    one(
        "weir_store_watch_events_total",
        "counter",
        "Changes of keys read from the store's watch.",
        m.watch_events.to_string(),
    );
    one(
        "weir_store_changes_total",
        "counter",
        "Changes this node made to hold what the store holds.",
        m.changes.to_string(),
    );
}

/// Renders what the node knows of its mesh, with Cilium's metric names
/// (`cilium_clustermesh_*` → `weir_clustermesh_*`) and labels.
pub fn render_clustermesh(out: &mut String, mesh: &crate::clustermesh::MeshStatus) {
    let (node, source) = (label(&mesh.node), label(&mesh.cluster));
    let at = |target: &str| format!("node=\"{node}\",source_cluster=\"{source}\",target_cluster=\"{}\"", label(target));
    family(out, "weir_clustermesh_remote_clusters", "gauge", "Remote clusters this node follows.");
    let _ = writeln!(
        out,
        "weir_clustermesh_remote_clusters{{node=\"{node}\",source_cluster=\"{source}\"}} {}",
        mesh.remotes.len()
    );
    if let Some(shared) = mesh.shared_services {
        family(
            out,
            "weir_clustermesh_global_services",
            "gauge",
            "This cluster's global services shared with the mesh.",
        );
        let _ =
            writeln!(out, "weir_clustermesh_global_services{{node=\"{node}\",source_cluster=\"{source}\"}} {shared}");
    }
    let mut series =
        |name: &str, kind: &str, help: &str, value: &dyn Fn(&crate::clustermesh::status::RemoteStatus) -> String| {
            family(out, name, kind, help);
            for (cluster, remote) in &mesh.remotes {
                let _ = writeln!(out, "{name}{{{}}} {}", at(cluster), value(remote));
            }
        };
    series(
        "weir_clustermesh_remote_cluster_readiness_status",
        "gauge",
        "1 while the remote cluster's etcd is read and watched.",
        &|r| u8::from(r.state == crate::clustermesh::RemoteState::Connected).to_string(),
    );
    series(
        "weir_clustermesh_remote_cluster_lost",
        "gauge",
        "1 while the remote cluster is lost (its etcd and nodes gone) or stale: its backends are out of the tables.",
        &|r| u8::from(r.state.dropped()).to_string(),
    );
    series("weir_clustermesh_remote_cluster_nodes", "gauge", "Nodes of the remote cluster known here.", &|r| {
        r.nodes.len().to_string()
    });
    series(
        "weir_clustermesh_remote_cluster_identities",
        "gauge",
        "Identities of the remote cluster's pods known here.",
        &|r| r.identities.to_string(),
    );
    series(
        "weir_clustermesh_remote_cluster_global_services",
        "gauge",
        "Global services the remote cluster shares with this one.",
        &|r| r.global_services.to_string(),
    );
    series(
        "weir_clustermesh_remote_cluster_failures",
        "counter",
        "Times the remote cluster's etcd was lost or a read of it failed.",
        &|r| r.failures.to_string(),
    );
    series(
        "weir_clustermesh_remote_cluster_last_failure_ts",
        "gauge",
        "Unix time of the last failure (0: none).",
        &|r| {
            r.last_error_at
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs())
                .to_string()
        },
    );
}

/// Serves `/metrics`: the agent's state, and the store follower's where it runs.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AgentState>,
    store: Option<Arc<crate::store::Follower>>,
    mesh: Option<crate::clustermesh::SharedMeshStatus>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let Ok((mut stream, _)) = accepted else { continue };
        let (state, store, mesh) = (state.clone(), store.clone(), mesh.clone());
        tokio::spawn(async move {
            let mut request = Vec::with_capacity(1024);
            let mut buf = [0u8; 1024];
            // Read the request head only; bodies are not expected.
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&request);
            let (status, content_type, body) = if head.starts_with("GET /metrics ") || head.starts_with("GET /metrics?")
            {
                let mut text = state.metrics_text().await;
                if let Some(store) = &store {
                    render_store(&mut text, store.node(), &store.metrics().await);
                }
                if let Some(mesh) = mesh.as_ref().and_then(|m| m.lock().ok().map(|m| m.clone())) {
                    render_clustermesh(&mut text, &mesh);
                }
                ("200 OK", "text/plain; version=0.0.4", text)
            } else {
                ("404 Not Found", "text/plain", "only /metrics is served here\n".to_string())
            };
            let response = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_bpf::api::Counter;

    #[test]
    fn renders_the_load_balancer_with_one_series_per_real() {
        use weir_proto::agent::v1 as pb;
        let real =
            |address: &str, packets| pb::LbReal { address: address.into(), weight: 1, packets, ..Default::default() };
        let status = pb::LbStatusResponse {
            interface: "eth1".into(),
            vips: vec![
                pb::LbVip {
                    name: "web".into(),
                    packets: 7,
                    bytes: 700,
                    reals: vec![real("10.0.0.2", 5)],
                    ..Default::default()
                },
                pb::LbVip {
                    name: "api".into(),
                    packets: 2,
                    reals: vec![pb::LbReal { probed: true, unhealthy: true, ..real("10.0.0.2", 5) }],
                    ..Default::default()
                },
            ],
            counters: vec![pb::LbCounter { name: "lru_hit".into(), packets: 3, bytes: 0 }],
            drops: vec![pb::LbCounter { name: "xlb_fragment".into(), packets: 1, bytes: 0 }],
            ..Default::default()
        };
        let mut out = String::new();
        render_lb(&mut out, "n1", &status);
        assert!(out.contains("weir_lb_vip_packets_total{node=\"n1\",vip=\"web\"} 7\n"), "{out}");
        assert!(out.contains("weir_lb_vip_bytes_total{node=\"n1\",vip=\"web\"} 700\n"), "{out}");
        assert_eq!(out.matches("weir_lb_real_packets_total{").count(), 1, "one real, one series: {out}");
        assert!(out.contains("weir_lb_packets_total{node=\"n1\",event=\"lru_hit\"} 3\n"), "{out}");
        assert!(out.contains("weir_lb_drops_total{node=\"n1\",reason=\"xlb_fragment\"} 1\n"), "{out}");
        assert!(out.contains("weir_lb_real_healthy{node=\"n1\",vip=\"api\",real=\"10.0.0.2\"} 0\n"), "{out}");
        assert_eq!(out.matches("weir_lb_real_healthy{").count(), 1, "only probed reals: {out}");
        assert!(!out.contains("decapsulated"), "no decapsulation on this node");
    }

    #[test]
    fn renders_the_mesh_with_ciliums_names_one_series_per_remote_cluster() {
        use crate::clustermesh::{MeshStatus, RemoteState};
        let mut mesh = MeshStatus::new(
            "east",
            1,
            "east-a",
            &[("west".into(), "http://w".into()), ("north".into(), "http://n".into())],
        );
        mesh.set_state("west", RemoteState::Connected);
        mesh.set_state("north", RemoteState::Lost);
        mesh.failed("north", "gone".into());
        mesh.shared_services = Some(3);
        let mut out = String::new();
        render_clustermesh(&mut out, &mesh);
        let at = |c: &str| format!("{{node=\"east-a\",source_cluster=\"east\",target_cluster=\"{c}\"}}");
        assert!(out.contains(&format!("weir_clustermesh_remote_cluster_readiness_status{} 1\n", at("west"))), "{out}");
        assert!(out.contains(&format!("weir_clustermesh_remote_cluster_readiness_status{} 0\n", at("north"))), "{out}");
        assert!(out.contains(&format!("weir_clustermesh_remote_cluster_lost{} 1\n", at("north"))), "{out}");
        assert!(out.contains(&format!("weir_clustermesh_remote_cluster_failures{} 1\n", at("north"))), "{out}");
        assert!(out.contains("weir_clustermesh_remote_clusters{node=\"east-a\",source_cluster=\"east\"} 2\n"), "{out}");
        assert!(out.contains("weir_clustermesh_global_services{node=\"east-a\",source_cluster=\"east\"} 3\n"), "{out}");
        assert_eq!(out.matches("# TYPE weir_clustermesh_remote_cluster_nodes gauge").count(), 1, "{out}");
    }

    #[test]
    fn renders_counters_with_labels_and_type_lines() {
        let mut snapshot = Snapshot::default();
        snapshot.traffic.push(("ingress", "ipv4_tcp", Counter { packets: 3, bytes: 180 }));
        snapshot.traffic.push(("invalid", "truncated", Counter { packets: 1, bytes: 10 }));
        let text = render("node-\"a\"", 7, &snapshot);
        assert!(text.contains(
            "weir_datapath_packets_total{node=\"node-\\\"a\\\"\",direction=\"ingress\",class=\"ipv4_tcp\"} 3\n"
        ));
        assert!(text.contains("weir_datapath_invalid_packets_total{node=\"node-\\\"a\\\"\",reason=\"truncated\"} 1\n"));
        assert!(text.contains("# TYPE weir_datapath_bytes_total counter\n"));
        assert!(text.contains("weir_agent_healthy{node=\"node-\\\"a\\\"\"} 1\n"));
    }

    #[test]
    fn renders_the_store_follower() {
        let mut text = String::new();
        let m = StoreMetrics { revision: 42, connected: true, relists: 2, ..Default::default() };
        render_store(&mut text, "node-a", &m);
        assert!(text.contains("# TYPE weir_store_relists_total counter\nweir_store_relists_total{node=\"node-a\"} 2\n"));
        assert!(text.contains("weir_store_revision{node=\"node-a\"} 42\n"));
        assert!(text.contains("weir_store_connected{node=\"node-a\"} 1\n"));
    }
}
