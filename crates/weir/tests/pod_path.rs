//! Weir's pod path (`routing: weir`): pod traffic between and within nodes,
//! IPv4 and IPv6 (the labs are dual-stack), flows past the nodes' IP stacks — counted by an nftables counter on each
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
    // A dual-stack lab: the same over IPv6.
    let (Some(web6), Some(api6), Some(db6)) = (web.ipv6, api.ipv6, db.ipv6) else { return };
    for (client, server, ip) in [(&web, &api, api6), (&api, &web, web6), (&db, &api, api6), (&api, &db, db6)] {
        let got = tcp_exchange(&client.netns, &server.netns, ip, b"hello6").expect("tcp over IPv6");
        assert_eq!(got, b"hello6", "{} -> {} over IPv6", client.name, server.name);
        let got = udp_exchange(&client.netns, &server.netns, ip, b"ping6");
        assert_eq!(got.as_deref(), Some(&b"ping6"[..]), "udp {} -> {} over IPv6", client.name, server.name);
    }
    let out = lab.exec("frontend/web", &["ping", "-6", "-c", "3", "-i", "0.2", "-W", "1", &db6.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn with_routing_weir_pod_traffic_skips_the_nodes_ip_stacks() {
    if !privileged("pod path") {
        return;
    }
    let name = unique_name("podp");
    let spec = two_node_spec(&name).replace("routing: kernel", "dualStack: true\n  routing: weir");
    let lab = TestLab::up(&name, &spec, true);
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
    // Nothing masquerades here: the outside has no way back to a pod.
    assert_eq!(to_the_outside(&lab, false), None, "without the pod path, pods cannot reach the outside");
}

/// TCP and UDP from frontend/web to the external host (over IPv6 with
/// `ipv6`), which answers; returns the address the external host saw, or
/// None when nothing arrived.
fn to_the_outside(lab: &TestLab, ipv6: bool) -> Option<std::net::IpAddr> {
    use std::io::{Read, Write};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, TcpStream, UdpSocket};
    use std::time::Duration;
    let plan = lab.plan();
    let (web, ext) = (plan.pod("frontend/web").expect("web").clone(), plan.externals[0].clone());
    let (ext_ip, any): (IpAddr, IpAddr) = if ipv6 {
        (ext.address6.expect("a dual-stack lab").into(), Ipv6Addr::UNSPECIFIED.into())
    } else {
        (ext.address.into(), Ipv4Addr::UNSPECIFIED.into())
    };
    let listener =
        weir_host::netns::run_in(&ext.netns, || TcpListener::bind((ext_ip, 0))).expect("netns").expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut client = weir_host::netns::run_in(&web.netns, || TcpStream::connect_timeout(&addr, Duration::from_secs(1)))
        .expect("netns")
        .ok()?;
    let (mut accepted, peer) = listener.accept().expect("accept");
    client.write_all(b"out").expect("write");
    let mut got = [0u8; 3];
    accepted.read_exact(&mut got).expect("read");
    accepted.write_all(b"back").expect("reply");
    let mut back = [0u8; 4];
    client.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    client.read_exact(&mut back).expect("the reply came back");
    assert_eq!((&got, &back), (b"out", b"back"));

    let server = weir_host::netns::run_in(&ext.netns, || UdpSocket::bind((ext_ip, 0))).expect("netns").expect("bind");
    server.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let sender = weir_host::netns::run_in(&web.netns, || UdpSocket::bind((any, 0))).expect("netns").expect("bind");
    sender.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    sender.send_to(b"ping", server.local_addr().expect("addr")).expect("send");
    let mut buf = [0u8; 16];
    let (n, from) = server.recv_from(&mut buf).expect("the datagram arrived");
    assert_eq!(&buf[..n], b"ping");
    assert_eq!(from.ip(), peer.ip(), "UDP is masqueraded as TCP is");
    server.send_to(b"pong", from).expect("reply");
    let n = sender.recv(&mut buf).expect("the UDP reply came back");
    assert_eq!(&buf[..n], b"pong");
    Some(peer.ip())
}

#[test]
fn with_routing_weir_pods_reach_the_outside_masqueraded_as_their_node() {
    if !privileged("pod masquerade") {
        return;
    }
    let name = unique_name("podm");
    let spec = two_node_spec(&name).replace("routing: kernel", "dualStack: true\n  routing: weir");
    let lab = TestLab::up(&name, &spec, true);
    let node_a = lab.plan().node("node-a").expect("node-a").clone();
    assert_eq!(to_the_outside(&lab, false), Some(node_a.address.into()), "the external host sees node-a");
    let node_a6 = node_a.address6.expect("dual-stack");
    assert_eq!(to_the_outside(&lab, true), Some(node_a6.into()), "over IPv6 too");
}

#[test]
fn with_routing_vxlan_pods_on_different_nodes_talk_over_the_overlay() {
    if !privileged("pod overlay") {
        return;
    }
    let name = unique_name("podv");
    let spec = two_node_spec(&name).replace("routing: kernel", "dualStack: true\n  routing: vxlan");
    let lab = TestLab::up(&name, &spec, true);
    let plan = lab.plan();
    for node in &plan.nodes {
        let routes = weir_host::iproute::ip(Some(&node.netns), &["route"]).expect("routes");
        assert!(
            !routes.contains("10.244.0.0/24") && !routes.contains("10.244.1.0/24"),
            "no pod routes on the fabric: {routes}"
        );
        nft_counter(&node.netns, "forward", "");
    }
    exchange_everywhere(&lab);
    for node in &plan.nodes {
        assert_eq!(nft_counted(&node.netns), 0, "{}: nothing went through the forward hook", node.name);
        let text = scrape_metrics(node);
        let tunnelled =
            metric_sum(&text, &format!("weir_pod_path_packets_total{{node=\"{}\",path=\"encapsulated\"}}", node.name));
        assert!(tunnelled > 0, "{}: pods' traffic to the other node went into the overlay", node.name);
    }
    let node_a = plan.node("node-a").expect("node-a").address;
    assert_eq!(
        to_the_outside(&lab, false),
        Some(std::net::IpAddr::V4(node_a)),
        "the outside is still reached, masqueraded"
    );
}
