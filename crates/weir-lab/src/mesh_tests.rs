use crate::mesh::{MeshSpec, MAX_CLUSTER_ID};

const EXAMPLE: &str = include_str!("../../../examples/clustermesh.yaml");

fn rejects(yaml: &str, field: &str, needle: &str) {
    let err = MeshSpec::parse(yaml).expect_err("mesh must be rejected");
    assert_eq!(err.field, field, "wrong field in: {err}");
    assert!(err.message.contains(needle), "message {:?} lacks {needle:?}", err.message);
}

#[test]
fn the_shipped_example_lowers_to_two_labs_with_distinct_fabric_addresses_and_ports() {
    let mesh = MeshSpec::parse(EXAMPLE).expect("example parses");
    let plans = mesh.plans();
    assert_eq!(plans.len(), 2);
    let addresses: Vec<_> = plans.iter().flat_map(|p| p.nodes.iter().map(|n| n.address)).collect();
    assert_eq!(
        addresses,
        ["172.30.0.1", "172.30.0.2", "172.30.0.3"].map(|a| a.parse::<std::net::Ipv4Addr>().expect("an address"))
    );
    let ports: Vec<_> = plans.iter().flat_map(|p| p.nodes.iter().map(|n| n.fabric_port.clone())).collect();
    assert_eq!(ports, ["c1n0", "c1n1", "c2n0"]);
    for plan in &plans {
        plan.spec.validate().expect("each cluster is a valid lab");
        assert_eq!(plan.fabric_netns, "weir.mesh.fabric");
        assert!(!plan.all_netns().contains(&"weir.mesh.fabric"), "a cluster does not own the mesh's fabric");
    }
    let east = plans[0].mesh.as_ref().expect("member");
    assert_eq!((east.cluster_id, east.peers.clone()), (1, vec![("west".into(), "http://172.30.0.3:2379".into())]));
}

#[test]
fn an_explicit_address_in_one_cluster_is_skipped_by_the_others_assignment() {
    let yaml = EXAMPLE.replace(
        "{name: west-a, podCIDR: 10.245.0.0/24}",
        "{name: west-a, podCIDR: 10.245.0.0/24, address: 172.30.0.1}",
    );
    let plans = MeshSpec::parse(&yaml).expect("parses").plans();
    let addresses: Vec<String> = plans.iter().flat_map(|p| p.nodes.iter().map(|n| n.address.to_string())).collect();
    assert_eq!(addresses, ["172.30.0.2", "172.30.0.3", "172.30.0.1"]);
}

#[test]
fn bad_meshes_are_refused_naming_the_field() {
    rejects(&EXAMPLE.replace("id: 2", "id: 1"), "spec.clusters[1].id", "duplicate cluster id 1");
    rejects(&EXAMPLE.replace("id: 2", "id: 0"), "spec.clusters[1].id", "1-255");
    rejects(&EXAMPLE.replace("id: 2", &format!("id: {}", MAX_CLUSTER_ID + 1)), "spec.clusters[1].id", "1-255");
    rejects(&EXAMPLE.replace("name: west", "name: east"), "spec.clusters[1].name", "duplicate cluster name");
    rejects(&EXAMPLE.replace("name: west", "name: mesh"), "spec.clusters[1].name", "mesh's name");
    rejects(
        &EXAMPLE.replace("10.245.0.0/24", "10.244.1.0/25"),
        "spec.clusters[1].spec.nodes[0].podCIDR",
        "overlaps 10.244.1.0/24",
    );
    rejects(&EXAMPLE.replace("west-a", "east-a"), "spec.clusters[1].spec.nodes[0].name", "another cluster");
    rejects(
        &EXAMPLE.replacen("routing: weir", "routing: vxlan", 1),
        "spec.clusters[1].spec.routing",
        "either every cluster uses vxlan or none",
    );
    rejects(&EXAMPLE.replacen("routing: weir", "routing: none", 1), "spec.clusters[0].spec.routing", "none");
    let stale = |after: &str| EXAMPLE.replace("  clusters:\n", &format!("  remoteStaleAfter: {after}\n  clusters:\n"));
    rejects(&stale("5d"), "spec.remoteStaleAfter", "unknown unit");
    let kept = MeshSpec::parse(&stale("30s")).expect("a stale time");
    assert_eq!(kept.plans()[0].mesh.as_ref().and_then(|m| m.stale_after.as_deref()), Some("30s"));
    MeshSpec::parse(&stale("\"0\"")).expect("0: kept until reached again");
    MeshSpec::parse(&EXAMPLE.replace("routing: weir", "routing: vxlan")).expect("every cluster on vxlan");
    rejects(
        &EXAMPLE.replacen("routing: weir", "routing: weir\n        fabric: {cidr: 10.0.0.0/24}", 1),
        "spec.clusters[0].spec.fabric",
        "unknown field",
    );
    rejects(
        &EXAMPLE.replacen("routing: weir", "routing: weir\n        dualStack: true", 1),
        "spec.clusters[0].spec.dualStack",
        "unknown field",
    );
    // A cluster's own errors are named inside the mesh.
    rejects(&EXAMPLE.replace("node: west-a", "node: west-z"), "spec.clusters[1].spec.pods[0].node", "not declared");
    let both_at_one = EXAMPLE
        .replace(
            "{name: east-a, podCIDR: 10.244.0.0/24}",
            "{name: east-a, podCIDR: 10.244.0.0/24, address: 172.30.0.9}",
        )
        .replace(
            "{name: west-a, podCIDR: 10.245.0.0/24}",
            "{name: west-a, podCIDR: 10.245.0.0/24, address: 172.30.0.9}",
        );
    rejects(&both_at_one, "spec.clusters[1].spec.nodes[0].address", "duplicate fabric address");
    rejects(&EXAMPLE.replace("cidr: 172.30.0.0/24", "cidr: 172.30.0.0/30"), "spec.fabric.cidr", "too small");
    rejects(&EXAMPLE.replace("  clusters:", "  clusterz:"), "spec.clusterz", "unknown field");
}
