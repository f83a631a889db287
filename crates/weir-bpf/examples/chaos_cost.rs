//! Benchmark: what chaos costs a pod's packet, through BPF_PROG_TEST_RUN on
//! the node datapath's tc ingress program as it runs on the sending pod's
//! veth (an established TCP flow to another local pod: chaos, egress
//! conntrack, the pod path's delivery with bpf_redirect_peer). Three
//! private copies side by side, timed in interleaved rounds:
//!
//! - the node datapath built without chaos (`-DWEIR_NO_CHAOS`), the baseline;
//! - the shipped build with no experiment (goal: at most 1.02x the baseline);
//! - the shipped build with one 30% loss experiment between other pods,
//!   written as the agent writes it (goal: at most 1.05x for this untargeted
//!   packet);
//!
//! and, for what a selected pod's other traffic pays, a packet from a pod
//! the experiment selects to a pod it does not, against the baseline's
//! figure for the same packet (no goal: the source filter lets it through
//! to the pairs' hash lookup, which misses).
//!
//! Each call runs the packet REPEAT times (TTL 255 keeps every repeat on the
//! delivery path, though each one lowers it); the figures are the kernel's
//! own per-packet times, the median of the rounds' means, and the ratios
//! the median of each round's ratios.
//! Run as root: `cargo run --release -p weir-bpf --example chaos_cost [CALLS_PER_ROUND] [ROUNDS]`.

use std::net::{IpAddr, Ipv4Addr};

use weir_bpf::chaos::{ChaosEntry, ChaosFault, ChaosMaps};
use weir_bpf::skel::node::types;
use weir_bpf::testrun;
use weir_packet::{Packet, TCP_ACK};

const TC_ACT_REDIRECT: u32 = 7;
const REPEAT: u32 = 200;
const WEB: [u8; 4] = [10, 244, 0, 2];
const DB: [u8; 4] = [10, 244, 0, 3];
const CACHE: [u8; 4] = [10, 244, 0, 4];
const QUEUE: [u8; 4] = [10, 244, 0, 5];
/// The pods of the node and their veths' ifindexes.
const PODS: [(u32, [u8; 4]); 4] = [(4242, WEB), (4343, DB), (4444, CACHE), (4545, QUEUE)];
const WEB_VETH: u32 = 4242;
const DB_VETH: u32 = 4343;

fn endpoints() -> impl Iterator<Item = ([u8; 4], types::weir_endpoint)> {
    PODS.into_iter().enumerate().map(|(i, (ifindex, addr))| {
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
        (addr, endpoint)
    })
}

/// A 30% loss experiment (Chaos Mesh `direction: both`) between the pods
/// app=cache and app=queue select and app=db: one entry per (source,
/// destination) pair, as the agent writes them. WEB's packets are not its.
fn loss_between_other_pods(chaos: &ChaosMaps) {
    let entry = ChaosEntry {
        fault: ChaosFault::Loss { probability: (0.30 * 4294967296.0) as u32, correlation: 0 },
        end_ns: weir_bpf::ktime_now_ns() + 3_600_000_000_000,
        experiment: 0,
    };
    let ip = |a: [u8; 4]| IpAddr::from(Ipv4Addr::from(a));
    for pod in [CACHE, QUEUE] {
        chaos.insert(ip(pod), ip(DB), &entry).expect("chaos pair");
        chaos.insert(ip(DB), ip(pod), &entry).expect("chaos pair");
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One measured line: a program and the packet a pod sends it.
struct Row<'a, 'obj> {
    name: &'static str,
    prog: &'a libbpf_rs::ProgramMut<'obj>,
    packet: &'a [u8],
    /// The sending pod's veth.
    veth: u32,
    /// The row of the build without chaos for the same packet.
    baseline: usize,
    goal: Option<f64>,
}

/// Mean kernel ns per packet over `calls` calls of REPEAT packets.
fn round(row: &Row<'_, '_>, calls: u32) -> f64 {
    let mut total = 0u64;
    for _ in 0..calls {
        let out = testrun::run_on(row.prog, row.packet, REPEAT, row.veth).expect("test run");
        assert_eq!(out.verdict, TC_ACT_REDIRECT, "every repeat delivered into the pod");
        total += out.duration_ns;
    }
    total as f64 / f64::from(calls)
}

fn main() {
    let calls: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2000).max(1);
    let rounds: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(15).max(1);
    let packet = Packet::eth()
        .macs([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(WEB, DB)
        .ttl(255)
        .tcp(40000, 5432, TCP_ACK)
        .payload(&[0x5a; 64])
        .build();
    let from_db = Packet::eth()
        .macs([2, 0, 0, 0, 0, 3], [2, 0, 0, 0, 0, 4])
        .ipv4(DB, WEB)
        .ttl(255)
        .tcp(5432, 40000, TCP_ACK)
        .payload(&[0x5a; 64])
        .build();

    testrun::with_node_datapath_without_chaos(|baseline| {
        for (addr, endpoint) in endpoints() {
            testrun::set_object_endpoint(baseline, addr, &endpoint).expect("endpoint");
        }
        let baseline_prog = testrun::object_program(baseline, "weir_node_tc_ingress").expect("tc ingress program");
        testrun::with_node_datapath(|idle| {
            testrun::with_node_datapath(|lossy| {
                for (addr, endpoint) in endpoints() {
                    testrun::set_endpoint(idle, addr, &endpoint).expect("endpoint");
                    testrun::set_endpoint(lossy, addr, &endpoint).expect("endpoint");
                }
                let lossy_chaos = ChaosMaps::of(lossy).expect("chaos maps");
                loss_between_other_pods(&lossy_chaos);
                let web = &packet;
                let db = &from_db;
                let rows = [
                    Row {
                        name: "without chaos: web -> db",
                        prog: &baseline_prog,
                        packet: web,
                        veth: WEB_VETH,
                        baseline: 0,
                        goal: None,
                    },
                    Row {
                        name: "without chaos: db -> web",
                        prog: &baseline_prog,
                        packet: db,
                        veth: DB_VETH,
                        baseline: 1,
                        goal: None,
                    },
                    Row {
                        name: "chaos, no experiment: web -> db",
                        prog: &idle.progs.weir_node_tc_ingress,
                        packet: web,
                        veth: WEB_VETH,
                        baseline: 0,
                        goal: Some(1.02),
                    },
                    Row {
                        name: "chaos, loss cache,queue<->db: web -> db",
                        prog: &lossy.progs.weir_node_tc_ingress,
                        packet: web,
                        veth: WEB_VETH,
                        baseline: 0,
                        goal: Some(1.05),
                    },
                    Row {
                        name: "chaos, loss cache,queue<->db: db -> web",
                        prog: &lossy.progs.weir_node_tc_ingress,
                        packet: db,
                        veth: DB_VETH,
                        baseline: 1,
                        goal: None,
                    },
                ];
                // One packet each first: the flow enters each copy's
                // conntrack, and every copy leaves the same bytes.
                let outputs: Vec<_> = rows
                    .iter()
                    .map(|row| {
                        let out = testrun::run_on(row.prog, row.packet, 1, row.veth).expect("test run");
                        assert_eq!(out.verdict, TC_ACT_REDIRECT, "{}: delivered into the pod", row.name);
                        out.output
                    })
                    .collect();
                for (i, row) in rows.iter().enumerate() {
                    assert!(outputs[i] == outputs[row.baseline], "{}: the baseline's packet delivered", row.name);
                }

                let mut ns = vec![Vec::with_capacity(rounds); rows.len()];
                let mut ratios = vec![Vec::with_capacity(rounds); rows.len()];
                for r in 0..rounds {
                    let mut this_round = [0.0; 5];
                    // Each round starts with a different row.
                    for k in 0..rows.len() {
                        let i = (r + k) % rows.len();
                        this_round[i] = round(&rows[i], calls);
                    }
                    for (i, row) in rows.iter().enumerate() {
                        ns[i].push(this_round[i]);
                        ratios[i].push(this_round[i] / this_round[row.baseline]);
                    }
                }
                assert_eq!(
                    lossy_chaos.affected(0).expect("counter").packets,
                    0,
                    "the loss experiment never touched the untargeted packets"
                );

                println!(
                    "BPF_PROG_TEST_RUN on tc ingress of the sending pod's veth, TCP to a local pod (established);\n\
                     {calls} calls of {REPEAT} packets per round, {rounds} interleaved rounds; kernel ns per packet,\n\
                     and the ratio to the build without chaos for the same packet"
                );
                for (i, row) in rows.iter().enumerate() {
                    let ratio = median(ratios[i].clone());
                    let goal = row.goal.map(|g| format!("  (goal <= {g:.2}x)")).unwrap_or_default();
                    println!("{:<42} {:>8.1} ns  {ratio:>6.3}x{goal}", row.name, median(ns[i].clone()));
                }
            })
            .expect("load the node datapath");
        })
        .expect("load the node datapath");
    })
    .expect("load the node datapath without chaos");
}
