//! Benchmark helper: sends COUNT copies of a UDP frame out of IFNAME as XDP
//! frames (no socket buffers on the sending side) and prints the rate.
//! Run inside the sending namespace: `xdp_flood IFNAME DST_MAC COUNT
//! [SRC_IP DST_IP] [--run-time-stats]` (default 10.250.0.1 to 10.250.0.2,
//! UDP port 9). `--run-time-stats` keeps the kernel's per-program run-time
//! accounting on while sending, so the receiver's XDP program's run count and
//! time can be read (`bpftool prog show`) for exactly this flood; it slows
//! every program it counts, so rates from such a run are not comparable.

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let stats = args.last().is_some_and(|a| a == "--run-time-stats");
    if stats {
        args.pop();
    }
    if args.len() != 4 && args.len() != 6 {
        eprintln!("usage: xdp_flood IFNAME DST_MAC COUNT [SRC_IP DST_IP] [--run-time-stats]");
        std::process::exit(2);
    }
    let ip = |i: usize, default: [u8; 4]| -> [u8; 4] {
        args.get(i).map_or(default, |a| a.parse::<std::net::Ipv4Addr>().expect("an IPv4 address").octets())
    };
    let (src, dst) = (ip(4, [10, 250, 0, 1]), ip(5, [10, 250, 0, 2]));
    let mac: Vec<u8> = args[2].split(':').map(|b| u8::from_str_radix(b, 16).expect("a MAC address")).collect();
    let count: u32 = args[3].parse().expect("a count");
    let name = std::ffi::CString::new(args[1].clone()).expect("name");
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(ifindex != 0, "no interface {}", args[1]);
    let frame = weir_packet::Packet::eth()
        .macs([2, 0, 0, 0, 0, 1], mac.try_into().expect("six bytes"))
        .ipv4(src, dst)
        .udp(40000, 9)
        .payload(&[0; 18])
        .build();
    // Held until the flood is sent: accounting ends when the fd closes.
    let _accounting = stats.then(|| weir_bpf::stats::enable_run_time_stats().expect("BPF_ENABLE_STATS"));
    let took = weir_bpf::testrun::send_live_frames(ifindex, &frame, count).expect("live frames");
    println!("{}", (f64::from(count) / took.as_secs_f64()) as u64);
}
