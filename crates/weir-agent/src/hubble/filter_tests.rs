//! Unit tests of Hubble's FlowFilter (filter.rs).

use super::*;
use flow::layer4::Protocol as P;

fn end(ns: &str, pod: &str, identity: u32, app: &str) -> Option<flow::Endpoint> {
    Some(flow::Endpoint {
        namespace: ns.into(),
        pod_name: pod.into(),
        identity,
        labels: vec![format!("k8s:app={app}"), format!("k8s:io.kubernetes.pod.namespace={ns}")],
        ..Default::default()
    })
}

fn sample() -> flow::Flow {
    flow::Flow {
        verdict: flow::Verdict::Dropped as i32,
        ip: Some(flow::Ip {
            source: "10.244.0.5".into(),
            destination: "10.244.1.7".into(),
            ip_version: flow::IpVersion::IPv4 as i32,
            encrypted: false,
        }),
        l4: Some(flow::Layer4 {
            protocol: Some(P::Tcp(flow::Tcp {
                source_port: 40000,
                destination_port: 80,
                flags: Some(flow::TcpFlags { syn: true, ..Default::default() }),
            })),
        }),
        source: end("frontend", "web-1", 256, "web"),
        destination: end("backend", "api-0", 257, "api"),
        node_name: "node-b".into(),
        traffic_direction: flow::TrafficDirection::Ingress as i32,
        is_reply: Some(false),
        ..Default::default()
    }
}

fn judge(f: flow::FlowFilter) -> bool {
    Filter::parse(&f, "whitelist[0]").expect("valid").matches(&sample())
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn each_field_selects_and_excludes() {
    use flow::FlowFilter as F;
    let d = F::default;
    assert!(judge(d()));
    assert!(judge(F { source_ip: s(&["10.244.0.0/24"]), ..d() }));
    assert!(!judge(F { source_ip: s(&["10.244.1.0/24"]), ..d() }));
    assert!(judge(F { destination_ip: s(&["10.9.9.9", "10.244.1.7"]), ..d() }), "any value of a field");
    assert!(judge(F { source_pod: s(&["frontend/web-"]), ..d() }));
    assert!(judge(F { source_pod: s(&["web"]), ..d() }), "a prefix in any namespace");
    assert!(judge(F { destination_pod: s(&["backend/"]), ..d() }), "a whole namespace");
    assert!(!judge(F { destination_pod: s(&["frontend/"]), ..d() }));
    assert!(judge(F { source_label: s(&["app=web"]), ..d() }));
    assert!(judge(F { source_label: s(&["k8s:app in (db, web)"]), ..d() }));
    assert!(!judge(F { source_label: s(&["reserved:app=web"]), ..d() }), "the label's source must match");
    assert!(judge(F { destination_label: s(&["app,!tier"]), ..d() }));
    assert!(!judge(F { destination_label: s(&["app!=api"]), ..d() }));
    assert!(judge(F { source_identity: vec![256], destination_identity: vec![257], ..d() }));
    assert!(!judge(F { source_identity: vec![257], ..d() }));
    assert!(judge(F { destination_port: s(&["80"]), protocol: s(&["TCP"]), ..d() }));
    assert!(!judge(F { source_port: s(&["80"]), ..d() }));
    assert!(!judge(F { protocol: s(&["icmp"]), ..d() }));
    assert!(judge(F { verdict: vec![flow::Verdict::Dropped as i32], ..d() }));
    assert!(!judge(F { verdict: vec![flow::Verdict::Forwarded as i32], ..d() }));
    let denied = flow::DropReason::PolicyDenied as i32;
    let no_route = flow::DropReason::FibLookupFailed as i32;
    let dropped = flow::Flow { drop_reason_desc: denied, ..sample() };
    let judge_dropped = |f: F| Filter::parse(&f, "whitelist[0]").expect("valid").matches(&dropped);
    assert!(judge_dropped(F { drop_reason_desc: vec![no_route, denied], ..d() }));
    assert!(!judge_dropped(F { drop_reason_desc: vec![no_route], ..d() }));
    assert!(judge(F { traffic_direction: vec![flow::TrafficDirection::Ingress as i32], ..d() }));
    assert!(judge(F { ip_version: vec![flow::IpVersion::IPv4 as i32], reply: vec![false], ..d() }));
    assert!(!judge(F { reply: vec![true], ..d() }));
    assert!(judge(F { tcp_flags: vec![flow::TcpFlags { syn: true, ..Default::default() }], ..d() }));
    assert!(!judge(F { tcp_flags: vec![flow::TcpFlags { syn: true, ack: true, ..Default::default() }], ..d() }));
    assert!(judge(F { node_name: s(&["node-*"]), ..d() }));
    assert!(!judge(F { node_name: s(&["node-a"]), ..d() }));
    assert!(!judge(F { node_name: s(&["east/"]), ..d() }), "a cluster's nodes: none outside a mesh");
    // AND within one filter.
    assert!(!judge(F { source_pod: s(&["web"]), destination_port: s(&["81"]), ..d() }));
}

#[test]
fn l7_filters_select_dns_queries_and_http_methods_paths_and_statuses() {
    use flow::layer7::Record;
    use flow::FlowFilter as F;
    let with = |record: Record| flow::Flow {
        l7: Some(flow::Layer7 { r#type: flow::L7FlowType::Response as i32, latency_ns: 1, record: Some(record) }),
        ..sample()
    };
    let dns = with(Record::Dns(flow::Dns { query: "api.example.com.".into(), ..Default::default() }));
    let http = with(Record::Http(flow::Http {
        code: 404,
        method: "GET".into(),
        url: "http://web:8080/missing?x=1".into(),
        ..Default::default()
    }));
    let judge = |f: F, flow: &flow::Flow| Filter::parse(&f, "whitelist[0]").expect("valid").matches(flow);
    let d = F::default;
    assert!(judge(F { dns_query: s(&["example\\.com\\.$"]), ..d() }, &dns));
    assert!(!judge(F { dns_query: s(&["^web\\."]), ..d() }, &dns));
    assert!(!judge(F { dns_query: s(&["."]), ..d() }, &http), "not a DNS flow");
    assert!(!judge(F { dns_query: s(&["."]), ..d() }, &sample()), "an L3/L4 flow");
    assert!(judge(F { http_method: s(&["get"]), http_path: s(&["^/missing$"]), ..d() }, &http));
    assert!(!judge(F { http_method: s(&["POST"]), ..d() }, &http));
    assert!(judge(F { http_status_code: s(&["404"]), ..d() }, &http));
    assert!(judge(F { http_status_code: s(&["4+"]), ..d() }, &http));
    assert!(judge(F { http_status_code: s(&["40+"]), ..d() }, &http));
    assert!(!judge(F { http_status_code: s(&["2+", "500"]), ..d() }, &http));
    let l7 = flow::EventTypeFilter { r#type: 129, ..Default::default() };
    let dns = flow::Flow { event_type: Some(flow::CiliumEventType { r#type: 129, sub_type: 0 }), ..dns };
    assert!(judge(F { event_type: vec![l7], ..d() }, &dns));
    assert!(!judge(F { event_type: vec![l7], ..d() }, &sample()));
}

#[test]
fn event_types_select_drops_verdicts_and_traces() {
    use flow::FlowFilter as F;
    let of = |r#type: i32, sub_type: i32| flow::Flow {
        event_type: Some(flow::CiliumEventType { r#type, sub_type }),
        ..sample()
    };
    let kind = |r#type: i32| flow::EventTypeFilter { r#type, ..Default::default() };
    let judge = |f: F, flow: &flow::Flow| Filters::parse(&[f], &[]).expect("valid").wants(flow);
    let (drop, verdict, trace) = (of(1, 133), of(5, 0), of(4, 5));
    let drops = F { event_type: vec![kind(1)], ..Default::default() };
    assert!(judge(drops.clone(), &drop));
    assert!(!judge(drops.clone(), &verdict) && !judge(drops, &trace));
    let either = F { event_type: vec![kind(5), kind(4)], ..Default::default() };
    assert!(judge(either.clone(), &verdict) && judge(either.clone(), &trace) && !judge(either, &drop));
    let denied = flow::EventTypeFilter { r#type: 1, match_sub_type: true, sub_type: 133 };
    assert!(judge(F { event_type: vec![denied], ..Default::default() }, &drop));
    assert!(!judge(F { event_type: vec![denied], ..Default::default() }, &of(1, 181)));
    // A blacklist of drops keeps the rest.
    let no_drops = Filters::parse(&[], &[F { event_type: vec![kind(1)], ..Default::default() }]).expect("valid");
    assert!(!no_drops.wants(&drop) && no_drops.wants(&verdict));
}

#[test]
fn whitelists_or_and_blacklists_exclude() {
    let f = |pod: &str| flow::FlowFilter { source_pod: s(&[pod]), ..Default::default() };
    let wants =
        |w: Vec<flow::FlowFilter>, b: Vec<flow::FlowFilter>| Filters::parse(&w, &b).expect("valid").wants(&sample());
    assert!(wants(vec![f("db"), f("web")], vec![]));
    assert!(!wants(vec![f("db")], vec![]));
    assert!(!wants(vec![f("web")], vec![f("frontend/")]));
    assert!(wants(vec![], vec![f("db")]));
}

#[test]
fn node_patterns_take_hubbles_cluster_part() {
    assert!(node_matches("east/", "east/node-a"), "every node of a cluster");
    assert!(node_matches("east/node-*", "east/node-a"));
    assert!(!node_matches("west/", "east/node-a"));
    assert!(node_matches("node-a", "east/node-a"), "no cluster: any cluster");
    assert!(node_matches("node-a", "node-a"));
    assert!(!node_matches("east/node-a", "node-a"), "a plain node is of no cluster");
}

#[test]
fn filters_weir_cannot_judge_or_cannot_read_are_refused_by_name() {
    let err = |f: flow::FlowFilter| Filters::parse(&[], &[f]).expect_err("refused");
    let e = err(flow::FlowFilter { http_status_code: s(&["2x"]), ..Default::default() });
    assert!(e.starts_with("blacklist[0].http_status_code:"), "{e}");
    let e = err(flow::FlowFilter { dns_query: s(&["(example"]), ..Default::default() });
    assert!(e.starts_with("blacklist[0].dns_query:"), "{e}");
    let e = err(flow::FlowFilter { source_ip: s(&["10.0.0.0/33"]), ..Default::default() });
    assert!(e.contains("source_ip") && e.contains("10.0.0.0/33"), "{e}");
    let e = err(flow::FlowFilter { destination_port: s(&["http"]), ..Default::default() });
    assert!(e.contains("destination_port"), "{e}");
    let e = err(flow::FlowFilter { protocol: s(&["dns"]), ..Default::default() });
    assert!(e.contains("L7"), "{e}");
    let e = err(flow::FlowFilter { source_label: s(&["app in web"]), ..Default::default() });
    assert!(e.contains("source_label"), "{e}");
}

#[test]
fn workload_filters_judge_each_end() {
    use flow::FlowFilter as F;
    let web = flow::Workload { name: "web".into(), kind: "Deployment".into() };
    let mut f = sample();
    if let Some(source) = f.source.as_mut() {
        source.workloads = vec![web.clone()];
    }
    let judge = |filter: F| Filters::parse(&[filter], &[]).expect("valid").wants(&f);
    let kind = |k: &str| flow::Workload { name: String::new(), kind: k.into() };
    assert!(judge(F { source_workload: vec![web.clone()], ..Default::default() }));
    assert!(judge(F { source_workload: vec![kind("Deployment")], ..Default::default() }));
    assert!(!judge(F { source_workload: vec![kind("StatefulSet")], ..Default::default() }));
    assert!(!judge(F { destination_workload: vec![web], ..Default::default() }), "the destination has none");
    let blacklist = Filters::parse(&[], &[F { source_workload: vec![kind("Deployment")], ..Default::default() }]);
    assert!(!blacklist.expect("valid").wants(&f));
}
