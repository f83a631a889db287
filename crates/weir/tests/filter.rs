//! `weir filter` in the lab: real packets, a crafted packet of death from a
//! raw socket, updates under load, restarts and bad input.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use weir_packet::Packet;
use weir_proto::agent::v1::{self as pb, filter_update_request::Mode};

fn mac_of(netns: &str, ifname: &str) -> [u8; 6] {
    let out = weir_host::iproute::ip(Some(netns), &["-o", "link", "show", ifname]).expect("ip link");
    let text = out.split("link/ether ").nth(1).and_then(|r| r.split_whitespace().next()).expect("a MAC address");
    let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16).expect("hex")).collect();
    bytes.try_into().expect("six bytes")
}

fn list(lab: &TestLab, node: &str) -> serde_json::Value {
    let all: serde_json::Value =
        serde_json::from_str(&weir_ok(&["filter", "list", "--lab", &lab.name, "--node", node, "-o", "json"]))
            .expect("json");
    all[0].clone()
}

fn packets_of(list: &serde_json::Value, rule: &str) -> u64 {
    list["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| r["name"] == rule)
        .map_or(0, |r| r["packets"].as_u64().unwrap_or(0))
}

#[test]
fn a_packet_of_death_is_dropped_and_counted_while_normal_traffic_passes() {
    let Some(lab) = TestLab::for_test("a_packet_of_death_is_dropped_and_counted_while_normal_traffic_passes", true)
    else {
        return;
    };
    let plan = lab.plan();
    let node = plan.node("node-a").expect("node-a").clone();
    let ext = plan.externals[0].clone();
    weir_ok(&[
        "filter",
        "add",
        "death",
        "--proto",
        "udp",
        "--dport",
        "7",
        "--bytes",
        "l4+8=0xdeadbeef",
        "--action",
        "drop",
        "--lab",
        &lab.name,
    ]);
    weir_ok(&[
        "filter",
        "add",
        "--expr",
        "udp dst port 7 and udp[12:2] = 0xbad1",
        "--action",
        "drop",
        "--lab",
        &lab.name,
    ]);

    let capture = std::env::temp_dir().join(format!("{}.pcap", lab.name));
    let mut trace = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "filter",
            "trace",
            "--lab",
            &lab.name,
            "--node",
            "node-a",
            "--count",
            "2",
            "-w",
            &capture.to_string_lossy(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("trace");
    let listener =
        weir_host::netns::run_in(&node.netns, || UdpSocket::bind((node.address, 7))).expect("netns").expect("bind");
    listener.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    assert!(
        eventually(Duration::from_secs(5), || std::fs::metadata(&capture).is_ok_and(|m| m.len() >= 24)),
        "trace started"
    );

    let frame = |payload: &[u8]| {
        Packet::eth()
            .macs(mac_of(&ext.netns, "eth0"), mac_of(&node.netns, "eth0"))
            .ipv4(ext.address, node.address)
            .udp(4242, 7)
            .payload(payload)
            .build()
    };
    let mut buf = [0u8; 64];
    // Two packets of death, one per rule kind, and a harmless one.
    send_frames(&ext.netns, &[("eth0", frame(&[0xde, 0xad, 0xbe, 0xef]), 1)]);
    send_frames(&ext.netns, &[("eth0", frame(&[0, 0, 0, 0, 0xba, 0xd1]), 1)]);
    send_frames(&ext.netns, &[("eth0", frame(b"hello"), 1)]);
    let got = listener.recv(&mut buf).expect("the harmless datagram arrives");
    assert_eq!(&buf[..got], b"hello");
    assert!(listener.recv(&mut buf).is_err(), "no packet of death reached the socket");

    let counters = list(&lab, "node-a");
    assert_eq!(packets_of(&counters, "death"), 1, "the byte-match rule counted its packet: {counters}");
    let expr_rule =
        counters["rules"].as_array().expect("rules").iter().find(|r| r["name"] != "death").expect("expression rule")
            ["name"]
            .as_str()
            .expect("name")
            .to_string();
    assert_eq!(packets_of(&counters, &expr_rule), 1, "the expression rule counted its packet");
    assert_eq!(counters["drops"]["filter_rule"], 2, "both drops carry the filter_rule reason");

    // Normal traffic keeps flowing: ICMP, TCP and UDP from outside, TCP and UDP from a pod.
    let ping = std::process::Command::new("ip")
        .args(["netns", "exec", &ext.netns, "ping", "-c3", "-i0.2", "-W1", "-q", &node.address.to_string()])
        .output()
        .expect("ping");
    assert!(ping.status.success(), "ping passes: {}", String::from_utf8_lossy(&ping.stdout));
    assert_eq!(tcp_exchange(&ext.netns, &node.netns, node.address, b"tcp passes").expect("tcp"), b"tcp passes");
    assert_eq!(udp_exchange(&ext.netns, &node.netns, node.address, b"udp passes").as_deref(), Some(&b"udp passes"[..]));
    let web = plan.pod("frontend/web").expect("web");
    assert_eq!(tcp_exchange(&web.netns, &node.netns, node.gateway, b"pod tcp").expect("pod tcp"), b"pod tcp");
    assert_eq!(udp_exchange(&web.netns, &node.netns, node.gateway, b"pod udp").as_deref(), Some(&b"pod udp"[..]));

    // The trace saw both drops; tcpdump reads its capture.
    let status = trace.wait().expect("trace ends after --count");
    assert!(status.success());
    let read = std::process::Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(&capture)
        .output()
        .expect("tcpdump (installed by scripts/setup.sh)");
    let lines =
        String::from_utf8_lossy(&read.stdout).lines().filter(|l| l.contains(&format!("{}.7:", node.address))).count();
    assert_eq!(lines, 2, "tcpdump reads both sampled packets: {}", String::from_utf8_lossy(&read.stdout));
    let _ = std::fs::remove_file(capture);
}

#[test]
fn nothing_is_lost_during_a_thousand_rule_updates_and_ten_program_swaps() {
    let Some(lab) = TestLab::for_test("nothing_is_lost_during_a_thousand_rule_updates_and_ten_program_swaps", true)
    else {
        return;
    };
    let plan = lab.plan();
    let node = plan.node("node-a").expect("node-a").clone();
    let ext = plan.externals[0].clone();
    let snmp_retrans = || {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ext.netns, "cat", "/proc/net/snmp"])
            .output()
            .expect("snmp");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
        let (names, values) = (tcp.next().expect("header"), tcp.next().expect("values"));
        let at = names.split_whitespace().position(|n| n == "RetransSegs").expect("RetransSegs");
        values.split_whitespace().nth(at).and_then(|v| v.parse::<u64>().ok()).expect("value")
    };

    // A continuous TCP stream from the external host into node-a.
    let listener =
        weir_host::netns::run_in(&node.netns, || TcpListener::bind((node.address, 0))).expect("netns").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let receiver = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut total = 0u64;
        let mut buf = vec![0u8; 65536];
        loop {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n as u64,
            }
        }
    });
    let mut stream = weir_host::netns::run_in(&ext.netns, || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .expect("netns")
        .expect("connect");
    let stop = Arc::new(AtomicBool::new(false));
    let stop_sender = stop.clone();
    let sender = std::thread::spawn(move || {
        let chunk = vec![7u8; 16384];
        let mut sent = 0u64;
        while !stop_sender.load(Ordering::Relaxed) {
            stream.write_all(&chunk).expect("write");
            sent += chunk.len() as u64;
            std::thread::sleep(Duration::from_micros(200));
        }
        sent
    });
    let retrans_before = snmp_retrans();
    // Every counter of a dropped packet along the path: both veth ends, and the datapath's drops by reason.
    let dropped = || {
        let link = |ns: &str| -> u64 {
            let json = weir_host::iproute::ip(Some(ns), &["-s", "-j", "link", "show", "eth0"]).expect("ip -s link");
            let v: serde_json::Value = serde_json::from_str(&json).expect("json");
            let stats = &v[0]["stats64"];
            ["rx", "tx"]
                .iter()
                .map(|d| {
                    stats[d]["dropped"].as_u64().unwrap_or(0)
                        + stats[d]["missed"].as_u64().unwrap_or(0)
                        + stats[d]["errors"].as_u64().unwrap_or(0)
                })
                .sum()
        };
        let datapath: u64 =
            list(&lab, "node-a")["drops"].as_object().expect("drops").values().map(|v| v.as_u64().unwrap_or(0)).sum();
        link(&ext.netns) + link(&node.netns) + datapath
    };
    let dropped_before = dropped();
    // A ping flood alongside: one echo every 2 ms for the whole run.
    let ping = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ext.netns,
            "ping",
            "-q",
            "-i",
            "0.002",
            "-c",
            "2500",
            "-W",
            "2",
            &node.address.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ping");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (mut apply_ns, mut swap_ns): (Vec<u64>, Vec<u64>) = runtime.block_on(async {
        let client: weir_proto::agent::v1::filter_client::FilterClient<_> =
            weir_agent::client::connect(node.agent.socket.clone()).await.expect("agent");
        let mut timings = Vec::new();
        let mut swaps = Vec::new();
        let update = |mode: Mode, rules_json: String, delete: Vec<String>| {
            let request = pb::FilterUpdateRequest { mode: mode.into(), rules_json, delete, origin: "test".into() };
            let mut client = client.clone();
            async move { client.filter_update(request).await.expect("update").into_inner().apply_ns }
        };
        for i in 0..500u32 {
            let rule = format!(r#"[{{"name":"churn-{i}","match":{{"source":"198.51.{}.{}/32","protocol":"udp","destinationPort":{}}},"action":"drop"}}]"#, i / 250, i % 250, 1000 + i);
            timings.push(update(Mode::Add, rule, Vec::new()).await);
            timings.push(update(Mode::Delete, String::new(), vec![format!("churn-{i}")]).await);
            if i % 50 == 0 {
                // Add then remove an expression rule: two swaps of the XDP entry program.
                swaps.push(update(Mode::Add, r#"[{"name":"swap","expression":"udp dst port 9999","action":"drop"}]"#.into(), Vec::new()).await);
                swaps.push(update(Mode::Delete, String::new(), vec!["swap".into()]).await);
            }
        }
        drop(client);
        (timings, swaps)
    });

    let ping = ping.wait_with_output().expect("ping");
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().expect("sender");
    let received = receiver.join().expect("receiver");
    let retrans = snmp_retrans() - retrans_before;
    let summary = String::from_utf8_lossy(&ping.stdout);
    assert!(summary.contains("2500 packets transmitted, 2500 received"), "no echo lost: {summary}");
    assert_eq!(received, sent, "every byte of the TCP stream arrived");
    assert_eq!(dropped(), dropped_before, "no packet was dropped by the datapath or either veth");
    apply_ns.sort_unstable();
    let pct = |p: f64| apply_ns[((apply_ns.len() as f64 - 1.0) * p) as usize] as f64 / 1e6;
    swap_ns.sort_unstable();
    eprintln!(
        "{} rule updates: time to take effect p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; {} program swaps (compile, verify, bpf_link_update): median {:.2} ms, max {:.2} ms; {} TCP bytes, {} retransmitted segments (spurious under load); ping: {}",
        apply_ns.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
        swap_ns.len(),
        swap_ns[swap_ns.len() / 2] as f64 / 1e6,
        swap_ns.last().copied().unwrap_or(0) as f64 / 1e6,
        sent,
        retrans,
        summary.lines().rev().nth(1).unwrap_or_default()
    );
}

#[test]
fn rules_survive_an_agent_crash_and_a_lost_bpffs_and_bad_input_changes_nothing() {
    let Some(lab) =
        TestLab::for_test("rules_survive_an_agent_crash_and_a_lost_bpffs_and_bad_input_changes_nothing", true)
    else {
        return;
    };
    let plan = lab.plan();
    let node = plan.node("node-a").expect("node-a").clone();
    let ext = plan.externals[0].clone();
    let policy = std::env::temp_dir().join(format!("{}.filter.yaml", lab.name));
    std::fs::write(
        &policy,
        "apiVersion: weir.dev/v1alpha1\nkind: FilterPolicy\nmetadata: {name: guard}\nspec:\n  rules:\n  - {name: no-ping, match: {protocol: icmp, icmp: {type: 8}}, action: drop}\n  - {name: watch-udp, match: {protocol: udp}, action: audit}\n",
    )
    .expect("write");
    weir_ok(&["filter", "apply", "-f", &policy.to_string_lossy(), "--lab", &lab.name]);
    let pings = || {
        std::process::Command::new("ip")
            .args(["netns", "exec", &ext.netns, "ping", "-c1", "-W1", "-q", &node.address.to_string()])
            .output()
            .expect("ping")
            .status
            .success()
    };
    assert!(!pings(), "the policy drops echo requests");

    // Bad input is refused, naming the field, and nothing changes.
    let before = list(&lab, "node-a")["rules"].clone();
    let refused = |args: &[&str], needle: &str| {
        let out = weir(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(needle),
            "{args:?} should fail mentioning {needle:?}: {stderr}"
        );
    };
    refused(&["filter", "add", "bad", "--src", "10.0.0.0/33", "--action", "drop", "--lab", &lab.name], "--src");
    refused(
        &["filter", "add", "bad", "--dport", "53", "--action", "drop", "--lab", &lab.name],
        "match.destinationPort: ports need protocol tcp or udp",
    );
    refused(
        &["filter", "add", "bad", "--expr", "udp dst prot 53", "--action", "drop", "--lab", &lab.name],
        "expression",
    );
    refused(&["filter", "add", "bad", "--proto", "udp", "--action", "rate-limit", "--lab", &lab.name], "rateLimit");
    refused(&["filter", "del", "nope", "--lab", &lab.name], "no rule named \"nope\"");
    let bad_policy = policy.with_extension("bad.yaml");
    std::fs::write(&bad_policy, "apiVersion: weir.dev/v1alpha1\nkind: FilterPolicy\nmetadata: {name: guard}\nspec:\n  rules:\n  - {name: x, match: {sauce: 10.0.0.0/8}, action: drop}\n").expect("write");
    refused(
        &["filter", "apply", "-f", &bad_policy.to_string_lossy(), "--lab", &lab.name],
        "spec.rules[0].match.sauce: unknown field",
    );
    assert_eq!(list(&lab, "node-a")["rules"], before, "nothing changed");
    assert!(!pings(), "still enforced");

    // SIGKILL: the kernel keeps enforcing; the restarted agent keeps the rules and their counts.
    let dropped_before = packets_of(&list(&lab, "node-a"), "no-ping");
    let pid = weir_lab::runtime::agent_pid(&node).expect("agent");
    weir_host::process::kill(pid, libc::SIGKILL);
    assert!(weir_host::process::wait_gone(&[pid], Duration::from_secs(2)).is_empty());
    assert!(!pings(), "enforced while the agent is dead");
    weir_ok(&["lab", "up", "-f", &lab.spec_path.to_string_lossy()]);
    let after = list(&lab, "node-a");
    assert_eq!(after["rules"].as_array().map(Vec::len), Some(2));
    assert!(packets_of(&after, "no-ping") > dropped_before, "counting went on across the crash");

    // A reboot empties bpffs: the agent rebuilds the rules from its state directory.
    let pid = weir_lab::runtime::agent_pid(&node).expect("agent");
    weir_host::process::kill(pid, libc::SIGKILL);
    assert!(weir_host::process::wait_gone(&[pid], Duration::from_secs(2)).is_empty());
    let roots = weir_lab::runtime::Roots::discover().expect("roots");
    std::fs::remove_dir_all(roots.bpffs.join(&node.agent.pin_dir)).expect("lose the pins");
    // The last reference to each link is gone; the kernel detaches it shortly after.
    assert!(eventually(Duration::from_secs(5), pings), "with the pins gone nothing filters");
    weir_ok(&["lab", "up", "-f", &lab.spec_path.to_string_lossy()]);
    assert!(!pings(), "the rules are back after the 'reboot'");
    let _ = std::fs::remove_file(policy);
    let _ = std::fs::remove_file(bad_policy);
}

#[test]
fn simulate_names_the_deciding_rule_for_hex_fields_and_pcap_input() {
    let Some(lab) = TestLab::for_test("simulate_names_the_deciding_rule_for_hex_fields_and_pcap_input", true) else {
        return;
    };
    weir_ok(&[
        "filter",
        "add",
        "dns-qr",
        "--expr",
        "udp dst port 53 and udp[10] & 0x80 != 0",
        "--action",
        "drop",
        "--lab",
        &lab.name,
    ]);
    weir_ok(&[
        "filter",
        "add",
        "allow-resolver",
        "--priority",
        "5",
        "--src",
        "10.53.0.1",
        "--proto",
        "udp",
        "--dport",
        "53",
        "--action",
        "pass",
        "--lab",
        &lab.name,
    ]);
    let sim = |args: &[&str]| {
        let mut all = vec!["filter", "simulate", "--lab", lab.name.as_str(), "--node", "node-a"];
        all.extend_from_slice(args);
        weir_ok(&all)
    };
    let out = sim(&["--packet", "ipv4 src=10.1.1.1 dst=10.0.0.53 udp dport=53 payload=0x000181800001"]);
    assert!(out.contains("XDP_DROP by rule dns-qr"), "{out}");
    let out = sim(&["--packet", "ipv4 src=10.53.0.1 dst=10.0.0.53 udp dport=53 payload=0x000181800001"]);
    assert!(out.contains("XDP_PASS by rule allow-resolver"), "{out}");
    let frame = Packet::eth().ipv4([10, 1, 1, 1], [10, 0, 0, 53]).udp(1, 53).payload(&[0, 1, 0x81, 0x80]).build();
    let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    assert!(sim(&["--hex", &hex]).contains("XDP_DROP by rule dns-qr"));
    let pcap = std::env::temp_dir().join(format!("{}.sim.pcap", lab.name));
    let mut file = weir_packet::pcap::file_header(65535);
    file.extend(weir_packet::pcap::record(0, &frame, frame.len() as u32));
    std::fs::write(&pcap, file).expect("write pcap");
    assert!(sim(&["--pcap", &pcap.to_string_lossy()]).contains("XDP_DROP by rule dns-qr"));
    let quiet = sim(&["--packet", "ipv4 udp dport=53 payload=0x00010100"]);
    assert!(quiet.contains("XDP_PASS (no rule matched"), "{quiet}");
    let counters = list(&lab, "node-a");
    assert_eq!(packets_of(&counters, "dns-qr"), 0, "simulation counts nothing live");
    let _ = std::fs::remove_file(pcap);
}

#[test]
fn between_pods_normal_traffic_passes_and_a_packet_of_death_is_dropped_at_the_pods_veth() {
    let Some(lab) =
        TestLab::for_test("between_pods_normal_traffic_passes_and_a_packet_of_death_is_dropped_at_the_pods_veth", true)
    else {
        return;
    };
    let plan = lab.plan();
    let node = plan.node("node-b").expect("node-b").clone();
    let api = plan.pod("backend/api").expect("api").clone();
    let db = plan.pod("backend/db").expect("db").clone();
    let roots = weir_lab::runtime::Roots::discover().expect("roots");
    let pins = weir_bpf::datapath::PinLayout::new(roots.bpffs.join(&node.agent.pin_dir));
    let pods_udp = || {
        weir_bpf::datapath::read_traffic(&pins).expect("traffic").ingress
            [weir_bpf::api::traffic_class::IPV4_UDP as usize]
            .packets
    };
    let xdp_on = |veth: &str| {
        let out = std::process::Command::new("ip")
            .args(["-n", &node.netns, "-d", "link", "show", "dev", veth])
            .output()
            .expect("ip link");
        String::from_utf8_lossy(&out.stdout).contains("xdp")
    };
    // No filter rule yet: pods' veths carry no XDP (no generic XDP on the pod
    // path); what the pod sends is counted at tc, and pods still talk.
    assert!(!xdp_on(&api.host_interface), "no XDP on a pod's veth while the filter has no rules");
    let before = pods_udp();
    assert_eq!(udp_exchange(&api.netns, &db.netns, db.ip, b"no rules yet").as_deref(), Some(&b"no rules yet"[..]));
    assert!(pods_udp() > before, "a pod's UDP is counted at tc ingress while its veth has no XDP");
    // The lab's default routing (each node's kernel forwards) carries pod to pod.
    weir_ok(&[
        "filter",
        "add",
        "pod-death",
        "--interface",
        &api.host_interface,
        "--proto",
        "udp",
        "--dport",
        "7",
        "--bytes",
        "l4+8=0xdeadbeef",
        "--action",
        "drop",
        "--lab",
        &lab.name,
        "--node",
        "node-b",
    ]);

    let ping = lab.exec("backend/api", &["ping", "-c3", "-i0.2", "-W1", "-q", &db.ip.to_string()]);
    assert!(ping.status.success(), "ping between pods passes: {}", String::from_utf8_lossy(&ping.stdout));
    assert_eq!(tcp_exchange(&api.netns, &db.netns, db.ip, b"pod to pod tcp").expect("tcp"), b"pod to pod tcp");
    assert_eq!(udp_exchange(&api.netns, &db.netns, db.ip, b"pod to pod udp").as_deref(), Some(&b"pod to pod udp"[..]));

    let listener = weir_host::netns::run_in(&db.netns, || UdpSocket::bind((db.ip, 7))).expect("netns").expect("bind");
    listener.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    let frame = |payload: &[u8]| {
        Packet::eth()
            .macs(mac_of(&api.netns, "eth0"), mac_of(&node.netns, &api.host_interface))
            .ipv4(api.ip, db.ip)
            .udp(4242, 7)
            .payload(payload)
            .build()
    };
    send_frames(&api.netns, &[("eth0", frame(&[0xde, 0xad, 0xbe, 0xef]), 1)]);
    send_frames(&api.netns, &[("eth0", frame(b"fine"), 1)]);
    let mut buf = [0u8; 64];
    let got = listener.recv(&mut buf).expect("the harmless datagram is forwarded");
    assert_eq!(&buf[..got], b"fine");
    assert!(listener.recv(&mut buf).is_err(), "the packet of death never reached the other pod");
    assert_eq!(packets_of(&list(&lab, "node-b"), "pod-death"), 1, "dropped and counted at the pod's veth");
    assert!(xdp_on(&api.host_interface) && xdp_on(&db.host_interface), "with a rule, pods' veths carry the filter");

    // The last rule goes: so does XDP on pods' veths; traffic still flows.
    weir_ok(&["filter", "del", "pod-death", "--lab", &lab.name, "--node", "node-b"]);
    assert!(!xdp_on(&api.host_interface), "XDP leaves pods' veths with the filter's last rule");
    drop(listener);
    assert_eq!(tcp_exchange(&api.netns, &db.netns, db.ip, b"after the rule").expect("tcp"), b"after the rule");
}

/// The lab's fabric is a Linux bridge: a tagged frame crossing it reaches the
/// node with its tag held by the kernel (the bridge port took it out of the
/// frame), as rx VLAN offload does. Each rule must still judge it as libpcap
/// judges the frame on the wire.
#[test]
fn tagged_frames_over_a_bridge_are_judged_as_libpcap_judges_them_on_the_wire() {
    let Some(lab) =
        TestLab::for_test("tagged_frames_over_a_bridge_are_judged_as_libpcap_judges_them_on_the_wire", true)
    else {
        return;
    };
    let plan = lab.plan();
    let node = plan.node("node-a").expect("node-a").clone();
    let ext = plan.externals[0].clone();
    let (src_mac, dst_mac) = (mac_of(&ext.netns, "eth0"), mac_of(&node.netns, "eth0"));
    let eth = |tagged: bool| {
        let frame = Packet::eth().macs(src_mac, dst_mac);
        if tagged {
            frame.vlan(100)
        } else {
            frame
        }
    };
    let v4 = |tagged: bool, payload: usize, ttl: u8| {
        eth(tagged).ipv4(ext.address, node.address).ttl(ttl).udp(4000, 4001).payload(&vec![7u8; payload]).build()
    };
    let v6 = |tagged: bool| {
        eth(tagged)
            .ipv6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], [0x2001, 0xdb8, 0, 0, 0, 0, 0, 2])
            .udp(4000, 4001)
            .payload(&[7; 8])
            .build()
    };
    // (the frame on the wire, description). Untagged, the IPv4 ones are 50
    // and 98 bytes: the tag makes the second 102, past `less 100`.
    let mut frames = Vec::new();
    for tagged in [true, false] {
        let how = if tagged { "tagged" } else { "untagged" };
        frames.push((v4(tagged, 8, 64), format!("{how} small IPv4")));
        frames.push((v4(tagged, 56, 3), format!("{how} 98-byte IPv4 with TTL 3")));
        frames.push((v6(tagged), format!("{how} IPv6")));
    }
    assert_eq!(frames[4].0.len(), 98);
    // Frame i is sent 2^i times: a rule's counter tells exactly which frames it matched.
    let batch: Vec<(&str, Vec<u8>, usize)> =
        frames.iter().enumerate().map(|(i, (wire, _))| ("eth0", wire.clone(), 1 << i)).collect();
    let marker = Packet::eth().macs(src_mac, dst_mac).ipv4(ext.address, node.address).udp(4000, 9999).build();
    let lab_name = lab.name.clone();
    let target = ["--lab", lab_name.as_str(), "--node", "node-a"];
    weir_ok(&[&["filter", "add", "marker", "--proto", "udp", "--dport", "9999", "--priority", "1", "--action", "audit"][..], &target[..]].concat());

    // Each expression also names the test's port: neighbour discovery and
    // the like cross the fabric too. libpcap reads a `vlan` as moving what
    // follows 4 bytes on, as it does for the first half alone.
    let own = |expr: &str| format!("({expr}) and udp dst port 4001");
    let host = format!("host {}", node.address);
    // (rule name, how it is added, the libpcap expression that says the same)
    let exprs = ["vlan", "vlan 100", host.as_str(), "ip6", "less 100", "ip[8] < 5"];
    let names = ["vlan", "vlan-100", "host", "ip6", "less-100", "ttl-below-5"];
    let mut cases: Vec<(&str, Vec<String>, String)> =
        exprs.iter().zip(names).map(|(e, n)| (n, vec!["--expr".to_string(), own(e)], own(e))).collect();
    // A field rule weighs the wire length too (a tagged frame's own port is found past its tag).
    cases.push((
        "field-length",
        ["--length", "100-", "--proto", "udp", "--dport", "4001"].map(String::from).to_vec(),
        "greater 100 and (udp dst port 4001 or (vlan and udp dst port 4001))".into(),
    ));
    for (round, (name, how, pcap)) in cases.iter().enumerate() {
        let how: Vec<&str> = how.iter().map(String::as_str).collect();
        weir_ok(&[&["filter", "add", name][..], &how, &["--action", "audit"], &target[..]].concat());
        send_frames(&ext.netns, &batch);
        send_frames(&ext.netns, &[("eth0", marker.clone(), 1)]);
        assert!(
            eventually(Duration::from_secs(10), || packets_of(&list(&lab, "node-a"), "marker") == round as u64 + 1),
            "the marker of round {round} arrived"
        );
        let classic = weir_filter::pcap::compile(pcap).expect("libpcap compiles");
        let expected: u64 = frames
            .iter()
            .enumerate()
            .filter(|(_, (wire, _))| weir_filter::pcap::matches(&classic, wire))
            .map(|(i, _)| 1u64 << i)
            .sum();
        let mut got = 0;
        let agreed = eventually(Duration::from_secs(10), || {
            got = packets_of(&list(&lab, "node-a"), name);
            got == expected
        });
        let describe = |mask: u64| -> Vec<&str> {
            frames.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, f)| f.1.as_str()).collect()
        };
        assert!(
            agreed,
            "rule {name} ({pcap}): libpcap matches {:?} on the wire; Weir matched {:?}",
            describe(expected),
            describe(got)
        );
        weir_ok(&[&["filter", "del", name][..], &target[..]].concat());
    }
}

/// `weir filter apply` returns once the kernel holds the rules: a packet of
/// death sent the moment it returns is dropped, and the time it prints is
/// the whole round trip.
#[test]
fn apply_returns_once_the_kernel_holds_every_rule() {
    let Some(lab) = TestLab::for_test("apply_returns_once_the_kernel_holds_every_rule", true) else {
        return;
    };
    let plan = lab.plan();
    let node = plan.node("node-a").expect("node-a").clone();
    let ext = plan.externals[0].clone();
    let mut policy =
        String::from("apiVersion: weir.dev/v1alpha1\nkind: FilterPolicy\nmetadata: {name: many}\nspec:\n  rules:\n");
    for i in 0..3000u32 {
        let source = std::net::Ipv4Addr::from(0xc633_0000 + i); // 198.51.0.0/16: never sent from
        policy.push_str(&format!("  - {{name: r{i}, match: {{source: {source}/32}}, action: drop}}\n"));
    }
    policy.push_str("  - {name: death, match: {protocol: udp, destinationPort: 7, bytes: [{base: l4, offset: 8, value: \"0xdeadbeef\"}]}, action: drop}\n");
    let path = std::env::temp_dir().join(format!("{}.filter.yaml", lab.name));
    std::fs::write(&path, &policy).expect("policy file");
    let listener =
        weir_host::netns::run_in(&node.netns, || UdpSocket::bind((node.address, 7))).expect("netns").expect("bind");
    listener.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");

    let out = weir_ok(&["filter", "apply", "-f", &path.to_string_lossy(), "--lab", &lab.name, "--node", "node-a"]);
    let frame = |payload: &[u8]| {
        Packet::eth()
            .macs(mac_of(&ext.netns, "eth0"), mac_of(&node.netns, "eth0"))
            .ipv4(ext.address, node.address)
            .udp(4242, 7)
            .payload(payload)
            .build()
    };
    // No waiting: the rules must already be in the kernel.
    send_frames(&ext.netns, &[("eth0", frame(&[0xde, 0xad, 0xbe, 0xef]), 1)]);
    send_frames(&ext.netns, &[("eth0", frame(b"hello"), 1)]);
    let mut buf = [0u8; 64];
    let got = listener.recv(&mut buf).expect("the harmless datagram arrives");
    assert_eq!(&buf[..got], b"hello", "the packet of death sent right after apply returned was dropped");
    assert!(out.contains("3001 rules; in the kernel"), "the time printed is end to end: {out}");
    let counters = list(&lab, "node-a");
    assert_eq!(counters["rules"].as_array().expect("rules").len(), 3001);
    assert_eq!(packets_of(&counters, "death"), 1);
    let _ = std::fs::remove_file(path);
}
