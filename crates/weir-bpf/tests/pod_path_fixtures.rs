//! Fixture tests of the pod path at tc ingress through BPF_PROG_TEST_RUN:
//! a packet for a local pod comes out with the pod's and the veth's MACs,
//! its TTL one lower and the IPv4 checksum still right, redirected into the
//! pod; a packet whose TTL runs out, a packet for no pod and a packet from
//! the pod's own veth are left to the stack untouched. Also run on 6.1 and
//! 6.12 under qemu.

use libbpf_rs::{MapCore, MapFlags};
use weir_bpf::skel::node::types;
use weir_bpf::testrun;
use weir_packet::{Packet, TCP_SYN};

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
const POD: [u8; 4] = [10, 244, 1, 2];
const OTHER: [u8; 4] = [10, 244, 0, 2];
const POD_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
const VETH_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xbb];
const SENDER_MACS: ([u8; 6], [u8; 6]) = ([0x02, 0, 0, 0, 0, 0x01], [0x02, 0, 0, 0, 0, 0x02]);

#[test]
fn packets_for_local_pods_are_delivered_with_ttl_and_macs_rewritten() {
    testrun::with_node_datapath(|skel| {
        let endpoint = types::weir_endpoint {
            ifindex: 4242,
            pod_mac: POD_MAC,
            node_mac: VETH_MAC,
            identity: 256,
            policy_revision: 0,
            pod_key: u32::from_ne_bytes(POD),
            netnsid_plus_one: 0,
            flags: 0,
        };
        testrun::set_endpoint(skel, POD, &endpoint).expect("endpoint");
        let prog = &skel.progs.weir_node_tc_ingress;
        let (src, dst) = SENDER_MACS;

        let input =
            Packet::eth().macs(src, dst).ipv4(OTHER, POD).ttl(64).tcp(40000, 80, TCP_SYN).payload(b"hi").build();
        let out = testrun::run_once(prog, &input).expect("run");
        assert_eq!(out.verdict, TC_ACT_REDIRECT, "redirected into the pod");
        let want = Packet::eth()
            .macs(VETH_MAC, POD_MAC)
            .ipv4(OTHER, POD)
            .ttl(63)
            .tcp(40000, 80, TCP_SYN)
            .payload(b"hi")
            .build();
        assert_eq!(testrun::hex(&out.output), testrun::hex(&want), "MACs set, TTL one lower, IPv4 checksum right");

        let udp = Packet::eth().macs(src, dst).ipv4(OTHER, POD).ttl(2).udp(5353, 53).payload(b"q").build();
        let want = Packet::eth().macs(VETH_MAC, POD_MAC).ipv4(OTHER, POD).ttl(1).udp(5353, 53).payload(b"q").build();
        let out = testrun::run_once(prog, &udp).expect("run");
        assert_eq!((out.verdict, testrun::hex(&out.output)), (TC_ACT_REDIRECT, testrun::hex(&want)));

        // IPv6: the hop limit goes down by one (no checksum to keep).
        const POD6: [u16; 8] = [0xfd00, 0x10, 0x244, 1, 0, 0, 0, 0x102];
        const OTHER6: [u16; 8] = [0xfd00, 0x10, 0x244, 0, 0, 0, 0, 0x2];
        testrun::set_endpoint(skel, std::net::Ipv6Addr::from(POD6), &endpoint).expect("endpoint6");
        let v6 = Packet::eth().macs(src, dst).ipv6(OTHER6, POD6).ttl(64).tcp(40000, 80, TCP_SYN).build();
        let want = Packet::eth().macs(VETH_MAC, POD_MAC).ipv6(OTHER6, POD6).ttl(63).tcp(40000, 80, TCP_SYN).build();
        let out = testrun::run_once(prog, &v6).expect("run");
        assert_eq!((out.verdict, testrun::hex(&out.output)), (TC_ACT_REDIRECT, testrun::hex(&want)), "IPv6 delivered");
        // Neighbour discovery is the link's: left to the stack.
        let ns = Packet::eth().macs(src, dst).ipv6(OTHER6, POD6).icmp(135, 0).build();
        let out = testrun::run_once(prog, &ns).expect("run");
        assert_eq!((out.verdict, testrun::hex(&out.output)), (TC_ACT_OK, testrun::hex(&ns)), "neighbour solicitation");

        // The stack answers what the pod path does not handle.
        for (what, packet) in [
            ("TTL runs out", Packet::eth().macs(src, dst).ipv4(OTHER, POD).ttl(1).udp(1, 2).build()),
            ("no such pod", Packet::eth().macs(src, dst).ipv4(POD, [10, 244, 9, 9]).udp(1, 2).build()),
            ("IPv6 for no pod", Packet::eth().macs(src, dst).ipv6([0xfd; 16], [0xfe; 16]).udp(1, 2).build()),
        ] {
            let out = testrun::run_once(prog, &packet).expect("run");
            assert_eq!(out.verdict, TC_ACT_OK, "{what}");
            assert_eq!(testrun::hex(&out.output), testrun::hex(&packet), "{what}: untouched");
        }
        let paths: Vec<u64> = (0u32..3)
            .map(|code| {
                let per_cpu = skel
                    .maps
                    .pod_paths
                    .lookup_percpu(&code.to_ne_bytes(), MapFlags::ANY)
                    .expect("read")
                    .unwrap_or_default();
                per_cpu.iter().map(|b| u64::from_ne_bytes(b[..8].try_into().expect("u64"))).sum()
            })
            .collect();
        assert_eq!(paths, [3, 0, 1], "delivered 3, forwarded 0, to the stack 1 (the TTL)");
    })
    .expect("node datapath loads");
}

/// A chained endpoint (its veth another CNI plugin's, a bridge port say):
/// packets for it and from it are left to the stack untouched, never
/// redirected, and counted as the chained path.
#[test]
fn packets_to_and_from_a_chained_endpoint_are_left_to_its_plugin() {
    testrun::with_node_datapath(|skel| {
        let endpoint = types::weir_endpoint {
            ifindex: 4243,
            pod_mac: POD_MAC,
            node_mac: VETH_MAC,
            identity: 256,
            policy_revision: 0,
            pod_key: u32::from_ne_bytes(POD),
            netnsid_plus_one: 0,
            flags: weir_bpf::api::endpoint_flag::CHAINED,
        };
        testrun::set_endpoint(skel, POD, &endpoint).expect("endpoint");
        let prog = &skel.progs.weir_node_tc_ingress;
        let (src, dst) = SENDER_MACS;
        // To it from elsewhere, and from it (as the test run's ingress
        // ifindex is not its veth, it is not the sender: only "to" applies).
        let to = Packet::eth().macs(src, dst).ipv4(OTHER, POD).ttl(64).tcp(40000, 80, TCP_SYN).build();
        let out = testrun::run_once(prog, &to).expect("run");
        assert_eq!((out.verdict, testrun::hex(&out.output)), (TC_ACT_OK, testrun::hex(&to)), "to a chained endpoint");
        let chained =
            weir_bpf::api::pod_path::ALL.iter().find(|(_, name, _)| *name == "chained").expect("chained path").0;
        let per_cpu =
            skel.maps.pod_paths.lookup_percpu(&chained.to_ne_bytes(), MapFlags::ANY).expect("read").unwrap_or_default();
        let counted: u64 = per_cpu.iter().map(|b| u64::from_ne_bytes(b[..8].try_into().expect("u64"))).sum();
        assert_eq!(counted, 1, "counted as the chained path");
    })
    .expect("node datapath loads");
}
