use std::net::IpAddr;

use weir_service::ClusterState;

use crate::services::{merge, service_vips, ClusterNodes, ServiceVips};
use crate::spec::{self, Forwarding};

const SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
  - {name: http, protocol: TCP, port: 8080}
endpoints:
  - addresses: [10.244.0.2]
    nodeName: node-a
  - addresses: [10.244.1.2]
    nodeName: node-b
  - addresses: [10.244.1.3]
    nodeName: node-b
  - addresses: [10.244.1.4]
    nodeName: node-b
    conditions: {ready: false}
  - addresses: [10.244.2.2]
    nodeName: node-gone
"#;

fn service(extra_spec: &str, annotations: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations: {{{annotations}}}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  selector: {{app: web}}
  ports:
  - {{name: http, port: 80, targetPort: 8080, protocol: TCP}}
{extra_spec}
"#
    )
}

fn cluster(yaml: &str) -> ClusterState {
    let objects = weir_service::parse_stream(yaml).expect("objects parse");
    ClusterState::default().apply(objects).expect("objects apply").0
}

fn nodes() -> ClusterNodes {
    let mut nodes = ClusterNodes::default();
    nodes.v4.insert("node-a".into(), "172.30.0.1".parse().expect("ip"));
    nodes.v4.insert("node-b".into(), "172.30.0.2".parse().expect("ip"));
    nodes
}

const OURS: &str = "  loadBalancerClass: weir.dev/xdp\n  loadBalancerIP: 198.51.100.7";

#[test]
fn a_service_of_the_class_is_one_vip_whose_reals_are_its_endpoints_nodes_weighted_by_their_count() {
    let state = cluster(&format!("{}\n---\n{SLICE}", service(OURS, "")));
    let out = service_vips(&state, &nodes());
    assert_eq!(out.vips.len(), 1, "{out:?}");
    let vip = &out.vips[0];
    assert_eq!(vip.name, "shop/web:80/TCP");
    assert_eq!(vip.key.address, "198.51.100.7".parse::<IpAddr>().expect("ip"));
    assert_eq!((vip.key.port, vip.key.proto), (80, 6));
    assert_eq!(vip.forwarding, Forwarding::Ipip);
    let reals: Vec<(String, u32)> = vip.reals.iter().map(|r| (r.key.address.to_string(), r.weight)).collect();
    // node-b runs two ready endpoints (a third is not ready): twice node-a's share.
    assert_eq!(reals, vec![("172.30.0.1".to_string(), 1), ("172.30.0.2".to_string(), 2)]);
    assert_eq!(out.problems.len(), 1, "{out:?}");
    assert!(out.problems[0].contains("node node-gone"), "{out:?}");
}

#[test]
fn the_status_address_is_the_vip_and_gue_is_chosen_by_annotation() {
    let status = "  loadBalancerClass: weir.dev/xdp\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: 198.51.100.9";
    let state = cluster(&format!("{}\n---\n{SLICE}", service(status, "weir.dev/xdp-forwarding: GUE")));
    let out = service_vips(&state, &nodes());
    assert_eq!(out.vips.len(), 1, "{out:?}");
    assert_eq!(out.vips[0].key.address.to_string(), "198.51.100.9");
    assert_eq!(out.vips[0].forwarding, Forwarding::Gue);
}

#[test]
fn services_of_another_class_or_type_are_not_served() {
    for extra in
        ["  loadBalancerClass: example.com/other\n  loadBalancerIP: 198.51.100.7", "  loadBalancerIP: 198.51.100.7"]
    {
        let state = cluster(&format!("{}\n---\n{SLICE}", service(extra, "")));
        assert_eq!(service_vips(&state, &nodes()), ServiceVips::default(), "{extra}");
    }
}

#[test]
fn a_service_without_an_address_or_with_a_bad_annotation_is_reported_not_served() {
    let state = cluster(&format!("{}\n---\n{SLICE}", service("  loadBalancerClass: weir.dev/xdp", "")));
    let out = service_vips(&state, &nodes());
    assert!(out.vips.is_empty());
    assert!(out.problems[0].contains("no LoadBalancer address"), "{out:?}");

    let state = cluster(&format!("{}\n---\n{SLICE}", service(OURS, "weir.dev/xdp-forwarding: NAT")));
    let out = service_vips(&state, &nodes());
    assert!(out.vips.is_empty());
    assert!(out.problems[0].contains("must be IPIP or GUE"), "{out:?}");
}

#[test]
fn a_service_vip_the_document_holds_is_left_out_and_said_so() {
    let state = cluster(&format!("{}\n---\n{SLICE}", service(OURS, "")));
    let services = service_vips(&state, &nodes());
    let document = spec::parse(
        "apiVersion: weir.dev/v1alpha1\nkind: XdpLoadBalancer\nmetadata: {name: edge}\nspec:\n  vips:\n  \
         - {name: web, address: 198.51.100.7, port: 80, protocol: TCP, reals: [{address: 10.0.0.1}]}\n",
    )
    .expect("document");
    let (merged, left_out) = merge(&document, &services);
    assert_eq!(merged.vips.len(), 1);
    assert_eq!(merged.vips[0].name, "web");
    assert!(left_out.iter().any(|l| l.contains("shop/web:80/TCP") && l.contains("VIP \"web\"")), "{left_out:?}");

    let other = spec::parse("apiVersion: weir.dev/v1alpha1\nkind: XdpLoadBalancer\nmetadata: {name: edge}\nspec: {}\n")
        .expect("document");
    let (merged, _) = merge(&other, &services);
    assert_eq!(merged.vips.len(), 1);
    assert_eq!(merged.vips[0].name, "shop/web:80/TCP");
}

#[test]
fn with_external_traffic_policy_local_each_node_is_a_real_for_its_own_endpoints() {
    let local = format!("{OURS}\n  externalTrafficPolicy: Local");
    let state = cluster(&format!("{}\n---\n{SLICE}", service(&local, "")));
    let out = service_vips(&state, &nodes());
    assert_eq!(out.vips.len(), 1, "{out:?}");
    let reals: Vec<(String, u32)> = out.vips[0].reals.iter().map(|r| (r.key.address.to_string(), r.weight)).collect();
    assert_eq!(reals, vec![("172.30.0.1".to_string(), 1), ("172.30.0.2".to_string(), 2)]);
}
