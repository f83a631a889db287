//! The service map's aggregate of the relay's merged flows (pure: flows and
//! the time in, views out). Nodes are the ends of flows: a pod
//! (`namespace/pod`), a reserved identity (`reserved:world`,
//! `reserved:host`, ...) or, for an end with neither, its address. An edge
//! is (source, destination, destination port, protocol), its counts kept in
//! time buckets so the view covers only the last `window`: flows by verdict,
//! drop reasons, L7 requests, HTTP status classes, DNS answers and DNS
//! errors (rcode other than 0), and its last flows for the flows panel.
//!
//! A reply (an L7 response, a DNS answer) is counted on its request's edge:
//! client to server, the server's port. Memory is bounded: at most
//! `max_nodes` nodes, `max_edges` edges and `flows_per_edge` flows each; a
//! flow that would need a node or an edge past the caps is counted as
//! refused and not kept, and edges with no flow within the window go.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;
use weir_proto::flow;

use super::reading::{counts_of, node_of, protocol_and_ports, summary, verdict_name};
use crate::hubble::flows::timestamp_ns;

const NS_PER_S: u64 = 1_000_000_000;

/// How much the aggregate holds, and over how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The view covers flows of this last stretch of time.
    pub window_ns: u64,
    /// Counts are kept in buckets this long (the window's granularity).
    pub bucket_ns: u64,
    /// Rates are flows (or requests) per second over this last stretch.
    pub rate_window_ns: u64,
    pub max_nodes: usize,
    pub max_edges: usize,
    /// The last flows kept per edge, for its flows panel.
    pub flows_per_edge: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            window_ns: 5 * 60 * NS_PER_S,
            bucket_ns: 10 * NS_PER_S,
            rate_window_ns: 60 * NS_PER_S,
            max_nodes: 1000,
            max_edges: 5000,
            flows_per_edge: 30,
        }
    }
}

/// One end of flows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub id: String,
    /// `pod`, `reserved` or `address`.
    pub kind: &'static str,
    /// The pod's namespace; empty for the others.
    pub namespace: String,
    /// The pod's name, the reserved identity's, or the address.
    pub name: String,
    /// The pod's `app` label, where it has one.
    pub app: String,
    pub cluster: String,
}

/// What an edge is: who talked to whom, on which port and protocol.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EdgeKey {
    pub from: String,
    pub to: String,
    pub port: u32,
    pub protocol: &'static str,
}

/// An edge's counts over some time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Every flow counted on the edge.
    pub flows: u64,
    pub forwarded: u64,
    pub dropped: u64,
    /// Flows seen on the destination's side (ingress, or where the
    /// direction is not known): a flow between nodes is seen twice, on
    /// egress at the source's node and on ingress at the destination's.
    pub at_destination: u64,
    /// Of those, the forwarded: flows that reached the destination.
    pub forwarded_at_destination: u64,
    /// Other verdicts (error, audit, ...).
    pub other: u64,
    /// Dropped flows by Weir's drop reason.
    pub drop_reasons: BTreeMap<String, u64>,
    /// L7 requests (HTTP requests, DNS queries).
    pub requests: u64,
    /// HTTP responses by status class: `2xx`, `4xx`, ...
    pub http: BTreeMap<String, u64>,
    pub dns_answers: u64,
    /// DNS answers whose rcode is not 0 (NOERROR).
    pub dns_errors: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.flows += other.flows;
        self.forwarded += other.forwarded;
        self.dropped += other.dropped;
        self.at_destination += other.at_destination;
        self.forwarded_at_destination += other.forwarded_at_destination;
        self.other += other.other;
        for (reason, n) in &other.drop_reasons {
            *self.drop_reasons.entry(reason.clone()).or_default() += n;
        }
        self.requests += other.requests;
        for (class, n) in &other.http {
            *self.http.entry(class.clone()).or_default() += n;
        }
        self.dns_answers += other.dns_answers;
        self.dns_errors += other.dns_errors;
    }

    /// `forwarded` (flows reached the destination, none dropped),
    /// `dropped` (none reached it), `mixed` (some did), or `other`. Where the
    /// destination's side saw flows, reaching it is being forwarded there: a
    /// flow forwarded on egress and dropped on ingress was denied.
    pub fn verdict(&self) -> &'static str {
        let reached = if self.at_destination > 0 { self.forwarded_at_destination } else { self.forwarded };
        match (reached > 0, self.dropped > 0) {
            (true, true) => "mixed",
            (false, true) => "dropped",
            (true, false) => "forwarded",
            (false, false) => "other",
        }
    }
}

/// One flow as the flows panel shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowRecord {
    /// Unix time in milliseconds (exact in JavaScript's numbers).
    pub time_ms: u64,
    pub node: String,
    pub source: String,
    pub destination: String,
    /// Hubble's verdict name: FORWARDED, DROPPED, ...
    pub verdict: String,
    /// Weir's drop reason of a dropped flow.
    pub drop_reason: String,
    /// The policy rule that decided, where Weir knows it.
    pub rule: String,
    /// `TCP 10.244.0.2:41234 -> 10.244.1.2:8080 SYN`, `HTTP GET http://... 200`, ...
    pub summary: String,
    pub is_reply: bool,
}

#[derive(Debug, Clone)]
struct Bucket {
    start_ns: u64,
    counts: Counts,
}

#[derive(Debug, Clone, Default)]
struct Edge {
    /// Oldest first.
    buckets: VecDeque<Bucket>,
    /// Oldest first.
    recent: VecDeque<FlowRecord>,
    last_seen_ns: u64,
}

/// What became of flows handed to the aggregate, since it began.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Flows counted on an edge.
    pub counted: u64,
    /// Flows older than the window when they arrived.
    pub stale: u64,
    /// Flows refused because their edge would have passed `max_edges`.
    pub over_edge_cap: u64,
    /// Flows refused because an end would have passed `max_nodes`.
    pub over_node_cap: u64,
    /// Events the relay's sources reported lost (Hubble's LostEvents).
    pub lost_events: u64,
}

/// The aggregate.
#[derive(Debug, Clone)]
pub struct Graph {
    limits: Limits,
    nodes: BTreeMap<String, (Node, usize)>,
    edges: BTreeMap<EdgeKey, Edge>,
    tally: Tally,
    relay_nodes: BTreeMap<String, RelayNode>,
    /// When a full aggregate last looked for expired edges to make room:
    /// at most once a bucket, so a flood of new edges past the caps costs
    /// a count each, not a scan each.
    room_sought_ns: Option<u64>,
}

/// A node of the cluster as the relay last told of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelayNode {
    pub name: String,
    /// Hubble's NodeState name: NODE_CONNECTED, NODE_UNAVAILABLE, ...
    pub state: String,
    pub message: String,
}

/// An edge as the page shows it: its counts over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EdgeView {
    pub id: String,
    pub from: String,
    pub to: String,
    pub port: u32,
    pub protocol: &'static str,
    /// `forwarded`, `dropped`, `mixed` or `other`.
    pub verdict: &'static str,
    pub counts: Counts,
    /// Flows per second over the rate window.
    pub flows_per_s: f64,
    /// L7 requests per second over the rate window.
    pub requests_per_s: f64,
    pub last_seen_ms: u64,
}

/// The graph as the page shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GraphView {
    pub now_ms: u64,
    pub window_s: u64,
    pub rate_window_s: u64,
    pub nodes: Vec<Node>,
    pub edges: Vec<EdgeView>,
    pub namespaces: Vec<String>,
    pub limits: LimitsView,
    pub tally: Tally,
    /// The cluster's nodes and whether the relay reaches them.
    pub relay_nodes: Vec<RelayNode>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitsView {
    pub max_nodes: usize,
    pub max_edges: usize,
    pub flows_per_edge: usize,
    pub nodes: usize,
    pub edges: usize,
}

impl Graph {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            nodes: BTreeMap::new(),
            edges: BTreeMap::new(),
            tally: Tally::default(),
            relay_nodes: BTreeMap::new(),
            room_sought_ns: None,
        }
    }

    /// Records the relay's word on cluster nodes' states.
    pub fn node_state(&mut self, names: &[String], state: &str, message: &str) {
        for name in names {
            let node = RelayNode { name: name.clone(), state: state.to_string(), message: message.to_string() };
            self.relay_nodes.insert(name.clone(), node);
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Counts events the relay's sources lost.
    pub fn lost(&mut self, events: u64) {
        self.tally.lost_events = self.tally.lost_events.saturating_add(events);
    }

    /// Counts `f` on its edge, at `now_ns`.
    pub fn add(&mut self, f: &flow::Flow, now_ns: u64) {
        let at = f.time.as_ref().and_then(timestamp_ns).unwrap_or(now_ns).min(now_ns);
        let oldest = now_ns.saturating_sub(self.limits.window_ns);
        if at < oldest {
            self.tally.stale += 1;
            return;
        }
        let (protocol, sport, dport) = protocol_and_ports(f);
        let (src_ip, dst_ip) =
            f.ip.as_ref().map_or((String::new(), String::new()), |ip| (ip.source.clone(), ip.destination.clone()));
        let source = node_of(f.source.as_ref(), &src_ip);
        let destination = node_of(f.destination.as_ref(), &dst_ip);
        let reply = f.is_reply == Some(true);
        // A reply belongs to its request's edge: client to server's port.
        let (client, server, port) =
            if reply { (&destination, &source, sport) } else { (&source, &destination, dport) };
        let key = EdgeKey { from: client.id.clone(), to: server.id.clone(), port, protocol };
        if !self.edges.contains_key(&key) {
            if !self.make_room(&key, now_ns) {
                return;
            }
            // Each edge holds its ends (a pod talking to itself twice).
            for node in [client, server] {
                self.nodes.entry(node.id.clone()).or_insert_with(|| (node.clone(), 0)).1 += 1;
            }
        }
        let limits = self.limits;
        let edge = self.edges.entry(key).or_default();
        let start_ns = at - at % limits.bucket_ns.max(1);
        let counts = counts_of(f);
        // Flows from several nodes arrive nearly in time order; find the
        // bucket from the newest end.
        match edge.buckets.iter_mut().rev().find(|b| b.start_ns <= start_ns) {
            Some(b) if b.start_ns == start_ns => b.counts.add(&counts),
            _ => {
                let position = edge.buckets.iter().position(|b| b.start_ns > start_ns).unwrap_or(edge.buckets.len());
                edge.buckets.insert(position, Bucket { start_ns, counts });
            }
        }
        edge.last_seen_ns = edge.last_seen_ns.max(at);
        let record = FlowRecord {
            time_ms: at / 1_000_000,
            node: f.node_name.clone(),
            source: source.id.clone(),
            destination: destination.id.clone(),
            verdict: verdict_name(f.verdict),
            drop_reason: f.weir.as_ref().map(|w| w.drop_reason.clone()).unwrap_or_default(),
            rule: f.weir.as_ref().map(|w| w.rule.clone()).unwrap_or_default(),
            summary: summary(f, protocol, sport, dport),
            is_reply: reply,
        };
        let position = edge.recent.iter().rposition(|r| r.time_ms <= record.time_ms).map_or(0, |p| p + 1);
        edge.recent.insert(position, record);
        while edge.recent.len() > limits.flows_per_edge {
            edge.recent.pop_front();
        }
        self.tally.counted += 1;
    }

    /// Whether a new edge `key` fits, expiring old edges first if it would not.
    fn make_room(&mut self, key: &EdgeKey, now_ns: u64) -> bool {
        let fits = |g: &Self| {
            let mut new_nodes: Vec<&String> = vec![&key.from, &key.to];
            new_nodes.dedup();
            let new_nodes = new_nodes.iter().filter(|id| !g.nodes.contains_key(id.as_str())).count();
            (g.edges.len() < g.limits.max_edges, g.nodes.len() + new_nodes <= g.limits.max_nodes)
        };
        let sought_lately = self.room_sought_ns.is_some_and(|t| now_ns < t.saturating_add(self.limits.bucket_ns));
        if fits(self) != (true, true) && !sought_lately {
            self.room_sought_ns = Some(now_ns);
            self.expire(now_ns);
        }
        match fits(self) {
            (true, true) => true,
            (false, _) => {
                self.tally.over_edge_cap += 1;
                false
            }
            (true, false) => {
                self.tally.over_node_cap += 1;
                false
            }
        }
    }

    /// Drops what is older than the window: buckets, then edges left with
    /// none, then nodes left with no edge.
    pub fn expire(&mut self, now_ns: u64) {
        let oldest = now_ns.saturating_sub(self.limits.window_ns);
        let bucket_ns = self.limits.bucket_ns.max(1);
        let mut gone = Vec::new();
        for (key, edge) in &mut self.edges {
            while edge.buckets.front().is_some_and(|b| b.start_ns + bucket_ns <= oldest) {
                edge.buckets.pop_front();
            }
            let cutoff_ms = oldest / 1_000_000;
            while edge.recent.front().is_some_and(|r| r.time_ms < cutoff_ms) {
                edge.recent.pop_front();
            }
            if edge.buckets.is_empty() {
                gone.push(key.clone());
            }
        }
        for key in gone {
            self.edges.remove(&key);
            for id in [&key.from, &key.to] {
                if let Some((_, users)) = self.nodes.get_mut(id) {
                    *users = users.saturating_sub(1);
                }
            }
        }
        self.nodes.retain(|_, (_, users)| *users > 0);
    }

    /// The graph over the window at `now_ns`: every edge with an end in
    /// `namespace` (all of them for None), and their nodes.
    pub fn view(&mut self, namespace: Option<&str>, now_ns: u64) -> GraphView {
        self.expire(now_ns);
        let in_namespace =
            |id: &str| namespace.is_none_or(|ns| self.nodes.get(id).is_some_and(|(n, _)| n.namespace == ns));
        let rate_from = now_ns.saturating_sub(self.limits.rate_window_ns);
        let rate_s = (self.limits.rate_window_ns as f64 / NS_PER_S as f64).max(1.0);
        let mut edges = Vec::new();
        let mut shown = std::collections::BTreeSet::new();
        for (key, edge) in &self.edges {
            if !in_namespace(&key.from) && !in_namespace(&key.to) {
                continue;
            }
            let mut counts = Counts::default();
            let mut recent = Counts::default();
            for b in &edge.buckets {
                counts.add(&b.counts);
                if b.start_ns >= rate_from {
                    recent.add(&b.counts);
                }
            }
            shown.insert(key.from.clone());
            shown.insert(key.to.clone());
            edges.push(EdgeView {
                id: edge_id(key),
                from: key.from.clone(),
                to: key.to.clone(),
                port: key.port,
                protocol: key.protocol,
                verdict: counts.verdict(),
                flows_per_s: recent.flows as f64 / rate_s,
                requests_per_s: recent.requests as f64 / rate_s,
                counts,
                last_seen_ms: edge.last_seen_ns / 1_000_000,
            });
        }
        let nodes = shown.iter().filter_map(|id| self.nodes.get(id).map(|(n, _)| n.clone())).collect();
        let mut namespaces: Vec<String> =
            self.nodes.values().map(|(n, _)| n.namespace.clone()).filter(|ns| !ns.is_empty()).collect();
        namespaces.sort();
        namespaces.dedup();
        GraphView {
            now_ms: now_ns / 1_000_000,
            window_s: self.limits.window_ns / NS_PER_S,
            rate_window_s: self.limits.rate_window_ns / NS_PER_S,
            nodes,
            edges,
            namespaces,
            limits: LimitsView {
                max_nodes: self.limits.max_nodes,
                max_edges: self.limits.max_edges,
                flows_per_edge: self.limits.flows_per_edge,
                nodes: self.nodes.len(),
                edges: self.edges.len(),
            },
            tally: self.tally.clone(),
            relay_nodes: self.relay_nodes.values().cloned().collect(),
        }
    }

    /// The last flows of the edges from `from` to `to` (on `port` and
    /// `protocol` where given), newest first.
    pub fn flows(&self, from: &str, to: &str, port: Option<u32>, protocol: Option<&str>) -> Vec<FlowRecord> {
        let mut out: Vec<FlowRecord> = self
            .edges
            .iter()
            .filter(|(k, _)| {
                k.from == from
                    && k.to == to
                    && port.is_none_or(|p| p == k.port)
                    && protocol.is_none_or(|p| p.eq_ignore_ascii_case(k.protocol))
            })
            .flat_map(|(_, e)| e.recent.iter().cloned())
            .collect();
        out.sort_by_key(|r| std::cmp::Reverse(r.time_ms));
        out
    }
}

/// An edge's name in the views: `from -> to port/protocol`.
pub fn edge_id(key: &EdgeKey) -> String {
    format!("{} -> {} {}/{}", key.from, key.to, key.port, key.protocol)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hubble::flows::prost_timestamp;

    const T0: u64 = 1_700_000_000 * NS_PER_S;

    fn pod(namespace: &str, name: &str) -> flow::Endpoint {
        flow::Endpoint {
            namespace: namespace.into(),
            pod_name: name.into(),
            labels: vec![format!("k8s:app={name}"), format!("k8s:io.kubernetes.pod.namespace={namespace}")],
            ..Default::default()
        }
    }

    fn world() -> flow::Endpoint {
        flow::Endpoint { identity: 2, labels: vec!["reserved:world".into()], ..Default::default() }
    }

    fn tcp(src: flow::Endpoint, dst: flow::Endpoint, dport: u32, verdict: flow::Verdict, at: u64) -> flow::Flow {
        flow::Flow {
            time: Some(prost_timestamp(at)),
            verdict: verdict as i32,
            ip: Some(flow::Ip { source: "10.0.0.1".into(), destination: "10.0.0.2".into(), ..Default::default() }),
            l4: Some(flow::Layer4 {
                protocol: Some(flow::layer4::Protocol::Tcp(flow::Tcp {
                    source_port: 40000,
                    destination_port: dport,
                    flags: Some(flow::TcpFlags { syn: true, ..Default::default() }),
                })),
            }),
            source: Some(src),
            destination: Some(dst),
            node_name: "node-a".into(),
            is_reply: Some(false),
            weir: (verdict == flow::Verdict::Dropped)
                .then(|| flow::WeirFlow { drop_reason: "policy_denied".into(), ..Default::default() }),
            ..Default::default()
        }
    }

    fn http(request: bool, code: u32, at: u64) -> flow::Flow {
        let (src, dst) = if request {
            (pod("frontend", "web"), pod("backend", "api"))
        } else {
            (pod("backend", "api"), pod("frontend", "web"))
        };
        let mut f = tcp(src, dst, if request { 8080 } else { 40000 }, flow::Verdict::Forwarded, at);
        if let Some(flow::layer4::Protocol::Tcp(t)) = f.l4.as_mut().and_then(|l| l.protocol.as_mut()) {
            t.source_port = if request { 40000 } else { 8080 };
        }
        f.is_reply = Some(!request);
        f.r#type = flow::FlowType::L7 as i32;
        f.l7 = Some(flow::Layer7 {
            r#type: if request { flow::L7FlowType::Request } else { flow::L7FlowType::Response } as i32,
            latency_ns: 0,
            record: Some(flow::layer7::Record::Http(flow::Http {
                code,
                method: "GET".into(),
                url: "http://10.0.0.2:8080/".into(),
                protocol: "HTTP/1.1".into(),
                headers: vec![],
            })),
        });
        f
    }

    fn dns_answer(rcode: u32, at: u64) -> flow::Flow {
        let mut f = tcp(pod("backend", "db"), pod("frontend", "web"), 5353, flow::Verdict::Forwarded, at);
        f.l4 = Some(flow::Layer4 {
            protocol: Some(flow::layer4::Protocol::Udp(flow::Udp { source_port: 53, destination_port: 5353 })),
        });
        f.is_reply = Some(true);
        f.l7 = Some(flow::Layer7 {
            r#type: flow::L7FlowType::Response as i32,
            latency_ns: 0,
            record: Some(flow::layer7::Record::Dns(flow::Dns {
                query: "api.example.".into(),
                rcode,
                qtypes: vec!["A".into()],
                ..Default::default()
            })),
        });
        f
    }

    fn edge<'a>(view: &'a GraphView, from: &str, to: &str) -> &'a EdgeView {
        view.edges.iter().find(|e| e.from == from && e.to == to).unwrap_or_else(|| panic!("{view:#?}"))
    }

    #[test]
    fn edges_count_verdicts_and_are_coloured_by_them() {
        let mut g = Graph::new(Limits::default());
        let (web, api) = (pod("frontend", "web"), pod("backend", "api"));
        g.add(&tcp(web.clone(), api.clone(), 8080, flow::Verdict::Forwarded, T0), T0);
        g.add(&tcp(web.clone(), api.clone(), 80, flow::Verdict::Dropped, T0), T0);
        g.add(&tcp(web.clone(), api.clone(), 9000, flow::Verdict::Forwarded, T0), T0);
        g.add(&tcp(web.clone(), api.clone(), 9000, flow::Verdict::Dropped, T0 + 1), T0 + 1);
        g.add(&tcp(world(), api.clone(), 8080, flow::Verdict::Forwarded, T0), T0);
        let view = g.view(None, T0 + 2);
        let ids: Vec<&str> = view.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, vec!["backend/api", "frontend/web", "reserved:world"]);
        let of = |port: u32| view.edges.iter().find(|e| e.from == "frontend/web" && e.port == port).expect("edge");
        assert_eq!((of(8080).verdict, of(80).verdict, of(9000).verdict), ("forwarded", "dropped", "mixed"));
        assert_eq!(of(80).counts.drop_reasons, BTreeMap::from([("policy_denied".to_string(), 1)]));
        assert_eq!(of(9000).counts.flows, 2);
        assert_eq!(of(8080).id, "frontend/web -> backend/api 8080/TCP");
        assert_eq!(edge(&view, "reserved:world", "backend/api").protocol, "TCP");
        assert_eq!(view.namespaces, vec!["backend", "frontend"]);
        assert_eq!(view.tally.counted, 5);
    }

    #[test]
    fn a_flow_forwarded_on_egress_and_dropped_on_ingress_is_denied() {
        let mut g = Graph::new(Limits::default());
        let (web, db) = (pod("frontend", "web"), pod("backend", "db"));
        let at = |direction: flow::TrafficDirection, verdict| {
            let mut f = tcp(web.clone(), db.clone(), 5432, verdict, T0);
            f.traffic_direction = direction as i32;
            f
        };
        g.add(&at(flow::TrafficDirection::Egress, flow::Verdict::Forwarded), T0);
        g.add(&at(flow::TrafficDirection::Ingress, flow::Verdict::Dropped), T0);
        let view = g.view(None, T0);
        let denied = edge(&view, "frontend/web", "backend/db");
        assert_eq!((denied.counts.forwarded, denied.counts.dropped), (1, 1), "both observations counted");
        assert_eq!(denied.verdict, "dropped", "none reached db");
        g.add(&at(flow::TrafficDirection::Ingress, flow::Verdict::Forwarded), T0);
        assert_eq!(edge(&g.view(None, T0), "frontend/web", "backend/db").verdict, "mixed");
        // Egress only (to the world): forwarded there is forwarded.
        let mut out = tcp(web.clone(), world(), 443, flow::Verdict::Forwarded, T0);
        out.traffic_direction = flow::TrafficDirection::Egress as i32;
        g.add(&out, T0);
        assert_eq!(edge(&g.view(None, T0), "frontend/web", "reserved:world").verdict, "forwarded");
    }

    #[test]
    fn replies_count_on_their_requests_edge_with_http_classes_and_dns_errors() {
        let mut g = Graph::new(Limits::default());
        const MS: u64 = 1_000_000;
        g.add(&http(true, 0, T0), T0);
        g.add(&http(false, 200, T0 + MS), T0 + MS);
        g.add(&http(true, 0, T0 + 2 * MS), T0 + 2 * MS);
        g.add(&http(false, 404, T0 + 3 * MS), T0 + 3 * MS);
        g.add(&dns_answer(0, T0), T0);
        g.add(&dns_answer(3, T0 + MS), T0 + MS);
        let view = g.view(None, T0 + 10);
        assert_eq!(view.edges.len(), 2, "{view:#?}");
        let web_api = edge(&view, "frontend/web", "backend/api");
        assert_eq!(web_api.port, 8080, "the server's port");
        assert_eq!(web_api.counts.requests, 2);
        assert_eq!(web_api.counts.http, BTreeMap::from([("2xx".to_string(), 1), ("4xx".to_string(), 1)]));
        assert!((web_api.requests_per_s - 2.0 / 60.0).abs() < 1e-9, "{web_api:?}");
        let dns = edge(&view, "frontend/web", "backend/db");
        assert_eq!((dns.port, dns.protocol), (53, "UDP"));
        assert_eq!((dns.counts.dns_answers, dns.counts.dns_errors), (2, 1));
        let flows = g.flows("frontend/web", "backend/api", Some(8080), Some("tcp"));
        assert_eq!(flows.len(), 4);
        assert_eq!(flows[0].summary, "HTTP/1.1 404 GET http://10.0.0.2:8080/", "newest first");
        assert!(flows[0].is_reply);
        assert_eq!(flows[3].summary, "HTTP/1.1 GET http://10.0.0.2:8080/");
        assert!(g.flows("frontend/web", "backend/api", Some(80), None).is_empty());
        let answers = g.flows("frontend/web", "backend/db", None, None);
        assert_eq!(answers[0].summary, "DNS Answer rcode 3 (Query api.example. A)");
    }

    #[test]
    fn the_namespace_filter_keeps_edges_with_an_end_in_it() {
        let mut g = Graph::new(Limits::default());
        g.add(&tcp(pod("frontend", "web"), pod("backend", "api"), 80, flow::Verdict::Forwarded, T0), T0);
        g.add(&tcp(pod("backend", "api"), pod("backend", "db"), 5432, flow::Verdict::Forwarded, T0), T0);
        g.add(&tcp(world(), pod("edge", "proxy"), 443, flow::Verdict::Forwarded, T0), T0);
        let front = g.view(Some("frontend"), T0);
        assert_eq!(front.edges.len(), 1);
        let ids: Vec<&str> = front.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, vec!["backend/api", "frontend/web"]);
        assert_eq!(g.view(Some("backend"), T0).edges.len(), 2);
        assert_eq!(g.view(Some("edge"), T0).nodes.len(), 2, "the proxy and the world");
        let none = g.view(Some("nowhere"), T0);
        assert!(none.edges.is_empty() && none.nodes.is_empty());
        assert_eq!(none.namespaces, vec!["backend", "edge", "frontend"], "every namespace, for the filter");
    }

    #[test]
    fn the_window_forgets_old_flows_and_their_edges_and_nodes() {
        let limits = Limits { window_ns: 60 * NS_PER_S, ..Limits::default() };
        let mut g = Graph::new(limits);
        let (web, api, db) = (pod("frontend", "web"), pod("backend", "api"), pod("backend", "db"));
        g.add(&tcp(web.clone(), api.clone(), 80, flow::Verdict::Forwarded, T0), T0);
        g.add(&tcp(web.clone(), db.clone(), 5432, flow::Verdict::Forwarded, T0 + 50 * NS_PER_S), T0 + 50 * NS_PER_S);
        g.add(&tcp(web.clone(), db.clone(), 5432, flow::Verdict::Forwarded, T0 - 120 * NS_PER_S), T0 + 50 * NS_PER_S);
        assert_eq!(g.view(None, T0 + 50 * NS_PER_S).edges.len(), 2);
        let later = g.view(None, T0 + 100 * NS_PER_S);
        assert_eq!(later.edges.len(), 1, "web -> api is older than the window: {later:#?}");
        assert_eq!(later.edges[0].counts.flows, 1, "the stale flow was not counted");
        assert_eq!(later.nodes.len(), 2, "api has no edge left");
        assert_eq!(later.tally.stale, 1);
        assert!(g.flows("frontend/web", "backend/api", None, None).is_empty());
        assert!(g.view(None, T0 + 200 * NS_PER_S).nodes.is_empty());
    }

    #[test]
    fn caps_refuse_and_count_flows_past_them() {
        let limits = Limits { max_edges: 3, max_nodes: 3, flows_per_edge: 2, ..Limits::default() };
        let mut g = Graph::new(limits);
        let (web, api, db, cache) =
            (pod("frontend", "web"), pod("backend", "api"), pod("backend", "db"), pod("backend", "cache"));
        for i in 0..5 {
            g.add(&tcp(web.clone(), api.clone(), 80, flow::Verdict::Forwarded, T0 + i), T0 + i);
        }
        g.add(&tcp(web.clone(), db.clone(), 80, flow::Verdict::Forwarded, T0), T0);
        g.add(&tcp(web.clone(), cache.clone(), 80, flow::Verdict::Forwarded, T0), T0);
        g.add(&tcp(web.clone(), api.clone(), 81, flow::Verdict::Forwarded, T0), T0);
        g.add(&tcp(web.clone(), db.clone(), 81, flow::Verdict::Forwarded, T0), T0);
        let view = g.view(None, T0 + 10);
        assert_eq!((view.edges.len(), view.nodes.len()), (3, 3));
        assert_eq!(view.tally.over_node_cap, 1, "cache would be a fourth node");
        assert_eq!(view.tally.over_edge_cap, 1, "web -> db:81 would be a fourth edge");
        assert_eq!(edge(&view, "frontend/web", "backend/api").counts.flows, 5, "counts are not capped");
        assert_eq!(g.flows("frontend/web", "backend/api", Some(80), None).len(), 2, "kept flows are");
        // Room comes back when old edges expire.
        let later = T0 + 10 * 60 * NS_PER_S;
        g.add(&tcp(web.clone(), cache.clone(), 80, flow::Verdict::Forwarded, later), later);
        assert_eq!(g.view(None, later).edges.len(), 1);
    }
}
