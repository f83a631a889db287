//! Benchmark helper: sends COUNT copies of a UDP frame out of IFNAME as XDP
//! frames (no socket buffers on the sending side) and prints the rate.
//! Run inside the sending namespace: `xdp_flood IFNAME DST_MAC COUNT
//! [SRC_IP DST_IP]` (default 10.250.0.1 to 10.250.0.2, UDP port 9).

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 && args.len() != 6 {
        eprintln!("usage: xdp_flood IFNAME DST_MAC COUNT [SRC_IP DST_IP]");
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
    let took = weir_bpf::testrun::send_live_frames(ifindex, &frame, count).expect("live frames");
    println!("{}", (f64::from(count) / took.as_secs_f64()) as u64);
}
