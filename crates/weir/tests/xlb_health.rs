//! The XDP load balancer's health checks end to end (the lab of
//! common::xlb): each real is probed through the encapsulation its traffic
//! takes — an HTTP GET of /healthz over IPIP, a UDP payload over IPIP, a
//! DNS query over GUE — and a real that fails leaves the VIP's ring (every
//! new client flow reaches the other real; `weir lb status` says why) and
//! comes back once it passes.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::xlb::{lb_status, status_real, Site};
use common::*;

const HTTP_VIP: &str = "198.51.100.10";
const UDP_VIP: &str = "198.51.100.13";
const DNS_VIP: &str = "198.51.100.14";
const UDP_PORT: u16 = 5300;
const REALS: [&str; 2] = ["10.2.1.2", "10.2.2.2"];

/// An HTTP server on port 80 of `ns` answering `name`; /healthz answers
/// 503 while `sick` holds.
fn serve_http(ns: &str, name: &'static str, sick: Arc<AtomicBool>) {
    let listener = weir_host::netns::run_in(ns, || TcpListener::bind(("0.0.0.0", 80))).expect("netns").expect("bind");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            let health = head.starts_with(b"GET /healthz ");
            let status = if health && sick.load(Ordering::SeqCst) { "503 Service Unavailable" } else { "200 OK" };
            let _ = write!(stream, "HTTP/1.0 {status}\r\nContent-Length: {}\r\n\r\n{name}", name.len());
        }
    });
}

/// A UDP server bound to `vip`:UDP_PORT in `ns` (so it answers from the
/// VIP): `who` is answered with `name`, anything else echoed (a DNS query
/// comes back with its id); nothing is answered while `mute` holds.
fn serve_udp(ns: &str, vip: &str, name: &'static str, mute: Arc<AtomicBool>) {
    let address: SocketAddr = format!("{vip}:{UDP_PORT}").parse().expect("addr");
    let socket = weir_host::netns::run_in(ns, || UdpSocket::bind(address)).expect("netns").expect("bind");
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf) else { return };
            if mute.load(Ordering::SeqCst) {
                continue;
            }
            let answer = if &buf[..n] == b"who" { name.as_bytes() } else { &buf[..n] };
            let _ = socket.send_to(answer, from);
        }
    });
}

/// A new connection from the client to the HTTP VIP: who answered.
fn ask_http(site: &Site) -> Option<String> {
    weir_host::netns::run_in(&site.ns("client"), || {
        let addr: SocketAddr = format!("{HTTP_VIP}:80").parse().ok()?;
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut got = String::new();
        stream.read_to_string(&mut got).ok()?;
        Some(got.split("\r\n\r\n").nth(1)?.to_string())
    })
    .expect("netns")
}

/// A new flow (a fresh source port) from the client to `vip`: who
/// answered `who` (asked three times at most, a second apart).
fn ask_udp(site: &Site, vip: &str) -> Option<String> {
    weir_host::netns::run_in(&site.ns("client"), || {
        let socket = UdpSocket::bind(("0.0.0.0", 0)).ok()?;
        socket.connect((vip, UDP_PORT)).ok()?;
        socket.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            socket.send(b"who").ok()?;
            if let Ok(n) = socket.recv(&mut buf) {
                return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        None
    })
    .expect("netns")
}

/// (healthy, probe, why it failed) of `real` in VIP `vip`.
fn health(socket: &std::path::Path, vip: &str, real: &str) -> Option<(bool, String, String)> {
    let real = status_real(&lb_status(socket), vip, real)?;
    Some((real["healthy"].as_bool()?, real["probe"].as_str()?.into(), real["probeFailure"].as_str()?.into()))
}

/// Until `deadline`, new flows (asked by `ask`) reach both reals.
fn both_answer(deadline: Duration, mut ask: impl FnMut() -> Option<String>) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    eventually(deadline, || {
        seen.extend(ask());
        seen.len() == 2
    });
    seen
}

#[test]
fn reals_failing_http_udp_and_dns_probes_leave_the_ring_and_come_back() {
    if !privileged("reals_failing_http_udp_and_dns_probes_leave_the_ring_and_come_back") {
        return;
    }
    let mut site = Site::up("xlbh", &[HTTP_VIP, UDP_VIP, DNS_VIP], &[]);
    let (sick1, sick2) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let (mute1, mute2) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    for (member, name, sick, mute) in [("real1", "real1", &sick1, &mute1), ("real2", "real2", &sick2, &mute2)] {
        serve_http(&site.ns(member), name, sick.clone());
        for vip in [UDP_VIP, DNS_VIP] {
            serve_udp(&site.ns(member), vip, name, mute.clone());
        }
    }
    let [(_lb_agent, lb), _real1, _real2] = site.start_agents(&[]);
    let reals = "reals: [{address: 10.2.1.2}, {address: 10.2.2.2}]";
    site.apply(
        &lb,
        &format!(
            "  - {{name: web, address: {HTTP_VIP}, port: 80, protocol: TCP, {reals}, healthCheck: {{type: HTTP, path: /healthz}}}}\n  \
             - {{name: echo, address: {UDP_VIP}, port: {UDP_PORT}, protocol: UDP, {reals}, healthCheck: {{type: UDP, payload: ping}}}}\n  \
             - {{name: dns, address: {DNS_VIP}, port: {UDP_PORT}, protocol: UDP, forwarding: GUE, {reals}, healthCheck: {{type: DNS}}}}\n"
        ),
    );
    let text_status = || weir_ok(&["lb", "status", "--socket", &lb.to_string_lossy()]);
    for (vip, probe) in [("web", "HTTP /healthz"), ("echo", "UDP"), ("dns", "DNS")] {
        for real in REALS {
            let got = health(&lb, vip, real);
            assert_eq!(got, Some((true, probe.to_string(), String::new())), "{vip} {real}: {}", text_status());
        }
    }
    // Every real serves every VIP.
    let seen = both_answer(Duration::from_secs(30), || ask_http(&site));
    assert_eq!(seen.len(), 2, "both reals answer the HTTP VIP: {seen:?}\n{}", text_status());
    for vip in [UDP_VIP, DNS_VIP] {
        let seen = both_answer(Duration::from_secs(30), || ask_udp(&site, vip));
        assert_eq!(seen.len(), 2, "both reals answer {vip}: {seen:?}\n{}", text_status());
    }

    // HTTP: real2's /healthz answers 503: it leaves the ring, and says why.
    sick2.store(true, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(20), || health(&lb, "web", REALS[1]).is_some_and(|h| !h.0)),
        "real2 failed its HTTP probe: {}",
        text_status()
    );
    assert_eq!(health(&lb, "web", REALS[1]).map(|h| h.2), Some("HTTP 503".to_string()));
    assert!(text_status().contains("10.2.2.2 (1, 0, "), "out of the ring: {}", text_status());
    assert!(text_status().contains("HTTP /healthz DOWN: HTTP 503"), "{}", text_status());
    assert_eq!(health(&lb, "web", REALS[0]).map(|h| h.0), Some(true), "{}", text_status());
    for _ in 0..10 {
        assert_eq!(ask_http(&site).as_deref(), Some("real1"), "new connections reach the healthy real only");
    }
    sick2.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(20), || health(&lb, "web", REALS[1]).is_some_and(|h| h.0)),
        "real2 passes again: {}",
        text_status()
    );
    let seen = both_answer(Duration::from_secs(30), || ask_http(&site));
    assert_eq!(seen.len(), 2, "real2 back in the HTTP VIP's ring: {seen:?}");

    // UDP and DNS: real2 stops answering: it leaves both rings.
    mute2.store(true, Ordering::SeqCst);
    for vip in ["echo", "dns"] {
        assert!(
            eventually(Duration::from_secs(20), || health(&lb, vip, REALS[1]).is_some_and(|h| !h.0)),
            "real2 failed its {vip} probe: {}",
            text_status()
        );
        assert_eq!(health(&lb, vip, REALS[1]).map(|h| h.2), Some("timeout".to_string()));
    }
    for vip in [UDP_VIP, DNS_VIP] {
        for _ in 0..10 {
            assert_eq!(ask_udp(&site, vip).as_deref(), Some("real1"), "new flows to {vip} reach the healthy real only");
        }
    }
    mute2.store(false, Ordering::SeqCst);
    for vip in ["echo", "dns"] {
        assert!(
            eventually(Duration::from_secs(20), || health(&lb, vip, REALS[1]).is_some_and(|h| h.0)),
            "real2 passes its {vip} probe again: {}",
            text_status()
        );
    }
    for vip in [UDP_VIP, DNS_VIP] {
        let seen = both_answer(Duration::from_secs(30), || ask_udp(&site, vip));
        assert_eq!(seen.len(), 2, "real2 back in {vip}'s ring: {seen:?}");
    }
}
