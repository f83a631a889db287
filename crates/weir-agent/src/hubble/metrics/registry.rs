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

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone, Default)]
struct Series {
    value: u64,
    /// `namespace/pod` of each pod a label of this series names.
    pods: Vec<String>,
}

/// Every enabled family's series.
#[derive(Debug, Clone)]
pub struct HubbleMetrics {
    config: MetricsConfig,
    ttl_ns: u64,
    series: BTreeMap<(Metric, Labels), Series>,
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

/// The context labels of `o` for `f`, and the pods they name.
fn context_labels(o: &ContextOptions, f: &flow::Flow) -> (Labels, Vec<String>) {
    let none = flow::Endpoint::default();
    let (src, dst) = (f.source.as_ref().unwrap_or(&none), f.destination.as_ref().unwrap_or(&none));
    let (src_ip, dst_ip) = f.ip.as_ref().map_or(("", ""), |ip| (ip.source.as_str(), ip.destination.as_str()));
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

/// The series one metric counts for a flow: (its own labels) per increment.
fn own_labels(metric: Metric, f: &flow::Flow, facts: Facts) -> Vec<Labels> {
    let verdict = verdict(f);
    let forwarded = verdict == flow::Verdict::Forwarded;
    let l4 = f.l4.as_ref().and_then(|l4| l4.protocol.as_ref());
    match metric {
        Metric::Flow => {
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

const HELP: [(Metric, &str, &str); 6] = [
    (Metric::Flow, "hubble_flows_processed_total", "Total number of flows processed"),
    (Metric::Drop, "hubble_drop_total", "Number of drops"),
    (Metric::Tcp, "hubble_tcp_flags_total", "TCP flag occurrences"),
    (Metric::PortDistribution, "hubble_port_distribution_total", "Numbers of packets distributed by destination port"),
    (Metric::Policy, "hubble_policy_verdicts_total", "Total number of Cilium network policy verdicts"),
    (Metric::Icmp, "hubble_icmp_total", "Number of ICMP messages"),
];

impl HubbleMetrics {
    /// Series naming a pod are removed `ttl_ns` after the pod is seen gone.
    pub fn new(config: MetricsConfig, ttl_ns: u64) -> Self {
        Self { config, ttl_ns, series: BTreeMap::new(), gone: BTreeMap::new() }
    }

    /// Counts one flow in every enabled family.
    pub fn count(&mut self, f: &flow::Flow, facts: Facts) {
        for (metric, options) in &self.config.metrics {
            let increments = own_labels(*metric, f, facts);
            if increments.is_empty() {
                continue;
            }
            let (context, pods) = context_labels(options, f);
            for mut labels in increments {
                labels.extend(context.iter().cloned());
                // Label pairs sorted by name, as Prometheus's client writes them.
                labels.sort_by(|a, b| a.0.cmp(b.0));
                let series = self.series.entry((*metric, labels)).or_default();
                series.value += 1;
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
        for (metric, name, help) in HELP {
            if self.config.get(metric).is_none() {
                continue;
            }
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((_, labels), series) in
                self.series.range((metric, Vec::new())..).take_while(|((m, _), _)| *m == metric)
            {
                let pairs: Vec<String> =
                    labels.iter().map(|(k, v)| format!("{k}=\"{}\"", crate::metrics::label(v))).collect();
                let _ = writeln!(out, "{name}{{{}}} {}", pairs.join(","), series.value);
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
