//! The agent: attaches the datapath, survives SIGKILL without disturbing it,
//! adopts its pins on restart, stops cleanly on SIGTERM, serves status and metrics.

mod common;

use std::time::Duration;

use common::*;
use weir_bpf::api::traffic_class;
use weir_bpf::datapath::{read_traffic, PinLayout};

fn status_json(lab: &str, node: &str) -> serde_json::Value {
    serde_json::from_str(&weir_ok(&["status", "--lab", lab, "--node", node, "--sample", "0", "-o", "json"]))
        .expect("status is JSON")
}

fn ids(status: &serde_json::Value, list: &str, key: &str) -> Vec<u64> {
    status[list].as_array().expect("array").iter().map(|v| v[key].as_u64().expect("id")).collect()
}

fn ingress_udp(pins: &PinLayout) -> u64 {
    read_traffic(pins).expect("read pinned counters").ingress[traffic_class::IPV4_UDP as usize].packets
}

#[test]
fn sigkill_leaves_the_datapath_running_and_a_restart_adopts_it() {
    let Some(lab) = TestLab::for_test("sigkill_leaves_the_datapath_running_and_a_restart_adopts_it", true) else {
        return;
    };
    let name = lab.name.clone();
    let plan = lab.plan();
    let node = plan.node("node-a").expect("node-a").clone();
    let internet = lab.netns("ext.internet");
    let roots = weir_lab::runtime::Roots::discover().expect("roots");
    let pins = PinLayout::new(roots.bpffs.join(&node.agent.pin_dir));

    let before = status_json(&name, "node-a");
    assert_eq!(before["health"], "ok", "{before}");
    let attachments = before["attachments"].as_array().expect("attachments");
    let interfaces: std::collections::BTreeSet<&str> =
        attachments.iter().map(|a| a["interface"].as_str().expect("interface")).collect();
    let web = plan.pod("frontend/web").expect("web");
    assert_eq!(
        interfaces,
        ["eth0", web.host_interface.as_str()].into_iter().collect(),
        "the uplink and the pod's veth"
    );
    for a in attachments {
        let want = match (a["hook"].as_str(), a["interface"] == "eth0") {
            (Some("xdp-ingress"), true) => "xdp-native",
            // Native XDP on a pod's veth would turn TSO off in the pod.
            (Some("xdp-ingress"), false) => "xdp-generic",
            _ => "tcx",
        };
        assert_eq!(a["mode"], want, "XDP runs in the veth driver on the uplink, generic on pods, tc through tcx: {a}");
    }

    for _ in 0..5 {
        assert!(udp_exchange(&internet, &node.netns, node.address, b"before").is_some());
    }
    let counted_before = ingress_udp(&pins);
    assert!(counted_before >= 5, "the attached XDP program counts UDP ({counted_before})");

    let pid = weir_lab::runtime::agent_pid(&node).expect("agent running");
    weir_host::process::kill(pid, libc::SIGKILL);
    assert!(weir_host::process::wait_gone(&[pid], Duration::from_secs(2)).is_empty(), "agent died");

    // With no agent alive the kernel keeps running the programs.
    for _ in 0..5 {
        assert!(
            udp_exchange(&internet, &node.netns, node.address, b"while dead").is_some(),
            "traffic flows while the agent is dead"
        );
    }
    let counted_dead = ingress_udp(&pins);
    assert!(
        counted_dead >= counted_before + 5,
        "counting continued with the agent dead: {counted_before} -> {counted_dead}"
    );

    weir_ok(&["lab", "up", "-f", &lab.spec_path.to_string_lossy()]);
    let after = status_json(&name, "node-a");
    assert_eq!(after["restored"], true, "the restart adopted pinned state");
    assert_eq!(after["health"], "ok", "{after}");
    assert_eq!(
        ids(&after, "attachments", "linkId"),
        ids(&before, "attachments", "linkId"),
        "the same links stay attached"
    );
    assert_eq!(ids(&after, "maps", "id"), ids(&before, "maps", "id"), "the same maps are reused");
    assert!(after["attachments"].as_array().expect("attachments").iter().all(|a| a["adopted"] == true));
    assert!(ingress_udp(&pins) >= counted_dead, "counters survive the restart");
}

#[test]
fn sigterm_stops_the_agent_cleanly_and_leaves_the_datapath_attached() {
    let Some(lab) = TestLab::for_test("sigterm_stops_the_agent_cleanly_and_leaves_the_datapath_attached", true) else {
        return;
    };
    let plan = lab.plan();
    let node = plan.node("node-b").expect("node-b").clone();
    let pid = weir_lab::runtime::agent_pid(&node).expect("agent running");
    weir_host::process::kill(pid, libc::SIGTERM);
    assert!(weir_host::process::wait_gone(&[pid], Duration::from_secs(5)).is_empty(), "agent exits on SIGTERM");
    assert!(!node.agent.socket.exists(), "the socket is removed");
    let log = std::fs::read_to_string(&node.agent.log).expect("log");
    assert!(
        log.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "logs are structured JSON lines"
    );
    assert!(log.contains("the datapath stays attached"));
    let link = weir_host::iproute::ip(Some(&node.netns), &["link", "show", "eth0"]).expect("ip link");
    assert!(link.contains("prog/xdp"), "XDP stays attached after SIGTERM: {link}");
    let restarted = weir_ok(&["lab", "up", "-f", &lab.spec_path.to_string_lossy()]);
    assert!(restarted.contains("agents started on: node-b"), "{restarted}");
}

#[test]
fn status_reports_run_statistics_and_metrics_are_served_over_http() {
    let Some(lab) = TestLab::for_test("status_reports_run_statistics_and_metrics_are_served_over_http", true) else {
        return;
    };
    let name = lab.name.clone();
    let plan = lab.plan();
    let node = plan.node("node-a").expect("node-a").clone();
    let socket = std::fs::metadata(&node.agent.socket).expect("socket");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(socket.permissions().mode() & 0o777, 0o600, "the API socket is private to root");

    let web = plan.pod("frontend/web").expect("web");
    assert!(tcp_exchange(&web.netns, &node.netns, node.gateway, b"x").is_ok());
    // Traffic inside the sampling window: run statistics are measured only
    // then. The sender runs until the window has closed, however slowly a
    // loaded machine lets it go.
    let internet = lab.netns("ext.internet");
    let (ns, addr) = (node.netns.clone(), node.address);
    let window_open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sending = window_open.clone();
    let sender = std::thread::spawn(move || {
        while sending.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = udp_exchange(&internet, &ns, addr, b"m");
        }
    });
    let status = weir(&["status", "--lab", &name, "--node", "node-a", "--sample", "800ms", "-o", "json"]);
    window_open.store(false, std::sync::atomic::Ordering::Relaxed);
    sender.join().expect("sender");
    assert!(status.status.success(), "status: {}", String::from_utf8_lossy(&status.stderr));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    assert_eq!(status["statsWindowMs"], 800);
    // The program the uplink's XDP link runs: the node program, or the
    // filter's entry program in front of it, whose runs include the node
    // program's (the kernel counts a tail call in its caller's runs).
    let uplink = status["attachments"]
        .as_array()
        .expect("attachments")
        .iter()
        .find(|a| a["hook"] == "xdp-ingress" && a["interface"] == "eth0")
        .expect("xdp attachment")
        .clone();
    let ingress = status["programs"]
        .as_array()
        .expect("programs")
        .iter()
        .find(|p| p["id"] == uplink["programId"])
        .unwrap_or_else(|| panic!("the uplink's program {uplink} in {}", status["programs"]))
        .clone();
    assert!(
        ingress["runCount"].as_u64().expect("runs") >= 3,
        "kernel run statistics count runs in the window: {ingress}"
    );
    assert!(ingress["runTimeNs"].as_u64().expect("time") > 0);
    let maps = status["maps"].as_array().expect("maps");
    assert!(
        maps.iter().any(|m| m["name"] == "traffic_ingress" && m["inUse"].as_u64() >= Some(1)),
        "map fill is reported: {maps:?}"
    );

    let table = weir_ok(&["status", "--lab", &name, "--node", "node-a"]);
    assert!(table.contains("xdp-native") && table.contains("AVG NS"), "{table}");

    let body = scrape_metrics(&node);
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    let udp_line = body
        .lines()
        .find(|l| {
            l.starts_with("weir_datapath_packets_total{") && l.contains("direction=\"ingress\",class=\"ipv4_udp\"")
        })
        .expect("UDP counter line");
    let value: u64 = udp_line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("value");
    assert!(value >= 3, "{udp_line}");
    assert!(body.contains("weir_bpf_program_runs_total{node=\"node-a\",program=\"weir_node_ingress\"}"));
}

/// A network namespace standing in for a real host, with the agent's pin and
/// state directories; all removed on drop, panic or not.
struct FakeHost(String, Vec<std::path::PathBuf>);

impl Drop for FakeHost {
    fn drop(&mut self) {
        let _ = weir_host::iproute::ip(None, &["netns", "del", &self.0]);
        for dir in &self.1 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn a_host_agent_with_no_flags_serves_the_default_route_interface_and_resumes_from_its_state_dir() {
    if !privileged("a_host_agent_with_no_flags_serves_the_default_route_interface_and_resumes_from_its_state_dir") {
        return;
    }
    let name = unique_name("weirhost");
    let dir = std::env::temp_dir().join(&name);
    let roots = weir_lab::runtime::Roots::discover().expect("roots");
    let pins = roots.bpffs.join("weir").join("tests").join(&name);
    weir_host::iproute::ip(None, &["netns", "add", &name]).expect("netns");
    let host = FakeHost(name.clone(), vec![pins.clone(), dir.clone()]);
    weir_host::iproute::batch(
        Some(&host.0),
        &[
            "link set lo up".into(),
            "link add uplink0 type veth peer name peer0".into(),
            "addr add 192.0.2.10/24 dev uplink0".into(),
            "link set uplink0 up".into(),
            "link set peer0 up".into(),
            "route add default via 192.0.2.1 dev uplink0".into(),
        ],
    )
    .expect("fake host network");
    let socket = dir.join("agent.sock");
    let start_agent = || spawn_agent(&host.0, &pins, &dir, &["--metrics-addr", "off", "--node", "host-1"]);
    let status = || -> serde_json::Value {
        serde_json::from_str(&weir_ok(&[
            "status",
            "--socket",
            &socket.to_string_lossy(),
            "--sample",
            "0",
            "-o",
            "json",
        ]))
        .expect("json")
    };

    let mut agent = start_agent();
    let first = status();
    let interfaces: Vec<&str> = first["attachments"]
        .as_array()
        .expect("attachments")
        .iter()
        .map(|a| a["interface"].as_str().expect("name"))
        .collect();
    assert_eq!(interfaces, ["uplink0"; 3], "no --interface: the default route's interface is served");
    let desired: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state/desired.json")).expect("desired state"))
            .expect("json");
    assert_eq!(desired["interfaces"], serde_json::json!(["uplink0"]), "the choice is kept in the state directory");
    agent.0.kill().expect("SIGKILL");
    let _ = agent.0.wait();

    // With the default route gone, only the state directory knows the interface.
    weir_host::iproute::ip(Some(&host.0), &["route", "del", "default"]).expect("route del");
    let _agent = start_agent();
    let second = status();
    assert_eq!(second["restored"], true);
    assert_eq!(second["attachments"][0]["interface"], "uplink0", "resumed from the state directory");
    assert_eq!(ids(&second, "attachments", "linkId"), ids(&first, "attachments", "linkId"));
}
