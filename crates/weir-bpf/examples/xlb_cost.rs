//! Benchmark: per-packet cost of the XDP load balancer through
//! BPF_PROG_TEST_RUN, timed as Katran times it: repeat 1 (the program
//! rewrites the packet, and with more repeats the kernel would feed the
//! rewritten packet back in), many runs, the kernel-reported time per call;
//! beside a trivial XDP_PASS program in the same run.
//! Run as root: `cargo run -p weir-bpf --example xlb_cost [RUNS] [ROUNDS]`.

use weir_bpf::testrun::{run_once, with_trivial_xdp, XDP_PASS, XDP_TX};
use weir_bpf::xlb;
use weir_lb::plan;
use weir_packet::{Packet, TCP_ACK, TCP_SYN};

const CONFIG: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: XdpLoadBalancer
metadata: {name: bench}
spec:
  # Every new flow is remembered: the flood guard (125k/s per core by
  # default) would otherwise skip most LRU inserts of a run this fast.
  newConnectionsPerSecondPerCore: 4294967295
  vips:
  - name: web
    address: 198.51.100.10
    port: 80
    protocol: TCP
    reals: [{address: 10.0.0.2}, {address: 10.0.0.3}, {address: 10.0.0.4}, {address: 10.0.0.5}]
  - name: web6
    address: "2001:db8::10"
    port: 80
    protocol: TCP
    reals: [{address: "2001:db8:1::2"}, {address: "2001:db8:1::3"}]
"#;

/// Median over `rounds` of the mean kernel-reported ns of `runs` calls.
fn cost(prog: &libbpf_rs::ProgramMut<'_>, packet: &[u8], verdict: u32, runs: u32, rounds: usize) -> f64 {
    let mut means: Vec<f64> = (0..rounds)
        .map(|_| {
            let mut total = 0u64;
            for _ in 0..runs {
                let out = run_once(prog, packet).expect("test run");
                assert_eq!(out.verdict, verdict, "unexpected verdict");
                total += out.duration_ns;
            }
            total as f64 / f64::from(runs)
        })
        .collect();
    means.sort_by(f64::total_cmp);
    means[means.len() / 2]
}

fn main() {
    let runs: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let rounds: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let lb = weir_lb::spec::parse(CONFIG).expect("valid configuration");
    let plan = plan::plan(&lb, None);
    let client = [192, 0, 2, 7];
    let vip = [198, 51, 100, 10];
    let client6 = [0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 7];
    let vip6 = [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10];
    let syn = Packet::eth().ipv4(client, vip).tcp(40000, 80, TCP_SYN).payload(&[0; 16]).build();
    let ack = Packet::eth().ipv4(client, vip).tcp(40001, 80, TCP_ACK).payload(&[0; 16]).build();
    let syn6 = Packet::eth().ipv6(client6, vip6).tcp(40000, 80, TCP_SYN).payload(&[0; 16]).build();
    let ack6 = Packet::eth().ipv6(client6, vip6).tcp(40001, 80, TCP_ACK).payload(&[0; 16]).build();
    let other = Packet::eth().ipv4(client, [198, 51, 100, 99]).tcp(40000, 80, TCP_ACK).payload(&[0; 16]).build();

    with_trivial_xdp(|trivial| {
        xlb::with_private(|skel, maps| {
            maps.apply(&plan::changes(None, &plan)).expect("plan applied");
            let prog = &skel.progs.weir_xlb;
            // The ACKs' connections are in the LRU before timing starts.
            for packet in [&ack, &ack6] {
                assert_eq!(run_once(prog, packet).expect("warm").verdict, XDP_TX);
            }
            println!(
                "BPF_PROG_TEST_RUN, repeat 1, {runs} runs per round, median of {rounds} rounds; kernel ns per call"
            );
            let rows = [
                ("trivial XDP_PASS", trivial, &other, XDP_PASS),
                ("xlb new flow (SYN, ring, LRU insert) IPv4", prog, &syn, XDP_TX),
                ("xlb LRU hit IPv4", prog, &ack, XDP_TX),
                ("xlb new flow (SYN, ring, LRU insert) IPv6", prog, &syn6, XDP_TX),
                ("xlb LRU hit IPv6", prog, &ack6, XDP_TX),
                ("xlb non-VIP packet", prog, &other, XDP_PASS),
            ];
            for (name, program, packet, verdict) in rows {
                println!("{name:<44} {:>8.1}", cost(program, packet, verdict, runs, rounds));
            }
            let counters = maps.counters().expect("counters");
            let (hit, ring) = (
                counters[weir_bpf::api::xlb_counter::LRU_HIT as usize].packets,
                counters[weir_bpf::api::xlb_counter::RING as usize].packets,
            );
            println!("(kernel counters: lru_hit {hit}, ring {ring})");
        })
        .expect("load the load balancer");
    })
    .expect("load the trivial XDP_PASS program");
}
