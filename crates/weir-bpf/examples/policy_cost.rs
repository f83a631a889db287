//! Benchmark: what network policy costs a packet into a pod, through
//! BPF_PROG_TEST_RUN on the node datapath's tc program, with no policy and
//! with a policy of 10,000 identities (10,000 ipcache entries, 10,000
//! policy-map entries), side by side. Three packets: one of an established
//! flow (conntrack hit), the first packet of a new flow (the policy map is
//! consulted), and one the policy refuses (consulted every time, dropped,
//! reported). Times are the kernel's own per-run figures, medians.
//! Run as root: `cargo run --release -p weir-bpf --example policy_cost [IDENTITIES]`.

use std::net::Ipv4Addr;

use weir_bpf::policy::PolicyMaps;
use weir_bpf::skel::node::types;
use weir_bpf::testrun;
use weir_packet::{Packet, TCP_ACK, TCP_SYN};
use weir_policy::compile::{EndpointPolicy, IpcacheEntry, MapEntry};
use weir_policy::Direction;

const API: [u8; 4] = [10, 244, 1, 2];
const API_VETH: u32 = 4242;
const UPLINK: u32 = 7;
const ROUNDS: usize = 2000;
const REPEAT: u32 = 200;

fn peer(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i)
}

fn median(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    v[v.len() / 2] as f64
}

struct Costs {
    established: f64,
    new_flow: f64,
    denied: Option<f64>,
}

/// `sports` starts the new flows' source ports: each measurement its own, so no flow is known beforehand.
fn measure(
    skel: &weir_bpf::skel::node::NodeSkel<'_>,
    allowed: Ipv4Addr,
    refused: Option<Ipv4Addr>,
    sports: u16,
) -> Costs {
    let prog = &skel.progs.weir_node_tc_ingress;
    let mut ring = libbpf_rs::RingBufferBuilder::new();
    ring.add(&skel.maps.flow_ring, |_: &[u8]| 0).expect("ring");
    let ring = ring.build().expect("ring");
    let macs = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    // TTL 255 stays above 1 for REPEAT runs of the same (rewritten) packet.
    let packet = |src: Ipv4Addr, sport: u16, flags: u8| {
        Packet::eth().macs(macs.0, macs.1).ipv4(src.octets(), API).ttl(255).tcp(sport, 80, flags).build()
    };
    let run = |p: &[u8], repeat: u32| testrun::run_on(prog, p, repeat, UPLINK).expect("run");

    let mut new_flow = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        new_flow.push(run(&packet(allowed, sports + i as u16, TCP_SYN), 1).duration_ns);
        if i % 500 == 0 {
            ring.consume().expect("drain");
        }
    }
    let established_packet = packet(allowed, sports, TCP_ACK);
    let established: Vec<u64> = (0..ROUNDS / 10).map(|_| run(&established_packet, REPEAT).duration_ns).collect();
    let denied = refused.map(|src| {
        let p = packet(src, 20000, TCP_SYN);
        median(
            (0..ROUNDS / 10)
                .map(|_| {
                    let d = run(&p, REPEAT).duration_ns;
                    ring.consume().expect("drain");
                    d
                })
                .collect(),
        )
    });
    Costs { established: median(established), new_flow: median(new_flow), denied }
}

fn main() {
    let identities: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    testrun::with_node_datapath(|skel| {
        let endpoint = types::weir_endpoint {
            ifindex: API_VETH,
            pod_mac: [2; 6],
            node_mac: [3; 6],
            identity: 300,
            policy_revision: 1,
            pod_key: u32::from_ne_bytes(API),
            netnsid_plus_one: 0,
            flags: 0,
        };
        testrun::set_endpoint(skel, API, &endpoint).expect("endpoint");
        let maps = PolicyMaps::of(skel).expect("maps");
        let (allowed, refused) = (peer(identities / 2), peer(identities + 1));

        let none = measure(skel, allowed, None, 10000);

        // 10,000 identities: each in the ipcache, each allowed on TCP 80
        // (and one unknown address, refused).
        let mut ipcache: Vec<IpcacheEntry> = (0..=identities + 1)
            .map(|i| IpcacheEntry {
                cidr: std::net::IpAddr::V4(peer(i)).into(),
                identity: 1000 + i,
                tunnel_endpoint: None,
                address_identity: None,
            })
            .collect();
        ipcache.push(IpcacheEntry {
            cidr: ipnet::IpNet::V4(Default::default()),
            identity: 2,
            tunnel_endpoint: None,
            address_identity: None,
        });
        maps.set_ipcache(&ipcache).expect("ipcache");
        let entries: Vec<MapEntry> = (0..identities)
            .map(|i| MapEntry {
                identity: 1000 + i,
                direction: Direction::Ingress,
                protocol: 6,
                port: 80,
                port_prefix: 16,
                deny: false,
                rule: 1,
            })
            .collect();
        let policy = EndpointPolicy { identity: 300, ingress_enforced: true, egress_enforced: false, entries };
        let start = std::time::Instant::now();
        maps.install(Ipv4Addr::from(API), &policy, 1).expect("install");
        let install = start.elapsed();
        let with = measure(skel, allowed, Some(refused), 30000);

        println!("BPF_PROG_TEST_RUN of the node datapath's tc ingress, a TCP packet into a local pod;");
        println!(
            "kernel-measured ns per packet, median ({ROUNDS} new flows; {} runs of {REPEAT} otherwise)",
            ROUNDS / 10
        );
        println!("policy map of {identities} identities installed in {:.1} ms\n", install.as_secs_f64() * 1e3);
        println!("{:<34} {:>10} {:>16} {:>8}", "packet", "no policy", &format!("{identities} ids"), "ratio");
        for (name, a, b) in [
            ("established flow (conntrack hit)", none.established, with.established),
            ("new flow (policy map consulted)", none.new_flow, with.new_flow),
        ] {
            println!("{name:<34} {a:>10.0} {b:>16.0} {:>7.2}x", b / a);
        }
        if let Some(d) = with.denied {
            println!("{:<34} {:>10} {d:>16.0} {:>7.2}x", "refused (dropped and reported)", "-", d / none.established);
        }
    })
    .expect("load the node datapath");
}
