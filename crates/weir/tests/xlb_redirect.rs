//! Next hop Route end to end: a load balancer with two legs, XDP on the
//! front one (toward the router and the clients) and the reals behind the
//! back one (a switch: a bridge the router also sits on). With `nextHop:
//! Route` the encapsulated packets leave by the back leg (XDP_REDIRECT,
//! or the stack while the real's MAC is unresolved), never back out of
//! the front; real TCP clients get answers from every real, which reply
//! straight to them through the router.
//!
//! XDP_REDIRECT into a veth is delivered only when the peer runs NAPI (an
//! XDP program, or GRO on; kernel 5.13 and later): the switch's end of the
//! back leg gets GRO, as a NIC would need its driver's ndo_xdp_xmit.

mod common;

use common::xlb::*;
use common::*;

const VIP: &str = "198.51.100.10";

#[test]
fn with_next_hop_route_encapsulated_packets_leave_by_the_back_interface_and_every_real_answers() {
    if !privileged("with_next_hop_route_encapsulated_packets_leave_by_the_back_interface_and_every_real_answers") {
        return;
    }
    let mut site = Site::new(unique_name("xrd"), &["client", "router", "lb", "switch", "real1", "real2"]);
    let roots = weir_lab::runtime::Roots::discover().expect("roots");
    for member in ["lb", "real1", "real2"] {
        site.dirs.push(roots.bpffs.join("weir").join("tests").join(site.ns(member)));
        site.dirs.push(std::env::temp_dir().join(site.ns(member)));
    }
    let (client, router, lb, switch, real1, real2) =
        (site.ns("client"), site.ns("router"), site.ns("lb"), site.ns("switch"), site.ns("real1"), site.ns("real2"));
    // Front: client -- router -- lb's l0.
    wire(&client, "c0", "192.0.2.2/24", &router, "r-c", "192.0.2.1/24", 0xc);
    wire(&lb, "l0", "10.1.0.2/24", &router, "r-lb", "10.1.0.1/24", 0x10);
    // Back: lb's b0, the reals and the router on one switch (10.3.0.0/24).
    sh(&switch, &["link add br0 type bridge", "link set br0 up"]);
    for (ns, interface, port, address) in [
        (&lb, "b0", "sw-lb", "10.3.0.1/24"),
        (&real1, "e0", "sw-r1", "10.3.0.11/24"),
        (&real2, "e0", "sw-r2", "10.3.0.12/24"),
        (&router, "r-back", "sw-rt", "10.3.0.254/24"),
    ] {
        sh(
            ns,
            &[
                &format!("link add {interface} type veth peer name {port} netns {switch}"),
                &format!("addr add {address} dev {interface}"),
                &format!("link set {interface} up"),
            ],
        );
        sh(&switch, &[&format!("link set {port} master br0"), &format!("link set {port} up")]);
    }
    // The frames the load balancer redirects into b0 reach its peer only
    // through NAPI: GRO on gives the peer one (a NIC: ndo_xdp_xmit).
    exec(&switch, &["ethtool", "-K", "sw-lb", "gro", "on"]);
    sh(&client, &["link set c0 mtu 1400", "route add default via 192.0.2.1"]);
    // A NIC hands XDP complete checksums; a veth would hand it the client's
    // unfinished ones (checksum offload), which the real then refuses.
    exec(&client, &["ethtool", "-K", "c0", "tx", "off"]);
    sh(&router, &["route add 198.51.100.0/28 via 10.1.0.2"]);
    exec(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    sh(
        &lb,
        &[
            "route add default via 10.1.0.1",
            "link add mgmt0 type veth peer name mgmt1",
            "link set mgmt0 up",
            "link set mgmt1 up",
        ],
    );
    // Route looks up as a router would, and forwards what it hands the stack.
    exec(&lb, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    for ns in [&real1, &real2] {
        sh(ns, &[&format!("addr add {VIP}/32 dev lo"), "route add default via 10.3.0.254"]);
    }
    // What came out of the load balancer's back leg, and what came out of
    // its front leg from the clients' outer sources (172.16.0.0/16; the
    // health probes' outer source is the load balancer's own address).
    nft(
        &switch,
        "add table netdev xrd\n\
         add chain netdev xrd back { type filter hook ingress device \"sw-lb\" priority 0 ; }\n\
         add rule netdev xrd back ip protocol 4 ip saddr 172.16.0.0/16 counter\n",
    );
    nft(
        &router,
        "add table inet xrd\n\
         add chain inet xrd front { type filter hook prerouting priority 0 ; }\n\
         add rule inet xrd front iifname \"r-lb\" ip protocol 4 ip saddr 172.16.0.0/16 counter\n",
    );

    serve(&real1, 80, "real1");
    serve(&real2, 80, "real2");
    let (_lb_agent, lb_socket) = start_agent(&site, "lb", &["--interface", "mgmt0", "--lb-interface", "l0"]);
    let (_real1_agent, _) = start_agent(&site, "real1", &["--interface", "e0", "--lb-decap-interface", "e0"]);
    let (_real2_agent, _) = start_agent(&site, "real2", &["--interface", "e0", "--lb-decap-interface", "e0"]);

    let config = std::env::temp_dir().join(format!("{}.yaml", site.prefix));
    std::fs::write(
        &config,
        format!(
            "apiVersion: weir.dev/v1alpha1\nkind: XdpLoadBalancer\nmetadata: {{name: edge}}\nspec:\n  nextHop: Route\n  vips:\n  \
             - {{name: web, address: {VIP}, port: 80, protocol: TCP, reals: [{{address: 10.3.0.11}}, {{address: 10.3.0.12}}]}}\n"
        ),
    )
    .expect("config");
    site.dirs.push(config.clone());
    weir_ok(&["apply", "-f", &config.to_string_lossy(), "--socket", &lb_socket.to_string_lossy()]);
    let socket = lb_socket.to_string_lossy().into_owned();
    let status_text = weir_ok(&["lb", "status", "--socket", &socket]);
    assert!(status_text.contains("balancing at XDP on l0, next hop Route"), "{status_text}");

    let diagnose = || {
        let mut out = String::from_utf8_lossy(&weir(&["lb", "status", "--socket", &socket]).stdout).into_owned();
        for ns in [&lb, &switch] {
            let links = std::process::Command::new("ip").args(["-n", ns, "-s", "link"]).output().expect("ip");
            out += &String::from_utf8_lossy(&links.stdout);
        }
        let neigh = std::process::Command::new("ip").args(["-n", &lb, "neigh"]).output().expect("ip");
        out += &String::from_utf8_lossy(&neigh.stdout);
        out + &format!(
            "back {:?}, front {:?}",
            nft_counts(&switch, "netdev", "xrd"),
            nft_counts(&router, "inet", "xrd")
        )
    };
    // Every real serves; each connection is a new flow with its own port.
    let (done, seen, answers) = every_real_answers(&site, VIP, 2, 8);
    assert!(done, "both reals answered through the VIP: {seen:?} in {answers} answers\n{}", diagnose());
    // Each connection's SYN, ACK and request went out encapsulated: all by
    // the back leg, none back out of the front.
    let back = nft_counts(&switch, "netdev", "xrd");
    let front = nft_counts(&router, "inet", "xrd");
    assert!(back[0] >= 8 * 3, "encapsulated packets left by the back interface: {}", diagnose());
    assert_eq!(front[0], 0, "none went back out of the front interface: {}", diagnose());
    let status = lb_status(&lb_socket);
    assert_eq!(status["nextHop"], "Route", "{status}");
    let counted = |name: &str| status["counters"][name]["packets"].as_u64().unwrap_or(0);
    // The first packet to each real found no neighbour (nothing on the
    // back leg had resolved the reals) and went through the stack, which
    // resolved it; the rest were redirected.
    assert!(counted("route_no_neigh") >= 1, "{status}");
    assert!(counted("route_redirect") >= 8, "{status}");
    assert!(status["drops"].as_object().is_none_or(|d| d.is_empty()), "{status}");

    // Simulation asks the same routes, as if the packet came in on l0:
    // both reals' neighbours are known now, so the packet is redirected.
    let simulated =
        weir_ok(&["lb", "simulate", "--client", "192.0.2.2:40000", "--vip", &format!("{VIP}:80"), "--socket", &socket]);
    assert!(simulated.contains("verdict  XDP_REDIRECT"), "{simulated}");
}
