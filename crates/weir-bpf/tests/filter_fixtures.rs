//! The packet filter through BPF_PROG_TEST_RUN: every match kind and every
//! action, IPv4 and IPv6, truncated and malformed packets, and updates.

use weir_bpf::filter::FilterMaps;
use weir_bpf::testrun::{self, XDP_DROP, XDP_PASS};
use weir_filter::{plan::plan, Applied, FilterPolicy};
use weir_packet::{Mangle, Packet, TCP_ACK, TCP_SYN};

const POLICY: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: FilterPolicy
metadata: {name: fixtures}
spec:
  rules:
  - {name: v4-cidr, match: {source: 192.0.2.0/24}, action: drop}
  - {name: v6-cidr-dst, match: {destination: "2001:db8:dead::/48"}, action: drop}
  - {name: dns-port, match: {protocol: udp, destinationPort: 53, source: 10.0.0.0/8}, action: drop}
  - {name: port-range, match: {protocol: tcp, destinationPort: 8000-8099}, action: drop}
  - {name: syn-only, match: {protocol: tcp, destinationPort: 22, tcpFlags: {mask: [syn, ack], value: [syn]}}, action: drop}
  - {name: icmp-echo, match: {protocol: icmp, icmp: {type: 8, code: 0}, destination: 10.9.9.9/32}, action: drop}
  - {name: big, match: {protocol: udp, destinationPort: 9000, length: {min: 500}}, action: drop}
  - {name: fragments, match: {fragment: true, destination: 10.7.0.0/16}, action: drop}
  - {name: options, match: {ipOptions: true, destination: 10.6.0.0/16}, action: drop}
  - {name: low-ttl, match: {ttl: {max: 2}, destination: 10.5.0.0/16}, action: drop}
  - {name: dns-qr, match: {protocol: udp, destinationPort: 5353, bytes: [{base: l4, offset: 10, value: "0x80", mask: "0x80"}]}, action: drop}
  - {name: l3-bytes, match: {destination: 10.4.0.0/16, bytes: [{base: l3, offset: 1, value: "0xb8"}]}, action: drop}
  - {name: on-lo, match: {interface: lo, destination: 10.3.0.0/16}, action: drop}
  - {name: allow-one, priority: 10, match: {source: 192.0.2.7/32}, action: pass}
  - {name: limited, match: {protocol: udp, destinationPort: 7000}, action: rateLimit, rateLimit: {packetsPerSecond: 1, burst: 2}}
  - {name: watched, match: {protocol: tcp, destinationPort: 443}, action: audit}
"#;

/// (what it proves, packet, verdict, deciding rule)
fn table() -> Vec<(&'static str, Vec<u8>, u32, Option<&'static str>)> {
    let ok = [10, 1, 1, 1];
    vec![
        (
            "a source in a dropped /24",
            Packet::eth().ipv4([192, 0, 2, 9], ok).udp(1, 2).build(),
            XDP_DROP,
            Some("v4-cidr"),
        ),
        (
            "a lower priority pass carves an exception",
            Packet::eth().ipv4([192, 0, 2, 7], ok).udp(1, 2).build(),
            XDP_PASS,
            Some("allow-one"),
        ),
        (
            "an IPv6 destination prefix",
            Packet::eth()
                .ipv6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], [0x2001, 0xdb8, 0xdead, 1, 0, 0, 0, 1])
                .tcp(1, 2, TCP_SYN)
                .build(),
            XDP_DROP,
            Some("v6-cidr-dst"),
        ),
        (
            "outside the IPv6 prefix",
            Packet::eth()
                .ipv6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1], [0x2001, 0xdb8, 0xbeef, 1, 0, 0, 0, 1])
                .tcp(1, 2, TCP_SYN)
                .build(),
            XDP_PASS,
            None,
        ),
        (
            "CIDR and port together",
            Packet::eth().ipv4([10, 2, 3, 4], ok).udp(5000, 53).build(),
            XDP_DROP,
            Some("dns-port"),
        ),
        ("right port, wrong source", Packet::eth().ipv4([11, 2, 3, 4], ok).udp(5000, 53).build(), XDP_PASS, None),
        (
            "right port, wrong protocol",
            Packet::eth().ipv4([10, 2, 3, 4], ok).tcp(5000, 53, TCP_SYN).build(),
            XDP_PASS,
            None,
        ),
        (
            "a port inside a range",
            Packet::eth().ipv4(ok, ok).tcp(1, 8050, TCP_ACK).build(),
            XDP_DROP,
            Some("port-range"),
        ),
        ("a port past a range", Packet::eth().ipv4(ok, ok).tcp(1, 8100, TCP_ACK).build(), XDP_PASS, None),
        ("SYN without ACK", Packet::eth().ipv4(ok, ok).tcp(1, 22, TCP_SYN).build(), XDP_DROP, Some("syn-only")),
        ("SYN with ACK", Packet::eth().ipv4(ok, ok).tcp(1, 22, TCP_SYN | TCP_ACK).build(), XDP_PASS, None),
        ("ICMP echo request", Packet::eth().ipv4(ok, [10, 9, 9, 9]).icmp(8, 0).build(), XDP_DROP, Some("icmp-echo")),
        ("ICMP echo reply", Packet::eth().ipv4(ok, [10, 9, 9, 9]).icmp(0, 0).build(), XDP_PASS, None),
        ("a long frame", Packet::eth().ipv4(ok, ok).udp(1, 9000).payload(&[0; 600]).build(), XDP_DROP, Some("big")),
        ("a short frame", Packet::eth().ipv4(ok, ok).udp(1, 9000).payload(&[0; 60]).build(), XDP_PASS, None),
        (
            "a later fragment",
            Packet::eth().ipv4(ok, [10, 7, 0, 1]).ipv4_fragment(10, false).raw(17).payload(&[0; 8]).build(),
            XDP_DROP,
            Some("fragments"),
        ),
        ("an unfragmented packet", Packet::eth().ipv4(ok, [10, 7, 0, 1]).udp(1, 2).build(), XDP_PASS, None),
        (
            "IPv4 options",
            Packet::eth().ipv4(ok, [10, 6, 0, 1]).ipv4_options(&[0x94, 4, 0, 0]).udp(1, 2).build(),
            XDP_DROP,
            Some("options"),
        ),
        ("no IPv4 options", Packet::eth().ipv4(ok, [10, 6, 0, 1]).udp(1, 2).build(), XDP_PASS, None),
        ("a TTL of 1", Packet::eth().ipv4(ok, [10, 5, 0, 1]).ttl(1).udp(1, 2).build(), XDP_DROP, Some("low-ttl")),
        ("a TTL of 64", Packet::eth().ipv4(ok, [10, 5, 0, 1]).udp(1, 2).build(), XDP_PASS, None),
        (
            "a DNS response bit at l4+10",
            Packet::eth().ipv4(ok, ok).udp(1, 5353).payload(&[0, 0, 0x81, 0]).build(),
            XDP_DROP,
            Some("dns-qr"),
        ),
        ("a DNS query", Packet::eth().ipv4(ok, ok).udp(1, 5353).payload(&[0, 0, 0x01, 0]).build(), XDP_PASS, None),
        ("l4 bytes beyond the packet never match", Packet::eth().ipv4(ok, ok).udp(1, 5353).build(), XDP_PASS, None),
        (
            "a TOS byte at l3+1",
            Packet::eth().ipv4(ok, [10, 4, 0, 1]).udp(1, 2).build().with_byte(15, 0xb8),
            XDP_DROP,
            Some("l3-bytes"),
        ),
        ("the ingress interface", Packet::eth().ipv4(ok, [10, 3, 0, 1]).udp(1, 2).build(), XDP_DROP, Some("on-lo")),
        ("audit passes and counts", Packet::eth().ipv4(ok, ok).tcp(1, 443, TCP_SYN).build(), XDP_PASS, Some("watched")),
        (
            "a VLAN tag is parsed through",
            Packet::eth().vlan(5).ipv4([192, 0, 2, 1], ok).udp(1, 2).build(),
            XDP_DROP,
            Some("v4-cidr"),
        ),
        (
            "a truncated UDP header matches no port rule",
            Packet::eth().ipv4([10, 2, 3, 4], ok).udp(5000, 53).build().truncate_to(14 + 20 + 4),
            XDP_PASS,
            None,
        ),
        (
            "a truncated packet still matches on its source",
            Packet::eth().ipv4([192, 0, 2, 9], ok).udp(1, 2).build().truncate_to(14 + 20 + 4),
            XDP_DROP,
            Some("v4-cidr"),
        ),
        (
            "a malformed IPv4 header matches nothing",
            Packet::eth().ipv4([192, 0, 2, 9], ok).udp(1, 2).build().with_byte(14, 0x43),
            XDP_PASS,
            None,
        ),
        ("ARP passes", Packet::eth().raw(0x0806).payload(&[0; 28]).build(), XDP_PASS, None),
    ]
}

fn deciding(maps: &FilterMaps, applied: &Applied, before: &[u64]) -> Option<String> {
    let names: Vec<&String> = applied.rules.keys().collect();
    let slots: Vec<u32> = names.iter().map(|n| applied.rules[*n].slot).collect();
    let after: Vec<u64> = maps.counters(&slots).expect("counters").iter().map(|c| c.packets).collect();
    let hits: Vec<&String> =
        names.iter().zip(before.iter().zip(&after)).filter(|(_, (b, a))| a > b).map(|(n, _)| *n).collect();
    assert!(hits.len() <= 1, "one packet counted by several rules: {hits:?}");
    hits.first().map(|n| n.to_string())
}

fn counts(maps: &FilterMaps, applied: &Applied) -> Vec<u64> {
    let slots: Vec<u32> = applied.rules.values().map(|r| r.slot).collect();
    maps.counters(&slots).expect("counters").iter().map(|c| c.packets).collect()
}

#[test]
fn every_match_kind_and_action_decides_as_written() {
    if !weir_host::testing::privileged("every_match_kind_and_action_decides_as_written") {
        return;
    }
    let policy = FilterPolicy::parse(POLICY).expect("policy parses");
    testrun::with_node_datapath(|skel| {
        let maps = FilterMaps::from_skel(skel).expect("maps");
        let planned = plan(&Applied::default(), &policy.spec.rules, |name| (name == "lo").then_some(1)).expect("plan");
        maps.execute(&planned.ops).expect("apply");
        let applied = planned.result;
        let mut failures = Vec::new();
        for (what, packet, verdict, rule) in table() {
            let before = counts(&maps, &applied);
            let got = testrun::run_once(&skel.progs.weir_node_ingress, &packet).expect("test run");
            let decided = deciding(&maps, &applied, &before);
            if got.verdict != verdict || decided.as_deref() != rule {
                failures.push(format!(
                    "{what}: got {} by {decided:?}, want {} by {rule:?}",
                    testrun::verdict_name(got.verdict),
                    testrun::verdict_name(verdict)
                ));
            }
            if got.output != packet {
                failures.push(format!("{what}: the packet was modified"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));

        // Rate limit: a burst of 2, then drops counted by reason.
        let limited = Packet::eth().ipv4([10, 8, 0, 1], [10, 8, 0, 2]).udp(1, 7000).build();
        let verdicts: Vec<u32> =
            (0..4).map(|_| testrun::run_once(&skel.progs.weir_node_ingress, &limited).expect("run").verdict).collect();
        assert_eq!(verdicts, [XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP], "burst of two, then over the rate");
        let drops = maps.drops().expect("drops");
        assert_eq!(
            drops[weir_bpf::api::drop_reason::RATE_LIMITED as usize].packets,
            2,
            "rate-limit drops carry their reason"
        );
        assert!(drops[weir_bpf::api::drop_reason::FILTER_RULE as usize].packets > 0, "rule drops carry their reason");
    })
    .expect("load node datapath");
}

#[test]
fn updates_flip_atomically_and_removed_rules_stop_matching() {
    if !weir_host::testing::privileged("updates_flip_atomically_and_removed_rules_stop_matching") {
        return;
    }
    let policy = FilterPolicy::parse(POLICY).expect("policy parses");
    testrun::with_node_datapath(|skel| {
        let maps = FilterMaps::from_skel(skel).expect("maps");
        let dns = Packet::eth().ipv4([10, 2, 3, 4], [10, 1, 1, 1]).udp(5000, 53).build();
        let run = |p: &[u8]| testrun::run_once(&skel.progs.weir_node_ingress, p).expect("run").verdict;
        let first = plan(&Applied::default(), &policy.spec.rules, |_| Some(1)).expect("plan");
        maps.execute(&first.ops).expect("apply");
        assert_eq!(run(&dns), XDP_DROP);
        let without: Vec<_> = policy.spec.rules.iter().filter(|r| r.name != "dns-port").cloned().collect();
        let second = plan(&first.result, &without, |_| Some(1)).expect("plan");
        assert_eq!((second.removed.len(), second.added.len()), (1, 0));
        // Stop right before the flip: the old generation still decides.
        let flip = second
            .ops
            .iter()
            .position(
                |op| matches!(op, weir_filter::plan::Op::Config { active, .. } if *active == second.result.active),
            )
            .expect("flip");
        maps.execute(&second.ops[..flip]).expect("prepare");
        assert_eq!(run(&dns), XDP_DROP, "prepared but not flipped: nothing changes yet");
        maps.execute(&second.ops[flip..]).expect("flip and settle");
        assert_eq!(run(&dns), XDP_PASS, "after the flip the rule is gone");
        assert_eq!(maps.active_generation().expect("config"), second.result.active);
        // Back again: the rule returns in a fresh slot with fresh counters.
        let third = plan(&second.result, &policy.spec.rules, |_| Some(1)).expect("plan");
        maps.execute(&third.ops).expect("apply");
        assert_eq!(run(&dns), XDP_DROP);
        assert_eq!(
            maps.counters(&[third.result.rules["dns-port"].slot]).expect("counters")[0].packets,
            1,
            "a re-added rule counts from zero"
        );
    })
    .expect("load node datapath");
}

#[test]
fn tcpdump_expressions_compile_into_the_datapath_and_weigh_against_map_rules() {
    if !weir_host::testing::privileged("tcpdump_expressions_compile_into_the_datapath_and_weigh_against_map_rules") {
        return;
    }
    let policy = FilterPolicy::parse(
        r#"
apiVersion: weir.dev/v1alpha1
kind: FilterPolicy
metadata: {name: expressions}
spec:
  rules:
  - {name: dns-responses, expression: "udp dst port 53 and udp[10] & 0x80 != 0", action: drop}
  - {name: big-syn, expression: "tcp[tcpflags] & tcp-syn != 0 and len > 200", action: drop}
  - {name: ipv6-hop-limit, expression: "ip6 and ip6[7] < 2", action: drop}
  - {name: vlan-frames, expression: "vlan 42", action: drop}
  - {name: trusted-dns, priority: 5, match: {source: 10.53.0.0/16, protocol: udp, destinationPort: 53}, action: pass}
"#,
    )
    .expect("policy parses");
    testrun::with_node_datapath(|skel| {
        let maps = FilterMaps::from_skel(skel).expect("maps");
        let planned = plan(&Applied::default(), &policy.spec.rules, |_| None).expect("plan");
        maps.execute(&planned.ops).expect("apply");
        let applied = planned.result;
        let classic: Vec<(u32, Vec<weir_filter::pcap::ClassicInsn>)> = applied
            .expressions()
            .iter()
            .map(|(r, e)| (r.slot, weir_filter::pcap::compile(e).expect("compiles")))
            .collect();
        let program = weir_filter::expr::generate(&classic, None).expect("translates");
        use std::os::fd::AsFd;
        let fd = weir_bpf::filter::load_expressions(
            &program,
            skel.maps.filter_expr_result.as_fd(),
            skel.maps.filter_progs.as_fd(),
        )
        .expect("the verifier accepts the expression program");
        use libbpf_rs::MapCore;
        skel.maps
            .filter_progs
            .update(
                &0u32.to_ne_bytes(),
                &skel.progs.weir_node_ingress.as_fd().as_raw_fd_i32().to_ne_bytes(),
                libbpf_rs::MapFlags::ANY,
            )
            .expect("tail call slot");

        let dns = |src: [u8; 4], qr: u8| {
            Packet::eth()
                .ipv4(src, [10, 0, 0, 53])
                .udp(4000, 53)
                .payload(&[0, 1, qr, 0, 0, 1, 0, 0, 0, 0, 0, 0])
                .build()
        };
        let cases: Vec<(&str, Vec<u8>, u32, Option<&str>)> = vec![
            ("a DNS response (QR set)", dns([10, 1, 1, 1], 0x81), XDP_DROP, Some("dns-responses")),
            ("a DNS query (QR clear)", dns([10, 1, 1, 1], 0x01), XDP_PASS, None),
            (
                "a DNS response from a trusted resolver: the map rule's lower priority wins",
                dns([10, 53, 0, 1], 0x81),
                XDP_PASS,
                Some("trusted-dns"),
            ),
            (
                "a large SYN",
                Packet::eth().ipv4([10, 1, 1, 1], [10, 2, 2, 2]).tcp(1, 80, TCP_SYN).payload(&[0; 300]).build(),
                XDP_DROP,
                Some("big-syn"),
            ),
            (
                "a small SYN",
                Packet::eth().ipv4([10, 1, 1, 1], [10, 2, 2, 2]).tcp(1, 80, TCP_SYN).build(),
                XDP_PASS,
                None,
            ),
            (
                "IPv6 hop limit 1",
                Packet::eth()
                    .ipv6([0xfd00, 0, 0, 0, 0, 0, 0, 1], [0xfd00, 0, 0, 0, 0, 0, 0, 2])
                    .ttl(1)
                    .udp(1, 2)
                    .build(),
                XDP_DROP,
                Some("ipv6-hop-limit"),
            ),
            (
                "IPv6 hop limit 64",
                Packet::eth().ipv6([0xfd00, 0, 0, 0, 0, 0, 0, 1], [0xfd00, 0, 0, 0, 0, 0, 0, 2]).udp(1, 2).build(),
                XDP_PASS,
                None,
            ),
            (
                "VLAN 42",
                Packet::eth().vlan(42).ipv4([10, 1, 1, 1], [10, 2, 2, 2]).udp(1, 2).build(),
                XDP_DROP,
                Some("vlan-frames"),
            ),
            (
                "a truncated DNS packet never matches the byte test",
                dns([10, 1, 1, 1], 0x81).truncate_to(14 + 20 + 8 + 2),
                XDP_PASS,
                None,
            ),
        ];
        let mut failures = Vec::new();
        for (what, packet, verdict, rule) in cases {
            let before = counts(&maps, &applied);
            let got = weir_bpf::filter::run_program_once(fd.as_fd(), &packet).expect("test run");
            let decided = deciding(&maps, &applied, &before);
            if got != verdict || decided.as_deref() != rule {
                failures.push(format!(
                    "{what}: got {} by {decided:?}, want {} by {rule:?}",
                    testrun::verdict_name(got),
                    testrun::verdict_name(verdict)
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    })
    .expect("load node datapath");
}

trait RawFdI32 {
    fn as_raw_fd_i32(&self) -> i32;
}

impl RawFdI32 for std::os::fd::BorrowedFd<'_> {
    fn as_raw_fd_i32(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.as_raw_fd()
    }
}

const NESTED: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: FilterPolicy
metadata: {name: nested}
spec:
  rules:
  - {name: n16, priority: 500, match: {source: 10.1.0.0/16, protocol: udp}, action: drop}
  - {name: n20, priority: 400, match: {source: 10.1.0.0/20, protocol: udp}, action: pass}
  - {name: n24, priority: 300, match: {source: 10.1.2.0/24, protocol: udp}, action: drop}
  - {name: n28, priority: 200, match: {source: 10.1.2.0/28, protocol: udp}, action: pass}
  - {name: n32, priority: 100, match: {source: 10.1.2.3/32, protocol: udp}, action: drop}
  - {name: v6a, priority: 500, match: {source: "2001:db8::/32", protocol: udp}, action: drop}
  - {name: v6b, priority: 400, match: {source: "2001:db8:1::/48", protocol: udp}, action: pass}
  - {name: v6c, priority: 300, match: {source: "2001:db8:1:2::/64", protocol: udp}, action: drop}
  - {name: web, priority: 600, match: {destination: 10.9.0.0/16, protocol: tcp, destinationPort: 80}, action: drop}
  - {name: n15, priority: 900, match: {source: 10.0.0.0/15, protocol: udp}, action: drop}
"#;

/// Rules over many shapes whose prefixes nest: the shape index (blocks,
/// ports, tries) must leave every shape that could match a packet in play,
/// and a shape's best rank skip only shapes that cannot win, through updates
/// that add a wider prefix above narrower ones and take it away.
#[test]
fn nested_prefixes_over_many_shapes_decide_by_priority_through_updates() {
    if !weir_host::testing::privileged("nested_prefixes_over_many_shapes_decide_by_priority_through_updates") {
        return;
    }
    let policy = FilterPolicy::parse(NESTED).expect("policy parses");
    let v6 = |a: u16, b: u16| [0x2001, 0x0db8, a, b, 0, 0, 0, 1];
    let udp4 = |src: [u8; 4]| Packet::eth().ipv4(src, [10, 0, 0, 1]).udp(4000, 9).build();
    let udp6 = |src: [u16; 8]| Packet::eth().ipv6(src, [0xfd00, 0, 0, 0, 0, 0, 0, 1]).udp(4000, 9).build();
    let web = Packet::eth().ipv4([192, 0, 2, 1], [10, 9, 1, 1]).tcp(4000, 80, TCP_SYN).build();
    let web_other_port = Packet::eth().ipv4([192, 0, 2, 1], [10, 9, 1, 1]).tcp(4000, 81, TCP_SYN).build();
    let nested: Vec<(&str, Vec<u8>, u32, Option<&str>)> = vec![
        ("the /32", udp4([10, 1, 2, 3]), XDP_DROP, Some("n32")),
        ("the /28 around it", udp4([10, 1, 2, 4]), XDP_PASS, Some("n28")),
        ("the /24", udp4([10, 1, 2, 200]), XDP_DROP, Some("n24")),
        ("the /20", udp4([10, 1, 3, 1]), XDP_PASS, Some("n20")),
        // n15's shape comes after n16's and ranks no better: its lookup is skipped.
        ("the /16", udp4([10, 1, 200, 1]), XDP_DROP, Some("n16")),
        ("the /15 alone", udp4([10, 0, 5, 1]), XDP_DROP, Some("n15")),
        ("outside every prefix", udp4([10, 2, 0, 1]), XDP_PASS, None),
        ("IPv6 /64", udp6(v6(1, 2)), XDP_DROP, Some("v6c")),
        ("IPv6 /48", udp6(v6(1, 3)), XDP_PASS, Some("v6b")),
        ("IPv6 /32", udp6(v6(2, 0)), XDP_DROP, Some("v6a")),
        ("IPv6 outside", udp6([0x2001, 0x0db9, 0, 0, 0, 0, 0, 1]), XDP_PASS, None),
        ("a destination prefix and port", web.clone(), XDP_DROP, Some("web")),
        ("the destination on another port", web_other_port.clone(), XDP_PASS, None),
        (
            "a v4 source rule does not take TCP",
            Packet::eth().ipv4([10, 1, 2, 3], [10, 0, 0, 1]).tcp(1, 9, TCP_SYN).build(),
            XDP_PASS,
            None,
        ),
    ];
    // With a /8 of top priority above them all.
    let widened: Vec<(&str, Vec<u8>, u32, Option<&str>)> = nested
        .iter()
        .map(|(what, packet, verdict, rule)| {
            let under_wide =
                packet.len() >= 30 && packet[23] == 17 && packet[12..14] == [0x08, 0x00] && packet[26] == 10;
            if under_wide {
                (*what, packet.clone(), XDP_DROP, Some("wide"))
            } else {
                (*what, packet.clone(), *verdict, *rule)
            }
        })
        .collect();
    testrun::with_node_datapath(|skel| {
        let maps = FilterMaps::from_skel(skel).expect("maps");
        let check = |applied: &Applied, table: &[(&str, Vec<u8>, u32, Option<&str>)], when: &str| {
            let mut failures = Vec::new();
            for (what, packet, verdict, rule) in table {
                let before = counts(&maps, applied);
                let got = testrun::run_once(&skel.progs.weir_node_ingress, packet).expect("test run");
                let decided = deciding(&maps, applied, &before);
                if got.verdict != *verdict || decided.as_deref() != *rule {
                    failures.push(format!(
                        "{when}, {what}: got {} by {decided:?}, want {} by {rule:?}",
                        testrun::verdict_name(got.verdict),
                        testrun::verdict_name(*verdict)
                    ));
                }
            }
            failures
        };
        let first = plan(&Applied::default(), &policy.spec.rules, |_| None).expect("plan");
        assert!(first.result.shapes.len() >= 9, "one shape per prefix length: {:?}", first.result.shapes);
        maps.execute(&first.ops).expect("apply");
        let mut failures = check(&first.result, &nested, "applied");

        let mut wider = policy.spec.rules.clone();
        let wide = FilterPolicy::parse(
            "apiVersion: weir.dev/v1alpha1\nkind: FilterPolicy\nmetadata: {name: w}\nspec:\n  rules:\n  - {name: wide, priority: 1, match: {source: 10.0.0.0/8, protocol: udp}, action: drop}\n",
        )
        .expect("wide rule parses");
        wider.extend(wide.spec.rules);
        let second = plan(&first.result, &wider, |_| None).expect("plan");
        let flip = second
            .ops
            .iter()
            .position(
                |op| matches!(op, weir_filter::plan::Op::Config { active, .. } if *active == second.result.active),
            )
            .expect("flip");
        maps.execute(&second.ops[..flip]).expect("prepare");
        // Counters are read by the names the live generation has.
        failures.extend(check(&first.result, &nested, "wide rule prepared, not flipped"));
        maps.execute(&second.ops[flip..]).expect("flip and settle");
        failures.extend(check(&second.result, &widened, "wide rule live"));

        let third = plan(&second.result, &policy.spec.rules, |_| None).expect("plan");
        maps.execute(&third.ops).expect("apply");
        failures.extend(check(&third.result, &nested, "wide rule removed"));
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    })
    .expect("load node datapath");
}
