//! The service map's aggregate of the relay's merged flows (pure: flows and
//! the time in, views out). Nodes are the ends of flows: a pod
//! (`namespace/pod`), a reserved identity (`reserved:world`,
//! `reserved:host`, ...) or, for an end with neither, its address; and the
//! Services flows went through (`service:namespace/name`). An edge is
//! (source, destination, destination port, protocol), its counts kept in
//! time buckets so the view covers only the last `window`: flows by verdict,
//! drop reasons, L7 requests, HTTP status classes, DNS answers and DNS
//! errors (rcode other than 0), and its last flows for the flows panel.
//!
//! A reply (an L7 response, a DNS answer) is counted on its request's edge:
//! client to server, the server's port. A flow whose server end is a
//! Service's backend (Hubble's `destination_service`, `source_service` for
//! a reply) is drawn through the Service: counted on client → Service and
//! on Service → server, so the first edge says how the Service was used
//! and the second which backend took it. The socket load balancer has
//! translated the flow before it is seen, so both edges carry the
//! backend's port, and a flow straight to a backend's address and port
//! reads the same as one to the Service's address (as in Hubble).
//!
//! Memory is bounded: at most `max_nodes` nodes, `max_edges` edges and
//! `flows_per_edge` flows each; a flow that would need a node or an edge
//! past the caps is counted as refused and not kept (on none of its edges),
//! and edges with no flow within the window go.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;
use weir_proto::flow;

use super::reading::{counts_of, node_of, protocol_and_ports, service_node, summary, verdict_name};
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
    /// `pod`, `service`, `reserved` or `address`.
    pub kind: &'static str,
    /// The pod's or the Service's namespace; empty for the others.
    pub namespace: String,
    /// The pod's name, the Service's, the reserved identity's, or the address.
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
    /// The Service the flow went through (its node id), or empty.
    pub service: String,
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

impl Edge {
    /// Counts a flow at `at_ns` and keeps its record.
    fn count(&mut self, at_ns: u64, counts: &Counts, record: &FlowRecord, limits: Limits) {
        let start_ns = at_ns - at_ns % limits.bucket_ns.max(1);
        // Flows from several nodes arrive nearly in time order; find the
        // bucket from the newest end.
        match self.buckets.iter_mut().rev().find(|b| b.start_ns <= start_ns) {
            Some(b) if b.start_ns == start_ns => b.counts.add(counts),
            _ => {
                let position = self.buckets.iter().position(|b| b.start_ns > start_ns).unwrap_or(self.buckets.len());
                self.buckets.insert(position, Bucket { start_ns, counts: counts.clone() });
            }
        }
        self.last_seen_ns = self.last_seen_ns.max(at_ns);
        let position = self.recent.iter().rposition(|r| r.time_ms <= record.time_ms).map_or(0, |p| p + 1);
        self.recent.insert(position, record.clone());
        while self.recent.len() > limits.flows_per_edge {
            self.recent.pop_front();
        }
    }
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
        // The server's Service, where it is one's backend.
        let service = if reply { f.source_service.as_ref() } else { f.destination_service.as_ref() };
        let service = service.filter(|s| !s.name.is_empty()).map(service_node);
        let keys = match &service {
            Some(via) => vec![
                EdgeKey { from: client.id.clone(), to: via.id.clone(), port, protocol },
                EdgeKey { from: via.id.clone(), to: server.id.clone(), port, protocol },
            ],
            None => vec![EdgeKey { from: client.id.clone(), to: server.id.clone(), port, protocol }],
        };
        if keys.iter().any(|k| !self.edges.contains_key(k)) {
            let Some(new_keys) = self.make_room(&keys, now_ns) else { return };
            let ends = [client, server].into_iter().chain(service.as_ref());
            let ends: BTreeMap<&str, &Node> = ends.map(|n| (n.id.as_str(), n)).collect();
            // Each edge holds its ends (a pod talking to itself twice).
            for key in new_keys {
                for id in [&key.from, &key.to] {
                    let node = ends[id.as_str()];
                    self.nodes.entry(id.clone()).or_insert_with(|| (node.clone(), 0)).1 += 1;
                }
            }
        }
        let counts = counts_of(f);
        let record = FlowRecord {
            time_ms: at / 1_000_000,
            node: f.node_name.clone(),
            source: source.id.clone(),
            destination: destination.id.clone(),
            service: service.as_ref().map(|s| s.id.clone()).unwrap_or_default(),
            verdict: verdict_name(f.verdict),
            drop_reason: f.weir.as_ref().map(|w| w.drop_reason.clone()).unwrap_or_default(),
            rule: f.weir.as_ref().map(|w| w.rule.clone()).unwrap_or_default(),
            summary: summary(f, protocol, sport, dport),
            is_reply: reply,
        };
        for key in keys {
            self.edges.entry(key).or_default().count(at, &counts, &record, self.limits);
        }
        self.tally.counted += 1;
    }

    /// Which of `keys` are new edges, if they fit; expires old edges first
    /// if they would not (which may make more of `keys` new).
    fn make_room<'k>(&mut self, keys: &'k [EdgeKey], now_ns: u64) -> Option<Vec<&'k EdgeKey>> {
        let fits = |g: &Self| {
            let new_keys: Vec<&EdgeKey> = keys.iter().filter(|k| !g.edges.contains_key(*k)).collect();
            let mut new_nodes: Vec<&String> = new_keys.iter().flat_map(|k| [&k.from, &k.to]).collect();
            new_nodes.sort();
            new_nodes.dedup();
            let new_nodes = new_nodes.iter().filter(|id| !g.nodes.contains_key(id.as_str())).count();
            (g.edges.len() + new_keys.len() <= g.limits.max_edges, g.nodes.len() + new_nodes <= g.limits.max_nodes)
        };
        let sought_lately = self.room_sought_ns.is_some_and(|t| now_ns < t.saturating_add(self.limits.bucket_ns));
        if fits(self) != (true, true) && !sought_lately {
            self.room_sought_ns = Some(now_ns);
            self.expire(now_ns);
        }
        match fits(self) {
            (true, true) => Some(keys.iter().filter(|k| !self.edges.contains_key(*k)).collect()),
            (false, _) => {
                self.tally.over_edge_cap += 1;
                None
            }
            (true, false) => {
                self.tally.over_node_cap += 1;
                None
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
#[path = "graph_tests.rs"]
mod tests;
