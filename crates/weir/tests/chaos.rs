//! Chaos Mesh NetworkChaos in a lab whose pods take the pod path: a
//! partition cuts two pods apart both ways (TCP and UDP) and nothing else,
//! and heals on `weir chaos stop`; loss drops its share between the selected
//! pods only (within a percentage point at 10%, 30% and 50% over 100k
//! datagrams); duplicate sends its share twice; corrupt flips payload bits
//! the receiver's stack discards (checksum left wrong) or accepts (fixed);
//! bandwidth caps a TCP stream to the targets within 10% of its rate and no
//! other; delay adds its latency (within 10% at the median, 50 ms and
//! 200 ms) and jitter to the targets' round trips only, and lapses when the
//! agents die; each packet a fault changed is a flow naming its experiment;
//! a partition ends on its own time, within a second of its end, with the
//! agents killed; bad documents are refused by path with nothing applied.
//! (Socket faults, pod-kill and restarts: chaos_control.rs.)

mod chaos_lab;
mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use chaos_lab::*;
use common::*;

#[test]
fn a_partition_cuts_the_pair_both_ways_and_heals_on_stop() {
    let Some(lab) = lab("chprt") else { return };
    let plan = lab.plan();
    let pod = |n: &str| plan.pod(n).expect("pod").clone();
    let (web, api, db) = (pod("frontend/web"), pod("backend/api"), pod("backend/db"));

    // Refused by path, nothing applied: a delay, a target no pod matches.
    let delay = write(&lab, "delay", &format!("{PARTITION}  delay: {{latency: 10ms}}\n"));
    let out = weir(&["apply", "--lab", &lab.name, "-f", &delay]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("spec.delay"), "{out:?}");
    let nobody = write(&lab, "nobody", &PARTITION.replace("app: api", "app: nobody"));
    let out = weir(&["apply", "--lab", &lab.name, "-f", &nobody]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("spec.target.selector"), "{out:?}");
    assert_eq!(running(&lab).0, Vec::<String>::new(), "nothing applied");
    assert!(tcp_ok(&web.netns, &api.netns, api.ip) && udp_ok(&api.netns, &web.netns, web.ip), "no chaos yet");

    let file = write(&lab, "partition", PARTITION);
    weir_ok(&["apply", "--lab", &lab.name, "-f", &file]);
    assert_eq!(running(&lab).0, vec!["frontend/web-api-cut".to_string()]);
    for (from, to, ip) in [(&web, &api, api.ip), (&api, &web, web.ip)] {
        assert!(!tcp_ok(&from.netns, &to.netns, ip), "TCP {} -> {} crossed the partition", from.name, to.name);
        assert!(!udp_ok(&from.netns, &to.netns, ip), "UDP {} -> {} crossed the partition", from.name, to.name);
    }
    if let (Some(w6), Some(a6)) = (web.ipv6, api.ipv6) {
        assert!(!udp_ok(&web.netns, &api.netns, a6) && !udp_ok(&api.netns, &web.netns, w6), "IPv6 crossed");
    }
    // Other pairs are untouched.
    for (from, to, ip) in [(&web, &db, db.ip), (&db, &web, web.ip), (&db, &api, api.ip), (&api, &db, db.ip)] {
        assert!(tcp_ok(&from.netns, &to.netns, ip), "TCP {} -> {} was cut", from.name, to.name);
        assert!(udp_ok(&from.netns, &to.netns, ip), "UDP {} -> {} was cut", from.name, to.name);
    }
    // The flows show each drop with its reason, on the sender's node.
    let recent = weir_ok(&["observe", "--lab", &lab.name, "--last", "500", "--verdict", "dropped", "-o", "weir-json"]);
    let flows: Vec<serde_json::Value> =
        recent.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("json")).collect();
    for node in ["node-a", "node-b"] {
        assert!(
            flows.iter().any(|f| f["dropReason"] == "chaos_partition" && f["node"] == node),
            "no chaos_partition drop on {node}: {flows:?}"
        );
    }
    // Each names its experiment.
    assert!(
        flows
            .iter()
            .filter(|f| f["dropReason"] == "chaos_partition")
            .all(|f| f["rule"] == "frontend/web-api-cut" && f["match"] == "chaos"),
        "a chaos drop without its experiment: {flows:?}"
    );
    let listed = weir_ok(&["chaos", "list", "--lab", &lab.name]);
    assert!(listed.contains("web-api-cut") && listed.contains("until stopped"), "{listed}");
    assert!(running(&lab).1 > 0, "drops are counted for the experiment");

    weir_ok(&["chaos", "stop", "--lab", &lab.name, "frontend/web-api-cut"]);
    assert_eq!(running(&lab).0, Vec::<String>::new());
    for (from, to, ip) in [(&web, &api, api.ip), (&api, &web, web.ip)] {
        assert!(tcp_ok(&from.netns, &to.netns, ip), "TCP {} -> {} after stop", from.name, to.name);
        assert!(udp_ok(&from.netns, &to.netns, ip), "UDP {} -> {} after stop", from.name, to.name);
    }
    // weir delete -f ends it too.
    weir_ok(&["apply", "--lab", &lab.name, "-f", &file]);
    assert!(!udp_ok(&web.netns, &api.netns, api.ip));
    weir_ok(&["delete", "--lab", &lab.name, "-f", &file]);
    assert!(udp_ok(&web.netns, &api.netns, api.ip), "crosses after delete");
    assert_eq!(running(&lab).0, Vec::<String>::new());

    // An experiment past its end leaves its pairs free: another may take them.
    let short = write(&lab, "short", &format!("{}  duration: 2s\n", PARTITION.replace("web-api-cut", "brief")));
    weir_ok(&["apply", "--lab", &lab.name, "-f", &short]);
    assert!(eventually(Duration::from_secs(30), || udp_ok(&web.netns, &api.netns, api.ip)), "never ended");
    let listed = weir_ok(&["chaos", "list", "--lab", &lab.name]);
    assert!(listed.contains("brief") && listed.contains("ended"), "{listed}");
    weir_ok(&["apply", "--lab", &lab.name, "-f", &file]);
    assert!(!udp_ok(&web.netns, &api.netns, api.ip), "the new experiment cuts the pair");
    weir_ok(&["chaos", "stop", "--lab", &lab.name, "--all"]);
    assert_eq!(running(&lab).0, Vec::<String>::new());
    assert!(udp_ok(&web.netns, &api.netns, api.ip), "crosses after stop --all");
}

/// The flows `weir observe` shows from `from` to `to` (pods, "ns/name"),
/// as JSON objects, from the most recent `last` of each node.
fn observed(lab: &ChaosLab, from: &str, to: &str, last: u32) -> Vec<serde_json::Value> {
    let last = last.to_string();
    let args = ["observe", "--lab", &lab.name, "--last", &last, "--from-pod", from, "--to-pod", to, "-o", "weir-json"];
    weir_ok(&args).lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("json")).collect()
}

/// Waits until `weir observe` shows a packet the experiment `name` changed
/// from web to api, as a forwarded flow saying `effect`, in JSON and text,
/// and that no flow from api to web names a chaos experiment.
fn assert_chaos_flows(lab: &ChaosLab, name: &str, effect: &str) {
    let touched = |f: &serde_json::Value| f["match"] == "chaos" && f["verdict"] == "forwarded";
    let mut seen = Vec::new();
    // Earlier faults of the same experiment (another latency) may be among the flows.
    let shown = eventually(Duration::from_secs(20), || {
        seen = observed(lab, "frontend/web", "backend/api", 200);
        seen.iter().any(|f| touched(f) && f["chaos"] == effect)
    });
    assert!(shown, "no flow for a packet {name} changed ({effect}): {seen:?}");
    for f in seen.iter().filter(|f| touched(f)) {
        assert!(f["rule"] == name, "a chaos flow without {name}: {f}");
    }
    let text = weir_ok(&["observe", "--lab", &lab.name, "--last", "200", "--from-pod", "frontend/web", "-o", "text"]);
    assert!(text.contains(&format!("FORWARDED ({effect}) by {name}")), "{text}");
    let back = observed(lab, "backend/api", "frontend/web", 200);
    assert!(back.iter().all(|f| f["match"] != "chaos"), "chaos flows the other way: {back:?}");
}

/// A socket in `to` whose receive buffer holds every datagram a test sends,
/// so only the datapath loses any.
fn big_receiver(to: &str, ip: IpAddr) -> UdpSocket {
    let receiver = weir_host::netns::run_in(to, || UdpSocket::bind((ip, 0))).expect("netns").expect("bind");
    let size: libc::c_int = 256 << 20;
    // SAFETY: a valid socket and a c_int option value of the given size.
    let rc = unsafe {
        libc::setsockopt(
            receiver.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE");
    receiver
}

/// The payload of datagram `seq`: its number and a fixed pattern.
fn datagram(seq: u32) -> Vec<u8> {
    let mut bytes = seq.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0x5a; 60]);
    bytes
}

/// Sends `count` numbered datagrams from `from` to a socket in `to` and
/// returns every one that arrived, duplicates included, in arrival order.
fn udp_received(from: &str, to: &str, ip: IpAddr, count: u32) -> Vec<Vec<u8>> {
    let any: IpAddr =
        if ip.is_ipv6() { std::net::Ipv6Addr::UNSPECIFIED.into() } else { std::net::Ipv4Addr::UNSPECIFIED.into() };
    let receiver = big_receiver(to, ip);
    let addr: SocketAddr = receiver.local_addr().expect("addr");
    let sender = weir_host::netns::run_in(from, || UdpSocket::bind((any, 0))).expect("netns").expect("bind");
    for seq in 0..count {
        sender.send_to(&datagram(seq), addr).expect("send");
    }
    receiver.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok((n, _)) = receiver.recv_from(&mut buf) {
        got.push(buf[..n].to_vec());
    }
    got
}

/// How many distinct datagrams of `count` arrived intact.
fn udp_delivered(from: &str, to: &str, ip: IpAddr, count: u32) -> u32 {
    let mut seen = vec![false; count as usize];
    for d in udp_received(from, to, ip, count) {
        let seq = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
        if seq < seen.len() && d == datagram(seq as u32) {
            seen[seq] = true;
        }
    }
    seen.iter().filter(|s| **s).count() as u32
}

/// Sends `count` numbered datagrams from `from` to a socket in `to` that a
/// thread drains meanwhile (no receive queue fills up), until every one is
/// either delivered intact or among the drops the kernel counted for
/// `experiment` (or 60 s pass); returns (delivered, counted).
fn udp_delivered_or_counted(
    lab: &ChaosLab,
    experiment: &str,
    (from, to, ip): (&str, &str, IpAddr),
    count: u32,
) -> (u32, u64) {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;
    let receiver = big_receiver(to, ip);
    receiver.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    let addr: SocketAddr = receiver.local_addr().expect("addr");
    let (delivered, stop) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicBool::new(false)));
    let (counting, stopping) = (delivered.clone(), stop.clone());
    let draining = std::thread::spawn(move || {
        let mut seen = vec![false; count as usize];
        let mut buf = [0u8; 256];
        while !stopping.load(Ordering::Relaxed) {
            let Ok((n, _)) = receiver.recv_from(&mut buf) else { continue };
            let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            if (seq as usize) < seen.len() && !seen[seq as usize] && buf[..n] == datagram(seq) {
                seen[seq as usize] = true;
                counting.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let sender = weir_host::netns::run_in(from, || UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)))
        .expect("netns")
        .expect("bind");
    for seq in 0..count {
        sender.send_to(&datagram(seq), addr).expect("send");
    }
    eventually(Duration::from_secs(60), || {
        u64::from(delivered.load(Ordering::Relaxed)) + affected(lab, experiment) >= u64::from(count)
    });
    stop.store(true, Ordering::Relaxed);
    draining.join().expect("receiver");
    (delivered.load(Ordering::Relaxed), affected(lab, experiment))
}

#[test]
fn loss_drops_its_share_between_the_selected_pods_only() {
    let Some(lab) = lab("chlos") else { return };
    let plan = lab.plan();
    let pod = |n: &str| plan.pod(n).expect("pod").clone();
    let (web, api, db) = (pod("frontend/web"), pod("backend/api"), pod("backend/db"));
    const N: u32 = 100_000;
    for percent in [10u32, 30, 50] {
        let name = format!("web-api-loss-{percent}");
        let yaml = format!(
            "apiVersion: chaos-mesh.org/v1alpha1
kind: NetworkChaos
metadata: {{name: {name}, namespace: frontend}}
spec:
  action: loss
  mode: one
  selector: {{labelSelectors: {{app: web}}}}
  direction: to
  target:
    mode: fixed
    value: \"1\"
    selector: {{namespaces: [backend], labelSelectors: {{tier: backend}}, pods: {{backend: [api]}}}}
  loss:
    loss: \"{percent}\"
    correlation: \"0\"
  duration: 10m
"
        );
        weir_ok(&["apply", "--lab", &lab.name, "-f", &write(&lab, &name, &yaml)]);
        let experiment = format!("frontend/{name}");
        assert_eq!(running(&lab).0, vec![experiment.clone()]);
        let (got, dropped) = udp_delivered_or_counted(&lab, &experiment, (&web.netns, &api.netns, api.ip.into()), N);
        let lost = 100.0 * f64::from(N - got) / f64::from(N);
        eprintln!("loss {percent}%: {got} of {N} arrived ({lost:.2}% lost); the kernel counted {dropped} drops");
        assert!((lost - f64::from(percent)).abs() <= 1.0, "{percent}% loss measured as {lost:.2}%");
        assert_eq!(u64::from(N - got), dropped, "every datagram lost was lost to the experiment, and counted");
        // The other direction and other pairs lose nothing.
        for (from, to, ip) in [(&api, &web, web.ip), (&db, &api, api.ip), (&web, &db, db.ip)] {
            let got = udp_delivered(&from.netns, &to.netns, ip.into(), 2000);
            assert_eq!(got, 2000, "{} -> {} lost {} under {percent}% loss", from.name, to.name, 2000 - got);
        }
        weir_ok(&["chaos", "stop", "--lab", &lab.name, &experiment]);
    }
}

#[test]
fn duplicate_sends_its_share_twice_between_the_selected_pods_only() {
    let Some(lab) = lab("chdup") else { return };
    let plan = lab.plan();
    let pod = |n: &str| plan.pod(n).expect("pod").clone();
    let (web, api, db) = (pod("frontend/web"), pod("backend/api"), pod("backend/db"));
    let yaml = format!("{WEB_TO_API}  action: duplicate\n  duplicate: {{duplicate: \"40\", correlation: \"0\"}}\n");
    weir_ok(&["apply", "--lab", &lab.name, "-f", &write(&lab, "duplicate", &yaml)]);
    let listed = weir_ok(&["chaos", "list", "--lab", &lab.name]);
    assert!(listed.contains("duplicate 40%/0%"), "{listed}");

    const N: u32 = 10_000;
    let got = udp_received(&web.netns, &api.netns, api.ip.into(), N);
    let distinct: std::collections::BTreeSet<Vec<u8>> = got.iter().cloned().collect();
    let extra = got.len() as u64 - distinct.len() as u64;
    let counted = affected(&lab, "frontend/web-api");
    let share = 100.0 * extra as f64 / f64::from(N);
    eprintln!("duplicate 40%: {} datagrams for {N} sent ({share:.2}% twice); the kernel counted {counted}", got.len());
    assert_eq!(distinct.len() as u32, N, "every datagram arrived, unchanged");
    assert!((share - 40.0).abs() <= 3.0, "40% duplication measured as {share:.2}%");
    assert!(extra <= counted && counted - extra <= u64::from(N) / 100, "copies {extra}, counted {counted}");
    assert_chaos_flows(&lab, "frontend/web-api", "duplicated");
    // TCP takes the duplicates in its stride.
    assert!(tcp_ok(&web.netns, &api.netns, api.ip), "TCP web -> api under duplication");
    // The other direction and other pairs get no copies.
    for (from, to, ip) in [(&api, &web, web.ip), (&db, &api, api.ip), (&web, &db, db.ip)] {
        let got = udp_received(&from.netns, &to.netns, ip.into(), 2000);
        assert_eq!(got.len(), 2000, "{} -> {}: {} datagrams for 2000", from.name, to.name, got.len());
    }
    weir_ok(&["chaos", "stop", "--lab", &lab.name, "--all"]);
    assert_eq!(udp_received(&web.netns, &api.netns, api.ip.into(), 2000).len(), 2000, "no copies after stop");
}

/// The receiving stack's count of UDP datagrams with a bad checksum, in `netns`.
fn udp_checksum_errors(netns: &str) -> u64 {
    let snmp = weir_host::netns::run_in(netns, || std::fs::read_to_string("/proc/thread-self/net/snmp"))
        .expect("netns")
        .expect("snmp");
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next().expect("names"), udp.next().expect("values"));
    let at = names.split_whitespace().position(|n| n == "InCsumErrors").expect("InCsumErrors");
    values.split_whitespace().nth(at).and_then(|v| v.parse().ok()).expect("a number")
}

#[test]
fn corrupt_flips_bits_the_receiver_discards_or_with_the_checksum_fixed_accepts() {
    let Some(lab) = lab("chcor") else { return };
    let plan = lab.plan();
    let pod = |n: &str| plan.pod(n).expect("pod").clone();
    let (web, api) = (pod("frontend/web"), pod("backend/api"));
    // web's stack computes its checksums itself, as on a NIC without
    // offload: an offloaded checksum is never checked between veths.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &web.netns, "ethtool", "-K", "eth0", "tx", "off"])
        .output()
        .expect("ethtool");
    assert!(out.status.success(), "ethtool: {out:?}");

    let corrupt = format!("{WEB_TO_API}  action: corrupt\n  corrupt: {{corrupt: \"30\"}}\n");
    weir_ok(&["apply", "--lab", &lab.name, "-f", &write(&lab, "corrupt", &corrupt)]);
    const N: u32 = 10_000;
    let errors_before = udp_checksum_errors(&api.netns);
    let got = udp_received(&web.netns, &api.netns, api.ip.into(), N);
    let errors = udp_checksum_errors(&api.netns) - errors_before;
    let counted = affected(&lab, "frontend/web-api");
    let missing = 100.0 * f64::from(N - got.len() as u32) / f64::from(N);
    eprintln!(
        "corrupt 30%, checksum left wrong: {} of {N} arrived; {errors} checksum errors; {counted} counted",
        got.len()
    );
    assert!(got.iter().all(|d| *d == datagram(u32::from_be_bytes([d[0], d[1], d[2], d[3]]))), "none corrupted");
    assert!((missing - 30.0).abs() <= 3.0, "30% corruption discarded {missing:.2}%");
    assert_eq!(u64::from(N) - got.len() as u64, counted, "every datagram missing was corrupted, and counted");
    assert_eq!(errors, counted, "the receiver discarded each for its checksum");
    let listed = weir_ok(&["chaos", "list", "--lab", &lab.name]);
    assert!(listed.contains("corrupt 30%/0% (left-wrong)"), "{listed}");

    // Weir's annotation repairs the checksum: the receiver gets the bit flips.
    let fixed = corrupt
        .replace("namespace: frontend}", "namespace: frontend, annotations: {chaos.weir.dev/corrupt-checksum: fixed}}");
    weir_ok(&["apply", "--lab", &lab.name, "-f", &write(&lab, "fixed", &fixed)]);
    let got = udp_received(&web.netns, &api.netns, api.ip.into(), N);
    let flipped: Vec<u32> = got
        .iter()
        .map(|d| {
            let pristine: &[u8] = &[0x5a; 60];
            d[4..].iter().zip(pristine).map(|(a, b)| (a ^ b).count_ones()).sum::<u32>()
        })
        .collect();
    // A flip in the sequence number is seen as a datagram number repeated or out of range.
    let mut seqs: Vec<u32> = got.iter().map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]])).collect();
    seqs.sort_unstable();
    seqs.dedup();
    let renumbered = got.len() - seqs.iter().filter(|s| **s < N).count();
    let corrupted = flipped.iter().filter(|f| **f > 0).count() + renumbered;
    let counted = affected(&lab, "frontend/web-api");
    let share = 100.0 * corrupted as f64 / f64::from(N);
    eprintln!("corrupt 30%, checksum fixed: {} of {N} arrived, {corrupted} corrupted; {counted} counted", got.len());
    assert_eq!(got.len() as u32, N, "every datagram arrived");
    assert!(flipped.iter().all(|f| *f <= 1), "one bit flipped at most");
    assert!((share - 30.0).abs() <= 3.0, "30% corruption measured as {share:.2}%");
    assert!(corrupted as u64 <= counted && counted - corrupted as u64 <= u64::from(N) / 100, "counted {counted}");
    assert_chaos_flows(&lab, "frontend/web-api", "corrupted");
    weir_ok(&["chaos", "stop", "--lab", &lab.name, "--all"]);
    assert_eq!(udp_delivered(&web.netns, &api.netns, api.ip.into(), 2000), 2000, "intact after stop");
}

/// Sends `bytes` over TCP from `from` to a listener in `to` and returns the
/// receiver's rate in bytes per second, from its first byte to its last.
fn tcp_rate(from: &str, to: &str, ip: std::net::Ipv4Addr, bytes: usize) -> f64 {
    use std::io::{Read, Write};
    let listener =
        weir_host::netns::run_in(to, || std::net::TcpListener::bind((ip, 0))).expect("netns").expect("listen");
    let addr = listener.local_addr().expect("addr");
    let receiver = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 16];
        let (mut got, mut first) = (0usize, None);
        loop {
            let n = stream.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            first.get_or_insert_with(Instant::now);
            got += n;
        }
        (got, first.map(|f| f.elapsed()).unwrap_or_default())
    });
    let mut stream =
        weir_host::netns::run_in(from, || std::net::TcpStream::connect(addr)).expect("netns").expect("connect");
    stream.write_all(&vec![0x42u8; bytes]).expect("send");
    drop(stream);
    let (got, elapsed) = receiver.join().expect("receiver");
    assert_eq!(got, bytes, "the whole stream arrived");
    got as f64 / elapsed.as_secs_f64()
}

#[test]
fn bandwidth_caps_the_selected_pods_traffic_to_the_targets_only() {
    let Some(lab) = lab("chbw") else { return };
    let plan = lab.plan();
    let pod = |n: &str| plan.pod(n).expect("pod").clone();
    let (web, api, db) = (pod("frontend/web"), pod("backend/api"), pod("backend/db"));
    // 512 KiB/s, as Chaos Mesh reads "512kbps".
    const RATE: f64 = 512.0 * 1024.0;
    let yaml =
        format!("{WEB_TO_API}  action: bandwidth\n  bandwidth: {{rate: 512kbps, limit: 200000, buffer: 10000}}\n");
    let file = write(&lab, "bandwidth", &yaml);
    weir_ok(&["apply", "--lab", &lab.name, "-f", &file]);
    let listed = weir_ok(&["chaos", "list", "--lab", &lab.name]);
    assert!(listed.contains("bandwidth 524288B/s"), "{listed}");

    let shaped = tcp_rate(&web.netns, &api.netns, api.ip, 3 << 19);
    let other = tcp_rate(&web.netns, &db.netns, db.ip, 3 << 19);
    let back = tcp_rate(&api.netns, &web.netns, web.ip, 3 << 19);
    eprintln!("bandwidth 512 KiB/s: web -> api {shaped:.0} B/s, web -> db {other:.0} B/s, api -> web {back:.0} B/s");
    assert!((shaped / RATE - 1.0).abs() <= 0.10, "web -> api at {shaped:.0} B/s: not within 10% of 512 KiB/s");
    assert!(other > RATE * 4.0, "web -> db at {other:.0} B/s: shaped though not a target");
    assert!(back > RATE * 4.0, "api -> web at {back:.0} B/s: shaped though direction is to");
    assert!(affected(&lab, "frontend/web-api") > 0, "the shaped packets are counted");
    assert_chaos_flows(&lab, "frontend/web-api", "shaped 524288 B/s");
    assert!(tcp_ok(&web.netns, &api.netns, api.ip), "connections still open under shaping");

    // Stopped: full speed, and the shaper is gone from the node.
    weir_ok(&["delete", "--lab", &lab.name, "-f", &file]);
    let freed = tcp_rate(&web.netns, &api.netns, api.ip, 3 << 19);
    assert!(freed > RATE * 4.0, "web -> api at {freed:.0} B/s after delete");
    for node in &plan.nodes {
        assert!(
            weir_host::iproute::ip(Some(&node.netns), &["link", "show", "dev", "weir-shaper"]).is_err(),
            "the shaper outlived the experiment on {}",
            node.name
        );
    }

    // Ended on its own time, with no weir command after: the agents take
    // the shaper away too (nothing outlives an experiment).
    let short = yaml.replace("  duration: 10m\n", "  duration: 3s\n");
    weir_ok(&["apply", "--lab", &lab.name, "-f", &write(&lab, "bandwidth-3s", &short)]);
    let shaper_on = |node: &weir_lab::plan::NodePlan| {
        weir_host::iproute::ip(Some(&node.netns), &["link", "show", "dev", "weir-shaper"]).is_ok()
    };
    assert!(plan.nodes.iter().any(shaper_on), "no shaper while the 3 s experiment runs");
    assert!(
        eventually(Duration::from_secs(30), || !plan.nodes.iter().any(shaper_on)),
        "the shaper outlived the 3 s experiment with the agents running and nobody asking"
    );
    let freed = tcp_rate(&web.netns, &api.netns, api.ip, 3 << 19);
    assert!(freed > RATE * 4.0, "web -> api at {freed:.0} B/s after the experiment's end");
}

#[test]
fn delay_adds_its_latency_to_the_targets_only_and_lapses_with_the_agent() {
    let Some(lab) = lab("chdly") else { return };
    let plan = lab.plan();
    let pod = |n: &str| plan.pod(n).expect("pod").clone();
    let (web, api, db) = (pod("frontend/web"), pod("backend/api"), pod("backend/db"));
    let baseline = median(round_trips(&web.netns, &api.netns, api.ip, 21));
    // The round trip's median rises by the latency, within 10%.
    for latency in [50u64, 200] {
        let latency = Duration::from_millis(latency);
        let fixed = format!("{WEB_TO_API}  action: delay\n  delay: {{latency: {}ms}}\n", latency.as_millis());
        weir_ok(&["apply", "--lab", &lab.name, "-f", &write(&lab, "delay", &fixed)]);
        let listed = weir_ok(&["chaos", "list", "--lab", &lab.name]);
        assert!(listed.contains(&format!("delay {}ms", latency.as_millis())), "{listed}");
        let delayed = round_trips(&web.netns, &api.netns, api.ip, 21);
        let added = median(delayed.clone()).saturating_sub(baseline);
        eprintln!("delay {latency:?}: baseline {baseline:?}, web -> api +{added:?} at p50");
        assert_eq!(delayed.len(), 21, "no probe lost in the delay line");
        assert!(delayed.iter().all(|rtt| *rtt >= latency), "faster than the delay: {delayed:?}");
        assert!(added.abs_diff(latency) <= latency / 10, "web -> api added {added:?} at p50 for {latency:?}");
        assert!(affected(&lab, "frontend/web-api") >= 21, "the held packets are counted");
    }
    let file = write(&lab, "delay", &format!("{WEB_TO_API}  action: delay\n  delay: {{latency: 100ms}}\n"));
    weir_ok(&["apply", "--lab", &lab.name, "-f", &file]);
    let other = median(round_trips(&web.netns, &db.netns, db.ip, 15));
    let between = median(round_trips(&db.netns, &api.netns, api.ip, 15));
    eprintln!("delay 100ms: web -> db {other:?}, db -> api {between:?}");
    // Pairs outside the experiment are untouched.
    assert!(other < baseline + Duration::from_millis(50), "web -> db took {other:?}");
    assert!(between < baseline + Duration::from_millis(50), "db -> api took {between:?}");
    assert!(tcp_ok(&web.netns, &api.netns, api.ip), "TCP under delay");
    assert_chaos_flows(&lab, "frontend/web-api", "delayed 100ms");

    // Jitter: each round trip within latency ± jitter (and a loaded machine's slack above).
    let jittered = format!("{WEB_TO_API}  action: delay\n  delay: {{latency: 100ms, jitter: 50ms}}\n");
    weir_ok(&["apply", "--lab", &lab.name, "-f", &write(&lab, "jitter", &jittered)]);
    let rtts = round_trips(&web.netns, &api.netns, api.ip, 21);
    assert!(rtts.iter().all(|rtt| *rtt >= Duration::from_millis(50)), "below latency - jitter: {rtts:?}");
    let mut spread: Vec<Duration> = rtts.iter().map(|rtt| rtt.saturating_sub(baseline)).collect();
    spread.sort();
    let (low, high, p90) = (spread[0], spread[spread.len() - 1], spread[spread.len() * 9 / 10]);
    eprintln!("delay 100ms ± 50ms: added from {low:?} to {high:?}, p90 {p90:?}");
    // Above latency + jitter only by the 10% a loaded machine may add.
    assert!(p90 <= Duration::from_millis(160), "above latency + jitter: {spread:?}");
    assert!(high - low >= Duration::from_millis(20), "no jitter: {spread:?}");

    // Reorder: half the packets past the gap go at once, the rest wait.
    let reorder = format!(
        "{WEB_TO_API}  action: delay\n  delay: {{latency: 100ms, reorder: {{reorder: \"50\", correlation: \"0\", gap: 1}}}}\n"
    );
    weir_ok(&["apply", "--lab", &lab.name, "-f", &write(&lab, "reorder", &reorder)]);
    let mixed = round_trips(&web.netns, &api.netns, api.ip, 20);
    eprintln!("delay 100ms, reorder 50%: {mixed:?}");
    assert!(mixed.iter().any(|rtt| *rtt < Duration::from_millis(50)), "none went at once: {mixed:?}");
    assert!(mixed.iter().any(|rtt| *rtt >= Duration::from_millis(100)), "none waited: {mixed:?}");

    // Stopped: back to the baseline, the line and its veth pair gone.
    weir_ok(&["chaos", "stop", "--lab", &lab.name, "frontend/web-api"]);
    let after = median(round_trips(&web.netns, &api.netns, api.ip, 15));
    assert!(after < baseline + Duration::from_millis(50), "web -> api took {after:?} after stop");
    for node in &plan.nodes {
        assert!(
            weir_host::iproute::ip(Some(&node.netns), &["link", "show", "dev", "weir-shaper"]).is_err(),
            "the delay line's veth outlived the experiment on {}",
            node.name
        );
    }

    // The agents die: their lease lapses and the pair's packets pass
    // undelayed (none is lost to a line nobody reads).
    weir_ok(&["apply", "--lab", &lab.name, "-f", &file]);
    assert!(median(round_trips(&web.netns, &api.netns, api.ip, 5)) >= Duration::from_millis(100), "delayed again");
    for node in &plan.nodes {
        let pid = weir_lab::runtime::agent_pid(node).expect("agent running");
        weir_host::process::kill(pid, libc::SIGKILL);
        assert!(eventually(Duration::from_secs(5), || !weir_host::process::alive(pid)), "the agent died");
    }
    assert!(
        eventually(Duration::from_secs(30), || {
            let rtts = round_trips(&web.netns, &api.netns, api.ip, 5);
            rtts.len() == 5 && median(rtts) < Duration::from_millis(50)
        }),
        "the pair stayed delayed or lost with no agent to read the line"
    );
}

fn unix_now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64
}

/// Sends a datagram from `from` to a socket in `to` every 10 ms until one
/// arrives (or `deadline` passes); returns when it arrived, in Unix ns.
fn first_arrival(from: &str, to: &str, ip: IpAddr, deadline: Duration) -> Option<u64> {
    let receiver = weir_host::netns::run_in(to, || UdpSocket::bind((ip, 0))).expect("netns").expect("bind");
    receiver.set_read_timeout(Some(Duration::from_millis(10))).expect("timeout");
    let addr = receiver.local_addr().expect("addr");
    let sender = weir_host::netns::run_in(from, || UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)))
        .expect("netns")
        .expect("bind");
    let start = Instant::now();
    let mut buf = [0u8; 16];
    while start.elapsed() < deadline {
        sender.send_to(b"probe", addr).expect("send");
        if receiver.recv_from(&mut buf).is_ok() {
            return Some(unix_now_ns());
        }
    }
    None
}

#[test]
fn a_partition_ends_on_its_own_time_with_the_agents_killed() {
    let Some(lab) = lab("chexp") else { return };
    let plan = lab.plan();
    let pod = |n: &str| plan.pod(n).expect("pod").clone();
    let (web, api) = (pod("frontend/web"), pod("backend/api"));
    let file = write(&lab, "short", &format!("{PARTITION}  duration: 8s\n"));
    weir_ok(&["apply", "--lab", &lab.name, "-f", &file]);
    assert!(!udp_ok(&web.netns, &api.netns, api.ip), "partitioned while it runs");
    let listed = weir_ok(&["chaos", "list", "--lab", &lab.name]);
    assert!(listed.contains("web-api-cut") && !listed.contains("until stopped"), "{listed}");
    // Its end: the start time the agents recorded (the apply's), plus 8 s.
    let ends: std::collections::BTreeSet<u64> = list(&lab)
        .as_array()
        .expect("nodes")
        .iter()
        .flat_map(|node| node["experiments"].as_array().expect("experiments").clone())
        .map(|e| e["endUnixNs"].as_u64().expect("endUnixNs"))
        .collect();
    assert_eq!(ends.len(), 1, "both nodes agree on the end: {ends:?}");
    let end = *ends.first().expect("an end");
    for node in &plan.nodes {
        let pid = weir_lab::runtime::agent_pid(node).expect("agent running");
        weir_host::process::kill(pid, libc::SIGKILL);
        assert!(eventually(Duration::from_secs(5), || !weir_host::process::alive(pid)), "the agent died");
    }
    assert!(unix_now_ns() < end, "the agents were killed after the end: the test proves nothing");
    // With no agent left, the kernel lifts the partition at its end time:
    // probes every 10 ms both ways, each direction's first arrival timed.
    let directions = [(web.netns.clone(), api.netns.clone(), api.ip), (api.netns.clone(), web.netns.clone(), web.ip)];
    let probes: Vec<_> = directions
        .into_iter()
        .map(|(from, to, ip)| std::thread::spawn(move || first_arrival(&from, &to, ip.into(), Duration::from_secs(60))))
        .collect();
    for probe in probes {
        let arrived = probe.join().expect("probe").expect("the partition never ended");
        let after = arrived as i128 - end as i128;
        eprintln!("healed {:.3} s after the end time (duration 8s)", after as f64 / 1e9);
        // A probe is judged before it arrives: none crosses before the end.
        assert!(after >= 0, "lifted {:.3} s before its end time", -after as f64 / 1e9);
        assert!(after <= 1_000_000_000, "lifted {:.3} s after its end time", after as f64 / 1e9);
    }
}
