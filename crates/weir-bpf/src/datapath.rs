//! The node datapath's lifecycle: load, pin, attach, and adopt after a restart.
//!
//! **Invariant: a restart never detaches anything.** Every attachment is a
//! bpf_link pinned under `<pin_dir>/links/`; every map is pinned under
//! `<pin_dir>/maps/`. On start the agent loads fresh programs that reuse the
//! pinned maps, then swaps them into the pinned links with `bpf_link_update`,
//! an atomic replacement: traffic sees the old program or the new one, never
//! none, and counters carry on. Only the clsact fallback has no link; its
//! filter is replaced in place (same handle and priority).
//!
//! Once [`establish`] returns, the pins are the whole truth: the skeleton is
//! dropped and [`inspect`] and [`read_traffic`] work from the pins alone.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{AsRawLibbpf, Link, MapCore, MapFlags, MapHandle, TcHookBuilder, TC_EGRESS, TC_INGRESS};
use serde::{Deserialize, Serialize};

use crate::api::{self, Counter};
use crate::skel::node::NodeSkelBuilder;
use crate::BpfError;

mod pod_veths;
pub use pod_veths::{serve_pod_veths, set_pods_xdp, PodVethsChange, PodsXdpChange};

const OBJECT: &str = "node";
/// The clsact fallback's filter identity; reused so a restart replaces in place.
const CLSACT_HANDLE: u32 = 0x5745; // "WE"
const CLSACT_PRIORITY: u32 = 1;

/// Where a program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    XdpIngress,
    TcIngress,
    TcEgress,
}

/// How a program is attached, which decides how it survives a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachMode {
    /// XDP in the driver: the fast path.
    XdpNative,
    /// XDP emulated after the skb is built: correct but slower.
    XdpGeneric,
    /// tc via a tcx bpf_link (Linux 6.6+).
    Tcx,
    /// tc via a clsact qdisc filter: the fallback where tcx is missing.
    Clsact,
}

/// One program attached to one interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub program: String,
    pub hook: Hook,
    pub interface: String,
    pub ifindex: u32,
    pub mode: AttachMode,
    /// The pinned bpf_link, absent for clsact.
    pub link_pin: Option<PathBuf>,
    /// True when an existing attachment was updated in place rather than created.
    pub adopted: bool,
}

/// What [`establish`] did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EstablishReport {
    pub attachments: Vec<Attachment>,
    /// Maps whose pinned state was reused (empty on a first start).
    pub maps_reused: Vec<String>,
    /// Stale link pins removed because their interface is no longer served.
    pub links_removed: Vec<PathBuf>,
}

/// The pin layout below an agent's pin directory.
#[derive(Debug, Clone)]
pub struct PinLayout {
    pub root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }
    pub fn progs(&self) -> PathBuf {
        self.root.join("progs")
    }
    /// Opens the map pinned under `name`.
    pub fn open_map(&self, name: &str) -> Result<MapHandle, BpfError> {
        let path = self.maps().join(name);
        MapHandle::from_pinned_path(&path).map_err(|source| BpfError::OpenPinned { path, source })
    }

    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }
    fn link(&self, hook: Hook, interface: &str) -> PathBuf {
        let hook = match hook {
            Hook::XdpIngress => "xdp",
            Hook::TcIngress => "tc-ingress",
            Hook::TcEgress => "tc-egress",
        };
        self.links().join(format!("{hook}@{interface}"))
    }
}

/// The index of interface `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> Result<u32, BpfError> {
    let c_name = std::ffi::CString::new(name).map_err(|_| BpfError::NoSuchInterface { name: name.to_string() })?;
    // SAFETY: c_name is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(BpfError::NoSuchInterface { name: name.to_string() });
    }
    Ok(index)
}

pub(crate) fn ensure_dir(path: &Path) -> Result<(), BpfError> {
    std::fs::create_dir_all(path).map_err(|source| BpfError::PinDir { path: path.to_path_buf(), source })
}

pub(crate) fn replace_pin(path: &Path) -> Result<(), BpfError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BpfError::PinDir { path: path.to_path_buf(), source }),
    }
}

/// libbpf's maps for global data (`.rodata`, `.bss`) hold load-time constants,
/// not state, and bpffs refuses their dotted names: they are never pinned.
fn is_internal(name: &str) -> bool {
    name.contains('.')
}

/// Whether the map pinned at `pin` has the type, sizes and flags `map`
/// declares: an older version's map of another layout must not be reused.
fn pin_fits(map: &libbpf_rs::OpenMapMut<'_>, pin: &Path) -> bool {
    let Ok(pinned) = libbpf_rs::MapHandle::from_pinned_path(pin) else { return false };
    let Ok(info) = libbpf_rs::MapInfo::new(pinned.as_fd()) else { return false };
    let i = info.info;
    // Maps whose size the program leaves to the loader (ring buffers sized
    // at load, arrays of CPUs) are compared by what was declared.
    let entries_fit = map.max_entries() == 0 || i.max_entries == map.max_entries();
    i.type_ == map.map_type() as u32
        && i.key_size == map.key_size()
        && i.value_size == map.value_size()
        && entries_fit
        && i.map_flags == map.map_flags()
}

/// Points every map of an opened object at its pin, where one exists, so a
/// restart carries the kernel's state over. Returns the names reused.
pub(crate) fn reuse_pinned_maps(object: &mut libbpf_rs::OpenObject, pins: &PinLayout) -> Result<Vec<String>, BpfError> {
    let mut reused = Vec::new();
    for mut map in object.maps_mut() {
        let name = map.name().to_string_lossy().into_owned();
        if is_internal(&name) {
            continue;
        }
        let pin = pins.maps().join(&name);
        if pin.exists() && !pin_fits(&map, &pin) {
            // The layout changed between versions (libbpf's reuse takes the
            // pin's sizes as they are): state cannot carry over.
            tracing::warn!(map = %name, "pinned map's layout differs; starting it afresh");
            replace_pin(&pin)?;
        }
        if pin.exists() {
            match map.reuse_pinned_map(&pin) {
                Ok(()) => reused.push(name),
                Err(err) => {
                    // The layout changed between versions: state cannot carry over.
                    tracing::warn!(map = %name, error = %err, "pinned map is incompatible; starting it afresh");
                    replace_pin(&pin)?;
                }
            }
        }
    }
    Ok(reused)
}

/// Pins the maps not reused and every program of a loaded object.
pub(crate) fn pin_maps_and_programs(
    object: &mut libbpf_rs::Object,
    pins: &PinLayout,
    reused: &[String],
) -> Result<(), BpfError> {
    for mut map in object.maps_mut() {
        let name = map.name().to_string_lossy().into_owned();
        // A reused map already lives at its pin; libbpf does not mark it pinned.
        if !is_internal(&name) && !reused.contains(&name) && !map.is_pinned() {
            let pin = pins.maps().join(&name);
            map.pin(&pin).map_err(|source| BpfError::Pin { what: format!("map {name}"), path: pin, source })?;
        }
    }
    for mut prog in object.progs_mut() {
        let name = prog.name().to_string_lossy().into_owned();
        let pin = pins.progs().join(&name);
        replace_pin(&pin)?;
        prog.pin(&pin).map_err(|source| BpfError::Pin { what: format!("program {name}"), path: pin, source })?;
    }
    Ok(())
}

/// Loads the node datapath, reusing pinned maps, and attaches it to
/// `interfaces` (XDP ingress and tc egress on each), adopting pinned links.
/// Must run in the network namespace that owns the interfaces.
/// `skb_mode` names interfaces (pods' veths) where XDP must run in generic
/// mode: native XDP on a veth turns TSO off on its peer, halving a pod's
/// TCP throughput. Only the packet filter needs XDP there (policy and the
/// pod path run at tc), so pods' veths get it only while the filter has
/// rules (see [`set_pods_xdp`]); tc ingress counts their traffic otherwise.
pub fn establish(pins: &PinLayout, interfaces: &[String], skb_mode: &[String]) -> Result<EstablishReport, BpfError> {
    for dir in [pins.maps(), pins.progs(), pins.links()] {
        ensure_dir(&dir)?;
    }
    let mut report = EstablishReport::default();

    let mut storage = MaybeUninit::uninit();
    let mut open =
        NodeSkelBuilder::default().open(&mut storage).map_err(|source| BpfError::Open { object: OBJECT, source })?;
    report.maps_reused = reuse_pinned_maps(open.open_object_mut(), pins)?;
    let mut skel = open.load().map_err(|source| BpfError::Load { object: OBJECT, source })?;
    pin_maps_and_programs(skel.object_mut(), pins, &report.maps_reused)?;

    // An expression program in front of the node program tail-calls slot 0.
    let ingress_fd = skel.progs.weir_node_ingress.as_fd().as_raw_fd();
    skel.maps
        .filter_progs
        .update(&0u32.to_ne_bytes(), &ingress_fd.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
        .map_err(|source| BpfError::MapRead { map: "filter_progs".into(), source })?;
    let ingress = &skel.progs.weir_node_ingress;
    let egress = &skel.progs.weir_node_egress;
    let tc_ingress = &skel.progs.weir_node_tc_ingress;
    let pods_xdp = filter_has_rules(&skel.maps.filter_config);
    let mut pods = Vec::new();
    for interface in interfaces {
        let index = ifindex(interface)?;
        let pod = skb_mode.contains(interface);
        if pod {
            // Before the XDP link goes (remove_stale_links): tc counts from now on.
            skel.maps
                .pod_veths
                .update(&index.to_ne_bytes(), &u32::from(pods_xdp).to_ne_bytes(), MapFlags::ANY)
                .map_err(crate::error::map_error("pod_veths"))?;
            pods.push(index);
        }
        if !pod || pods_xdp {
            report.attachments.push(attach_xdp(pins, ingress, interface, index, pod)?);
        }
        report.attachments.push(attach_tc(pins, tc_ingress, Hook::TcIngress, interface, index, false)?);
        report.attachments.push(attach_tc(pins, egress, Hook::TcEgress, interface, index, false)?);
    }
    let gone: Vec<Vec<u8>> =
        skel.maps.pod_veths.keys().filter(|k| !pods.iter().any(|i| i.to_ne_bytes()[..] == k[..])).collect();
    for key in gone {
        let _ = skel.maps.pod_veths.delete(&key);
    }
    report.links_removed = remove_stale_links(pins, &report.attachments)?;
    Ok(report)
}

/// Whether the filter's live generation holds any rule (a fresh config: no).
fn filter_has_rules(config: &impl MapCore) -> bool {
    config
        .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
        .ok()
        .flatten()
        .and_then(|bytes| api::read_pod::<crate::skel::node::types::weir_filter_config>(&bytes))
        .is_some_and(|config| config.rules != 0)
}

/// The node program's XDP entry, as pinned under `progs/`.
pub(crate) const NODE_INGRESS: &str = "weir_node_ingress";

pub(crate) fn interface_name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf holds IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Some(unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}

pub(crate) fn open_pinned_program(path: &Path) -> Result<std::os::fd::OwnedFd, BpfError> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap_or_default();
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libbpf_sys::bpf_obj_get(c_path.as_ptr()) };
    if fd < 0 {
        return Err(BpfError::OpenPinned {
            path: path.to_path_buf(),
            source: libbpf_rs::Error::from(std::io::Error::from_raw_os_error(-fd)),
        });
    }
    // SAFETY: a new fd owned here alone.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Name of the program a link runs.
fn link_program_name(link: &Link) -> Option<String> {
    let info = libbpf_rs::query::LinkInfo::from_fd(link.as_fd()).ok()?;
    let fd = libbpf_rs::Program::fd_from_id(info.prog_id).ok()?;
    let mut prog_info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of_val(&prog_info) as u32;
    // SAFETY: prog_info and len are valid for writes and len is its size.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut prog_info, &mut len) };
    (rc == 0).then(|| prog_info.name.iter().take_while(|c| **c != 0).map(|c| *c as u8 as char).collect())
}

/// The name the filter's generated expression program is loaded under.
pub const EXPRESSION_PROGRAM: &str = "weir_expr";

/// Updates the pinned link at `pin` to run `prog`, or returns None when there
/// is no usable pinned link (none yet, or its interface went away). A link
/// running the filter's expression program keeps it: that program tail-calls
/// the node program through filter_progs, which already points at `prog`.
pub(crate) fn adopt_link(pin: &Path, prog: &libbpf_rs::Program<'_>) -> Option<Link> {
    if !pin.exists() {
        return None;
    }
    let mut link = Link::open(pin).ok()?;
    if link_program_name(&link).as_deref() == Some(EXPRESSION_PROGRAM) {
        return Some(link);
    }
    match link.update_prog(prog) {
        Ok(()) => Some(link),
        Err(err) => {
            tracing::warn!(pin = %pin.display(), error = %err, "pinned link is defunct; attaching afresh");
            let _ = std::fs::remove_file(pin);
            None
        }
    }
}

pub(crate) fn xdp_mode(index: u32) -> AttachMode {
    let mut opts = libbpf_sys::bpf_xdp_query_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_xdp_query_opts>() as _,
        ..Default::default()
    };
    // SAFETY: opts is a valid, correctly sized bpf_xdp_query_opts.
    let rc = unsafe { libbpf_sys::bpf_xdp_query(index as i32, 0, &mut opts) };
    if rc == 0 && u32::from(opts.attach_mode) == libbpf_sys::XDP_ATTACHED_SKB {
        AttachMode::XdpGeneric
    } else {
        AttachMode::XdpNative
    }
}

/// An XDP link in generic (skb) mode, pinned: libbpf-rs attaches with no
/// mode flags, so the link is made with bpf_link_create directly.
fn attach_xdp_skb_mode(
    prog: &libbpf_rs::ProgramMut<'_>,
    interface: &str,
    index: u32,
    pin: &Path,
) -> Result<(), BpfError> {
    attach_xdp_skb_mode_fd(prog.as_fd(), &prog.name().to_string_lossy(), interface, index, pin)
}

pub(crate) fn attach_xdp_skb_mode_fd(
    prog: std::os::fd::BorrowedFd<'_>,
    program: &str,
    interface: &str,
    index: u32,
    pin: &Path,
) -> Result<(), BpfError> {
    let failed = |what: &str, errno: i32| BpfError::Attach {
        program: program.to_string(),
        target: format!("generic XDP on {interface} ({what})"),
        source: libbpf_rs::Error::from(std::io::Error::from_raw_os_error(errno)),
    };
    let opts = libbpf_sys::bpf_link_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _,
        flags: libbpf_sys::XDP_FLAGS_SKB_MODE,
        ..Default::default()
    };
    // A link just unpinned (the filter's last rule went a moment ago) is
    // freed by the kernel shortly after; until then the device is busy.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let fd = loop {
        // SAFETY: a valid program fd and options that outlive the call.
        let fd = unsafe { libbpf_sys::bpf_link_create(prog.as_raw_fd(), index as i32, libbpf_sys::BPF_XDP, &opts) };
        if fd == -libc::EBUSY && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
            continue;
        }
        break fd;
    };
    if fd < 0 {
        return Err(failed("bpf_link_create", -fd));
    }
    // SAFETY: fd was just returned to us and is owned here alone.
    let link = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    pin_link_fd(&link, pin, &format!("generic XDP link on {interface}"))
}

/// Pins the bpf_link `link` (`what`, for errors) at `pin`, in place of
/// whatever was pinned there.
pub(crate) fn pin_link_fd(link: &std::os::fd::OwnedFd, pin: &Path, what: &str) -> Result<(), BpfError> {
    replace_pin(pin)?;
    let path = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes()).unwrap_or_default();
    // SAFETY: a valid link fd and a NUL-terminated path.
    let rc = unsafe { libbpf_sys::bpf_obj_pin(link.as_raw_fd(), path.as_ptr()) };
    if rc < 0 {
        return Err(BpfError::Pin {
            what: what.to_string(),
            path: pin.to_path_buf(),
            source: libbpf_rs::Error::from(std::io::Error::from_raw_os_error(-rc)),
        });
    }
    Ok(())
}

pub(crate) fn attach_xdp(
    pins: &PinLayout,
    prog: &libbpf_rs::ProgramMut<'_>,
    interface: &str,
    index: u32,
    skb_mode: bool,
) -> Result<Attachment, BpfError> {
    let pin = pins.link(Hook::XdpIngress, interface);
    let program = prog.name().to_string_lossy().into_owned();
    let adopted = adopt_link(&pin, prog).is_some();
    if !adopted && skb_mode {
        attach_xdp_skb_mode(prog, interface, index, &pin)?;
    } else if !adopted {
        // A link without mode flags takes the driver path where the driver has one.
        let mut link = prog.attach_xdp(index as i32).map_err(|source| BpfError::Attach {
            program: program.clone(),
            target: format!("XDP on {interface}"),
            source,
        })?;
        link.pin(&pin).map_err(|source| BpfError::Pin {
            what: format!("XDP link on {interface}"),
            path: pin.clone(),
            source,
        })?;
    }
    let mode = xdp_mode(index);
    if mode == AttachMode::XdpGeneric {
        tracing::warn!(interface, "driver has no native XDP; running generic XDP, which is slower");
    }
    Ok(Attachment {
        program,
        hook: Hook::XdpIngress,
        interface: interface.to_string(),
        ifindex: index,
        mode,
        link_pin: Some(pin),
        adopted,
    })
}

/// Attaches a tc program on `hook` (ingress or egress): tcx where the kernel
/// has it, else a clsact filter. `first` puts it in front of the programs
/// already attached (tcx only: a clsact filter of Weir's is replaced).
pub(crate) fn attach_tc(
    pins: &PinLayout,
    prog: &libbpf_rs::ProgramMut<'_>,
    hook: Hook,
    interface: &str,
    index: u32,
    first: bool,
) -> Result<Attachment, BpfError> {
    let pin = pins.link(hook, interface);
    let program = prog.name().to_string_lossy().into_owned();
    let label = if hook == Hook::TcIngress { "ingress" } else { "egress" };
    let base = Attachment {
        program: program.clone(),
        hook,
        interface: interface.to_string(),
        ifindex: index,
        mode: AttachMode::Tcx,
        link_pin: Some(pin.clone()),
        adopted: true,
    };
    if adopt_link(&pin, prog).is_some() {
        return Ok(base);
    }
    match attach_tcx_placed(prog, index, first) {
        Ok(mut link) => {
            link.pin(&pin).map_err(|source| BpfError::Pin {
                what: format!("tcx link on {interface}"),
                path: pin.clone(),
                source,
            })?;
            Ok(Attachment { adopted: false, ..base })
        }
        Err(tcx_error) => {
            tracing::info!(interface, direction = label, error = %tcx_error, "tcx unavailable; falling back to a clsact filter");
            attach_clsact(prog.as_fd(), &program, hook, interface, index)?;
            Ok(Attachment { mode: AttachMode::Clsact, link_pin: None, adopted: false, ..base })
        }
    }
}

/// Attaches a tc program as Weir's clsact filter on `hook` of `interface`
/// (replacing Weir's filter there, if any): the fallback where the kernel
/// has no tcx.
pub(crate) fn attach_clsact(
    prog: std::os::fd::BorrowedFd<'_>,
    program: &str,
    hook: Hook,
    interface: &str,
    index: u32,
) -> Result<(), BpfError> {
    let (direction, label) = if hook == Hook::TcIngress { (TC_INGRESS, "ingress") } else { (TC_EGRESS, "egress") };
    let mut tc = TcHookBuilder::new(prog)
        .ifindex(index as i32)
        .replace(true)
        .handle(CLSACT_HANDLE)
        .priority(CLSACT_PRIORITY)
        .hook(direction);
    // The qdisc may exist already (from us, or from someone else): that is fine.
    let _ = tc.create();
    tc.attach().map_err(|source| BpfError::Attach {
        program: program.to_string(),
        target: format!("clsact {label} on {interface}"),
        source,
    })?;
    Ok(())
}

/// Attaches a tc program through a tcx link (Linux 6.6+). The attach type
/// comes from the program's section, `tcx/ingress` or `tcx/egress`.
pub(crate) fn attach_tcx(prog: &libbpf_rs::ProgramMut<'_>, index: u32) -> std::io::Result<Link> {
    attach_tcx_placed(prog, index, false)
}

/// [`attach_tcx`], before every program already attached when `first`.
fn attach_tcx_placed(prog: &libbpf_rs::ProgramMut<'_>, index: u32, first: bool) -> std::io::Result<Link> {
    let opts = libbpf_sys::bpf_tcx_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_tcx_opts>() as _,
        flags: if first { libbpf_sys::BPF_F_BEFORE } else { 0 },
        ..Default::default()
    };
    // SAFETY: the program pointer comes from a loaded libbpf object that
    // outlives the call; opts is a valid, sized bpf_tcx_opts.
    let raw = unsafe { libbpf_sys::bpf_program__attach_tcx(prog.as_libbpf_object().as_ptr(), index as i32, &opts) };
    // libbpf 1.x returns NULL and sets errno on failure.
    let ptr = NonNull::new(raw).ok_or_else(std::io::Error::last_os_error)?;
    // SAFETY: ptr is a valid bpf_link that libbpf handed us to own.
    Ok(unsafe { Link::from_ptr(ptr) })
}

/// Unpins the node datapath's links (`HOOK@INTERFACE`) for hooks this run no
/// longer serves, which detaches them. Other links in the directory (the
/// socket load balancer's) are not the node datapath's to judge.
fn remove_stale_links(pins: &PinLayout, current: &[Attachment]) -> Result<Vec<PathBuf>, BpfError> {
    let keep: Vec<&Path> = current.iter().filter_map(|a| a.link_pin.as_deref()).collect();
    let mut removed = Vec::new();
    for entry in
        std::fs::read_dir(pins.links()).map_err(|source| BpfError::PinDir { path: pins.links(), source })?.flatten()
    {
        let path = entry.path();
        let is_datapath_link = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains('@'));
        if is_datapath_link && !keep.contains(&path.as_path()) {
            replace_pin(&path)?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Traffic counters summed over CPUs, read from the pinned maps.
#[derive(Debug, Clone, Default)]
pub struct TrafficCounters {
    /// Indexed by `api::traffic_class` code.
    pub ingress: Vec<Counter>,
    /// Indexed by `api::traffic_class` code.
    pub egress: Vec<Counter>,
    /// Indexed by `api::drop_reason` code.
    pub invalid: Vec<Counter>,
}

/// Reads a per-CPU array of [`Counter`]s, summing each slot over CPUs.
pub fn read_counter_array(map: &MapHandle, slots: u32) -> Result<Vec<Counter>, BpfError> {
    read_counters(map, 0..slots)
}

/// Reads the given slots of a per-CPU array of [`Counter`]s, summing over CPUs.
pub fn read_counters(map: &MapHandle, slots: impl IntoIterator<Item = u32>) -> Result<Vec<Counter>, BpfError> {
    let name = map.name().to_string_lossy().into_owned();
    slots
        .into_iter()
        .map(|slot| {
            let per_cpu = map
                .lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY)
                .map_err(|source| BpfError::MapRead { map: name.clone(), source })?;
            let mut sum = Counter::default();
            for bytes in per_cpu.unwrap_or_default() {
                if bytes.len() >= std::mem::size_of::<Counter>() {
                    // SAFETY: the buffer holds at least one Counter, a plain
                    // repr(C) struct of integers generated from the same BTF
                    // the kernel used; read_unaligned tolerates any alignment.
                    sum += unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Counter>()) };
                }
            }
            Ok(sum)
        })
        .collect()
}

fn open_pinned_map(pins: &PinLayout, name: &str) -> Result<MapHandle, BpfError> {
    let path = pins.maps().join(name);
    MapHandle::from_pinned_path(&path).map_err(|source| BpfError::OpenPinned { path, source })
}

/// Reads the node datapath's traffic counters from its pins.
pub fn read_traffic(pins: &PinLayout) -> Result<TrafficCounters, BpfError> {
    Ok(TrafficCounters {
        ingress: read_counter_array(&open_pinned_map(pins, "traffic_ingress")?, api::traffic_class::COUNT)?,
        egress: read_counter_array(&open_pinned_map(pins, "traffic_egress")?, api::traffic_class::COUNT)?,
        invalid: read_counter_array(&open_pinned_map(pins, "invalid_packets")?, api::drop_reason::COUNT)?,
    })
}
