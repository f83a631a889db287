//! One flow read for the service map (pure): its ends and its Service as
//! graph nodes, its protocol and ports, what it adds to its edge's counts,
//! and its one-line account for the flows panel.

use weir_proto::flow;

use super::graph::{Counts, Node};

pub(super) fn protocol_and_ports(f: &flow::Flow) -> (&'static str, u32, u32) {
    use flow::layer4::Protocol;
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(Protocol::Tcp(t)) => ("TCP", t.source_port, t.destination_port),
        Some(Protocol::Udp(u)) => ("UDP", u.source_port, u.destination_port),
        Some(Protocol::Sctp(s)) => ("SCTP", s.source_port, s.destination_port),
        Some(Protocol::IcmPv4(_)) => ("ICMPv4", 0, 0),
        Some(Protocol::IcmPv6(_)) => ("ICMPv6", 0, 0),
        None => ("", 0, 0),
    }
}

/// The node an end of `f` is: its pod, its reserved identity or its address.
pub(super) fn node_of(endpoint: Option<&flow::Endpoint>, address: &str) -> Node {
    let blank = flow::Endpoint::default();
    let e = endpoint.unwrap_or(&blank);
    let app = e.labels.iter().find_map(|l| l.strip_prefix("k8s:app=")).unwrap_or_default().to_string();
    if !e.pod_name.is_empty() {
        return Node {
            id: format!("{}/{}", e.namespace, e.pod_name),
            kind: "pod",
            namespace: e.namespace.clone(),
            name: e.pod_name.clone(),
            app,
            cluster: e.cluster_name.clone(),
        };
    }
    if let Some(reserved) = e.labels.iter().find_map(|l| l.strip_prefix("reserved:")) {
        return Node {
            id: format!("reserved:{reserved}"),
            kind: "reserved",
            namespace: String::new(),
            name: reserved.to_string(),
            app,
            cluster: String::new(),
        };
    }
    let name = if address.is_empty() { "unknown".to_string() } else { address.to_string() };
    Node { id: format!("address:{name}"), kind: "address", namespace: String::new(), name, app, cluster: String::new() }
}

/// The node a Service is: `service:namespace/name`.
pub(super) fn service_node(service: &flow::Service) -> Node {
    Node {
        id: format!("service:{}/{}", service.namespace, service.name),
        kind: "service",
        namespace: service.namespace.clone(),
        name: service.name.clone(),
        app: String::new(),
        cluster: String::new(),
    }
}

pub(super) fn verdict_name(verdict: i32) -> String {
    flow::Verdict::try_from(verdict).map_or_else(|_| format!("VERDICT_{verdict}"), |v| v.as_str_name().to_string())
}

/// A flow's one-line account: its L7 message, else its L4 ends.
pub(super) fn summary(f: &flow::Flow, protocol: &str, sport: u32, dport: u32) -> String {
    use flow::layer7::Record;
    let l7_type = f.l7.as_ref().map(|l| l.r#type);
    let response = l7_type == Some(flow::L7FlowType::Response as i32);
    match f.l7.as_ref().and_then(|l| l.record.as_ref()) {
        Some(Record::Http(h)) if response => format!("{} {} {} {}", http_name(h), h.code, h.method, h.url),
        Some(Record::Http(h)) => format!("{} {} {}", http_name(h), h.method, h.url),
        Some(Record::Dns(d)) if response => {
            let answer = if d.rcode == 0 { d.ips.join(",") } else { format!("rcode {}", d.rcode) };
            format!("DNS Answer {answer} (Query {} {})", d.query, d.qtypes.join(","))
        }
        Some(Record::Dns(d)) => format!("DNS Query {} {}", d.query, d.qtypes.join(",")),
        None => {
            let (src, dst) =
                f.ip.as_ref().map_or((String::new(), String::new()), |ip| (ip.source.clone(), ip.destination.clone()));
            let flags = match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
                Some(flow::layer4::Protocol::Tcp(t)) => t.flags.as_ref().map(tcp_flags).unwrap_or_default(),
                _ => String::new(),
            };
            let ports = sport != 0 || dport != 0;
            let end = |ip: &str, port: u32| if ports { format!("{ip}:{port}") } else { ip.to_string() };
            format!("{protocol} {} -> {} {flags}", end(&src, sport), end(&dst, dport)).trim_end().to_string()
        }
    }
}

fn tcp_flags(flags: &flow::TcpFlags) -> String {
    [(flags.syn, "SYN"), (flags.ack, "ACK"), (flags.fin, "FIN"), (flags.rst, "RST"), (flags.psh, "PSH")]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(",")
}

/// The HTTP version as the message said it (`HTTP/1.1`), or `HTTP`.
fn http_name(h: &flow::Http) -> &str {
    if h.protocol.is_empty() {
        "HTTP"
    } else {
        &h.protocol
    }
}

/// What one flow adds to its edge's counts.
pub(super) fn counts_of(f: &flow::Flow) -> Counts {
    use flow::layer7::Record;
    let at_destination = f.traffic_direction != flow::TrafficDirection::Egress as i32;
    let mut c = Counts { flows: 1, at_destination: u64::from(at_destination), ..Default::default() };
    match flow::Verdict::try_from(f.verdict) {
        Ok(flow::Verdict::Forwarded) => {
            c.forwarded = 1;
            c.forwarded_at_destination = u64::from(at_destination);
        }
        Ok(flow::Verdict::Dropped) => {
            c.dropped = 1;
            let reason = f.weir.as_ref().map(|w| w.drop_reason.clone()).filter(|r| !r.is_empty());
            let reason = reason.unwrap_or_else(|| {
                flow::DropReason::try_from(f.drop_reason_desc)
                    .map_or_else(|_| f.drop_reason_desc.to_string(), |d| d.as_str_name().to_lowercase())
            });
            c.drop_reasons.insert(reason, 1);
        }
        _ => c.other = 1,
    }
    if let Some(l7) = &f.l7 {
        let response = l7.r#type == flow::L7FlowType::Response as i32;
        match (&l7.record, response) {
            (Some(Record::Http(h)), true) => {
                c.http.insert(format!("{}xx", h.code / 100), 1);
            }
            (Some(Record::Dns(d)), true) => {
                c.dns_answers = 1;
                c.dns_errors = u64::from(d.rcode != 0);
            }
            (Some(_), false) => c.requests = 1,
            (None, _) => {}
        }
    }
    c
}
