//! A DNS server for lab tests: answers every A query with one address, but
//! names under [`NXDOMAIN_LABEL`], which do not exist.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The address the lab's DNS server gives every name.
pub const ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
/// The TTL of its answers.
pub const TTL: u32 = 30;
/// The first label of the names it answers NXDOMAIN (no records).
pub const NXDOMAIN_LABEL: &str = "nxdomain";

/// A DNS server on `ip`:53 in `netns`, answering every A query with
/// [`ANSWER`] (NOERROR, TTL [`TTL`], no EDNS), until dropped.
pub struct DnsServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The answer to `query`: its ID, question and RD; one A record when it
/// asks for A, and NXDOMAIN with none for a name under [`NXDOMAIN_LABEL`].
pub fn answer(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let mut end = 12;
    while *query.get(end)? != 0 {
        end += 1 + query[end] as usize;
    }
    let question = query.get(12..end + 5)?;
    let first = question.get(1..1 + usize::from(question[0]))?;
    let missing = first.eq_ignore_ascii_case(NXDOMAIN_LABEL.as_bytes());
    let is_a = !missing && question[question.len() - 4..question.len() - 2] == [0, 1];
    let rcode = if missing { 3 } else { 0 };
    let mut out = vec![query[0], query[1], 0x84 | (query[2] & 0x01), 0x80 | rcode, 0, 1, 0, u8::from(is_a), 0, 0, 0, 0];
    out.extend_from_slice(question);
    if is_a {
        out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&[0, 4]);
        out.extend_from_slice(&ANSWER.octets());
    }
    Some(out)
}

pub fn dns_server(netns: &str, ip: Ipv4Addr) -> DnsServer {
    let socket = weir_host::netns::run_in(netns, || UdpSocket::bind((ip, 53))).expect("netns").expect("bind :53");
    socket.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while !stopped.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                if let Some(reply) = answer(&buf[..n]) {
                    let _ = socket.send_to(&reply, peer);
                }
            }
        }
    });
    DnsServer { stop, thread: Some(thread) }
}
