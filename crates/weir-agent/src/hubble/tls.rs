//! HTTPS messages from OpenSSL's probes as flows, pure. A message two
//! processes of the node exchange is seen twice, by the writer's SSL_write
//! and by the reader's SSL_read: it is reported once, with the writer as
//! the source process and the reader as the destination process. So each
//! sighting is held until its counterpart arrives, or for [`HOLD_NS`] (a
//! peer off the node, or one without OpenSSL, shows only one side); a
//! counterpart later than that is recognised and dropped. A response's
//! latency is the time from its request's first sighting to its own last
//! (the client's SSL_read when the client is seen): per connection, one
//! request outstanding, as HTTP/1.x has it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use weir_proto::flow::WeirProcess;

/// How long a sighting waits for its counterpart.
pub const HOLD_NS: u64 = 500_000_000;
/// How long a message reported with one side is remembered, so a late
/// counterpart is not reported again.
const REMEMBER_NS: u64 = 10_000_000_000;
/// Sightings held or remembered at most (then the oldest goes first).
const HELD_MAX: usize = 2048;
/// Requests waiting for their response.
const REQUESTS_MAX: usize = 4096;
/// Bytes two sightings of one message must agree on (the reader may have
/// read less than was written, or more).
const PREFIX: usize = 64;

/// One sighting: a process wrote or read a message on its socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// CLOCK_BOOTTIME, the clock of every flow's stamp (`weir_bpf::clock`).
    pub time_ns: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub write: bool,
    pub process: WeirProcess,
    pub data: Vec<u8>,
}

/// A message to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// When it was written (or read, seen only by its reader).
    pub time_ns: u64,
    /// The writer's socket and the reader's.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub response: bool,
    pub latency_ns: u64,
    pub data: Vec<u8>,
    pub source_process: Option<WeirProcess>,
    pub destination_process: Option<WeirProcess>,
}

#[derive(Debug, Clone)]
struct Pending {
    message: Message,
    /// Which sides were seen.
    written: bool,
    read: bool,
    first_ns: u64,
    last_ns: u64,
}

#[derive(Debug, Default)]
pub struct Pairing {
    held: VecDeque<Pending>,
    /// Reported with one side only: (when, the message).
    reported: VecDeque<Pending>,
    /// (client, server) → the request's first sighting.
    requests: HashMap<(SocketAddr, SocketAddr), u64>,
}

fn same_message(a: &Message, b: &Message) -> bool {
    let n = a.data.len().min(b.data.len()).min(PREFIX);
    a.src == b.src && a.dst == b.dst && a.response == b.response && a.data[..n] == b.data[..n]
}

impl Pairing {
    pub fn new() -> Self {
        Self::default()
    }

    /// A sighting; returns what is now ready to report, in order.
    pub fn observe(&mut self, sighting: Sighting) -> Vec<Message> {
        let (src, dst) =
            if sighting.write { (sighting.local, sighting.remote) } else { (sighting.remote, sighting.local) };
        let response = sighting.data.starts_with(b"HTTP/");
        let message = Message {
            time_ns: sighting.time_ns,
            src,
            dst,
            response,
            latency_ns: 0,
            data: sighting.data,
            source_process: sighting.write.then(|| sighting.process.clone()),
            destination_process: (!sighting.write).then_some(sighting.process),
        };
        let seen = Pending {
            message,
            written: sighting.write,
            read: !sighting.write,
            first_ns: sighting.time_ns,
            last_ns: sighting.time_ns,
        };
        let counterpart = |p: &Pending| p.written != seen.written && same_message(&p.message, &seen.message);
        if self.reported.iter().any(counterpart) {
            return Vec::new();
        }
        let mut out = Vec::new();
        match self.held.iter().position(counterpart) {
            Some(at) => {
                let Some(mut pending) = self.held.remove(at) else { return out };
                if seen.written {
                    // The writer's copy is the message as sent.
                    let reader = pending.message.destination_process.take();
                    pending.message = Message { destination_process: reader, ..seen.message };
                } else {
                    pending.message.destination_process = seen.message.destination_process;
                }
                pending.written = true;
                pending.read = true;
                pending.first_ns = pending.first_ns.min(seen.first_ns);
                pending.last_ns = pending.last_ns.max(seen.last_ns);
                if pending.message.response {
                    self.release_requests(pending.message.dst, pending.message.src, &mut out);
                }
                out.push(self.report(pending));
            }
            None => {
                if self.held.len() >= HELD_MAX {
                    if let Some(oldest) = self.held.pop_front() {
                        out.extend(self.report_alone(oldest));
                    }
                }
                self.held.push_back(seen);
            }
        }
        out
    }

    /// Sightings whose counterpart did not come within [`HOLD_NS`] of
    /// `now_ns` (CLOCK_BOOTTIME, the sightings' clock).
    pub fn expire(&mut self, now_ns: u64) -> Vec<Message> {
        while self.reported.front().is_some_and(|p| p.last_ns.saturating_add(REMEMBER_NS) < now_ns) {
            self.reported.pop_front();
        }
        let mut out = Vec::new();
        while self.held.front().is_some_and(|p| p.last_ns.saturating_add(HOLD_NS) <= now_ns) {
            if let Some(oldest) = self.held.pop_front() {
                out.extend(self.report_alone(oldest));
            }
        }
        out
    }

    /// A request held for the connection (client, server) goes before its response.
    fn release_requests(&mut self, client: SocketAddr, server: SocketAddr, out: &mut Vec<Message>) {
        while let Some(at) =
            self.held.iter().position(|p| !p.message.response && p.message.src == client && p.message.dst == server)
        {
            if let Some(request) = self.held.remove(at) {
                out.extend(self.report_alone(request));
            }
        }
    }

    fn report_alone(&mut self, pending: Pending) -> Vec<Message> {
        let mut out = Vec::new();
        if pending.message.response {
            self.release_requests(pending.message.dst, pending.message.src, &mut out);
        }
        if self.reported.len() >= HELD_MAX {
            self.reported.pop_front();
        }
        self.reported.push_back(pending.clone());
        out.push(self.report(pending));
        out
    }

    fn report(&mut self, pending: Pending) -> Message {
        let mut message = pending.message;
        if message.response {
            if let Some(since) = self.requests.remove(&(message.dst, message.src)) {
                message.latency_ns = pending.last_ns.saturating_sub(since);
            }
        } else {
            if self.requests.len() >= REQUESTS_MAX {
                self.requests.clear();
            }
            self.requests.insert((message.src, message.dst), pending.first_ns);
        }
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: u32, binary: &str) -> WeirProcess {
        WeirProcess { pid, binary: binary.into(), ..Default::default() }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    const CLIENT: &str = "10.0.0.1:40000";
    const SERVER: &str = "10.0.0.2:443";
    const REQUEST: &[u8] = b"GET /x HTTP/1.1\r\nHost: s\r\n\r\n";
    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\r\n";

    fn seen(time_ns: u64, client_side: bool, write: bool, data: &[u8]) -> Sighting {
        let (local, remote, p) =
            if client_side { (CLIENT, SERVER, process(1, "curl")) } else { (SERVER, CLIENT, process(2, "python3")) };
        Sighting { time_ns, local: addr(local), remote: addr(remote), write, process: p, data: data.to_vec() }
    }

    #[test]
    fn both_ends_on_the_node_report_each_message_once_with_both_processes() {
        let mut pairing = Pairing::new();
        assert!(pairing.observe(seen(100, true, true, REQUEST)).is_empty(), "held for its counterpart");
        // The server read less than was written: still the same message.
        let request = pairing.observe(seen(150, false, false, &REQUEST[..10]));
        assert_eq!(request.len(), 1);
        let r = &request[0];
        assert_eq!((r.src, r.dst, r.response), (addr(CLIENT), addr(SERVER), false));
        assert_eq!(r.data, REQUEST, "the writer's copy");
        assert_eq!(r.source_process.as_ref().map(|p| p.binary.as_str()), Some("curl"));
        assert_eq!(r.destination_process.as_ref().map(|p| p.binary.as_str()), Some("python3"));
        // The response's read comes first this time.
        assert!(pairing.observe(seen(400, true, false, RESPONSE)).is_empty());
        let response = pairing.observe(seen(300, false, true, RESPONSE));
        assert_eq!(response.len(), 1);
        let r = &response[0];
        assert_eq!((r.src, r.dst, r.response, r.time_ns), (addr(SERVER), addr(CLIENT), true, 300));
        assert_eq!(r.source_process.as_ref().map(|p| p.pid), Some(2));
        assert_eq!(r.destination_process.as_ref().map(|p| p.pid), Some(1));
        assert_eq!(r.latency_ns, 300, "from the request's write to the client's read");
        assert!(pairing.expire(u64::MAX / 2).is_empty(), "nothing left");
    }

    #[test]
    fn one_side_alone_is_reported_after_the_hold_and_a_late_counterpart_is_dropped() {
        let mut pairing = Pairing::new();
        assert!(pairing.observe(seen(1_000, true, true, REQUEST)).is_empty());
        assert!(pairing.expire(1_000 + HOLD_NS - 1).is_empty());
        let request = pairing.expire(1_000 + HOLD_NS);
        assert_eq!(request.len(), 1);
        assert!(request[0].destination_process.is_none());
        assert!(pairing.observe(seen(2_000 + HOLD_NS, false, false, REQUEST)).is_empty());
        assert!(pairing.expire(u64::MAX / 2).is_empty(), "the late read was dropped");
        // The client reads the response of a server without OpenSSL.
        assert!(pairing.observe(seen(5_000 + HOLD_NS, true, false, RESPONSE)).is_empty());
        let response = pairing.expire(6_000 + 2 * HOLD_NS);
        assert_eq!(response.len(), 1);
        assert_eq!(response[0].latency_ns, 4_000 + HOLD_NS);
        assert!(response[0].source_process.is_none());
        assert_eq!(response[0].destination_process.as_ref().map(|p| p.pid), Some(1));
    }

    #[test]
    fn a_held_request_goes_out_before_its_response() {
        let mut pairing = Pairing::new();
        // Only the client's write of the request; both sides of the response.
        assert!(pairing.observe(seen(100, true, true, REQUEST)).is_empty());
        assert!(pairing.observe(seen(200, false, true, RESPONSE)).is_empty());
        let out = pairing.observe(seen(250, true, false, RESPONSE));
        assert_eq!(out.iter().map(|m| m.response).collect::<Vec<_>>(), vec![false, true]);
        assert_eq!(out[1].latency_ns, 150);
    }
}
