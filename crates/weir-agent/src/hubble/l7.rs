//! The L7 part of a flow: the start of a DNS message or an HTTP/1.x head
//! as the pod path copied it (at most `WEIR_L7_PAYLOAD_BYTES`), read by
//! `weir_packet::l7` into Hubble's `Layer7` once, when the agent reads the
//! event. A message that cannot be read is an error naming why; its flow
//! is then reported without the L7 record (and counted by the agent).

use std::borrow::Cow;
use std::sync::Arc;

use weir_bpf::policy::{L7Kind, L7Message};
use weir_packet::l7::{parse_dns, parse_http_request, parse_http_response, rr_type_name, url_with, Unparsed};
use weir_proto::flow;

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

/// A request as its response's record names it, shared by the request's
/// own record, the table of requests waiting for a response, and the
/// response's record.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: Cow<'static, str>,
    pub url: String,
    pub protocol: Cow<'static, str>,
}

/// An L7 message as the agent read it, once, when the event was: what
/// Hubble's record is built from when a reader asks for the flow (most
/// flows held are never asked for), at a few allocations per message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L7Record {
    Dns(Box<flow::Dns>),
    Request(Arc<HttpRequest>),
    /// With its request, when the agent read it (Hubble's proxy names the
    /// request's method and URL on a response).
    Response {
        code: u32,
        protocol: Cow<'static, str>,
        request: Option<Arc<HttpRequest>>,
    },
}

/// The words of HTTP/1.x heads, kept without an allocation.
fn word(word: &str) -> Cow<'static, str> {
    const KNOWN: [&str; 11] =
        ["GET", "POST", "PUT", "HEAD", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "HTTP/1.1", "HTTP/1.0"];
    KNOWN.iter().find(|k| **k == word).map_or_else(|| Cow::Owned(word.to_string()), |k| Cow::Borrowed(*k))
}

/// Reads an L7 message. `server` names the host of a request without a
/// Host header; `request` is the request a response answers, when the
/// agent read it.
pub fn read_message(
    message: &L7Message,
    server: impl FnOnce() -> String,
    request: Option<Arc<HttpRequest>>,
) -> Result<L7Record, Unparsed> {
    Ok(match message.kind {
        L7Kind::Dns => {
            let d = parse_dns(&message.data)?;
            L7Record::Dns(Box::new(flow::Dns {
                query: d.query,
                ips: d.ips.iter().map(ToString::to_string).collect(),
                ttl: d.ttl,
                cnames: d.cnames,
                // Hubble's proxy says "proxy"; Weir reads the packet.
                observation_source: "datapath".into(),
                rcode: u32::from(d.rcode),
                qtypes: vec![rr_type_name(d.qtype)],
                rrtypes: d.rrtypes.into_iter().map(rr_type_name).collect(),
            }))
        }
        L7Kind::Http if message.response => {
            let h = parse_http_response(&message.data)?;
            L7Record::Response { code: h.code, protocol: word(h.protocol), request }
        }
        L7Kind::Http => {
            let h = parse_http_request(&message.data)?;
            let url = if h.host.is_empty() {
                url_with(scheme(message), &server(), h.path)
            } else {
                url_with(scheme(message), h.host, h.path)
            };
            L7Record::Request(Arc::new(HttpRequest { method: word(h.method), url, protocol: word(h.protocol) }))
        }
    })
}

/// Hubble's Layer7 of a message read as `record`.
pub fn layer7(message: &L7Message, record: &L7Record) -> flow::Layer7 {
    use flow::layer7::Record;
    let http = |code, method: &str, url: &str, protocol: &str| {
        Record::Http(flow::Http {
            code,
            method: method.into(),
            url: url.into(),
            protocol: protocol.into(),
            headers: Vec::new(),
        })
    };
    let record = match record {
        L7Record::Dns(dns) => Record::Dns((**dns).clone()),
        L7Record::Request(r) => http(0, &r.method, &r.url, &r.protocol),
        L7Record::Response { code, protocol, request } => {
            let (method, url) = request.as_ref().map_or(("", ""), |r| (&*r.method, r.url.as_str()));
            http(*code, method, url, protocol)
        }
    };
    flow::Layer7 {
        r#type: if message.response { flow::L7FlowType::Response } else { flow::L7FlowType::Request } as i32,
        latency_ns: message.latency_ns,
        record: Some(record),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(response: bool, data: &[u8]) -> L7Message {
        L7Message { kind: L7Kind::Http, response, latency_ns: 7, data: data.to_vec(), tls: false }
    }

    #[test]
    fn a_response_is_named_by_the_request_it_answers() {
        let request = http(false, b"GET /a?b=1 HTTP/1.1\r\nHost: api:8080\r\n\r\n");
        let read =
            read_message(&request, || unreachable!("the Host header names it"), None).expect("the request reads");
        let L7Record::Request(asked) = &read else { panic!("{read:?}") };
        assert_eq!(asked.url, "http://api:8080/a?b=1");
        assert!(matches!(asked.method, Cow::Borrowed("GET")), "known words are not copied");
        let response = http(true, b"HTTP/1.1 404 Not Found\r\n\r\n");
        let answered = read_message(&response, String::new, Some(asked.clone())).expect("the status reads");
        let Some(flow::layer7::Record::Http(h)) = layer7(&response, &answered).record else { panic!() };
        assert_eq!(
            (h.code, h.method.as_str(), h.url.as_str(), h.protocol.as_str()),
            (404, "GET", "http://api:8080/a?b=1", "HTTP/1.1")
        );
        assert_eq!(layer7(&response, &answered).latency_ns, 7);
        assert_eq!(layer7(&response, &answered).r#type, flow::L7FlowType::Response as i32);
    }

    #[test]
    fn a_request_without_host_is_named_by_its_server_and_odd_words_are_kept() {
        let request = http(false, b"PROPFIND /x HTTP/1.0\r\n\r\n");
        let read = read_message(&request, || "10.0.0.1:81".into(), None).expect("the request reads");
        let Some(flow::layer7::Record::Http(h)) = layer7(&request, &read).record else { panic!() };
        assert_eq!(
            (h.method.as_str(), h.url.as_str(), h.protocol.as_str()),
            ("PROPFIND", "http://10.0.0.1:81/x", "HTTP/1.0")
        );
        assert!(read_message(&http(true, b"HTTP/2 200\r\n"), String::new, None).is_err());
    }
}
