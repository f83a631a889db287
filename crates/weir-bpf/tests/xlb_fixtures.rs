//! Fixtures of the XDP load balancer (bpf/progs/xlb.bpf.c) and the real
//! servers' decapsulation (xlb_decap.bpf.c) through BPF_PROG_TEST_RUN:
//! input packet, verdict, exact output packet. The real each packet must
//! reach is what weir-lb's plan predicts from the same flow hash, so these
//! also prove the kernel and `weir lb simulate` agree.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use weir_bpf::api::{drop_reason, xlb_counter};
use weir_bpf::testrun::{self, XDP_DROP, XDP_PASS, XDP_TX};
use weir_bpf::xlb::{self, XlbMaps};
use weir_lb::hash::{rss_word, FlowTuple};
use weir_lb::plan::{self, Plan};
use weir_packet::{Mangle, Packet, ETH_P_ARP, TCP_ACK, TCP_SYN};

mod xlb_common;
use xlb_common::{counter, dropped, outer_source4, outer_source6};

const CLIENT: [u8; 4] = [192, 0, 2, 7];
const CLIENT6: &str = "2001:db8:c::7";
const IN_SRC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const IN_DST: [u8; 6] = [2, 0, 0, 0, 0, 2];
/// TCX_NEXT: the decapsulation hands every packet on to the next program.
const TCX_NEXT: u32 = u32::MAX;

const CONFIG: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: XdpLoadBalancer
metadata: {name: edge}
spec:
  vips:
  - {name: web, address: 198.51.100.10, port: 80, protocol: TCP, reals: [{address: 10.0.0.2}, {address: 10.0.0.3}]}
  - {name: dns, address: 198.51.100.10, port: 53, protocol: UDP, forwarding: GUE, reals: [{address: 10.0.0.4}]}
  - {name: web6, address: "2001:db8::10", port: 80, protocol: TCP, reals: [{address: "2001:db8:1::2"}]}
  - {name: dns6, address: "2001:db8::10", port: 53, protocol: UDP, forwarding: GUE, reals: [{address: "2001:db8:1::4"}]}
  - {name: mixed, address: 198.51.100.11, port: 80, protocol: TCP, reals: [{address: "2001:db8:1::3"}]}
  - {name: nat, address: 198.51.100.12, port: 80, protocol: TCP, forwarding: NAT, reals: [{address: 10.0.0.5, port: 8080}]}
  - name: sticky
    address: 198.51.100.13
    protocol: TCP
    hash: ClientAddress
    reals: [{address: 10.0.0.2}, {address: 10.0.0.3}, {address: 10.0.0.6}, {address: 10.0.0.7}]
  - name: byport
    address: 198.51.100.14
    protocol: TCP
    hash: DestinationPort
    reals: [{address: 10.0.0.2}, {address: 10.0.0.3}, {address: 10.0.0.6}, {address: 10.0.0.7}]
  - name: nolru
    address: 198.51.100.15
    port: 80
    protocol: UDP
    lruBypass: true
    reals: [{address: 10.0.0.2}, {address: 10.0.0.3}]
  - {name: here, address: 198.51.100.16, port: 80, protocol: TCP, local: true}
  - {name: drained, address: 198.51.100.17, port: 80, protocol: TCP, reals: [{address: 10.0.0.2, weight: 0}]}
"#;

fn planned(yaml: &str, previous: Option<&Plan>) -> Plan {
    plan::plan(&weir_lb::spec::parse(yaml).expect("valid configuration"), previous)
}

fn with_lb(work: impl FnOnce(&libbpf_rs::ProgramMut<'_>, &XlbMaps, &Plan)) {
    let plan = planned(CONFIG, None);
    xlb::with_private(|skel, maps| {
        maps.apply(&plan::changes(None, &plan)).expect("plan applied");
        work(&skel.progs.weir_xlb, maps, &plan);
    })
    .expect("xlb loads");
}

fn run(prog: &libbpf_rs::ProgramMut<'_>, input: &[u8]) -> (u32, Vec<u8>) {
    let outcome = testrun::run_once(prog, input).expect("test run");
    (outcome.verdict, outcome.output)
}

fn tuple(client: IpAddr, client_port: u16, vip_port: u16, proto: u8) -> FlowTuple {
    FlowTuple { client, client_port, vip_port, proto }
}

/// The real the plan predicts for a new connection.
fn predicted(plan: &Plan, t: &FlowTuple, vip: IpAddr) -> IpAddr {
    plan.choose(t, vip).and_then(|c| c.real).map(|(_, k)| k.address).expect("a real")
}

fn gue_source_port(t: &FlowTuple) -> u16 {
    0x8000 | (rss_word(t) & 0x7FFF) as u16
}

/// The frame the load balancer sends back out: MACs swapped (no gateway
/// configured), `outer` in front of the client's IP packet.
fn out_frame(outer: Packet) -> Packet {
    outer.macs(IN_DST, IN_SRC)
}

fn v4(addr: IpAddr) -> Ipv4Addr {
    match addr {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) => panic!("{a} is not IPv4"),
    }
}

fn v6(addr: IpAddr) -> Ipv6Addr {
    match addr {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => panic!("{a} is not IPv6"),
    }
}

#[test]
fn ipip_4in4_new_flow_takes_the_ring_and_later_packets_the_lru() {
    with_lb(|prog, maps, plan| {
        let vip: IpAddr = "198.51.100.10".parse().expect("a");
        let t = tuple(CLIENT.into(), 40000, 80, 6);
        let real = v4(predicted(plan, &t, vip));
        let syn = Packet::eth().ipv4(CLIENT, v4(vip)).tcp(40000, 80, TCP_SYN).payload(b"hello").build();
        let want = out_frame(Packet::eth().ipv4(outer_source4(&t), real).ipv4(CLIENT, v4(vip)).tcp(40000, 80, TCP_SYN))
            .payload(b"hello")
            .build();
        let (verdict, out) = run(prog, &syn);
        assert_eq!((verdict, testrun::hex(&out)), (XDP_TX, testrun::hex(&want)), "SYN: 4in4 to {real}");
        assert_eq!((counter(maps, xlb_counter::RING), counter(maps, xlb_counter::LRU_HIT)), (1, 0));

        let ack = Packet::eth().ipv4(CLIENT, v4(vip)).tcp(40000, 80, TCP_ACK).build();
        let want_ack =
            out_frame(Packet::eth().ipv4(outer_source4(&t), real).ipv4(CLIENT, v4(vip)).tcp(40000, 80, TCP_ACK))
                .build();
        assert_eq!(testrun::hex(&run(prog, &ack).1), testrun::hex(&want_ack));
        assert_eq!(counter(maps, xlb_counter::LRU_HIT), 1, "the ACK found the SYN's connection");
        assert_eq!(counter(maps, xlb_counter::RING), 1, "and did not take the ring");

        // An ACK of a connection the LRU never saw: a miss, then the ring.
        let stray = Packet::eth().ipv4(CLIENT, v4(vip)).tcp(40001, 80, TCP_ACK).build();
        assert_eq!(run(prog, &stray).0, XDP_TX);
        assert_eq!((counter(maps, xlb_counter::LRU_MISS), counter(maps, xlb_counter::RING)), (1, 2));
        assert!(maps.connection(CLIENT.into(), 40001, vip, 80, 6).is_some(), "the miss was remembered");

        // Counted per VIP and per real, packets and bytes.
        let web = plan.vips.iter().find(|p| p.vip.name == "web").expect("web");
        let traffic = maps.vip_traffic(web.index).expect("vip traffic");
        assert_eq!(traffic.packets, 3);
        assert_eq!(traffic.bytes, (syn.len() + ack.len() + stray.len()) as u64);
        let real_index = plan.reals.iter().find(|(_, k)| k.address == IpAddr::V4(real)).map(|(i, _)| *i).expect("i");
        assert!(maps.real_traffic(real_index).expect("real traffic").packets >= 2);
    });
}

#[test]
fn established_flows_keep_their_real_when_it_is_drained_and_syns_follow_the_ring() {
    let first = planned(CONFIG, None);
    xlb::with_private(|skel, maps| {
        let prog = &skel.progs.weir_xlb;
        maps.apply(&plan::changes(None, &first)).expect("applied");
        let vip: IpAddr = "198.51.100.10".parse().expect("a");
        let t = tuple(CLIENT.into(), 41000, 80, 6);
        let real = predicted(&first, &t, vip);
        let syn = Packet::eth().ipv4(CLIENT, v4(vip)).tcp(41000, 80, TCP_SYN).build();
        assert_eq!(run(prog, &syn).0, XDP_TX);
        // Drain that real (weight 0): a map update, no reload.
        let drained = CONFIG.replace(&format!("{{address: {real}}}"), &format!("{{address: {real}, weight: 0}}"));
        let second = planned(&drained, Some(&first));
        maps.apply(&plan::changes(Some(&first), &second)).expect("applied");
        let other = predicted(&second, &t, vip);
        assert_ne!(other, real);
        let ack = Packet::eth().ipv4(CLIENT, v4(vip)).tcp(41000, 80, TCP_ACK).build();
        let to = |r: IpAddr, flags| {
            out_frame(Packet::eth().ipv4(outer_source4(&t), v4(r)).ipv4(CLIENT, v4(vip)).tcp(41000, 80, flags)).build()
        };
        assert_eq!(testrun::hex(&run(prog, &ack).1), testrun::hex(&to(real, TCP_ACK)), "established: same real");
        assert_eq!(testrun::hex(&run(prog, &syn).1), testrun::hex(&to(other, TCP_SYN)), "a new SYN: the ring");
    })
    .expect("xlb loads");
}

#[test]
fn a_real_added_rewrites_the_ring_slots_that_moved_and_new_flows_follow_the_plan() {
    let first = planned(CONFIG, None);
    xlb::with_private(|skel, maps| {
        let prog = &skel.progs.weir_xlb;
        maps.apply(&plan::changes(None, &first)).expect("applied");
        let grown = CONFIG.replace("{address: 10.0.0.3}]}", "{address: 10.0.0.3}, {address: 10.0.0.9}]}");
        let second = planned(&grown, Some(&first));
        let delta = plan::changes(Some(&first), &second);
        assert!(delta.rings_written.is_empty() && delta.ring_slots_written.len() == 1, "{delta:?}");
        maps.apply(&delta).expect("applied");
        let vip: IpAddr = "198.51.100.10".parse().expect("a");
        let mut reals = std::collections::BTreeSet::new();
        for port in 42000..42064 {
            let t = tuple(CLIENT.into(), port, 80, 6);
            let real = predicted(&second, &t, vip);
            reals.insert(real);
            let syn = Packet::eth().ipv4(CLIENT, v4(vip)).tcp(port, 80, TCP_SYN).build();
            let out =
                out_frame(Packet::eth().ipv4(outer_source4(&t), v4(real)).ipv4(CLIENT, v4(vip)).tcp(port, 80, TCP_SYN));
            assert_eq!(testrun::hex(&run(prog, &syn).1), testrun::hex(&out.build()), "port {port}");
        }
        assert!(reals.contains(&IpAddr::from([10, 0, 0, 9])), "some of 64 flows reach the new real: {reals:?}");
    })
    .expect("xlb loads");
}

#[test]
fn ipip_6in6_and_4in6() {
    with_lb(|prog, _maps, plan| {
        let client6: Ipv6Addr = CLIENT6.parse().expect("a");
        let vip6: Ipv6Addr = "2001:db8::10".parse().expect("a");
        let t = tuple(client6.into(), 50000, 80, 6);
        let real = v6(predicted(plan, &t, vip6.into()));
        let syn = Packet::eth().ipv6(client6, vip6).tcp(50000, 80, TCP_SYN).payload(b"x").build();
        let want = out_frame(Packet::eth().ipv6(outer_source6(&t), real).ipv6(client6, vip6).tcp(50000, 80, TCP_SYN))
            .payload(b"x")
            .build();
        assert_eq!(testrun::hex(&run(prog, &syn).1), testrun::hex(&want), "6in6");

        let vip: Ipv4Addr = "198.51.100.11".parse().expect("a");
        let t = tuple(CLIENT.into(), 40000, 80, 6);
        let real = v6(predicted(plan, &t, vip.into()));
        let syn = Packet::eth().ipv4(CLIENT, vip).tcp(40000, 80, TCP_SYN).build();
        let want =
            out_frame(Packet::eth().ipv6(outer_source6(&t), real).ipv4(CLIENT, vip).tcp(40000, 80, TCP_SYN)).build();
        let (verdict, out) = run(prog, &syn);
        assert_eq!((verdict, testrun::hex(&out)), (XDP_TX, testrun::hex(&want)), "4in6");
    });
}

/// GUE: outer IP + UDP to 6080 (checksum 0) + the client's IP packet.
#[test]
fn gue_over_ipv4_and_ipv6() {
    with_lb(|prog, _maps, plan| {
        let vip: Ipv4Addr = "198.51.100.10".parse().expect("a");
        let t = tuple(CLIENT.into(), 5353, 53, 17);
        let real = v4(predicted(plan, &t, vip.into()));
        let query = Packet::eth().ipv4(CLIENT, vip).udp(5353, 53).payload(b"query").build();
        let want = out_frame(
            Packet::eth()
                .ipv4(outer_source4(&t), real)
                .udp(gue_source_port(&t), weir_lb::GUE_PORT)
                .ipv4(CLIENT, vip)
                .udp(5353, 53)
                .payload(b"query"),
        )
        .build()
        .with_byte(14 + 20 + 6, 0)
        .with_byte(14 + 20 + 7, 0);
        let (verdict, out) = run(prog, &query);
        assert_eq!((verdict, testrun::hex(&out)), (XDP_TX, testrun::hex(&want)), "GUE over IPv4");

        let client6: Ipv6Addr = CLIENT6.parse().expect("a");
        let vip6: Ipv6Addr = "2001:db8::10".parse().expect("a");
        let t = tuple(client6.into(), 5353, 53, 17);
        let real = v6(predicted(plan, &t, vip6.into()));
        let query = Packet::eth().ipv6(client6, vip6).udp(5353, 53).payload(b"query").build();
        let want = out_frame(
            Packet::eth()
                .ipv6(outer_source6(&t), real)
                .udp(gue_source_port(&t), weir_lb::GUE_PORT)
                .ipv6(client6, vip6)
                .udp(5353, 53)
                .payload(b"query"),
        )
        .build()
        .with_byte(14 + 40 + 6, 0)
        .with_byte(14 + 40 + 7, 0);
        assert_eq!(testrun::hex(&run(prog, &query).1), testrun::hex(&want), "GUE over IPv6");
    });
}

#[test]
fn hash_flags_client_address_only_and_destination_port_only() {
    with_lb(|prog, _maps, plan| {
        let sticky: Ipv4Addr = "198.51.100.13".parse().expect("a");
        let byport: Ipv4Addr = "198.51.100.14".parse().expect("a");
        let send = |vip: Ipv4Addr, client: [u8; 4], sport: u16, dport: u16| {
            let t = tuple(client.into(), sport, dport, 6);
            let real = v4(predicted(plan, &t, vip.into()));
            let syn = Packet::eth().ipv4(client, vip).tcp(sport, dport, TCP_SYN).build();
            let want =
                out_frame(Packet::eth().ipv4(outer_source4(&t), real).ipv4(client, vip).tcp(sport, dport, TCP_SYN))
                    .build();
            assert_eq!(testrun::hex(&run(prog, &syn).1), testrun::hex(&want), "{client:?}:{sport} -> {vip}:{dport}");
            real
        };
        // ClientAddress: every port of a client, one real; clients spread.
        let reals: std::collections::BTreeSet<Ipv4Addr> =
            (0..40).map(|p| send(sticky, CLIENT, 30000 + p, 443)).collect();
        assert_eq!(reals.len(), 1, "one client, one real");
        let spread: std::collections::BTreeSet<Ipv4Addr> =
            (0..40).map(|c| send(sticky, [192, 0, 2, c], 30000, 443)).collect();
        assert!(spread.len() > 1, "clients spread over reals");
        // DestinationPort: every client of a port, one real; ports spread.
        let reals: std::collections::BTreeSet<Ipv4Addr> =
            (0..40).map(|c| send(byport, [192, 0, 2, c], 30000 + u16::from(c), 8443)).collect();
        assert_eq!(reals.len(), 1, "one port, one real");
        let spread: std::collections::BTreeSet<Ipv4Addr> =
            (0..40).map(|p| send(byport, CLIENT, 30000, 8000 + p)).collect();
        assert!(spread.len() > 1, "ports spread over reals");
    });
}

#[test]
fn lru_bypass_takes_the_ring_for_every_packet_and_remembers_nothing() {
    with_lb(|prog, maps, plan| {
        let vip: Ipv4Addr = "198.51.100.15".parse().expect("a");
        let t = tuple(CLIENT.into(), 6000, 80, 17);
        let real = v4(predicted(plan, &t, vip.into()));
        let datagram = Packet::eth().ipv4(CLIENT, vip).udp(6000, 80).payload(b"d").build();
        let want = out_frame(Packet::eth().ipv4(outer_source4(&t), real).ipv4(CLIENT, vip).udp(6000, 80).payload(b"d"))
            .build();
        for _ in 0..3 {
            assert_eq!(testrun::hex(&run(prog, &datagram).1), testrun::hex(&want));
        }
        assert_eq!(counter(maps, xlb_counter::RING), 3);
        assert_eq!(counter(maps, xlb_counter::LRU_HIT) + counter(maps, xlb_counter::LRU_MISS), 0);
        assert_eq!(maps.connection(CLIENT.into(), 6000, vip.into(), 80, 17), None);
    });
}

#[test]
fn nat_mode_rewrites_to_the_real_and_translates_its_replies_back() {
    with_lb(|prog, maps, _plan| {
        let vip: Ipv4Addr = "198.51.100.12".parse().expect("a");
        let real: Ipv4Addr = "10.0.0.5".parse().expect("a");
        let syn = Packet::eth().ipv4(CLIENT, vip).tcp(40000, 80, TCP_SYN).payload(b"GET").build();
        let want = out_frame(Packet::eth().ipv4(CLIENT, real).tcp(40000, 8080, TCP_SYN)).payload(b"GET").build();
        let (verdict, out) = run(prog, &syn);
        assert_eq!((verdict, testrun::hex(&out)), (XDP_TX, testrun::hex(&want)), "forward: destination rewritten");

        let reply = Packet::eth().ipv4(real, CLIENT).tcp(8080, 40000, TCP_SYN | TCP_ACK).payload(b"200").build();
        let want = out_frame(Packet::eth().ipv4(vip, CLIENT).tcp(80, 40000, TCP_SYN | TCP_ACK)).payload(b"200").build();
        let (verdict, out) = run(prog, &reply);
        assert_eq!((verdict, testrun::hex(&out)), (XDP_TX, testrun::hex(&want)), "reply: source is the VIP again");
        assert_eq!(counter(maps, xlb_counter::NAT_REPLY), 1);

        // A packet from the real to another client is no reply: passed as it is.
        let other = Packet::eth().ipv4(real, [192, 0, 2, 99]).tcp(8080, 40000, TCP_ACK).build();
        assert_eq!(run(prog, &other), (XDP_PASS, other.clone()));
    });
}

#[test]
fn local_vips_go_to_the_stack_and_vips_without_weight_drop() {
    with_lb(|prog, maps, _plan| {
        let local = Packet::eth().ipv4(CLIENT, [198, 51, 100, 16]).tcp(40000, 80, TCP_SYN).build();
        assert_eq!(run(prog, &local), (XDP_PASS, local.clone()));
        assert_eq!(counter(maps, xlb_counter::LOCAL), 1);
        let drained = Packet::eth().ipv4(CLIENT, [198, 51, 100, 17]).tcp(40000, 80, TCP_SYN).build();
        assert_eq!(run(prog, &drained).0, XDP_DROP);
        assert_eq!(dropped(maps, drop_reason::XLB_NO_REAL), 1);
    });
}

#[test]
fn fragments_and_options_are_dropped_with_their_reason() {
    with_lb(|prog, maps, _plan| {
        let vip = [198, 51, 100, 10];
        let first = Packet::eth().ipv4(CLIENT, vip).ipv4_fragment(0, true).tcp(40000, 80, TCP_ACK).build();
        let later = Packet::eth().ipv4(CLIENT, vip).ipv4_fragment(8, false).raw(6).payload(&[0; 16]).build();
        let client6: Ipv6Addr = CLIENT6.parse().expect("a");
        let vip6: Ipv6Addr = "2001:db8::10".parse().expect("a");
        let frag6 = Packet::eth().ipv6(client6, vip6).ipv6_fragment(0, true).tcp(40000, 80, TCP_ACK).build();
        for packet in [&first, &later, &frag6] {
            assert_eq!(run(prog, packet).0, XDP_DROP);
        }
        assert_eq!(dropped(maps, drop_reason::XLB_FRAGMENT), 3);
        let options = Packet::eth().ipv4(CLIENT, vip).ipv4_options(&[1, 1, 1, 1]).tcp(40000, 80, TCP_SYN).build();
        assert_eq!(run(prog, &options).0, XDP_DROP);
        assert_eq!(dropped(maps, drop_reason::XLB_IP_OPTIONS), 1);
        assert_eq!(counter(maps, xlb_counter::DROPPED), 4);
    });
}

#[test]
fn traffic_for_no_vip_and_arp_pass_untouched() {
    with_lb(|prog, maps, _plan| {
        let arp = Packet::eth().raw(ETH_P_ARP).payload(&[0, 1, 8, 0, 6, 4, 0, 1]).payload(&[0; 20]).build();
        let other_address = Packet::eth().ipv4(CLIENT, [198, 51, 100, 99]).tcp(40000, 80, TCP_SYN).build();
        let other_port = Packet::eth().ipv4(CLIENT, [198, 51, 100, 10]).tcp(40000, 22, TCP_SYN).build();
        let other_proto = Packet::eth().ipv4(CLIENT, [198, 51, 100, 10]).udp(40000, 80).build();
        let icmp = Packet::eth().ipv4(CLIENT, [198, 51, 100, 10]).icmp(8, 0).payload(b"ping").build();
        for packet in [&arp, &other_address, &other_port, &other_proto, &icmp] {
            assert_eq!(run(prog, packet), (XDP_PASS, packet.clone()));
        }
        assert_eq!(counter(maps, xlb_counter::PASSED), 5);
    });
}

/// The real's tc program turns what the load balancer sent back into the
/// client's packet (with the Ethernet header the load balancer wrote).
#[test]
fn the_real_decapsulates_every_encapsulation() {
    let mut encapsulated = Vec::new();
    with_lb(|prog, _maps, _plan| {
        let client6: Ipv6Addr = CLIENT6.parse().expect("a");
        let vip6: Ipv6Addr = "2001:db8::10".parse().expect("a");
        let cases = [
            ("4in4", Packet::eth().ipv4(CLIENT, [198, 51, 100, 10]).tcp(40000, 80, TCP_SYN).payload(b"a")),
            ("GUE 4 over 4", Packet::eth().ipv4(CLIENT, [198, 51, 100, 10]).udp(40000, 53).payload(b"b")),
            ("6in6", Packet::eth().ipv6(client6, vip6).tcp(40000, 80, TCP_SYN).payload(b"c")),
            ("GUE 6 over 6", Packet::eth().ipv6(client6, vip6).udp(40000, 53).payload(b"d")),
            ("4in6", Packet::eth().ipv4(CLIENT, [198, 51, 100, 11]).tcp(40000, 80, TCP_SYN).payload(b"e")),
        ];
        for (name, inner) in cases {
            let (verdict, out) = run(prog, &inner.clone().build());
            assert_eq!(verdict, XDP_TX, "{name}");
            encapsulated.push((name, out, inner.macs(IN_DST, IN_SRC).build()));
        }
    });
    xlb::with_private_decap(|skel| {
        let prog = &skel.progs.weir_xlb_decap;
        for (name, frame, want) in &encapsulated {
            let outcome = testrun::run_once(prog, frame).expect("test run");
            assert_eq!((outcome.verdict, testrun::hex(&outcome.output)), (TCX_NEXT, testrun::hex(want)), "{name}");
        }
        // Not encapsulated, or UDP to another port: untouched.
        for plain in [
            Packet::eth().ipv4(CLIENT, [10, 0, 0, 2]).tcp(40000, 80, TCP_SYN).build(),
            Packet::eth().ipv4(CLIENT, [10, 0, 0, 2]).udp(40000, 6081).payload(&[0x45; 24]).build(),
        ] {
            let outcome = testrun::run_once(prog, &plain).expect("test run");
            assert_eq!((outcome.verdict, outcome.output), (TCX_NEXT, plain));
        }
    })
    .expect("decap loads");
}

#[test]
fn the_flood_guard_stops_remembering_new_connections_above_the_rate_and_still_forwards() {
    let limited = CONFIG.replace("spec:\n", "spec:\n  newConnectionsPerSecondPerCore: 2\n");
    let plan = planned(&limited, None);
    // Per-core state: keep every run on one CPU.
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(libc::sched_getcpu().max(0) as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
    xlb::with_private(|skel, maps| {
        let prog = &skel.progs.weir_xlb;
        maps.apply(&plan::changes(None, &plan)).expect("applied");
        let vip: IpAddr = "198.51.100.10".parse().expect("a");
        // A window may end between two SYNs on a loaded machine: send until one is refused.
        let refused = (0..1000u16).find(|i| {
            let port = 20000 + i;
            let syn = Packet::eth().ipv4(CLIENT, v4(vip)).tcp(port, 80, TCP_SYN).build();
            assert_eq!(run(prog, &syn).0, XDP_TX, "forwarded, remembered or not");
            maps.connection(CLIENT.into(), port, vip, 80, 6).is_none()
        });
        assert!(refused.is_some(), "the third new connection of a second was not remembered");
        assert!(counter(maps, xlb_counter::FLOOD_GUARD) >= 1);
    })
    .expect("xlb loads");
}

/// The agent's health probe (a SYN from the load balancer's own address to
/// the VIP, marked with a real) leaves encapsulated to that real.
#[test]
fn health_probes_leave_encapsulated_to_the_real_their_mark_names() {
    let plan = planned(CONFIG, None);
    xlb::with_private(|skel, maps| {
        maps.apply(&plan::changes(None, &plan)).expect("applied");
        let probe = &skel.progs.weir_xlb_probe;
        let lb: Ipv4Addr = "10.1.0.2".parse().expect("a");
        let vip: Ipv4Addr = "198.51.100.10".parse().expect("a");
        let (index, real) = plan
            .reals
            .iter()
            .find(|(_, k)| k.address.to_string() == "10.0.0.3")
            .map(|(i, k)| (*i, v4(k.address)))
            .expect("real");
        let syn = Packet::eth().ipv4(lb, vip).tcp(45000, 80, TCP_SYN).build();
        let want = Packet::eth().ipv4(lb, real).ipv4(lb, vip).tcp(45000, 80, TCP_SYN).build();
        let out = testrun::run_marked(probe, &syn, xlb::probe_mark(index, false)).expect("run");
        assert_eq!((out.verdict, testrun::hex(&out.output)), (0, testrun::hex(&want)), "IPIP to {real}");
        // GUE: outer UDP to 6080 with checksum 0.
        let out = testrun::run_marked(probe, &syn, xlb::probe_mark(index, true)).expect("run");
        let sport = u16::from_be_bytes([out.output[34], out.output[35]]);
        let want = Packet::eth()
            .ipv4(lb, real)
            .udp(sport, weir_lb::GUE_PORT)
            .ipv4(lb, vip)
            .tcp(45000, 80, TCP_SYN)
            .build()
            .with_byte(14 + 20 + 6, 0)
            .with_byte(14 + 20 + 7, 0);
        assert!(sport >= 0x8000);
        assert_eq!(testrun::hex(&out.output), testrun::hex(&want), "GUE to {real}");
        // Unmarked traffic, or another mark, is handed on untouched.
        for mark in [0, 0x1234_0001] {
            let out = testrun::run_marked(probe, &syn, mark).expect("run");
            assert_eq!((out.verdict, out.output), (TCX_NEXT, syn.clone()));
        }
    })
    .expect("xlb loads");
}

/// Two load balancers given the same document — reals listed in another
/// order, applied in another order of changes — send every flow to the
/// same real with the same bytes, so ECMP in front of them may move flows
/// between them without breaking connections.
#[test]
fn load_balancers_configured_alike_choose_the_same_real_for_every_flow() {
    let first = planned(CONFIG, None);
    // The second: web's reals reversed, and it lived through another document first.
    let reordered = CONFIG.replace(
        "reals: [{address: 10.0.0.2}, {address: 10.0.0.3}]}",
        "reals: [{address: 10.0.0.3}, {address: 10.0.0.2}]}",
    );
    assert_ne!(reordered, CONFIG);
    let earlier = planned(&CONFIG.replace("10.0.0.6", "10.0.0.9"), None);
    let second = planned(&reordered, Some(&earlier));
    let vip = [198, 51, 100, 10];
    let packets: Vec<Vec<u8>> = (0..200u16)
        .map(|i| Packet::eth().ipv4([192, 0, 2, (i % 250) as u8], vip).tcp(30000 + i, 80, TCP_SYN).build())
        .collect();
    let outputs = |plan: &Plan, previous: Option<&Plan>| -> Vec<Vec<u8>> {
        xlb::with_private(|skel, maps| {
            if let Some(previous) = previous {
                maps.apply(&plan::changes(None, previous)).expect("earlier");
            }
            maps.apply(&plan::changes(previous, plan)).expect("applied");
            packets.iter().map(|p| run(&skel.progs.weir_xlb, p).1).collect()
        })
        .expect("xlb loads")
    };
    let (a, b) = (outputs(&first, None), outputs(&second, Some(&earlier)));
    let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
    assert_eq!(same, packets.len(), "every flow leaves both load balancers for the same real, byte for byte");
}

/// A router that cannot carry a real's reply sends "fragmentation needed"
/// (IPv4) or "packet too big" (IPv6) to the VIP; it goes on, encapsulated,
/// to the real that holds the quoted connection — the LRU's, even when the
/// ring has changed since.
#[test]
fn icmp_too_big_for_a_vips_reply_reaches_the_real_of_the_connection() {
    let first = planned(CONFIG, None);
    xlb::with_private(|skel, maps| {
        let prog = &skel.progs.weir_xlb;
        maps.apply(&plan::changes(None, &first)).expect("applied");
        let router = [203, 0, 113, 1];
        let vip: Ipv4Addr = "198.51.100.10".parse().expect("a");
        let t = tuple(CLIENT.into(), 40000, 80, 6);
        let real = predicted(&first, &t, vip.into());
        assert_eq!(run(prog, &Packet::eth().ipv4(CLIENT, vip).tcp(40000, 80, TCP_SYN).build()).0, XDP_TX);
        // The connection's real leaves the ring; the ICMP still goes to it.
        let drained = CONFIG.replace(&format!("{{address: {real}}}"), &format!("{{address: {real}, weight: 0}}"));
        let second = planned(&drained, Some(&first));
        maps.apply(&plan::changes(Some(&first), &second)).expect("applied");
        assert_ne!(predicted(&second, &t, vip.into()), real);

        // The quoted reply: VIP:80 -> client:40000, its IP header and 8 bytes of TCP.
        let reply = Packet::eth().ipv4(vip, CLIENT).tcp(80, 40000, TCP_ACK).payload(&[0; 1400]).build();
        let quoted = &reply[14..14 + 28];
        let icmp = Packet::eth().ipv4(router, vip).icmp(3, 4).payload(quoted).build();
        let want =
            out_frame(Packet::eth().ipv4(outer_source4(&t), v4(real)).ipv4(router, vip).icmp(3, 4).payload(quoted))
                .build();
        let (verdict, out) = run(prog, &icmp);
        assert_eq!((verdict, testrun::hex(&out)), (XDP_TX, testrun::hex(&want)), "to {real}");
        assert_eq!(counter(maps, xlb_counter::ICMP_TOO_BIG), 1);

        // IPv6: packet too big, quoting VIP6:80 -> client6.
        let client6: Ipv6Addr = CLIENT6.parse().expect("a");
        let vip6: Ipv6Addr = "2001:db8::10".parse().expect("a");
        let router6: Ipv6Addr = "2001:db8:ffff::1".parse().expect("a");
        let t6 = tuple(client6.into(), 50000, 80, 6);
        let real6 = v6(predicted(&second, &t6, vip6.into()));
        let reply6 = Packet::eth().ipv6(vip6, client6).tcp(80, 50000, TCP_ACK).build();
        let quoted6 = &reply6[14..14 + 48];
        let icmp6 = Packet::eth().ipv6(router6, vip6).icmp(2, 0).payload(quoted6).build();
        let want6 =
            out_frame(Packet::eth().ipv6(outer_source6(&t6), real6).ipv6(router6, vip6).icmp(2, 0).payload(quoted6))
                .build();
        assert_eq!(testrun::hex(&run(prog, &icmp6).1), testrun::hex(&want6), "6in6 to {real6}");

        // About no VIP's flow (another source, an echo request): passed untouched.
        let unrelated = Packet::eth().ipv4(router, vip).icmp(8, 0).payload(b"ping").build();
        let quoted_other = Packet::eth().ipv4([198, 51, 100, 99], CLIENT).tcp(80, 40000, TCP_ACK).build();
        let not_vip = Packet::eth().ipv4(router, vip).icmp(3, 4).payload(&quoted_other[14..42]).build();
        for packet in [&unrelated, &not_vip] {
            assert_eq!(run(prog, packet), (XDP_PASS, packet.clone()));
        }
    })
    .expect("xlb loads");
}

#[test]
fn source_routes_send_a_client_prefix_to_its_real_and_others_take_the_ring() {
    let routed = CONFIG.replace(
        "    hash: ClientAddress\n",
        "    hash: ClientAddress\n    sourceRoutes:\n    - {cidr: 192.0.2.0/24, real: 10.0.0.6}\n    - {cidr: 192.0.2.128/25, real: 10.0.0.7}\n",
    );
    assert_ne!(routed, CONFIG);
    let plan = planned(&routed, None);
    xlb::with_private(|skel, maps| {
        let prog = &skel.progs.weir_xlb;
        maps.apply(&plan::changes(None, &plan)).expect("applied");
        let vip: Ipv4Addr = "198.51.100.13".parse().expect("a");
        // The real the plan predicts, and whether the kernel sent it there byte for byte.
        let send = |client: [u8; 4]| -> (String, bool) {
            let t = tuple(client.into(), 30000, 443, 6);
            let real = predicted(&plan, &t, vip.into());
            let syn = Packet::eth().ipv4(client, vip).tcp(30000, 443, TCP_SYN).build();
            let want =
                out_frame(Packet::eth().ipv4(outer_source4(&t), v4(real)).ipv4(client, vip).tcp(30000, 443, TCP_SYN))
                    .build();
            (real.to_string(), run(prog, &syn).1 == want)
        };
        for c in [1u8, 7, 100, 127] {
            assert_eq!(send([192, 0, 2, c]), ("10.0.0.6".to_string(), true), "192.0.2.{c}");
        }
        for c in [128u8, 200, 254] {
            assert_eq!(send([192, 0, 2, c]), ("10.0.0.7".to_string(), true), "192.0.2.{c}: the longer prefix");
        }
        assert_eq!(counter(maps, xlb_counter::SOURCE_ROUTED), 7);
        let others: std::collections::BTreeSet<String> = (1..60u8)
            .map(|c| {
                let (real, sent_there) = send([203, 0, 113, c]);
                assert!(sent_there, "203.0.113.{c}: as the plan predicts");
                real
            })
            .collect();
        assert!(others.len() > 2, "the rest take the ring: {others:?}");
    })
    .expect("xlb loads");
}

/// QUIC: a short header whose connection id carries a real's server id
/// goes to that real, whatever the flow's hash; long headers (and unknown
/// ids) take the ring like any UDP flow.
#[test]
fn quic_short_headers_go_to_the_real_their_connection_id_names() {
    let quic = CONFIG.replace(
        "  - {name: here,",
        "  - name: h3\n    address: 198.51.100.18\n    port: 443\n    protocol: UDP\n    quic: true\n    reals: [{address: 10.0.0.2, quicServerId: 258}, {address: 10.0.0.3, quicServerId: 259}, {address: 10.0.0.6}, {address: 10.0.0.7}]\n  - {name: here,",
    );
    assert_ne!(quic, CONFIG);
    let plan = planned(&quic, None);
    xlb::with_private(|skel, maps| {
        let prog = &skel.progs.weir_xlb;
        maps.apply(&plan::changes(None, &plan)).expect("applied");
        let vip: Ipv4Addr = "198.51.100.18".parse().expect("a");
        let frame = |port: u16, payload: &[u8]| Packet::eth().ipv4(CLIENT, vip).udp(port, 443).payload(payload);
        for port in 6000..6020u16 {
            let t = tuple(CLIENT.into(), port, 443, 17);
            // Short header (0b01......), connection id 0x0103 ... -> server 259 -> 10.0.0.3.
            let short = [0x41, 0x01, 0x03, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF];
            let want = out_frame(
                Packet::eth()
                    .ipv4(outer_source4(&t), Ipv4Addr::new(10, 0, 0, 3))
                    .ipv4(CLIENT, vip)
                    .udp(port, 443)
                    .payload(&short),
            )
            .build();
            assert_eq!(testrun::hex(&run(prog, &frame(port, &short).build()).1), testrun::hex(&want), "port {port}");
            // A long header (an Initial) from another port: the ring, as the plan predicts.
            let t_long = tuple(CLIENT.into(), port + 1000, 443, 17);
            let long = [0xC3, 0x00, 0x00, 0x00, 0x01, 0x08, 0x01, 0x03];
            let real = v4(predicted(&plan, &t_long, vip.into()));
            let want = out_frame(
                Packet::eth().ipv4(outer_source4(&t_long), real).ipv4(CLIENT, vip).udp(port + 1000, 443).payload(&long),
            )
            .build();
            assert_eq!(testrun::hex(&run(prog, &frame(port + 1000, &long).build()).1), testrun::hex(&want));
        }
        assert_eq!(counter(maps, xlb_counter::QUIC_ROUTED), 20);
    })
    .expect("xlb loads");
}
