use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::*;

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  selector: {app: web}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  externalIPs: [192.0.2.7]
  ports:
    - {name: http, port: 80, targetPort: http-alt, nodePort: 30080}
    - {name: dns, protocol: UDP, port: 53, targetPort: 5353, nodePort: 30053}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
  - {name: http, protocol: TCP, port: 8080}
  - {name: dns, protocol: UDP, port: 5353}
endpoints:
  - addresses: [10.244.0.2]
    nodeName: node-a
    zone: z1
    conditions: {ready: true, serving: true, terminating: false}
  - addresses: [10.244.1.2]
    nodeName: node-b
  - addresses: [10.244.1.3]
    nodeName: node-b
    conditions: {ready: false, serving: true, terminating: true}
  - addresses: [10.244.1.4]
    conditions: {ready: false}
"#;

fn node(name: &str) -> NodeContext {
    NodeContext { name: name.into(), addresses: vec!["172.30.0.2".parse().expect("ip")] }
}

fn state(yaml: &str) -> ClusterState {
    let objects = parse_stream(yaml).expect("valid");
    ClusterState::default().apply(objects).expect("applies").0
}

#[test]
fn frontends_cover_cluster_ip_external_ip_and_node_port_with_kube_proxy_backends() {
    let fes = frontends(&state(WEB), &node("node-a"));
    let described: Vec<String> =
        fes.iter().map(|f| format!("{:?} {}:{} {:?}", f.kind, f.address, f.port, f.service.protocol)).collect();
    assert_eq!(
        described,
        [
            "ClusterIP 10.96.0.10:53 Udp",
            "ClusterIP 10.96.0.10:80 Tcp",
            "NodePort 172.30.0.2:30053 Udp",
            "NodePort 172.30.0.2:30080 Tcp",
            "ExternalIP 192.0.2.7:53 Udp",
            "ExternalIP 192.0.2.7:80 Tcp",
        ]
    );
    let http = &fes[1];
    let backends: Vec<(String, u16, BackendState)> =
        http.backends.iter().map(|b| (b.address.to_string(), b.port, b.state)).collect();
    // Not ready and not terminating: left out. Terminating: drains only.
    assert_eq!(
        backends,
        [
            ("10.244.0.2".into(), 8080, BackendState::Active),
            ("10.244.1.2".into(), 8080, BackendState::Active),
            ("10.244.1.3".into(), 8080, BackendState::Terminating),
        ]
    );
    assert_eq!(http.affinity_timeout, Some(60));
    assert_eq!(http.no_backend_errno, 111);
    assert_eq!(http.health, HealthCheck::Tcp);
    assert_eq!(fes[0].health, HealthCheck::None, "UDP ports are not probed by default");
    assert_eq!(fes[0].backends[0].port, 5353);
}

#[test]
fn traffic_policies_local_keep_only_this_nodes_endpoints() {
    let yaml =
        WEB.replace("type: NodePort", "type: NodePort\n  internalTrafficPolicy: Local\n  externalTrafficPolicy: Local");
    let fes = frontends(&state(&yaml), &node("node-a"));
    for fe in fes.iter().filter(|f| f.service.protocol == k8s::Protocol::Tcp) {
        let addrs: Vec<IpAddr> = fe.backends.iter().map(|b| b.address).collect();
        assert_eq!(addrs, ["10.244.0.2".parse::<IpAddr>().expect("ip")], "{:?}", fe.kind);
    }
}

#[test]
fn bad_documents_name_the_document_and_field() {
    let cases = [
        (WEB.replace("port: 80,", "port: 70000,"), "document 0 (Service web): spec.ports[0].port", "70000"),
        (WEB.replace("selector:", "selectr:"), "document 0 (Service web): spec.selectr", "unknown field"),
        (WEB.replace("protocol: UDP, port: 53", "protocol: SCTP, port: 53"), "spec.ports[1].protocol", "SCTP"),
        (
            WEB.replace("nodeName: node-a", "nodeNam: node-a"),
            "document 1 (EndpointSlice web-abc): endpoints[0].nodeNam",
            "unknown",
        ),
        (WEB.replace("addresses: [10.244.0.2]", "addresses: [fd00::2]"), "endpoints[0].addresses[0]", "not IPv4"),
        (WEB.replace("timeoutSeconds: 60", "timeoutSeconds: 0"), "timeoutSeconds", "1-86400"),
        (WEB.replace("clusterIP: 10.96.0.10", "clusterIP: 10.96.0.300"), "spec.clusterIP", "not an IP"),
        (WEB.replace("kind: Service", "kind: Servce"), "document 0 (Servce web): kind", "not a Service"),
    ];
    for (yaml, field, message) in cases {
        let e = parse_stream(&yaml).expect_err(field);
        assert!(e.field.contains(field), "{field}: got {e}");
        assert!(e.to_string().contains(message), "{message}: got {e}");
    }
}

#[test]
fn a_protocol_mismatch_between_slice_and_service_refuses_the_whole_apply() {
    let before = state(WEB);
    let bad = WEB.replace("{name: dns, protocol: UDP, port: 5353}", "{name: dns, protocol: TCP, port: 5353}");
    let e = before.apply(parse_stream(&bad).expect("each document is valid alone")).expect_err("mismatch");
    assert_eq!(e.field, "EndpointSlice shop/web-abc: ports[1].protocol");
    assert!(e.message.contains("TCP does not match port \"dns\""), "{e}");
}

#[test]
fn apply_reports_created_configured_and_unchanged() {
    let (first, report) = ClusterState::default().apply(parse_stream(WEB).expect("valid")).expect("applies");
    assert_eq!(report.created.len(), 2);
    let (second, report) = first.apply(parse_stream(WEB).expect("valid")).expect("applies");
    assert_eq!(report.unchanged, ["Service shop/web", "EndpointSlice shop/web-abc"]);
    let changed = WEB.replace("port: 8080", "port: 8081");
    let (_, report) = second.apply(parse_stream(&changed).expect("valid")).expect("applies");
    assert_eq!(report.configured, ["EndpointSlice shop/web-abc"]);
    let (after, removed) =
        second.delete("Service", &ObjectKey { namespace: "shop".into(), name: "web".into() }).expect("ok");
    assert!(removed && after.services().is_empty() && after.slices().len() == 1);
}

#[test]
fn annotations_choose_algorithm_errno_and_health_check() {
    let yaml = WEB.replace(
        "metadata: {name: web, namespace: shop}",
        "metadata:\n  name: web\n  namespace: shop\n  annotations: {weir.dev/lb-algorithm: maglev, weir.dev/no-backends-errno: none, weir.dev/health-check: 'http:/healthz'}",
    );
    let fe = frontends(&state(&yaml), &node("node-a")).remove(1);
    assert_eq!((fe.algorithm, fe.no_backend_errno), (Algorithm::Maglev, 0));
    assert_eq!(fe.health, HealthCheck::Http { path: "/healthz".into() });
    let bad = yaml.replace("maglev", "roundrobin");
    let e = parse_stream(&bad).expect_err("bad algorithm");
    assert!(e.field.ends_with("metadata.annotations.weir.dev/lb-algorithm"), "{e}");
}

#[test]
fn plans_write_few_slots_keep_ids_and_remove_everything_at_the_end() {
    use plan::{plan, Op};
    let none = std::collections::BTreeSet::new();
    let fes = frontends(&state(WEB), &node("node-a"));
    let (ops, tables) = plan(&plan::Tables::default(), &fes, &none).expect("plans");
    assert!(ops.iter().any(|op| matches!(op, Op::PutFrontend { .. })));
    // Nothing changed: nothing to write.
    assert_eq!(plan(&tables, &fes, &none).expect("plans").0, []);

    // One more ready endpoint: a backend, one slot per frontend of that port, slot 0.
    let more = WEB.replace(
        "  - addresses: [10.244.1.4]",
        "  - addresses: [10.244.0.9]\n    nodeName: node-a\n  - addresses: [10.244.1.4]",
    );
    let (ops, after) = plan(&tables, &frontends(&state(&more), &node("node-a")), &none).expect("plans");
    let puts_backend = ops.iter().filter(|op| matches!(op, Op::PutBackend { .. })).count();
    assert_eq!(
        puts_backend,
        2,
        "one new backend per protocol: {:#?}",
        ops.iter().filter(|op| matches!(op, Op::PutBackend { .. })).collect::<Vec<_>>()
    );
    assert!(!ops.iter().any(|op| matches!(op, Op::DeleteBackend { .. } | Op::ResetServiceCounters { .. })));
    let service_ids = |t: &plan::Tables| t.frontends.values().map(|f| f.meta.service_id).collect::<Vec<_>>();
    assert_eq!(service_ids(&tables), service_ids(&after), "service ids are kept");

    // A quarantined backend leaves the active slots but keeps its id.
    let sick: std::collections::BTreeSet<plan::BackendKey> =
        [plan::BackendKey { address: "10.244.0.2".parse().expect("ip"), port: 8080, proto: plan::IPPROTO_TCP }].into();
    let (_, quarantined) = plan(&after, &frontends(&state(&more), &node("node-a")), &sick).expect("plans");
    let http = quarantined.frontends.iter().find(|(k, _)| k.port == 80).map(|(_, f)| f).expect("http frontend");
    assert_eq!(http.meta.total, 4);
    assert_eq!(http.meta.active, 2);

    let (ops, empty) = plan(&after, &[], &none).expect("plans");
    assert_eq!(empty, plan::Tables::default());
    assert!(matches!(ops.first(), Some(Op::DeleteSlot { slot: 0, .. })));
}

#[test]
fn planning_one_service_at_a_time_ends_where_planning_everything_does() {
    use plan::{plan, plan_service, Tables};
    let none = std::collections::BTreeSet::new();
    let node = node("node-a");
    let before = state(WEB);
    let (_, mut tables) = plan(&Tables::default(), &frontends(&before, &node), &none).expect("plans");
    // Another service, and web loses an endpoint: two service ports change, one by one.
    let other = WEB
        .replace("name: web,", "name: api,")
        .replace("10.96.0.10", "10.96.0.11")
        .replace("  externalIPs: [192.0.2.7]\n", "");
    let other = other.replace("nodePort: 30080", "nodePort: 31080").replace("nodePort: 30053", "nodePort: 31053");
    let other = other
        .replace("kubernetes.io/service-name: web", "kubernetes.io/service-name: api")
        .replace("web-abc", "api-abc");
    let mut after = before.clone();
    let (_, touched) = after.apply_in_place(parse_stream(&other).expect("valid")).expect("applies");
    let fewer = WEB.replace("  - addresses: [10.244.1.2]\n    nodeName: node-b\n", "");
    let (_, more) = after.apply_in_place(parse_stream(&fewer).expect("valid")).expect("applies");
    let touched: std::collections::BTreeSet<ObjectKey> = touched.union(&more).cloned().collect();
    assert_eq!(touched.len(), 2);
    let old = frontends(&before, &node);
    for key in &touched {
        let mut groups: std::collections::BTreeMap<ServicePortRef, Vec<Frontend>> = Default::default();
        for fe in after.service_frontends(&node, key) {
            groups.entry(fe.service.clone()).or_default().push(fe);
        }
        for (reference, new) in groups {
            let old_keys: Vec<plan::FrontendKey> = old
                .iter()
                .filter(|f| f.service == reference)
                .map(|f| plan::FrontendKey {
                    address: f.address,
                    port: f.port,
                    proto: plan::proto_number(f.service.protocol),
                })
                .collect();
            plan_service(&mut tables, &reference, &old_keys, &new, &none).expect("plans");
        }
    }
    let (_, fresh) = plan(&Tables::default(), &frontends(&after, &node), &none).expect("plans");
    let shape = |t: &Tables| -> Vec<(plan::FrontendKey, u16, u16)> {
        t.frontends.iter().map(|(k, f)| (*k, f.meta.active, f.meta.total)).collect()
    };
    assert_eq!(shape(&tables), shape(&fresh));
    assert_eq!(tables.backends.len(), fresh.backends.len());
}

/// What `kubectl get svc,endpointslices -n shop -o yaml` prints for a
/// service whose pods are all gone: a List, server-filled fields, and a
/// slice with `endpoints: null`.
const KUBECTL_LIST: &str = r#"
apiVersion: v1
items:
- apiVersion: v1
  kind: Service
  metadata:
    creationTimestamp: "2024-05-01T10:00:00Z"
    name: web
    namespace: shop
    resourceVersion: "1234"
    uid: 0b6f3c7e-1111-2222-3333-444455556666
  spec:
    clusterIP: 10.96.0.10
    clusterIPs: [10.96.0.10]
    internalTrafficPolicy: Cluster
    ipFamilies: [IPv4]
    ipFamilyPolicy: SingleStack
    ports:
    - {name: http, port: 80, protocol: TCP, targetPort: 8080}
    selector: {app: web}
    sessionAffinity: None
    type: ClusterIP
  status:
    loadBalancer: {}
- addressType: IPv4
  apiVersion: discovery.k8s.io/v1
  endpoints: null
  kind: EndpointSlice
  metadata:
    generateName: web-
    labels: {endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io, kubernetes.io/service-name: web}
    name: web-x7k2p
    namespace: shop
    ownerReferences:
    - {apiVersion: v1, blockOwnerDeletion: true, controller: true, kind: Service, name: web, uid: 0b6f3c7e-1111-2222-3333-444455556666}
  ports: null
kind: List
metadata:
  resourceVersion: ""
"#;

#[test]
fn kubectl_get_output_is_accepted_list_and_null_lists_included() {
    let objects = parse_stream(KUBECTL_LIST).expect("kubectl's output applies");
    assert_eq!(objects.iter().map(|o| o.kind()).collect::<Vec<_>>(), ["Service", "EndpointSlice"]);
    let Object::EndpointSlice(slice) = &objects[1] else { panic!("a slice") };
    assert!(slice.endpoints.is_empty() && slice.ports.is_empty());
    let fes = frontends(&state(KUBECTL_LIST), &node("node-a"));
    assert_eq!(fes.len(), 1);
    assert!(fes[0].backends.is_empty());
    // Typed lists name their items' kind for them.
    let typed = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSliceList\nitems:\n- {addressType: IPv4, endpoints: null, ports: null, metadata: {name: s, namespace: shop}}\n";
    assert_eq!(parse_stream(typed).expect("typed list")[0].kind(), "EndpointSlice");
    // An item's error names the list item.
    let e = parse_stream(&KUBECTL_LIST.replace("sessionAffinity: None", "sessionAfinity: None")).expect_err("typo");
    assert!(e.field.starts_with("document 0 items[0] (Service web): spec.sessionAfinity"), "{e}");
}

#[test]
fn the_cluster_network_refuses_taken_cluster_ips_and_node_ports_out_of_range() {
    let web = || match &parse_stream(WEB).expect("valid")[0] {
        Object::Service(s) => (**s).clone(),
        _ => panic!("a service"),
    };
    let mut network = ClusterNetwork::default();
    network.reserve("10.244.0.0/24".parse().expect("net"), "the pod CIDR of node node-a");
    network.reserve_address("172.30.0.2".parse().expect("ip"), "node node-a's address");
    assert_eq!(network.check(&web()), Ok(()));
    let mut service = web();
    service.spec.cluster_ip = Some("10.244.0.9".into());
    let e = network.check(&service).expect_err("inside a pod CIDR");
    assert_eq!(e.field, "spec.clusterIP");
    assert!(e.message.contains("inside 10.244.0.0/24 (the pod CIDR of node node-a)"), "{e}");
    service.spec.cluster_ip = Some("172.30.0.2".into());
    assert!(network.check(&service).expect_err("a node").message.starts_with("172.30.0.2 is node node-a's address"));
    let mut service = web();
    service.spec.ports[1].node_port = Some(53);
    let e = network.check(&service).expect_err("out of range");
    assert_eq!(e.field, "spec.ports[1].nodePort");
    network.node_port_range = 1..=65535;
    assert_eq!(network.check(&service), Ok(()));
}

#[test]
fn ip_families_must_match_the_cluster_ips() {
    let with = |extra: &str| WEB.replace("  selector: {app: web}", &format!("  selector: {{app: web}}\n{extra}"));
    let ok = [
        "  ipFamilies: [IPv4]\n  ipFamilyPolicy: SingleStack",
        "  clusterIPs: [10.96.0.10, fd00:96::10]\n  ipFamilies: [IPv4, IPv6]\n  ipFamilyPolicy: RequireDualStack",
        "  clusterIPs: [10.96.0.10, fd00:96::10]\n  ipFamilyPolicy: PreferDualStack",
    ];
    for extra in ok {
        parse_stream(&with(extra)).unwrap_or_else(|e| panic!("{extra}: {e}"));
    }
    let bad = [
        ("  ipFamilies: [IPv6]", "spec.ipFamilies[0]", "IPv6 does not match spec.clusterIP 10.96.0.10"),
        ("  ipFamilies: [IPv4, IPv6]\n  ipFamilyPolicy: SingleStack", "spec.ipFamilies", "one family"),
        ("  ipFamilies: [IPv5]", "spec.ipFamilies[0]", "use IPv4 or IPv6"),
        (
            "  clusterIPs: [10.96.0.10, 10.96.0.11]\n  ipFamilyPolicy: PreferDualStack",
            "spec.clusterIPs[1]",
            "one of each",
        ),
        ("  clusterIPs: [10.96.0.10, fd00:96::10]", "spec.ipFamilyPolicy", "PreferDualStack or RequireDualStack"),
        ("  ipFamilyPolicy: RequireDualStack", "spec.clusterIPs", "an address of each family"),
        (
            "  clusterIPs: [10.96.0.10, fd00:96::10]\n  ipFamilies: [IPv6, IPv4]\n  ipFamilyPolicy: PreferDualStack",
            "spec.ipFamilies[0]",
            "does not match spec.clusterIPs[0]",
        ),
        ("  ipFamilyPolicy: DualStack", "spec.ipFamilyPolicy", "use SingleStack"),
    ];
    for (extra, field, message) in bad {
        let e = parse_stream(&with(extra)).expect_err(extra);
        assert!(e.field.ends_with(field), "{extra}: {e}");
        assert!(e.message.contains(message), "{extra}: {e}");
    }
}

#[test]
fn with_no_ready_endpoint_the_serving_terminating_ones_take_new_connections() {
    let http_states = |yaml: &str| -> Vec<(String, BackendState)> {
        let fes = frontends(&state(yaml), &node("node-a"));
        let http = fes.iter().find(|f| f.port == 80 && f.kind == FrontendKind::ClusterIP).expect("http");
        http.backends.iter().map(|b| (b.address.to_string(), b.state)).collect()
    };
    // 10.244.0.2 and 10.244.1.2 are ready: 10.244.1.3 (terminating, serving) only drains.
    assert!(http_states(WEB).contains(&("10.244.1.3".into(), BackendState::Terminating)));
    // Every endpoint terminating: the serving ones take new connections; the others still drain.
    let all_terminating = WEB
        .replace(
            "conditions: {ready: true, serving: true, terminating: false}",
            "conditions: {ready: false, serving: false, terminating: true}",
        )
        .replace(
            "    nodeName: node-b\n  - addresses: [10.244.1.3]",
            "    nodeName: node-b\n    conditions: {ready: false, terminating: true}\n  - addresses: [10.244.1.3]",
        );
    assert_eq!(
        http_states(&all_terminating),
        [
            ("10.244.0.2".into(), BackendState::Terminating),
            ("10.244.1.2".into(), BackendState::Terminating),
            ("10.244.1.3".into(), BackendState::Active),
        ]
    );
}

#[test]
fn load_balancer_addresses_in_proxy_mode_are_left_to_the_load_balancer() {
    let lb = WEB.replace("type: NodePort", "type: LoadBalancer").replacen(
        "---\n",
        "status:\n  loadBalancer:\n    ingress:\n    - {ip: 203.0.113.1}\n    - {ip: 203.0.113.2, ipMode: VIP}\n    - {ip: 203.0.113.3, ipMode: Proxy}\n---\n",
        1,
    );
    let addresses: BTreeSet<IpAddr> = frontends(&state(&lb), &node("node-a"))
        .iter()
        .filter(|f| f.kind == FrontendKind::LoadBalancer)
        .map(|f| f.address)
        .collect();
    let want: BTreeSet<IpAddr> = ["203.0.113.1", "203.0.113.2"].iter().map(|a| a.parse().expect("ip")).collect();
    assert_eq!(addresses, want);
    let e = parse_stream(&lb.replace("ipMode: Proxy", "ipMode: Passthrough")).expect_err("bad mode");
    assert!(e.field.ends_with("status.loadBalancer.ingress[2].ipMode"), "{e}");
}

#[test]
fn source_ranges_restrict_load_balancer_frontends_and_change_without_a_gap() {
    use plan::{plan, Op};
    let none = BTreeSet::new();
    let lb =
        |ranges: &str| {
            WEB.replace("type: NodePort", &format!("type: LoadBalancer\n  loadBalancerSourceRanges: {ranges}"))
                .replacen("---\n", "status:\n  loadBalancer:\n    ingress: [{ip: 203.0.113.1}]\n---\n", 1)
        };
    let fes = frontends(&state(&lb("[192.0.2.0/24, ' 198.51.100.7/32']")), &node("node-a"));
    for fe in &fes {
        let want: Vec<ipnet::IpNet> = if fe.kind == FrontendKind::LoadBalancer {
            vec!["192.0.2.0/24".parse().expect("net"), "198.51.100.7/32".parse().expect("net")]
        } else {
            Vec::new()
        };
        assert_eq!(fe.source_ranges, want, "{:?} {}", fe.kind, fe.address);
    }
    let (_, tables) = plan(&plan::Tables::default(), &fes, &none).expect("plans");
    // 192.0.2.0/24 gives way to 192.0.2.128/25: the new range goes in before
    // the frontends are written, the old one leaves after them.
    let next = frontends(&state(&lb("[192.0.2.128/25, 198.51.100.7/32]")), &node("node-a"));
    let (ops, _) = plan(&tables, &next, &none).expect("plans");
    let position = |f: &dyn Fn(&Op) -> bool| ops.iter().position(f);
    let put = position(&|op| matches!(op, Op::PutSourceRange { range, .. } if range.to_string() == "192.0.2.128/25"));
    let delete =
        position(&|op| matches!(op, Op::DeleteSourceRange { range, .. } if range.to_string() == "192.0.2.0/24"));
    assert!(put.is_some() && delete.is_some() && put < delete, "{ops:?}");
    assert_eq!(
        ops.iter().filter(|op| matches!(op, Op::PutSourceRange { .. } | Op::DeleteSourceRange { .. })).count(),
        4,
        "two service ports, one range each way: {ops:?}"
    );

    let e = parse_stream(&lb("[192.0.2.0/33]")).expect_err("bad CIDR");
    assert_eq!(e.field, "document 0 (Service web): spec.loadBalancerSourceRanges[0]");
    let e = parse_stream(&WEB.replace("type: NodePort", "type: NodePort\n  loadBalancerSourceRanges: [10.0.0.0/8]"))
        .expect_err("not a LoadBalancer");
    assert!(e.to_string().contains("only for a LoadBalancer Service"), "{e}");
}

#[test]
fn removed_and_quarantined_udp_backends_depart_and_terminating_or_tcp_ones_do_not() {
    use plan::{plan, udp_departures, BackendKey, IPPROTO_TCP, IPPROTO_UDP};
    let none = BTreeSet::new();
    let (_, tables) = plan(&plan::Tables::default(), &frontends(&state(WEB), &node("node-a")), &none).expect("plans");
    let dns_id = tables.frontends.iter().find(|(k, _)| k.port == 53).map(|(_, f)| f.meta.service_id).expect("dns");
    let udp = |ip: &str| BackendKey { address: ip.parse().expect("ip"), port: 5353, proto: IPPROTO_UDP };

    // 10.244.1.2 leaves the slice; 10.244.0.2 terminates: only the first departs.
    let changed = WEB.replace("  - addresses: [10.244.1.2]\n    nodeName: node-b\n", "").replace(
        "conditions: {ready: true, serving: true, terminating: false}",
        "conditions: {ready: false, serving: true, terminating: true}",
    );
    let (ops, after) = plan(&tables, &frontends(&state(&changed), &node("node-a")), &none).expect("plans");
    assert_eq!(udp_departures(&ops), [(dns_id, udp("10.244.1.2"))].into());

    // A quarantined UDP backend departs; a quarantined TCP one has no UDP socket to end.
    let sick: BTreeSet<BackendKey> =
        [udp("10.244.1.3"), BackendKey { address: "10.244.1.3".parse().expect("ip"), port: 8080, proto: IPPROTO_TCP }]
            .into();
    let (ops, _) = plan(&after, &frontends(&state(&changed), &node("node-a")), &sick).expect("plans");
    assert_eq!(udp_departures(&ops), [(dns_id, udp("10.244.1.3"))].into());

    // The whole service goes: every UDP backend departs.
    let (ops, _) = plan(&after, &[], &none).expect("plans");
    let gone = udp_departures(&ops);
    assert!(gone.contains(&(dns_id, udp("10.244.0.2"))) && gone.contains(&(dns_id, udp("10.244.1.3"))), "{gone:?}");
    assert!(gone.iter().all(|(id, key)| *id == dns_id && key.proto == IPPROTO_UDP), "{gone:?}");
}

#[test]
fn udp_ports_are_probed_only_when_annotated_and_tcp_checks_stay_on_tcp_ports() {
    let annotated = |value: &str| {
        WEB.replace(
            "metadata: {name: web, namespace: shop}",
            &format!("metadata:\n  name: web\n  namespace: shop\n  annotations: {{weir.dev/health-check: 'http:/hz', weir.dev/udp-health-check: '{value}'}}"),
        )
    };
    let health_of = |yaml: &str, port: u16| {
        frontends(&state(yaml), &node("node-a")).into_iter().find(|f| f.port == port).map(|f| f.health).expect("port")
    };
    assert_eq!(health_of(WEB, 53), HealthCheck::None);
    assert_eq!(health_of(&annotated("dns"), 53), HealthCheck::Dns);
    assert_eq!(health_of(&annotated("dns"), 80), HealthCheck::Http { path: "/hz".into() });
    assert_eq!(health_of(&annotated("udp:ping"), 53), HealthCheck::Udp { payload: "ping".into() });
    assert_eq!(HealthCheck::Udp { payload: "ping".into() }.describe(), "udp:ping");
    for bad in ["udp:", "tcp", "icmp", &format!("udp:{}", "x".repeat(513))] {
        let e = parse_stream(&annotated(bad)).expect_err(bad);
        assert!(e.field.ends_with("metadata.annotations.weir.dev/udp-health-check"), "{bad}: {e}");
    }
}

/// WEB made global, with `extra` annotations.
fn global_web(extra: &str) -> ClusterState {
    let annotations =
        format!("metadata: {{name: web, namespace: shop, annotations: {{service.cilium.io/global: \"true\"{extra}}}}}");
    state(&WEB.replacen("metadata: {name: web, namespace: shop}", &annotations, 1))
}

/// West's slice of web: one ready endpoint.
fn west_slice() -> Vec<k8s::EndpointSlice> {
    let slice = WEB.split("---").nth(1).expect("slice");
    let head = &slice[..slice.find("endpoints:").expect("endpoints")];
    let yaml = format!("{head}endpoints:\n  - addresses: [10.245.0.9]\n    nodeName: west-a\n");
    let Object::EndpointSlice(slice) = parse_stream(&yaml).expect("slice").remove(0) else { panic!("a slice") };
    vec![*slice]
}

/// The http ClusterIP frontend's backends that take new connections, as
/// planned with `quarantined` failing their health check.
fn tcp_backends_quarantined(state: &ClusterState, quarantined: &[&str]) -> Vec<(String, Option<String>)> {
    let fes = frontends(state, &node("node-a"));
    let quarantined: BTreeSet<plan::BackendKey> = quarantined
        .iter()
        .map(|ip| plan::BackendKey { address: ip.parse().expect("ip"), port: 8080, proto: plan::IPPROTO_TCP })
        .collect();
    let (_, tables) = plan::plan(&plan::Tables::default(), &fes, &quarantined).expect("plans");
    let http = fes.iter().find(|f| f.kind == FrontendKind::ClusterIP && f.port == 80).expect("http");
    let entry = &tables.frontends[&plan::frontend_key(http)];
    entry.slots[..usize::from(entry.meta.active)]
        .iter()
        .map(|id| {
            let address = tables.backends[id].key.address;
            let backend = http.backends.iter().find(|b| b.address == address).expect("planned from the frontend");
            (address.to_string(), backend.cluster.clone())
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn tcp_backends(state: &ClusterState) -> Vec<(String, Option<String>)> {
    tcp_backends_quarantined(state, &[])
}

#[test]
fn a_global_service_merges_other_clusters_backends_as_its_affinity_prefers() {
    let key = ObjectKey { namespace: "shop".into(), name: "web".into() };
    let west = || ("10.245.0.9".to_string(), Some("west".to_string()));
    let own = |ip: &str| (ip.to_string(), None);

    // Not global: another cluster's slices are not merged.
    let mut plain = state(WEB);
    assert!(!plain.set_remote("west", [(key.clone(), west_slice())].into()).is_empty());
    assert!(!tcp_backends(&plain).contains(&west()));

    let mut none = global_web("");
    let touched = none.set_remote("west", [(key.clone(), west_slice())].into());
    assert_eq!(touched, [key.clone()].into());
    assert_eq!(tcp_backends(&none), [own("10.244.0.2"), own("10.244.1.2"), west()]);
    // The same again changes nothing; gone, the service is touched again.
    assert!(none.set_remote("west", [(key.clone(), west_slice())].into()).is_empty());
    assert_eq!(none.set_remote("west", BTreeMap::new()), [key.clone()].into());
    assert_eq!(tcp_backends(&none), [own("10.244.0.2"), own("10.244.1.2")]);

    let mut local = global_web(", service.cilium.io/affinity: local");
    local.set_remote("west", [(key.clone(), west_slice())].into());
    assert_eq!(tcp_backends(&local), [own("10.244.0.2"), own("10.244.1.2")]);
    // Local affinity fails over on health too: every own backend quarantined, west's take them.
    assert_eq!(tcp_backends_quarantined(&local, &["10.244.0.2"]), [own("10.244.1.2")]);
    assert_eq!(tcp_backends_quarantined(&local, &["10.244.0.2", "10.244.1.2"]), [west()]);
    let mut remote = global_web(", service.cilium.io/affinity: remote");
    remote.set_remote("west", [(key.clone(), west_slice())].into());
    assert_eq!(tcp_backends(&remote), [west()]);

    // No own endpoint ready: local affinity fails over to the other cluster.
    let service_alone = WEB.split("---").next().expect("service").replacen(
        "metadata: {name: web, namespace: shop}",
        "metadata: {name: web, namespace: shop, annotations: {service.cilium.io/global: \"true\", service.cilium.io/affinity: local}}",
        1,
    );
    let mut emptied = state(&service_alone);
    emptied.set_remote("west", [(key.clone(), west_slice())].into());
    assert_eq!(tcp_backends(&emptied), [west()]);

    // What a cluster shares: its global, shared services' ready endpoints.
    let shared = global_web("").global_shared();
    let endpoints: Vec<&str> = shared[&key][0].endpoints.iter().map(|e| e.addresses[0].as_str()).collect();
    assert_eq!(endpoints, ["10.244.0.2", "10.244.1.2"]);
    assert!(global_web(", service.cilium.io/shared: \"false\"").global_shared().is_empty());
    assert!(state(WEB).global_shared().is_empty());
    let refused = parse_stream(&WEB.replacen(
        "metadata: {name: web, namespace: shop}",
        "metadata: {name: web, namespace: shop, annotations: {service.cilium.io/affinity: nearest}}",
        1,
    ))
    .and_then(|objects| ClusterState::default().apply(objects).map(drop));
    let error = refused.expect_err("an unknown affinity is refused").to_string();
    assert!(error.contains("service.cilium.io/affinity") && error.contains("local, remote or none"), "{error}");
}
