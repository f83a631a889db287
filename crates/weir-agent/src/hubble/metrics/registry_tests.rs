use super::*;
use crate::hubble::metrics::config::parse;

fn endpoint(ns: &str, pod: &str, identity: u32, app: &str) -> flow::Endpoint {
    flow::Endpoint {
        identity,
        namespace: ns.into(),
        pod_name: pod.into(),
        labels: vec![format!("k8s:app={app}"), format!("k8s:io.kubernetes.pod.namespace={ns}")],
        ..Default::default()
    }
}

fn tcp_flow(src: flow::Endpoint, dst: flow::Endpoint, dport: u32, dropped: bool) -> flow::Flow {
    flow::Flow {
        verdict: if dropped { flow::Verdict::Dropped } else { flow::Verdict::Forwarded } as i32,
        drop_reason_desc: if dropped { flow::DropReason::PolicyDenied as i32 } else { 0 },
        ip: Some(flow::Ip {
            source: "10.0.0.2".into(),
            destination: "10.0.0.3".into(),
            ip_version: flow::IpVersion::IPv4 as i32,
            encrypted: false,
        }),
        l4: Some(flow::Layer4 {
            protocol: Some(Protocol::Tcp(flow::Tcp {
                source_port: 40000,
                destination_port: dport,
                flags: Some(flow::TcpFlags { syn: true, ..Default::default() }),
            })),
        }),
        source: Some(src),
        destination: Some(dst),
        traffic_direction: flow::TrafficDirection::Ingress as i32,
        is_reply: Some(false),
        ..Default::default()
    }
}

fn ping(dropped: bool) -> flow::Flow {
    flow::Flow {
        l4: Some(flow::Layer4 { protocol: Some(Protocol::IcmPv4(flow::IcmPv4 { r#type: 8, code: 0 })) }),
        ..tcp_flow(endpoint("ns", "a", 100, "client"), endpoint("ns", "b", 101, "web"), 0, dropped)
    }
}

const S: u64 = 1_000_000_000;

#[test]
fn counts_flows_into_hubbles_families_and_renders_exact_text() {
    let config = parse(&["flow drop:sourceContext=pod;destinationContext=pod tcp port-distribution policy icmp"])
        .expect("valid");
    let mut m = HubbleMetrics::new(config, 60 * S);
    let (a, b) = (endpoint("ns", "a", 100, "client"), endpoint("ns", "b", 101, "web"));
    let allowed = Facts { policy_match: Some("l3-l4") };
    m.count(&tcp_flow(a.clone(), b.clone(), 80, false), allowed);
    m.count(&tcp_flow(a.clone(), b.clone(), 80, false), allowed);
    m.count(&tcp_flow(a.clone(), b.clone(), 81, true), Facts { policy_match: Some("none") });
    m.count(&ping(false), Facts::default());
    let mut text = String::new();
    m.render(&mut text, &[("perf_event_ring_buffer", 0), ("hubble_ring_buffer", 2)]);
    let expected = "\
# HELP hubble_flows_processed_total Total number of flows processed
# TYPE hubble_flows_processed_total counter
hubble_flows_processed_total{protocol=\"ICMPv4\",subtype=\"\",type=\"PolicyVerdict\",verdict=\"FORWARDED\"} 1
hubble_flows_processed_total{protocol=\"TCP\",subtype=\"\",type=\"Drop\",verdict=\"DROPPED\"} 1
hubble_flows_processed_total{protocol=\"TCP\",subtype=\"\",type=\"PolicyVerdict\",verdict=\"FORWARDED\"} 2
# HELP hubble_drop_total Number of drops
# TYPE hubble_drop_total counter
hubble_drop_total{destination=\"ns/b\",protocol=\"TCP\",reason=\"POLICY_DENIED\",source=\"ns/a\"} 1
# HELP hubble_tcp_flags_total TCP flag occurrences
# TYPE hubble_tcp_flags_total counter
hubble_tcp_flags_total{family=\"IPv4\",flag=\"SYN\"} 2
# HELP hubble_port_distribution_total Numbers of packets distributed by destination port
# TYPE hubble_port_distribution_total counter
hubble_port_distribution_total{port=\"0\",protocol=\"ICMPv4\"} 1
hubble_port_distribution_total{port=\"80\",protocol=\"TCP\"} 2
# HELP hubble_policy_verdicts_total Total number of Cilium network policy verdicts
# TYPE hubble_policy_verdicts_total counter
hubble_policy_verdicts_total{action=\"dropped\",direction=\"ingress\",match=\"none\"} 1
hubble_policy_verdicts_total{action=\"forwarded\",direction=\"ingress\",match=\"l3-l4\"} 2
# HELP hubble_icmp_total Number of ICMP messages
# TYPE hubble_icmp_total counter
hubble_icmp_total{family=\"IPv4\",type=\"EchoRequest\"} 1
# HELP hubble_lost_events_total Number of lost events
# TYPE hubble_lost_events_total counter
hubble_lost_events_total{source=\"hubble_ring_buffer\"} 2
hubble_lost_events_total{source=\"perf_event_ring_buffer\"} 0
";
    assert_eq!(text, expected);
}

#[test]
fn context_options_name_the_sides_as_hubble_does() {
    let config = parse(&[
        "drop:sourceContext=app|pod;destinationContext=identity;labelsContext=source_namespace,traffic_direction",
    ])
    .expect("valid");
    let mut m = HubbleMetrics::new(config, 60 * S);
    let world = flow::Endpoint { identity: 2, labels: vec!["reserved:world".into()], ..Default::default() };
    m.count(&tcp_flow(endpoint("ns", "a", 100, ""), world, 80, true), Facts::default());
    let mut text = String::new();
    m.render(&mut text, &[]);
    // app is empty (k8s:app= has no value), so the pod names the source.
    assert!(
        text.contains(
            "hubble_drop_total{destination=\"reserved:world\",protocol=\"TCP\",reason=\"POLICY_DENIED\",\
             source=\"ns/a\",source_namespace=\"ns\",traffic_direction=\"ingress\"} 1\n"
        ),
        "{text}"
    );
    // Families not enabled are not rendered; lost events always are.
    assert!(!text.contains("hubble_flows_processed_total") && text.contains("# TYPE hubble_lost_events_total counter"));
}

#[test]
fn series_naming_a_deleted_pod_expire_after_the_ttl() {
    let config = parse(&["drop:sourceContext=pod flow:sourceContext=namespace"]).expect("valid");
    let mut m = HubbleMetrics::new(config, 60 * S);
    let b = endpoint("ns", "b", 101, "web");
    m.count(&tcp_flow(endpoint("ns", "a", 100, "client"), b.clone(), 80, true), Facts::default());
    m.count(&tcp_flow(endpoint("ns", "c", 102, "client"), b.clone(), 80, true), Facts::default());
    assert_eq!(m.len(), 3, "a drop series per source pod, one flow series for the namespace");
    let pods = |names: &[&str]| names.iter().map(|n| format!("ns/{n}")).collect::<BTreeSet<_>>();
    m.pods_now(10 * S, &pods(&["a", "b", "c"]));
    m.expire(1000 * S);
    assert_eq!(m.len(), 3, "nothing is gone");
    m.pods_now(10 * S, &pods(&["b", "c"]));
    m.pods_now(20 * S, &pods(&["b", "c"]));
    m.expire(69 * S);
    assert_eq!(m.len(), 3, "a is gone, but not for the TTL yet");
    m.expire(70 * S);
    assert_eq!(m.len(), 2, "a's series went 60 s after a was first seen gone");
    let mut text = String::new();
    m.render(&mut text, &[]);
    assert!(!text.contains("ns/a") && text.contains("source=\"ns/c\""), "{text}");
    // A pod that comes back before the TTL keeps its series.
    m.pods_now(100 * S, &pods(&["b"]));
    m.pods_now(110 * S, &pods(&["b", "c"]));
    m.expire(1000 * S);
    assert_eq!(m.len(), 2);
}

#[test]
fn icmp_types_are_spelled_as_gopacket_does() {
    assert_eq!(icmp_type(false, 0), "EchoReply");
    assert_eq!(icmp_type(true, 128), "EchoRequest");
    assert_eq!(icmp_type(false, 3), "DestinationUnreachable");
    assert_eq!(icmp_type(false, 99), "99(0)");
}

#[test]
fn a_packet_chaos_changed_is_a_trace_event() {
    let config = parse(&["flow"]).expect("valid");
    let mut m = HubbleMetrics::new(config, 60 * S);
    let mut delayed = tcp_flow(endpoint("ns", "a", 100, "client"), endpoint("ns", "b", 101, "web"), 80, false);
    delayed.weir = Some(flow::WeirFlow { r#match: "chaos".into(), ..Default::default() });
    m.count(&delayed, Facts::default());
    let mut text = String::new();
    m.render(&mut text, &[]);
    assert!(
        text.contains(
            "hubble_flows_processed_total{protocol=\"TCP\",subtype=\"\",type=\"Trace\",verdict=\"FORWARDED\"} 1"
        ),
        "{text}"
    );
}

/// An L7 flow as Weir's agent makes it: seen at the client (EGRESS), a
/// reply when it answers.
fn l7_flow(
    src: flow::Endpoint,
    dst: flow::Endpoint,
    response: bool,
    latency_ns: u64,
    record: flow::layer7::Record,
) -> flow::Flow {
    let (src, dst) = if response { (dst, src) } else { (src, dst) };
    flow::Flow {
        r#type: flow::FlowType::L7 as i32,
        event_type: Some(flow::CiliumEventType { r#type: 129, sub_type: 0 }),
        l7: Some(flow::Layer7 {
            r#type: if response { flow::L7FlowType::Response } else { flow::L7FlowType::Request } as i32,
            latency_ns,
            record: Some(record),
        }),
        traffic_direction: flow::TrafficDirection::Egress as i32,
        is_reply: Some(response),
        ip: Some(flow::Ip {
            source: if response { "10.0.0.3" } else { "10.0.0.2" }.into(),
            destination: if response { "10.0.0.2" } else { "10.0.0.3" }.into(),
            ip_version: flow::IpVersion::IPv4 as i32,
            encrypted: false,
        }),
        ..tcp_flow(src, dst, 53, false)
    }
}

fn dns(query: &str, qtype: &str, rcode: u32, ips: &[&str]) -> flow::layer7::Record {
    flow::layer7::Record::Dns(flow::Dns {
        query: query.into(),
        ips: ips.iter().map(|i| i.to_string()).collect(),
        rcode,
        qtypes: vec![qtype.into()],
        rrtypes: ips.iter().map(|_| qtype.to_string()).collect(),
        ..Default::default()
    })
}

fn http(method: &str, code: u32) -> flow::layer7::Record {
    flow::layer7::Record::Http(flow::Http {
        code,
        method: method.into(),
        url: "http://10.0.0.3/".into(),
        protocol: "HTTP/1.1".into(),
        headers: Vec::new(),
    })
}

fn rendered(m: &HubbleMetrics) -> String {
    let mut text = String::new();
    m.render(&mut text, &[]);
    text.lines()
        .filter(|l| !l.starts_with("hubble_lost_events_total") && !l.contains(" hubble_lost_events_total"))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn dns_counts_queries_responses_and_answer_types_as_hubble() {
    let (a, b) = (endpoint("ns", "a", 100, "client"), endpoint("ns", "b", 101, "dns"));
    let config = parse(&["dns:sourceContext=pod;ignoreAAAA flow"]).expect("valid");
    let mut m = HubbleMetrics::new(config, 60 * S);
    let count = |m: &mut HubbleMetrics, response, record| {
        m.count(&l7_flow(a.clone(), b.clone(), response, 0, record), Facts::default())
    };
    count(&mut m, false, dns("api.example.", "A", 0, &[]));
    count(&mut m, true, dns("api.example.", "A", 0, &["192.0.2.7"]));
    count(&mut m, false, dns("nx.example.", "A", 0, &[]));
    count(&mut m, true, dns("nx.example.", "A", 3, &[]));
    count(&mut m, false, dns("api.example.", "AAAA", 0, &[]));
    let expected = "\
# HELP hubble_flows_processed_total Total number of flows processed
# TYPE hubble_flows_processed_total counter
hubble_flows_processed_total{protocol=\"DNS\",subtype=\"DNS\",type=\"L7\",verdict=\"FORWARDED\"} 5
# HELP hubble_dns_queries_total Number of DNS queries observed
# TYPE hubble_dns_queries_total counter
hubble_dns_queries_total{ips_returned=\"0\",qtypes=\"A\",rcode=\"\",source=\"ns/a\"} 2
# HELP hubble_dns_responses_total Number of DNS queries observed
# TYPE hubble_dns_responses_total counter
hubble_dns_responses_total{ips_returned=\"0\",qtypes=\"A\",rcode=\"Non-Existent Domain\",source=\"ns/b\"} 1
hubble_dns_responses_total{ips_returned=\"1\",qtypes=\"A\",rcode=\"No Error\",source=\"ns/b\"} 1
# HELP hubble_dns_response_types_total Number of DNS queries observed
# TYPE hubble_dns_response_types_total counter
hubble_dns_response_types_total{qtypes=\"A\",source=\"ns/b\",type=\"A\"} 1
";
    assert_eq!(rendered(&m), expected);

    // `query` adds the name; without ignoreAAAA, AAAA queries count.
    let mut m = HubbleMetrics::new(parse(&["dns:query"]).expect("valid"), 60 * S);
    count(&mut m, false, dns("api.example.", "AAAA", 0, &[]));
    assert!(
        rendered(&m).contains(
            "hubble_dns_queries_total{ips_returned=\"0\",qtypes=\"AAAA\",query=\"api.example.\",rcode=\"\"} 1\n"
        ),
        "{}",
        rendered(&m)
    );
    // An L3/L4 flow counts in no DNS family.
    m.count(&tcp_flow(a.clone(), b.clone(), 53, false), Facts::default());
    assert_eq!(m.len(), 1);
}

#[test]
fn http_counts_requests_responses_and_durations_as_hubble() {
    let (a, b) = (endpoint("ns", "a", 100, "client"), endpoint("ns", "b", 101, "web"));
    let mut m = HubbleMetrics::new(parse(&["http:destinationContext=pod"]).expect("valid"), 60 * S);
    let count = |m: &mut HubbleMetrics, response, latency, record| {
        m.count(&l7_flow(a.clone(), b.clone(), response, latency, record), Facts::default())
    };
    count(&mut m, false, 0, http("GET", 0));
    count(&mut m, true, 3_000_000, http("GET", 200));
    count(&mut m, false, 0, http("GET", 0));
    count(&mut m, true, 300_000_000, http("GET", 404));
    let expected = "\
# HELP hubble_http_requests_total Count of HTTP requests
# TYPE hubble_http_requests_total counter
hubble_http_requests_total{destination=\"ns/b\",method=\"GET\",protocol=\"HTTP/1.1\",reporter=\"client\"} 2
# HELP hubble_http_responses_total Count of HTTP responses
# TYPE hubble_http_responses_total counter
hubble_http_responses_total{destination=\"ns/a\",method=\"GET\",protocol=\"HTTP/1.1\",reporter=\"client\",status=\"200\"} 1
hubble_http_responses_total{destination=\"ns/a\",method=\"GET\",protocol=\"HTTP/1.1\",reporter=\"client\",status=\"404\"} 1
# HELP hubble_http_request_duration_seconds Quantiles of HTTP request duration in seconds
# TYPE hubble_http_request_duration_seconds histogram
hubble_http_request_duration_seconds_bucket{destination=\"ns/a\",method=\"GET\",reporter=\"client\",le=\"0.005\"} 1
hubble_http_request_duration_seconds_bucket{destination=\"ns/a\",method=\"GET\",reporter=\"client\",le=\"0.01\"} 1
hubble_http_request_duration_seconds_bucket{destination=\"ns/a\",method=\"GET\",reporter=\"client\",le=\"0.025\"} 1
hubble_http_request_duration_seconds_bucket{destination=\"ns/a\",method=\"GET\",reporter=\"client\",le=\"0.05\"} 1
hubble_http_request_duration_seconds_bucket{destination=\"ns/a\",method=\"GET\",reporter=\"client\",le=\"0.1\"} 1
hubble_http_request_duration_seconds_bucket{destination=\"ns/a\",method=\"GET\",reporter=\"client\",le=\"0.25\"} 1
hubble_http_request_duration_seconds_bucket{destination=\"ns/a\",method=\"GET\",reporter=\"client\",le=\"0.5\"} 2
hubble_http_request_duration_seconds_bucket{destination=\"ns/a\",method=\"GET\",reporter=\"client\",le=\"1\"} 2
hubble_http_request_duration_seconds_bucket{destination=\"ns/a\",method=\"GET\",reporter=\"client\",le=\"2.5\"} 2
hubble_http_request_duration_seconds_bucket{destination=\"ns/a\",method=\"GET\",reporter=\"client\",le=\"5\"} 2
hubble_http_request_duration_seconds_bucket{destination=\"ns/a\",method=\"GET\",reporter=\"client\",le=\"10\"} 2
hubble_http_request_duration_seconds_bucket{destination=\"ns/a\",method=\"GET\",reporter=\"client\",le=\"+Inf\"} 2
hubble_http_request_duration_seconds_sum{destination=\"ns/a\",method=\"GET\",reporter=\"client\"} 0.303
hubble_http_request_duration_seconds_count{destination=\"ns/a\",method=\"GET\",reporter=\"client\"} 2
";
    assert_eq!(rendered(&m), expected);

    // httpV2: responses only, as requests with their status, named from
    // the request's side (the client is the source again).
    let config = parse(&["httpV2:sourceContext=pod;labelsContext=source_pod,destination_pod"]).expect("valid");
    let mut m = HubbleMetrics::new(config, 60 * S);
    count(&mut m, false, 0, http("GET", 0));
    count(&mut m, true, 3_000_000, http("GET", 404));
    let text = rendered(&m);
    assert!(text.contains("hubble_http_requests_total{destination_pod=\"b\",method=\"GET\",protocol=\"HTTP/1.1\",reporter=\"client\",source=\"ns/a\",source_pod=\"a\",status=\"404\"} 1\n"), "{text}");
    assert!(text.contains("hubble_http_request_duration_seconds_count{destination_pod=\"b\",method=\"GET\",reporter=\"client\",source=\"ns/a\",source_pod=\"a\"} 1\n"), "{text}");
    assert!(!text.contains("hubble_http_responses_total"), "{text}");
    assert_eq!(m.len(), 2, "the request itself is not counted: {text}");

    // A deleted pod's L7 series expire like the others.
    m.pods_now(S, &BTreeSet::from(["ns/b".to_string()]));
    m.expire(60 * S);
    assert_eq!(m.len(), 2);
    m.expire(61 * S);
    assert!(m.is_empty(), "{}", rendered(&m));
}
