//! The XDP L4 load balancer on this node (`weir lb`): attached at XDP on
//! `--lb-interface` and configured by one XdpLoadBalancer document, whose
//! every change is a map update (the plan keeps VIP and real indexes);
//! decapsulation at tc ingress on `--lb-decap-interface` for a real server.
//!
//! Services of `loadBalancerClass: weir.dev/xdp` add their VIPs to the
//! document's (weir_lb::services): the agent hands them over whenever its
//! Services or EndpointSlices change.
//!
//! The applied document is kept in the state dir; after a restart the
//! agent plans it, with the Services' VIPs it restored, over the indexes
//! the kernel's tables hold, so nothing the kernel forwards changes. The
//! first write waits for the Services ([`LbState::set_services`]): a
//! document installed alone would take their VIPs out for a moment.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use weir_bpf::datapath::PinLayout;
use weir_bpf::xlb::{self, XlbMaps};
use weir_bpf::BpfError;
use weir_lb::hash::{FlowTuple, HashInput};
use weir_lb::plan::{self, Plan};
use weir_lb::services::{self as service_vips, ClusterNodes, ServiceVips};
use weir_lb::spec::{self, Forwarding, LoadBalancer, RealKey, XdpLoadBalancer};
use weir_proto::agent::v1 as pb;

mod edit;
use weir_service::HealthCheck;

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("{0}")]
    Spec(String),
    #[error("the XDP load balancer is not running on this node (start the agent with --lb-interface)")]
    NotRunning,
    #[error("{what} {path}: {source}")]
    State {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Bpf(#[from] BpfError),
}

#[derive(Debug)]
pub struct LbState {
    pins: PinLayout,
    /// The interface balanced at XDP, with the maps.
    balancer: Option<(String, XlbMaps)>,
    decap_interfaces: Vec<String>,
    state_file: PathBuf,
    /// The applied XdpLoadBalancer document, as written (None before any:
    /// `weir lb vip add` then starts one) and validated (empty before any).
    written: Option<XdpLoadBalancer>,
    document: LoadBalancer,
    /// The VIPs of Services of loadBalancerClass weir.dev/xdp; None until
    /// the agent has handed them over once (nothing is written before).
    services: Option<ServiceVips>,
    /// Where this cluster's nodes are: Service VIPs' reals are nodes.
    nodes: ClusterNodes,
    /// What of the Services could not be served, and why.
    left_out: Vec<String>,
    /// The document with the Services' VIPs (weights as written) and the
    /// plan in the kernel (unhealthy reals at weight 0).
    current: Option<(LoadBalancer, Plan)>,
    /// (VIP name, real) pairs whose last probe failed, and why.
    unhealthy: BTreeMap<(String, RealKey), String>,
}

/// One health probe of one real: the VIP's check sent to `target`,
/// marked so the load balancer's tc egress program encapsulates it to the
/// real (0: NAT mode, straight to the real).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LbProbe {
    pub vip: String,
    pub real: RealKey,
    pub check: HealthCheck,
    pub target: SocketAddr,
    pub mark: u32,
}

fn bpf_counter(name: &str, c: weir_bpf::api::Counter) -> pb::LbCounter {
    pb::LbCounter { name: name.to_string(), packets: c.packets, bytes: c.bytes }
}

impl LbState {
    /// Attaches what the flags ask for; None when they ask for nothing.
    pub fn start(
        pin_dir: &std::path::Path,
        state_dir: &std::path::Path,
        interface: Option<&str>,
        decap_interfaces: &[String],
        nodes: ClusterNodes,
    ) -> Result<Option<Self>, LbError> {
        if interface.is_none() && decap_interfaces.is_empty() {
            return Ok(None);
        }
        let pins = xlb::pin_layout(pin_dir);
        let mut state = Self {
            pins: pins.clone(),
            balancer: None,
            decap_interfaces: decap_interfaces.to_vec(),
            state_file: state_dir.join("xlb.yaml"),
            written: None,
            document: empty(),
            services: None,
            nodes,
            left_out: Vec::new(),
            current: None,
            unhealthy: BTreeMap::new(),
        };
        if let Some(interface) = interface {
            xlb::establish(&pins, interface)?;
            state.balancer = Some((interface.to_string(), XlbMaps::open(&pins.maps())?));
            match std::fs::read_to_string(&state.state_file) {
                // Written with the Services' VIPs, at the first set_services.
                Ok(yaml) => (state.written, state.document) = parse_document(&yaml).map(|(w, d)| (Some(w), d))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(LbError::State { what: "reading", path: state.state_file.clone(), source }),
            }
        }
        for interface in decap_interfaces {
            xlb::establish_decap(&pins, interface)?;
        }
        Ok(Some(state))
    }

    fn maps(&self) -> Result<&XlbMaps, LbError> {
        self.balancer.as_ref().map(|(_, m)| m).ok_or(LbError::NotRunning)
    }

    /// Applies a whole configuration; returns what changed.
    pub fn apply(&mut self, yaml: &str) -> Result<Vec<String>, LbError> {
        let (written, document) = parse_document(yaml)?;
        let previous = std::mem::replace(&mut self.document, document);
        let lines = match self.install() {
            Ok(lines) => lines,
            Err(err) => {
                self.document = previous;
                return Err(err);
            }
        };
        self.written = Some(written);
        let tmp = self.state_file.with_extension("yaml.tmp");
        std::fs::write(&tmp, yaml)
            .and_then(|()| std::fs::rename(&tmp, &self.state_file))
            .map_err(|source| LbError::State { what: "writing", path: self.state_file.clone(), source })?;
        Ok(lines)
    }

    /// The document as the kernel gets it: unhealthy reals at weight 0, so
    /// they leave the ring while their established connections stay.
    fn effective(&self, lb: &LoadBalancer) -> LoadBalancer {
        let mut effective = lb.clone();
        for vip in &mut effective.vips {
            for real in &mut vip.reals {
                if self.unhealthy.contains_key(&(vip.name.clone(), real.key)) {
                    real.weight = 0;
                }
            }
        }
        effective
    }

    /// Takes the VIPs of the Services of loadBalancerClass weir.dev/xdp;
    /// the first call also writes the document restored at start. Returns
    /// what changed (nothing when they are as they were).
    pub fn set_services(&mut self, vips: ServiceVips) -> Result<Vec<String>, LbError> {
        if self.services.as_ref() == Some(&vips) {
            return Ok(Vec::new());
        }
        let previous = self.services.replace(vips);
        if self.balancer.is_none() {
            return Ok(Vec::new());
        }
        // Refused or half written: the next sync, even of the same VIPs,
        // writes again (from what the kernel holds).
        self.install().inspect_err(|_| self.services = previous)
    }

    /// The nodes Service VIPs' reals are looked up in.
    pub fn nodes(&self) -> &ClusterNodes {
        &self.nodes
    }

    /// Plans the document and the Services' VIPs (health applied) against
    /// what the kernel holds, and writes the changes.
    fn install(&mut self) -> Result<Vec<String>, LbError> {
        let empty = ServiceVips::default();
        let (lb, left_out) = service_vips::merge(&self.document, self.services.as_ref().unwrap_or(&empty));
        for line in left_out.iter().filter(|l| !self.left_out.contains(l)) {
            tracing::warn!(problem = %line, "a LoadBalancer Service is not served");
        }
        self.left_out = left_out;
        let effective = self.effective(&lb);
        let maps = self.maps()?;
        let (new, changes) = match &self.current {
            Some((_, old)) => {
                let new = plan::plan(&effective, Some(old));
                let changes = plan::changes(Some(old), &new);
                (new, changes)
            }
            None => {
                let kernel = maps.kernel_state()?;
                let new = plan::plan_over(&effective, &kernel);
                let changes = plan::changes_from_kernel(&kernel, &new);
                (new, changes)
            }
        };
        if let Err(err) = maps.apply(&changes) {
            // Half written: the next change starts from what the kernel
            // holds, and writes rings whole (a delta from the old plan
            // would leave the half-written slots as they are).
            self.current = None;
            return Err(err.into());
        }
        let mut lines = Vec::new();
        for key in &changes.vips_deleted {
            lines.push(format!("VIP {} port {} {} removed", key.address, key.port, spec::protocol_name(key.proto)));
        }
        for vip in &new.vips {
            if changes.vips_written.iter().any(|(k, _)| *k == vip.vip.key) {
                lines.push(format!("VIP {} ({}) written", vip.vip.name, vip.vip.key.address));
            }
        }
        if !changes.rings_written.is_empty() {
            lines.push(format!("{} ring(s) written", changes.rings_written.len()));
        }
        for (index, slots) in &changes.ring_slots_written {
            let name = new.vips.iter().find(|v| v.index == *index).map_or("?", |v| v.vip.name.as_str());
            lines.push(format!("VIP {name}: {} ring slot(s) rewritten", slots.len()));
        }
        if !changes.reals_written.is_empty() || !changes.reals_cleared.is_empty() {
            lines.push(format!(
                "{} real(s) written, {} cleared",
                changes.reals_written.len(),
                changes.reals_cleared.len()
            ));
        }
        if lines.is_empty() {
            lines.push("unchanged".into());
        }
        self.current = Some((lb, new));
        Ok(lines)
    }

    /// The probes of a round: each real of each VIP with a health check,
    /// through the VIP's own forwarding to the VIP's address and the
    /// check's port (NAT mode: to the real's address and port; 4in6 reals
    /// are not probed).
    pub fn probes(&self) -> Vec<LbProbe> {
        let Some((lb, plan)) = &self.current else { return Vec::new() };
        let mut probes = Vec::new();
        for vip in lb.vips.iter().filter(|v| !v.local && v.probe.check != HealthCheck::None) {
            let port = if vip.probe.port != 0 { vip.probe.port } else { vip.key.port };
            for real in &vip.reals {
                let Some((&index, _)) = plan.reals.iter().find(|(_, k)| **k == real.key) else { continue };
                let (target, mark) = match vip.forwarding {
                    Forwarding::Nat => {
                        let port = if vip.probe.port == 0 && real.key.port != 0 { real.key.port } else { port };
                        (SocketAddr::new(real.key.address, port), 0)
                    }
                    _ if real.key.address.is_ipv4() != vip.key.address.is_ipv4() => continue,
                    forwarding => {
                        (SocketAddr::new(vip.key.address, port), xlb::probe_mark(index, forwarding == Forwarding::Gue))
                    }
                };
                let check = vip.probe.check.clone();
                probes.push(LbProbe { vip: vip.name.clone(), real: real.key, check, target, mark });
            }
        }
        probes
    }

    /// Takes a round's results: reals that failed leave their VIP's ring,
    /// those that passed come back. Returns whether the rings changed.
    pub fn settle_probes(&mut self, results: Vec<((String, RealKey), Result<(), String>)>) -> Result<bool, LbError> {
        let failing: BTreeMap<(String, RealKey), String> =
            results.into_iter().filter_map(|(key, result)| Some((key, result.err()?))).collect();
        let changed = !failing.keys().eq(self.unhealthy.keys());
        for ((vip, real), why) in failing.iter().filter(|(k, _)| !self.unhealthy.contains_key(*k)) {
            tracing::warn!(vip, real = %real.address, why, "real failed its health probe; out of the ring");
        }
        for (vip, real) in self.unhealthy.keys().filter(|k| !failing.contains_key(*k)) {
            tracing::info!(vip, real = %real.address, "real passed its health probe; back in the ring");
        }
        let previous = std::mem::replace(&mut self.unhealthy, failing);
        if !changed {
            return Ok(false);
        }
        if self.current.is_some() {
            // Not written: the next round, even with the same verdicts, tries again.
            self.install().inspect_err(|_| self.unhealthy = previous)?;
        }
        Ok(true)
    }

    pub fn status(&self) -> Result<pb::LbStatusResponse, LbError> {
        let mut out = pb::LbStatusResponse {
            decap_interfaces: self.decap_interfaces.clone(),
            left_out: self.left_out.clone(),
            ..Default::default()
        };
        if !self.decap_interfaces.is_empty() {
            let (done, failed) = xlb::decap_counters(&self.pins)?;
            out.decapsulated = Some(bpf_counter("decapsulated", done));
            out.decap_failed = Some(bpf_counter("decap_failed", failed));
        }
        let Some((interface, maps)) = &self.balancer else {
            return Ok(out);
        };
        out.interface = interface.clone();
        for ((_, name, _), c) in weir_bpf::api::xlb_counter::ALL.iter().zip(maps.counters()?) {
            out.counters.push(bpf_counter(name, c));
        }
        for (code, c) in maps.drops()? {
            let name = weir_bpf::api::describe(weir_bpf::api::drop_reason::ALL, code).map(|d| d.0).unwrap_or("?");
            out.drops.push(bpf_counter(name, c));
        }
        let probed: BTreeMap<(String, RealKey), HealthCheck> =
            self.probes().into_iter().map(|p| ((p.vip, p.real), p.check)).collect();
        if let Some((lb, plan)) = &self.current {
            out.next_hop = lb.next_hop.name().into();
            if lb.next_hop == spec::NextHop::Gateway {
                out.gateway_mac = lb.gateway_mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
            }
            for planned in &plan.vips {
                // Weights as written; the plan's are health-adjusted.
                let Some(vip) = lb.vips.iter().find(|v| v.key == planned.vip.key) else { continue };
                let traffic = maps.vip_traffic(planned.index)?;
                let mut reals = Vec::new();
                for real in &vip.reals {
                    let index = plan.reals.iter().find(|(_, k)| **k == real.key).map(|(i, _)| *i).unwrap_or(0);
                    let traffic = maps.real_traffic(index)?;
                    reals.push(pb::LbReal {
                        address: real.key.address.to_string(),
                        port: u32::from(real.key.port),
                        weight: real.weight,
                        index,
                        slots: planned.ring.iter().filter(|r| **r == index && index != 0).count() as u32,
                        packets: traffic.packets,
                        bytes: traffic.bytes,
                        unhealthy: self.unhealthy.contains_key(&(vip.name.clone(), real.key)),
                        probed: probed.contains_key(&(vip.name.clone(), real.key)),
                        probe: probed
                            .get(&(vip.name.clone(), real.key))
                            .map(weir_lb::health::describe)
                            .unwrap_or_default(),
                        probe_failure: self.unhealthy.get(&(vip.name.clone(), real.key)).cloned().unwrap_or_default(),
                    });
                }
                out.vips.push(pb::LbVip {
                    name: vip.name.clone(),
                    address: vip.key.address.to_string(),
                    port: u32::from(vip.key.port),
                    protocol: spec::protocol_name(vip.key.proto).into(),
                    forwarding: vip.forwarding.name().into(),
                    hash: format!("{:?}", vip.hash),
                    lru_bypass: vip.lru_bypass,
                    local: vip.local,
                    index: planned.index,
                    packets: traffic.packets,
                    bytes: traffic.bytes,
                    reals,
                });
            }
        }
        Ok(out)
    }

    /// Where a packet would go: the plan's choice, and the packet run
    /// through a private copy of the program holding the same tables (and
    /// the live connection, when the kernel has one), so what comes out is
    /// what the kernel would send.
    pub fn simulate(&self, request: &pb::LbSimulateRequest) -> Result<pb::LbSimulateResponse, LbError> {
        let maps = self.maps()?;
        let bad = |what: &str| LbError::Spec(format!("simulate: {what}"));
        let client = spec::parse_address("client", &request.client).map_err(|e| LbError::Spec(e.to_string()))?;
        let vip = spec::parse_address("vip", &request.vip).map_err(|e| LbError::Spec(e.to_string()))?;
        if client.is_ipv4() != vip.is_ipv4() {
            return Err(bad("the client and the VIP must be of one family"));
        }
        let port = |p: u32, what: &str| u16::try_from(p).map_err(|_| bad(&format!("{what} {p} is not a port")));
        let (client_port, vip_port) = (port(request.client_port, "client port")?, port(request.vip_port, "VIP port")?);
        let proto = match request.protocol.to_ascii_uppercase().as_str() {
            "TCP" => 6,
            "UDP" => 17,
            other => return Err(bad(&format!("protocol {other:?}: TCP or UDP"))),
        };
        let tuple = FlowTuple { client, client_port, vip_port, proto };
        let packet = build_packet(client, vip, client_port, vip_port, proto, request.established);
        let plan = self.current.as_ref().map(|(_, p)| p.clone()).unwrap_or_else(|| plan::plan(&empty(), None));
        let mut out = pb::LbSimulateResponse { packet_in: hex(&packet), ..Default::default() };
        let live = maps.connection(client, client_port, vip, vip_port, proto);
        let choice = plan.choose(&tuple, vip);
        let why;
        match (&choice, plan.vip_for(vip, vip_port, proto)) {
            (Some(choice), Some(planned)) => {
                out.vip = choice.vip.clone();
                let ring_why = |reason: &str| match (choice.slot, choice.source_route) {
                    (_, Some((prefix, len))) => {
                        format!("{reason}: the client is inside source route {prefix}/{len} of VIP {}", choice.vip)
                    }
                    (slot, None) => match slot {
                        Some(slot) => format!(
                            "{reason}: slot {slot} of VIP {}'s ring (hash {:#010x} of the {})",
                            choice.vip,
                            choice.hash,
                            match planned.vip.hash {
                                HashInput::ClientAddressAndPort => "client's address and port",
                                HashInput::ClientAddress => "client's address",
                                HashInput::DestinationPort => "VIP port",
                            }
                        ),
                        None => "a local VIP: delivered to this host's stack".into(),
                    },
                };
                let syn = proto == 6 && !request.established;
                why = if planned.vip.local {
                    ring_why("local")
                } else if planned.vip.lru_bypass {
                    ring_why("LRU bypass: every packet takes the ring")
                } else if syn {
                    ring_why("a SYN opens a connection and takes the ring")
                } else if let Some(real) = live.filter(|r| plan.real(*r).is_some()) {
                    format!("the connection table holds this connection (real index {real})")
                } else {
                    ring_why("no connection in the table (an LRU miss) takes the ring")
                };
                let real = if planned.vip.local || planned.vip.lru_bypass || syn {
                    choice.real.map(|r| r.1)
                } else {
                    live.and_then(|r| plan.real(r).copied()).or(choice.real.map(|r| r.1))
                };
                out.real = real
                    .map(|k| if k.port == 0 { k.address.to_string() } else { format!("{}:{}", k.address, k.port) })
                    .unwrap_or_default();
            }
            _ => why = "no VIP: passed to the stack".to_string(),
        }
        out.why = why;
        let changes = plan::changes(None, &plan);
        // Next hop Route asks the kernel's routes as if the packet came in
        // on the balanced interface.
        let ingress = match (&self.balancer, plan.config.next_hop) {
            (Some((interface, _)), spec::NextHop::Route) => weir_bpf::datapath::ifindex(interface)?,
            _ => 0,
        };
        let (verdict, output) = xlb::with_private(|skel, private| -> Result<(u32, Vec<u8>), BpfError> {
            private.apply(&changes)?;
            if let (Some(real), false) = (live, proto == 6 && !request.established) {
                let index = plan.vip_for(vip, vip_port, proto).map(|v| v.index).unwrap_or(0);
                private.remember(client, client_port, vip, vip_port, proto, real, index)?;
            }
            let outcome = if ingress == 0 {
                weir_bpf::testrun::run_once(&skel.progs.weir_xlb, &packet)?
            } else {
                weir_bpf::testrun::run_xdp_on(&skel.progs.weir_xlb, &packet, ingress)?
            };
            Ok((outcome.verdict, outcome.output))
        })??;
        out.verdict = weir_bpf::testrun::verdict_name(verdict);
        out.packet_out = hex(&output);
        out.out_summary = weir_lb::frame::describe(&output);
        Ok(out)
    }
}

/// Hands the VIPs of `services`' Services of loadBalancerClass
/// weir.dev/xdp to the load balancer (none when the socket load balancer
/// is not running). The Services stay locked until the VIPs are written,
/// so two changes reach the kernel in the order they were made.
pub fn sync_services(
    services: Option<&std::sync::Mutex<crate::services::ServiceState>>,
    lb: &std::sync::Mutex<LbState>,
) -> Result<Vec<String>, LbError> {
    let poisoned = |what: &str| LbError::Spec(format!("the {what} state is poisoned by an earlier panic"));
    let services = services.map(|s| s.lock().map_err(|_| poisoned("service"))).transpose()?;
    let mut lb = lb.lock().map_err(|_| poisoned("load balancer"))?;
    let vips = match &services {
        Some(services) => service_vips::service_vips(services.cluster(), lb.nodes()),
        None => ServiceVips::default(),
    };
    lb.set_services(vips)
}

/// The document as written, and validated.
fn parse_document(yaml: &str) -> Result<(XdpLoadBalancer, LoadBalancer), LbError> {
    let bad = |e: weir_spec::SpecError| LbError::Spec(format!("XdpLoadBalancer: {e}"));
    let written: XdpLoadBalancer = weir_spec::parse_yaml(yaml).map_err(bad)?;
    let document = spec::validate(&written).map_err(bad)?;
    Ok((written, document))
}

fn empty() -> LoadBalancer {
    LoadBalancer {
        name: String::new(),
        next_hop: spec::NextHop::Sender,
        gateway_mac: [0; 6],
        encap_source4: spec::DEFAULT_ENCAP_SOURCE4,
        encap_source6: spec::DEFAULT_ENCAP_SOURCE6,
        flood_limit: spec::DEFAULT_FLOOD_LIMIT,
        quic_servers: Default::default(),
        vips: Vec::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn build_packet(client: IpAddr, vip: IpAddr, client_port: u16, vip_port: u16, proto: u8, established: bool) -> Vec<u8> {
    let packet = match (client, vip) {
        (IpAddr::V4(c), IpAddr::V4(v)) => weir_packet::Packet::eth().ipv4(c, v),
        (IpAddr::V6(c), IpAddr::V6(v)) => weir_packet::Packet::eth().ipv6(c, v),
        // Refused by the caller: one family.
        _ => weir_packet::Packet::eth(),
    };
    let flags = if established { weir_packet::TCP_ACK } else { weir_packet::TCP_SYN };
    let packet = if proto == 6 { packet.tcp(client_port, vip_port, flags) } else { packet.udp(client_port, vip_port) };
    packet.payload(b"weir lb simulate").build()
}

/// Probes every real each `interval` until `stop`; a real that fails a
/// round leaves its VIP's ring until it passes one.
pub async fn run_health_checks(
    state: std::sync::Arc<std::sync::Mutex<LbState>>,
    interval: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    type Key = (String, RealKey);
    type Outcome = Result<(), String>;
    let list = |s: &LbState, timeout: Duration| -> Vec<crate::probing::ProbeFuture<Key, Outcome>> {
        s.probes()
            .into_iter()
            .map(|p| -> crate::probing::ProbeFuture<Key, Outcome> {
                Box::pin(async move {
                    let outcome = crate::probing::probe(p.target, &p.check, p.mark, timeout).await;
                    ((p.vip, p.real), outcome)
                })
            })
            .collect()
    };
    let settle = |s: &mut LbState, results: Vec<(Key, Outcome)>, _started_ns: u64| {
        if let Err(e) = s.settle_probes(results) {
            tracing::error!(error = %e, "taking health into the rings failed");
        }
    };
    crate::probing::probe_rounds(state, interval, stop, list, settle).await;
}
