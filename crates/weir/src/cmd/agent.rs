//! `weir agent`: run the node agent in the foreground.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use weir_agent::AgentConfig;
use weir_host::{mounts, paths};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BpfStats {
    OnDemand,
    Always,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log pipelines.
    Json,
    /// Human-readable lines.
    Text,
}

/// Run the node agent: load and pin the datapath, serve the local API.
///
/// On a host, run it as root in the root network namespace. `weir lab up`
/// starts one per lab node for you. SIGTERM stops it cleanly; after SIGKILL
/// the datapath keeps running and the next start adopts it.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// This node's name [default: the host name].
    #[arg(long)]
    node: Option<String>,
    /// Interface to attach the node datapath to; repeat for several
    /// [default: as stored in --state-dir, else the default route's interface].
    #[arg(long = "interface", short = 'i')]
    interfaces: Vec<String>,
    /// A pod's veth (its node-side end) to serve too; repeat for several.
    /// XDP runs there in generic mode: native XDP on a veth turns TSO off in
    /// the pod, halving its TCP throughput.
    #[arg(long = "pod-interface")]
    pod_interfaces: Vec<String>,
    /// Directory below bpffs for this agent's pins [default: <bpffs>/weir/host].
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Directory for the agent's desired state.
    #[arg(long, default_value = paths::HOST_STATE_DIR)]
    state_dir: PathBuf,
    /// The gRPC unix socket (created with mode 0600).
    #[arg(long, default_value = paths::HOST_AGENT_SOCKET)]
    socket: PathBuf,
    /// Address to serve Prometheus metrics on; "off" serves none.
    #[arg(long, default_value = "127.0.0.1:9690")]
    metrics_addr: String,
    /// Also serve Hubble's Observer API (GetFlows, ServerStatus, GetNodes) on
    /// this TCP address, for Hubble clients, which dial TCP (Hubble's agent
    /// port is 4244); plaintext, no authentication. It is always served on
    /// the unix socket.
    #[arg(long, value_name = "ADDR")]
    hubble_listen: Option<String>,
    /// Hubble's metric families to serve on the metrics endpoint, in
    /// Hubble's syntax: names separated by spaces, each with optional
    /// context options, e.g. `drop:sourceContext=pod;destinationContext=pod
    /// flow tcp port-distribution icmp policy:labelsContext=source_namespace`.
    /// Served: flow, drop, tcp, port-distribution, policy, icmp, dns
    /// (`query`, `ignoreAAAA`), http and httpV2 (they count the pod path's
    /// flows, so they need --pod-routing). Off by default.
    #[arg(long, value_name = "METRICS")]
    hubble_metrics: Vec<String>,
    /// How long the Hubble metric series that name a pod (pod, pod-name or
    /// ip contexts) stay after the pod is deleted.
    #[arg(long, default_value = "1m", value_parser = weir_spec::parse_duration)]
    hubble_metrics_ttl: std::time::Duration,
    /// Flows the agent keeps for GetFlows and `weir observe --last` (Hubble's
    /// flag; Hubble takes 2^n-1 up to 65535, Weir any count up to 4194304).
    /// Each flow costs about 200 bytes.
    #[arg(long, default_value_t = weir_agent::netpolicy::RECENT_FLOWS as u32,
          value_parser = clap::value_parser!(u32).range(1..=4_194_304))]
    hubble_event_buffer_capacity: u32,
    /// Write every flow to this file, one GetFlowsResponse per line in
    /// Hubble's JSON, as Hubble's exporter does (needs --pod-routing).
    #[arg(long, value_name = "PATH")]
    hubble_export_file_path: Option<PathBuf>,
    /// Rotate the export file when it would pass this many megabytes.
    #[arg(long, default_value_t = 10, value_name = "MB", value_parser = clap::value_parser!(u64).range(1..))]
    hubble_export_file_max_size_mb: u64,
    /// Rotated export files kept; older ones are deleted.
    #[arg(long, default_value_t = 5, value_name = "N")]
    hubble_export_file_max_backups: usize,
    /// Export only flows matching one of these FlowFilters, in protobuf's
    /// JSON: `{"verdict":["DROPPED"]}`; several as a list or repeated.
    #[arg(long, value_name = "JSON")]
    hubble_export_allowlist: Vec<String>,
    /// Export no flow matching one of these FlowFilters.
    #[arg(long, value_name = "JSON")]
    hubble_export_denylist: Vec<String>,
    /// The XDP L4 load balancer (`weir lb`): balance VIPs at XDP on this
    /// interface (configured with `weir apply -f` of an XdpLoadBalancer).
    /// Not one of --interfaces: an interface has one XDP program.
    #[arg(long, value_name = "INTERFACE")]
    lb_interface: Option<String>,
    /// A real server of the XDP load balancer: strip its encapsulation at
    /// tc ingress of this interface (repeat for several).
    #[arg(long = "lb-decap-interface", value_name = "INTERFACE")]
    lb_decap_interfaces: Vec<String>,
    /// The lab this agent serves (set by `weir lab up`).
    #[arg(long, hide = true)]
    lab: Option<String>,
    /// The cgroup directory holding this node's workloads; profiles and
    /// per-node hooks stay inside it [default: the whole hierarchy, as on a host].
    #[arg(long)]
    node_cgroup: Option<PathBuf>,
    /// When the kernel accounts program run time: only during `weir status
    /// --sample` windows (it slows every BPF program on the host by tens of
    /// nanoseconds), or always.
    #[arg(long, value_enum, default_value = "on-demand")]
    bpf_stats: BpfStats,
    /// A cgroup directory whose processes the socket load balancer leaves
    /// alone (a pod that opts out); repeat for several.
    #[arg(long = "socket-lb-opt-out", value_name = "CGROUP_DIR")]
    socket_lb_opt_out: Vec<PathBuf>,
    /// Do not report pods' DNS (UDP port 53) and HTTP/1.x messages as L7
    /// flows. On by default: the pod path copies the start of each such
    /// message into the flow ring (docs/observe.md says what it costs).
    #[arg(long)]
    no_l7_flows: bool,
    /// Do not report HTTPS messages as L7 flows. On by default (unless
    /// --no-l7-flows): uprobes on OpenSSL's SSL_read/SSL_write in each libssl
    /// of the host read the plaintext of every process of the node's
    /// cgroup; they cost every OpenSSL call on the host a trap
    /// (docs/observe.md).
    #[arg(long)]
    no_tls_flows: bool,
    /// How often service backends are probed. A backend that fails a probe
    /// takes no new connections until one passes. With --etcd, a node probes
    /// only its own backends (and those on no node of the cluster) and shares
    /// its verdicts; the others' come from their own nodes.
    #[arg(long, default_value = "1s", value_parser = weir_spec::parse_duration)]
    health_interval: std::time::Duration,
    /// The ports a Service's nodePort may take, FIRST-LAST (kube-apiserver's
    /// --service-node-port-range); others are refused.
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    service_node_port_range: std::ops::RangeInclusive<u16>,
    /// Runtime security: process and network-operation events, and
    /// RuntimePolicy enforcement, for every process in --node-cgroup (or on
    /// the host).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    runtime: bool,
    /// Use BPF LSM hooks where the kernel allows them (exec and file-open
    /// refusal with an errno); elsewhere exec is refused by a kill.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    runtime_lsm: bool,
    /// Post every connect, bind, listen and accept, not only those a rule selects.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    runtime_network_events: bool,
    /// Processes the runtime process cache holds; past it the oldest exited,
    /// then the least recently seen, are evicted (and counted).
    #[arg(long, default_value_t = 65536)]
    runtime_cache_size: usize,
    /// Bytes of the ring buffer that carries runtime events from the kernel:
    /// a power of two, at least 4096. Events that find it full are counted
    /// (weir_runtime_events_lost_total{cause="ring_full"}).
    #[arg(long, default_value_t = weir_bpf::runtime::DEFAULT_RING_BYTES, value_parser = parse_ring_bytes)]
    runtime_ring_bytes: u32,
    /// The node's pods as JSON (set by `weir lab up`; on a host whose
    /// containers come from `weir-cni`, a file holding `[]`): events name
    /// the pod, and policies select pods by namespace and labels.
    #[arg(long)]
    pods_file: Option<PathBuf>,
    /// Carry the pods' traffic past this node's IP stack: into a pod with
    /// bpf_redirect_peer, out of the node with a FIB lookup (set by
    /// `weir lab up` for `routing: weir`; what `weir-cni`'s containers
    /// need; needs --pods-file).
    #[arg(long, requires = "pods_file")]
    pod_routing: bool,
    /// A CIDR inside the cluster (every node's pod CIDR and every node's
    /// address; repeat): with --pod-routing, pod traffic to anywhere else
    /// off the node is masqueraded as the node.
    #[arg(long = "cluster-cidr", value_name = "CIDR")]
    pod_cidrs: Vec<ipnet::Ipv4Net>,
    /// Overlay mode (with --pod-routing): the VXLAN device in
    /// collect-metadata mode that carries pods' traffic to other nodes.
    #[arg(long, hide = true, requires = "pod_routing")]
    overlay_device: Option<String>,
    /// Overlay mode: CIDR=NODE_ADDRESS, another node's pod CIDR and where
    /// that node is; repeat for each.
    #[arg(long = "pod-tunnel", hide = true, value_name = "CIDR=ADDRESS", value_parser = parse_tunnel)]
    pod_tunnels: Vec<((std::net::Ipv4Addr, u8), std::net::Ipv4Addr)>,
    /// NAME=ADDRESS[,IPV6_ADDRESS]: a node of the cluster and its addresses
    /// (network policy: the remote-node identity, and where another node's
    /// pods are); repeat.
    #[arg(long = "cluster-node", hide = true, value_name = "NAME=ADDRESS[,IPV6]", value_parser = parse_node)]
    cluster_nodes: Vec<ClusterNode>,
    /// etcd client URL for state shared by the cluster's nodes (identity
    /// numbers, pods, backend health verdicts); repeat for several. Without
    /// it identities are allocated in --state-dir, which suits a cluster of
    /// one node.
    #[arg(long = "etcd", value_name = "URL")]
    etcd: Vec<String>,
    /// ClusterMesh: this node's cluster's name (set by `weir lab up` for a
    /// ClusterMesh). With --cluster-id, the node publishes itself in its
    /// cluster's etcd (--etcd) and reads every --clustermesh cluster's.
    #[arg(long, hide = true, requires_all = ["cluster_id", "etcd", "node_address", "node_pod_cidr"])]
    cluster_name: Option<String>,
    /// ClusterMesh: this cluster's id, 1-255 (bits 16-23 of its identities).
    #[arg(long, hide = true, requires = "cluster_name", value_parser = clap::value_parser!(u8).range(1..=255))]
    cluster_id: Option<u8>,
    /// ClusterMesh: this node's fabric address, as the other clusters route to it.
    #[arg(long, hide = true, requires = "cluster_name")]
    node_address: Option<std::net::Ipv4Addr>,
    /// ClusterMesh: this node's pod CIDR, as the other clusters route it.
    #[arg(long, hide = true, requires = "cluster_name")]
    node_pod_cidr: Option<ipnet::Ipv4Net>,
    /// ClusterMesh: NAME=URL, another cluster and its etcd, read and never
    /// written; repeat for each.
    #[arg(long = "clustermesh", hide = true, requires = "cluster_name", value_name = "NAME=URL", value_parser = parse_remote)]
    clustermesh: Vec<(String, String)>,
    /// ClusterMesh: how long a remote cluster whose etcd cannot be reached,
    /// while its nodes still answer, keeps its backends in this node's
    /// tables (`0`: until its etcd is reached again, as Cilium). A cluster
    /// whose etcd and nodes are all gone loses them at once.
    #[arg(long, default_value = "10m", requires = "cluster_name", value_parser = weir_spec::parse_duration_or_zero)]
    clustermesh_stale_after: std::time::Duration,
    /// error, warn, info, debug or trace; or a full tracing filter.
    #[arg(long, default_value = "info", env = "WEIR_LOG")]
    log_level: String,
    #[arg(long, value_enum, default_value = "json")]
    log_format: LogFormat,
}

#[derive(Debug, Clone)]
struct ClusterNode {
    name: String,
    v4: std::net::Ipv4Addr,
    v6: Option<std::net::Ipv6Addr>,
}

fn parse_node(text: &str) -> Result<ClusterNode, String> {
    let (name, addrs) = text.split_once('=').ok_or("expected NAME=ADDRESS[,IPV6_ADDRESS]")?;
    let (v4, v6) = match addrs.split_once(',') {
        Some((v4, v6)) => (v4, Some(v6.parse().map_err(|e| format!("{v6}: {e}"))?)),
        None => (addrs, None),
    };
    Ok(ClusterNode { name: name.to_string(), v4: v4.parse().map_err(|e| format!("{v4}: {e}"))?, v6 })
}

fn parse_remote(text: &str) -> Result<(String, String), String> {
    let (name, url) = text.split_once('=').ok_or("expected NAME=URL")?;
    if name.is_empty() || !url.starts_with("http://") {
        return Err(format!("{text}: expected NAME=http://ADDRESS:PORT"));
    }
    Ok((name.to_string(), url.to_string()))
}

fn parse_tunnel(text: &str) -> Result<((std::net::Ipv4Addr, u8), std::net::Ipv4Addr), String> {
    let (cidr, node) = text.split_once('=').ok_or("expected CIDR=ADDRESS")?;
    let cidr: ipnet::Ipv4Net = cidr.parse().map_err(|e| format!("{cidr}: {e}"))?;
    let node: std::net::Ipv4Addr = node.parse().map_err(|e| format!("{node}: {e}"))?;
    Ok(((cidr.network(), cidr.prefix_len()), node))
}

fn parse_ring_bytes(text: &str) -> Result<u32, String> {
    let bytes: u32 = text.parse().map_err(|e| format!("{e}"))?;
    if bytes < 4096 || !bytes.is_power_of_two() {
        return Err(format!("{bytes} is not a power of two of at least 4096"));
    }
    Ok(bytes)
}

/// `--hubble-export-*`, checked before anything is loaded.
fn hubble_export(args: &AgentArgs) -> anyhow::Result<Option<weir_agent::hubble::export::ExportConfig>> {
    let Some(path) = &args.hubble_export_file_path else {
        if !args.hubble_export_allowlist.is_empty() || !args.hubble_export_denylist.is_empty() {
            anyhow::bail!("--hubble-export-allowlist and -denylist need --hubble-export-file-path");
        }
        return Ok(None);
    };
    if !args.pod_routing {
        anyhow::bail!("--hubble-export-file-path exports the pod path's flows; it needs --pod-routing");
    }
    let list = |flag: &str, texts: &[String]| -> anyhow::Result<Vec<_>> {
        let mut filters = Vec::new();
        for text in texts {
            filters
                .extend(weir_agent::hubble::export::parse_filters(text).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))?);
        }
        Ok(filters)
    };
    let allow = list("hubble-export-allowlist", &args.hubble_export_allowlist)?;
    let deny = list("hubble-export-denylist", &args.hubble_export_denylist)?;
    weir_agent::hubble::filter::Filters::parse(&allow, &deny).map_err(|e| anyhow::anyhow!("--hubble-export-*: {e}"))?;
    Ok(Some(weir_agent::hubble::export::ExportConfig {
        path: path.clone(),
        max_size_bytes: args.hubble_export_file_max_size_mb << 20,
        max_backups: args.hubble_export_file_max_backups,
        allow,
        deny,
    }))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    // Refused before anything is mounted or loaded.
    let hubble_metrics = weir_agent::hubble::metrics::parse(&args.hubble_metrics)
        .map_err(|e| anyhow::anyhow!("--hubble-metrics: {e}"))?;
    if !hubble_metrics.is_empty() && !args.pod_routing {
        anyhow::bail!("--hubble-metrics counts the pod path's flows; it needs --pod-routing");
    }
    let hubble_export = hubble_export(&args)?;
    if let Some(lb) = &args.lb_interface {
        if args.interfaces.contains(lb) || args.pod_interfaces.contains(lb) {
            anyhow::bail!("--lb-interface {lb}: the node datapath holds XDP there already (--interface); an interface has one XDP program");
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .map_err(|e| anyhow::anyhow!("--log-level {:?}: {e}", args.log_level))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    weir_bpf::log_libbpf_through_tracing();
    let bpffs = mounts::ensure_bpffs()?;
    let cgroup2 = mounts::ensure_cgroup2()?;
    mounts::ensure_tracefs()?;
    let config = AgentConfig {
        node: args.node.unwrap_or_else(host_name),
        interfaces: args.interfaces,
        pod_interfaces: args.pod_interfaces,
        pin_dir: args.pin_dir.unwrap_or_else(|| paths::host_pin_dir(&bpffs)),
        state_dir: args.state_dir,
        socket: args.socket,
        metrics_addr: (args.metrics_addr != "off").then_some(args.metrics_addr),
        hubble_listen: args.hubble_listen,
        hubble_metrics,
        hubble_metrics_ttl: args.hubble_metrics_ttl,
        hubble_event_buffer_capacity: args.hubble_event_buffer_capacity as usize,
        hubble_export,
        lab: args.lab,
        node_cgroup: args.node_cgroup,
        cgroup2,
        bpf_stats_always: args.bpf_stats == BpfStats::Always,
        socket_lb_opt_out: args.socket_lb_opt_out,
        l7_flows: !args.no_l7_flows,
        tls_flows: !args.no_tls_flows,
        health_interval: args.health_interval,
        service_node_port_range: args.service_node_port_range,
        pod_routing: args.pod_routing,
        pods_file: args.pods_file,
        pod_cidrs: args.pod_cidrs.iter().map(|c| (c.network(), c.prefix_len())).collect(),
        overlay: args
            .overlay_device
            .map(|device| weir_agent::config::Overlay { device, tunnels: args.pod_tunnels.clone() }),
        cluster_nodes: args.cluster_nodes.iter().map(|n| (n.name.clone(), n.v4)).collect(),
        cluster_nodes6: args.cluster_nodes.iter().filter_map(|n| Some((n.name.clone(), n.v6?))).collect(),
        etcd: args.etcd,
        cluster: match (args.cluster_name, args.cluster_id, args.node_address, args.node_pod_cidr) {
            (Some(name), Some(id), Some(address), Some(pod_cidr)) => Some(weir_agent::clustermesh::MeshConfig {
                name,
                id,
                address,
                pod_cidr,
                remotes: args.clustermesh,
                stale_after: (!args.clustermesh_stale_after.is_zero()).then_some(args.clustermesh_stale_after),
            }),
            _ => None,
        },
        lb_interface: args.lb_interface,
        lb_decap_interfaces: args.lb_decap_interfaces,
        runtime: args.runtime.then_some(weir_agent::config::RuntimeConfig {
            lsm: args.runtime_lsm,
            network_events: args.runtime_network_events,
            cache_size: args.runtime_cache_size,
            ring_bytes: args.runtime_ring_bytes,
        }),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        // Installed before the daemon starts (see termination).
        let shutdown = super::termination()?;
        if let Err(err) = weir_agent::run(config, shutdown).await {
            tracing::error!(error = %format!("{:#}", anyhow::Error::from(err)), "agent failed");
            return Ok(ExitCode::FAILURE);
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// FIRST-LAST, both ports, FIRST <= LAST.
fn parse_port_range(text: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let (first, last) = text.split_once('-').ok_or_else(|| format!("{text:?}: use FIRST-LAST, e.g. 30000-32767"))?;
    let port = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("{p:?} is not a port"));
    let (first, last) = (port(first)?, port(last)?);
    if first > last {
        return Err(format!("{text:?}: the first port is above the last"));
    }
    Ok(first..=last)
}
