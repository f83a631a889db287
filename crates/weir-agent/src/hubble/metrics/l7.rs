//! Hubble's `dns`, `http` and `httpV2` families: what each counts of an L7
//! flow (Hubble's access-log event), with Hubble's label names and values.
//! Pure.
//!
//! `reporter` is Hubble's: `client` for a flow seen at the client's egress,
//! `server` at the server's ingress. Weir reads L7 messages on the client's
//! pod path (and in the client's OpenSSL calls), and its L7 flows say so
//! (traffic direction EGRESS, as Hubble's proxy on a pod's egress): their
//! reporter is `client`.

use weir_proto::flow::{self, layer7::Record};

use super::config::ContextOptions;
use super::registry::{counted, Family, Increment, Labels};

/// Hubble's names of DNS response codes (its metrics' `rcode` label); codes
/// it does not name are the empty string.
pub fn rcode_name(rcode: u32) -> &'static str {
    match rcode {
        0 => "No Error",
        1 => "Format Error",
        2 => "Server Failure",
        3 => "Non-Existent Domain",
        4 => "Not Implemented",
        5 => "Query Refused",
        6 => "Name Exists when it should not",
        7 => "RR Set Exists when it should not",
        8 => "RR Set that should exist does not",
        9 => "Not Authorized",
        10 => "Name not contained in zone",
        11 => "DSO-TYPE Not Implemented",
        16 => "Bad OPT Version",
        17 => "Key not recognized",
        18 => "Signature out of time window",
        19 => "Bad TKEY Mode",
        20 => "Duplicate key name",
        21 => "Algorithm not supported",
        22 => "Bad Truncation",
        23 => "Bad/missing Server Cookie",
        _ => "",
    }
}

/// `dns`: a query (a message not a reply, or one policy dropped) counts in
/// `hubble_dns_queries_total`; a reply in `hubble_dns_responses_total`, and
/// once per answer record in `hubble_dns_response_types_total` by its type.
pub(super) fn dns(options: &ContextOptions, f: &flow::Flow) -> Vec<Increment> {
    let Some(Record::Dns(dns)) = f.l7.as_ref().and_then(|l7| l7.record.as_ref()) else { return vec![] };
    if options.ignore_aaaa && dns.qtypes.len() == 1 && dns.qtypes[0] == "AAAA" {
        return vec![];
    }
    let qtypes = dns.qtypes.join(",");
    let with_query = |mut labels: Labels| {
        if options.include_query {
            labels.push(("query", dns.query.clone()));
        }
        labels
    };
    let message = |rcode: &str| {
        with_query(vec![
            ("rcode", rcode.into()),
            ("qtypes", qtypes.clone()),
            ("ips_returned", dns.ips.len().to_string()),
        ])
    };
    if f.verdict == flow::Verdict::Dropped as i32 {
        return vec![counted(Family::DnsQueries, message("Policy denied"))];
    }
    if f.is_reply != Some(true) {
        return vec![counted(Family::DnsQueries, message(""))];
    }
    let mut out = vec![counted(Family::DnsResponses, message(rcode_name(dns.rcode)))];
    for rrtype in &dns.rrtypes {
        out.push(counted(
            Family::DnsResponseTypes,
            with_query(vec![("type", rrtype.clone()), ("qtypes", qtypes.clone())]),
        ));
    }
    out
}

/// Hubble's `reporter`: which end of the exchange saw the message.
fn reporter(f: &flow::Flow) -> &'static str {
    match flow::TrafficDirection::try_from(f.traffic_direction) {
        Ok(flow::TrafficDirection::Egress) => "client",
        Ok(flow::TrafficDirection::Ingress) => "server",
        _ => "unknown",
    }
}

/// `http` (`v2` false): a request counts in `hubble_http_requests_total`, a
/// response in `hubble_http_responses_total` and its latency in
/// `hubble_http_request_duration_seconds`. `httpV2`: only responses, in
/// `hubble_http_requests_total` with their status, and the duration.
pub(super) fn http(f: &flow::Flow, v2: bool) -> Vec<Increment> {
    let Some(l7) = f.l7.as_ref() else { return vec![] };
    let Some(Record::Http(http)) = l7.record.as_ref() else { return vec![] };
    let reporter = reporter(f);
    let response = match flow::L7FlowType::try_from(l7.r#type) {
        Ok(flow::L7FlowType::Request) if !v2 => false,
        Ok(flow::L7FlowType::Response) => true,
        _ => return vec![],
    };
    let method = || ("method", http.method.clone());
    if !response {
        let labels = vec![method(), ("protocol", http.protocol.clone()), ("reporter", reporter.into())];
        return vec![counted(Family::HttpRequests, labels)];
    }
    let status = vec![
        method(),
        ("protocol", http.protocol.clone()),
        ("status", http.code.to_string()),
        ("reporter", reporter.into()),
    ];
    let seconds = l7.latency_ns as f64 / 1e9;
    vec![
        counted(if v2 { Family::HttpRequests } else { Family::HttpResponses }, status),
        Increment {
            family: Family::HttpRequestDuration,
            labels: vec![method(), ("reporter", reporter.into())],
            observed: Some(seconds),
        },
    ]
}
