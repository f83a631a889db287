use std::path::Path;

use crate::plan::LabPlan;
use crate::spec::LabSpec;

const EXAMPLE: &str = include_str!("../../../examples/lab.yaml");

fn rejects(yaml: &str, field: &str, needle: &str) {
    let err = LabSpec::parse(yaml).expect_err("spec must be rejected");
    assert_eq!(err.field, field, "wrong field in: {err}");
    assert!(err.message.contains(needle), "message {:?} lacks {needle:?}", err.message);
}

fn base() -> String {
    EXAMPLE.to_string()
}

#[test]
fn the_shipped_example_is_valid_with_two_nodes_three_pods_two_namespaces_one_external_host() {
    let spec = LabSpec::parse(EXAMPLE).expect("example parses");
    assert_eq!(spec.spec.nodes.len(), 2);
    assert_eq!(spec.spec.pods.len(), 3);
    assert_eq!(spec.spec.namespaces.len(), 2);
    assert_eq!(spec.spec.external_hosts.len(), 1);
}

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    rejects(
        &base().replace("podCIDR:", "podCidr:"),
        "spec.nodes[0].podCidr",
        "unknown field `podCidr`, expected one of",
    );
    rejects(&base().replace("kind: Lab", "kind: Lab\nextra: 1"), "extra", "unknown field `extra`");
}

#[test]
fn overlapping_pod_cidrs_are_rejected() {
    rejects(&base().replace("10.244.1.0/24", "10.244.0.0/16"), "spec.nodes[1].podCIDR", "overlaps 10.244.0.0/24");
}

#[test]
fn a_pod_cidr_overlapping_the_fabric_is_rejected() {
    rejects(&base().replace("10.244.1.0/24", "172.30.0.128/25"), "spec.nodes[1].podCIDR", "overlaps 172.30.0.0/24");
}

#[test]
fn a_pod_on_an_undeclared_node_is_rejected() {
    rejects(&base().replacen("node: node-b", "node: node-c", 1), "spec.pods[1].node", "\"node-c\" is not declared");
}

#[test]
fn duplicate_names_are_rejected() {
    rejects(&base().replace("name: node-b", "name: node-a"), "spec.nodes[1].name", "duplicate node name");
    rejects(&base().replace("name: internet", "name: node-a"), "spec.externalHosts[0].name", "duplicate host name");
    rejects(&base().replace("name: backend\n", "name: frontend\n"), "spec.namespaces[1].name", "duplicate namespace");
    rejects(&base().replace("name: db", "name: api"), "spec.pods[2].name", "duplicate pod backend/api");
}

#[test]
fn undeclared_namespaces_bad_names_and_bad_addresses_are_rejected() {
    rejects(&base().replacen("namespace: backend", "namespace: nowhere", 1), "spec.pods[1].namespace", "not declared");
    rejects(&base().replace("name: demo", "name: Demo"), "metadata.name", "not a valid name");
    rejects(
        &base().replace("podCIDR: 10.244.0.0/24", "podCIDR: 10.244.0.1/24"),
        "spec.nodes[0].podCIDR",
        "host bits set",
    );
    rejects(&base().replace("podCIDR: 10.244.0.0/24", "podCIDR: 10.244.0.0/33"), "spec.nodes[0].podCIDR", "");
    rejects(&base().replace("apiVersion: weir.dev/v1alpha1", "apiVersion: v1"), "apiVersion", "weir.dev/v1alpha1");
}

#[test]
fn explicit_pod_ips_must_lie_in_the_node_cidr_and_avoid_the_gateway() {
    let with_ip = |ip: &str| base().replacen("node: node-a\n", &format!("node: node-a\n      ip: {ip}\n"), 1);
    rejects(&with_ip("10.244.1.5"), "spec.pods[0].ip", "not a pod address");
    rejects(&with_ip("10.244.0.1"), "spec.pods[0].ip", "gateway");
    LabSpec::parse(&with_ip("10.244.0.9")).expect("a free address in the CIDR is fine");
}

#[test]
fn plan_assigns_distinct_addresses_and_collision_free_names() {
    let spec = LabSpec::parse(EXAMPLE).expect("example parses");
    let plan = LabPlan::resolve(&spec, Path::new("/run/weir/labs/demo"));
    let mut ips: Vec<_> = plan.pods.iter().map(|p| p.ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 3);
    for pod in &plan.pods {
        let node = plan.node(&pod.node).expect("node");
        assert!(node.pod_cidr.contains(&pod.ip) && pod.ip != node.gateway);
        assert!(pod.host_interface.len() <= 15, "interface names fit IFNAMSIZ");
    }
    let mut ns = plan.all_netns();
    ns.sort();
    ns.dedup();
    assert_eq!(ns.len(), 1 + 2 + 3 + 1);
    assert!(plan.all_netns().iter().all(|n| n.starts_with("weir.demo.")));
    assert_ne!(plan.nodes[0].address, plan.nodes[1].address);
    assert_ne!(plan.nodes[0].address, plan.externals[0].address);
}

fn with_edge(edge: &str) -> String {
    format!("{}  edge:\n{edge}", base())
}

#[test]
fn an_edge_resolves_to_a_router_load_balancers_and_clients_with_fabric_and_client_addresses() {
    let spec =
        LabSpec::parse(&with_edge("    loadBalancers: [{name: lb1}, {name: lb2}]\n    clients: [{name: alice}]\n"))
            .expect("spec with an edge");
    let plan = LabPlan::resolve(&spec, Path::new("/tmp/weir-lab-test"));
    let edge = plan.edge.clone().expect("edge plan");
    let taken: Vec<_> = plan.nodes.iter().map(|n| n.address).chain(plan.externals.iter().map(|e| e.address)).collect();
    assert!(!taken.contains(&edge.router_address), "{taken:?}");
    assert_eq!(edge.load_balancers.len(), 2);
    assert!(edge.load_balancers.iter().all(|b| !taken.contains(&b.address) && b.address != edge.router_address));
    assert_eq!(edge.client_gateway.to_string(), "192.0.2.1");
    assert_eq!(edge.clients[0].address.to_string(), "192.0.2.2");
    assert_eq!(edge.vip_cidr.to_string(), "198.51.100.0/24");
    assert!(plan.all_netns().contains(&edge.router_netns.as_str()));
}

#[test]
fn bad_edges_are_rejected_with_their_path() {
    rejects(&with_edge("    loadBalancers: []\n"), "spec.edge.loadBalancers", "at least one");
    rejects(
        &with_edge("    loadBalancers: [{name: node-a}]\n"),
        "spec.edge.loadBalancers[0].name",
        "duplicate host name",
    );
    rejects(&with_edge("    loadBalancers: [{name: router}]\n"), "spec.edge.loadBalancers[0].name", "router");
    rejects(
        &with_edge("    loadBalancers: [{name: lb}]\n    vipCIDR: 10.244.0.0/16\n"),
        "spec.edge.vipCIDR",
        "overlaps 10.244.0.0/24",
    );
    rejects(
        &with_edge("    loadBalancers: [{name: lb}]\n    clientCIDR: 192.0.2.1/24\n"),
        "spec.edge.clientCIDR",
        "host bits",
    );
    rejects(
        &with_edge(
            "    loadBalancers: [{name: lb}]\n    clients: [{name: a}, {name: b}]\n    clientCIDR: 192.0.2.0/31\n",
        ),
        "spec.edge.clientCIDR",
        "too few",
    );
    rejects(
        &with_edge("    loadBalancers: [{name: lb, port: 1}]\n"),
        "spec.edge.loadBalancers[0].port",
        "unknown field",
    );
    let nine: Vec<String> = (0..9).map(|i| format!("{{name: lb{i}}}")).collect();
    rejects(&with_edge(&format!("    loadBalancers: [{}]\n", nine.join(", "))), "spec.edge.loadBalancers", "at most 8");
}

#[test]
fn pods_take_their_owners_as_kubectl_writes_them() {
    let owned = "labels: {app: web, tier: frontend}\n      generateName: web-5d8f7c9b4-\n      ownerReferences:\n      - apiVersion: apps/v1\n        kind: ReplicaSet\n        name: web-5d8f7c9b4\n        uid: 0b5c3e51-8a4c-4a53-9a8e-2f1f0c6f3d11\n        controller: true\n        blockOwnerDeletion: true";
    let yaml = base().replace("labels: {app: web, tier: frontend}", owned);
    let spec = LabSpec::parse(&yaml).expect("owned pod parses");
    let web = &spec.spec.pods[0];
    assert_eq!(web.generate_name.as_deref(), Some("web-5d8f7c9b4-"));
    assert_eq!(web.owner_references[0].kind, "ReplicaSet");
    assert_eq!(web.owner_references[0].controller, Some(true));
    let plan = LabPlan::resolve(&spec, Path::new("/tmp/weir-lab-test"));
    assert_eq!(plan.pod("frontend/web").expect("web").owner_references, web.owner_references);
    rejects(
        &yaml.replace("kind: ReplicaSet", "kind: \"\""),
        "spec.pods[0].ownerReferences[0].kind",
        "must not be empty",
    );
    rejects(&yaml.replace("uid:", "owner:"), "spec.pods[0].ownerReferences[0].owner", "unknown field `owner`");
}
