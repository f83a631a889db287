//! Fixture tests of north-south service translation (NodePort) at tc
//! ingress through BPF_PROG_TEST_RUN: each input packet, the exact packet
//! that must come out (addresses, ports and both checksums), in both
//! directions, for TCP and UDP; and packets that must pass untouched.

use libbpf_rs::{MapCore, MapFlags};
use weir_bpf::skel::node::types;
use weir_bpf::testrun;
use weir_packet::{Packet, TCP_ACK, TCP_SYN};

const CLIENT: [u8; 4] = [172, 30, 0, 9];
const NODE: [u8; 4] = [172, 30, 0, 2];
const BACKEND: [u8; 4] = [10, 244, 1, 2];
const CLUSTER_IP: [u8; 4] = [10, 96, 0, 10];
const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
const F_EXTERNAL: u16 = 1 << 2;

fn bytes<T>(value: &T) -> &[u8] {
    // SAFETY: generated repr(C) types of integers with explicit padding fields; every byte is initialised.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

fn word(addr: [u8; 4]) -> u32 {
    u32::from_ne_bytes(addr)
}

fn be16(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

/// Frontend addr:port/proto -> one backend (id 7, port 8080 or 5353).
fn add_frontend(skel: &weir_bpf::skel::node::NodeSkel<'_>, addr: [u8; 4], port: u16, proto: u8, flags: u16, id: u32) {
    let key =
        |slot| types::weir_lb_key { addr: [word(addr), 0, 0, 0], port: be16(port), proto, family: 4, slot, pad: 0 };
    let backend = types::weir_lb_backend {
        addr: [word(BACKEND), 0, 0, 0],
        port: be16(if proto == 6 { 8080 } else { 5353 }),
        proto,
        family: 4,
        state: 0,
        pad: [0; 3],
        service_id: id,
    };
    // A slot carries a copy of its backend (see bpf/api/service.h).
    let slot1 = types::weir_lb_slot { backend_id: id, backend, ..Default::default() };
    let slot0 = types::weir_lb_slot { service_id: id, active: 1, total: 1, flags, ..Default::default() };
    skel.maps.lb_services.update(bytes(&key(1)), bytes(&slot1), MapFlags::ANY).expect("slot 1");
    skel.maps.lb_services.update(bytes(&key(0)), bytes(&slot0), MapFlags::ANY).expect("slot 0");
    skel.maps.lb_backends.update(&id.to_ne_bytes(), bytes(&backend), MapFlags::ANY).expect("backend");
}

fn run(prog: &libbpf_rs::ProgramMut<'_>, input: &[u8]) -> (u32, Vec<u8>) {
    let outcome = testrun::run_once(prog, input).expect("test run");
    (outcome.verdict, outcome.output)
}

#[test]
fn node_port_flows_are_translated_both_ways_with_correct_checksums() {
    testrun::with_node_datapath(|skel| {
        let config = types::weir_lb_node_config { node_addr: word(NODE) };
        skel.maps.lb_node_config.update(&0u32.to_ne_bytes(), bytes(&config), MapFlags::ANY).expect("config");
        add_frontend(skel, NODE, 30080, 6, F_EXTERNAL, 7);
        add_frontend(skel, NODE, 30053, 17, F_EXTERNAL, 8);
        add_frontend(skel, CLUSTER_IP, 80, 6, 0, 9);
        let prog = &skel.progs.weir_node_tc_ingress;

        // TCP: client -> node:30080 becomes node -> backend:8080 (SNAT keeps the client's port) ...
        let syn = Packet::eth().ipv4(CLIENT, NODE).tcp(40000, 30080, TCP_SYN).payload(b"hi").build();
        let (verdict, out) = run(prog, &syn);
        assert!(verdict == TC_ACT_OK || verdict == TC_ACT_REDIRECT, "verdict {verdict}");
        let want = Packet::eth().ipv4(NODE, BACKEND).tcp(40000, 8080, TCP_SYN).payload(b"hi").build();
        assert_eq!(testrun::hex(&out), testrun::hex(&want), "forward SYN rewritten, checksums recomputed");
        // ... later packets of the flow take the same way ...
        let ack = Packet::eth().ipv4(CLIENT, NODE).tcp(40000, 30080, TCP_ACK).build();
        let want = Packet::eth().ipv4(NODE, BACKEND).tcp(40000, 8080, TCP_ACK).build();
        assert_eq!(testrun::hex(&run(prog, &ack).1), testrun::hex(&want));
        // ... and the backend's reply goes back as the node port, to the client.
        let reply = Packet::eth().ipv4(BACKEND, NODE).tcp(8080, 40000, TCP_SYN | TCP_ACK).build();
        let want = Packet::eth().ipv4(NODE, CLIENT).tcp(30080, 40000, TCP_SYN | TCP_ACK).build();
        assert_eq!(testrun::hex(&run(prog, &reply).1), testrun::hex(&want), "reverse rewritten");

        // UDP, with its checksum.
        let query = Packet::eth().ipv4(CLIENT, NODE).udp(5000, 30053).payload(b"query").build();
        let want = Packet::eth().ipv4(NODE, BACKEND).udp(5000, 5353).payload(b"query").build();
        assert_eq!(testrun::hex(&run(prog, &query).1), testrun::hex(&want));
        let answer = Packet::eth().ipv4(BACKEND, NODE).udp(5353, 5000).payload(b"answer").build();
        let want = Packet::eth().ipv4(NODE, CLIENT).udp(30053, 5000).payload(b"answer").build();
        assert_eq!(testrun::hex(&run(prog, &answer).1), testrun::hex(&want));

        // Untouched: a cluster IP from outside, a port that is no frontend, a second client.
        for untouched in [
            Packet::eth().ipv4(CLIENT, CLUSTER_IP).tcp(40001, 80, TCP_SYN).build(),
            Packet::eth().ipv4(CLIENT, NODE).tcp(40002, 22, TCP_SYN).build(),
            Packet::eth().ipv4(BACKEND, NODE).tcp(8080, 40003, TCP_ACK).build(),
        ] {
            let (verdict, out) = run(prog, &untouched);
            assert_eq!((verdict, testrun::hex(&out)), (TC_ACT_OK, testrun::hex(&untouched)));
        }
        // The north-south flows are counted per service and backend, like socket LB connections.
        let count = |map: &libbpf_rs::Map<'_>, id: u32| -> u64 {
            let value = map.lookup(&id.to_ne_bytes(), MapFlags::ANY).expect("lookup").expect("an array entry");
            u64::from_ne_bytes(value[..8].try_into().expect("u64"))
        };
        assert_eq!(count(&skel.maps.lb_service_stats, 7), 1, "one TCP flow");
        assert_eq!(count(&skel.maps.lb_backend_stats, 8), 1, "one UDP flow");
    })
    .expect("node datapath loads");
}

#[test]
fn a_client_outside_the_source_ranges_is_dropped_and_counted_and_one_inside_is_translated() {
    const F_SOURCE_RANGES: u16 = 1 << 3;
    const TC_ACT_SHOT: u32 = 2;
    const LB_IP: [u8; 4] = [198, 51, 100, 10];
    testrun::with_node_datapath(|skel| {
        let config = types::weir_lb_node_config { node_addr: word(NODE) };
        skel.maps.lb_node_config.update(&0u32.to_ne_bytes(), bytes(&config), MapFlags::ANY).expect("config");
        add_frontend(skel, LB_IP, 80, 6, F_EXTERNAL | F_SOURCE_RANGES, 7);
        // Service 7 admits 172.30.0.8/29 (CLIENT is 172.30.0.9); service 8's range must not leak into 7.
        for (service_id, net, len) in [(7u32, [172, 30, 0, 8], 29u32), (8, [172, 30, 0, 96], 27)] {
            let key = types::weir_lb_source_range_key { prefixlen: 32 + len, service_id, addr: word(net) };
            skel.maps.lb_source_ranges.update(bytes(&key), &[1], MapFlags::ANY).expect("range");
        }
        let prog = &skel.progs.weir_node_tc_ingress;

        let inside = Packet::eth().ipv4(CLIENT, LB_IP).tcp(40000, 80, TCP_SYN).build();
        let want = Packet::eth().ipv4(NODE, BACKEND).tcp(40000, 8080, TCP_SYN).build();
        assert_eq!(testrun::hex(&run(prog, &inside).1), testrun::hex(&want), "inside the range: translated");

        let outsider = [172, 30, 0, 99];
        let outside = Packet::eth().ipv4(outsider, LB_IP).tcp(40001, 80, TCP_SYN).build();
        assert_eq!(run(prog, &outside).0, TC_ACT_SHOT, "outside the range: dropped");
        // Counted under its reason, from the registry.
        let reason = weir_bpf::api::drop_reason::LB_SOURCE_RANGE;
        let value =
            skel.maps.drops.lookup_percpu(&reason.to_ne_bytes(), MapFlags::ANY).expect("lookup").expect("entry");
        let packets: u64 = value.iter().map(|cpu| u64::from_ne_bytes(cpu[..8].try_into().expect("u64"))).sum();
        assert_eq!(packets, 1, "one drop counted as LB_SOURCE_RANGE");
        // Nothing was recorded for the refused flow: its next packet is judged again.
        assert_eq!(run(prog, &outside).0, TC_ACT_SHOT);
    })
    .expect("node datapath loads");
}
