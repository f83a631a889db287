//! Hubble's metric families counted from Hubble Flows and rendered in the
//! Prometheus text format, with Hubble's names, label names and value
//! spellings; series that name a pod expire a while after the pod is gone.
//! Pure: the caller says what time it is and which pods exist.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use weir_proto::flow::{self, layer4::Protocol};

use super::config::{ContextId, ContextOptions, Metric, MetricsConfig};

/// What a Flow does not say but a metric needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Facts {
    /// For a policy verdict: Hubble's match type (`l3-only`, `l3-l4`,
    /// `l4-only`, `all`, `none`); None when policy did not judge the flow.
    pub policy_match: Option<&'static str>,
}

pub(super) type Labels = Vec<(&'static str, String)>;

/// One Prometheus family Hubble registers; a metric may register several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Family {
    Flows,
    Drop,
    TcpFlags,
    PortDistribution,
    PolicyVerdicts,
    Icmp,
    DnsQueries,
    DnsResponses,
    DnsResponseTypes,
    HttpRequests,
    HttpResponses,
    HttpRequestDuration,
}

/// Each family: the metrics that register it, its name, help and whether
/// it is a histogram (else a counter), as Hubble registers them.
const FAMILIES: [(Family, &[Metric], &str, &str, bool); 12] = [
    (Family::Flows, &[Metric::Flow], "hubble_flows_processed_total", "Total number of flows processed", false),
    (Family::Drop, &[Metric::Drop], "hubble_drop_total", "Number of drops", false),
    (Family::TcpFlags, &[Metric::Tcp], "hubble_tcp_flags_total", "TCP flag occurrences", false),
    (
        Family::PortDistribution,
        &[Metric::PortDistribution],
        "hubble_port_distribution_total",
        "Numbers of packets distributed by destination port",
        false,
    ),
    (
        Family::PolicyVerdicts,
        &[Metric::Policy],
        "hubble_policy_verdicts_total",
        "Total number of Cilium network policy verdicts",
        false,
    ),
    (Family::Icmp, &[Metric::Icmp], "hubble_icmp_total", "Number of ICMP messages", false),
    // Hubble's help texts, its repetition included.
    (Family::DnsQueries, &[Metric::Dns], "hubble_dns_queries_total", "Number of DNS queries observed", false),
    (Family::DnsResponses, &[Metric::Dns], "hubble_dns_responses_total", "Number of DNS queries observed", false),
    (
        Family::DnsResponseTypes,
        &[Metric::Dns],
        "hubble_dns_response_types_total",
        "Number of DNS queries observed",
        false,
    ),
    (
        Family::HttpRequests,
        &[Metric::Http, Metric::HttpV2],
        "hubble_http_requests_total",
        "Count of HTTP requests",
        false,
    ),
    (Family::HttpResponses, &[Metric::Http], "hubble_http_responses_total", "Count of HTTP responses", false),
    (
        Family::HttpRequestDuration,
        &[Metric::Http, Metric::HttpV2],
        "hubble_http_request_duration_seconds",
        "Quantiles of HTTP request duration in seconds",
        true,
    ),
];

/// Hubble's request-duration buckets (Prometheus's default buckets), seconds.
pub const DURATION_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Debug, Clone, Default)]
struct Series {
    /// A counter's value; a histogram's count of observations.
    value: u64,
    /// A histogram's: the sum of its observations and, per bucket of
    /// [`DURATION_BUCKETS`], the observations at most its bound.
    sum: f64,
    buckets: Vec<u64>,
    /// `namespace/pod` of each pod a label of this series names.
    pods: Vec<String>,
}

/// One increment of one family: its own labels, and for a histogram the
/// value observed.
pub(super) struct Increment {
    pub family: Family,
    pub labels: Labels,
    pub observed: Option<f64>,
}

pub(super) fn counted(family: Family, labels: Labels) -> Increment {
    Increment { family, labels, observed: None }
}

/// Every enabled family's series.
#[derive(Debug, Clone)]
pub struct HubbleMetrics {
    config: MetricsConfig,
    ttl_ns: u64,
    series: BTreeMap<(Family, Labels), Series>,
    /// Pods named by series that have left, and since when (caller's clock).
    gone: BTreeMap<String, u64>,
}

/// Hubble's `v1.FlowProtocol` for an L3/L4 flow.
fn protocol(f: &flow::Flow) -> &'static str {
    match f.l4.as_ref().and_then(|l4| l4.protocol.as_ref()) {
        Some(Protocol::Tcp(_)) => "TCP",
        Some(Protocol::Udp(_)) => "UDP",
        Some(Protocol::IcmPv4(_)) => "ICMPv4",
        Some(Protocol::IcmPv6(_)) => "ICMPv6",
        Some(Protocol::Sctp(_)) => "SCTP",
        _ => "Unknown L4",
    }
}

fn verdict(f: &flow::Flow) -> flow::Verdict {
    flow::Verdict::try_from(f.verdict).unwrap_or(flow::Verdict::Unknown)
}

fn pod_key(ep: &flow::Endpoint) -> Option<String> {
    (!ep.pod_name.is_empty()).then(|| format!("{}/{}", ep.namespace, ep.pod_name))
}

/// Hubble's app label: the first of these label keys with a value.
fn app(ep: &flow::Endpoint) -> String {
    ["k8s:app.kubernetes.io/name=", "k8s:k8s-app=", "k8s:app="]
        .iter()
        .find_map(|prefix| ep.labels.iter().find_map(|l| l.strip_prefix(prefix).filter(|v| !v.is_empty())))
        .unwrap_or_default()
        .to_string()
}

fn reserved_identity(ep: &flow::Endpoint) -> String {
    if ep.labels.iter().any(|l| l == "reserved:kube-apiserver") {
        return "reserved:kube-apiserver".into();
    }
    ep.labels.iter().find(|l| l.starts_with("reserved:")).cloned().unwrap_or_default()
}

fn context_value(id: ContextId, ep: &flow::Endpoint, ip: &str) -> String {
    match id {
        ContextId::Identity => ep.labels.join(","),
        ContextId::Namespace => ep.namespace.clone(),
        ContextId::Pod if ep.namespace.is_empty() => ep.pod_name.clone(),
        ContextId::Pod => format!("{}/{}", ep.namespace, ep.pod_name),
        ContextId::PodName => ep.pod_name.clone(),
        ContextId::App => app(ep),
        ContextId::Ip => ip.to_string(),
        ContextId::ReservedIdentity => reserved_identity(ep),
    }
}

/// The context labels of `o` for `f`, and the pods they name. `invert`
/// names the flow's destination as the source and its source as the
/// destination (Hubble's for metrics counted on responses as requests).
fn context_labels(o: &ContextOptions, f: &flow::Flow, invert: bool) -> (Labels, Vec<String>) {
    let none = flow::Endpoint::default();
    let (mut src, mut dst) = (f.source.as_ref().unwrap_or(&none), f.destination.as_ref().unwrap_or(&none));
    let (mut src_ip, mut dst_ip) = f.ip.as_ref().map_or(("", ""), |ip| (ip.source.as_str(), ip.destination.as_str()));
    if invert {
        std::mem::swap(&mut src, &mut dst);
        std::mem::swap(&mut src_ip, &mut dst_ip);
    }
    let mut labels = Labels::new();
    let mut pods = Vec::new();
    let mut ties = |ep: &flow::Endpoint| {
        if let Some(key) = pod_key(ep) {
            if !pods.contains(&key) {
                pods.push(key);
            }
        }
    };
    for name in super::config::CONTEXT_LABELS.iter().filter(|l| o.labels.contains(*l)) {
        let value = match *name {
            "source_ip" => src_ip.to_string(),
            "source_pod" => src.pod_name.clone(),
            "source_namespace" => src.namespace.clone(),
            "source_app" => app(src),
            "destination_ip" => dst_ip.to_string(),
            "destination_pod" => dst.pod_name.clone(),
            "destination_namespace" => dst.namespace.clone(),
            "destination_app" => app(dst),
            _ => match flow::TrafficDirection::try_from(f.traffic_direction) {
                Ok(flow::TrafficDirection::Ingress) => "ingress".into(),
                Ok(flow::TrafficDirection::Egress) => "egress".into(),
                _ => "unknown".into(),
            },
        };
        match *name {
            "source_ip" | "source_pod" => ties(src),
            "destination_ip" | "destination_pod" => ties(dst),
            _ => {}
        }
        labels.push((name, value));
    }
    for (label, ids, ep, ip) in [("source", &o.source, src, src_ip), ("destination", &o.destination, dst, dst_ip)] {
        if ids.is_empty() {
            continue;
        }
        // The first identifier that names this side, as Hubble takes it.
        let chosen = ids.iter().map(|id| (*id, context_value(*id, ep, ip))).find(|(_, v)| !v.is_empty());
        if chosen.as_ref().is_some_and(|(id, _)| id.names_a_pod()) {
            ties(ep);
        }
        labels.push((label, chosen.map(|(_, v)| v).unwrap_or_default()));
    }
    (labels, pods)
}

/// gopacket's name for an ICMP type, as Hubble's `type` label spells it.
/// Weir's flow events carry the type but not the code, so types whose name
/// depends on the code are given without it.
fn icmp_type(v6: bool, t: u32) -> String {
    let name = if v6 {
        match t {
            1 => "DestinationUnreachable",
            2 => "PacketTooBig",
            3 => "TimeExceeded",
            4 => "ParameterProblem",
            128 => "EchoRequest",
            129 => "EchoReply",
            133 => "RouterSolicitation",
            134 => "RouterAdvertisement",
            135 => "NeighborSolicitation",
            136 => "NeighborAdvertisement",
            137 => "Redirect",
            _ => "",
        }
    } else {
        match t {
            0 => "EchoReply",
            3 => "DestinationUnreachable",
            4 => "SourceQuench",
            5 => "Redirect",
            8 => "EchoRequest",
            9 => "RouterAdvertisement",
            10 => "RouterSolicitation",
            11 => "TimeExceeded",
            12 => "ParameterProblem",
            13 => "TimestampRequest",
            14 => "TimestampReply",
            15 => "InfoRequest",
            16 => "InfoReply",
            17 => "AddressMaskRequest",
            18 => "AddressMaskReply",
            _ => "",
        }
    };
    if name.is_empty() {
        format!("{t}(0)")
    } else {
        name.to_string()
    }
}

/// The record of an L7 flow (Hubble's access-log event), if it is one.
fn l7_record(f: &flow::Flow) -> Option<&flow::layer7::Record> {
    f.event_type.as_ref().filter(|t| t.r#type == crate::hubble::event_type::ACCESS_LOG)?;
    f.l7.as_ref()?.record.as_ref()
}

/// The increments one metric counts for a flow.
fn increments(metric: Metric, options: &ContextOptions, f: &flow::Flow, facts: Facts) -> Vec<Increment> {
    let family = match metric {
        Metric::Dns => return super::l7::dns(options, f),
        Metric::Http => return super::l7::http(f, false),
        Metric::HttpV2 => return super::l7::http(f, true),
        Metric::Flow => Family::Flows,
        Metric::Drop => Family::Drop,
        Metric::Tcp => Family::TcpFlags,
        Metric::PortDistribution => Family::PortDistribution,
        Metric::Policy => Family::PolicyVerdicts,
        Metric::Icmp => Family::Icmp,
    };
    own_labels(metric, f, facts).into_iter().map(|labels| counted(family, labels)).collect()
}

/// The series one L3/L4 metric counts for a flow: (its own labels) per increment.
fn own_labels(metric: Metric, f: &flow::Flow, facts: Facts) -> Vec<Labels> {
    let verdict = verdict(f);
    let forwarded = verdict == flow::Verdict::Forwarded;
    let l4 = f.l4.as_ref().and_then(|l4| l4.protocol.as_ref());
    match metric {
        Metric::Flow => {
            // An L7 flow is Hubble's access-log event, named by its protocol.
            let l7 = match l7_record(f) {
                Some(flow::layer7::Record::Dns(_)) => Some("DNS"),
                Some(flow::layer7::Record::Http(_)) => Some("HTTP"),
                None => None,
            };
            if let Some(name) = l7 {
                return vec![vec![
                    ("protocol", name.into()),
                    ("subtype", name.into()),
                    ("type", "L7".into()),
                    ("verdict", verdict.as_str_name().into()),
                ]];
            }
            // Weir's flow events are policy's verdicts on new flows and
            // drops: Hubble's PolicyVerdict and Drop events; a packet a
            // chaos fault changed and let through is a Trace event.
            let chaos = f.weir.as_ref().is_some_and(|w| w.r#match == "chaos");
            let kind = match verdict {
                flow::Verdict::Dropped => "Drop",
                _ if chaos => "Trace",
                _ => "PolicyVerdict",
            };
            vec![vec![
                ("protocol", protocol(f).into()),
                ("subtype", String::new()),
                ("type", kind.into()),
                ("verdict", verdict.as_str_name().into()),
            ]]
        }
        Metric::Drop if verdict == flow::Verdict::Dropped => {
            let reason = flow::DropReason::try_from(f.drop_reason_desc).unwrap_or(flow::DropReason::Unknown);
            vec![vec![("protocol", protocol(f).into()), ("reason", reason.as_str_name().into())]]
        }
        Metric::Tcp if forwarded => {
            let Some(Protocol::Tcp(flow::Tcp { flags: Some(flags), .. })) = l4 else { return vec![] };
            let family = f.ip.as_ref().map_or(flow::IpVersion::IpNotUsed, |ip| {
                flow::IpVersion::try_from(ip.ip_version).unwrap_or(flow::IpVersion::IpNotUsed)
            });
            let mut out = Vec::new();
            let mut flag = |name: &str| out.push(vec![("family", family.as_str_name().into()), ("flag", name.into())]);
            if flags.fin {
                flag("FIN");
            }
            if flags.syn {
                flag(if flags.ack { "SYN-ACK" } else { "SYN" });
            }
            if flags.rst {
                flag("RST");
            }
            out
        }
        Metric::PortDistribution if forwarded && f.is_reply != Some(true) => {
            let (proto, port) = match l4 {
                Some(Protocol::Tcp(t)) => ("TCP", t.destination_port),
                Some(Protocol::Udp(u)) => ("UDP", u.destination_port),
                Some(Protocol::Sctp(s)) => ("SCTP", s.destination_port),
                Some(Protocol::IcmPv4(_)) => ("ICMPv4", 0),
                Some(Protocol::IcmPv6(_)) => ("ICMPv6", 0),
                _ => return vec![],
            };
            vec![vec![("port", port.to_string()), ("protocol", proto.into())]]
        }
        Metric::Policy => {
            // Hubble leaves out verdicts on the host's own traffic.
            let Some(matched) = facts.policy_match else { return vec![] };
            if f.source.as_ref().is_some_and(|s| s.identity == 1) {
                return vec![];
            }
            let direction = match flow::TrafficDirection::try_from(f.traffic_direction) {
                Ok(flow::TrafficDirection::Ingress) => "ingress",
                Ok(flow::TrafficDirection::Egress) => "egress",
                _ => "traffic_direction_unknown",
            };
            vec![vec![
                ("action", verdict.as_str_name().to_lowercase()),
                ("direction", direction.into()),
                ("match", matched.into()),
            ]]
        }
        Metric::Icmp => match l4 {
            Some(Protocol::IcmPv4(i)) => vec![vec![("family", "IPv4".into()), ("type", icmp_type(false, i.r#type))]],
            Some(Protocol::IcmPv6(i)) => vec![vec![("family", "IPv6".into()), ("type", icmp_type(true, i.r#type))]],
            _ => vec![],
        },
        _ => vec![],
    }
}

impl HubbleMetrics {
    /// Series naming a pod are removed `ttl_ns` after the pod is seen gone.
    pub fn new(config: MetricsConfig, ttl_ns: u64) -> Self {
        Self { config, ttl_ns, series: BTreeMap::new(), gone: BTreeMap::new() }
    }

    /// Counts one flow in every enabled family.
    pub fn count(&mut self, f: &flow::Flow, facts: Facts) {
        for (metric, options) in &self.config.metrics {
            let increments = increments(*metric, options, f, facts);
            if increments.is_empty() {
                continue;
            }
            // httpV2 counts responses as their requests, named from the
            // request's side.
            let (context, pods) = context_labels(options, f, *metric == Metric::HttpV2);
            for Increment { family, mut labels, observed } in increments {
                labels.extend(context.iter().cloned());
                // Label pairs sorted by name, as Prometheus's client writes them.
                labels.sort_by(|a, b| a.0.cmp(b.0));
                let series = self.series.entry((family, labels)).or_default();
                series.value += 1;
                if let Some(value) = observed {
                    series.buckets.resize(DURATION_BUCKETS.len(), 0);
                    for (n, bound) in series.buckets.iter_mut().zip(DURATION_BUCKETS) {
                        *n += u64::from(value <= bound);
                    }
                    series.sum += value;
                }
                series.pods.clone_from(&pods);
            }
        }
    }

    /// The pods that exist now: pods named by series that are not among
    /// them are gone from `now_ns` on (unless already gone); those that
    /// came back are not.
    pub fn pods_now(&mut self, now_ns: u64, pods: &BTreeSet<String>) {
        self.gone.retain(|p, _| !pods.contains(p));
        for series in self.series.values() {
            for pod in series.pods.iter().filter(|p| !pods.contains(*p)) {
                self.gone.entry(pod.clone()).or_insert(now_ns);
            }
        }
    }

    /// Removes the series of pods gone for the TTL or longer.
    pub fn expire(&mut self, now_ns: u64) {
        let expired: BTreeSet<String> = self
            .gone
            .iter()
            .filter(|(_, since)| now_ns.saturating_sub(**since) >= self.ttl_ns)
            .map(|(p, _)| p.clone())
            .collect();
        if expired.is_empty() {
            return;
        }
        self.series.retain(|_, s| !s.pods.iter().any(|p| expired.contains(p)));
        self.gone.retain(|p, _| !expired.contains(p));
    }

    /// Series held now (the cardinality).
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Appends every enabled family, and Hubble's `hubble_lost_events_total`
    /// by source (`perf_event_ring_buffer`, `hubble_ring_buffer`, ...).
    pub fn render(&self, out: &mut String, lost: &[(&str, u64)]) {
        for (family, metrics, name, help, histogram) in FAMILIES {
            if !metrics.iter().any(|m| self.config.get(*m).is_some()) {
                continue;
            }
            let kind = if histogram { "histogram" } else { "counter" };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((_, labels), series) in
                self.series.range((family, Vec::new())..).take_while(|((f, _), _)| *f == family)
            {
                let pairs: Vec<String> =
                    labels.iter().map(|(k, v)| format!("{k}=\"{}\"", crate::metrics::label(v))).collect();
                let pairs = pairs.join(",");
                if !histogram {
                    let _ = writeln!(out, "{name}{{{pairs}}} {}", series.value);
                    continue;
                }
                // `le` last, as Prometheus's client writes it.
                let with = if pairs.is_empty() { String::new() } else { format!("{pairs},") };
                for (n, bound) in series.buckets.iter().zip(DURATION_BUCKETS) {
                    let _ = writeln!(out, "{name}_bucket{{{with}le=\"{bound}\"}} {n}");
                }
                let _ = writeln!(out, "{name}_bucket{{{with}le=\"+Inf\"}} {}", series.value);
                let _ = writeln!(out, "{name}_sum{{{pairs}}} {}", series.sum);
                let _ = writeln!(out, "{name}_count{{{pairs}}} {}", series.value);
            }
        }
        let _ = writeln!(
            out,
            "# HELP hubble_lost_events_total Number of lost events\n# TYPE hubble_lost_events_total counter"
        );
        let mut lost = lost.to_vec();
        lost.sort();
        for (source, n) in lost {
            let _ = writeln!(out, "hubble_lost_events_total{{source=\"{}\"}} {n}", crate::metrics::label(source));
        }
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
