//! Flow events named for their readers: pods, labels, identities and rules
//! for `weir observe` streams and `--last`, the ring Hubble's GetFlows
//! reads, and Hubble's metric families.

use super::*;
use weir_bpf::policy::L7Kind;

/// Shared with the flow reader's thread.
#[derive(Debug)]
pub struct FlowShared {
    pub(super) node: String,
    pub(super) flow_node: String,
    /// Replaced whole on every change: each event keeps the one it was
    /// made under (its [`Naming`]).
    pub(super) context: RwLock<Arc<FlowContext>>,
    pub(super) tx: broadcast::Sender<Arc<pb::Flow>>,
    /// Flow events read (L7 events aside), by verdict code.
    pub read: [AtomicU64; 2],
    /// L7 events whose message the agent could not read (reported as
    /// L3/L4 flows without their record).
    pub l7_unparsed: AtomicU64,
    /// HTTPS messages a local server exchanged with a pod of another node,
    /// left to that node ([`FlowShared::on_tls`]).
    pub tls_elsewhere: AtomicU64,
    /// HTTPS messages between processes of the node and no pod of it, not
    /// reported ([`FlowShared::on_tls`]).
    pub tls_not_pods: AtomicU64,
    /// HTTP requests waiting for their response: their method and URL.
    pub(super) http_requests: std::sync::Mutex<std::collections::HashMap<HttpKey, Arc<crate::hubble::l7::HttpRequest>>>,
    /// The reader's events named and not yet delivered: one vector kept
    /// for every batch (glibc's malloc sweeps all its small free blocks
    /// before each allocation of 1 KiB or more, a tenth of the reader's
    /// time under load when each batch allocated its own).
    pub(super) delivering: std::sync::Mutex<Vec<NamedEvent>>,
    /// Events a stream that fell behind did not get.
    pub slow_stream: AtomicU64,
    /// The most recent flow events, for `weir observe --last` and Hubble's GetFlows.
    pub(super) recent: std::sync::Mutex<FlowRing<NamedEvent>>,
    /// Every flow event with its ring sequence number, for Hubble's followers.
    pub(super) followers: broadcast::Sender<(u64, NamedEvent)>,
    /// Chaos experiments by slot ("namespace/name"), kept by the chaos
    /// state: a flow a fault dropped names its experiment.
    pub chaos_names: ChaosNames,
    /// Hubble's metric families, when enabled.
    pub(super) hubble_metrics: Option<std::sync::Mutex<crate::hubble::metrics::HubbleMetrics>>,
    /// Names the processes the datapath found behind flows.
    pub processes: crate::hubble::process::ProcessNames,
    /// Which Service each (address, port, protocol) is; replaced whole when
    /// Services change.
    pub(super) services: RwLock<Arc<crate::hubble::services::ServiceNames>>,
}

/// Chaos experiments by their kernel slot, replaced whole on every change.
pub type ChaosNames = Arc<RwLock<Arc<BTreeMap<u32, ChaosName>>>>;

/// What names a flow event's pods, rule and chaos experiment: the state
/// when it was read from the kernel, so a flow read later (`--last`,
/// GetFlows, a slow follower) is not named by a policy or experiment
/// that replaced the one that decided it (a rule index or a chaos slot
/// can mean another rule or experiment by then).
#[derive(Debug, Clone)]
pub struct Naming {
    pub(crate) context: Arc<FlowContext>,
    pub(crate) chaos: Arc<BTreeMap<u32, ChaosName>>,
    /// An L7 event's message, read once when the event was: Hubble's
    /// record (a response with its request's method and URL, as Hubble's
    /// proxy names both, when the agent read the request). None for L3/L4
    /// events and for messages the agent could not read (counted).
    pub(crate) layer7: Option<crate::hubble::l7::L7Record>,
    /// The processes owning the source's and the destination's socket,
    /// where Weir saw them (the pod path's socket lookup, OpenSSL's
    /// probes), named when read: the pid may be gone or reused by the time
    /// a reader asks.
    pub(crate) processes: FlowProcesses,
    pub(crate) services: Arc<crate::hubble::services::ServiceNames>,
}

/// The source's and the destination's process.
pub type FlowProcesses = [Option<Arc<weir_proto::flow::WeirProcess>>; 2];

/// HTTP requests waiting for their response, by (client, server) address
/// and port; at most this many (then the table starts afresh: a response
/// whose request was forgotten lacks only its method and URL).
const HTTP_REQUESTS_MAX: usize = 4096;

type HttpKey = (IpAddr, u16, IpAddr, u16);

/// A flow event with its naming: shared by every event of a batch that
/// needs nothing of its own (no HTTP request, no process), so the ring
/// holds one pointer per event.
pub type NamedEvent = (FlowEvent, Arc<Naming>);

/// A chaos experiment as its flows name it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChaosName {
    /// "namespace/name".
    pub name: String,
    /// What its fault does to a packet it lets through ("delayed 100ms",
    /// "duplicated"); empty for faults that drop.
    pub effect: String,
}

/// Flow events remembered for `--last` by default (Hubble's ring holds
/// 4095; `--hubble-event-buffer-capacity` sets it).
pub const RECENT_FLOWS: usize = 8192;

pub(super) const STREAM_BUFFER: usize = 16384;

pub(super) fn protocol_name(protocol: u8) -> String {
    match protocol {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        132 => "SCTP".into(),
        other => other.to_string(),
    }
}

pub(crate) fn code_name(all: &[(u32, &'static str, &'static str)], code: u32) -> String {
    all.iter().find(|(c, _, _)| *c == code).map_or_else(|| code.to_string(), |(_, name, _)| name.to_string())
}

impl FlowShared {
    pub(super) fn endpoint(&self, ctx: &FlowContext, ip: IpAddr, identity: u32) -> pb::FlowEndpoint {
        let pod = ctx.pods.get(&ip);
        pb::FlowEndpoint {
            ip: ip.to_string(),
            identity,
            identity_name: reserved_name(identity)
                .map(str::to_string)
                .or_else(|| (identity >= weir_policy::identity::FIRST_CIDR).then(|| "cidr".to_string()))
                .unwrap_or_default(),
            namespace: pod.map(|p| p.namespace.clone()).unwrap_or_default(),
            pod: pod.map(|p| p.name.clone()).unwrap_or_default(),
            labels: pod.map(|p| p.labels.clone().into_iter().collect()).unwrap_or_default(),
        }
    }

    /// From now on, flows name Services by these.
    pub fn set_services(&self, names: crate::hubble::services::ServiceNames) {
        if let Ok(mut services) = self.services.write() {
            *services = Arc::new(names);
        }
    }

    /// The naming in force now (three reference counts, no copy).
    fn naming_now(&self) -> Naming {
        Naming {
            context: self.context.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
            chaos: self.chaos_names.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
            layer7: None,
            processes: [None, None],
            services: self.services.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
        }
    }

    /// An L7 event's message, read once. An HTTP request is remembered
    /// for its response; a message the agent cannot read is counted and
    /// has no record.
    fn read_l7(&self, event: &FlowEvent, message: &weir_bpf::policy::L7Message) -> Option<crate::hubble::l7::L7Record> {
        use crate::hubble::l7::{read_message, L7Record};
        let server = || crate::hubble::l7::server_host(event.dst, event.dport, message.tls);
        let request = match (message.kind, message.response) {
            (L7Kind::Http, true) => self
                .http_requests
                .lock()
                .ok()
                .and_then(|mut requests| requests.remove(&(event.dst, event.dport, event.src, event.sport))),
            _ => None,
        };
        match read_message(message, server, request) {
            Ok(record) => {
                if let (L7Record::Request(request), Ok(mut requests)) = (&record, self.http_requests.lock()) {
                    if requests.len() >= HTTP_REQUESTS_MAX {
                        requests.clear();
                    }
                    requests.insert((event.src, event.sport, event.dst, event.dport), request.clone());
                }
                Some(record)
            }
            Err(_) => {
                self.l7_unparsed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// An HTTPS message OpenSSL's probes saw, as an L7 flow: the socket's
    /// addresses named as any flow's, each process with the pod of its
    /// socket's address. As the pod path's L7 flows, a message is the
    /// client's node's to report: a server here does not report what a
    /// pod of another node asked (that node reports it, if its client
    /// uses OpenSSL; docs/observe.md).
    pub(super) fn on_tls(&self, message: crate::hubble::tls::Message) {
        let ctx = self.context.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let (src, dst) = (message.src.ip(), message.dst.ip());
        let client = if message.response { dst } else { src };
        if ctx.pods.get(&client).is_some_and(|p| !p.node.is_empty() && p.node != self.node) {
            self.tls_elsewhere.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Pods' traffic only: the node's own processes (an operator's curl,
        // apt) talking to no pod of this node are not Weir's to publish.
        let local_pod = |ip: &IpAddr| ctx.pods.get(ip).is_some_and(|p| p.node.is_empty() || p.node == self.node);
        if !local_pod(&src) && !local_pod(&dst) {
            self.tls_not_pods.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Each process's pod is its socket's address's, named with the flow.
        let processes = [message.source_process.map(Arc::new), message.destination_process.map(Arc::new)];
        let event = FlowEvent {
            time_ns: message.time_ns,
            src,
            dst,
            sport: message.src.port(),
            dport: message.dst.port(),
            protocol: 6,
            direction: weir_policy::Direction::Egress,
            verdict: flow_verdict::FORWARDED as u8,
            policy_match: policy_match::NONE as u8,
            drop_reason: 0,
            src_identity: ctx.identity_of(src),
            dst_identity: ctx.identity_of(dst),
            rule: 0,
            ifindex: 0,
            tcp_flags: 0,
            icmp_type: 0,
            src_pid: 0,
            dst_pid: 0,
            owner_comm: [0; 16],
            l7: Some(Arc::new(weir_bpf::policy::L7Message {
                kind: L7Kind::Http,
                response: message.response,
                latency_ns: message.latency_ns,
                data: message.data,
                tls: true,
            })),
        };
        self.on_event_of(event, Some(processes));
    }

    /// A batch of flow events as the kernel's ring held them, named under
    /// one naming (the state when the batch was read), pushed into the ring
    /// under one lock.
    pub(super) fn on_events(&self, batch: &mut weir_bpf::policy::FlowBatch) {
        // The ring's oldest flows are dropped before a batch with L7 events
        // is taken and named, which allocates what the ring keeps of them:
        // the allocator then reuses memory it has just freed. Dropped after,
        // the batch got memory freed a batch earlier, out of the cache by
        // then (a third of the reader's time went to those misses in malloc
        // under pod-to-pod HTTP traffic). Events with no message share
        // their naming and allocate nothing: each push overwrites the
        // oldest as it goes.
        if batch.has_messages() {
            if let Ok(mut ring) = self.recent.lock() {
                ring.make_room_warming(batch.len(), warm_for_drop);
            }
        }
        let base = Arc::new(self.naming_now());
        let mut named = self.delivering.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        named.extend(batch.drain().map(|mut event| {
            if event.l7.is_some() {
                fill_peer_identity(&mut event, &base.context);
            }
            let naming = self.name_event(&event, &base, None);
            forget_read_payload(&mut event, &naming);
            (event, naming)
        }));
        self.deliver(&mut named);
    }

    /// A flow event, with its processes when the caller named them (else
    /// from the pids the datapath found).
    fn on_event_of(&self, mut event: FlowEvent, processes: Option<FlowProcesses>) {
        let naming = self.name_event(&event, &Arc::new(self.naming_now()), processes);
        forget_read_payload(&mut event, &naming);
        self.deliver(&mut vec![(event, naming)]);
    }

    /// Counts `event` and names it: `base` with its L7 record and its
    /// processes.
    fn name_event(&self, event: &FlowEvent, base: &Arc<Naming>, processes: Option<FlowProcesses>) -> Arc<Naming> {
        let layer7 = match &event.l7 {
            Some(message) => self.read_l7(event, message),
            None => {
                if let Some(n) = self.read.get(usize::from(event.verdict)) {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                None
            }
        };
        let processes = processes.unwrap_or_else(|| {
            let [(src_pid, src_comm), (dst_pid, dst_comm)] = self.processes.ends(event);
            [self.processes.name(src_pid, &src_comm), self.processes.name(dst_pid, &dst_comm)]
        });
        if layer7.is_none() && processes.iter().all(Option::is_none) {
            return base.clone();
        }
        Arc::new(Naming { layer7, processes, ..(**base).clone() })
    }

    /// Into the ring (one lock for all), then to followers, metrics and
    /// Weir's own streams; `named` is left empty.
    fn deliver(&self, named: &mut Vec<NamedEvent>) {
        let followers = self.followers.receiver_count() > 0;
        let streams = self.tx.receiver_count() > 0;
        let readers = followers || streams || self.hubble_metrics.is_some();
        if let Ok(mut ring) = self.recent.lock() {
            if readers {
                for (event, naming) in named.iter() {
                    let sequence = ring.push(self.unix_ns(event), (event.clone(), naming.clone()));
                    // Under the ring's lock: followers get flows in the
                    // ring's order whichever thread delivers them.
                    if followers {
                        let _ = self.followers.send((sequence, (event.clone(), naming.clone())));
                    }
                }
            } else {
                for (event, naming) in named.drain(..) {
                    ring.push(self.unix_ns(&event), (event, naming));
                }
            }
        }
        for (event, naming) in named.drain(..) {
            if let Some(metrics) = &self.hubble_metrics {
                let flow = self.hubble_flow(&event, &naming);
                let facts = crate::hubble::metrics::facts(&event, &naming.context.rule_matches);
                if let Ok(mut m) = metrics.lock() {
                    m.count(&flow, facts);
                }
            }
            if streams {
                if let Some(flow) = self.describe(event, &naming) {
                    let _ = self.tx.send(Arc::new(flow));
                }
            }
        }
    }

    /// The `limit` most recent remembered flows that `request` wants, oldest first.
    pub fn recent(&self, request: &pb::FlowsRequest, limit: usize) -> Vec<pb::Flow> {
        let events = self.recent.lock().map(|r| r.within(Window::default())).unwrap_or_default();
        let mut flows: Vec<pb::Flow> = events
            .into_iter()
            .map(|(_, _, e)| e)
            .rev()
            .filter_map(|(e, naming)| self.describe(e, &naming))
            .filter(|f| wanted(f, request))
            .take(limit)
            .collect();
        flows.reverse();
        flows
    }

    /// A flow event named: pods, labels, identities, the rule.
    pub(super) fn describe(&self, event: FlowEvent, naming: &Naming) -> Option<pb::Flow> {
        let ctx = &naming.context;
        let rule = match u32::from(event.policy_match) {
            policy_match::RULE => ctx.rules.get(event.rule as usize).map(ToString::to_string),
            policy_match::CHAOS => naming.chaos.get(&event.rule).map(|c| c.name.clone()),
            _ => None,
        }
        .unwrap_or_default();
        let flow = pb::Flow {
            node: self.flow_node.clone(),
            time_unix_ns: self.unix_ns(&event),
            verdict: code_name(flow_verdict::ALL, u32::from(event.verdict)).to_lowercase(),
            drop_reason: if u32::from(event.verdict) == flow_verdict::DROPPED {
                code_name(drop_reason::ALL, event.drop_reason).to_lowercase()
            } else {
                String::new()
            },
            drop_reason_code: event.drop_reason,
            direction: event.direction.as_str().into(),
            protocol: protocol_name(event.protocol),
            source: Some(self.endpoint(ctx, event.src, event.src_identity)),
            destination: Some(self.endpoint(ctx, event.dst, event.dst_identity)),
            source_port: u32::from(event.sport),
            destination_port: u32::from(event.dport),
            rule,
            r#match: code_name(policy_match::ALL, u32::from(event.policy_match)).to_lowercase(),
            tcp_flags: u32::from(event.tcp_flags),
            hubble: Some(crate::hubble::flows::describe(&self.flow_node, self.unix_ns(&event), &event, naming)),
        };
        Some(flow)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<pb::Flow>> {
        self.tx.subscribe()
    }

    /// An event's wall-clock time: its CLOCK_BOOTTIME stamp by the wall
    /// clock's offset from it, kept current (`weir_bpf::clock`), so neither
    /// a suspend nor a wall-clock step since the agent started moves it.
    pub fn unix_ns(&self, event: &FlowEvent) -> u64 {
        weir_bpf::clock::boot_to_unix_ns(event.time_ns)
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The node's name in flows: `cluster/node` in a ClusterMesh (as the
    /// Peer service names it, so two clusters' `node-a` stay apart), else
    /// the node's.
    pub fn flow_node(&self) -> &str {
        &self.flow_node
    }

    /// `read` of the ring as it is now, under its lock (no copy).
    pub fn with_ring<T>(&self, read: impl FnOnce(&FlowRing<NamedEvent>) -> T) -> T {
        match self.recent.lock() {
            Ok(ring) => read(&ring),
            Err(poisoned) => read(&poisoned.into_inner()),
        }
    }

    /// A copy of the ring as it is now.
    pub fn ring(&self) -> FlowRing<NamedEvent> {
        self.recent.lock().map(|r| r.clone()).unwrap_or_else(|_| FlowRing::new(RECENT_FLOWS))
    }

    /// The sequence number of the newest flow in the ring, without copying it.
    pub fn last_sequence(&self) -> u64 {
        self.recent.lock().map(|r| r.last_sequence()).unwrap_or(0)
    }

    /// (flows in the ring, its capacity, flows seen since start).
    pub fn ring_status(&self) -> (u64, u64, u64) {
        self.recent.lock().map(|r| (r.len() as u64, r.capacity() as u64, r.seen())).unwrap_or((0, 0, 0))
    }

    /// Every flow event from now on, with its ring sequence number.
    pub fn follow(&self) -> broadcast::Receiver<(u64, NamedEvent)> {
        self.followers.subscribe()
    }

    /// Tells Hubble's metrics which pods exist now: series of those gone
    /// expire after the TTL.
    pub(super) fn hubble_pods_now(&self, records: &[PodRecord]) {
        let Some(metrics) = &self.hubble_metrics else { return };
        let pods = records.iter().map(|r| format!("{}/{}", r.namespace, r.name)).collect();
        if let Ok(mut m) = metrics.lock() {
            // Expired here too, so memory stays bounded when nobody scrapes.
            let now = weir_bpf::ktime_now_ns();
            m.expire(now);
            m.pods_now(now, &pods);
        }
    }

    /// Hubble's families, after expiring what the TTL has passed for;
    /// `lost` is Weir's flow-event losses by cause. Empty when off.
    pub(super) fn hubble_metrics_text(&self, lost: &[(&'static str, u64)]) -> String {
        let Some(metrics) = &self.hubble_metrics else { return String::new() };
        let Ok(mut m) = metrics.lock() else { return String::new() };
        m.expire(weir_bpf::ktime_now_ns());
        // The kernel's ring is Hubble's perf ring; a follower that fell
        // behind missed what Hubble's ring reader would.
        let by_source = |cause: &str| lost.iter().filter(|(c, _)| c.eq_ignore_ascii_case(cause)).map(|(_, n)| n).sum();
        let sources = [
            ("perf_event_ring_buffer", lost.iter().filter(|(c, _)| *c != "slow_stream").map(|(_, n)| n).sum()),
            ("hubble_ring_buffer", by_source("slow_stream")),
        ];
        let mut out = String::new();
        m.render(&mut out, &sources);
        out
    }

    /// A flow event as Hubble's `flow.Flow`.
    pub fn hubble_flow(&self, event: &FlowEvent, naming: &Naming) -> weir_proto::flow::Flow {
        let mut flow = crate::hubble::flows::describe(&self.flow_node, self.unix_ns(event), event, naming);
        // A packet a fault dropped or changed names its experiment, and a
        // changed one what was done, which the chaos state keeps.
        if u32::from(event.policy_match) == policy_match::CHAOS {
            if let Some(weir) = flow.weir.as_mut() {
                let chaos = naming.chaos.get(&event.rule).cloned().unwrap_or_default();
                weir.rule = chaos.name;
                if u32::from(event.verdict) == flow_verdict::FORWARDED {
                    weir.chaos = chaos.effect;
                }
            }
        }
        flow
    }
}

/// Reads what dropping a flow the ring overwrites touches of its own (the
/// batch's naming, process and context are shared and warm): reference
/// counts and a request's URL.
fn warm_for_drop((event, naming): &NamedEvent) -> usize {
    use crate::hubble::l7::L7Record;
    let mut touched = Arc::strong_count(naming);
    if let Some(message) = &event.l7 {
        touched += Arc::strong_count(message);
    }
    if let Some(L7Record::Request(request) | L7Record::Response { request: Some(request), .. }) = &naming.layer7 {
        touched += Arc::strong_count(request) + usize::from(request.url.as_bytes().first().copied().unwrap_or(0));
    }
    touched
}

/// An L7 event's copy of its message, once read into its record, is not
/// kept: the ring holds up to millions of events.
fn forget_read_payload(event: &mut FlowEvent, naming: &Naming) {
    if naming.layer7.is_none() {
        return;
    }
    if let Some(message) = event.l7.as_mut().and_then(Arc::get_mut) {
        message.data = Vec::new();
    }
}

/// Does a flow match a stream's filter?
pub fn wanted(flow: &pb::Flow, request: &pb::FlowsRequest) -> bool {
    let is = |filter: &str, e: &Option<pb::FlowEndpoint>| {
        e.as_ref().is_some_and(|e| match filter.split_once('/') {
            Some((ns, name)) => e.namespace == ns && e.pod == name,
            None => e.namespace == filter,
        })
    };
    let labelled = |e: &Option<pb::FlowEndpoint>| {
        e.as_ref().is_some_and(|e| {
            request.labels.iter().all(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                e.labels.get(k).map(String::as_str) == Some(v)
            })
        })
    };
    let identity = |e: &Option<pb::FlowEndpoint>| e.as_ref().is_some_and(|e| e.identity == request.identity);
    (request.pod.is_empty() || is(&request.pod, &flow.source) || is(&request.pod, &flow.destination))
        && (request.from_pod.is_empty() || is(&request.from_pod, &flow.source))
        && (request.to_pod.is_empty() || is(&request.to_pod, &flow.destination))
        && (request.identity == 0 || identity(&flow.source) || identity(&flow.destination))
        && (request.labels.is_empty() || labelled(&flow.source) || labelled(&flow.destination))
        && (request.verdict.is_empty() || request.verdict.eq_ignore_ascii_case(&flow.verdict))
        && (request.protocol.is_empty() || request.protocol.eq_ignore_ascii_case(&flow.protocol))
}

/// An L7 event's peer identity, which the datapath leaves to the agent
/// (bpf/api/l7.h): the ipcache's, as the datapath's own lookup would give.
fn fill_peer_identity(event: &mut FlowEvent, ctx: &FlowContext) {
    let (peer, identity) = match event.direction {
        weir_policy::Direction::Ingress => (event.src, &mut event.src_identity),
        weir_policy::Direction::Egress => (event.dst, &mut event.dst_identity),
    };
    if *identity == weir_bpf::policy::L7_PEER_IDENTITY_UNSET {
        *identity = ctx.identity_of(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn end(ns: &str, pod: &str, identity: u32, app: &str) -> Option<pb::FlowEndpoint> {
        Some(pb::FlowEndpoint {
            namespace: ns.into(),
            pod: pod.into(),
            identity,
            labels: [("app".to_string(), app.to_string())].into_iter().collect(),
            ..Default::default()
        })
    }

    #[test]
    pub(super) fn stream_filters_select_by_side_identity_labels_verdict_and_protocol() {
        let flow = pb::Flow {
            verdict: "dropped".into(),
            protocol: "TCP".into(),
            source: end("front", "web", 256, "web"),
            destination: end("back", "api", 257, "api"),
            ..Default::default()
        };
        let yes = |r: pb::FlowsRequest| assert!(wanted(&flow, &r), "{r:?}");
        let no = |r: pb::FlowsRequest| assert!(!wanted(&flow, &r), "{r:?}");
        yes(pb::FlowsRequest::default());
        yes(pb::FlowsRequest { pod: "back/api".into(), ..Default::default() });
        yes(pb::FlowsRequest { pod: "front".into(), ..Default::default() });
        yes(pb::FlowsRequest { from_pod: "front/web".into(), to_pod: "back".into(), ..Default::default() });
        no(pb::FlowsRequest { from_pod: "back/api".into(), ..Default::default() });
        yes(pb::FlowsRequest { identity: 257, ..Default::default() });
        no(pb::FlowsRequest { identity: 999, ..Default::default() });
        yes(pb::FlowsRequest { labels: vec!["app=web".into()], ..Default::default() });
        no(pb::FlowsRequest { labels: vec!["app=db".into()], ..Default::default() });
        yes(pb::FlowsRequest { verdict: "DROPPED".into(), protocol: "tcp".into(), ..Default::default() });
        no(pb::FlowsRequest { verdict: "forwarded".into(), ..Default::default() });
        no(pb::FlowsRequest { protocol: "UDP".into(), ..Default::default() });
    }
}
