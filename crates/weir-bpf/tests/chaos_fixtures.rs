//! Chaos in the node datapath through BPF_PROG_TEST_RUN: a local pod's
//! packet to a pod whose pair has a live partition is dropped with its
//! reason and counted for its experiment; an expired entry does nothing;
//! the other direction and other pairs pass; loss drops its share; corrupt
//! flips one payload bit, its checksum left wrong or fixed; what a pod
//! sends to a ServiceChaos black hole is dropped with its reason.

use std::net::{IpAddr, Ipv4Addr};

use weir_bpf::api::drop_reason;
use weir_bpf::chaos::{ChaosEntry, ChaosFault, ChaosMaps};
use weir_bpf::policy::PolicyMaps;
use weir_bpf::skel::node::types;
use weir_bpf::testrun;
use weir_packet::Packet;

const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const WEB: [u8; 4] = [10, 244, 0, 2];
const DB: [u8; 4] = [10, 244, 0, 3];
const CACHE: [u8; 4] = [10, 244, 0, 4];
const VETHS: [(u32, [u8; 4]); 3] = [(4242, WEB), (4343, DB), (4444, CACHE)];

fn ip(a: [u8; 4]) -> IpAddr {
    IpAddr::from(Ipv4Addr::from(a))
}

fn veth(a: [u8; 4]) -> u32 {
    VETHS.iter().find(|(_, addr)| *addr == a).map(|(ifindex, _)| *ifindex).expect("a pod of the fixture")
}

/// The verdict for a UDP datagram `src` sends to `dst` from its own veth.
fn send(skel: &weir_bpf::skel::node::NodeSkel<'_>, src: [u8; 4], dst: [u8; 4], repeat: u32) -> u32 {
    let packet =
        Packet::eth().macs([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).ipv4(src, dst).ttl(64).udp(4000, 53).build();
    testrun::run_on(&skel.progs.weir_node_tc_ingress, &packet, repeat, veth(src)).expect("run").verdict
}

fn endpoint(i: usize, ifindex: u32, addr: [u8; 4]) -> types::weir_endpoint {
    types::weir_endpoint {
        ifindex,
        pod_mac: [2, 0, 0, 0, 1, i as u8],
        node_mac: [2, 0, 0, 0, 2, i as u8],
        identity: 256 + i as u32,
        policy_revision: 1,
        pod_key: u32::from_ne_bytes(addr),
        netnsid_plus_one: 0,
        flags: 0,
    }
}

fn with_pods<T>(work: impl FnOnce(&weir_bpf::skel::node::NodeSkel<'_>, &ChaosMaps, &PolicyMaps) -> T) -> T {
    testrun::with_node_datapath(|skel| {
        for (i, (ifindex, addr)) in VETHS.iter().enumerate() {
            testrun::set_endpoint(skel, *addr, &endpoint(i, *ifindex, *addr)).expect("endpoint");
        }
        let chaos = ChaosMaps::of(skel).expect("chaos maps");
        let policy = PolicyMaps::of(skel).expect("policy maps");
        work(skel, &chaos, &policy)
    })
    .expect("the node datapath loads")
}

#[test]
fn a_live_partition_drops_with_its_reason_and_an_expired_one_does_nothing() {
    with_pods(|skel, chaos, policy| {
        assert_eq!(send(skel, WEB, DB, 1), TC_ACT_REDIRECT, "no experiment: delivered");
        let live = ChaosEntry { fault: ChaosFault::Partition, end_ns: u64::MAX, experiment: 3 };
        chaos.insert(ip(WEB), ip(DB), &live).expect("insert");
        assert_eq!(send(skel, WEB, DB, 1), TC_ACT_SHOT, "partitioned");
        assert_eq!(send(skel, DB, WEB, 1), TC_ACT_REDIRECT, "only the pair's own direction");
        assert_eq!(send(skel, WEB, CACHE, 1), TC_ACT_REDIRECT, "other pairs pass");
        let drops = policy.drops().expect("drops");
        assert_eq!(drops[drop_reason::CHAOS_PARTITION as usize].packets, 1);
        assert_eq!(chaos.affected(3).expect("counter").packets, 1, "counted for its experiment");

        // The same entry, its end time passed: no agent needed to lift it.
        let expired = ChaosEntry { end_ns: weir_bpf::ktime_now_ns() - 1, ..live };
        chaos.insert(ip(WEB), ip(DB), &expired).expect("insert");
        assert_eq!(send(skel, WEB, DB, 1), TC_ACT_REDIRECT, "expired: delivered");
        // Ends a little ahead: live now, then lifted by the clock alone.
        let soon = ChaosEntry { end_ns: weir_bpf::ktime_now_ns() + 200_000_000, ..live };
        chaos.insert(ip(WEB), ip(DB), &soon).expect("insert");
        assert_eq!(send(skel, WEB, DB, 1), TC_ACT_SHOT, "live until its end");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while send(skel, WEB, DB, 1) == TC_ACT_SHOT {
            assert!(std::time::Instant::now() < deadline, "the entry never expired");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(weir_bpf::ktime_now_ns() >= soon.end_ns, "passed only after its end time");

        assert_eq!(chaos.remove_experiment(3).expect("remove"), 1);
        assert_eq!(chaos.affected(3).expect("counter").packets, 0, "the slot starts afresh");
        assert!(chaos.entries().is_empty());
    });
}

#[test]
fn the_source_filter_follows_the_pairs() {
    with_pods(|skel, chaos, _| {
        assert_eq!(chaos.marked_sources().expect("filter"), 0, "no pair, no source");
        let partition = |experiment| ChaosEntry { fault: ChaosFault::Partition, end_ns: u64::MAX, experiment };
        chaos.insert(ip(WEB), ip(DB), &partition(1)).expect("insert");
        chaos.insert(ip(WEB), ip(CACHE), &partition(1)).expect("insert");
        chaos.insert(ip(CACHE), ip(DB), &partition(2)).expect("insert");
        assert_eq!(chaos.marked_sources().expect("filter"), 2, "one bit per source");
        assert_eq!(send(skel, WEB, DB, 1), TC_ACT_SHOT);
        // The kernel trusts the filter: with the bits cleared behind the
        // maps' back, the pairs are not even looked up.
        use libbpf_rs::MapCore;
        let words = skel.maps.chaos_sources.max_entries();
        for word in 0..words {
            let zero = 0u64.to_ne_bytes();
            skel.maps.chaos_sources.update(&word.to_ne_bytes(), &zero, libbpf_rs::MapFlags::ANY).expect("clear");
        }
        assert_eq!(send(skel, WEB, DB, 1), TC_ACT_REDIRECT, "a source whose bit is clear passes");
        chaos.insert(ip(WEB), ip(DB), &partition(1)).expect("insert");
        chaos.insert(ip(CACHE), ip(DB), &partition(2)).expect("insert");
        assert_eq!(send(skel, WEB, DB, 1), TC_ACT_SHOT, "an insert sets its source's bit again");
        assert_eq!(send(skel, CACHE, DB, 1), TC_ACT_SHOT);
        assert_eq!(send(skel, DB, WEB, 1), TC_ACT_REDIRECT, "a source without pairs passes");
        // WEB's last pairs go: its bit is cleared, CACHE's stays.
        assert_eq!(chaos.remove_experiment(1).expect("remove"), 2);
        assert_eq!(chaos.marked_sources().expect("filter"), 1);
        assert_eq!(send(skel, WEB, DB, 1), TC_ACT_REDIRECT);
        assert_eq!(send(skel, CACHE, DB, 1), TC_ACT_SHOT, "the other source's pairs still hold");
        assert_eq!(chaos.remove_experiment(2).expect("remove"), 1);
        assert_eq!(chaos.marked_sources().expect("filter"), 0);
        assert_eq!(send(skel, CACHE, DB, 1), TC_ACT_REDIRECT);

        // IPv6: the filter hashes all four words of the source.
        const WEB6: [u16; 8] = [0xfd00, 0x10, 0x244, 0, 0, 0, 0, 2];
        const DB6: [u16; 8] = [0xfd00, 0x10, 0x244, 0, 0, 0, 0, 3];
        for (i, addr6) in [WEB6, DB6].into_iter().enumerate() {
            let (ifindex, addr) = VETHS[i];
            testrun::set_endpoint(skel, std::net::Ipv6Addr::from(addr6), &endpoint(i, ifindex, addr))
                .expect("endpoint");
        }
        let send6 = || {
            let packet = Packet::eth()
                .macs([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv6(WEB6, DB6)
                .ttl(64)
                .udp(4000, 53)
                .build();
            testrun::run_on(&skel.progs.weir_node_tc_ingress, &packet, 1, veth(WEB)).expect("run").verdict
        };
        assert_eq!(send6(), TC_ACT_REDIRECT);
        let (web6, db6) = (IpAddr::from(std::net::Ipv6Addr::from(WEB6)), IpAddr::from(std::net::Ipv6Addr::from(DB6)));
        chaos.insert(web6, db6, &partition(4)).expect("insert");
        assert_eq!(chaos.marked_sources().expect("filter"), 1);
        assert_eq!(send6(), TC_ACT_SHOT);
        assert_eq!(chaos.remove_experiment(4).expect("remove"), 1);
        assert_eq!((chaos.marked_sources().expect("filter"), send6()), (0, TC_ACT_REDIRECT));
    });
}

/// The chaos cost benchmark's baseline (scripts/bench/chaos-cost.sh): the
/// node datapath built without chaos has no chaos maps or programs, and
/// delivers a pod's packet exactly as the shipped build does with no
/// experiment, so the two differ by the chaos code alone.
#[test]
fn the_build_without_chaos_delivers_as_the_shipped_one() {
    let packet = Packet::eth().macs([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).ipv4(WEB, DB).ttl(64).udp(4000, 53).build();
    let shipped =
        with_pods(|skel, _, _| testrun::run_on(&skel.progs.weir_node_tc_ingress, &packet, 1, veth(WEB)).expect("run"));
    assert_eq!(shipped.verdict, TC_ACT_REDIRECT);
    testrun::with_node_datapath_without_chaos(|object| {
        use libbpf_rs::MapCore;
        let maps: Vec<String> = object.maps().map(|m| m.name().to_string_lossy().into_owned()).collect();
        let progs: Vec<String> = object.progs().map(|p| p.name().to_string_lossy().into_owned()).collect();
        assert!(maps.iter().any(|m| m == "pod_endpoints") && progs.iter().any(|p| p == "weir_node_tc_ingress"));
        assert!(!maps.iter().any(|m| m.starts_with("chaos_pairs") || m.starts_with("chaos_sources")), "{maps:?}");
        assert!(!progs.iter().any(|p| p.contains("chaos")), "{progs:?}");
        for (i, (ifindex, addr)) in VETHS.iter().enumerate() {
            testrun::set_object_endpoint(object, *addr, &endpoint(i, *ifindex, *addr)).expect("endpoint");
        }
        let prog = testrun::object_program(object, "weir_node_tc_ingress").expect("program");
        let baseline = testrun::run_on(&prog, &packet, 1, veth(WEB)).expect("run");
        assert_eq!(
            (baseline.verdict, testrun::hex(&baseline.output)),
            (shipped.verdict, testrun::hex(&shipped.output))
        );
    })
    .expect("the build without chaos loads");
}

#[test]
fn loss_drops_its_share_and_correlation_keeps_the_rate() {
    with_pods(|skel, chaos, policy| {
        const N: u32 = 100_000;
        let share = |percent: f64| (percent / 100.0 * 4294967296.0) as u32;
        for (slot, (percent, correlation)) in [(30.0, 0.0), (30.0, 50.0), (10.0, 0.0)].into_iter().enumerate() {
            let slot = slot as u32;
            let entry = ChaosEntry {
                fault: ChaosFault::Loss { probability: share(percent), correlation: share(correlation) },
                end_ns: u64::MAX,
                experiment: slot,
            };
            chaos.insert(ip(WEB), ip(DB), &entry).expect("insert");
            send(skel, WEB, DB, N);
            let lost = chaos.affected(slot).expect("counter").packets as f64 / N as f64 * 100.0;
            assert!((lost - percent).abs() <= 1.5, "{percent}% loss, correlation {correlation}%: lost {lost:.2}%");
        }
        let drops = policy.drops().expect("drops");
        assert!(drops[drop_reason::CHAOS_LOSS as usize].packets > 0, "drops carry the loss reason");
        assert_eq!(drops[drop_reason::CHAOS_PARTITION as usize].packets, 0);
        // Full loss drops all; the untouched pair loses nothing.
        let all = ChaosEntry {
            fault: ChaosFault::Loss { probability: u32::MAX, correlation: 0 },
            end_ns: u64::MAX,
            experiment: 9,
        };
        chaos.insert(ip(WEB), ip(DB), &all).expect("insert");
        send(skel, WEB, DB, 1000);
        assert_eq!(chaos.affected(9).expect("counter").packets, 1000);
        let before = policy.drops().expect("drops")[drop_reason::CHAOS_LOSS as usize].packets;
        // (Repeats feed the forwarded packet back in, its TTL lowered: the
        // verdict of many runs is not one packet's.)
        send(skel, WEB, CACHE, 1000);
        assert_eq!(send(skel, WEB, CACHE, 1), TC_ACT_REDIRECT);
        assert_eq!(policy.drops().expect("drops")[drop_reason::CHAOS_LOSS as usize].packets, before);
    });
}

/// The UDP segment of a frame the node datapath sent on (Ethernet, IPv4
/// without options), and whether its checksum holds over the pseudo-header.
fn udp_segment(frame: &[u8]) -> (Vec<u8>, bool) {
    let ip = &frame[14..];
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let segment = ip[20..total].to_vec();
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&segment);
    (segment, weir_packet::checksum(&pseudo, 0) == 0)
}

#[test]
fn corrupt_flips_one_payload_bit_and_leaves_or_fixes_the_checksum() {
    with_pods(|skel, chaos, policy| {
        let payload = [0xa5u8; 64];
        let packet = Packet::eth()
            .macs([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(WEB, DB)
            .ttl(64)
            .udp(4000, 53)
            .payload(&payload)
            .build();
        let run = || testrun::run_on(&skel.progs.weir_node_tc_ingress, &packet, 1, veth(WEB)).expect("run");
        let clean = run();
        let (sent, valid) = udp_segment(&clean.output);
        assert!(valid && sent[8..] == payload, "no experiment: untouched");
        for (slot, fix_checksum) in [(5u32, false), (6, true)] {
            let entry = ChaosEntry {
                fault: ChaosFault::Corrupt { probability: u32::MAX, correlation: 0, fix_checksum },
                end_ns: u64::MAX,
                experiment: slot,
            };
            chaos.insert(ip(WEB), ip(DB), &entry).expect("insert");
            for _ in 0..20 {
                let out = run();
                assert_eq!(out.verdict, TC_ACT_REDIRECT, "a corrupted packet is still delivered");
                let (segment, valid) = udp_segment(&out.output);
                assert_eq!(segment[..6], sent[..6], "the UDP header is not touched");
                let flipped: u32 = segment[8..].iter().zip(payload).map(|(a, b)| (a ^ b).count_ones()).sum();
                assert_eq!(flipped, 1, "one payload bit flipped: {:02x?}", &segment[8..]);
                if fix_checksum {
                    assert!(valid, "the checksum was repaired");
                } else {
                    assert!(!valid, "the checksum was left as it was");
                    assert_eq!(segment[6..8], sent[6..8]);
                }
            }
            assert_eq!(chaos.affected(slot).expect("counter").packets, 20, "counted for its experiment");
        }
        assert_eq!(policy.drops().expect("drops").iter().map(|d| d.packets).sum::<u64>(), 0, "nothing dropped");
        // A datagram without a payload has nothing to corrupt.
        let empty =
            Packet::eth().macs([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).ipv4(WEB, DB).ttl(64).udp(4000, 53).build();
        testrun::run_on(&skel.progs.weir_node_tc_ingress, &empty, 1, veth(WEB)).expect("run");
        assert_eq!(chaos.affected(6).expect("counter").packets, 20, "an empty datagram is left alone");
    });
}

#[test]
fn what_a_pod_sends_to_a_service_chaos_black_hole_is_dropped_with_its_reason() {
    with_pods(|skel, chaos, policy| {
        // 240.177.0.0/16 with the experiment's slot (3) in the low bits.
        assert_eq!(send(skel, WEB, [240, 177, 0, 3], 2), TC_ACT_SHOT, "black-holed");
        let drops = policy.drops().expect("drops");
        assert_eq!(drops[drop_reason::CHAOS_BLACKHOLE as usize].packets, 2);
        assert_eq!(chaos.affected(3).expect("counter").packets, 0, "counted by the connect hook, not again");
        // Just outside the black hole: no chaos drop.
        send(skel, WEB, [240, 178, 0, 3], 1);
        assert_eq!(policy.drops().expect("drops")[drop_reason::CHAOS_BLACKHOLE as usize].packets, 2);
    });
}

#[test]
fn what_a_pod_sends_to_the_ipv6_black_hole_is_dropped_too() {
    use std::net::Ipv6Addr;
    with_pods(|skel, _chaos, policy| {
        let web6: Ipv6Addr = "fd00:10:244::2".parse().expect("addr");
        let endpoint = types::weir_endpoint {
            ifindex: 4242,
            pod_mac: [2, 0, 0, 0, 1, 0],
            node_mac: [2, 0, 0, 0, 2, 0],
            identity: 256,
            policy_revision: 1,
            pod_key: u32::from_ne_bytes(WEB),
            netnsid_plus_one: 0,
            flags: 0,
        };
        testrun::set_endpoint(skel, web6, &endpoint).expect("endpoint");
        let send6 = |dst: Ipv6Addr| {
            let packet =
                Packet::eth().macs([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).ipv6(web6, dst).udp(4000, 53).build();
            testrun::run_on(&skel.progs.weir_node_tc_ingress, &packet, 1, 4242).expect("run").verdict
        };
        // 100::/64, RFC 6666's discard prefix, with the slot in the last word.
        assert_eq!(send6("100::7".parse().expect("addr")), TC_ACT_SHOT, "black-holed");
        send6("100:0:0:1::7".parse().expect("addr"));
        assert_eq!(policy.drops().expect("drops")[drop_reason::CHAOS_BLACKHOLE as usize].packets, 1, "only 100::/64");
    });
}
