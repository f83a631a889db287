//! Weir's pod path (`routing: weir`): pod traffic between and within nodes
//! flows past the nodes' IP stacks — counted by an nftables counter on each
//! node's forward hook, which stays at zero — while the same lab with
//! `routing: kernel` moves the counters, so they count.

mod common;

use common::*;

/// TCP and UDP between pods on different nodes and on one node; ping too.
fn exchange_everywhere(lab: &TestLab) {
    let plan = lab.plan();
    let pod = |name: &str| plan.pod(name).expect("pod").clone();
    let (web, api, db) = (pod("frontend/web"), pod("backend/api"), pod("backend/db"));
    for (client, server) in [(&web, &api), (&api, &web), (&db, &api), (&api, &db)] {
        let got = tcp_exchange(&client.netns, &server.netns, server.ip, b"hello").expect("tcp");
        assert_eq!(got, b"hello", "{} -> {}", client.name, server.name);
        let got = udp_exchange(&client.netns, &server.netns, server.ip, b"ping");
        assert_eq!(got.as_deref(), Some(&b"ping"[..]), "udp {} -> {}", client.name, server.name);
    }
    let out = lab.exec("frontend/web", &["ping", "-c", "3", "-i", "0.2", "-W", "1", &db.ip.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn with_routing_weir_pod_traffic_skips_the_nodes_ip_stacks() {
    if !privileged("pod path") {
        return;
    }
    let name = unique_name("podp");
    let lab = TestLab::up(&name, &two_node_spec(&name).replace("routing: kernel", "routing: weir"), true);
    let plan = lab.plan();
    for node in &plan.nodes {
        nft_counter(&node.netns, "forward", "");
    }
    exchange_everywhere(&lab);
    for node in &plan.nodes {
        assert_eq!(nft_counted(&node.netns), 0, "{}: nothing went through the forward hook", node.name);
        let text = scrape_metrics(node);
        let delivered =
            metric_sum(&text, &format!("weir_pod_path_packets_total{{node=\"{}\",path=\"delivered\"}}", node.name));
        let routed =
            metric_sum(&text, &format!("weir_pod_path_packets_total{{node=\"{}\",path=\"forwarded\"}}", node.name));
        assert!(delivered > 0 && routed > 0, "{}: delivered {delivered}, forwarded {routed}", node.name);
    }
}

#[test]
fn with_routing_kernel_the_forward_hook_sees_pod_traffic() {
    let Some(lab) = TestLab::for_test("podk_routing_kernel", true) else { return };
    let plan = lab.plan();
    for node in &plan.nodes {
        nft_counter(&node.netns, "forward", "");
    }
    exchange_everywhere(&lab);
    for node in &plan.nodes {
        assert!(nft_counted(&node.netns) > 0, "{}: the kernel forwarded pod traffic", node.name);
    }
}
