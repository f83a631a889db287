//! Runtime security's sensors: loads `runtime.bpf.c` (and, where a probe
//! shows BPF LSM works, `runtime_lsm.bpf.c` on the same maps), attaches them
//! for one scope cgroup, writes compiled rules into the idle bank and flips
//! it live, seeds the kernel's process table, and hands every ring-buffer
//! event to a callback on the sensors' own thread.
//!
//! Unlike the node datapath the sensors are not pinned: they live as long
//! as the agent, as Tetragon's do by default. An agent that is gone cannot
//! read events, and a kill policy nobody can see is one nobody can change.

use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, MapCore, MapFlags, MapHandle};
use weir_runtime::{Action, KernelPattern, KernelRule, Operation};

use crate::api::{bytes_of, read_pod, rt_action, rt_counter, rt_event_type};
use crate::error::{map_error, percpu_u64_sum};
use crate::skel::runtime::types;
use crate::skel::runtime::RuntimeSkelBuilder;
use crate::skel::runtime_lsm::RuntimeLsmSkelBuilder;
use crate::BpfError;

mod events;

pub use events::*;

const OBJECT: &str = "runtime";
/// How often the ring is read when the kernel does not wake the reader:
/// the most an event waits before it is seen.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
const RULES_PER_BANK: u32 = 256;
const R_UID: u32 = 1 << 0;
const R_CGROUPS: u32 = 1 << 1;
const R_ADDR: u32 = 1 << 2;
const R_PORTS: u32 = 1 << 3;
const R_FAMILY: u32 = 1 << 4;
const R_BINARY_ID: u32 = 1 << 6;
const R_FILELESS: u32 = 1 << 7;
#[derive(Debug, Clone)]
pub struct SensorOptions {
    /// Only tasks below this cgroup are watched and judged (a lab node's
    /// cgroup, or the cgroup2 root on a host).
    pub scope_cgroup: PathBuf,
    /// Load the BPF LSM hooks when the kernel allows them.
    pub lsm: bool,
    /// Size of the ring buffer to the agent: a power of two, at least a page.
    pub ring_bytes: u32,
}

/// The ring's default size: about 3,900 exec events, or 2 s of 2k exec/s
/// if the reader stalls.
pub const DEFAULT_RING_BYTES: u32 = 2 << 20;

/// What was attached, and what this kernel could not do.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SensorReport {
    /// True when the BPF LSM hooks are attached.
    pub lsm: bool,
    /// Why they are not, when they are not.
    pub lsm_unavailable: Option<String>,
    /// bpf_set_retval is available: refusals use the rule's errno (else EPERM).
    pub chosen_errno: bool,
    pub attached: Vec<String>,
    /// (program, why) for hooks that could not be attached.
    pub missing: Vec<(String, String)>,
    /// The dynamic loaders found on this host: a process that runs one
    /// directly is judged again by the program the loader maps.
    pub loaders: Vec<String>,
}

/// Where dynamic loaders live (glibc and musl, the common architectures).
/// Links are followed: each file is recorded once by its identity.
pub const DYNAMIC_LOADERS: &[&str] = &[
    "/lib64/ld-linux-x86-64.so.2",
    "/lib/ld-linux-aarch64.so.1",
    "/lib/ld-linux-armhf.so.3",
    "/lib/ld-linux.so.2",
    "/lib/ld-musl-x86_64.so.1",
    "/lib/ld-musl-aarch64.so.1",
    "/usr/lib64/ld-linux-x86-64.so.2",
    "/usr/lib/ld-linux-aarch64.so.1",
];

fn op_code(op: Operation) -> u32 {
    match op {
        Operation::Exec => rt_event_type::EXEC,
        Operation::Connect => rt_event_type::CONNECT,
        Operation::Bind => rt_event_type::BIND,
        Operation::Listen => rt_event_type::LISTEN,
        Operation::Accept => rt_event_type::ACCEPT,
        Operation::Socket => rt_event_type::SOCKET,
        Operation::FileOpen => rt_event_type::FILE_OPEN,
    }
}

fn action_code(action: Action) -> u8 {
    (match action {
        Action::Audit => rt_action::AUDIT,
        Action::Kill => rt_action::KILL,
        Action::Deny => rt_action::DENY,
    }) as u8
}

/// The maps userspace writes and reads; usable from any thread.
#[derive(Debug)]
pub struct RuntimeMaps {
    config: MapHandle,
    rules: MapHandle,
    rule_cgroups: MapHandle,
    rates: MapHandle,
    procs: MapHandle,
    counters: MapHandle,
}

/// Which bank is live and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Installed {
    pub generation: u32,
    pub bank: u32,
    pub rules: u32,
    pub map_writes: u32,
}

fn pattern(p: &KernelPattern) -> types::weir_rt_pattern {
    let (head_bits, head_mask) = p.head_bits_and_mask();
    let mut out = types::weir_rt_pattern {
        len: p.text.len() as u16,
        head: p.head,
        literal: u8::from(p.literal),
        head_bits,
        head_mask,
        ..Default::default()
    };
    for (dst, src) in out.text.iter_mut().zip(&p.text) {
        *dst = *src as _;
    }
    out
}

/// A file's identity as the kernel compares it: the inode number and the
/// superblock's dev_t in the kernel's encoding (major << 20 | minor).
pub fn file_identity(path: &std::path::Path) -> Option<(u32, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    Some(((major << 20) | minor, meta.ino()))
}

fn kernel_rule(rule: &KernelRule) -> types::weir_rt_rule {
    let mut out = types::weir_rt_rule {
        ops: rule.operations.iter().fold(0, |bits, op| bits | (1 << op_code(*op))),
        action: action_code(rule.action),
        errno_: rule.errno,
        rate_per_sec: rule.rate_per_sec,
        lsm_exec: u8::from(rule.lsm_exec),
        binary: pattern(&rule.binary),
        parent: pattern(&rule.parent),
        args: pattern(&rule.args),
        file: pattern(&rule.file),
        applet: pattern(&rule.applet),
        ..Default::default()
    };
    // A binary named exactly is also its file, resolved now: a hardlink or
    // a bind mount of it is the same program. (A file replaced later is
    // matched by its path until the next install.)
    if rule.binary.literal && !rule.binary.text.is_empty() {
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(&rule.binary.text));
        if let Some((dev, ino)) = file_identity(path) {
            out.flags |= R_BINARY_ID;
            out.binary_dev = dev;
            out.binary_ino = ino;
        }
    }
    if rule.fileless {
        out.flags |= R_FILELESS;
    }
    if let Some(uid) = rule.uid {
        out.flags |= R_UID;
        out.uid = uid;
    }
    if let Some(family) = rule.family {
        out.flags |= R_FAMILY;
        out.family = family;
    }
    if let Some((lo, hi)) = rule.ports {
        out.flags |= R_PORTS;
        out.port_lo = lo;
        out.port_hi = hi;
    }
    if let Some(cidr) = rule.cidr {
        out.flags |= R_ADDR;
        out.prefix_len = cidr.prefix_len();
        let octets: Vec<u8> = match cidr.network() {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        for (i, chunk) in octets.chunks(4).enumerate() {
            out.addr[i] = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
    }
    if rule.cgroups.is_some() {
        out.flags |= R_CGROUPS;
    }
    out
}

impl RuntimeMaps {
    fn read_config(&self) -> Result<types::weir_rt_config, BpfError> {
        let raw = self.config.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).map_err(map_error("rt_config"))?;
        Ok(raw.as_deref().and_then(read_pod).unwrap_or_default())
    }

    /// The live bank's generation and size.
    pub fn installed(&self) -> Result<Installed, BpfError> {
        let c = self.read_config()?;
        Ok(Installed { generation: c.generation, bank: c.generation & 1, rules: c.rules, map_writes: 0 })
    }

    /// Writes `rules` into the idle bank, then makes it live with one write.
    /// A judged operation sees the old rule set or the new one, never a mix.
    pub fn install(&self, rules: &[KernelRule], network_events: bool) -> Result<Installed, BpfError> {
        let current = self.read_config()?;
        let next = (current.generation.wrapping_add(1)) & 1;
        let mut writes = 0u32;
        // The idle bank's old cgroup sets go first.
        let stale: Vec<Vec<u8>> = self
            .rule_cgroups
            .keys()
            .filter(|k| read_pod::<types::weir_rt_rule_cgroup>(k).is_some_and(|key| key.rule / RULES_PER_BANK == next))
            .collect();
        for key in stale {
            let _ = self.rule_cgroups.delete(&key);
            writes += 1;
        }
        let mut ops = 0u32;
        for (index, rule) in rules.iter().enumerate() {
            let slot = next * RULES_PER_BANK + index as u32;
            let kernel = kernel_rule(rule);
            ops |= kernel.ops;
            self.rules.update(&slot.to_ne_bytes(), bytes_of(&kernel), MapFlags::ANY).map_err(map_error("rt_rules"))?;
            self.rates
                .update(&slot.to_ne_bytes(), bytes_of(&types::weir_rt_rate::default()), MapFlags::ANY)
                .map_err(map_error("rt_rates"))?;
            writes += 2;
            for cgroup_id in rule.cgroups.iter().flatten() {
                let key = types::weir_rt_rule_cgroup { rule: slot, cgroup_id: *cgroup_id, ..Default::default() };
                self.rule_cgroups
                    .update(bytes_of(&key), &[1u8], MapFlags::ANY)
                    .map_err(map_error("rt_rule_cgroups"))?;
                writes += 1;
            }
        }
        let config = types::weir_rt_config {
            generation: current.generation.wrapping_add(1),
            rules: rules.len() as u32,
            ops,
            network_events: u8::from(network_events),
            applets: u8::from(rules.iter().any(|r| !r.applet.text.is_empty())),
            ..Default::default()
        };
        self.config.update(&0u32.to_ne_bytes(), bytes_of(&config), MapFlags::ANY).map_err(map_error("rt_config"))?;
        Ok(Installed { generation: config.generation, bank: next, rules: config.rules, map_writes: writes + 1 })
    }

    /// Tells the kernel about a process it has not seen exec (found in
    /// /proc). A fresher entry from the kernel itself is kept.
    pub fn seed_process(&self, pid: u32, ppid: u32, binary: &str, start_ktime: u64) -> Result<(), BpfError> {
        let mut proc = types::weir_rt_proc { ppid, exec_ktime: start_ktime, ..Default::default() };
        if let Some((dev, ino)) = file_identity(std::path::Path::new(binary)) {
            proc.dev = dev;
            proc.ino = ino;
        }
        let bytes = binary.as_bytes();
        let len = bytes.len().min(proc.path.len() - 1);
        for (dst, src) in proc.path.iter_mut().zip(&bytes[..len]) {
            *dst = *src as _;
        }
        proc.path_len = len as u16;
        match self.procs.update(&pid.to_ne_bytes(), bytes_of(&proc), MapFlags::NO_EXIST) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(map_error("rt_procs")(e)),
        }
    }

    /// The kernel's counters by registry name (summed over CPUs).
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>, BpfError> {
        rt_counter::ALL
            .iter()
            .map(|(code, name, _)| Ok((*name, percpu_u64_sum(&self.counters, *code, "rt_counters")?)))
            .collect()
    }
}

/// Running sensors. Dropping them stops the ring reader and detaches every hook.
#[derive(Debug)]
pub struct Sensors {
    pub report: SensorReport,
    pub maps: RuntimeMaps,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Sensors {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A handle of its own on a skeleton's map: it outlives the skeleton's
/// borrow, so other threads can write rules while this one reads the ring.
fn handle(map: &libbpf_rs::Map<'_>, name: &'static str) -> Result<MapHandle, BpfError> {
    MapHandle::try_from(map).map_err(map_error(name))
}

fn set_retval_available() -> bool {
    // SAFETY: a probe with no options; libbpf returns 1, 0 or a negative errno.
    unsafe {
        libbpf_sys::libbpf_probe_bpf_helper(
            libbpf_sys::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            libbpf_sys::BPF_FUNC_set_retval,
            std::ptr::null(),
        ) == 1
    }
}

/// Loads and attaches the sensors, then reads the ring on a thread of their
/// own, calling `on_event` for every event, until the returned value drops.
pub fn start(options: SensorOptions, on_event: impl FnMut(KernelEvent) + Send + 'static) -> Result<Sensors, BpfError> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(SensorReport, RuntimeMaps), BpfError>>();
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name("weir-runtime".into())
        .spawn(move || {
            let mut storage = MaybeUninit::uninit();
            let mut lsm_storage = MaybeUninit::uninit();
            let loaded = load(&options, &mut storage, &mut lsm_storage);
            let (skel, _lsm, _links, report) = match loaded {
                Ok(parts) => parts,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let maps = (|| {
                Ok(RuntimeMaps {
                    config: handle(&skel.maps.rt_config, "rt_config")?,
                    rules: handle(&skel.maps.rt_rules, "rt_rules")?,
                    rule_cgroups: handle(&skel.maps.rt_rule_cgroups, "rt_rule_cgroups")?,
                    rates: handle(&skel.maps.rt_rates, "rt_rates")?,
                    procs: handle(&skel.maps.rt_procs, "rt_procs")?,
                    counters: handle(&skel.maps.rt_counters, "rt_counters")?,
                })
            })();
            let maps = match maps {
                Ok(m) => m,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let ring = match crate::error::decoding_ring(&skel.maps.rt_ring, "rt_ring", decode, on_event) {
                Ok(ring) => ring,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok((report, maps)));
            // The kernel wakes this thread only when a backlog builds up
            // (see rt_wakeup_bytes); otherwise the timeout is the pace.
            // poll() reads only rings the kernel woke; consume() reads the rest.
            while !thread_stop.load(Ordering::Relaxed) {
                if let Err(e) = ring.poll(POLL_INTERVAL).and_then(|()| ring.consume()) {
                    tracing::warn!(error = %e, "reading runtime events");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
        .map_err(|source| BpfError::Query { what: "starting the runtime sensor thread".into(), source })?;
    match ready_rx.recv() {
        Ok(Ok((report, maps))) => Ok(Sensors { report, maps, stop, thread: Some(thread) }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(BpfError::Query {
                what: "the runtime sensor thread".into(),
                source: std::io::Error::other("stopped before it was ready"),
            })
        }
    }
}

type Loaded<'obj> = (
    crate::skel::runtime::RuntimeSkel<'obj>,
    Option<crate::skel::runtime_lsm::RuntimeLsmSkel<'obj>>,
    Vec<Link>,
    SensorReport,
);

fn load<'obj>(
    options: &SensorOptions,
    storage: &'obj mut MaybeUninit<libbpf_rs::OpenObject>,
    lsm_storage: &'obj mut MaybeUninit<libbpf_rs::OpenObject>,
) -> Result<Loaded<'obj>, BpfError> {
    let mut report = SensorReport { chosen_errno: set_retval_available(), ..Default::default() };
    let mut open =
        RuntimeSkelBuilder::default().open(storage).map_err(|source| BpfError::Open { object: OBJECT, source })?;
    if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
        rodata.rt_have_set_retval = u8::from(report.chosen_errno);
        rodata.rt_wakeup_bytes = u64::from(options.ring_bytes / 4).min(256 << 10);
    }
    open.maps
        .rt_ring
        .set_max_entries(options.ring_bytes)
        .map_err(|source| BpfError::Open { object: OBJECT, source })?;
    let mut skel = open.load().map_err(|source| BpfError::Load { object: OBJECT, source })?;
    let scope = std::fs::File::open(&options.scope_cgroup)
        .map_err(|source| BpfError::Query { what: format!("cgroup {}", options.scope_cgroup.display()), source })?;
    let fd = scope.as_raw_fd() as u32;
    skel.maps.rt_scope.update(&0u32.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY).map_err(map_error("rt_scope"))?;
    for path in DYNAMIC_LOADERS {
        let Some((dev, ino)) = file_identity(std::path::Path::new(path)) else { continue };
        let key = types::weir_rt_file_id { ino, dev, ..Default::default() };
        skel.maps.rt_loaders.update(bytes_of(&key), &[1u8], MapFlags::ANY).map_err(map_error("rt_loaders"))?;
        report.loaders.push((*path).to_string());
    }

    let mut links = Vec::new();
    for prog in skel.object_mut().progs_mut() {
        let name = prog.name().to_string_lossy().into_owned();
        let section = prog.section().to_string_lossy().into_owned();
        let attached =
            if section.starts_with("cgroup/") { prog.attach_cgroup(scope.as_raw_fd()) } else { prog.attach() };
        match attached {
            Ok(link) => {
                links.push(link);
                report.attached.push(name);
            }
            // Listen and accept, and judging a program run by its loader,
            // need the syscall tracepoints: a kernel without them still
            // gets everything else, and says what it lacks.
            Err(source) if section.starts_with("tp/syscalls/") => {
                report.missing.push((name, format!("{section}: {source}")));
            }
            Err(source) => {
                return Err(BpfError::Attach { program: name, target: section, source });
            }
        }
    }

    let lsm = if options.lsm {
        match crate::probe::bpf_lsm_allowed().and_then(|_| load_lsm(&skel, lsm_storage)) {
            Ok((lsm, lsm_links, names)) => {
                links.extend(lsm_links);
                report.attached.extend(names);
                report.lsm = true;
                Some(lsm)
            }
            Err(why) => {
                report.lsm_unavailable = Some(why);
                None
            }
        }
    } else {
        report.lsm_unavailable = Some("not requested (--runtime-lsm=false)".into());
        None
    };
    Ok((skel, lsm, links, report))
}

type LsmParts<'obj> = (crate::skel::runtime_lsm::RuntimeLsmSkel<'obj>, Vec<Link>, Vec<String>);

fn load_lsm<'obj>(
    base: &crate::skel::runtime::RuntimeSkel<'_>,
    storage: &'obj mut MaybeUninit<libbpf_rs::OpenObject>,
) -> Result<LsmParts<'obj>, String> {
    let first = |e: libbpf_rs::Error| e.to_string().lines().next().unwrap_or_default().to_string();
    let mut open = RuntimeLsmSkelBuilder::default().open(storage).map_err(first)?;
    if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
        rodata.rt_have_set_retval = 0;
        rodata.rt_wakeup_bytes = base.maps.rodata_data.map_or(65536, |r| r.rt_wakeup_bytes);
    }
    // One set of maps: the LSM hooks share the tracepoints' rules, process
    // table, scope and ring.
    open.maps.rt_ring.reuse_fd(base.maps.rt_ring.as_fd()).map_err(first)?;
    open.maps.rt_counters.reuse_fd(base.maps.rt_counters.as_fd()).map_err(first)?;
    open.maps.rt_scope.reuse_fd(base.maps.rt_scope.as_fd()).map_err(first)?;
    open.maps.rt_config.reuse_fd(base.maps.rt_config.as_fd()).map_err(first)?;
    open.maps.rt_rules.reuse_fd(base.maps.rt_rules.as_fd()).map_err(first)?;
    open.maps.rt_rule_cgroups.reuse_fd(base.maps.rt_rule_cgroups.as_fd()).map_err(first)?;
    open.maps.rt_rates.reuse_fd(base.maps.rt_rates.as_fd()).map_err(first)?;
    open.maps.rt_procs.reuse_fd(base.maps.rt_procs.as_fd()).map_err(first)?;
    open.maps.rt_exited.reuse_fd(base.maps.rt_exited.as_fd()).map_err(first)?;
    open.maps.rt_loaders.reuse_fd(base.maps.rt_loaders.as_fd()).map_err(first)?;
    let mut skel = open.load().map_err(first)?;
    let mut links = Vec::new();
    let mut names = Vec::new();
    for prog in skel.object_mut().progs_mut() {
        links.push(prog.attach_lsm().map_err(first)?);
        names.push(prog.name().to_string_lossy().into_owned());
    }
    Ok((skel, links, names))
}
