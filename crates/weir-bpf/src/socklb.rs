//! The socket load balancer: loads it, pins it, attaches it to a cgroup's
//! sock_addr hooks (adopting pinned links on a restart), executes planned
//! map writes, and reads the tables and counters back.

use std::collections::{BTreeMap, BTreeSet};
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
use serde::Serialize;
use weir_service::plan::{
    BackendEntry, BackendKey, FrontendEntry, FrontendKey, FrontendMeta, KernelBackendState, Op, Tables, MAGLEV_SIZE,
};

use crate::api::bytes_of;
use crate::datapath::{adopt_link, ensure_dir, pin_maps_and_programs, replace_pin, reuse_pinned_maps, PinLayout};
use crate::error::map_error;
use crate::skel::socklb::types;
use crate::skel::socklb::SocklbSkelBuilder;
use crate::socklb_quiet::{QuietFlags, Skippable};
use crate::BpfError;

#[path = "socklb_picks.rs"]
mod picks;

const OBJECT: &str = "socklb";
const F_AFFINITY: u16 = 1 << 0;
const F_MAGLEV: u16 = 1 << 1;
const F_EXTERNAL: u16 = 1 << 2;
const F_SOURCE_RANGES: u16 = 1 << 3;
/// WEIR_LB_SUSPECT_SECONDS in bpf/api/service.h: how long a suspect mark holds unless a probe clears it.
pub const SUSPECT_SECONDS: u64 = 30;
/// WEIR_LB_MAX_GONE in bpf/api/service.h.
const MAX_GONE: usize = 4096;

/// Program name and the cgroup hook it serves, in attach order.
pub const HOOKS: [(&str, &str); 9] = [
    ("weir_lb_connect4", "connect4"),
    ("weir_lb_connect6", "connect6"),
    ("weir_lb_sendmsg4", "sendmsg4"),
    ("weir_lb_sendmsg6", "sendmsg6"),
    ("weir_lb_recvmsg4", "recvmsg4"),
    ("weir_lb_recvmsg6", "recvmsg6"),
    ("weir_lb_getpeername4", "getpeername4"),
    ("weir_lb_getpeername6", "getpeername6"),
    ("weir_lb_sockops", "sockops"),
];

/// One program on one cgroup hook.
#[derive(Debug, Clone, Serialize)]
pub struct CgroupAttachment {
    pub hook: String,
    pub program: String,
    pub link_pin: PathBuf,
    /// True when a pinned link from an earlier run was updated in place.
    pub adopted: bool,
}

fn link_pin(pins: &PinLayout, hook: &str) -> PathBuf {
    pins.links().join(format!("socklb-{hook}"))
}

/// Loads the socket load balancer, reusing pinned maps, and attaches it to
/// every sock_addr hook of `cgroup` (and so to every cgroup below it).
pub fn establish(pins: &PinLayout, cgroup: &Path) -> Result<Vec<CgroupAttachment>, BpfError> {
    for dir in [pins.maps(), pins.progs(), pins.links()] {
        ensure_dir(&dir)?;
    }
    let mut storage = MaybeUninit::uninit();
    let mut open =
        SocklbSkelBuilder::default().open(&mut storage).map_err(|source| BpfError::Open { object: OBJECT, source })?;
    let reused = reuse_pinned_maps(open.open_object_mut(), pins)?;
    let mut skel = open.load().map_err(|source| BpfError::Load { object: OBJECT, source })?;
    pin_maps_and_programs(skel.object_mut(), pins, &reused)?;
    // A restarted agent's flags follow what the pinned maps hold.
    crate::socklb_quiet::derive(pins)?;

    let dir = std::fs::File::open(cgroup).map_err(|source| BpfError::PinDir { path: cgroup.to_path_buf(), source })?;
    let mut out = Vec::new();
    for prog in skel.object_mut().progs_mut() {
        let name = prog.name().to_string_lossy().into_owned();
        let Some((_, hook)) = HOOKS.iter().find(|(p, _)| *p == name) else { continue };
        let pin = link_pin(pins, hook);
        let adopted = adopt_link(&pin, &prog).is_some();
        if !adopted {
            replace_pin(&pin)?;
            let mut link = prog.attach_cgroup(dir.as_raw_fd()).map_err(|source| BpfError::Attach {
                program: name.clone(),
                target: format!("cgroup {} ({hook})", cgroup.display()),
                source,
            })?;
            link.pin(&pin).map_err(|source| BpfError::Pin {
                what: format!("{hook} link"),
                path: pin.clone(),
                source,
            })?;
        }
        out.push(CgroupAttachment { hook: (*hook).to_string(), program: name, link_pin: pin, adopted });
    }
    Ok(out)
}

/// True when the socket load balancer's links are pinned (it was established).
pub fn is_established(pins: &PinLayout) -> bool {
    link_pin(pins, HOOKS[0].1).exists()
}

fn addr_words(address: IpAddr) -> ([u32; 4], u8) {
    match address {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], 4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            (std::array::from_fn(|i| u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])), 6)
        }
    }
}

fn words_addr(words: [u32; 4], family: u8) -> IpAddr {
    if family == 4 {
        IpAddr::from(words[0].to_ne_bytes())
    } else {
        let mut o = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::from(o)
    }
}

fn key_of(frontend: &FrontendKey, slot: u16) -> types::weir_lb_key {
    let (addr, family) = addr_words(frontend.address);
    types::weir_lb_key {
        addr,
        port: u16::from_ne_bytes(frontend.port.to_be_bytes()),
        proto: frontend.proto,
        family,
        slot,
        pad: 0,
    }
}

/// A backend as the kernel holds it (state active).
/// The trie key of one range of one service port: the id leads, then the address.
fn source_range_key(service_id: u32, range: &Ipv4Net) -> crate::skel::node::types::weir_lb_source_range_key {
    crate::skel::node::types::weir_lb_source_range_key {
        prefixlen: 32 + u32::from(range.prefix_len()),
        service_id,
        addr: u32::from_ne_bytes(range.network().octets()),
    }
}

fn backend_value(key: &BackendKey, service_id: u32) -> types::weir_lb_backend {
    let (addr, family) = addr_words(key.address);
    types::weir_lb_backend {
        addr,
        port: u16::from_ne_bytes(key.port.to_be_bytes()),
        proto: key.proto,
        family,
        state: 0,
        pad: [0; 3],
        service_id,
    }
}

fn read_pod<T: Copy + Default>(bytes: &[u8]) -> T {
    let mut value = T::default();
    let n = bytes.len().min(std::mem::size_of::<T>());
    // SAFETY: T is a generated repr(C) struct of integers, valid for any bit pattern; at most size_of::<T>() bytes are copied.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut value as *mut T).cast::<u8>(), n) };
    value
}

/// Connections translated to one backend, and calls with none to go to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ServiceCounters {
    pub connects: u64,
    pub no_backend: u64,
}

/// The socket load balancer's pinned maps.
#[derive(Debug)]
pub struct LbMaps {
    services: MapHandle,
    /// The backend choice array (socklb_picks.rs), and its free runs once read back.
    picks: MapHandle,
    runs: std::sync::Mutex<Option<weir_service::picks::PickRuns>>,
    backends: MapHandle,
    maglev: MapHandle,
    service_stats: MapHandle,
    backend_stats: MapHandle,
    opt_out: MapHandle,
    /// The "nothing armed" flags; this handle keeps `lb_opt_out`'s.
    quiet: QuietFlags,
    /// The node datapath's north-south settings; absent where only the socket LB runs.
    node_config: Option<MapHandle>,
    /// The node datapath's loadBalancerSourceRanges (north-south only); absent without it.
    source_ranges: Option<MapHandle>,
    /// Backends that refused, reset or timed out a connection (passive health).
    suspects: MapHandle,
    /// Departed backends whose connected UDP sockets are to be ended.
    gone: MapHandle,
    /// The iter/udp program that ends them (pinned by [`establish`]).
    end_udp: OwnedFd,
}

/// What a pass over connected UDP sockets found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UdpEnding {
    /// Sockets to a departed backend that were destroyed.
    pub ended: u64,
    /// Sockets to a departed backend left as they were: this kernel has no bpf_sock_destroy.
    pub kept: u64,
    /// Network namespaces searched.
    pub namespaces: usize,
}

fn io_error(what: &str, rc: i32) -> BpfError {
    BpfError::Query { what: what.to_string(), source: std::io::Error::from_raw_os_error(rc.abs()) }
}

/// Runs iterator link `link` in the calling thread's network namespace and counts its verdict bytes.
fn run_end_iterator(link: &OwnedFd, ending: &mut UdpEnding) -> Result<(), BpfError> {
    // SAFETY: `link` is an open bpf_link fd for the duration of the call.
    let fd = unsafe { libbpf_sys::bpf_iter_create(link.as_raw_fd()) };
    if fd < 0 {
        return Err(io_error("bpf_iter_create (weir_lb_end_udp)", fd));
    }
    // SAFETY: bpf_iter_create returned a fresh fd that nothing else owns.
    let mut iter = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut iter, &mut out)
        .map_err(|source| BpfError::Query { what: "reading the weir_lb_end_udp iterator".into(), source })?;
    ending.ended += out.iter().filter(|b| **b == b'e').count() as u64;
    ending.kept += out.iter().filter(|b| **b == b'x').count() as u64;
    Ok(())
}

impl LbMaps {
    pub fn open(pins: &PinLayout) -> Result<Self, BpfError> {
        Ok(Self {
            services: pins.open_map("lb_services")?,
            picks: pins.open_map("lb_picks")?,
            runs: std::sync::Mutex::new(None),
            backends: pins.open_map("lb_backends")?,
            maglev: pins.open_map("lb_maglev")?,
            service_stats: pins.open_map("lb_service_stats")?,
            backend_stats: pins.open_map("lb_backend_stats")?,
            opt_out: pins.open_map("lb_opt_out")?,
            quiet: QuietFlags::open(pins)?,
            node_config: pins.open_map("lb_node_config").ok(),
            source_ranges: pins.open_map("lb_source_ranges").ok(),
            gone: pins.open_map("lb_gone")?,
            suspects: pins.open_map("lb_suspects")?,
            end_udp: open_pinned_program(&pins.progs().join("weir_lb_end_udp"))?,
        })
    }

    /// Backends marked suspect by a failed connection, with the time of the
    /// last failure (CLOCK_MONOTONIC nanoseconds) and the failures counted.
    pub fn suspects(&self) -> Result<BTreeMap<BackendKey, (u64, u64)>, BpfError> {
        let mut out = BTreeMap::new();
        for key_bytes in self.suspects.keys() {
            let Some(value) = self.suspects.lookup(&key_bytes, MapFlags::ANY).map_err(map_error("lb_suspects"))? else {
                continue;
            };
            let key: types::weir_lb_suspect_key = read_pod(&key_bytes);
            let value: types::weir_lb_suspect = read_pod(&value);
            let family = if key.addr[1..] == [0, 0, 0] { 4 } else { 6 };
            let backend = BackendKey {
                address: words_addr(key.addr, family),
                port: u16::from_be_bytes(key.port.to_ne_bytes()),
                proto: key.proto,
            };
            out.insert(backend, (value.marked_ns, value.failures));
        }
        Ok(out)
    }

    /// Clears `backend`'s suspect mark if it was made before `before_ns`
    /// (CLOCK_MONOTONIC): a probe that passed clears only older failures.
    /// True when a mark was cleared.
    pub fn clear_suspect(&self, backend: &BackendKey, before_ns: u64) -> Result<bool, BpfError> {
        let (addr, _) = addr_words(backend.address);
        let key = types::weir_lb_suspect_key {
            addr,
            port: u16::from_ne_bytes(backend.port.to_be_bytes()),
            proto: backend.proto,
            pad: 0,
        };
        let Some(value) = self.suspects.lookup(bytes_of(&key), MapFlags::ANY).map_err(map_error("lb_suspects"))? else {
            return Ok(false);
        };
        if read_pod::<types::weir_lb_suspect>(&value).marked_ns >= before_ns {
            return Ok(false);
        }
        delete(&self.suspects, bytes_of(&key), "lb_suspects")?;
        Ok(true)
    }

    /// Ends the connected UDP sockets, in each of `namespaces` (network
    /// namespace handles), whose translation names one of `gone` (service
    /// id, backend). A namespace that vanished meanwhile is skipped.
    pub fn end_udp_sockets(
        &self,
        gone: &BTreeSet<(u32, BackendKey)>,
        namespaces: &[std::fs::File],
    ) -> Result<UdpEnding, BpfError> {
        let mut ending = UdpEnding::default();
        if gone.is_empty() {
            return Ok(ending);
        }
        let opts = libbpf_sys::bpf_link_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _,
            ..Default::default()
        };
        // SAFETY: the program fd is open; opts is a valid, sized struct.
        let fd = unsafe { libbpf_sys::bpf_link_create(self.end_udp.as_raw_fd(), 0, libbpf_sys::BPF_TRACE_ITER, &opts) };
        if fd < 0 {
            return Err(io_error("bpf_link_create (weir_lb_end_udp)", fd));
        }
        // SAFETY: bpf_link_create returned a fresh fd that nothing else owns.
        let link = unsafe { OwnedFd::from_raw_fd(fd) };
        let keys: Vec<types::weir_lb_gone_key> = gone
            .iter()
            .map(|(service_id, backend)| {
                let (addr, _) = addr_words(backend.address);
                types::weir_lb_gone_key {
                    service_id: *service_id,
                    addr,
                    port: u16::from_ne_bytes(backend.port.to_be_bytes()),
                    pad: 0,
                }
            })
            .collect();
        for chunk in keys.chunks(MAX_GONE) {
            for key in chunk {
                self.gone.update(bytes_of(key), &[1], MapFlags::ANY).map_err(map_error("lb_gone"))?;
            }
            let mut result = Ok(());
            for ns in namespaces {
                match weir_host::netns::run_in_file(ns, || run_end_iterator(&link, &mut ending)) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        result = Err(e);
                        break;
                    }
                    // The namespace could not be entered: its last process left meanwhile.
                    Err(e) => tracing::debug!(error = %e, "skipping a client network namespace"),
                }
            }
            for key in chunk {
                delete(&self.gone, bytes_of(key), "lb_gone")?;
            }
            result?;
            ending.namespaces = namespaces.len();
        }
        Ok(ending)
    }

    /// Executes planned writes in order. A frontend whose slots or slot 0
    /// change gets a fresh run of the backend choice array, written before
    /// slot 0 names it (socklb_picks.rs).
    pub fn execute(&self, ops: &[Op]) -> Result<(), BpfError> {
        let mut guard = self.runs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.is_none() {
            *guard = Some(self.held_runs()?);
        }
        let Some(runs) = guard.as_mut() else { return Ok(()) };
        let mut written = picks::Written::new();
        let mut fronted = BTreeSet::new();
        let result = self.execute_ops(ops, runs, &mut written, &mut fronted);
        runs.settle();
        result
    }

    fn execute_ops(
        &self,
        ops: &[Op],
        runs: &mut weir_service::picks::PickRuns,
        written: &mut picks::Written,
        fronted: &mut BTreeSet<FrontendKey>,
    ) -> Result<(), BpfError> {
        for op in ops {
            match op {
                Op::PutBackend { id, entry } => {
                    let value = backend_value(&entry.key, entry.service_id);
                    let value = types::weir_lb_backend { state: entry.state as u8, ..value };
                    self.backends
                        .update(&id.to_ne_bytes(), bytes_of(&value), MapFlags::ANY)
                        .map_err(map_error("lb_backends"))?;
                }
                Op::DeleteBackend { id, .. } => delete(&self.backends, &id.to_ne_bytes(), "lb_backends")?,
                Op::ResetBackendCounters { id } => reset(&self.backend_stats, *id, "lb_backend_stats")?,
                Op::ResetServiceCounters { id } => reset(&self.service_stats, *id, "lb_service_stats")?,
                Op::PutSlot { frontend, slot, backend_id, backend } => {
                    let value = types::weir_lb_slot {
                        backend_id: *backend_id,
                        backend: backend_value(backend, 0),
                        ..Default::default()
                    };
                    let key = key_of(frontend, *slot);
                    self.services
                        .update(bytes_of(&key), bytes_of(&value), MapFlags::ANY)
                        .map_err(map_error("lb_services"))?;
                    written.entry(*frontend).or_default().insert(*slot, (*backend_id, *backend));
                }
                Op::PutFrontend { frontend, meta } => {
                    let mut flags = 0;
                    if meta.affinity {
                        flags |= F_AFFINITY;
                    }
                    if meta.maglev {
                        flags |= F_MAGLEV;
                    }
                    if meta.external {
                        flags |= F_EXTERNAL;
                    }
                    if meta.source_ranges {
                        flags |= F_SOURCE_RANGES;
                    }
                    let value = types::weir_lb_slot {
                        backend_id: 0,
                        service_id: meta.service_id,
                        active: meta.active,
                        total: meta.total,
                        flags,
                        no_backend_errno: meta.no_backend_errno,
                        affinity_timeout: meta.affinity_timeout,
                        picks: 0,
                        backend: Default::default(),
                    };
                    let old = self.frontend_value(frontend)?;
                    let picks = self.renew_run(runs, frontend, (meta.active, flags), written)?;
                    let value = types::weir_lb_slot { picks, ..value };
                    fronted.insert(*frontend);
                    self.point_at_run(runs, frontend, &value, old.as_ref())?;
                }
                Op::DeleteSlot { frontend, slot } => {
                    if *slot == 0 {
                        if let Some(run) =
                            self.frontend_value(frontend)?.and_then(|o| weir_service::picks::Run::of(o.picks, o.active))
                        {
                            runs.retire(run);
                        }
                    }
                    delete(&self.services, bytes_of(&key_of(frontend, *slot)), "lb_services")?;
                }
                Op::PutMaglev { service_id, table } => self.put_maglev(*service_id, table)?,
                Op::DeleteMaglev { service_id } => delete(&self.maglev, &service_id.to_ne_bytes(), "lb_maglev")?,
                Op::PutSourceRange { service_id, range } => {
                    if let Some(map) = &self.source_ranges {
                        map.update(bytes_of(&source_range_key(*service_id, range)), &[1], MapFlags::ANY)
                            .map_err(map_error("lb_source_ranges"))?;
                    }
                }
                Op::DeleteSourceRange { service_id, range } => {
                    if let Some(map) = &self.source_ranges {
                        delete(map, bytes_of(&source_range_key(*service_id, range)), "lb_source_ranges")?;
                    }
                }
            }
        }
        // Frontends whose slots changed but not their slot 0: a fresh run, then slot 0 names it.
        for frontend in written.keys().filter(|f| !fronted.contains(*f)) {
            let Some(old) = self.frontend_value(frontend)? else { continue };
            let picks = self.renew_run(runs, frontend, (old.active, old.flags), written)?;
            let value = types::weir_lb_slot { picks, ..old };
            self.point_at_run(runs, frontend, &value, Some(&old))?;
        }
        Ok(())
    }

    /// Builds a whole table in a fresh inner map, then swaps it in with one update.
    fn put_maglev(&self, service_id: u32, table: &[u32]) -> Result<(), BpfError> {
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
            ..Default::default()
        };
        let inner = MapHandle::create(MapType::Array, Some("weir_lb_maglev"), 4, 4, MAGLEV_SIZE as u32, &opts)
            .map_err(map_error("lb_maglev (inner)"))?;
        let keys: Vec<u8> = (0..table.len() as u32).flat_map(u32::to_ne_bytes).collect();
        let values: Vec<u8> = table.iter().flat_map(|v| v.to_ne_bytes()).collect();
        if !table.is_empty() {
            inner
                .update_batch(&keys, &values, table.len() as u32, MapFlags::ANY, MapFlags::ANY)
                .map_err(map_error("lb_maglev (inner)"))?;
        }
        let fd = inner.as_fd().as_raw_fd() as u32;
        self.maglev.update(&service_id.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY).map_err(map_error("lb_maglev"))
    }

    /// What the maps hold, as the planner describes it. Maglev tables are
    /// listed without their backends, so the next plan rebuilds them.
    pub fn read_tables(&self) -> Result<Tables, BpfError> {
        let mut frontends: BTreeMap<FrontendKey, FrontendEntry> = BTreeMap::new();
        let mut backends: BTreeMap<u32, BackendEntry> = BTreeMap::new();
        let mut maglev: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        let mut slots: BTreeMap<FrontendKey, BTreeMap<u16, u32>> = BTreeMap::new();
        for key_bytes in self.services.keys() {
            let Some(value) = self.services.lookup(&key_bytes, MapFlags::ANY).map_err(map_error("lb_services"))? else {
                continue;
            };
            let key: types::weir_lb_key = read_pod(&key_bytes);
            let value: types::weir_lb_slot = read_pod(&value);
            let frontend = FrontendKey {
                address: words_addr(key.addr, key.family),
                port: u16::from_be_bytes(key.port.to_ne_bytes()),
                proto: key.proto,
            };
            if key.slot == 0 {
                let meta = FrontendMeta {
                    service_id: value.service_id,
                    active: value.active,
                    total: value.total,
                    affinity: value.flags & F_AFFINITY != 0,
                    maglev: value.flags & F_MAGLEV != 0,
                    external: value.flags & F_EXTERNAL != 0,
                    no_backend_errno: value.no_backend_errno,
                    affinity_timeout: value.affinity_timeout,
                    source_ranges: value.flags & F_SOURCE_RANGES != 0,
                };
                frontends.insert(frontend, FrontendEntry { meta, slots: Vec::new() });
            } else {
                slots.entry(frontend).or_default().insert(key.slot, value.backend_id);
            }
        }
        for (frontend, entry) in &mut frontends {
            let held = slots.remove(frontend).unwrap_or_default();
            entry.slots = (1..=entry.meta.total).map(|s| held.get(&s).copied().unwrap_or(0)).collect();
        }
        for key_bytes in self.backends.keys() {
            let Some(value) = self.backends.lookup(&key_bytes, MapFlags::ANY).map_err(map_error("lb_backends"))? else {
                continue;
            };
            let id = u32::from_ne_bytes(key_bytes[..4].try_into().unwrap_or_default());
            let value: types::weir_lb_backend = read_pod(&value);
            let state = match value.state {
                0 => KernelBackendState::Active,
                1 => KernelBackendState::Terminating,
                _ => KernelBackendState::Quarantined,
            };
            let key = BackendKey {
                address: words_addr(value.addr, value.family),
                port: u16::from_be_bytes(value.port.to_ne_bytes()),
                proto: value.proto,
            };
            backends.insert(id, BackendEntry { key, state, service_id: value.service_id });
        }
        for key_bytes in self.maglev.keys() {
            maglev.insert(u32::from_ne_bytes(key_bytes[..4].try_into().unwrap_or_default()), Vec::new());
        }
        let mut source_ranges: BTreeMap<u32, BTreeSet<Ipv4Net>> = BTreeMap::new();
        for key_bytes in self.source_ranges.iter().flat_map(|map| map.keys()) {
            let key: crate::skel::node::types::weir_lb_source_range_key = read_pod(&key_bytes);
            let prefix = key.prefixlen.saturating_sub(32).min(32) as u8;
            if let Ok(range) = Ipv4Net::new(std::net::Ipv4Addr::from(key.addr.to_ne_bytes()), prefix) {
                source_ranges.entry(key.service_id).or_default().insert(range);
            }
        }
        Ok(Tables::from_kernel(frontends, backends, maglev, source_ranges))
    }

    pub fn service_counters(&self, id: u32) -> Result<ServiceCounters, BpfError> {
        let value =
            self.service_stats.lookup(&id.to_ne_bytes(), MapFlags::ANY).map_err(map_error("lb_service_stats"))?;
        let stats: types::weir_lb_service_stats = read_pod(&value.unwrap_or_default());
        Ok(ServiceCounters { connects: stats.connects, no_backend: stats.no_backend })
    }

    pub fn backend_connects(&self, id: u32) -> Result<u64, BpfError> {
        let value =
            self.backend_stats.lookup(&id.to_ne_bytes(), MapFlags::ANY).map_err(map_error("lb_backend_stats"))?;
        Ok(read_pod::<types::weir_lb_backend_stats>(&value.unwrap_or_default()).connects)
    }

    /// The address translated north-south packets leave the node with; None
    /// turns the tc path off. False when no node datapath shares the tables.
    pub fn set_node_address(&self, address: Option<std::net::Ipv4Addr>) -> Result<bool, BpfError> {
        let Some(map) = &self.node_config else { return Ok(false) };
        let value = crate::skel::node::types::weir_lb_node_config {
            node_addr: address.map_or(0, |a| u32::from_ne_bytes(a.octets())),
        };
        map.update(&0u32.to_ne_bytes(), bytes_of(&value), MapFlags::ANY).map_err(map_error("lb_node_config"))?;
        Ok(true)
    }

    /// Processes in exactly these cgroups (by id) are not translated; cgroups
    /// that opted out in an earlier run and no longer do are forgotten. The
    /// programs skip the opt-out lookup while none is left (`socklb_quiet`).
    pub fn set_opt_outs(&self, cgroup_ids: &std::collections::BTreeSet<u64>) -> Result<(), BpfError> {
        let stale: Vec<Vec<u8>> = self
            .opt_out
            .keys()
            .filter(|k| {
                k.len() == 8 && !cgroup_ids.contains(&u64::from_ne_bytes(k[..8].try_into().unwrap_or_default()))
            })
            .collect();
        for key in stale {
            delete(&self.opt_out, &key, "lb_opt_out")?;
        }
        if !cgroup_ids.is_empty() {
            self.quiet.arming(Skippable::OptOut, || {
                for id in cgroup_ids {
                    self.opt_out.update(&id.to_ne_bytes(), &[1], MapFlags::ANY).map_err(map_error("lb_opt_out"))?;
                }
                Ok(())
            })?;
        }
        self.quiet.settle(Skippable::OptOut, &self.opt_out)?;
        Ok(())
    }
}

fn open_pinned_program(path: &Path) -> Result<OwnedFd, BpfError> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| BpfError::Query {
        what: format!("pinned program {}", path.display()),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    // SAFETY: c_path is a valid NUL-terminated string.
    let fd = unsafe { libbpf_sys::bpf_obj_get(c_path.as_ptr()) };
    if fd < 0 {
        return Err(io_error(&format!("pinned program {}", path.display()), fd));
    }
    // SAFETY: bpf_obj_get returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Deletes a key; one that is already gone is fine.
fn delete(map: &MapHandle, key: &[u8], name: &'static str) -> Result<(), BpfError> {
    match map.delete(key) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BpfError::MapRead { map: name.to_string(), source }),
    }
}

/// Zeroes the counters at `id` (a fresh id may be a reused one).
fn reset(map: &MapHandle, id: u32, name: &'static str) -> Result<(), BpfError> {
    let zero = vec![0u8; map.value_size() as usize];
    map.update(&id.to_ne_bytes(), &zero, MapFlags::ANY).map_err(map_error(name))
}
