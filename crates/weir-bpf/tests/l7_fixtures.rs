//! L7 events of the node datapath through BPF_PROG_TEST_RUN: a pod's DNS
//! query and its answer, an HTTP/1.x request and its response, become L7
//! events in the flow ring (the message's start, the response's latency)
//! and go on unchanged; other segments do not; malformed messages (cut
//! short, compressed names that loop, labels too long) never change a
//! packet and are counted as unparsed, by the kernel when it cannot tell a
//! message, by the reader when it cannot read one; the agent's switch
//! turns it all off. Prints the per-packet cost with and without.

use weir_bpf::api::l7_outcome;
use weir_bpf::policy::{decode_flow, FlowBatch, FlowEvent, L7Kind, L7Message, PolicyMaps, L7_PEER_IDENTITY_UNSET};
use weir_bpf::skel::node::{types, NodeSkel};
use weir_bpf::testrun;
use weir_packet::l7::{parse_dns, parse_http_request, parse_http_response, Unparsed};
use weir_packet::Packet;

const TC_ACT_REDIRECT: u32 = 7;
const CLIENT: [u8; 4] = [10, 244, 0, 2];
const SERVER: [u8; 4] = [10, 244, 0, 3];
const CLIENT_VETH: u32 = 4242;
const SERVER_VETH: u32 = 4343;
const TCP_PSH_ACK: u8 = 0x18;

fn with_pods(work: impl FnOnce(&NodeSkel<'_>, &PolicyMaps)) {
    testrun::with_node_datapath(|skel| {
        for (i, (ifindex, addr)) in [(CLIENT_VETH, CLIENT), (SERVER_VETH, SERVER)].into_iter().enumerate() {
            let endpoint = types::weir_endpoint {
                ifindex,
                pod_mac: [2, 0, 0, 0, 1, i as u8],
                node_mac: [2, 0, 0, 0, 2, i as u8],
                identity: 256 + i as u32,
                policy_revision: 1,
                pod_key: u32::from_ne_bytes(addr),
                netnsid_plus_one: 0,
                flags: 0,
            };
            testrun::set_endpoint(skel, addr, &endpoint).expect("endpoint");
        }
        work(skel, &PolicyMaps::of(skel).expect("policy maps"))
    })
    .expect("the node datapath loads");
}

/// Sends `payload` from one pod to the other (UDP or TCP); the verdict and
/// whether the frame came out as it went in (but for MACs and TTL).
fn send(skel: &NodeSkel<'_>, from_client: bool, udp: bool, ports: (u16, u16), payload: &[u8]) -> u32 {
    let (src, dst, veth) = if from_client { (CLIENT, SERVER, CLIENT_VETH) } else { (SERVER, CLIENT, SERVER_VETH) };
    let packet = Packet::eth().ipv4(src, dst).ttl(64);
    let packet = if udp { packet.udp(ports.0, ports.1) } else { packet.tcp(ports.0, ports.1, TCP_PSH_ACK) };
    let frame = packet.payload(payload).build();
    let out = testrun::run_on(&skel.progs.weir_node_tc_ingress, &frame, 1, veth).expect("run");
    // Delivery rewrites MACs, TTL and the IPv4 checksum, never the segment.
    assert_eq!(out.output[34..], frame[34..], "the segment goes on unchanged");
    out.verdict
}

/// The ring's records, read as the agent's reader reads them (into one
/// batch, messages copied out as they are taken), checked record by record
/// against `decode_flow`.
fn drain(skel: &NodeSkel<'_>) -> Vec<FlowEvent> {
    let mut one_by_one = Vec::new();
    let mut batch = FlowBatch::default();
    let mut ring = libbpf_rs::RingBufferBuilder::new();
    ring.add(&skel.maps.flow_ring, |raw: &[u8]| {
        let decoded = decode_flow(raw);
        let taken = batch.push_record(raw);
        // A panic here would abort the process (it would cross libbpf's C).
        if taken != decoded.is_some() {
            eprintln!("the batch took a record decode_flow did not, or the reverse: {decoded:?}");
            std::process::exit(1);
        }
        // An L7 record is as long as its message (bpf/api/l7.h).
        if let Some(message) = decoded.as_ref().and_then(|e| e.l7.as_deref()) {
            let expected = std::mem::offset_of!(types::weir_l7_event, data) + message.data.len();
            if raw.len() != expected {
                eprintln!(
                    "an L7 record of {} bytes for a {}-byte message (expected {expected})",
                    raw.len(),
                    message.data.len()
                );
                std::process::exit(1);
            }
        }
        one_by_one.extend(decoded);
        0
    })
    .expect("ring");
    ring.build().expect("ring").consume().expect("consume");
    let events: Vec<FlowEvent> = batch.drain().collect();
    assert_eq!(events, one_by_one, "a batch gives what decode_flow gives");
    assert!(batch.is_empty());
    events
}

/// The L7 events, with their messages.
fn l7(events: &[FlowEvent]) -> Vec<(&FlowEvent, &L7Message)> {
    events.iter().filter_map(|e| e.l7.as_deref().map(|m| (e, m))).collect()
}

fn outcome(maps: &PolicyMaps, code: u32) -> u64 {
    maps.l7_outcomes().expect("outcomes")[code as usize].1
}

fn question(id: u16, flags: u16, name: &[u8]) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    m.extend_from_slice(name);
    m.extend_from_slice(&[0, 1, 0, 1]);
    m
}

const NAME: &[u8] = b"\x03web\x07example\x03com\x00";

#[test]
fn a_dns_query_and_its_answer_are_l7_events_with_the_latency() {
    with_pods(|skel, maps| {
        let query = question(0x1234, 0x0100, NAME);
        assert_eq!(send(skel, true, true, (40000, 53), &query), TC_ACT_REDIRECT);
        let mut answer = question(0x1234, 0x8180, NAME);
        answer[7] = 1; // one answer: web.example.com A 10.0.0.7, TTL 30
        answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 10, 0, 0, 7]);
        assert_eq!(send(skel, false, true, (53, 40000), &answer), TC_ACT_REDIRECT);
        // An answer to a query never seen: reported, without a latency.
        let stray = question(0x9999, 0x8183, NAME);
        send(skel, false, true, (53, 40000), &stray);

        let events = drain(skel);
        let l7 = l7(&events);
        assert_eq!(l7.len(), 3, "{events:#?}");
        let (q, a, s) = (l7[0].1, l7[1].1, l7[2].1);
        assert_eq!((q.kind, q.response, q.latency_ns), (L7Kind::Dns, false, 0));
        assert_eq!(q.data, query, "the message whole");
        assert_eq!((l7[0].0.src, l7[0].0.dport, l7[0].0.src_identity), (CLIENT.into(), 53, 256));
        // The peer's identity is the agent's to find (bpf/api/l7.h).
        assert_eq!((l7[0].0.dst_identity, l7[1].0.src_identity), (L7_PEER_IDENTITY_UNSET, L7_PEER_IDENTITY_UNSET));
        assert_eq!((a.kind, a.response), (L7Kind::Dns, true));
        assert!(a.latency_ns > 0, "matched with its query");
        assert_eq!((l7[1].0.src, l7[1].0.dst, l7[1].0.dst_identity), (SERVER.into(), CLIENT.into(), 256));
        let read = parse_dns(&a.data).expect("the answer reads");
        assert_eq!((read.query.as_str(), read.rcode, read.ttl), ("web.example.com.", 0, 30));
        assert_eq!(read.ips, vec![std::net::IpAddr::from([10, 0, 0, 7])]);
        assert_eq!((s.latency_ns, parse_dns(&s.data).expect("reads").rcode), (0, 3));
        assert_eq!(outcome(maps, l7_outcome::REPORTED), 3);
        assert_eq!(outcome(maps, l7_outcome::UNMATCHED), 1);
    });
}

#[test]
fn http_requests_and_responses_are_l7_events_and_other_segments_are_not() {
    with_pods(|skel, maps| {
        let request = b"GET /missing?x=1 HTTP/1.1\r\nHost: web:8080\r\nUser-Agent: t\r\n\r\n";
        send(skel, true, false, (41000, 8080), request);
        send(skel, false, false, (8080, 41000), b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        // Body bytes, TLS, HTTP/2's preface: no L7 event.
        send(skel, true, false, (41000, 8080), b"key=value&other=1");
        send(skel, true, false, (41000, 443), &[0x16, 3, 1, 0, 0x50, 1, 0, 0, 0x4c, 3, 3]);
        send(skel, true, false, (41000, 8080), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

        let events = drain(skel);
        let l7 = l7(&events);
        assert_eq!(l7.len(), 2, "{events:#?}");
        let (req, resp) = (l7[0].1, l7[1].1);
        assert_eq!((req.kind, req.response), (L7Kind::Http, false));
        let head = parse_http_request(&req.data).expect("the request reads");
        assert_eq!((head.method, head.path, head.host), ("GET", "/missing?x=1", "web:8080"));
        assert_eq!((resp.kind, resp.response), (L7Kind::Http, true));
        assert!(resp.latency_ns > 0, "matched per TCP 4-tuple");
        assert_eq!(parse_http_response(&resp.data).expect("the status reads").code, 404);
        assert_eq!(outcome(maps, l7_outcome::REPORTED), 2);
        assert_eq!(outcome(maps, l7_outcome::UNPARSED), 0);
        assert_eq!(outcome(maps, l7_outcome::TRUNCATED), 0);
    });
}

#[test]
fn a_message_longer_than_the_copy_is_reported_cut_short_and_counted() {
    with_pods(|skel, maps| {
        let cookie = "c".repeat(900);
        let request = format!("GET /big HTTP/1.1\r\nHost: web\r\nCookie: {cookie}\r\n\r\n");
        send(skel, true, false, (41001, 8080), request.as_bytes());
        let events = drain(skel);
        let l7 = l7(&events);
        assert_eq!(l7.len(), 1, "{events:#?}");
        assert_eq!(l7[0].1.data.len(), 512, "the copy's length (WEIR_L7_PAYLOAD_BYTES)");
        assert_eq!(outcome(maps, l7_outcome::REPORTED), 1);
        assert_eq!(outcome(maps, l7_outcome::TRUNCATED), 1);
    });
}

#[test]
fn malformed_messages_change_no_packet_and_are_counted_unparsed() {
    with_pods(|skel, maps| {
        // The kernel cannot tell a message: a header cut short, an answer
        // sent as a query.
        send(skel, true, true, (40000, 53), &[0x12, 0x34, 0x01]);
        send(skel, true, true, (40000, 53), &question(1, 0x8180, NAME));
        assert_eq!(outcome(maps, l7_outcome::UNPARSED), 2);
        // The kernel reports them; the reader refuses each by cause.
        let looped = question(2, 0x0100, &[0xc0, 12]);
        let mut huge = question(3, 0x0100, &[0x50]);
        huge.extend_from_slice(&[b'a'; 600]);
        let mut long = Vec::new();
        for _ in 0..5 {
            long.push(63);
            long.extend_from_slice(&[b'a'; 63]);
        }
        long.push(0);
        let long = question(4, 0x0100, &long);
        let cut = question(5, 0x0100, &NAME[..9]);
        let mut lost_answer = question(6, 0x8180, NAME);
        lost_answer[7] = 1; // an answer counted but cut off
        lost_answer.extend_from_slice(&[0xc0, 12, 0, 1]);
        for message in [&looped, &huge, &long, &cut] {
            assert_eq!(send(skel, true, true, (40000, 53), message), TC_ACT_REDIRECT);
        }
        send(skel, false, true, (53, 40000), &lost_answer);
        send(skel, true, false, (41000, 80), b"GET /no-end-of-line HTTP/1.1");
        send(skel, false, false, (80, 41000), b"HTTP/1.1 2000 Strange\r\n");

        let events = drain(skel);
        let l7 = l7(&events);
        assert_eq!(l7.len(), 7, "{events:#?}");
        let read = |i: usize| parse_dns(&l7[i].1.data);
        assert_eq!(read(0), Err(Unparsed::BadPointer));
        assert_eq!(read(1), Err(Unparsed::BadLabel(0x50)));
        assert_eq!(l7[1].1.data.len(), 512, "a copy is at most 512 bytes");
        assert_eq!(read(2), Err(Unparsed::NameTooLong));
        assert_eq!(read(3), Err(Unparsed::Truncated("a label")));
        assert_eq!(read(4).expect("the question reads").answers_cut, 1);
        assert_eq!(parse_http_request(&l7[5].1.data), Err(Unparsed::Truncated("request")));
        assert_eq!(parse_http_response(&l7[6].1.data), Err(Unparsed::NotHttp("status")));
    });
}

#[test]
fn the_agents_switch_turns_l7_events_off() {
    with_pods(|skel, maps| {
        let query = question(0x1234, 0x0100, NAME);
        let request = b"GET / HTTP/1.1\r\nHost: web\r\n\r\n";
        let frame = |what: u8| {
            let p = Packet::eth().ipv4(CLIENT, SERVER).ttl(64);
            match what {
                0 => p.udp(40000, 53).payload(&query).build(),
                1 => p.tcp(41000, 8080, TCP_PSH_ACK).payload(request).build(),
                _ => p.tcp(41000, 8080, TCP_PSH_ACK).payload(&[b'x'; 1000]).build(),
            }
        };
        let prog = &skel.progs.weir_node_tc_ingress;
        // Once (a figure for docs/observe.md, not an assertion): the pod
        // path's cost per packet with L7 events on and off.
        let cost = |what: u8| {
            let mut samples: Vec<f64> = (0..11)
                .map(|_| {
                    let start = std::time::Instant::now();
                    testrun::run_on(prog, &frame(what), 200, CLIENT_VETH).expect("run");
                    let ns = start.elapsed().as_nanos() as f64 / 200.0;
                    // Each run reports an event: drained so the ring never fills.
                    drain(skel);
                    ns
                })
                .collect();
            samples.sort_by(f64::total_cmp);
            samples[samples.len() / 2]
        };
        testrun::run_on(prog, &frame(0), 1, CLIENT_VETH).expect("run");
        send(skel, true, false, (41000, 8080), request);
        assert_eq!(l7(&drain(skel)).len(), 2);
        let on = (cost(0), cost(1), cost(2));
        maps.set_l7_enabled(false).expect("switch");
        send(skel, true, true, (40000, 53), &query);
        send(skel, true, false, (41000, 8080), request);
        assert!(l7(&drain(skel)).is_empty(), "nothing while off");
        let off = (cost(0), cost(1), cost(2));
        println!(
            "weir_node_tc_ingress ns/packet from a pod: DNS query on {:.0} off {:.0}; HTTP request on {:.0} off {:.0}; other TCP data on {:.0} off {:.0}",
            on.0, off.0, on.1, off.1, on.2, off.2
        );
        maps.set_l7_enabled(true).expect("switch");
        send(skel, true, true, (40000, 53), &query);
        assert_eq!(l7(&drain(skel)).len(), 1, "on again");
    });
}

#[test]
fn an_ipv6_query_and_its_aaaa_answer_are_l7_events() {
    use std::net::{IpAddr, Ipv6Addr};
    let client6: Ipv6Addr = "fd00:10:244::2".parse().expect("address");
    let server6: Ipv6Addr = "fd00:10:244::3".parse().expect("address");
    with_pods(|skel, _| {
        for (address, ifindex, v4, identity) in
            [(client6, CLIENT_VETH, CLIENT, 256), (server6, SERVER_VETH, SERVER, 257)]
        {
            let endpoint = types::weir_endpoint {
                ifindex,
                pod_mac: [2, 0, 0, 0, 1, 0],
                node_mac: [2, 0, 0, 0, 2, 0],
                identity,
                policy_revision: 1,
                pod_key: u32::from_ne_bytes(v4),
                netnsid_plus_one: 0,
                flags: 0,
            };
            testrun::set_endpoint(skel, address, &endpoint).expect("endpoint");
        }
        let run = |src: Ipv6Addr, dst: Ipv6Addr, ports: (u16, u16), payload: &[u8], veth: u32| {
            let frame = Packet::eth().ipv6(src, dst).ttl(64).udp(ports.0, ports.1).payload(payload).build();
            testrun::run_on(&skel.progs.weir_node_tc_ingress, &frame, 1, veth).expect("run").verdict
        };
        let mut query = question(7, 0x0100, NAME);
        let qtype = query.len() - 3;
        query[qtype] = 28; // AAAA
        assert_eq!(run(client6, server6, (40000, 53), &query, CLIENT_VETH), TC_ACT_REDIRECT);
        let mut answer = query.clone();
        answer[2] = 0x81;
        answer[3] = 0x80;
        answer[7] = 1;
        answer.extend_from_slice(&[0xc0, 12, 0, 28, 0, 1, 0, 0, 0, 60, 0, 16]);
        answer.extend_from_slice(&server6.octets());
        assert_eq!(run(server6, client6, (53, 40000), &answer, SERVER_VETH), TC_ACT_REDIRECT);
        let events = drain(skel);
        let l7 = l7(&events);
        assert_eq!(l7.len(), 2, "{events:#?}");
        assert_eq!((l7[0].0.src, l7[0].1.response), (IpAddr::V6(client6), false));
        assert_eq!((l7[1].0.dst, l7[1].1.response), (IpAddr::V6(client6), true));
        assert!(l7[1].1.latency_ns > 0, "matched over IPv6");
        let read = parse_dns(&l7[1].1.data).expect("reads");
        assert_eq!((read.qtype, read.ips.clone(), read.ttl), (28, vec![IpAddr::V6(server6)], 60));
    });
}
