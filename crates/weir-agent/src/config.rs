//! Agent configuration and the desired state kept in the state directory.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::AgentError;

/// What an agent is told at start.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's name; defaults to the host name.
    pub node: String,
    /// Interfaces to attach the node datapath to. Empty: those in the state
    /// directory from an earlier run, else the default route's interface.
    pub interfaces: Vec<String>,
    /// Pods' veths (node side), served with generic XDP (see `DesiredState`).
    pub pod_interfaces: Vec<String>,
    /// Directory below bpffs for this agent's pins.
    pub pin_dir: PathBuf,
    /// Directory for desired state; survives restarts (and reboots on a host).
    pub state_dir: PathBuf,
    /// The gRPC unix socket.
    pub socket: PathBuf,
    /// Address for Prometheus metrics, e.g. `127.0.0.1:9690`; None serves none.
    pub metrics_addr: Option<String>,
    /// Address to serve Hubble's Observer API on over TCP (Hubble's agent
    /// port is 4244); None: only on the unix socket.
    pub hubble_listen: Option<String>,
    /// Hubble's metric families on the metrics endpoint (`--hubble-metrics`);
    /// empty serves none.
    pub hubble_metrics: crate::hubble::metrics::MetricsConfig,
    /// How long the series of a deleted pod stay (`--hubble-metrics-ttl`).
    pub hubble_metrics_ttl: std::time::Duration,
    /// Flows kept for GetFlows (`--hubble-event-buffer-capacity`).
    pub hubble_event_buffer_capacity: usize,
    /// Flows written to a file (`--hubble-export-file-path`); None writes none.
    pub hubble_export: Option<crate::hubble::export::ExportConfig>,
    /// The lab this agent belongs to, if any (for display).
    pub lab: Option<String>,
    /// The cgroup directory that holds this node's workloads; None on a host,
    /// where the whole cgroup hierarchy is the node.
    pub node_cgroup: Option<PathBuf>,
    /// The cgroup2 mount.
    pub cgroup2: PathBuf,
    /// Keep the kernel's per-program run-time accounting on while the agent
    /// runs, instead of only during `weir status --sample` windows.
    pub bpf_stats_always: bool,
    /// Cgroups (directories) whose processes the socket load balancer leaves alone.
    pub socket_lb_opt_out: Vec<PathBuf>,
    /// Pods' DNS and HTTP/1.x messages reported as L7 flows (`--no-l7-flows` turns it off).
    pub l7_flows: bool,
    /// With `l7_flows`: HTTPS messages from OpenSSL's probes too
    /// (`--no-tls-flows` turns only these off).
    pub tls_flows: bool,
    /// How often backends are probed; a failing one is quarantined until it passes.
    pub health_interval: std::time::Duration,
    /// The ports a Service's nodePort may take (kube-apiserver's --service-node-port-range).
    pub service_node_port_range: std::ops::RangeInclusive<u16>,
    /// Runtime security: None leaves it off.
    pub runtime: Option<RuntimeConfig>,
    /// Carry pod traffic on Weir's pod path (bpf_redirect_peer into pods,
    /// FIB-routed out of the node), from the pods file.
    pub pod_routing: bool,
    /// The lab's pods (JSON): pod attribution and selectors for runtime
    /// security, endpoints for the pod path.
    pub pods_file: Option<PathBuf>,
    /// The cluster's CIDRs, every node's pod CIDR and address (pod path):
    /// pod traffic to anywhere else off the node is masqueraded as the node.
    pub pod_cidrs: Vec<(std::net::Ipv4Addr, u8)>,
    /// Overlay mode: the VXLAN device (collect-metadata) and, per other
    /// node's pod CIDR, that node's address.
    pub overlay: Option<Overlay>,
    /// Every node of the cluster by name, with its address (network policy).
    pub cluster_nodes: std::collections::BTreeMap<String, std::net::Ipv4Addr>,
    /// Dual-stack: every node's IPv6 address.
    pub cluster_nodes6: std::collections::BTreeMap<String, std::net::Ipv6Addr>,
    /// etcd client URLs for identity allocation; empty: the state dir.
    pub etcd: Vec<String>,
    /// This node's cluster in a mesh, and what the other clusters publish.
    pub cluster: Option<crate::clustermesh::MeshConfig>,
    /// The XDP L4 load balancer's interface (`weir lb`); None: not running.
    pub lb_interface: Option<String>,
    /// Interfaces where a real server strips the load balancer's encapsulation.
    pub lb_decap_interfaces: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Overlay {
    pub device: String,
    pub tunnels: Vec<((std::net::Ipv4Addr, u8), std::net::Ipv4Addr)>,
}

/// Runtime security's flags.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Use BPF LSM hooks where the kernel allows them.
    pub lsm: bool,
    /// Post connect/bind/listen/accept even when no rule selects them.
    pub network_events: bool,
    /// Processes the cache holds before it evicts.
    pub cache_size: usize,
    /// The kernel-to-agent ring buffer's size in bytes.
    pub ring_bytes: u32,
}

impl AgentConfig {
    /// Where the socket load balancer attaches: the node's cgroup, or the
    /// whole hierarchy on a host.
    pub fn socket_lb_cgroup(&self) -> PathBuf {
        self.node_cgroup.clone().unwrap_or_else(|| self.cgroup2.clone())
    }
}

/// What the agent is meant to run, persisted so a restart with no flags
/// resumes the same job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    pub node: String,
    pub interfaces: Vec<String>,
    /// Pods' veths (node side): the datapath runs there with generic XDP.
    #[serde(default)]
    pub pod_interfaces: Vec<String>,
}

const DESIRED: &str = "desired.json";

impl AgentConfig {
    /// Merges flags with the stored desired state, stores the result and returns it.
    pub fn desired_state(&self) -> Result<DesiredState, AgentError> {
        let err = |source| AgentError::State { path: self.state_dir.clone(), source };
        std::fs::create_dir_all(&self.state_dir).map_err(err)?;
        let path = self.state_dir.join(DESIRED);
        let stored: Option<DesiredState> =
            std::fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str(&t).ok());
        let (interfaces, pod_interfaces) = if !self.interfaces.is_empty() {
            (self.interfaces.clone(), self.pod_interfaces.clone())
        } else if let Some(stored) = stored.as_ref().filter(|s| !s.interfaces.is_empty()) {
            (stored.interfaces.clone(), stored.pod_interfaces.clone())
        } else {
            (vec![default_route_interface().ok_or(AgentError::NoInterface)?], self.pod_interfaces.clone())
        };
        let desired = DesiredState { node: self.node.clone(), interfaces, pod_interfaces };
        let json = serde_json::to_string_pretty(&desired).map_err(|e| err(std::io::Error::other(e)))?;
        // Write-then-rename: a crash never leaves a torn file behind.
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)?;
        Ok(desired)
    }
}

/// The interface of the IPv4 default route in this network namespace.
fn default_route_interface() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    parse_default_route(&routes)
}

fn parse_default_route(routes: &str) -> Option<String> {
    routes.lines().skip(1).find_map(|line| {
        let mut fields = line.split_whitespace();
        let iface = fields.next()?;
        (fields.next()? == "00000000").then(|| iface.to_string())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_default_route_interface() {
        let table = "Iface\tDestination\tGateway\n\
            eth1\t0000A8C0\t00000000\n\
            eth0\t00000000\t0102A8C0\n";
        assert_eq!(super::parse_default_route(table).as_deref(), Some("eth0"));
        assert_eq!(super::parse_default_route("Iface\tDestination\n"), None);
    }
}
