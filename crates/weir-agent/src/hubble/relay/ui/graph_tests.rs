use super::*;
use crate::hubble::flows::prost_timestamp;

const T0: u64 = 1_700_000_000 * NS_PER_S;

fn pod(namespace: &str, name: &str) -> flow::Endpoint {
    flow::Endpoint {
        namespace: namespace.into(),
        pod_name: name.into(),
        labels: vec![format!("k8s:app={name}"), format!("k8s:io.kubernetes.pod.namespace={namespace}")],
        ..Default::default()
    }
}

fn world() -> flow::Endpoint {
    flow::Endpoint { identity: 2, labels: vec!["reserved:world".into()], ..Default::default() }
}

fn tcp(src: flow::Endpoint, dst: flow::Endpoint, dport: u32, verdict: flow::Verdict, at: u64) -> flow::Flow {
    flow::Flow {
        time: Some(prost_timestamp(at)),
        verdict: verdict as i32,
        ip: Some(flow::Ip { source: "10.0.0.1".into(), destination: "10.0.0.2".into(), ..Default::default() }),
        l4: Some(flow::Layer4 {
            protocol: Some(flow::layer4::Protocol::Tcp(flow::Tcp {
                source_port: 40000,
                destination_port: dport,
                flags: Some(flow::TcpFlags { syn: true, ..Default::default() }),
            })),
        }),
        source: Some(src),
        destination: Some(dst),
        node_name: "node-a".into(),
        is_reply: Some(false),
        weir: (verdict == flow::Verdict::Dropped)
            .then(|| flow::WeirFlow { drop_reason: "policy_denied".into(), ..Default::default() }),
        ..Default::default()
    }
}

fn http(request: bool, code: u32, at: u64) -> flow::Flow {
    let (src, dst) = if request {
        (pod("frontend", "web"), pod("backend", "api"))
    } else {
        (pod("backend", "api"), pod("frontend", "web"))
    };
    let mut f = tcp(src, dst, if request { 8080 } else { 40000 }, flow::Verdict::Forwarded, at);
    if let Some(flow::layer4::Protocol::Tcp(t)) = f.l4.as_mut().and_then(|l| l.protocol.as_mut()) {
        t.source_port = if request { 40000 } else { 8080 };
    }
    f.is_reply = Some(!request);
    f.r#type = flow::FlowType::L7 as i32;
    f.l7 = Some(flow::Layer7 {
        r#type: if request { flow::L7FlowType::Request } else { flow::L7FlowType::Response } as i32,
        latency_ns: 0,
        record: Some(flow::layer7::Record::Http(flow::Http {
            code,
            method: "GET".into(),
            url: "http://10.0.0.2:8080/".into(),
            protocol: "HTTP/1.1".into(),
            headers: vec![],
        })),
    });
    f
}

fn dns_answer(rcode: u32, at: u64) -> flow::Flow {
    let mut f = tcp(pod("backend", "db"), pod("frontend", "web"), 5353, flow::Verdict::Forwarded, at);
    f.l4 = Some(flow::Layer4 {
        protocol: Some(flow::layer4::Protocol::Udp(flow::Udp { source_port: 53, destination_port: 5353 })),
    });
    f.is_reply = Some(true);
    f.l7 = Some(flow::Layer7 {
        r#type: flow::L7FlowType::Response as i32,
        latency_ns: 0,
        record: Some(flow::layer7::Record::Dns(flow::Dns {
            query: "api.example.".into(),
            rcode,
            qtypes: vec!["A".into()],
            ..Default::default()
        })),
    });
    f
}

fn edge<'a>(view: &'a GraphView, from: &str, to: &str) -> &'a EdgeView {
    view.edges.iter().find(|e| e.from == from && e.to == to).unwrap_or_else(|| panic!("{view:#?}"))
}

#[test]
fn edges_count_verdicts_and_are_coloured_by_them() {
    let mut g = Graph::new(Limits::default());
    let (web, api) = (pod("frontend", "web"), pod("backend", "api"));
    g.add(&tcp(web.clone(), api.clone(), 8080, flow::Verdict::Forwarded, T0), T0);
    g.add(&tcp(web.clone(), api.clone(), 80, flow::Verdict::Dropped, T0), T0);
    g.add(&tcp(web.clone(), api.clone(), 9000, flow::Verdict::Forwarded, T0), T0);
    g.add(&tcp(web.clone(), api.clone(), 9000, flow::Verdict::Dropped, T0 + 1), T0 + 1);
    g.add(&tcp(world(), api.clone(), 8080, flow::Verdict::Forwarded, T0), T0);
    let view = g.view(None, T0 + 2);
    let ids: Vec<&str> = view.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, vec!["backend/api", "frontend/web", "reserved:world"]);
    let of = |port: u32| view.edges.iter().find(|e| e.from == "frontend/web" && e.port == port).expect("edge");
    assert_eq!((of(8080).verdict, of(80).verdict, of(9000).verdict), ("forwarded", "dropped", "mixed"));
    assert_eq!(of(80).counts.drop_reasons, BTreeMap::from([("policy_denied".to_string(), 1)]));
    assert_eq!(of(9000).counts.flows, 2);
    assert_eq!(of(8080).id, "frontend/web -> backend/api 8080/TCP");
    assert_eq!(edge(&view, "reserved:world", "backend/api").protocol, "TCP");
    assert_eq!(view.namespaces, vec!["backend", "frontend"]);
    assert_eq!(view.tally.counted, 5);
}

#[test]
fn a_flow_forwarded_on_egress_and_dropped_on_ingress_is_denied() {
    let mut g = Graph::new(Limits::default());
    let (web, db) = (pod("frontend", "web"), pod("backend", "db"));
    let at = |direction: flow::TrafficDirection, verdict| {
        let mut f = tcp(web.clone(), db.clone(), 5432, verdict, T0);
        f.traffic_direction = direction as i32;
        f
    };
    g.add(&at(flow::TrafficDirection::Egress, flow::Verdict::Forwarded), T0);
    g.add(&at(flow::TrafficDirection::Ingress, flow::Verdict::Dropped), T0);
    let view = g.view(None, T0);
    let denied = edge(&view, "frontend/web", "backend/db");
    assert_eq!((denied.counts.forwarded, denied.counts.dropped), (1, 1), "both observations counted");
    assert_eq!(denied.verdict, "dropped", "none reached db");
    g.add(&at(flow::TrafficDirection::Ingress, flow::Verdict::Forwarded), T0);
    assert_eq!(edge(&g.view(None, T0), "frontend/web", "backend/db").verdict, "mixed");
    // Egress only (to the world): forwarded there is forwarded.
    let mut out = tcp(web.clone(), world(), 443, flow::Verdict::Forwarded, T0);
    out.traffic_direction = flow::TrafficDirection::Egress as i32;
    g.add(&out, T0);
    assert_eq!(edge(&g.view(None, T0), "frontend/web", "reserved:world").verdict, "forwarded");
}

#[test]
fn replies_count_on_their_requests_edge_with_http_classes_and_dns_errors() {
    let mut g = Graph::new(Limits::default());
    const MS: u64 = 1_000_000;
    g.add(&http(true, 0, T0), T0);
    g.add(&http(false, 200, T0 + MS), T0 + MS);
    g.add(&http(true, 0, T0 + 2 * MS), T0 + 2 * MS);
    g.add(&http(false, 404, T0 + 3 * MS), T0 + 3 * MS);
    g.add(&dns_answer(0, T0), T0);
    g.add(&dns_answer(3, T0 + MS), T0 + MS);
    let view = g.view(None, T0 + 10);
    assert_eq!(view.edges.len(), 2, "{view:#?}");
    let web_api = edge(&view, "frontend/web", "backend/api");
    assert_eq!(web_api.port, 8080, "the server's port");
    assert_eq!(web_api.counts.requests, 2);
    assert_eq!(web_api.counts.http, BTreeMap::from([("2xx".to_string(), 1), ("4xx".to_string(), 1)]));
    assert!((web_api.requests_per_s - 2.0 / 60.0).abs() < 1e-9, "{web_api:?}");
    let dns = edge(&view, "frontend/web", "backend/db");
    assert_eq!((dns.port, dns.protocol), (53, "UDP"));
    assert_eq!((dns.counts.dns_answers, dns.counts.dns_errors), (2, 1));
    let flows = g.flows("frontend/web", "backend/api", Some(8080), Some("tcp"));
    assert_eq!(flows.len(), 4);
    assert_eq!(flows[0].summary, "HTTP/1.1 404 GET http://10.0.0.2:8080/", "newest first");
    assert!(flows[0].is_reply);
    assert_eq!(flows[3].summary, "HTTP/1.1 GET http://10.0.0.2:8080/");
    assert!(g.flows("frontend/web", "backend/api", Some(80), None).is_empty());
    let answers = g.flows("frontend/web", "backend/db", None, None);
    assert_eq!(answers[0].summary, "DNS Answer rcode 3 (Query api.example. A)");
}

#[test]
fn the_namespace_filter_keeps_edges_with_an_end_in_it() {
    let mut g = Graph::new(Limits::default());
    g.add(&tcp(pod("frontend", "web"), pod("backend", "api"), 80, flow::Verdict::Forwarded, T0), T0);
    g.add(&tcp(pod("backend", "api"), pod("backend", "db"), 5432, flow::Verdict::Forwarded, T0), T0);
    g.add(&tcp(world(), pod("edge", "proxy"), 443, flow::Verdict::Forwarded, T0), T0);
    let front = g.view(Some("frontend"), T0);
    assert_eq!(front.edges.len(), 1);
    let ids: Vec<&str> = front.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, vec!["backend/api", "frontend/web"]);
    assert_eq!(g.view(Some("backend"), T0).edges.len(), 2);
    assert_eq!(g.view(Some("edge"), T0).nodes.len(), 2, "the proxy and the world");
    let none = g.view(Some("nowhere"), T0);
    assert!(none.edges.is_empty() && none.nodes.is_empty());
    assert_eq!(none.namespaces, vec!["backend", "edge", "frontend"], "every namespace, for the filter");
}

#[test]
fn the_window_forgets_old_flows_and_their_edges_and_nodes() {
    let limits = Limits { window_ns: 60 * NS_PER_S, ..Limits::default() };
    let mut g = Graph::new(limits);
    let (web, api, db) = (pod("frontend", "web"), pod("backend", "api"), pod("backend", "db"));
    g.add(&tcp(web.clone(), api.clone(), 80, flow::Verdict::Forwarded, T0), T0);
    g.add(&tcp(web.clone(), db.clone(), 5432, flow::Verdict::Forwarded, T0 + 50 * NS_PER_S), T0 + 50 * NS_PER_S);
    g.add(&tcp(web.clone(), db.clone(), 5432, flow::Verdict::Forwarded, T0 - 120 * NS_PER_S), T0 + 50 * NS_PER_S);
    assert_eq!(g.view(None, T0 + 50 * NS_PER_S).edges.len(), 2);
    let later = g.view(None, T0 + 100 * NS_PER_S);
    assert_eq!(later.edges.len(), 1, "web -> api is older than the window: {later:#?}");
    assert_eq!(later.edges[0].counts.flows, 1, "the stale flow was not counted");
    assert_eq!(later.nodes.len(), 2, "api has no edge left");
    assert_eq!(later.tally.stale, 1);
    assert!(g.flows("frontend/web", "backend/api", None, None).is_empty());
    assert!(g.view(None, T0 + 200 * NS_PER_S).nodes.is_empty());
}

#[test]
fn caps_refuse_and_count_flows_past_them() {
    let limits = Limits { max_edges: 3, max_nodes: 3, flows_per_edge: 2, ..Limits::default() };
    let mut g = Graph::new(limits);
    let (web, api, db, cache) =
        (pod("frontend", "web"), pod("backend", "api"), pod("backend", "db"), pod("backend", "cache"));
    for i in 0..5 {
        g.add(&tcp(web.clone(), api.clone(), 80, flow::Verdict::Forwarded, T0 + i), T0 + i);
    }
    g.add(&tcp(web.clone(), db.clone(), 80, flow::Verdict::Forwarded, T0), T0);
    g.add(&tcp(web.clone(), cache.clone(), 80, flow::Verdict::Forwarded, T0), T0);
    g.add(&tcp(web.clone(), api.clone(), 81, flow::Verdict::Forwarded, T0), T0);
    g.add(&tcp(web.clone(), db.clone(), 81, flow::Verdict::Forwarded, T0), T0);
    let view = g.view(None, T0 + 10);
    assert_eq!((view.edges.len(), view.nodes.len()), (3, 3));
    assert_eq!(view.tally.over_node_cap, 1, "cache would be a fourth node");
    assert_eq!(view.tally.over_edge_cap, 1, "web -> db:81 would be a fourth edge");
    assert_eq!(edge(&view, "frontend/web", "backend/api").counts.flows, 5, "counts are not capped");
    assert_eq!(g.flows("frontend/web", "backend/api", Some(80), None).len(), 2, "kept flows are");
    // Room comes back when old edges expire.
    let later = T0 + 10 * 60 * NS_PER_S;
    g.add(&tcp(web.clone(), cache.clone(), 80, flow::Verdict::Forwarded, later), later);
    assert_eq!(g.view(None, later).edges.len(), 1);
}

fn via(mut f: flow::Flow, namespace: &str, name: &str) -> flow::Flow {
    let service = Some(flow::Service { name: name.into(), namespace: namespace.into() });
    if f.is_reply == Some(true) {
        f.source_service = service;
    } else {
        f.destination_service = service;
    }
    f
}

#[test]
fn flows_to_a_services_backends_are_drawn_through_the_service() {
    let mut g = Graph::new(Limits::default());
    const MS: u64 = 1_000_000;
    let (web, api, db) = (pod("frontend", "web"), pod("backend", "api"), pod("backend", "db"));
    g.add(&via(http(true, 0, T0), "backend", "hello"), T0);
    g.add(&via(http(false, 200, T0 + MS), "backend", "hello"), T0 + MS);
    g.add(
        &via(tcp(web.clone(), db.clone(), 8080, flow::Verdict::Dropped, T0 + 2 * MS), "backend", "hello"),
        T0 + 2 * MS,
    );
    // Not through a Service: straight to the pod, as before.
    g.add(&tcp(web.clone(), api.clone(), 9090, flow::Verdict::Forwarded, T0), T0);
    let view = g.view(None, T0 + 10 * MS);
    let hello = view.nodes.iter().find(|n| n.id == "service:backend/hello").unwrap_or_else(|| panic!("{view:#?}"));
    assert_eq!((hello.kind, hello.namespace.as_str(), hello.name.as_str()), ("service", "backend", "hello"));
    assert_eq!(view.nodes.len(), 4, "web, the Service, api and db: {view:#?}");
    assert_eq!(view.edges.len(), 4, "{view:#?}");
    let to_service = edge(&view, "frontend/web", "service:backend/hello");
    assert_eq!((to_service.port, to_service.protocol), (8080, "TCP"), "the backends' port");
    assert_eq!(to_service.counts.flows, 3, "every flow to the Service, whichever backend took it");
    assert_eq!(to_service.counts.requests, 1);
    assert_eq!(to_service.counts.http, BTreeMap::from([("2xx".to_string(), 1)]), "the reply counts on it too");
    assert_eq!(to_service.verdict, "mixed");
    let to_api = edge(&view, "service:backend/hello", "backend/api");
    assert_eq!((to_api.counts.flows, to_api.verdict, to_api.port), (2, "forwarded", 8080));
    let to_db = edge(&view, "service:backend/hello", "backend/db");
    assert_eq!((to_db.counts.flows, to_db.verdict), (1, "dropped"));
    let direct = view.edges.iter().find(|e| e.from == "frontend/web" && e.to == "backend/api").expect("direct");
    assert_eq!(direct.port, 9090);
    assert_eq!(view.tally.counted, 4, "a flow through a Service is one flow");
    let flows = g.flows("frontend/web", "service:backend/hello", Some(8080), Some("TCP"));
    assert_eq!(flows.len(), 3);
    assert!(flows.iter().all(|r| r.service == "service:backend/hello"), "{flows:#?}");
    assert_eq!((flows[2].source.as_str(), flows[2].destination.as_str()), ("frontend/web", "backend/api"));
    let backend_flows = g.flows("service:backend/hello", "backend/db", None, None);
    assert_eq!(backend_flows.len(), 1);
    assert_eq!(backend_flows[0].verdict, "DROPPED");
    assert!(g.flows("frontend/web", "backend/api", Some(9090), None)[0].service.is_empty());
}

#[test]
fn the_namespace_filter_keeps_edges_touching_a_service_in_it() {
    let mut g = Graph::new(Limits::default());
    let flow = tcp(pod("frontend", "web"), pod("backend", "api"), 80, flow::Verdict::Forwarded, T0);
    g.add(&via(flow, "shop", "front"), T0);
    g.add(&tcp(pod("backend", "api"), pod("backend", "db"), 5432, flow::Verdict::Forwarded, T0), T0);
    let shop = g.view(Some("shop"), T0);
    let ids: Vec<(&str, &str)> = shop.edges.iter().map(|e| (e.from.as_str(), e.to.as_str())).collect();
    assert_eq!(ids, vec![("frontend/web", "service:shop/front"), ("service:shop/front", "backend/api")]);
    assert_eq!(shop.nodes.len(), 3, "{shop:#?}");
    assert_eq!(shop.namespaces, vec!["backend", "frontend", "shop"], "the Service's namespace is offered");
    assert_eq!(g.view(Some("frontend"), T0).edges.len(), 1, "web -> the Service");
    assert_eq!(g.view(Some("backend"), T0).edges.len(), 2, "the Service -> api, api -> db");
}

#[test]
fn a_flow_through_a_service_is_refused_whole_past_the_caps() {
    let limits = Limits { max_edges: 2, max_nodes: 4, ..Limits::default() };
    let mut g = Graph::new(limits);
    let (web, api, db) = (pod("frontend", "web"), pod("backend", "api"), pod("backend", "db"));
    g.add(&tcp(web.clone(), api.clone(), 80, flow::Verdict::Forwarded, T0), T0);
    // Needs two new edges; one fits.
    g.add(&via(tcp(web.clone(), db.clone(), 80, flow::Verdict::Forwarded, T0), "backend", "hello"), T0);
    let view = g.view(None, T0);
    assert_eq!((view.edges.len(), view.nodes.len()), (1, 2), "{view:#?}");
    assert_eq!((view.tally.over_edge_cap, view.tally.counted), (1, 1));
    let mut g = Graph::new(Limits { max_edges: 10, max_nodes: 3, ..Limits::default() });
    g.add(&tcp(web.clone(), api.clone(), 80, flow::Verdict::Forwarded, T0), T0);
    // web and the Service fit, db would be a fourth node.
    g.add(&via(tcp(web.clone(), db.clone(), 80, flow::Verdict::Forwarded, T0), "backend", "hello"), T0);
    let view = g.view(None, T0);
    assert_eq!((view.edges.len(), view.nodes.len(), view.tally.over_node_cap), (1, 2, 1), "{view:#?}");
    // Once the old edge expires, both fit, and expire with their nodes.
    let later = T0 + 10 * 60 * NS_PER_S;
    g.add(&via(tcp(web.clone(), db.clone(), 80, flow::Verdict::Forwarded, later), "backend", "hello"), later);
    assert_eq!(g.view(None, later).edges.len(), 2);
    assert!(g.view(None, later + 10 * 60 * NS_PER_S).nodes.is_empty(), "no node outlives its edges");
}
