//! How `weir observe` prints Hubble's GetFlowsResponses: Hubble's `compact`,
//! `dict`, `table` and `jsonpb`, and Weir's own `text` and `json` (which add
//! the rule that decided and Weir's drop reason, from the flow's Weir
//! extension).

use serde_json::{json, Value};
use weir_proto::flow;
use weir_proto::observer::GetFlowsResponse;

use weir_agent::hubble::json as hubble_json;

/// The node status and lost-events notices, for any format: one line.
pub fn notice(response: &GetFlowsResponse) -> Option<String> {
    use weir_proto::observer::get_flows_response::ResponseTypes;
    match response.response_types.as_ref()? {
        ResponseTypes::Flow(_) => None,
        ResponseTypes::LostEvents(lost) => Some(format!(
            "EVENTS LOST: {} {} ({})",
            lost.num_events_lost,
            flow::LostEventSource::try_from(lost.source).map_or("UNKNOWN", |s| s.as_str_name()),
            response.node_name
        )),
        ResponseTypes::NodeStatus(status) => Some(format!(
            "{}: {}{}",
            weir_proto::relay::NodeState::try_from(status.state_change).map_or("UNKNOWN", |s| s.as_str_name()),
            status.node_names.join(", "),
            if status.message.is_empty() { String::new() } else { format!(" ({})", status.message) }
        )),
    }
}

fn unix_ns(f: &flow::Flow) -> u64 {
    f.time.as_ref().and_then(weir_agent::hubble::flows::timestamp_ns).unwrap_or(0)
}

/// `Dec  6 04:12:37.496`, as Hubble prints times (UTC).
fn stamp(unix_ns: u64) -> String {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let t = prost_types::Timestamp {
        seconds: i64::try_from(unix_ns / 1_000_000_000).unwrap_or(0),
        nanos: i32::try_from(unix_ns % 1_000_000_000).unwrap_or(0),
    };
    // "YYYY-MM-DDTHH:MM:SS..." from the RFC 3339 writer.
    let rfc = hubble_json::timestamp(&t);
    let month: usize = rfc.get(5..7).and_then(|m| m.parse().ok()).unwrap_or(1);
    let day: u32 = rfc.get(8..10).and_then(|d| d.parse().ok()).unwrap_or(1);
    format!(
        "{} {day:>2} {}.{:03}",
        MONTHS[month.clamp(1, 12) - 1],
        rfc.get(11..19).unwrap_or("00:00:00"),
        (unix_ns / 1_000_000) % 1000
    )
}

fn ports(f: &flow::Flow) -> (u32, u32) {
    use flow::layer4::Protocol;
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(Protocol::Tcp(t)) => (t.source_port, t.destination_port),
        Some(Protocol::Udp(u)) => (u.source_port, u.destination_port),
        Some(Protocol::Sctp(s)) => (s.source_port, s.destination_port),
        _ => (0, 0),
    }
}

fn protocol(f: &flow::Flow) -> &'static str {
    use flow::layer4::Protocol;
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(Protocol::Tcp(_)) => "TCP",
        Some(Protocol::Udp(_)) => "UDP",
        Some(Protocol::Sctp(_)) => "SCTP",
        Some(Protocol::IcmPv4(_)) => "ICMP",
        Some(Protocol::IcmPv6(_)) => "ICMPv6",
        None => "",
    }
}

/// The TCP flags set, as (name, the header's bit), in Hubble's print order.
fn tcp_flags_set(f: &flow::Flow) -> Vec<(&'static str, u32)> {
    use flow::layer4::Protocol;
    let Some(Protocol::Tcp(t)) = f.l4.as_ref().and_then(|l| l.protocol.as_ref()) else { return Vec::new() };
    let Some(flags) = &t.flags else { return Vec::new() };
    [
        (flags.syn, "SYN", 0x02),
        (flags.ack, "ACK", 0x10),
        (flags.fin, "FIN", 0x01),
        (flags.rst, "RST", 0x04),
        (flags.psh, "PSH", 0x08),
        (flags.urg, "URG", 0x20),
        (flags.ece, "ECE", 0x40),
        (flags.cwr, "CWR", 0x80),
        (flags.ns, "NS", 0x100),
    ]
    .into_iter()
    .filter_map(|(on, name, bit)| on.then_some((name, bit)))
    .collect()
}

fn tcp_flag_names(f: &flow::Flow) -> Vec<&'static str> {
    tcp_flags_set(f).into_iter().map(|(name, _)| name).collect()
}

/// The flags as the header's bits (Weir's `tcpFlags`; NS is not among them).
fn tcp_flag_bits(f: &flow::Flow) -> u32 {
    tcp_flags_set(f).into_iter().map(|(_, bit)| bit).filter(|bit| *bit <= 0x80).sum()
}

/// A reserved identity's name from its labels (`reserved:world`).
fn reserved(e: &flow::Endpoint) -> Option<&str> {
    e.labels.iter().find_map(|l| l.strip_prefix("reserved:"))
}

/// `ns/pod:port (ID:n)` or `ip:port (world)`, as Hubble's compact line.
fn hubble_end(e: Option<&flow::Endpoint>, ip: &str, port: u32) -> String {
    let port = if port == 0 { String::new() } else { format!(":{port}") };
    let Some(e) = e else { return format!("{ip}{port}") };
    let host = if ip.contains(':') && !port.is_empty() { format!("[{ip}]") } else { ip.to_string() };
    if !e.pod_name.is_empty() {
        format!("{}/{}{port} (ID:{})", e.namespace, e.pod_name, e.identity)
    } else if let Some(name) = reserved(e) {
        format!("{host}{port} ({name})")
    } else {
        format!("{host}{port} (ID:{})", e.identity)
    }
}

fn ips(f: &flow::Flow) -> (String, String) {
    f.ip.as_ref().map_or_else(Default::default, |ip| (ip.source.clone(), ip.destination.clone()))
}

fn verdict(f: &flow::Flow) -> &'static str {
    flow::Verdict::try_from(f.verdict).map_or("UNKNOWN", |v| v.as_str_name())
}

fn direction(f: &flow::Flow) -> &'static str {
    match flow::TrafficDirection::try_from(f.traffic_direction) {
        Ok(flow::TrafficDirection::Ingress) => "INGRESS",
        Ok(flow::TrafficDirection::Egress) => "EGRESS",
        _ => "",
    }
}

/// `policy_denied` → `Policy denied`.
fn sentence(name: &str) -> String {
    let text = name.replace('_', " ");
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |c| c.to_uppercase().chain(chars).collect())
}

/// Hubble's TYPE column: the policy verdict of an allowed flow, the drop
/// reason of a dropped one, the experiment of a packet chaos changed.
fn kind(f: &flow::Flow) -> String {
    if let Some(l7) = &f.l7 {
        // Hubble's L7 type names the protocol and the message, then where
        // it was seen (its proxy; Weir's pod path in the same column).
        let protocol = match l7.record {
            Some(flow::layer7::Record::Dns(_)) => "dns",
            Some(flow::layer7::Record::Http(_)) => "http",
            None => "l7",
        };
        let message = if l7.r#type == flow::L7FlowType::Response as i32 { "response" } else { "request" };
        return format!("{protocol}-{message} proxy");
    }
    let weir = f.weir.clone().unwrap_or_default();
    if f.verdict == flow::Verdict::Dropped as i32 {
        let reason = if weir.drop_reason.is_empty() {
            flow::DropReason::try_from(f.drop_reason_desc).map_or("unknown".into(), |r| r.as_str_name().to_lowercase())
        } else {
            weir.drop_reason
        };
        sentence(&reason)
    } else if weir.r#match == "chaos" {
        // Hubble's trace events name their observation point; a packet a
        // chaos fault changed names the experiment and what it did.
        format!("chaos:{} by {}", weir.chaos, weir.rule)
    } else {
        let how = if weir.r#match == "rule" { "L3-L4" } else { "none" };
        format!("policy-verdict:{how} {} ALLOWED", direction(f))
    }
}

/// gopacket's names of DNS response codes, which Hubble prints.
fn rcode_name(rcode: u32) -> String {
    match rcode {
        0 => "No Error".into(),
        1 => "Format Error".into(),
        2 => "Server Failure".into(),
        3 => "Non-Existent Domain".into(),
        4 => "Not Implemented".into(),
        5 => "Query Refused".into(),
        other => other.to_string(),
    }
}

/// Hubble's summary of an L7 flow: `DNS Query example.com. A`, `DNS Answer
/// "10.0.0.1" TTL: 30 (Query example.com. A)`, `HTTP/1.1 GET http://web/`,
/// `HTTP/1.1 404 3ms (GET http://web/x)`.
fn l7_summary(l7: &flow::Layer7) -> String {
    let response = l7.r#type == flow::L7FlowType::Response as i32;
    match &l7.record {
        Some(flow::layer7::Record::Dns(d)) => {
            let types = d.qtypes.join(",");
            if !response {
                return format!("DNS Query {} {types}", d.query);
            }
            let answer = if d.rcode != 0 {
                format!("RCode: {}", rcode_name(d.rcode))
            } else {
                let mut parts = Vec::new();
                if !d.ips.is_empty() {
                    parts.push(format!("{:?}", d.ips.join(",")));
                }
                if !d.cnames.is_empty() {
                    parts.push(format!("CNAMEs: {:?}", d.cnames.join(",")));
                }
                parts.join(" ")
            };
            format!("DNS Answer {answer} TTL: {} (Query {} {types})", d.ttl, d.query)
        }
        Some(flow::layer7::Record::Http(h)) if response => {
            let request = format!("{} {}", h.method, h.url);
            format!("{} {} {}ms ({})", h.protocol, h.code, l7.latency_ns / 1_000_000, request.trim())
        }
        Some(flow::layer7::Record::Http(h)) => format!("{} {} {}", h.protocol, h.method, h.url),
        None => String::new(),
    }
}

fn summary(f: &flow::Flow) -> String {
    use flow::layer4::Protocol;
    if let Some(l7) = &f.l7 {
        return l7_summary(l7);
    }
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(Protocol::Tcp(_)) => format!("TCP Flags: {}", tcp_flag_names(f).join(", ")),
        Some(Protocol::IcmPv4(i)) => format!("ICMPv4 type {}", i.r#type),
        Some(Protocol::IcmPv6(i)) => format!("ICMPv6 type {}", i.r#type),
        _ => protocol(f).to_string(),
    }
}

fn arrow(f: &flow::Flow) -> &'static str {
    match f.is_reply {
        Some(false) => "->",
        Some(true) => "<-",
        None => "<>",
    }
}

fn columns(f: &flow::Flow) -> [String; 6] {
    let (sport, dport) = ports(f);
    let (src, dst) = ips(f);
    let (mut from, mut to) =
        (hubble_end(f.source.as_ref(), &src, sport), hubble_end(f.destination.as_ref(), &dst, dport));
    // As Hubble prints a reply: the side that asked first, then `<-`.
    if f.is_reply == Some(true) {
        std::mem::swap(&mut from, &mut to);
    }
    [stamp(unix_ns(f)), from, to, kind(f), verdict(f).to_string(), summary(f)]
}

/// Hubble's `-o compact` line.
pub fn compact(f: &flow::Flow, node_name: bool) -> String {
    let [time, src, dst, kind, verdict, summary] = columns(f);
    let node = if node_name { format!(" [{}]", f.node_name) } else { String::new() };
    format!("{time}{node}: {src} {} {dst} {kind} {verdict} ({summary})", arrow(f))
}

/// Hubble's `-o dict` record.
pub fn dict(f: &flow::Flow, node_name: bool) -> String {
    let [time, src, dst, kind, verdict, summary] = columns(f);
    let node = if node_name { format!("       NODE: {}\n", f.node_name) } else { String::new() };
    format!(
        "  TIMESTAMP: {time}\n{node}     SOURCE: {src}\nDESTINATION: {dst}\n       TYPE: {kind}\n    VERDICT: {verdict}\n    SUMMARY: {summary}\n------------"
    )
}

/// Hubble's `-o table` header and rows (fixed widths, printed as they come).
pub fn table_header(node_name: bool) -> String {
    table_row(
        &["TIMESTAMP", "NODE", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"].map(String::from),
        node_name,
    )
}

pub fn table(f: &flow::Flow, node_name: bool) -> String {
    let [time, src, dst, kind, verdict, summary] = columns(f);
    table_row(&[time, f.node_name.clone(), src, dst, kind, verdict, summary], node_name)
}

fn table_row(cells: &[String; 7], node_name: bool) -> String {
    let [time, node, src, dst, kind, verdict, summary] = cells;
    let node = if node_name { format!("{node:<10} ") } else { String::new() };
    format!("{time:<20} {node}{src:<36} {dst:<36} {kind:<36} {verdict:<10} {summary}")
}

/// The process behind an end, where known: ` curl(4242)`.
fn process_note(process: Option<&flow::WeirProcess>) -> String {
    process.map_or_else(String::new, |p| format!(" {}({})", p.binary.rsplit('/').next().unwrap_or_default(), p.pid))
}

/// Weir's own end: `ns/pod [id]` or `ip (host) [id]`.
fn weir_end(e: Option<&flow::Endpoint>, ip: &str) -> String {
    let Some(e) = e else { return ip.to_string() };
    let who = if !e.pod_name.is_empty() {
        format!("{}/{}", e.namespace, e.pod_name)
    } else if let Some(name) = reserved(e) {
        format!("{ip} ({name})")
    } else {
        ip.to_string()
    };
    format!("{who} [{}]", e.identity)
}

/// Weir's `-o text` line: who, the protocol, and the rule that decided.
pub fn text(f: &flow::Flow) -> String {
    let weir = f.weir.clone().unwrap_or_default();
    let (sport, dport) = ports(f);
    let (src, dst) = ips(f);
    let port = |p: u32| if p == 0 { String::new() } else { format!(":{p}") };
    let proto = protocol(f);
    let flags = if proto == "TCP" { format!(" {}", tcp_flag_names(f).join("|")) } else { String::new() };
    let dir = direction(f).to_lowercase();
    let why = match (f.verdict == flow::Verdict::Dropped as i32, weir.r#match.as_str()) {
        (true, _) if !weir.rule.is_empty() => format!("DROPPED ({}) by {}", weir.drop_reason, weir.rule),
        (true, "default_deny") => format!("DROPPED ({}): {dir} default deny", weir.drop_reason),
        (true, _) => format!("DROPPED ({})", weir.drop_reason),
        (false, "rule") => format!("FORWARDED {dir} allowed by {}", weir.rule),
        (false, "chaos") => format!("FORWARDED ({}) by {}", weir.chaos, weir.rule),
        (false, _) => format!("FORWARDED ({dir} not enforced)"),
    };
    // An L7 flow says what the message was instead of how policy judged.
    let why = match &f.l7 {
        Some(l7) => format!("{} {}", kind(f).trim_end_matches(" proxy"), l7_summary(l7)),
        None => why,
    };
    format!(
        "{} {:<8} {}{}{} -> {}{}{} {proto}{flags}  {why}",
        crate::output::clock(unix_ns(f)),
        f.node_name,
        weir_end(f.source.as_ref(), &src),
        port(sport),
        process_note(weir.source_process.as_ref()),
        weir_end(f.destination.as_ref(), &dst),
        port(dport),
        process_note(weir.destination_process.as_ref()),
    )
}

fn weir_end_json(
    e: Option<&flow::Endpoint>,
    ip: &str,
    process: Option<&flow::WeirProcess>,
    service: Option<&flow::Service>,
) -> Value {
    let Some(e) = e else { return Value::Null };
    let service = service.map_or(Value::Null, |s| json!({"namespace": s.namespace, "name": s.name}));
    let process =
        process.map_or(Value::Null, |p| json!({"pid": p.pid, "binary": p.binary, "execId": p.exec_id, "uid": p.uid}));
    let labels: serde_json::Map<String, Value> = e
        .labels
        .iter()
        .filter_map(|l| l.strip_prefix("k8s:"))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| *k != "io.kubernetes.pod.namespace")
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    json!({
        "ip": ip, "identity": e.identity, "identityName": reserved(e).unwrap_or_default(),
        "cluster": e.cluster_name, "namespace": e.namespace, "pod": e.pod_name, "labels": labels,
        "process": process, "service": service,
    })
}

/// Weir's `-o weir-json` object.
pub fn weir_json(f: &flow::Flow) -> Value {
    let weir = f.weir.clone().unwrap_or_default();
    let (sport, dport) = ports(f);
    let (src, dst) = ips(f);
    json!({
        "node": f.node_name, "timeUnixNs": unix_ns(f), "verdict": verdict(f).to_lowercase(),
        "dropReason": weir.drop_reason, "dropReasonCode": weir.drop_reason_code,
        "direction": direction(f).to_lowercase(), "protocol": protocol(f),
        "source": weir_end_json(f.source.as_ref(), &src, weir.source_process.as_ref(), f.source_service.as_ref()),
        "destination": weir_end_json(
            f.destination.as_ref(),
            &dst,
            weir.destination_process.as_ref(),
            f.destination_service.as_ref()
        ),
        "sourcePort": sport, "destinationPort": dport, "rule": weir.rule, "match": weir.r#match,
        "chaos": weir.chaos,
        "tcpFlags": tcp_flag_bits(f),
    })
}

/// Hubble's `-o jsonpb` of any response.
pub fn jsonpb(response: &GetFlowsResponse) -> Value {
    use weir_proto::observer::get_flows_response::ResponseTypes;
    let time = response.time.as_ref().map(hubble_json::timestamp);
    match response.response_types.as_ref() {
        Some(ResponseTypes::Flow(f)) => hubble_json::response(f),
        Some(ResponseTypes::LostEvents(lost)) => json!({
            "lost_events": {
                "source": flow::LostEventSource::try_from(lost.source).map_or("UNKNOWN_LOST_EVENT_SOURCE", |s| s.as_str_name()),
                "num_events_lost": lost.num_events_lost.to_string(),
            },
            "node_name": response.node_name, "time": time,
        }),
        Some(ResponseTypes::NodeStatus(status)) => json!({
            "node_status": {
                "state_change": weir_proto::relay::NodeState::try_from(status.state_change).map_or("UNKNOWN_NODE_STATE", |s| s.as_str_name()),
                "node_names": status.node_names, "message": status.message,
            },
            "node_name": response.node_name, "time": time,
        }),
        None => json!({}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dropped: bool) -> flow::Flow {
        flow::Flow {
            time: Some(prost_types::Timestamp { seconds: 1_796_529_157, nanos: 496_000_000 }),
            verdict: if dropped { flow::Verdict::Dropped } else { flow::Verdict::Forwarded } as i32,
            ip: Some(flow::Ip { source: "10.244.0.2".into(), destination: "10.244.1.2".into(), ..Default::default() }),
            l4: Some(flow::Layer4 {
                protocol: Some(flow::layer4::Protocol::Tcp(flow::Tcp {
                    source_port: 39112,
                    destination_port: 8080,
                    flags: Some(flow::TcpFlags { syn: true, ..Default::default() }),
                })),
            }),
            source: Some(flow::Endpoint {
                identity: 258,
                namespace: "frontend".into(),
                pod_name: "web".into(),
                labels: vec!["k8s:app=web".into(), "k8s:io.kubernetes.pod.namespace=frontend".into()],
                ..Default::default()
            }),
            destination: Some(flow::Endpoint {
                identity: 2,
                labels: vec!["reserved:world".into()],
                ..Default::default()
            }),
            node_name: "node-a".into(),
            traffic_direction: flow::TrafficDirection::Egress as i32,
            is_reply: Some(false),
            weir: Some(flow::WeirFlow {
                drop_reason: if dropped { "policy_denied".into() } else { String::new() },
                drop_reason_code: u32::from(dropped) * 3,
                rule: if dropped { String::new() } else { "NetworkPolicy frontend/out spec.egress[0]".into() },
                r#match: if dropped { "default_deny".into() } else { "rule".into() },
                chaos: String::new(),
                source_process: Some(flow::WeirProcess {
                    pid: 4242,
                    binary: "/usr/bin/curl".into(),
                    ..Default::default()
                }),
                destination_process: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn compact_reads_as_hubbles() {
        assert_eq!(
            compact(&sample(false), false),
            "Dec  6 03:52:37.496: frontend/web:39112 (ID:258) -> 10.244.1.2:8080 (world) policy-verdict:L3-L4 EGRESS ALLOWED FORWARDED (TCP Flags: SYN)"
        );
        assert!(compact(&sample(true), true).starts_with("Dec  6 03:52:37.496 [node-a]: "));
        assert!(compact(&sample(true), false).ends_with("Policy denied DROPPED (TCP Flags: SYN)"));
        assert!(dict(&sample(true), false).contains("\n    VERDICT: DROPPED\n"));
    }

    #[test]
    fn l7_flows_print_as_hubbles_dns_and_http_lines() {
        use flow::layer7::Record;
        let l7 = |response: bool, latency_ns: u64, record: Record| flow::Flow {
            l7: Some(flow::Layer7 {
                r#type: if response { flow::L7FlowType::Response } else { flow::L7FlowType::Request } as i32,
                latency_ns,
                record: Some(record),
            }),
            is_reply: Some(response),
            ..sample(false)
        };
        let query = flow::Dns { query: "example.com.".into(), qtypes: vec!["A".into()], ..Default::default() };
        assert!(compact(&l7(false, 0, Record::Dns(query.clone())), false)
            .ends_with("-> 10.244.1.2:8080 (world) dns-request proxy FORWARDED (DNS Query example.com. A)"));
        let answer = flow::Dns { ips: vec!["10.0.0.1".into(), "10.0.0.2".into()], ttl: 30, ..query.clone() };
        let line = compact(&l7(true, 5, Record::Dns(answer)), false);
        assert!(
            line.contains(": 10.244.1.2:8080 (world) <- frontend/web:39112 (ID:258) dns-response proxy FORWARDED"),
            "a reply prints the asking side first: {line}"
        );
        assert!(line.ends_with("(DNS Answer \"10.0.0.1,10.0.0.2\" TTL: 30 (Query example.com. A))"), "{line}");
        let nx = flow::Dns { rcode: 3, ..query };
        assert!(compact(&l7(true, 5, Record::Dns(nx)), false)
            .ends_with("(DNS Answer RCode: Non-Existent Domain TTL: 0 (Query example.com. A))"));
        let get = flow::Http {
            method: "GET".into(),
            url: "http://web:8080/x".into(),
            protocol: "HTTP/1.1".into(),
            ..Default::default()
        };
        assert!(compact(&l7(false, 0, Record::Http(get)), false)
            .ends_with("http-request proxy FORWARDED (HTTP/1.1 GET http://web:8080/x)"));
        let not_found = flow::Http { code: 404, protocol: "HTTP/1.0".into(), ..Default::default() };
        let not_found = l7(true, 3_400_000, Record::Http(not_found));
        assert!(compact(&not_found, false).ends_with("http-response proxy FORWARDED (HTTP/1.0 404 3ms ())"));
        assert!(text(&not_found).ends_with("TCP SYN  http-response HTTP/1.0 404 3ms ()"), "{}", text(&not_found));
    }

    #[test]
    fn weirs_own_formats_keep_the_rule_and_reason() {
        assert_eq!(
            text(&sample(false)),
            "03:52:37.496 node-a   frontend/web [258]:39112 curl(4242) -> 10.244.1.2 (world) [2]:8080 TCP SYN  FORWARDED egress allowed by NetworkPolicy frontend/out spec.egress[0]"
        );
        assert!(text(&sample(true)).ends_with("DROPPED (policy_denied): egress default deny"));
        let j = weir_json(&sample(true));
        assert_eq!(j["verdict"], "dropped");
        assert_eq!(j["dropReason"], "policy_denied");
        assert_eq!(j["source"]["labels"], json!({"app": "web"}));
        assert_eq!(j["destination"]["identityName"], "world");
        assert_eq!(j["source"]["process"], json!({"pid": 4242, "binary": "/usr/bin/curl", "execId": "", "uid": 0}));
        assert_eq!(j["destination"]["process"], Value::Null);
        assert_eq!(j["tcpFlags"], 2);
    }

    #[test]
    fn a_packet_chaos_changed_names_the_experiment_and_what_it_did() {
        let mut f = sample(false);
        f.weir = Some(flow::WeirFlow {
            rule: "frontend/web-api".into(),
            r#match: "chaos".into(),
            chaos: "delayed 100ms".into(),
            ..Default::default()
        });
        assert!(text(&f).ends_with("FORWARDED (delayed 100ms) by frontend/web-api"), "{}", text(&f));
        assert!(
            compact(&f, false).contains(" chaos:delayed 100ms by frontend/web-api FORWARDED "),
            "{}",
            compact(&f, false)
        );
        assert_eq!(weir_json(&f)["chaos"], "delayed 100ms");
    }
}
