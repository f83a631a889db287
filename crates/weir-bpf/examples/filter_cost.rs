//! Benchmark: the node XDP program's per-packet cost with 0, 10, 1k, 10k and
//! 100k CIDR+port filter rules, against a trivial XDP_PASS program, side by
//! side through BPF_PROG_TEST_RUN; then with rules spread over 16 shapes.
//! Run as root: `cargo run --release -p weir-bpf --example filter_cost`.

use std::time::Instant;

use weir_bpf::filter::FilterMaps;
use weir_bpf::testrun::{with_node_datapath, with_trivial_xdp};
use weir_filter::spec::{Action, MatchSpec, PortRange, Protocol};
use weir_filter::{plan::plan, Applied, RuleSpec};
use weir_packet::Packet;

const REPEAT: u32 = 2_000_000;

fn ns_per_packet(prog: &libbpf_rs::ProgramMut<'_>, packet: &[u8]) -> f64 {
    weir_bpf::testrun::ns_per_packet(prog, packet, REPEAT, 5).expect("test run")
}

/// Rule i drops UDP to port 1000 + i % 1000 from the i-th /24 of 10.0.0.0/7.
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

fn main() {
    // Passes every rule set: its source is outside 10.0.0.0/7.
    let miss = Packet::eth().ipv4([192, 168, 1, 1], [10, 0, 0, 1]).udp(5000, 1000).build();
    // Hits rule 0 of every rule set.
    let hit = Packet::eth().ipv4([10, 0, 0, 9], [10, 0, 0, 1]).udp(5000, 1000).build();

    println!("BPF_PROG_TEST_RUN, repeat {REPEAT}, median of 5 rounds, ns/packet");
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>7} {:>7} {:>10}",
        "rules", "trivial", "miss", "hit", "miss×", "hit×", "load ms"
    );
    let sets: Vec<(String, Vec<RuleSpec>)> = [0u32, 10, 1_000, 10_000, 100_000]
        .iter()
        .map(|n| (format!("{n} CIDR/24+port"), (0..*n).map(|i| cidr_port_rule(i, 24)).collect()))
        .chain(std::iter::once((
            "10000 over 16 shapes".to_string(),
            (0..10_000).map(|i| cidr_port_rule(i, 16 + (i % 16) as u8)).collect(),
        )))
        .collect();
    with_trivial_xdp(|trivial| {
        for (label, rules) in sets {
            with_node_datapath(|node| {
                let maps = FilterMaps::from_skel(node).expect("maps");
                let start = Instant::now();
                // Shapes of /16../31 prefixes make 16 shapes; dedupe names per shape set.
                let planned = plan(&Applied::default(), &rules, |_| None).expect("plan");
                maps.execute(&planned.ops).expect("apply");
                let load_ms = start.elapsed().as_secs_f64() * 1e3;
                let t = ns_per_packet(trivial, &miss);
                let m = ns_per_packet(&node.progs.weir_node_ingress, &miss);
                let h = ns_per_packet(&node.progs.weir_node_ingress, &hit);
                println!("{label:<28} {t:>9.2} {m:>9.2} {h:>9.2} {:>6.2}x {:>6.2}x {load_ms:>10.1}", m / t, h / t);
            })
            .expect("load node datapath");
        }
    })
    .expect("load the trivial XDP_PASS program");
}
