//! Benchmark: per-packet cost of the XDP load balancer through
//! BPF_PROG_TEST_RUN, timed as Katran times it: repeat 1 (the program
//! rewrites the packet, and with more repeats the kernel would feed the
//! rewritten packet back in), many runs, the kernel-reported time per call;
//! beside a trivial XDP_PASS program and a Katran-equivalent baseline
//! (`bpf/progs/xlb_baseline.bpf.c`) in the same run. Rounds interleave the
//! programs (every row runs once per round), so a machine whose load
//! changes during the run shifts them all alike; each figure is the median
//! over rounds of a round's mean, and each ratio the median of the rounds'
//! ratios.
//! Run as root: `cargo run -p weir-bpf --example xlb_cost [RUNS] [ROUNDS]`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd};

use weir_bpf::testrun::{run_once, with_trivial_xdp, XDP_PASS, XDP_TX};
use weir_bpf::{xlb, xlb_baseline};
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

/// The mean kernel-reported ns of `runs` calls.
fn mean_ns(prog: &libbpf_rs::ProgramMut<'_>, packet: &[u8], verdict: u32, runs: u32) -> f64 {
    let mut total = 0u64;
    for _ in 0..runs {
        let out = run_once(prog, packet).expect("test run");
        assert_eq!(out.verdict, verdict, "unexpected verdict from {:?}", prog.name());
        total += out.duration_ns;
    }
    total as f64 / f64::from(runs)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The verifier's view of a loaded program: (translated instructions, JIT bytes).
fn program_size(prog: &libbpf_rs::ProgramMut<'_>) -> (u32, u32) {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of_val(&info) as u32;
    // SAFETY: info and len are valid for writes and len is info's size.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(prog.as_fd().as_raw_fd(), &mut info, &mut len) };
    assert_eq!(rc, 0, "program info");
    (info.xlated_prog_len / 8, info.jited_prog_len)
}

/// Keeps the whole run on the CPU it started on: the baseline remembers
/// connections per CPU (Katran's per-core LRUs), so the warm-up and the
/// timed packets must meet on one CPU, as a flow's packets do behind a
/// NIC's receive hashing.
fn pin_to_current_cpu() {
    // SAFETY: sched_getcpu takes nothing; the set is a plain bit array
    // zeroed before use, and sched_setaffinity reads it for its size.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(cpu >= 0, "sched_getcpu");
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0, "pin to CPU {cpu}");
    }
}

struct Case<'p> {
    name: &'static str,
    packet: &'p [u8],
    verdict: u32,
}

fn main() {
    let runs: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let rounds: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(9);
    pin_to_current_cpu();
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
    let cases = [
        Case { name: "LRU hit IPv4", packet: &ack, verdict: XDP_TX },
        Case { name: "LRU hit IPv6", packet: &ack6, verdict: XDP_TX },
        Case { name: "new flow IPv4 (SYN: ring, LRU insert)", packet: &syn, verdict: XDP_TX },
        Case { name: "new flow IPv6 (SYN: ring, LRU insert)", packet: &syn6, verdict: XDP_TX },
        Case { name: "non-VIP packet", packet: &other, verdict: XDP_PASS },
    ];

    with_trivial_xdp(|trivial| {
        xlb_baseline::with_baseline(|base_skel| {
            let base = base_skel;
            let v4 = |a: [u8; 4]| IpAddr::V4(Ipv4Addr::from(a));
            let v6 = |a: [u16; 8]| IpAddr::V6(Ipv6Addr::from(a));
            let reals4: Vec<IpAddr> = (2..6).map(|n| v4([10, 0, 0, n])).collect();
            let reals6: Vec<IpAddr> = (2..4).map(|n| v6([0x2001, 0xdb8, 1, 0, 0, 0, 0, n])).collect();
            xlb_baseline::add_vip(base, 0, (v4(vip), 80, 6), 1, &reals4).expect("baseline IPv4 VIP");
            xlb_baseline::add_vip(base, 1, (v6(vip6), 80, 6), 10, &reals6).expect("baseline IPv6 VIP");
            let base = &base.progs.weir_xlb_baseline;
            xlb::with_private(|skel, maps| {
                maps.apply(&plan::changes(None, &plan)).expect("plan applied");
                let weir = &skel.progs.weir_xlb;
                // The ACKs' connections are in the LRUs before timing starts.
                // Both encapsulate (IPIP: 20 more bytes, 6in6: 40).
                for prog in [base, weir] {
                    for (packet, outer) in [(&ack, 20), (&ack6, 40)] {
                        let out = run_once(prog, packet).expect("warm");
                        assert_eq!(out.verdict, XDP_TX);
                        assert_eq!(out.output.len(), packet.len() + outer, "{:?} encapsulates", prog.name());
                    }
                }
                // The warm-up's two misses; every timed ACK must be a hit.
                let (_, warm_misses) = xlb_baseline::lru_misses(base_skel).expect("baseline counters");
                let mut trivial_ns = Vec::new();
                let mut base_ns = vec![Vec::new(); cases.len()];
                let mut weir_ns = vec![Vec::new(); cases.len()];
                let mut ratios = vec![Vec::new(); cases.len()];
                for _ in 0..rounds {
                    trivial_ns.push(mean_ns(trivial, &other, XDP_PASS, runs));
                    for (i, case) in cases.iter().enumerate() {
                        let b = mean_ns(base, case.packet, case.verdict, runs);
                        let w = mean_ns(weir, case.packet, case.verdict, runs);
                        base_ns[i].push(b);
                        weir_ns[i].push(w);
                        ratios[i].push(w / b);
                    }
                }
                println!(
                    "BPF_PROG_TEST_RUN, repeat 1, {runs} runs per row per round, {rounds} interleaved rounds; \
                     kernel ns per call, median over rounds"
                );
                println!("{:<40} {:>10} {:>10} {:>12}", "case", "baseline", "weir", "weir/base");
                println!("{:<40} {:>10.1}", "trivial XDP_PASS", median(trivial_ns));
                for (i, case) in cases.iter().enumerate() {
                    println!(
                        "{:<40} {:>10.1} {:>10.1} {:>11.2}x",
                        case.name,
                        median(base_ns[i].clone()),
                        median(weir_ns[i].clone()),
                        median(ratios[i].clone())
                    );
                }
                for (name, prog) in [("baseline", base), ("weir xlb", weir)] {
                    let (insns, jited) = program_size(prog);
                    println!("{name}: {insns} instructions after the verifier, {jited} bytes JITed");
                }
                let counters = maps.counters().expect("counters");
                let (hit, ring) = (
                    counters[weir_bpf::api::xlb_counter::LRU_HIT as usize].packets,
                    counters[weir_bpf::api::xlb_counter::RING as usize].packets,
                );
                println!("(weir's kernel counters: lru_hit {hit}, ring {ring})");
                let (syns, misses) = xlb_baseline::lru_misses(base_skel).expect("baseline counters");
                println!("(baseline's kernel counters: SYN misses {syns}, other LRU misses {misses})");
                assert_eq!(misses, warm_misses, "the baseline's timed LRU hits must be hits");
            })
            .expect("load the load balancer");
        })
        .expect("load the Katran-equivalent baseline");
    })
    .expect("load the trivial XDP_PASS program");
}
