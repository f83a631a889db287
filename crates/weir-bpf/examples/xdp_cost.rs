//! Benchmark: per-packet cost of the node datapath's XDP program against a
//! trivial XDP_PASS program, side by side through BPF_PROG_TEST_RUN.
//! Run as root: `cargo run --release -p weir-bpf --example xdp_cost [REPEAT]`.
//! Neither program rewrites packets, so repeat > 1 is sound.

use weir_bpf::testrun::{ns_per_packet, with_node_datapath, with_trivial_xdp};
use weir_packet::{Packet, TCP_SYN};

fn main() {
    let repeat: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(5_000_000);
    let packets = [
        ("IPv4 TCP SYN", Packet::eth().ipv4([10, 0, 0, 1], [10, 0, 0, 2]).tcp(40000, 80, TCP_SYN).build()),
        (
            "IPv6 UDP, VLAN",
            Packet::eth()
                .vlan(7)
                .ipv6([0xfd00, 0, 0, 0, 0, 0, 0, 1], [0xfd00, 0, 0, 0, 0, 0, 0, 2])
                .udp(1, 53)
                .payload(&[0; 32])
                .build(),
        ),
    ];

    with_trivial_xdp(|trivial| {
        with_node_datapath(|node| {
            println!("BPF_PROG_TEST_RUN, repeat {repeat}, median of 5 rounds each, ns/packet");
            println!("{:<16} {:>10} {:>10} {:>8}", "packet", "trivial", "node", "ratio");
            for (name, packet) in &packets {
                let t = ns_per_packet(trivial, packet, repeat, 5).expect("trivial");
                let n = ns_per_packet(&node.progs.weir_node_ingress, packet, repeat, 5).expect("node");
                println!("{name:<16} {t:>10.2} {n:>10.2} {:>7.2}x", n / t);
            }
        })
        .expect("load node datapath");
    })
    .expect("load the trivial XDP_PASS program");
}
