//! `weir filter`'s command line against a real lab agent: simulating a
//! capture, what apply prints, and arguments that begin with '-'.

mod common;

use common::*;
use weir_packet::Packet;

fn simulate_json(lab: &TestLab, pcap: &std::path::Path) -> serde_json::Value {
    let out = weir_ok(&[
        "filter",
        "simulate",
        "--lab",
        &lab.name,
        "--node",
        "node-a",
        "--pcap",
        &pcap.to_string_lossy(),
        "-o",
        "json",
    ]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Every packet of a capture is simulated, each named with the rule that
/// decided it, through one load of the datapath copy.
#[test]
fn simulate_judges_every_packet_of_a_pcap_through_one_load() {
    let Some(lab) = TestLab::for_test("simulate_judges_every_packet_of_a_pcap_through_one_load", true) else {
        return;
    };
    let add = |args: &[&str]| {
        let mut all = vec!["filter", "add"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--lab", lab.name.as_str()]);
        weir_ok(&all)
    };
    add(&["dns-qr", "--expr", "udp dst port 53 and udp[10] & 0x80 != 0", "--action", "drop"]);
    add(&["resolver", "--priority", "5", "--src", "10.53.0.1", "--proto", "udp", "--dport", "53", "--action", "pass"]);
    add(&["watch-ping", "--proto", "icmp", "--icmp-type", "8", "--action", "audit"]);
    add(&["no-ssh", "--proto", "tcp", "--dport", "22", "--action", "drop"]);

    let response = [0, 1, 0x81, 0x80];
    let frames = [
        Packet::eth().ipv4([10, 1, 1, 1], [10, 0, 0, 53]).udp(1000, 53).payload(&response).build(),
        Packet::eth().ipv4([10, 53, 0, 1], [10, 0, 0, 53]).udp(1000, 53).payload(&response).build(),
        Packet::eth().ipv4([10, 1, 1, 1], [10, 0, 0, 2]).icmp(8, 0).build(),
        Packet::eth().ipv4([10, 1, 1, 1], [10, 0, 0, 2]).tcp(40000, 22, 0x02).build(),
        Packet::eth().ipv4([10, 1, 1, 1], [10, 0, 0, 53]).udp(1000, 53).payload(&[0, 1, 1, 0]).build(),
        Packet::eth().ipv4([10, 1, 1, 1], [10, 0, 0, 53]).udp(1000, 53).payload(&response).build(),
    ];
    let expected = [
        ("XDP_DROP", Some("dns-qr"), Some("drop")),
        ("XDP_PASS", Some("resolver"), Some("pass")),
        ("XDP_PASS", Some("watch-ping"), Some("audit")),
        ("XDP_DROP", Some("no-ssh"), Some("drop")),
        ("XDP_PASS", None, None),
        // The same rule again after packets decided by others and by none.
        ("XDP_DROP", Some("dns-qr"), Some("drop")),
    ];
    let pcap = std::env::temp_dir().join(format!("{}.sim.pcap", lab.name));
    let mut file = weir_packet::pcap::file_header(65535);
    for frame in &frames {
        file.extend(weir_packet::pcap::record(0, frame, frame.len() as u32));
    }
    std::fs::write(&pcap, &file).expect("write pcap");

    let report = simulate_json(&lab, &pcap);
    let packets = report["packets"].as_array().expect("packets");
    assert_eq!(packets.len(), frames.len(), "every packet of the capture is simulated: {report}");
    for (i, (packet, (verdict, rule, action))) in packets.iter().zip(expected).enumerate() {
        assert_eq!(packet["index"], i + 1, "{packet}");
        assert_eq!(packet["verdict"], verdict, "packet {}: {packet}", i + 1);
        assert_eq!(packet["rule"].as_str(), rule, "packet {}: {packet}", i + 1);
        assert_eq!(packet["action"].as_str(), action, "packet {}: {packet}", i + 1);
        assert_eq!(packet["length"], frames[i].len(), "{packet}");
        let protocol = ["udp", "udp", "icmp", "tcp", "udp", "udp"][i];
        assert!(packet["summary"].as_str().is_some_and(|s| s.starts_with(&format!("{protocol} 10."))), "{packet}");
    }
    // One copy of the datapath judged them all: the kernel gave every
    // packet's program the same id (a load per packet would give new ids).
    let ids: std::collections::BTreeSet<u64> =
        packets.iter().map(|p| p["programId"].as_u64().expect("a program id")).collect();
    assert_eq!(ids.len(), 1, "one load for all packets: {ids:?}");
    assert_ne!(ids.first(), Some(&0));

    let table =
        weir_ok(&["filter", "simulate", "--lab", &lab.name, "--node", "node-a", "--pcap", &pcap.to_string_lossy()]);
    assert!(table.contains("6 packets through 1 load of the datapath copy"), "{table}");
    assert!(table.lines().any(|l| l.contains("watch-ping") && l.contains("audit") && l.contains("icmp")), "{table}");

    // A runt frame is reported as such, and the others are still judged.
    let mut file = weir_packet::pcap::file_header(65535);
    file.extend(weir_packet::pcap::record(0, &[0u8; 10], 10));
    file.extend(weir_packet::pcap::record(0, &frames[3], frames[3].len() as u32));
    std::fs::write(&pcap, &file).expect("write pcap");
    let out = weir(&[
        "filter",
        "simulate",
        "--lab",
        &lab.name,
        "--node",
        "node-a",
        "--pcap",
        &pcap.to_string_lossy(),
        "-o",
        "json",
    ]);
    assert!(!out.status.success(), "a packet that could not be simulated fails the command");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        report["packets"][0]["error"].as_str().is_some_and(|e| e.contains("shorter than an Ethernet header")),
        "{report}"
    );
    assert_eq!(report["packets"][1]["rule"], "no-ssh", "{report}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 2 packets could not be simulated"));
    let _ = std::fs::remove_file(pcap);
}

/// `--length -100` is a range with an empty minimum, not a flag; a value
/// that is wrong is named as wrong, with no hint to pass it after `--`.
#[test]
fn values_beginning_with_a_hyphen_are_values() {
    let Some(lab) = TestLab::for_test("values_beginning_with_a_hyphen_are_values", true) else {
        return;
    };
    let target = ["--lab", lab.name.as_str(), "--node", "node-a"];
    weir_ok(
        &[&["filter", "add", "short-udp", "--proto", "udp", "--length", "-100", "--action", "drop"][..], &target]
            .concat(),
    );
    weir_ok(
        &[&["filter", "add", "low-ttl", "--proto", "tcp", "--ttl", "-3", "--action", "drop"][..], &target].concat(),
    );
    let verdict = |frame: Vec<u8>| {
        let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
        let out = weir_ok(&[&["filter", "simulate", "--hex", hex.as_str(), "-o", "json"][..], &target].concat());
        let report: serde_json::Value = serde_json::from_str(&out).expect("json");
        (report["packets"][0]["verdict"].as_str().unwrap_or_default().to_string(), report["packets"][0]["rule"].clone())
    };
    let udp = |payload: usize| Packet::eth().ipv4([10, 1, 1, 1], [10, 0, 0, 2]).udp(1, 9).payload(&vec![0; payload]);
    assert_eq!(verdict(udp(10).build()), ("XDP_DROP".into(), "short-udp".into()), "a frame of at most 100 bytes");
    assert_eq!(verdict(udp(200).build()), ("XDP_PASS".into(), serde_json::Value::Null), "a longer one");
    let tcp = |ttl: u8| Packet::eth().ipv4([10, 1, 1, 1], [10, 0, 0, 2]).ttl(ttl).tcp(1, 80, 0x02).build();
    assert_eq!(verdict(tcp(2)), ("XDP_DROP".into(), "low-ttl".into()));
    assert_eq!(verdict(tcp(64)), ("XDP_PASS".into(), serde_json::Value::Null));

    for (args, needle) in [
        (&["--priority", "-5"][..], "invalid value '-5' for '--priority"),
        (&["--icmp-type", "-1"][..], "invalid value '-1' for '--icmp-type"),
        (&["--proto", "udp", "--sport", "-5"][..], "--sport: \"-5\" is not a port"),
        (&["--proto", "udp", "--length", "-1x"][..], "--length: \"1x\" is not a number"),
    ] {
        let out = weir(&[&["filter", "add", "bad"][..], args, &["--action", "drop"], &target].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("use '--"), "no hint to pass the value after --: {stderr}");
    }
    let names: Vec<String> =
        serde_json::from_str::<serde_json::Value>(&weir_ok(&[&["filter", "list", "-o", "json"][..], &target].concat()))
            .expect("json")[0]["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .map(|r| r["name"].as_str().unwrap_or_default().to_string())
            .collect();
    assert_eq!(names, ["short-udp", "low-ttl"], "nothing of the refused commands was added");
}

/// libpcap compiles `protochain` into a loop; the refusal says so, before
/// any agent is asked.
#[test]
fn a_looping_expression_is_refused_naming_protochain() {
    let socket = std::env::temp_dir().join(weir_host::testing::unique_name("no-agent"));
    let out = weir(&[
        "filter",
        "add",
        "chain",
        "--expr",
        "ip6 protochain 6",
        "--action",
        "drop",
        "--socket",
        &socket.to_string_lossy(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("expression: \"ip6 protochain 6\": the expression needs a loop (a backward jump)"),
        "{stderr}"
    );
    assert!(stderr.contains("does not support") && stderr.contains("`protochain`"), "{stderr}");
    assert!(!stderr.contains("leaves expression"), "{stderr}");
}

fn filter_policy(name: &str, rules: impl IntoIterator<Item = String>) -> String {
    let mut text =
        format!("apiVersion: weir.dev/v1alpha1\nkind: FilterPolicy\nmetadata: {{name: {name}}}\nspec:\n  rules:\n");
    for rule in rules {
        text.push_str(&format!("  - {rule}\n"));
    }
    text
}

/// `weir filter apply` says how many rules were added, changed and
/// removed, naming a few of each (`-v`: all); a changed rule is changed.
#[test]
fn apply_reports_changed_rules_as_changed_and_a_bounded_summary() {
    let Some(lab) = TestLab::for_test("apply_reports_changed_rules_as_changed_and_a_bounded_summary", true) else {
        return;
    };
    let path = std::env::temp_dir().join(format!("{}.filter.yaml", lab.name));
    let apply = |policy: &str, extra: &[&str]| {
        std::fs::write(&path, policy).expect("policy file");
        let file = path.to_string_lossy().into_owned();
        let args =
            [&["filter", "apply", "-f", file.as_str(), "--lab", lab.name.as_str(), "--node", "node-a"][..], extra];
        weir_ok(&args.concat())
    };
    let rule = |name: &str, port: u16| {
        format!("{{name: {name}, match: {{protocol: udp, destinationPort: {port}}}, action: drop}}")
    };
    let out = apply(&filter_policy("small", [rule("a", 7), rule("b", 8), rule("c", 9)]), &[]);
    assert!(out.contains("node-a: 3 added (a, b, c), 0 changed, 0 removed, 0 unchanged (3 rules;"), "{out}");
    let out = apply(&filter_policy("small", [rule("a", 7), rule("b", 18), rule("c", 9)]), &[]);
    assert!(out.contains("node-a: 0 added, 1 changed (b), 0 removed, 2 unchanged (3 rules;"), "{out}");
    let out = apply(&filter_policy("small", [rule("a", 7), rule("d", 10)]), &[]);
    assert!(out.contains("1 added (d), 0 changed, 2 removed (b, c), 1 unchanged"), "{out}");

    // 10,000 rules: a bounded line, not every name.
    let source = |i: u32, last: u8| {
        let at = std::net::Ipv4Addr::from(0xc633_0000 + i); // 198.51.0.0/16: never sent from
        format!("{{name: r{i}, match: {{source: {at}/32}}, action: {}}}", if last == 0 { "drop" } else { "audit" })
    };
    let many = |changed_below: u32| filter_policy("many", (0..10_000).map(|i| source(i, u8::from(i < changed_below))));
    let out = apply(&many(0), &[]);
    assert!(
        out.contains("10000 added (r0, r1, r2, r3, r4, and 9995 more), 0 changed, 0 removed, 2 unchanged"),
        "{out}"
    );
    assert!(out.contains("-v lists every name") && out.contains("10002 rules;"), "{out}");
    assert!(out.len() < 400, "{} bytes printed for 10,000 rules: {out}", out.len());
    let out = apply(&many(10), &["-v"]);
    let names: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    assert!(out.contains(&format!("0 added, 10 changed ({}), 0 removed, 9992 unchanged", names.join(", "))), "{out}");
    assert!(!out.contains("more"), "{out}");
    let _ = std::fs::remove_file(path);
}
