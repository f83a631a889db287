//! Fixture tests of the node datapath through BPF_PROG_TEST_RUN: every
//! packet passes unchanged, and each lands in the right counter.

use libbpf_rs::MapCore;
use weir_bpf::api::{drop_reason, traffic_class};
use weir_bpf::datapath::read_counter_array;
use weir_bpf::testrun::{self, Fixture, XDP_PASS};
use weir_packet::{Mangle, Packet, ETH_P_ARP, TCP_SYN};

const A4: [u8; 4] = [10, 244, 0, 2];
const B4: [u8; 4] = [10, 244, 1, 3];
const A6: [u16; 8] = [0xfd00, 0, 0, 0, 0, 0, 0, 2];
const B6: [u16; 8] = [0xfd00, 0, 0, 0, 0, 0, 0, 3];

/// (fixture, traffic class it must be counted in, invalid reason if any)
fn table() -> Vec<(Fixture, u32, Option<u32>)> {
    let ipv4_tcp = Packet::eth().ipv4(A4, B4).tcp(40000, 80, TCP_SYN).build();
    vec![
        (Fixture::unchanged("IPv4 TCP passes", ipv4_tcp.clone(), XDP_PASS), traffic_class::IPV4_TCP, None),
        (
            Fixture::unchanged(
                "IPv4 UDP passes",
                Packet::eth().ipv4(A4, B4).udp(5353, 53).payload(b"q").build(),
                XDP_PASS,
            ),
            traffic_class::IPV4_UDP,
            None,
        ),
        (
            Fixture::unchanged("IPv4 ICMP echo passes", Packet::eth().ipv4(A4, B4).icmp(8, 0).build(), XDP_PASS),
            traffic_class::IPV4_ICMP,
            None,
        ),
        (
            Fixture::unchanged(
                "IPv4 with options passes",
                Packet::eth().ipv4(A4, B4).ipv4_options(&[0x94, 4, 0, 0]).udp(1, 2).build(),
                XDP_PASS,
            ),
            traffic_class::IPV4_UDP,
            None,
        ),
        (
            Fixture::unchanged(
                "a later IPv4 fragment has no L4 header",
                Packet::eth().ipv4(A4, B4).ipv4_fragment(100, false).raw(17).payload(&[0; 4]).build(),
                XDP_PASS,
            ),
            traffic_class::IPV4_OTHER,
            None,
        ),
        (
            Fixture::unchanged("IPv6 TCP passes", Packet::eth().ipv6(A6, B6).tcp(1, 443, TCP_SYN).build(), XDP_PASS),
            traffic_class::IPV6_TCP,
            None,
        ),
        (
            Fixture::unchanged(
                "IPv6 UDP after a fragment header passes",
                Packet::eth().ipv6(A6, B6).ipv6_fragment(0, true).udp(1, 53).build(),
                XDP_PASS,
            ),
            traffic_class::IPV6_UDP,
            None,
        ),
        (
            Fixture::unchanged("ICMPv6 passes", Packet::eth().ipv6(A6, B6).icmp(128, 0).build(), XDP_PASS),
            traffic_class::IPV6_ICMP,
            None,
        ),
        (
            Fixture::unchanged(
                "double-tagged VLAN IPv4 passes",
                Packet::eth().vlan(10).vlan(20).ipv4(A4, B4).udp(1, 2).build(),
                XDP_PASS,
            ),
            traffic_class::IPV4_UDP,
            None,
        ),
        (
            Fixture::unchanged("ARP passes", Packet::eth().raw(ETH_P_ARP).payload(&[0; 28]).build(), XDP_PASS),
            traffic_class::ARP,
            None,
        ),
        (
            Fixture::unchanged(
                "an IPv4 ethertype with no IPv4 header is invalid but passes",
                ipv4_tcp.clone().truncate_to(14),
                XDP_PASS,
            ),
            traffic_class::INVALID,
            Some(drop_reason::TRUNCATED),
        ),
        (
            Fixture::unchanged(
                "a TCP header cut short is invalid",
                ipv4_tcp.clone().truncate_to(14 + 20 + 10),
                XDP_PASS,
            ),
            traffic_class::INVALID,
            Some(drop_reason::TRUNCATED),
        ),
        (
            Fixture::unchanged("an IPv4 IHL below 5 is invalid", ipv4_tcp.clone().with_byte(14, 0x44), XDP_PASS),
            traffic_class::INVALID,
            Some(drop_reason::BAD_IPV4_HEADER),
        ),
        (
            Fixture::unchanged(
                "three VLAN tags are too many",
                Packet::eth().vlan(1).vlan(2).vlan(3).ipv4(A4, B4).udp(1, 2).build(),
                XDP_PASS,
            ),
            traffic_class::INVALID,
            Some(drop_reason::TOO_MANY_VLAN_TAGS),
        ),
        (
            Fixture::unchanged(
                "an IPv6 header cut short is invalid",
                Packet::eth().ipv6(A6, B6).udp(1, 2).build().truncate_to(14 + 30),
                XDP_PASS,
            ),
            traffic_class::INVALID,
            Some(drop_reason::TRUNCATED),
        ),
    ]
}

#[test]
fn node_ingress_passes_every_packet_unchanged_and_counts_it_by_class() {
    if !weir_host::testing::privileged("node_ingress_passes_every_packet_unchanged_and_counts_it_by_class") {
        return;
    }
    let rows = table();
    weir_bpf::testrun::with_node_datapath(|skel| {
        let fixtures: Vec<Fixture> = rows.iter().map(|r| r.0.clone()).collect();
        let failures = testrun::check(&skel.progs.weir_node_ingress, &fixtures).expect("test run");
        assert!(failures.is_empty(), "fixture failures:\n{}", failures.join("\n"));

        let mut want_class = vec![0u64; traffic_class::COUNT as usize];
        let mut want_invalid = vec![0u64; drop_reason::COUNT as usize];
        for (_, class, invalid) in &rows {
            want_class[*class as usize] += 1;
            if let Some(reason) = invalid {
                want_invalid[*reason as usize] += 1;
            }
        }
        let handle = |m: &libbpf_rs::MapMut<'_>| libbpf_rs::MapHandle::try_from(&**m).expect("map handle");
        let got = read_counter_array(&handle(&skel.maps.traffic_ingress), traffic_class::COUNT).expect("read");
        let got_class: Vec<u64> = got.iter().map(|c| c.packets).collect();
        assert_eq!(got_class, want_class, "ingress packets by traffic class");
        let bytes: u64 = got.iter().map(|c| c.bytes).sum();
        assert_eq!(bytes, rows.iter().map(|r| r.0.input.len() as u64).sum::<u64>(), "ingress bytes");
        let invalid = read_counter_array(&handle(&skel.maps.invalid_packets), drop_reason::COUNT).expect("read");
        assert_eq!(invalid.iter().map(|c| c.packets).collect::<Vec<_>>(), want_invalid, "invalid packets by reason");
        let egress = read_counter_array(&handle(&skel.maps.traffic_egress), traffic_class::COUNT).expect("read");
        assert!(egress.iter().all(|c| c.packets == 0), "the XDP program never touches egress counters");
        let _ = skel.maps.traffic_egress.max_entries();
    })
    .expect("load node datapath");
}
