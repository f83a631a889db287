//! The delay line: delayed packets held in the agent. The kernel sends a
//! delayed packet out of the shaper veth marked `WEIR_CHAOS_DELAY_MARK`;
//! one packet socket bound there reads it on the way out (a socket filter
//! takes only that mark) with its virtio-net header, so checksum offload
//! and GSO survive the trip; the pair's far end consumes the kernel's copy.
//! When the packet is due, the same socket sends it out of the shaper veth
//! again, marked `WEIR_CHAOS_SHAPED_MARK` (SO_MARK), and the far end's
//! program hands it back to its sender's veth, where the node program
//! judges and routes it. (One socket reads and writes: the kernel never
//! shows a socket what it sent itself.)
//!
//! Why in the agent: this kernel has neither netem nor fq, so no qdisc
//! can hold a packet for a time, and a BPF program cannot hold one at all.
//! The agent renews a lease in the kernel while it runs; should it die,
//! the lease lapses within [`LEASE`] and delayed pairs' packets pass
//! undelayed until the experiment's end time or a new agent.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use weir_bpf::datapath::PinLayout;
use weir_chaos::{DelayModel, DelayState};

use super::ChaosError;

/// How long the kernel trusts the agent to read the line after a renewal.
pub const LEASE: Duration = Duration::from_millis(500);
const RENEW: Duration = Duration::from_millis(100);
/// Most packets, and bytes, held at once; more are lost (and counted).
const MAX_HELD: usize = 100_000;
const MAX_HELD_BYTES: usize = 256 << 20;
const VNET_HDR_LEN: usize = 10;
/// Marks of `bpf/api/chaos.h`: what the line reads, what it sends back.
const DELAY_MARK: u32 = weir_bpf::api::chaos_mark::DELAY;
const RETURN_MARK: u32 = weir_bpf::api::chaos_mark::SHAPED;

/// Where each delayed pair's packets belong: its experiment's slot and model.
pub type Routes = HashMap<(IpAddr, IpAddr), (u32, DelayModel)>;

#[derive(Default)]
struct Shared {
    routes: Routes,
    /// netem's per-device state, here per experiment and sender.
    states: HashMap<(u32, IpAddr), DelayState>,
    held: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>>,
    held_bytes: usize,
    sequence: u64,
    /// Packets lost because too many were held, by slot.
    overflow: HashMap<u32, u64>,
    stop: bool,
}

pub struct DelayLine {
    shared: Arc<(Mutex<Shared>, Condvar)>,
    socket: Arc<OwnedFd>,
    lease: weir_bpf::chaos::DelayLine,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for DelayLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayLine").field("socket", &self.socket.as_raw_fd()).finish()
    }
}

fn os_error(what: &str) -> ChaosError {
    ChaosError::Shaper(format!("the delay line: {what}: {}", std::io::Error::last_os_error()))
}

fn set_option<T>(fd: &OwnedFd, level: i32, name: i32, value: &T, what: &str) -> Result<(), ChaosError> {
    // SAFETY: a valid socket and a value of the size given.
    let rc = unsafe {
        libc::setsockopt(fd.as_raw_fd(), level, name, (value as *const T).cast(), std::mem::size_of::<T>() as u32)
    };
    if rc != 0 {
        return Err(os_error(what));
    }
    Ok(())
}

/// A packet socket on `ifindex` that reads only delayed packets and
/// writes with the return mark.
fn line_socket(ifindex: u32) -> Result<OwnedFd, ChaosError> {
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the fd is owned below.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(all)) };
    if raw < 0 {
        return Err(os_error("socket"));
    }
    // SAFETY: raw was just returned to us and is owned here alone.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_option(&fd, libc::SOL_PACKET, libc::PACKET_VNET_HDR, &1i32, "PACKET_VNET_HDR")?;
    set_option(&fd, libc::SOL_SOCKET, libc::SO_MARK, &RETURN_MARK, "SO_MARK")?;
    set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &(64i32 << 20), "SO_RCVBUFFORCE")?;
    let timeout = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
    set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout, "SO_RCVTIMEO")?;
    // Classic BPF: keep a packet only when its mark has DELAY_MARK.
    let skf_ad_mark = (libc::SKF_AD_OFF + libc::SKF_AD_MARK) as u32;
    let mut program = [
        libc::sock_filter { code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, jt: 0, jf: 0, k: skf_ad_mark },
        libc::sock_filter { code: (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16, jt: 0, jf: 0, k: DELAY_MARK },
        libc::sock_filter { code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16, jt: 0, jf: 1, k: 0 },
        libc::sock_filter { code: (libc::BPF_RET | libc::BPF_K) as u16, jt: 0, jf: 0, k: 0 },
        libc::sock_filter { code: (libc::BPF_RET | libc::BPF_K) as u16, jt: 0, jf: 0, k: u32::MAX },
    ];
    let filter = libc::sock_fprog { len: program.len() as u16, filter: program.as_mut_ptr() };
    set_option(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &filter, "SO_ATTACH_FILTER")?;
    // SAFETY: a zeroed sockaddr_ll is valid; the fields that matter are set.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = all;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: a valid socket and a sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(os_error("bind"));
    }
    Ok(fd)
}

/// The (source, destination) addresses of an Ethernet frame.
fn addresses(frame: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]) {
        0x0800 if frame.len() >= 34 => {
            let v4 = |at: usize| <[u8; 4]>::try_from(&frame[at..at + 4]).ok().map(IpAddr::from);
            Some((v4(26)?, v4(30)?))
        }
        0x86dd if frame.len() >= 54 => {
            let v6 = |at: usize| <[u8; 16]>::try_from(&frame[at..at + 16]).ok().map(IpAddr::from);
            Some((v6(22)?, v6(38)?))
        }
        _ => None,
    }
}

fn xorshift(seed: u64) -> impl FnMut() -> u32 {
    let mut state = seed | 1;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 16) as u32
    }
}

/// Reads delayed packets and schedules them.
fn receive(socket: Arc<OwnedFd>, shared: Arc<(Mutex<Shared>, Condvar)>) {
    let mut buf = vec![0u8; VNET_HDR_LEN + 65_600];
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    let mut fresh = xorshift(seed);
    let (lock, wake) = &*shared;
    loop {
        // SAFETY: a zeroed sockaddr_ll is valid for recvfrom to fill.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: buf and from are valid for writes of the sizes given.
        let n = unsafe {
            libc::recvfrom(
                socket.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut from_len,
            )
        };
        let Ok(mut shared) = lock.lock() else { return };
        if shared.stop {
            return;
        }
        if n <= VNET_HDR_LEN as isize || from.sll_pkttype != libc::PACKET_OUTGOING {
            continue;
        }
        let packet = buf[..n as usize].to_vec();
        let now = Instant::now();
        // A pair's route, or a DNS delay's: its sender to any server.
        let route = addresses(&packet[VNET_HDR_LEN..]).and_then(|pair| {
            let any = if pair.0.is_ipv6() {
                IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::from(std::net::Ipv4Addr::UNSPECIFIED)
            };
            Some((pair, *shared.routes.get(&pair).or_else(|| shared.routes.get(&(pair.0, any)))?))
        });
        let (due, slot) = match route {
            Some(((src, _), (slot, model))) => {
                let state = shared.states.entry((slot, src)).or_default();
                (now + state.next_delay(&model, &mut fresh), Some(slot))
            }
            // Its experiment just ended: on its way at once.
            None => (now, None),
        };
        if shared.held.len() >= MAX_HELD || shared.held_bytes + packet.len() > MAX_HELD_BYTES {
            if let Some(slot) = slot {
                *shared.overflow.entry(slot).or_default() += 1;
            }
            continue;
        }
        shared.sequence += 1;
        shared.held_bytes += packet.len();
        let sequence = shared.sequence;
        shared.held.push(Reverse((due, sequence, packet)));
        wake.notify_one();
    }
}

fn send(socket: &OwnedFd, packet: &[u8]) {
    // SAFETY: a valid socket and a buffer of the length given.
    let rc = unsafe { libc::send(socket.as_raw_fd(), packet.as_ptr().cast(), packet.len(), 0) };
    if rc < 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "the delay line could not send a packet back");
    }
}

/// Sends packets back when due and renews the lease.
fn release(
    socket: Arc<OwnedFd>,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    lease: weir_bpf::chaos::DelayLine,
    ifindex: u32,
) {
    let (lock, wake) = &*shared;
    let mut renewed = Instant::now();
    loop {
        if renewed.elapsed() >= RENEW {
            if let Err(e) = lease.lease(ifindex, weir_bpf::ktime_now_ns() + LEASE.as_nanos() as u64) {
                tracing::warn!(error = %e, "renewing the delay line's lease");
            }
            renewed = Instant::now();
        }
        let Ok(mut guard) = lock.lock() else { return };
        if guard.stop {
            return;
        }
        let now = Instant::now();
        let mut due = Vec::new();
        while guard.held.peek().is_some_and(|Reverse((at, _, _))| *at <= now) {
            if let Some(Reverse((_, _, packet))) = guard.held.pop() {
                guard.held_bytes -= packet.len();
                due.push(packet);
            }
        }
        if due.is_empty() {
            let next = guard.held.peek().map_or(RENEW, |Reverse((at, _, _))| at.saturating_duration_since(now));
            let _ = wake.wait_timeout(guard, next.min(RENEW));
            continue;
        }
        drop(guard);
        for packet in &due {
            send(&socket, packet);
        }
    }
}

impl DelayLine {
    /// Starts reading delayed packets out of `ifindex` (the shaper veth)
    /// and takes the kernel's lease.
    pub fn start(pins: &PinLayout, ifindex: u32, routes: Routes) -> Result<Self, ChaosError> {
        let socket = Arc::new(line_socket(ifindex)?);
        let shared = Arc::new((Mutex::new(Shared { routes, ..Default::default() }), Condvar::new()));
        let lease = weir_bpf::chaos::DelayLine::open(pins)?;
        lease.lease(ifindex, weir_bpf::ktime_now_ns() + LEASE.as_nanos() as u64)?;
        let renewer = weir_bpf::chaos::DelayLine::open(pins)?;
        let spawn = |name: &str, work: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name.into()).spawn(work).map_err(|e| ChaosError::Shaper(e.to_string()))
        };
        let (s1, sh1) = (socket.clone(), shared.clone());
        let (s2, sh2) = (socket.clone(), shared.clone());
        let threads = vec![
            spawn("chaos-delay-rx", Box::new(move || receive(s1, sh1)))?,
            spawn("chaos-delay-tx", Box::new(move || release(s2, sh2, renewer, ifindex)))?,
        ];
        tracing::info!(ifindex, "chaos delay line started");
        Ok(Self { shared, socket, lease, threads })
    }

    /// The delayed pairs from now on.
    pub fn set_routes(&self, routes: Routes) {
        if let Ok(mut shared) = self.shared.0.lock() {
            shared.states.retain(|(slot, _), _| routes.values().any(|(s, _)| s == slot));
            shared.routes = routes;
        }
    }

    /// Packets of the experiment in `slot` lost because too many were held.
    pub fn overflow(&self, slot: u32) -> u64 {
        self.shared.0.lock().ok().and_then(|s| s.overflow.get(&slot).copied()).unwrap_or(0)
    }

    /// Gives the lease back (the kernel stops sending packets here), stops
    /// the threads and sends every packet still held on its way at once.
    pub fn stop(mut self) {
        if let Err(e) = self.lease.lease(0, 0) {
            tracing::warn!(error = %e, "giving the delay line's lease back");
        }
        if let Ok(mut shared) = self.shared.0.lock() {
            shared.stop = true;
        }
        self.shared.1.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let held = self.shared.0.lock().map(|mut s| std::mem::take(&mut s.held)).unwrap_or_default();
        for Reverse((_, _, packet)) in held.into_sorted_vec().into_iter().rev() {
            send(&self.socket, &packet);
        }
        tracing::info!("chaos delay line stopped");
    }
}
