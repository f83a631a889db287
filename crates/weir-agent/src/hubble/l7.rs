//! The L7 part of a flow: the start of a DNS message or an HTTP/1.x head
//! as the pod path copied it (at most `WEIR_L7_PAYLOAD_BYTES`), read by
//! `weir_packet::l7` into Hubble's `Layer7`. A message that cannot be read
//! is an error naming why; its flow is then reported without the L7 record
//! (and counted by the agent).

use weir_bpf::policy::{L7Kind, L7Message};
use weir_packet::l7::{parse_dns, parse_http_request, parse_http_response, rr_type_name, url_with, Unparsed};
use weir_proto::flow;

/// Hubble's event type for L7 flows (its monitor's access-log messages).
pub const ACCESS_LOG_EVENT_TYPE: i32 = 129;

/// The host of a request's URL when it has no Host header: the server's
/// address, with its port unless the scheme's own (80, or 443 for TLS).
pub fn server_host(ip: std::net::IpAddr, port: u16, tls: bool) -> String {
    let default = if tls { 443 } else { 80 };
    match (ip, port) {
        (ip, port) if port == default && ip.is_ipv6() => format!("[{ip}]"),
        (ip, port) if port == default => ip.to_string(),
        (ip, port) => std::net::SocketAddr::new(ip, port).to_string(),
    }
}

/// The scheme of a message's URL.
pub fn scheme(message: &L7Message) -> &'static str {
    if message.tls {
        "https"
    } else {
        "http"
    }
}

/// An L7 message as Hubble's Layer7. `server` names the host of a request
/// without a Host header; `request` is the matching request's method and
/// URL for a response, when the agent saw it.
pub fn layer7(message: &L7Message, server: &str, request: Option<(&str, &str)>) -> Result<flow::Layer7, Unparsed> {
    use flow::layer7::Record;
    let record = match message.kind {
        L7Kind::Dns => {
            let d = parse_dns(&message.data)?;
            Record::Dns(flow::Dns {
                query: d.query,
                ips: d.ips.iter().map(ToString::to_string).collect(),
                ttl: d.ttl,
                cnames: d.cnames,
                // Hubble's proxy says "proxy"; Weir reads the packet.
                observation_source: "datapath".into(),
                rcode: u32::from(d.rcode),
                qtypes: vec![rr_type_name(d.qtype)],
                rrtypes: d.rrtypes.into_iter().map(rr_type_name).collect(),
            })
        }
        L7Kind::Http if message.response => {
            let h = parse_http_response(&message.data)?;
            let (method, url) = request.unwrap_or_default();
            Record::Http(flow::Http {
                code: h.code,
                method: method.into(),
                url: url.into(),
                protocol: h.protocol,
                headers: Vec::new(),
            })
        }
        L7Kind::Http => {
            let h = parse_http_request(&message.data)?;
            let host = if h.host.is_empty() { server } else { &h.host };
            Record::Http(flow::Http {
                code: 0,
                url: url_with(scheme(message), host, &h.path),
                method: h.method,
                protocol: h.protocol,
                headers: Vec::new(),
            })
        }
    };
    Ok(flow::Layer7 {
        r#type: if message.response { flow::L7FlowType::Response } else { flow::L7FlowType::Request } as i32,
        latency_ns: message.latency_ns,
        record: Some(record),
    })
}
