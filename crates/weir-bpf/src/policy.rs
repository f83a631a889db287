//! Network policy's kernel state, pinned with the node datapath: the
//! ipcache, each local pod's policy map (created whole and swapped in with
//! one update of `policy_maps`), conntrack, the flow ring and the drop
//! counters of the pod path.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
use weir_policy::compile::{EndpointPolicy, IpcacheEntry};
use weir_policy::Direction;

use crate::api::{bytes_of, drop_reason, flow_loss, l7_outcome, read_pod, Counter};
use crate::datapath::{read_counter_array, PinLayout};
use crate::error::{map_error, percpu_u64_sum};
use crate::skel::node::types::{
    weir_flow_event, weir_ipcache6_key, weir_ipcache_entry, weir_ipcache_key, weir_l7_config, weir_l7_event,
    weir_policy_entry, weir_policy_key,
};
use crate::BpfError;

const IDENTITY_MARKER: u32 = u32::MAX;
const PREFIX_BASE: u32 = 40;
const PREFIX_FULL: u32 = 64;
const F_DENY: u32 = 0x1;
const F_INGRESS_ENFORCED: u32 = 0x2;
const F_EGRESS_ENFORCED: u32 = 0x4;

fn addr_bits(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// An IPv6 address as the kernel's `__be32 addr[4]`.
fn addr6_words(addr: Ipv6Addr) -> [u32; 4] {
    let o = addr.octets();
    std::array::from_fn(|i| u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
}

/// A packet's address from the kernel's `__be32 addr[4]` (IPv4 in [0]).
fn packet_addr(family: u8, words: [u32; 4]) -> IpAddr {
    if family == 6 {
        let mut o = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(o))
    } else {
        IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
    }
}

fn direction_code(direction: Direction) -> u8 {
    match direction {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

/// How a pod's policy map is created: as `policy_map_template`, which
/// libbpf created exactly as it created the inner-map template of
/// `policy_maps` (the kernel admits only inner maps that match it, BTF
/// included on some kernels, and libbpf drops BTF where a kernel refuses it).
#[derive(Debug)]
struct InnerTemplate {
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    /// BTF fd, key type, value type; None when the template has no BTF.
    btf: Option<(std::os::fd::OwnedFd, u32, u32)>,
}

impl InnerTemplate {
    fn of(template: &MapHandle) -> Result<Self, BpfError> {
        let info = template.info().map_err(map_error("policy_map_template"))?.info;
        let btf = (info.btf_id != 0)
            .then(|| {
                // SAFETY: a plain libbpf call; the fd is owned from here on.
                let fd = unsafe { libbpf_sys::bpf_btf_get_fd_by_id(info.btf_id) };
                // SAFETY: fd is a fresh descriptor nobody else owns.
                (fd >= 0).then(|| unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
            })
            .flatten()
            .map(|fd| (fd, info.btf_key_type_id, info.btf_value_type_id));
        Ok(Self {
            key_size: info.key_size,
            value_size: info.value_size,
            max_entries: info.max_entries,
            map_flags: info.map_flags,
            btf,
        })
    }

    fn create(&self) -> Result<MapHandle, BpfError> {
        let mut opts = libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as libbpf_sys::size_t,
            map_flags: self.map_flags,
            ..Default::default()
        };
        if let Some((fd, key, value)) = &self.btf {
            opts.btf_fd = fd.as_raw_fd() as u32;
            opts.btf_key_type_id = *key;
            opts.btf_value_type_id = *value;
        }
        MapHandle::create(
            MapType::LpmTrie,
            Some("weir_policy"),
            self.key_size,
            self.value_size,
            self.max_entries,
            &opts,
        )
        .map_err(map_error("a pod's policy map"))
    }
}

#[derive(Debug)]
pub struct PolicyMaps {
    ipcache: MapHandle,
    ipcache6: MapHandle,
    policy_maps: MapHandle,
    template: InnerTemplate,
    conntrack: MapHandle,
    drops: MapHandle,
    losses: MapHandle,
    l7_config: MapHandle,
    l7_outcomes: MapHandle,
}

impl PolicyMaps {
    pub fn open(pins: &PinLayout) -> Result<Self, BpfError> {
        Ok(Self {
            ipcache: pins.open_map("ipcache")?,
            ipcache6: pins.open_map("ipcache6")?,
            template: InnerTemplate::of(&pins.open_map("policy_map_template")?)?,
            policy_maps: pins.open_map("policy_maps")?,
            conntrack: pins.open_map("conntrack")?,
            drops: pins.open_map("pod_drops")?,
            losses: pins.open_map("flow_losses")?,
            l7_config: pins.open_map("l7_config")?,
            l7_outcomes: pins.open_map("l7_outcomes")?,
        })
    }

    /// The maps of a private, unpinned copy of the node datapath (fixtures
    /// and benchmarks through BPF_PROG_TEST_RUN).
    pub fn of(skel: &crate::skel::node::NodeSkel<'_>) -> Result<Self, BpfError> {
        let handle = |map, name| MapHandle::try_from(map).map_err(map_error(name));
        Ok(Self {
            ipcache: handle(&skel.maps.ipcache, "ipcache")?,
            ipcache6: handle(&skel.maps.ipcache6, "ipcache6")?,
            template: InnerTemplate::of(&handle(&skel.maps.policy_map_template, "policy_map_template")?)?,
            policy_maps: handle(&skel.maps.policy_maps, "policy_maps")?,
            conntrack: handle(&skel.maps.conntrack, "conntrack")?,
            drops: handle(&skel.maps.pod_drops, "pod_drops")?,
            losses: handle(&skel.maps.flow_losses, "flow_losses")?,
            l7_config: handle(&skel.maps.l7_config, "l7_config")?,
            l7_outcomes: handle(&skel.maps.l7_outcomes, "l7_outcomes")?,
        })
    }

    /// Makes the ipcache hold exactly `entries`: new and changed ones are
    /// written first, then those gone are removed, so an address never
    /// loses its identity while it has one in both states. Returns the writes.
    pub fn set_ipcache(&self, entries: &[IpcacheEntry]) -> Result<usize, BpfError> {
        let mut writes = 0;
        let (mut keep4, mut keep6) = (Vec::new(), Vec::new());
        for e in entries {
            let value = weir_ipcache_entry {
                identity: e.identity,
                tunnel_endpoint: e.tunnel_endpoint.map_or(0, addr_bits),
                address_identity: e.address_identity.unwrap_or(0),
            };
            let prefixlen = u32::from(e.cidr.prefix_len());
            let (map, key, keep, name) = match e.cidr.network() {
                IpAddr::V4(a) => {
                    let key = weir_ipcache_key { prefixlen, addr: addr_bits(a) };
                    (&self.ipcache, bytes_of(&key).to_vec(), &mut keep4, "ipcache")
                }
                IpAddr::V6(a) => {
                    let key = weir_ipcache6_key { prefixlen, addr: addr6_words(a) };
                    (&self.ipcache6, bytes_of(&key).to_vec(), &mut keep6, "ipcache6")
                }
            };
            let current = map.lookup(&key, MapFlags::ANY).map_err(map_error(name))?;
            if current.as_deref() != Some(bytes_of(&value)) {
                map.update(&key, bytes_of(&value), MapFlags::ANY).map_err(map_error(name))?;
                writes += 1;
            }
            keep.push(key);
        }
        for (map, keep, name) in [(&self.ipcache, &keep4, "ipcache"), (&self.ipcache6, &keep6, "ipcache6")] {
            let stale: Vec<Vec<u8>> = map.keys().filter(|raw| !keep.contains(raw)).collect();
            for raw in stale {
                map.delete(&raw).map_err(map_error(name))?;
                writes += 1;
            }
        }
        Ok(writes)
    }

    /// Builds `endpoint`'s policy map from `policy` and swaps it in with one
    /// update: new flows see the old policy or the new one, never a mix.
    /// Write `revision` into the endpoint's entry afterwards: conntrack
    /// entries of another revision are then judged again, so established
    /// flows the new policy refuses stop too.
    pub fn install(&self, endpoint: Ipv4Addr, policy: &EndpointPolicy, revision: u32) -> Result<(), BpfError> {
        let inner = self.template.create()?;
        let mut flags = 0;
        if policy.ingress_enforced {
            flags |= F_INGRESS_ENFORCED;
        }
        if policy.egress_enforced {
            flags |= F_EGRESS_ENFORCED;
        }
        let marker_key =
            weir_policy_key { prefixlen: PREFIX_FULL, identity: IDENTITY_MARKER, direction: 0, protocol: 0, port: 0 };
        let marker = weir_policy_entry { rule: revision, flags };
        inner
            .update(bytes_of(&marker_key), bytes_of(&marker), MapFlags::ANY)
            .map_err(map_error("a pod's policy map"))?;
        for e in &policy.entries {
            let port_bits = if e.protocol == 0 { 0 } else { 8 + u32::from(e.port_prefix) };
            let key = weir_policy_key {
                prefixlen: PREFIX_BASE + port_bits,
                identity: e.identity,
                direction: direction_code(e.direction),
                protocol: e.protocol,
                port: e.port.to_be(),
            };
            let value = weir_policy_entry { rule: e.rule, flags: if e.deny { F_DENY } else { 0 } };
            inner.update(bytes_of(&key), bytes_of(&value), MapFlags::ANY).map_err(map_error("a pod's policy map"))?;
        }
        let fd = inner.as_fd().as_raw_fd() as u32;
        self.policy_maps
            .update(&addr_bits(endpoint).to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_error("policy_maps"))
    }

    /// [`PolicyMaps::install`] for several pods. Each swap into
    /// `policy_maps` waits out an RCU grace period (the kernel makes sure
    /// no program still reads the map it replaced), so the pods are spread
    /// over a few threads whose waits overlap.
    pub fn install_many(&self, policies: &[(Ipv4Addr, &EndpointPolicy)], revision: u32) -> Result<(), BpfError> {
        const THREADS: usize = 8;
        if policies.len() <= 1 {
            return policies.iter().try_for_each(|(ip, policy)| self.install(*ip, policy, revision));
        }
        let chunk = policies.len().div_ceil(THREADS);
        std::thread::scope(|scope| {
            let workers: Vec<_> = policies
                .chunks(chunk)
                .map(|pods| scope.spawn(move || pods.iter().try_for_each(|(ip, p)| self.install(*ip, p, revision))))
                .collect();
            workers.into_iter().try_for_each(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
        })
    }

    /// Removes the policy of pods no longer here (their conntrack entries age out).
    pub fn retain(&self, endpoints: &[Ipv4Addr]) -> Result<usize, BpfError> {
        let keep: Vec<[u8; 4]> = endpoints.iter().map(|a| addr_bits(*a).to_ne_bytes()).collect();
        let stale: Vec<Vec<u8>> =
            self.policy_maps.keys().filter(|k| !keep.iter().any(|a| a.as_slice() == k.as_slice())).collect();
        for key in &stale {
            self.policy_maps.delete(key).map_err(map_error("policy_maps"))?;
        }
        Ok(stale.len())
    }

    /// How many judged flow directions conntrack holds (walks the table).
    pub fn conntrack_entries(&self) -> usize {
        self.conntrack.keys().count()
    }

    /// Packets the pod path dropped, indexed by `api::drop_reason` code.
    pub fn drops(&self) -> Result<Vec<Counter>, BpfError> {
        read_counter_array(&self.drops, drop_reason::COUNT)
    }

    /// Turns the pod path's L7 events (DNS and HTTP/1.x) on or off.
    pub fn set_l7_enabled(&self, enabled: bool) -> Result<(), BpfError> {
        let config = weir_l7_config { disabled: u32::from(!enabled) };
        self.l7_config.update(&0u32.to_ne_bytes(), bytes_of(&config), MapFlags::ANY).map_err(map_error("l7_config"))
    }

    /// What the pod path made of candidate L7 packets, by `api::l7_outcome` name.
    pub fn l7_outcomes(&self) -> Result<Vec<(&'static str, u64)>, BpfError> {
        l7_outcome::ALL
            .iter()
            .map(|(code, name, _)| Ok((*name, percpu_u64_sum(&self.l7_outcomes, *code, "l7_outcomes")?)))
            .collect()
    }

    /// Flow events the kernel could not post, by `api::flow_loss` name.
    pub fn losses(&self) -> Result<Vec<(&'static str, u64)>, BpfError> {
        flow_loss::ALL
            .iter()
            .map(|(code, name, _)| Ok((*name, percpu_u64_sum(&self.losses, *code, "flow_losses")?)))
            .collect()
    }
}

/// What kind of message an L7 event carries (`api::l7_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L7Kind {
    Dns,
    Http,
}

/// The L7 part of a flow event: the start of a DNS message or an HTTP/1.x
/// head as the pod path copied it, for the agent to parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L7Message {
    pub kind: L7Kind,
    /// A response (delivered to the client pod), else a request.
    pub response: bool,
    /// A response's time since its request; 0 when the request was not seen.
    pub latency_ns: u64,
    /// The message's first bytes (at most `WEIR_L7_PAYLOAD_BYTES`).
    pub data: Vec<u8>,
    /// Plaintext of a TLS connection, read by OpenSSL's probes (see
    /// [`crate::tls`]) rather than off the wire.
    pub tls: bool,
}

/// One flow event, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowEvent {
    /// CLOCK_BOOTTIME nanoseconds ([`crate::clock`]).
    pub time_ns: u64,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub direction: Direction,
    /// `api::flow_verdict` code.
    pub verdict: u8,
    /// `api::policy_match` code.
    pub policy_match: u8,
    /// `api::drop_reason` code.
    pub drop_reason: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub rule: u32,
    pub ifindex: u32,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    /// The process that made the local pod's socket at each end (0: not
    /// known; only a local pod's end is ever looked up).
    pub src_pid: u32,
    pub dst_pid: u32,
    /// The command name of the process at the local end (src_pid's or
    /// dst_pid's) when it made the socket, NUL-padded; all zero when none.
    pub owner_comm: [u8; 16],
    /// An L7 event's message; None for a packet's flow event.
    pub l7: Option<Arc<L7Message>>,
}

/// A ring record: a flow event, or an L7 event (a flow event and the
/// message's start), told apart by their sizes.
pub fn decode_flow(raw: &[u8]) -> Option<FlowEvent> {
    let mut event = decode_flow_event(raw)?;
    if is_l7_record(raw) {
        let (head, data) = decode_message(raw)?;
        event.l7 = Some(Arc::new(head.with_data(data.to_vec())));
    }
    Some(event)
}

/// An L7 event's peer identity as the datapath writes it: the agent finds
/// it (`WEIR_L7_PEER_IDENTITY_UNSET`, bpf/api/l7.h).
pub const L7_PEER_IDENTITY_UNSET: u32 = 0;

/// Whether a flow ring record is an L7 event: longer than a flow event
/// (an L7 record is as long as its message, bpf/api/l7.h).
fn is_l7_record(raw: &[u8]) -> bool {
    raw.len() > std::mem::size_of::<weir_flow_event>()
}

/// An L7 message's fixed part, before its bytes are copied anywhere.
#[derive(Debug, Clone, Copy)]
struct L7Head {
    kind: L7Kind,
    response: bool,
    latency_ns: u64,
}

impl L7Head {
    fn with_data(self, data: Vec<u8>) -> L7Message {
        L7Message { kind: self.kind, response: self.response, latency_ns: self.latency_ns, data, tls: false }
    }
}

/// An L7 record's message: its head, and its bytes, still in `raw`. Read
/// field by field: the record is as long as its message, and a copy of the
/// whole struct would copy its full-size data array.
fn decode_message(raw: &[u8]) -> Option<(L7Head, &[u8])> {
    use std::mem::offset_of;
    let bytes = |at: usize, n: usize| raw.get(at..at + n);
    let latency_ns = u64::from_ne_bytes(bytes(offset_of!(weir_l7_event, latency_ns), 8)?.try_into().ok()?);
    let kind = match u32::from(*raw.get(offset_of!(weir_l7_event, kind))?) {
        crate::api::l7_kind::DNS => L7Kind::Dns,
        crate::api::l7_kind::HTTP => L7Kind::Http,
        _ => return None,
    };
    let response = u32::from(*raw.get(offset_of!(weir_l7_event, r#type))?) == L7_RESPONSE;
    let len = u16::from_ne_bytes(bytes(offset_of!(weir_l7_event, len), 2)?.try_into().ok()?);
    let start = offset_of!(weir_l7_event, data);
    let data = raw.get(start..)?;
    let len = usize::from(len).min(data.len());
    Some((L7Head { kind, response, latency_ns }, &data[..len]))
}

/// The flow events one read of the kernel's ring found, oldest first. An
/// L7 event's message stays as bytes in the batch until the event is
/// taken: the reader allocates nothing per event, and what a taker keeps
/// is allocated as it takes it (after it has made room, so the allocator
/// hands back memory it has just freed rather than memory freed a batch
/// ago, out of the cache by then).
#[derive(Debug, Default)]
pub struct FlowBatch {
    events: Vec<FlowEvent>,
    /// The L7 events' messages, in order: the event's index, the message's
    /// head and where its bytes are in `payload`.
    messages: Vec<(usize, L7Head, std::ops::Range<usize>)>,
    /// The messages' bytes, one after another.
    payload: Vec<u8>,
}

impl FlowBatch {
    /// Decodes one ring record into the batch; false (and nothing added)
    /// when it is none Weir writes.
    pub fn push_record(&mut self, raw: &[u8]) -> bool {
        let Some(event) = decode_flow_event(raw) else {
            return false;
        };
        if self.events.is_empty() {
            self.payload.clear();
        }
        if is_l7_record(raw) {
            let Some((head, data)) = decode_message(raw) else {
                return false;
            };
            let start = self.payload.len();
            self.payload.extend_from_slice(data);
            self.messages.push((self.events.len(), head, start..self.payload.len()));
        }
        self.events.push(event);
        true
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Whether any of its events is an L7 event (the kind that allocates
    /// what the ring keeps).
    pub fn has_messages(&self) -> bool {
        !self.messages.is_empty()
    }

    /// Lets every event go, allocating nothing for their messages.
    pub fn clear(&mut self) {
        self.events.clear();
        self.messages.clear();
        self.payload.clear();
    }

    /// Takes every event, oldest first, each L7 message copied out as its
    /// event is taken. The batch is empty afterwards, however much of the
    /// iterator was used (its bytes are let go at the next push).
    pub fn drain(&mut self) -> impl Iterator<Item = FlowEvent> + '_ {
        let payload = &self.payload;
        let mut messages = self.messages.drain(..);
        let mut next = messages.next();
        self.events.drain(..).enumerate().map(move |(index, mut event)| {
            if let Some((_, head, range)) = next.take_if(|(at, _, _)| *at == index) {
                event.l7 = Some(Arc::new(head.with_data(payload[range].to_vec())));
                next = messages.next();
            }
            event
        })
    }
}

/// Hubble's L7FlowType RESPONSE, as bpf/api/l7.h numbers it.
const L7_RESPONSE: u32 = 2;

fn decode_flow_event(raw: &[u8]) -> Option<FlowEvent> {
    let e: weir_flow_event = read_pod(raw)?;
    Some(FlowEvent {
        time_ns: e.time_ns,
        src: packet_addr(e.family, e.src),
        dst: packet_addr(e.family, e.dst),
        sport: u16::from_be(e.sport),
        dport: u16::from_be(e.dport),
        protocol: e.protocol,
        direction: if e.direction == 0 { Direction::Ingress } else { Direction::Egress },
        verdict: e.verdict,
        policy_match: e.r#match,
        drop_reason: e.drop_reason,
        src_identity: e.src_identity,
        dst_identity: e.dst_identity,
        rule: e.rule,
        ifindex: e.ifindex,
        tcp_flags: e.tcp_flags,
        icmp_type: e.icmp_type,
        src_pid: e.src_pid,
        dst_pid: e.dst_pid,
        owner_comm: e.owner_comm.map(|c| c as u8),
        l7: None,
    })
}

/// Reads the pinned flow ring on a thread of its own until dropped.
#[derive(Debug)]
pub struct FlowReader {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Events handed over at most at once.
const BATCH_MAX: usize = 4096;

/// The pace of reading: the kernel wakes the reader only when a backlog builds.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

impl FlowReader {
    /// Reads on a thread of its own; `on_events` takes each batch the
    /// kernel's ring held (in order), to be drained (what it leaves is
    /// dropped).
    pub fn start(pins: &PinLayout, on_events: impl FnMut(&mut FlowBatch) + Send + 'static) -> Result<Self, BpfError> {
        let ring_map = pins.open_map("flow_ring")?;
        let ring_bytes = ring_map.max_entries() as usize;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("weir-flows".into())
            .spawn(move || {
                // Decoded into a batch, handed over once the ring is drained
                // (or the batch is full, under a flood that keeps it from
                // draining): the reader's locks and names are taken once per
                // batch.
                let batch = std::rc::Rc::new(std::cell::RefCell::new((FlowBatch::default(), on_events)));
                let filling = batch.clone();
                // What each read finds sets the thread's priority.
                let priority = std::rc::Rc::new(std::cell::RefCell::new(
                    crate::reader_priority::ReaderPriority::start(ring_bytes),
                ));
                let counting = priority.clone();
                let mut builder = libbpf_rs::RingBufferBuilder::new();
                let built = builder
                    .add(&ring_map, move |raw: &[u8]| {
                        counting.borrow_mut().record(raw.len());
                        let mut batch = filling.borrow_mut();
                        let (events, on_events) = &mut *batch;
                        if events.push_record(raw) && events.len() >= BATCH_MAX {
                            on_events(events);
                            events.clear();
                        }
                        0
                    })
                    .map(|_| ())
                    .and_then(|()| builder.build());
                let ring = match built {
                    Ok(ring) => {
                        let _ = ready_tx.send(Ok(()));
                        ring
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(map_error("flow_ring")(e)));
                        return;
                    }
                };
                while !thread_stop.load(Ordering::Relaxed) {
                    let waiting = std::time::Instant::now();
                    let read = ring.poll(POLL_INTERVAL).and_then(|()| ring.consume());
                    let mut batch = batch.borrow_mut();
                    let (events, on_events) = &mut *batch;
                    if !events.is_empty() {
                        on_events(events);
                        events.clear();
                    }
                    drop(batch);
                    let now = std::time::Instant::now();
                    priority.borrow_mut().read_done(now - waiting, POLL_INTERVAL, now);
                    if let Err(e) = read {
                        tracing::warn!(error = %e, "reading flow events");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
            .map_err(|source| BpfError::Query { what: "starting the flow reader".into(), source })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self { stop, thread: Some(thread) }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(BpfError::Query {
                    what: "the flow reader".into(),
                    source: std::io::Error::other("stopped before it was ready"),
                })
            }
        }
    }
}

impl Drop for FlowReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
