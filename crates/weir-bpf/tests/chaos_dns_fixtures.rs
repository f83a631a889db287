//! DNS faults in the node datapath through BPF_PROG_TEST_RUN: a selected
//! pod's query for a matching name becomes the answer in place (addresses,
//! ports and MACs swapped, QR, RA and the response code set, the question
//! alone, lengths and checksums right) and goes back to the pod; other
//! names, other pods, and an ended entry leave the query as it was; a
//! share is answered; IPv6 queries too.

use std::net::{IpAddr, Ipv4Addr};

use weir_bpf::api::drop_reason;
use weir_bpf::chaos::ChaosMaps;
use weir_bpf::chaos_dns::{DnsEntry, DnsFaults};
use weir_bpf::policy::PolicyMaps;
use weir_bpf::skel::node::types;
use weir_bpf::testrun;
use weir_packet::Packet;

const TC_ACT_REDIRECT: u32 = 7;
const WEB: [u8; 4] = [10, 244, 0, 2];
const DNS: [u8; 4] = [10, 244, 0, 3];
const VETHS: [(u32, [u8; 4]); 2] = [(4242, WEB), (4343, DNS)];
const WEB_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0];
const GATEWAY_MAC: [u8; 6] = [2, 0, 0, 0, 2, 0];

/// A query for `name` (type A), with an EDNS record after the question.
fn query(name: &str) -> Vec<u8> {
    let mut dns = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in name.split('.') {
        dns.push(label.len() as u8);
        dns.extend_from_slice(label.as_bytes());
    }
    dns.extend_from_slice(&[0, 0, 1, 0, 1]);
    dns.extend_from_slice(&[0, 0, 0x29, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    dns
}

fn send(skel: &weir_bpf::skel::node::NodeSkel<'_>, src: [u8; 4], name: &str) -> (u32, Vec<u8>, Vec<u8>) {
    let packet =
        Packet::eth().macs(WEB_MAC, GATEWAY_MAC).ipv4(src, DNS).ttl(64).udp(40000, 53).payload(&query(name)).build();
    let ifindex = VETHS.iter().find(|(_, a)| *a == src).map(|(i, _)| *i).expect("a pod");
    let outcome = testrun::run_on(&skel.progs.weir_node_tc_ingress, &packet, 1, ifindex).expect("run");
    (outcome.verdict, packet, outcome.output)
}

/// Whether the frame that came out is an answer (QR set), not the query
/// delivered on (delivery rewrites the MACs and the TTL, not the DNS).
fn answered(frame: &[u8], out: &[u8]) -> bool {
    let answer = out[44] & 0x80 != 0;
    if !answer {
        assert_eq!(&out[26..], &frame[26..], "the query goes on as sent");
    }
    answer
}

fn with_pods(work: impl FnOnce(&weir_bpf::skel::node::NodeSkel<'_>, &DnsFaults, &ChaosMaps, &PolicyMaps)) {
    testrun::with_node_datapath(|skel| {
        for (i, (ifindex, addr)) in VETHS.iter().enumerate() {
            let endpoint = types::weir_endpoint {
                ifindex: *ifindex,
                pod_mac: [2, 0, 0, 0, 1, i as u8],
                node_mac: [2, 0, 0, 0, 2, i as u8],
                identity: 256 + i as u32,
                policy_revision: 1,
                pod_key: u32::from_ne_bytes(*addr),
                netnsid_plus_one: 0,
                flags: 0,
            };
            testrun::set_endpoint(skel, *addr, &endpoint).expect("endpoint");
        }
        let dns = DnsFaults::of(skel).expect("dns map");
        let chaos = ChaosMaps::of(skel).expect("chaos maps");
        let policy = PolicyMaps::of(skel).expect("policy maps");
        work(skel, &dns, &chaos, &policy)
    })
    .expect("the node datapath loads");
}

fn entry(rcode: u8, patterns: &[(&str, bool)]) -> DnsEntry {
    DnsEntry {
        rcode,
        probability: u32::MAX,
        patterns: patterns.iter().map(|(t, w)| (t.as_bytes().to_vec(), *w)).collect(),
        end_ns: u64::MAX,
        experiment: 5,
    }
}

/// Whether the IPv4 header's and the UDP checksum hold.
fn checksums_hold(frame: &[u8]) -> (bool, bool) {
    let ip = &frame[14..34];
    let total = u16::from_be_bytes([frame[16], frame[17]]) as usize;
    let segment = &frame[34..14 + total];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(segment);
    (weir_packet::checksum(ip, 0) == 0, weir_packet::checksum(&pseudo, 0) == 0)
}

#[test]
fn a_matching_query_is_answered_in_place_and_others_pass() {
    with_pods(|skel, dns, chaos, policy| {
        let ip = IpAddr::from(Ipv4Addr::from(WEB));
        dns.insert(ip, &entry(3, &[("api.shop.example", false), ("git?ub.", true)])).expect("insert");

        let (verdict, query_frame, answer) = send(skel, WEB, "Api.Shop.Example");
        assert_eq!(verdict, TC_ACT_REDIRECT, "back into the pod");
        let question_end = 14 + 20 + 8 + 12 + "api.shop.example".len() + 2 + 4;
        assert_eq!(answer.len(), question_end, "the question alone: the EDNS record cut");
        assert_eq!(&answer[0..6], &query_frame[6..12], "to the pod's MAC");
        assert_eq!(&answer[6..12], &query_frame[0..6]);
        assert_eq!(&answer[26..30], &DNS, "from the server it asked");
        assert_eq!(&answer[30..34], &WEB);
        assert_eq!(u16::from_be_bytes([answer[34], answer[35]]), 53);
        assert_eq!(u16::from_be_bytes([answer[36], answer[37]]), 40000);
        let dns_header = &answer[42..54];
        assert_eq!(&dns_header[0..2], &[0x12, 0x34], "the query's ID");
        assert_eq!(u16::from_be_bytes([dns_header[2], dns_header[3]]), 0x8183, "QR, RD, RA, NXDOMAIN");
        assert_eq!(&dns_header[4..12], &[0, 1, 0, 0, 0, 0, 0, 0], "one question, no records");
        assert_eq!(&answer[54..], &query_frame[54..question_end], "the question as asked");
        assert_eq!(checksums_hold(&answer), (true, true), "IPv4 and UDP checksums");
        assert_eq!(u16::from_be_bytes([answer[38], answer[39]]) as usize, question_end - 34, "UDP length");
        assert_eq!(chaos.affected(5).expect("counter").packets, 1, "counted for its experiment");
        let drops = policy.drops().expect("drops");
        assert_eq!(drops[drop_reason::CHAOS_DNS_ANSWERED as usize].packets, 1, "the query ends here");

        let (_, frame, out) = send(skel, WEB, "github.com");
        assert!(answered(&frame, &out), "a wildcard pattern with ? matches");
        for other in ["web.shop.example", "api.shop.example.org", "shop.example", "gitlab.com"] {
            let (verdict, frame, out) = send(skel, WEB, other);
            assert_eq!(verdict, TC_ACT_REDIRECT, "{other}: delivered to the server");
            assert!(!answered(&frame, &out), "{other}: not answered");
        }
        let (_, frame, out) = send(skel, DNS, "api.shop.example");
        assert!(!answered(&frame, &out), "another pod's query is untouched");

        dns.insert(ip, &entry(2, &[])).expect("insert");
        let (_, _, answer) = send(skel, WEB, "anything.example");
        assert_eq!(u16::from_be_bytes([answer[44], answer[45]]), 0x8182, "no patterns: every name, SERVFAIL");

        let ended = DnsEntry { end_ns: weir_bpf::ktime_now_ns() - 1, ..entry(3, &[]) };
        dns.insert(ip, &ended).expect("insert");
        let (_, frame, out) = send(skel, WEB, "api.shop.example");
        assert!(!answered(&frame, &out), "past its end time the kernel ignores it");
        assert_eq!(dns.remove(|slot| slot == 5).expect("remove"), 1);
    });
}

#[test]
fn the_share_of_queries_is_honoured() {
    with_pods(|skel, dns, _, _| {
        let ip = IpAddr::from(Ipv4Addr::from(WEB));
        dns.insert(ip, &DnsEntry { probability: 1 << 31, ..entry(3, &[("api.shop.example", false)]) }).expect("insert");
        let answered = (0..400)
            .filter(|_| {
                let (_, frame, out) = send(skel, WEB, "api.shop.example");
                answered(&frame, &out)
            })
            .count();
        assert!((120..=280).contains(&answered), "about half of 400 answered: {answered}");
    });
}

#[test]
fn an_ipv6_query_is_answered_with_its_checksum_right() {
    use std::net::Ipv6Addr;
    let web6: Ipv6Addr = "fd00:10:244::2".parse().expect("address");
    let dns6: Ipv6Addr = "fd00:10:244::3".parse().expect("address");
    with_pods(|skel, dns, _, _| {
        for (address, (ifindex, v4)) in [(web6, VETHS[0]), (dns6, VETHS[1])] {
            let endpoint = types::weir_endpoint {
                ifindex,
                pod_mac: WEB_MAC,
                node_mac: GATEWAY_MAC,
                identity: 300,
                policy_revision: 1,
                pod_key: u32::from_ne_bytes(v4),
                netnsid_plus_one: 0,
                flags: 0,
            };
            testrun::set_endpoint(skel, address, &endpoint).expect("endpoint");
        }
        dns.insert(IpAddr::V6(web6), &entry(2, &[("api.shop.example", false)])).expect("insert");
        let packet = Packet::eth()
            .macs(WEB_MAC, GATEWAY_MAC)
            .ipv6(web6, dns6)
            .udp(40000, 53)
            .payload(&query("api.shop.example"))
            .build();
        let outcome = testrun::run_on(&skel.progs.weir_node_tc_ingress, &packet, 1, VETHS[0].0).expect("run");
        let answer = outcome.output;
        assert_eq!(outcome.verdict, TC_ACT_REDIRECT);
        let udp_len = 8 + 12 + "api.shop.example".len() + 2 + 4;
        assert_eq!(answer.len(), 14 + 40 + udp_len, "the question alone");
        assert_eq!(u16::from_be_bytes([answer[18], answer[19]]) as usize, udp_len, "the payload length");
        assert_eq!(&answer[22..38], &dns6.octets(), "from the server");
        assert_eq!(&answer[38..54], &web6.octets(), "to the pod");
        assert_eq!(u16::from_be_bytes([answer[64], answer[65]]), 0x8182, "QR, RD, RA, SERVFAIL");
        let segment = &answer[54..];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&answer[22..54]);
        pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 17]);
        pseudo.extend_from_slice(segment);
        assert_eq!(weir_packet::checksum(&pseudo, 0), 0, "the UDP checksum holds");
    });
}
