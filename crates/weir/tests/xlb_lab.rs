//! The XDP load balancer end to end, in namespaces wired like a real
//! deployment: a client behind a router; the router sends the VIPs to a
//! load-balancer node (agent --lb-interface); two real servers hold the VIPs
//! on loopback and strip the encapsulation at tc (agent
//! --lb-decap-interface, beside the node datapath on the same interface);
//! a third real cannot decapsulate and is served in NAT mode, its replies
//! routed back through the load balancer.
//!
//! Real TCP clients reach every real; replies go from the reals straight to
//! the client (nftables counters on the router see every reply arrive from
//! a real and none from the load balancer); the NAT real answers as the
//! VIP; an agent killed with SIGKILL leaves forwarding as it was.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::xlb::*;
use common::*;

const VIP: &str = "198.51.100.10";
const GUE_VIP: &str = "198.51.100.11";
/// IPv6 (6in6), on its own port: the reals' IPv6 listener is dual-stack.
const VIP6: &str = "2001:db8:f::10";
const VIP6_PORT: u16 = 81;
const NAT_VIP: &str = "198.51.100.12";
/// The LB agent's metrics, inside its own namespace.
const METRICS: &str = "127.0.0.1:9963";

/// [`serve`] on IPv6 (and IPv4: dual-stack) `port`.
fn serve6(ns: &str, port: u16, name: &'static str) {
    let listener = weir_host::netns::run_in(ns, || TcpListener::bind(("::", port))).expect("netns").expect("bind");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.write_all(name.as_bytes());
        }
    });
}

/// The packet counts of the router's nftables rules, in order.
fn router_counts(site: &Site) -> Vec<u64> {
    nft_counts(&site.ns("router"), "inet", "xlbtest")
}

/// What each part saw, for a failure's message.
fn diagnose(site: &Site, sockets: &[&std::path::Path]) -> String {
    let mut out = String::new();
    for socket in sockets {
        out += &String::from_utf8_lossy(&weir(&["lb", "status", "--socket", &socket.to_string_lossy()]).stdout);
    }
    let run = |args: &[&str]| {
        std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    for member in ["router", "real1"] {
        out += &format!("{member}: {}\n", run(&["ip", "-n", &site.ns(member), "-s", "link"]));
    }
    out += &run(&["ip", "netns", "exec", &site.ns("lb"), "ethtool", "-S", "l0"]);
    out += &run(&[
        "ip",
        "netns",
        "exec",
        &site.ns("router"),
        "nstat",
        "-az",
        "IpInAddrErrors",
        "IpInHdrErrors",
        "IpOutNoRoutes",
        "IpInDiscards",
    ]);
    out + &format!("router counters {:?}", router_counts(site))
}

#[test]
fn clients_reach_every_real_through_the_xdp_load_balancer_and_replies_bypass_it() {
    if !privileged("clients_reach_every_real_through_the_xdp_load_balancer_and_replies_bypass_it") {
        return;
    }
    let mut site = Site::up("xlb", &[VIP, GUE_VIP, VIP6], &["nat"]);
    let (router, real1, real2, nat) = (site.ns("router"), site.ns("real1"), site.ns("real2"), site.ns("nat"));
    wire(&nat, "e0", "10.2.3.2/24", &router, "r-nat", "10.2.3.1/24", 0x23);
    sh(&nat, &["route add default via 10.2.3.1"]);
    sh(
        &router,
        &[
            // The NAT real's replies go back through the load balancer.
            "rule add iif r-nat table 100",
            "route add default via 10.1.0.2 table 100",
        ],
    );
    // So would the NAT real's replies, which XDP translates back.
    exec(&nat, &["ethtool", "-K", "e0", "tx", "off"]);
    let rules = "add table inet xlbtest\n\
        add chain inet xlbtest watch { type filter hook forward priority 0 ; }\n\
        add rule inet xlbtest watch ip saddr 198.51.100.10 iifname \"r-lb\" counter\n\
        add rule inet xlbtest watch ip saddr 198.51.100.10 iifname { \"r-real1\", \"r-real2\" } oifname \"r-c\" counter\n\
        add rule inet xlbtest watch ip saddr 198.51.100.12 iifname \"r-lb\" oifname \"r-c\" counter\n";
    nft(&router, rules);

    serve(&real1, 80, "real1");
    serve(&real2, 80, "real2");
    serve6(&real1, VIP6_PORT, "real1");
    serve6(&real2, VIP6_PORT, "real2");
    serve(&nat, 8080, "nat");

    let (mut lb_agent, lb_socket) =
        start_agent(&site, "lb", &["--interface", "mgmt0", "--lb-interface", "l0", "--metrics-addr", METRICS]);
    let (_real1_agent, real1_socket) =
        start_agent(&site, "real1", &["--interface", "e0", "--lb-decap-interface", "e0"]);
    let (_real2_agent, real2_socket) =
        start_agent(&site, "real2", &["--interface", "e0", "--lb-decap-interface", "e0"]);

    let config = std::env::temp_dir().join(format!("{}.yaml", site.prefix));
    std::fs::write(
        &config,
        format!(
            "apiVersion: weir.dev/v1alpha1\nkind: XdpLoadBalancer\nmetadata: {{name: edge}}\nspec:\n  vips:\n  \
             - {{name: web, address: {VIP}, port: 80, protocol: TCP, reals: [{{address: 10.2.1.2}}, {{address: 10.2.2.2}}]}}\n  \
             - {{name: web6, address: \"{VIP6}\", port: {VIP6_PORT}, protocol: TCP, reals: [{{address: \"fd00:21::2\"}}, {{address: \"fd00:22::2\"}}]}}\n  \
             - {{name: tunnel, address: {GUE_VIP}, port: 80, protocol: TCP, forwarding: GUE, reals: [{{address: 10.2.1.2}}, {{address: 10.2.2.2}}]}}\n  \
             - {{name: legacy, address: {NAT_VIP}, port: 80, protocol: TCP, forwarding: NAT, reals: [{{address: 10.2.3.2, port: 8080}}]}}\n"
        ),
    )
    .expect("config");
    site.dirs.push(config.clone());
    weir_ok(&["apply", "-f", &config.to_string_lossy(), "--socket", &lb_socket.to_string_lossy()]);

    // Simulation: the VIP, the real and why, and the packet that leaves.
    let simulated = weir_ok(&[
        "lb",
        "simulate",
        "--client",
        "192.0.2.2:40000",
        "--vip",
        &format!("{VIP}:80"),
        "--socket",
        &lb_socket.to_string_lossy(),
    ]);
    assert!(simulated.contains("VIP      web"), "{simulated}");
    assert!(simulated.contains("a SYN opens a connection and takes the ring: slot "), "{simulated}");
    assert!(simulated.contains("verdict  XDP_TX") && simulated.contains("out      IPIP 4in4 172.16."), "{simulated}");
    let real = simulated.lines().find_map(|l| l.strip_prefix("  real     ")).expect("a real").to_string();
    assert!(simulated.contains(&format!("-> {real}")), "the packet leaves for the real named: {simulated}");
    let nat = weir_ok(&[
        "lb",
        "simulate",
        "--client",
        "192.0.2.2:40000",
        "--vip",
        &format!("{NAT_VIP}:80"),
        "--established",
        "--socket",
        &lb_socket.to_string_lossy(),
    ]);
    assert!(
        nat.contains("real     10.2.3.2:8080")
            && nat.contains("an LRU miss")
            && nat.contains("TCP 192.0.2.2:40000 -> 10.2.3.2:8080"),
        "{nat}"
    );

    // Every real serves; each client connection is a new flow with its own port.
    let (done, seen, answers) = every_real_answers(&site, VIP, 2, 8);
    assert!(
        done,
        "both reals answered through the VIP: {seen:?} in {answers} answers\n{}",
        diagnose(&site, &[&lb_socket, &real1_socket, &real2_socket])
    );
    // DSR: every reply came from a real straight to the client; none crossed the load balancer.
    let counts = router_counts(&site);
    assert_eq!(counts[0], 0, "no reply from the VIP came through the load balancer: {counts:?}");
    assert!(counts[1] >= 8 * 3, "replies went real -> client directly: {counts:?}");
    for socket in [&real1_socket, &real2_socket] {
        let status = lb_status(socket);
        assert!(status["decapsulated"]["packets"].as_u64().expect("count") > 0, "{status}");
    }
    let status = lb_status(&lb_socket);
    let web = &status["vips"][0];
    assert!(web["packets"].as_u64().expect("packets") >= 8 * 3, "{status}");
    assert!(web["reals"].as_array().expect("reals").iter().all(|r| r["packets"].as_u64() > Some(0)), "{status}");

    // IPv6: 6in6 to the reals' IPv6 addresses.
    let vip6: SocketAddr = format!("[{VIP6}]:{VIP6_PORT}").parse().expect("addr");
    let mut over_v6 = std::collections::BTreeSet::new();
    assert!(
        eventually(Duration::from_secs(30), || {
            over_v6.extend(ask_at(&site, vip6));
            over_v6.len() == 2
        }),
        "both reals answered through the IPv6 VIP: {over_v6:?}"
    );

    // GUE: the same reals, reached through UDP to 6080.
    let mut over_gue = std::collections::BTreeSet::new();
    assert!(
        eventually(Duration::from_secs(30), || {
            over_gue.extend(ask(&site, GUE_VIP));
            over_gue.len() == 2
        }),
        "both reals answered through the GUE VIP: {over_gue:?}"
    );

    // The same counters as Prometheus metrics.
    let metrics = weir_host::netns::run_in(&site.ns("lb"), || {
        let mut stream = TcpStream::connect(METRICS)?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut body = String::new();
        stream.read_to_string(&mut body)?;
        std::io::Result::Ok(body)
    })
    .expect("netns")
    .expect("scrape");
    assert!(metric_sum(&metrics, "weir_lb_vip_packets_total{node=\"lb\",vip=\"web\"}") >= 8 * 3, "{metrics}");
    assert!(metric_sum(&metrics, "weir_lb_real_packets_total{node=\"lb\",real=\"10.2.1.2\"}") > 0, "{metrics}");
    assert!(metric_sum(&metrics, "weir_lb_packets_total{node=\"lb\",event=\"lru_hit\"}") > 0, "{metrics}");

    // NAT mode: the real that cannot decapsulate answers as the VIP, through the load balancer.
    assert_eq!(
        ask(&site, NAT_VIP).as_deref(),
        Some("nat"),
        "{}",
        diagnose(&site, &[&lb_socket, &real1_socket, &real2_socket])
    );
    assert!(router_counts(&site)[2] > 0, "the NAT real's replies left the load balancer as the VIP");
    assert!(lb_status(&lb_socket)["counters"]["nat_reply"]["packets"].as_u64() > Some(0));

    // Health: real2 stops serving the VIP; its probe (encapsulated like the
    // traffic) fails, it leaves the ring, and every new client reaches real1.
    let real_health = |address: &str| -> Option<bool> {
        let status = lb_status(&lb_socket);
        let reals = status["vips"][0]["reals"].as_array()?.clone();
        reals.iter().find(|r| r["address"] == address)?["healthy"].as_bool()
    };
    assert!(eventually(Duration::from_secs(20), || real_health("10.2.2.2") == Some(true)), "real2 probed healthy");
    sh(&real2, &[&format!("addr del {VIP}/32 dev lo")]);
    assert!(
        eventually(Duration::from_secs(20), || real_health("10.2.2.2") == Some(false)),
        "real2 failed its probe: {}",
        lb_status(&lb_socket)
    );
    assert_eq!(real_health("10.2.1.2"), Some(true));
    for _ in 0..10 {
        assert_eq!(ask(&site, VIP).as_deref(), Some("real1"), "only the healthy real takes new connections");
    }
    sh(&real2, &[&format!("addr add {VIP}/32 dev lo")]);
    assert!(eventually(Duration::from_secs(20), || real_health("10.2.2.2") == Some(true)), "real2 back");

    // The agent killed with SIGKILL: forwarding goes on as it was.
    lb_agent.0.kill().expect("SIGKILL");
    let _ = lb_agent.0.wait();
    let mut after = std::collections::BTreeSet::new();
    assert!(
        eventually(Duration::from_secs(20), || {
            if let Some(who) = ask(&site, VIP) {
                after.insert(who);
            }
            after.len() == 2
        }),
        "both reals still answer with the agent dead: {after:?}"
    );
    // A restarted agent adopts the kernel's tables and its applied configuration.
    let (_lb_agent, lb_socket) = start_agent(&site, "lb", &["--interface", "mgmt0", "--lb-interface", "l0"]);
    let status = lb_status(&lb_socket);
    assert_eq!(status["vips"].as_array().map(Vec::len), Some(4), "{status}");
    assert!(status["vips"][0]["packets"].as_u64().expect("packets") >= 8 * 3, "counters carried over: {status}");
    assert_eq!(ask(&site, NAT_VIP).as_deref(), Some("nat"));
}
