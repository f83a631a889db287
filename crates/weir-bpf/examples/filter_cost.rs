//! Benchmark: where the packet filter's nanoseconds go. From one run,
//! through BPF_PROG_TEST_RUN, rounds interleaved so that load on the machine
//! weighs on every row alike (median of the rounds of the kernel's figure,
//! whole ns/packet, which leaves out time the run was scheduled out):
//! - a trivial XDP_PASS program;
//! - the floor: parse, build one shape's key, one hash lookup in a map of
//!   the same 10k keys (`bpf/progs/bench.bpf.c`);
//! - the node XDP program with no rules (parse, traffic accounting, filter
//!   with nothing to look up);
//! - the node program with 10k CIDR/24+port rules of one shape;
//! - the node program with 10k rules over 16 shapes (/16 to /31 sources).
//!
//! Each against a packet that misses every rule and one that hits rule 0.
//! Before timing, each row's verdicts are checked (the floor's hit finds its
//! key and drops, as the node program's hits do); after it, rule 0's counter
//! and the `filter_rule` drop reason must have counted every hit, so the hit
//! rows pay for everything a real drop does.
//! Run as root: `cargo run -p weir-bpf --example filter_cost [REPEAT] [ROUNDS]`
//! (`scripts/bench/filter-cost.sh`).

use weir_bpf::api::drop_reason;
use weir_bpf::filter::FilterMaps;
use weir_bpf::testrun::{insert_floor_key, run_repeated, with_bench_programs, with_node_datapath, XDP_DROP, XDP_PASS};
use weir_filter::spec::{Action, MatchSpec, PortRange, Protocol};
use weir_filter::{compile::compile, plan::plan, Applied, RuleSpec};
use weir_packet::Packet;

/// Rule i drops UDP to port 1000 + i % 1000 from the i-th /24 of 10.0.0.0/7,
/// its prefix cut to `prefix`.
fn cidr_port_rule(i: u32, prefix: u8) -> RuleSpec {
    let net = 0x0A00_0000u32 + (i << 8);
    let source = format!("{}/{prefix}", std::net::Ipv4Addr::from(net));
    RuleSpec {
        name: format!("r{i}"),
        priority: 1000,
        matches: MatchSpec {
            source: Some(source.parse::<ipnet::IpNet>().expect("cidr").trunc()),
            protocol: Some(Protocol::UDP),
            destination_port: Some(PortRange { low: 1000 + (i % 1000) as u16, high: 1000 + (i % 1000) as u16 }),
            ..Default::default()
        },
        expression: None,
        action: Action::Drop,
        rate_limit: None,
    }
}

/// Applies `rules`; returns the slot of rule 0, the one the hit packet hits.
fn apply(node: &weir_bpf::skel::node::NodeSkel<'_>, rules: &[RuleSpec]) -> u32 {
    let maps = FilterMaps::from_skel(node).expect("maps");
    let planned = plan(&Applied::default(), rules, |_| None).expect("plan");
    maps.execute(&planned.ops).expect("apply");
    planned.result.rules[&rules[0].name].slot
}

/// Rule `slot`'s packets and the packets dropped for `filter_rule`.
fn hit_counts(node: &weir_bpf::skel::node::NodeSkel<'_>, slot: u32) -> (u64, u64) {
    let maps = FilterMaps::from_skel(node).expect("maps");
    let rule = maps.counters(&[slot]).expect("rule counters")[0].packets;
    let drops = maps.drops().expect("drops")[drop_reason::FILTER_RULE as usize].packets;
    (rule, drops)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let repeat: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(7);
    // Passes every rule set: its source is outside 10.0.0.0/7.
    let miss = Packet::eth().ipv4([192, 168, 1, 1], [10, 0, 0, 1]).udp(5000, 1000).build();
    // Hits rule 0 of every rule set.
    let hit = Packet::eth().ipv4([10, 0, 0, 9], [10, 0, 0, 1]).udp(5000, 1000).build();
    let one_shape: Vec<RuleSpec> = (0..10_000).map(|i| cidr_port_rule(i, 24)).collect();
    let sixteen: Vec<RuleSpec> = (0..10_000).map(|i| cidr_port_rule(i, 16 + (i % 16) as u8)).collect();

    with_bench_programs(|bench| {
        for rule in &one_shape {
            let key = compile(rule, |_| None).expect("compiles").key.expect("field rule");
            insert_floor_key(bench, &key).expect("floor key");
        }
        with_node_datapath(|empty| {
            with_node_datapath(|one| {
                let one_slot = apply(one, &one_shape);
                with_node_datapath(|many| {
                    let many_slot = apply(many, &sixteen);
                    let rows: [(&str, &libbpf_rs::ProgramMut<'_>); 5] = [
                        ("trivial XDP_PASS", &bench.progs.weir_bench_trivial),
                        ("floor: parse + 1 hash lookup", &bench.progs.weir_bench_floor),
                        ("node, no rules", &empty.progs.weir_node_ingress),
                        ("node, 10k rules, 1 shape", &one.progs.weir_node_ingress),
                        ("node, 10k rules, 16 shapes", &many.progs.weir_node_ingress),
                    ];
                    // The verdicts each row must give (miss, hit): the hits must really hit.
                    let expected = [
                        (XDP_PASS, XDP_PASS),
                        (XDP_PASS, XDP_DROP),
                        (XDP_PASS, XDP_PASS),
                        (XDP_PASS, XDP_DROP),
                        (XDP_PASS, XDP_DROP),
                    ];
                    for ((label, prog), want) in rows.iter().zip(expected) {
                        let got = (
                            run_repeated(prog, &miss, 1).expect("test run").verdict,
                            run_repeated(prog, &hit, 1).expect("test run").verdict,
                        );
                        assert_eq!(got, want, "{label}: verdicts (miss, hit)");
                    }
                    let before = [hit_counts(one, one_slot), hit_counts(many, many_slot)];
                    let mut samples = vec![[Vec::new(), Vec::new()]; rows.len()];
                    for _ in 0..rounds {
                        for (row, (_, prog)) in rows.iter().enumerate() {
                            for (which, packet) in [&miss, &hit].into_iter().enumerate() {
                                // The kernel's own figure: time the run was scheduled out is not in it.
                                let run = run_repeated(prog, packet, repeat).expect("test run");
                                samples[row][which].push(run.duration_ns as f64);
                            }
                        }
                    }
                    // Every timed hit was counted, on its rule and as a drop with its reason.
                    let hits = u64::from(repeat) * rounds as u64;
                    for ((label, before), after) in ["1 shape", "16 shapes"]
                        .iter()
                        .zip(before)
                        .zip([hit_counts(one, one_slot), hit_counts(many, many_slot)])
                    {
                        assert_eq!(
                            (after.0 - before.0, after.1 - before.1),
                            (hits, hits),
                            "{label}: rule 0's packets and filter_rule drops over the timed hits"
                        );
                    }
                    let median = |v: &mut Vec<f64>| {
                        v.sort_by(f64::total_cmp);
                        v[v.len() / 2]
                    };
                    let medians: Vec<[f64; 2]> = samples.iter_mut().map(|[m, h]| [median(m), median(h)]).collect();
                    let [floor_miss, floor_hit] = medians[1];
                    let [one_miss, one_hit] = medians[3];
                    println!(
                        "BPF_PROG_TEST_RUN, repeat {repeat}, median of {rounds} interleaved rounds, kernel ns/packet"
                    );
                    println!(
                        "{:<30} {:>8} {:>8} {:>11} {:>11} {:>12} {:>12}",
                        "program", "miss", "hit", "miss/floor", "hit/floor", "miss/1shape", "hit/1shape"
                    );
                    for ((label, _), [m, h]) in rows.iter().zip(&medians) {
                        println!(
                            "{label:<30} {m:>8.2} {h:>8.2} {:>10.2}x {:>10.2}x {:>11.2}x {:>11.2}x",
                            m / floor_miss,
                            h / floor_hit,
                            m / one_miss,
                            h / one_hit
                        );
                    }
                    let [trivial, _] = medians[0];
                    let [empty_miss, _] = medians[2];
                    println!("\nwhere the ns of a miss go (1 shape):");
                    println!("  XDP entry and exit (trivial)            {trivial:>7.1}");
                    println!("  parse + key + 1 hash lookup (floor-trivial) {:>7.1}", floor_miss - trivial);
                    println!("  traffic accounting, filter setup (no rules - trivial) {:>7.1}", empty_miss - trivial);
                    println!("  rule lookup (1 shape - no rules)         {:>7.1}", one_miss - empty_miss);
                    println!("  hit over miss: rule, residual, counters, drop (1 shape) {:>7.1}", one_hit - one_miss);
                })
                .expect("load node datapath");
            })
            .expect("load node datapath");
        })
        .expect("load node datapath");
    })
    .expect("load the benchmark programs");
}
