//! Hubble's FlowFilter, judged on Hubble Flows: every field set must match
//! (AND), any value of a field may (OR); a request's whitelist matches when
//! any filter does, its blacklist excludes when any does. L7 filters (DNS
//! query and HTTP method, path and status, Hubble's regular expressions and
//! status prefixes) judge L7 flows; event types are judged as Hubble does
//! ([`crate::hubble::event_type`]). Filters on what Weir's flows do not
//! carry (DNS names of endpoints, uuids, trace ids) are refused by field
//! name rather than ignored.
//! Pure: no I/O.

use std::net::IpAddr;

use ipnet::IpNet;
use weir_proto::flow;

use crate::hubble::workload;

/// One FlowFilter, checked and parsed.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    source_ip: Vec<IpNet>,
    destination_ip: Vec<IpNet>,
    source_pod: Vec<PodPattern>,
    destination_pod: Vec<PodPattern>,
    /// Hubble's service filters take the pod filters' syntax.
    source_service: Vec<PodPattern>,
    destination_service: Vec<PodPattern>,
    source_label: Vec<Selector>,
    destination_label: Vec<Selector>,
    source_workload: Vec<flow::Workload>,
    destination_workload: Vec<flow::Workload>,
    source_identity: Vec<u32>,
    destination_identity: Vec<u32>,
    source_port: Vec<u16>,
    destination_port: Vec<u16>,
    protocol: Vec<Protocol>,
    verdict: Vec<i32>,
    drop_reason_desc: Vec<i32>,
    traffic_direction: Vec<i32>,
    ip_version: Vec<i32>,
    reply: Vec<bool>,
    tcp_flags: Vec<flow::TcpFlags>,
    node_name: Vec<String>,
    dns_query: Vec<regex::Regex>,
    http_method: Vec<String>,
    http_path: Vec<regex::Regex>,
    http_status: Vec<StatusCode>,
    event_type: Vec<flow::EventTypeFilter>,
}

/// Hubble's status filter: "404" exactly, "4+" any 4xx, "40+" 400 to 409.
#[derive(Debug, Clone)]
struct StatusCode {
    digits: String,
    prefix: bool,
}

impl StatusCode {
    fn parse(name: &str, text: &str) -> Result<Self, String> {
        let (digits, prefix) = text.strip_suffix('+').map_or((text, false), |d| (d, true));
        let ok = !digits.is_empty() && digits.len() <= 3 && digits.bytes().all(|c| c.is_ascii_digit());
        if !ok || (!prefix && digits.len() != 3) {
            return Err(format!("{name}: {text:?} is not a status code (\"404\") or prefix (\"4+\", \"40+\")"));
        }
        Ok(Self { digits: digits.into(), prefix })
    }

    fn matches(&self, code: u32) -> bool {
        let code = code.to_string();
        if self.prefix {
            code.len() == 3 && code.starts_with(&self.digits)
        } else {
            code == self.digits
        }
    }
}

fn regexes(name: &str, patterns: &[String]) -> Result<Vec<regex::Regex>, String> {
    patterns.iter().map(|p| regex::Regex::new(p).map_err(|e| format!("{name}: {p:?}: {e}"))).collect()
}

fn dns(f: &flow::Flow) -> Option<&flow::Dns> {
    match f.l7.as_ref()?.record.as_ref()? {
        flow::layer7::Record::Dns(d) => Some(d),
        flow::layer7::Record::Http(_) => None,
    }
}

fn http(f: &flow::Flow) -> Option<&flow::Http> {
    match f.l7.as_ref()?.record.as_ref()? {
        flow::layer7::Record::Http(h) => Some(h),
        flow::layer7::Record::Dns(_) => None,
    }
}

/// A URL's path (what Hubble's http_path matches).
fn url_path(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r.find('/').map_or("/", |i| &r[i..]));
    rest.split(['?', '#']).next().unwrap_or(rest)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PodPattern {
    /// None: any namespace.
    namespace: Option<String>,
    prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmpv4,
    Icmpv6,
}

/// A Kubernetes label selector: requirements that must all hold.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector(Vec<Requirement>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    /// None: a label of any source (k8s, reserved, ...).
    source: Option<String>,
    key: String,
    op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

fn unsupported(name: &str, what: &str) -> String {
    format!("{name}: Weir's flows carry no {what}, so this filter cannot be judged")
}

fn ip(name: &str, text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{name}: {text:?} is neither an address nor a CIDR"))
}

fn pod(text: &str) -> PodPattern {
    match text.split_once('/') {
        Some((ns, prefix)) => PodPattern { namespace: Some(ns.to_string()), prefix: prefix.to_string() },
        None => PodPattern { namespace: None, prefix: text.to_string() },
    }
}

fn port(name: &str, text: &str) -> Result<u16, String> {
    text.parse().map_err(|_| format!("{name}: {text:?} is not a port number (0-65535)"))
}

fn protocol(name: &str, text: &str) -> Result<Protocol, String> {
    Ok(match text.to_ascii_lowercase().as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        "icmp" => Protocol::Icmp,
        "icmpv4" => Protocol::Icmpv4,
        "icmpv6" => Protocol::Icmpv6,
        "http" | "dns" | "kafka" => return Err(unsupported(name, "L7 protocol")),
        _ => return Err(format!("{name}: unknown protocol {text:?}; known: tcp, udp, sctp, icmp, icmpv4, icmpv6")),
    })
}

fn label_key(name: &str, text: &str) -> Result<(Option<String>, String), String> {
    let text = text.trim();
    if text.is_empty() || text.contains(char::is_whitespace) {
        return Err(format!("{name}: {text:?} is not a label key"));
    }
    Ok(match text.split_once(':') {
        Some((source, key)) if !key.is_empty() => (Some(source.to_string()), key.to_string()),
        _ => (None, text.to_string()),
    })
}

fn values(name: &str, text: &str) -> Result<Vec<String>, String> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("{name}: {text:?}: a set of values is written (a,b)"))?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
}

/// Splits at commas outside parentheses.
fn requirements(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn selector(name: &str, text: &str) -> Result<Selector, String> {
    let mut all = Vec::new();
    for part in requirements(text) {
        let part = part.trim();
        let requirement = if let Some((key, value)) = part.split_once("!=") {
            let (source, key) = label_key(name, key)?;
            Requirement { source, key, op: Op::NotIn(vec![value.trim().to_string()]) }
        } else if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
            let (source, key) = label_key(name, key)?;
            Requirement { source, key, op: Op::In(vec![value.trim().to_string()]) }
        } else if let Some((key, set)) = part.split_once(" notin ") {
            let (source, key) = label_key(name, key)?;
            Requirement { source, key, op: Op::NotIn(values(name, set)?) }
        } else if let Some((key, set)) = part.split_once(" in ") {
            let (source, key) = label_key(name, key)?;
            Requirement { source, key, op: Op::In(values(name, set)?) }
        } else if let Some(key) = part.strip_prefix('!') {
            let (source, key) = label_key(name, key)?;
            Requirement { source, key, op: Op::DoesNotExist }
        } else {
            let (source, key) = label_key(name, part)?;
            Requirement { source, key, op: Op::Exists }
        };
        all.push(requirement);
    }
    Ok(Selector(all))
}

impl Filter {
    /// Checks a request's filter; the error names the field and what is wrong.
    pub fn parse(f: &flow::FlowFilter, name: &str) -> Result<Self, String> {
        let field = |field: &str| format!("{name}.{field}");
        let refused: [(&str, bool, &str); 4] = [
            ("uuid", !f.uuid.is_empty(), "uuids"),
            ("source_fqdn", !f.source_fqdn.is_empty(), "DNS names"),
            ("destination_fqdn", !f.destination_fqdn.is_empty(), "DNS names"),
            ("trace_id", !f.trace_id.is_empty(), "trace ids"),
        ];
        if let Some((which, _, what)) = refused.iter().find(|(_, set, _)| *set) {
            return Err(unsupported(&field(which), what));
        }
        fn all<T>(items: &[String], field: &str, parse: fn(&str, &str) -> Result<T, String>) -> Result<Vec<T>, String> {
            items.iter().map(|t| parse(field, t)).collect()
        }
        let node_name = f.node_name.clone();
        Ok(Self {
            source_ip: all(&f.source_ip, &field("source_ip"), ip)?,
            destination_ip: all(&f.destination_ip, &field("destination_ip"), ip)?,
            source_pod: f.source_pod.iter().map(|p| pod(p)).collect(),
            destination_pod: f.destination_pod.iter().map(|p| pod(p)).collect(),
            source_service: f.source_service.iter().map(|p| pod(p)).collect(),
            destination_service: f.destination_service.iter().map(|p| pod(p)).collect(),
            source_label: f
                .source_label
                .iter()
                .map(|s| selector(&field("source_label"), s))
                .collect::<Result<_, _>>()?,
            destination_label: f
                .destination_label
                .iter()
                .map(|s| selector(&field("destination_label"), s))
                .collect::<Result<_, _>>()?,
            source_workload: f.source_workload.clone(),
            destination_workload: f.destination_workload.clone(),
            source_identity: f.source_identity.clone(),
            destination_identity: f.destination_identity.clone(),
            source_port: all(&f.source_port, &field("source_port"), port)?,
            destination_port: all(&f.destination_port, &field("destination_port"), port)?,
            protocol: all(&f.protocol, &field("protocol"), protocol)?,
            verdict: f.verdict.clone(),
            drop_reason_desc: f.drop_reason_desc.clone(),
            traffic_direction: f.traffic_direction.clone(),
            ip_version: f.ip_version.clone(),
            reply: f.reply.clone(),
            tcp_flags: f.tcp_flags.clone(),
            node_name,
            dns_query: regexes(&field("dns_query"), &f.dns_query)?,
            http_method: f.http_method.clone(),
            http_path: regexes(&field("http_path"), &f.http_path)?,
            http_status: all(&f.http_status_code, &field("http_status_code"), StatusCode::parse)?,
            event_type: f.event_type.clone(),
        })
    }

    pub fn matches(&self, f: &flow::Flow) -> bool {
        let ip = f.ip.as_ref();
        let addr = |text: Option<&String>| text.and_then(|t| t.parse::<IpAddr>().ok());
        let (src, dst) = (addr(ip.map(|i| &i.source)), addr(ip.map(|i| &i.destination)));
        let (sport, dport, proto) = ports(f);
        let empty = flow::Endpoint::default();
        let (source, destination) = (f.source.as_ref().unwrap_or(&empty), f.destination.as_ref().unwrap_or(&empty));
        any(&self.source_ip, |n| src.is_some_and(|a| n.contains(&a)))
            && any(&self.destination_ip, |n| dst.is_some_and(|a| n.contains(&a)))
            && any(&self.source_pod, |p| p.matches(source))
            && any(&self.destination_pod, |p| p.matches(destination))
            && any(&self.source_service, |p| f.source_service.as_ref().is_some_and(|s| p.matches_service(s)))
            && any(&self.destination_service, |p| f.destination_service.as_ref().is_some_and(|s| p.matches_service(s)))
            && any(&self.source_label, |s| s.matches(&source.labels))
            && any(&self.destination_label, |s| s.matches(&destination.labels))
            && (self.source_workload.is_empty() || workload::matches(&self.source_workload, source))
            && (self.destination_workload.is_empty() || workload::matches(&self.destination_workload, destination))
            && any(&self.source_identity, |i| *i == source.identity)
            && any(&self.destination_identity, |i| *i == destination.identity)
            && any(&self.source_port, |p| sport == Some(*p))
            && any(&self.destination_port, |p| dport == Some(*p))
            && any(&self.protocol, |p| proto.is_some_and(|q| p.covers(q)))
            && any(&self.verdict, |v| *v == f.verdict)
            && any(&self.drop_reason_desc, |r| *r == f.drop_reason_desc)
            && any(&self.traffic_direction, |d| *d == f.traffic_direction)
            && any(&self.ip_version, |v| ip.is_some_and(|i| i.ip_version == *v))
            && any(&self.reply, |r| f.is_reply == Some(*r))
            && any(&self.tcp_flags, |want| flags(f).is_some_and(|have| has_flags(&have, want)))
            && any(&self.node_name, |p| node_matches(p, &f.node_name))
            && (self.event_type.is_empty() || crate::hubble::event_type::matches(&self.event_type, f))
            && any(&self.dns_query, |r| dns(f).is_some_and(|d| r.is_match(&d.query)))
            && any(&self.http_method, |m| http(f).is_some_and(|h| h.method.eq_ignore_ascii_case(m)))
            && any(&self.http_path, |r| http(f).is_some_and(|h| r.is_match(url_path(&h.url))))
            && any(&self.http_status, |s| http(f).is_some_and(|h| h.code != 0 && s.matches(h.code)))
    }
}

fn any<T>(wanted: &[T], test: impl Fn(&T) -> bool) -> bool {
    wanted.is_empty() || wanted.iter().any(test)
}

fn ports(f: &flow::Flow) -> (Option<u16>, Option<u16>, Option<Protocol>) {
    use flow::layer4::Protocol as P;
    let port = |p: u32| u16::try_from(p).ok();
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(P::Tcp(t)) => (port(t.source_port), port(t.destination_port), Some(Protocol::Tcp)),
        Some(P::Udp(u)) => (port(u.source_port), port(u.destination_port), Some(Protocol::Udp)),
        Some(P::Sctp(s)) => (port(s.source_port), port(s.destination_port), Some(Protocol::Sctp)),
        Some(P::IcmPv4(_)) => (None, None, Some(Protocol::Icmpv4)),
        Some(P::IcmPv6(_)) => (None, None, Some(Protocol::Icmpv6)),
        None => (None, None, None),
    }
}

fn flags(f: &flow::Flow) -> Option<flow::TcpFlags> {
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(flow::layer4::Protocol::Tcp(t)) => t.flags,
        _ => None,
    }
}

/// Every flag the filter sets is set on the flow.
fn has_flags(have: &flow::TcpFlags, want: &flow::TcpFlags) -> bool {
    let pairs = [
        (have.fin, want.fin),
        (have.syn, want.syn),
        (have.rst, want.rst),
        (have.psh, want.psh),
        (have.ack, want.ack),
        (have.urg, want.urg),
        (have.ece, want.ece),
        (have.cwr, want.cwr),
        (have.ns, want.ns),
    ];
    pairs.iter().all(|(h, w)| *h || !*w)
}

/// `*` matches any run of characters.
/// Hubble's node filter: `NODE` (any cluster), `CLUSTER/NODE` or `CLUSTER/`
/// (every node of it), each part a glob; a flow's node is `cluster/node` in
/// a ClusterMesh, else the node's name alone (no cluster).
fn node_matches(pattern: &str, node_name: &str) -> bool {
    let (cluster, node) = node_name.split_once('/').unwrap_or(("", node_name));
    let (want_cluster, want_node) = match pattern.split_once('/') {
        Some((c, "")) => (c, "*"),
        Some((c, n)) => (c, n),
        None => ("*", pattern),
    };
    glob(want_cluster, cluster) && glob(want_node, node)
}

fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

impl Protocol {
    fn covers(self, seen: Protocol) -> bool {
        self == seen || (self == Protocol::Icmp && matches!(seen, Protocol::Icmpv4 | Protocol::Icmpv6))
    }
}

impl PodPattern {
    fn matches(&self, e: &flow::Endpoint) -> bool {
        !e.pod_name.is_empty()
            && self.namespace.as_ref().is_none_or(|ns| *ns == e.namespace)
            && e.pod_name.starts_with(&self.prefix)
    }

    fn matches_service(&self, s: &flow::Service) -> bool {
        self.namespace.as_ref().is_none_or(|ns| *ns == s.namespace) && s.name.starts_with(&self.prefix)
    }
}

impl Selector {
    /// `labels` are Hubble's `source:key=value` strings.
    fn matches(&self, labels: &[String]) -> bool {
        let parsed: Vec<(&str, &str, &str)> = labels
            .iter()
            .filter_map(|l| {
                let (source, kv) = l.split_once(':')?;
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                Some((source, k, v))
            })
            .collect();
        self.0.iter().all(|r| {
            let mut found = parsed
                .iter()
                .filter(|(s, k, _)| *k == r.key && r.source.as_deref().is_none_or(|want| want == *s))
                .map(|(_, _, v)| *v);
            match &r.op {
                Op::Exists => found.next().is_some(),
                Op::DoesNotExist => found.next().is_none(),
                Op::In(values) => found.any(|v| values.iter().any(|w| w == v)),
                Op::NotIn(values) => found.all(|v| values.iter().all(|w| w != v)),
            }
        })
    }
}

/// A request's whitelist and blacklist.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    whitelist: Vec<Filter>,
    blacklist: Vec<Filter>,
}

impl Filters {
    pub fn parse(whitelist: &[flow::FlowFilter], blacklist: &[flow::FlowFilter]) -> Result<Self, String> {
        let parse = |list: &[flow::FlowFilter], name: &str| {
            list.iter()
                .enumerate()
                .map(|(i, f)| Filter::parse(f, &format!("{name}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self { whitelist: parse(whitelist, "whitelist")?, blacklist: parse(blacklist, "blacklist")? })
    }

    pub fn wants(&self, f: &flow::Flow) -> bool {
        (self.whitelist.is_empty() || self.whitelist.iter().any(|w| w.matches(f)))
            && !self.blacklist.iter().any(|b| b.matches(f))
    }
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
