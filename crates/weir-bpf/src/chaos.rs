//! Chaos experiments' kernel state, pinned with the node datapath: the
//! faults between pairs of pod addresses (`chaos_pairs`), each carrying its
//! end time, and what each experiment did (`chaos_counters`: packets
//! dropped, sent twice or corrupted).

use std::net::IpAddr;

use std::os::fd::{AsFd, AsRawFd};

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::api::{
    address_of_words as address, bytes_of, chaos_action, chaos_checksum, read_pod, words_of_address as words, Counter,
};
use crate::datapath::{read_counters, PinLayout};
use crate::error::map_error;
use crate::skel::node::types::{weir_chaos_delay_line, weir_chaos_entry, weir_chaos_key};
use crate::skel::socklb::types::{weir_chaos_connect, weir_chaos_connect_key};
use crate::socklb_quiet::{QuietFlags, Skippable};
use crate::BpfError;

/// Experiments the kernel counts at once (slots of `chaos_counters`).
pub const MAX_EXPERIMENTS: u32 = 1024;

/// What a pair's packets suffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChaosFault {
    Partition,
    /// Dropped when a draw is below `probability` (of 2^32; u32::MAX:
    /// always); with `correlation` (of 2^32) a packet shares the previous
    /// packet's fate instead.
    Loss {
        probability: u32,
        correlation: u32,
    },
    /// Sent twice, drawn as for `Loss`.
    Duplicate {
        probability: u32,
        correlation: u32,
    },
    /// One bit of the transport payload flipped, drawn as for `Loss`; the
    /// checksum repaired when `fix_checksum`, else left as it was.
    Corrupt {
        probability: u32,
        correlation: u32,
        fix_checksum: bool,
    },
    /// Sent through a token bucket: out the shaper veth `shaper_ifindex`,
    /// whose egress qdisc puts it in class `class` (a tc handle, major:minor),
    /// and handed back by `weir_chaos_return` on the pair's other end.
    Bandwidth {
        shaper_ifindex: u32,
        class: u32,
    },
    /// Sent to the agent's delay line ([`DelayLine`]) while its lease holds;
    /// the agent decides how long each packet waits.
    Delay,
}

/// One pair's fault, as the kernel holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChaosEntry {
    pub fault: ChaosFault,
    /// CLOCK_MONOTONIC nanoseconds ([`crate::ktime_now_ns`]); from then on the
    /// kernel ignores the entry. u64::MAX: until removed.
    pub end_ns: u64,
    /// Slot of the experiment's counter, below [`MAX_EXPERIMENTS`].
    pub experiment: u32,
}

fn key(src: IpAddr, dst: IpAddr) -> Result<weir_chaos_key, BpfError> {
    let family = match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => 4,
        (IpAddr::V6(_), IpAddr::V6(_)) => 6,
        _ => return Err(BpfError::Chaos(format!("chaos pair {src} -> {dst} mixes address families"))),
    };
    Ok(weir_chaos_key { src: words(src), dst: words(dst), family, ..Default::default() })
}

/// The kernel's pairs (`chaos_pairs`), the source filter in front of them
/// (`chaos_sources`: a bit per hash of a source address, set while the
/// source has a pair) and the experiments' counters. Every write of pairs
/// goes through here, which keeps the filter in step: a source's bit is set
/// before its first pair is written and cleared after its last is removed.
#[derive(Debug)]
pub struct ChaosMaps {
    pairs: MapHandle,
    sources: MapHandle,
    counters: MapHandle,
}

/// The bit of `chaos_sources` (of `2^bits_log2`) for a source address, as
/// the kernel's `chaos_source_marked` computes it.
fn source_bit(src: [u32; 4], bits_log2: u32) -> u32 {
    (src[0] ^ src[1] ^ src[2] ^ src[3]).wrapping_mul(0x9e37_79b1) >> (32 - bits_log2)
}

impl ChaosMaps {
    /// Opening makes the source filter agree with the pairs held (pairs a
    /// datapath without the filter wrote, or a removal whose clearing a
    /// crash cut short).
    pub fn open(pins: &PinLayout) -> Result<Self, BpfError> {
        let maps = Self {
            pairs: pins.open_map("chaos_pairs")?,
            sources: pins.open_map("chaos_sources")?,
            counters: pins.open_map("chaos_counters")?,
        };
        maps.sync_sources()?;
        Ok(maps)
    }

    /// The maps of a private, unpinned copy of the node datapath (fixtures).
    pub fn of(skel: &crate::skel::node::NodeSkel<'_>) -> Result<Self, BpfError> {
        let handle = |map, name| MapHandle::try_from(map).map_err(map_error(name));
        Ok(Self {
            pairs: handle(&skel.maps.chaos_pairs, "chaos_pairs")?,
            sources: handle(&skel.maps.chaos_sources, "chaos_sources")?,
            counters: handle(&skel.maps.chaos_counters, "chaos_counters")?,
        })
    }

    /// The filter's size as the power of two of its bits.
    fn source_bits_log2(&self) -> u32 {
        (u64::from(self.sources.max_entries()) * 64).trailing_zeros()
    }

    fn source_word(&self, word: u32) -> Result<u64, BpfError> {
        let raw = self.sources.lookup(&word.to_ne_bytes(), MapFlags::ANY).map_err(map_error("chaos_sources"))?;
        Ok(raw.and_then(|r| r.try_into().ok()).map(u64::from_ne_bytes).unwrap_or(0))
    }

    fn set_source_word(&self, word: u32, bits: u64) -> Result<(), BpfError> {
        self.sources.update(&word.to_ne_bytes(), &bits.to_ne_bytes(), MapFlags::ANY).map_err(map_error("chaos_sources"))
    }

    /// Sets the filter's bit for `src` (before a pair of it is written).
    fn mark_source(&self, src: [u32; 4]) -> Result<(), BpfError> {
        let bit = source_bit(src, self.source_bits_log2());
        let bits = self.source_word(bit / 64)?;
        let marked = bits | 1 << (bit % 64);
        if marked == bits {
            return Ok(());
        }
        self.set_source_word(bit / 64, marked)
    }

    /// Rewrites the filter's words that differ from the pairs held: bits
    /// of sources with no pair left are cleared.
    fn sync_sources(&self) -> Result<(), BpfError> {
        let log2 = self.source_bits_log2();
        let mut want = vec![0u64; self.sources.max_entries() as usize];
        for raw in self.pairs.keys() {
            if let Some(key) = read_pod::<weir_chaos_key>(&raw) {
                let bit = source_bit(key.src, log2);
                want[(bit / 64) as usize] |= 1 << (bit % 64);
            }
        }
        for (word, bits) in (0u32..).zip(want) {
            if self.source_word(word)? != bits {
                self.set_source_word(word, bits)?;
            }
        }
        Ok(())
    }

    /// How many of the source filter's bits are set (tests).
    pub fn marked_sources(&self) -> Result<u32, BpfError> {
        (0..self.sources.max_entries()).map(|w| self.source_word(w).map(u64::count_ones)).sum()
    }

    /// Packets from `src` to `dst` (both of one family) suffer `entry`.
    pub fn insert(&self, src: IpAddr, dst: IpAddr, entry: &ChaosEntry) -> Result<(), BpfError> {
        if entry.experiment >= MAX_EXPERIMENTS {
            return Err(BpfError::Chaos(format!("chaos experiment slot {} is out of range", entry.experiment)));
        }
        let (mut shaper_ifindex, mut shaper_class) = (0, 0);
        let (action, probability, correlation, checksum) = match entry.fault {
            ChaosFault::Partition => (chaos_action::PARTITION, 0, 0, 0),
            ChaosFault::Delay => (chaos_action::DELAY, 0, 0, 0),
            ChaosFault::Bandwidth { shaper_ifindex: ifindex, class } => {
                if ifindex == 0 {
                    return Err(BpfError::Chaos("a bandwidth entry needs the shaper's interface".into()));
                }
                (shaper_ifindex, shaper_class) = (ifindex, class);
                (chaos_action::BANDWIDTH, 0, 0, 0)
            }
            ChaosFault::Loss { probability, correlation } => (chaos_action::LOSS, probability, correlation, 0),
            ChaosFault::Duplicate { probability, correlation } => {
                (chaos_action::DUPLICATE, probability, correlation, 0)
            }
            ChaosFault::Corrupt { probability, correlation, fix_checksum } => {
                let checksum = if fix_checksum { chaos_checksum::FIXED } else { chaos_checksum::LEFT_WRONG };
                (chaos_action::CORRUPT, probability, correlation, checksum)
            }
        };
        let value = weir_chaos_entry {
            end_ns: entry.end_ns,
            action,
            probability,
            correlation,
            experiment: entry.experiment,
            checksum,
            shaper_ifindex,
            shaper_class,
            ..Default::default()
        };
        let key = key(src, dst)?;
        self.mark_source(key.src)?;
        self.pairs.update(bytes_of(&key), bytes_of(&value), MapFlags::ANY).map_err(map_error("chaos_pairs"))
    }

    /// Every pair the kernel holds, expired ones included.
    pub fn entries(&self) -> Vec<(IpAddr, IpAddr, ChaosEntry)> {
        self.pairs
            .keys()
            .filter_map(|raw| {
                let key: weir_chaos_key = read_pod(&raw)?;
                let value: weir_chaos_entry = read_pod(&self.pairs.lookup(&raw, MapFlags::ANY).ok()??)?;
                let (probability, correlation) = (value.probability, value.correlation);
                let fault = match value.action {
                    chaos_action::PARTITION => ChaosFault::Partition,
                    chaos_action::DUPLICATE => ChaosFault::Duplicate { probability, correlation },
                    chaos_action::DELAY => ChaosFault::Delay,
                    chaos_action::BANDWIDTH => {
                        ChaosFault::Bandwidth { shaper_ifindex: value.shaper_ifindex, class: value.shaper_class }
                    }
                    chaos_action::CORRUPT => ChaosFault::Corrupt {
                        probability,
                        correlation,
                        fix_checksum: value.checksum == chaos_checksum::FIXED,
                    },
                    _ => ChaosFault::Loss { probability, correlation },
                };
                let entry = ChaosEntry { fault, end_ns: value.end_ns, experiment: value.experiment };
                Some((address(key.family, key.src), address(key.family, key.dst), entry))
            })
            .collect()
    }

    /// Removes every pair whose experiment slot `which` picks, counters
    /// left as they are; returns the pairs removed.
    pub fn remove_pairs(&self, which: impl Fn(u32) -> bool) -> Result<usize, BpfError> {
        let mut removed = 0;
        for (src, dst, entry) in self.entries() {
            if which(entry.experiment) {
                self.pairs.delete(bytes_of(&key(src, dst)?)).map_err(map_error("chaos_pairs"))?;
                removed += 1;
            }
        }
        if removed > 0 {
            self.sync_sources()?;
        }
        Ok(removed)
    }

    /// Removes every pair of the experiment in `slot` and zeroes its
    /// counter, so the slot can serve another; returns the pairs removed.
    pub fn remove_experiment(&self, slot: u32) -> Result<usize, BpfError> {
        let removed = self.remove_pairs(|s| s == slot)?;
        let cpus = libbpf_rs::num_possible_cpus().map_err(map_error("chaos_counters"))?;
        let zeros = vec![vec![0u8; std::mem::size_of::<Counter>()]; cpus];
        self.counters.update_percpu(&slot.to_ne_bytes(), &zeros, MapFlags::ANY).map_err(map_error("chaos_counters"))?;
        Ok(removed)
    }

    /// The packets the experiment in `slot` dropped, sent twice or
    /// corrupted, over all CPUs.
    pub fn affected(&self, slot: u32) -> Result<Counter, BpfError> {
        Ok(read_counters(&self.counters, [slot])?.pop().unwrap_or_default())
    }
}

/// Where the link of `weir_chaos_return` is pinned: not a `HOOK@INTERFACE`
/// name, so establishing the node datapath leaves it alone.
fn shaper_link_pin(pins: &PinLayout) -> std::path::PathBuf {
    pins.links().join("chaos-shaper-return")
}

/// Runs `weir_chaos_return` (pinned with the node datapath) at tcx ingress
/// of interface `ifindex`, the far end of the bandwidth shaper's veth
/// pair, through a pinned link; a link already pinned is moved to the
/// program now pinned (a restarted agent's) and to `ifindex` by
/// re-creating it when that interface changed.
pub fn attach_shaper_return(pins: &PinLayout, ifindex: u32) -> Result<(), BpfError> {
    let prog_path = pins.progs().join("weir_chaos_return");
    let prog = libbpf_rs::Program::fd_from_pinned_path(&prog_path)
        .map_err(|source| BpfError::OpenPinned { path: prog_path.clone(), source })?;
    let pin = shaper_link_pin(pins);
    let failed = |what: &str, errno: i32| BpfError::Query {
        what: format!("the chaos shaper's return program ({what})"),
        source: std::io::Error::from_raw_os_error(errno),
    };
    if let Ok(link) = libbpf_rs::Link::open(&pin) {
        let on_ifindex = libbpf_rs::query::LinkInfo::from_fd(link.as_fd())
            .ok()
            .and_then(|info| match info.info {
                libbpf_rs::query::LinkTypeInfo::Tcx(tcx) => Some(tcx.ifindex),
                _ => None,
            })
            .is_some_and(|at| at == ifindex);
        if on_ifindex {
            // SAFETY: both fds are valid for the call; null opts is a plain update.
            let rc =
                unsafe { libbpf_sys::bpf_link_update(link.as_fd().as_raw_fd(), prog.as_raw_fd(), std::ptr::null()) };
            return if rc == 0 { Ok(()) } else { Err(failed("updating its link", -rc)) };
        }
    }
    crate::datapath::replace_pin(&pin)?;
    // SAFETY: a valid program fd; null opts asks for defaults.
    let fd = unsafe {
        libbpf_sys::bpf_link_create(prog.as_raw_fd(), ifindex as i32, libbpf_sys::BPF_TCX_INGRESS, std::ptr::null())
    };
    if fd < 0 {
        return Err(failed("bpf_link_create at tcx ingress", -fd));
    }
    // SAFETY: fd was just returned to us and is owned here alone.
    let link = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let path = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes()).unwrap_or_default();
    // SAFETY: a valid link fd and a NUL-terminated path.
    let rc = unsafe { libbpf_sys::bpf_obj_pin(link.as_raw_fd(), path.as_ptr()) };
    if rc < 0 {
        return Err(failed("pinning its link", -rc));
    }
    Ok(())
}

/// Unpins the shaper's return link (its interface is going away).
pub fn detach_shaper_return(pins: &PinLayout) -> Result<(), BpfError> {
    crate::datapath::replace_pin(&shaper_link_pin(pins))
}

/// The kernel's view of the agent's delay line (`chaos_delay_line`): where
/// delayed packets go and until when an agent reads them.
#[derive(Debug)]
pub struct DelayLine {
    map: MapHandle,
}

impl DelayLine {
    pub fn open(pins: &PinLayout) -> Result<Self, BpfError> {
        Ok(Self { map: pins.open_map("chaos_delay_line")? })
    }

    /// The map of a private, unpinned copy of the node datapath (fixtures).
    pub fn of(skel: &crate::skel::node::NodeSkel<'_>) -> Result<Self, BpfError> {
        Ok(Self { map: MapHandle::try_from(&skel.maps.chaos_delay_line).map_err(map_error("chaos_delay_line"))? })
    }

    /// Delayed packets go out of `ifindex` until `alive_until_ns`
    /// ([`crate::ktime_now_ns`]); from then on they pass undelayed. 0, 0: no line.
    pub fn lease(&self, ifindex: u32, alive_until_ns: u64) -> Result<(), BpfError> {
        let value = weir_chaos_delay_line { ifindex, alive_until_ns, ..Default::default() };
        self.map.update(&0u32.to_ne_bytes(), bytes_of(&value), MapFlags::ANY).map_err(map_error("chaos_delay_line"))
    }
}

/// A socket fault as the kernel holds it (`chaos_connects`, pinned with the
/// socket load balancer, whose connect hooks judge it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectFault {
    /// The errno connect() returns.
    pub error: u32,
    /// Of 2^32: the share of calls failed; u32::MAX: all.
    pub probability: u32,
    /// As [`ChaosEntry::end_ns`].
    pub end_ns: u64,
    /// Slot of the experiment's counter.
    pub experiment: u32,
}

#[derive(Debug)]
pub struct ConnectFaults {
    map: MapHandle,
    /// Its "nothing armed" flag: cleared before the first entry, set when the last is gone.
    quiet: QuietFlags,
}

impl ConnectFaults {
    /// Fails when the socket load balancer has not been established.
    pub fn open(pins: &PinLayout) -> Result<Self, BpfError> {
        Ok(Self { map: pins.open_map("chaos_connects")?, quiet: QuietFlags::open(pins)? })
    }

    /// The map of a private copy of the socket load balancer (tests).
    pub fn of(skel: &crate::skel::socklb::SocklbSkel<'_>) -> Result<Self, BpfError> {
        Ok(Self {
            map: MapHandle::try_from(&skel.maps.chaos_connects).map_err(map_error("chaos_connects"))?,
            quiet: QuietFlags::of(skel)?,
        })
    }

    /// connect() from cgroup `cgroup` to `dst` suffers `fault`.
    pub fn insert(&self, cgroup: u64, dst: IpAddr, fault: &ConnectFault) -> Result<(), BpfError> {
        if fault.experiment >= MAX_EXPERIMENTS {
            return Err(BpfError::Chaos(format!("chaos experiment slot {} is out of range", fault.experiment)));
        }
        let family = if dst.is_ipv6() { 6 } else { 4 };
        let key = weir_chaos_connect_key { cgroup, dst: words(dst), family, ..Default::default() };
        let value = weir_chaos_connect {
            end_ns: fault.end_ns,
            error: fault.error,
            probability: fault.probability,
            experiment: fault.experiment,
            ..Default::default()
        };
        self.quiet.arming(Skippable::ConnectFaults, || {
            self.map.update(bytes_of(&key), bytes_of(&value), MapFlags::ANY).map_err(map_error("chaos_connects"))
        })
    }

    /// Removes every fault whose experiment slot `which` picks; returns how many.
    pub fn remove(&self, which: impl Fn(u32) -> bool) -> Result<usize, BpfError> {
        let mut removed = 0;
        for raw in self.map.keys().collect::<Vec<_>>() {
            let Some(value) = self.map.lookup(&raw, MapFlags::ANY).ok().flatten() else { continue };
            let Some(value) = read_pod::<weir_chaos_connect>(&value) else { continue };
            if which(value.experiment) {
                self.map.delete(&raw).map_err(map_error("chaos_connects"))?;
                removed += 1;
            }
        }
        self.quiet.settle(Skippable::ConnectFaults, &self.map)?;
        Ok(removed)
    }

    /// The experiment slots of every fault held, ended ones included.
    pub fn slots(&self) -> Vec<u32> {
        self.map
            .keys()
            .filter_map(|raw| read_pod::<weir_chaos_connect>(&self.map.lookup(&raw, MapFlags::ANY).ok()??))
            .map(|v| v.experiment)
            .collect()
    }
}

/// What a run of `weir_chaos_reset` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resets {
    /// Established sockets aborted (their peers sent a RST).
    pub reset: u64,
    /// Sockets found but not ended (a kernel without bpf_sock_destroy).
    pub kept: u64,
}

/// Aborts the established TCP sockets whose (local, remote) addresses are
/// one of `pairs` (each with its experiment's slot, counted there), in
/// each network namespace of `namespaces` (one that vanished is skipped).
pub fn reset_tcp(
    pins: &PinLayout,
    pairs: &[(IpAddr, IpAddr, u32)],
    namespaces: &[std::fs::File],
) -> Result<Resets, BpfError> {
    let map = pins.open_map("chaos_resets")?;
    let prog_path = pins.progs().join("weir_chaos_reset");
    let prog = libbpf_rs::Program::fd_from_pinned_path(&prog_path)
        .map_err(|source| BpfError::OpenPinned { path: prog_path.clone(), source })?;
    let failed = |what: &str, rc: i32| BpfError::Query {
        what: format!("the TCP reset iterator ({what})"),
        source: std::io::Error::from_raw_os_error(rc.abs()),
    };
    let opts = libbpf_sys::bpf_link_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _,
        ..Default::default()
    };
    // SAFETY: the program fd is open; opts is a valid, sized struct.
    let fd = unsafe { libbpf_sys::bpf_link_create(prog.as_raw_fd(), 0, libbpf_sys::BPF_TRACE_ITER, &opts) };
    if fd < 0 {
        return Err(failed("bpf_link_create", fd));
    }
    // SAFETY: bpf_link_create returned a fresh fd that nothing else owns.
    let link = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let keys =
        pairs.iter().map(|(src, dst, slot)| Ok((key(*src, *dst)?, *slot))).collect::<Result<Vec<_>, BpfError>>()?;
    for (k, slot) in &keys {
        map.update(bytes_of(k), &slot.to_ne_bytes(), MapFlags::ANY).map_err(map_error("chaos_resets"))?;
    }
    let run = || -> Result<Resets, BpfError> {
        // SAFETY: `link` is an open bpf_link fd for the duration of the call.
        let fd = unsafe { libbpf_sys::bpf_iter_create(link.as_raw_fd()) };
        if fd < 0 {
            return Err(failed("bpf_iter_create", fd));
        }
        // SAFETY: bpf_iter_create returned a fresh fd that nothing else owns.
        let mut iter =
            std::fs::File::from(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut iter, &mut out)
            .map_err(|source| BpfError::Query { what: "reading the TCP reset iterator".into(), source })?;
        Ok(Resets {
            reset: out.iter().filter(|b| **b == b'r').count() as u64,
            kept: out.iter().filter(|b| **b == b'f').count() as u64,
        })
    };
    let mut total = Resets::default();
    let mut result = Ok(());
    for ns in namespaces {
        match weir_host::netns::run_in_file(ns, run) {
            Ok(Ok(done)) => {
                total.reset += done.reset;
                total.kept += done.kept;
            }
            Ok(Err(e)) => {
                result = Err(e);
                break;
            }
            Err(e) => tracing::debug!(error = %e, "skipping a pod's network namespace"),
        }
    }
    for (k, _) in &keys {
        let _ = map.delete(bytes_of(k));
    }
    result.map(|()| total)
}
