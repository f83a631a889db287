//! The node datapath on pods' veths, from the pins alone: a pod that comes
//! or goes changes only its own veth's attachments. The programs are the
//! ones [`super::establish`] loaded and pinned; nothing is loaded or
//! verified again, which keeps a container's start off the verifier's path.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::{
    attach_xdp_skb_mode_fd, filter_has_rules, interface_name, open_pinned_program, replace_pin, xdp_mode, AttachMode,
    Attachment, Hook, PinLayout, NODE_INGRESS,
};
use crate::BpfError;

/// The node program's tc entries, as pinned under `progs/`.
const NODE_TC_INGRESS: &str = "weir_node_tc_ingress";
const NODE_EGRESS: &str = "weir_node_egress";

/// What [`set_pods_xdp`] changed.
#[derive(Debug, Clone, Default)]
pub struct PodsXdpChange {
    /// XDP attachments made on pods' veths.
    pub attached: Vec<Attachment>,
    /// Pods' veths whose XDP link was taken away.
    pub detached: Vec<String>,
}

/// Puts the node program on XDP of every pod's veth the datapath serves
/// (`on`), or takes it away, from the pins alone. The filter calls it before
/// its first rule goes live and after its last one went: XDP on a veth is
/// generic XDP, which costs a pod's traffic even when it judges nothing.
pub fn set_pods_xdp(pins: &PinLayout, on: bool) -> Result<PodsXdpChange, BpfError> {
    let veths = pins.open_map("pod_veths")?;
    let mut change = PodsXdpChange::default();
    let mut program: Option<std::os::fd::OwnedFd> = None;
    for key in veths.keys().collect::<Vec<_>>() {
        let Ok(bytes) = <[u8; 4]>::try_from(key.as_slice()) else { continue };
        let index = u32::from_ne_bytes(bytes);
        let has_xdp = veths.lookup(&key, MapFlags::ANY).ok().flatten().is_some_and(|v| v.iter().any(|b| *b != 0));
        if has_xdp == on {
            continue;
        }
        let Some(interface) = interface_name(index) else {
            // The pod left; serve_pod_veths forgets it next time. Nothing to attach to.
            continue;
        };
        let pin = pins.link(Hook::XdpIngress, &interface);
        if on {
            if !pin.exists() {
                if program.is_none() {
                    program = Some(open_pinned_program(&pins.progs().join(NODE_INGRESS))?);
                }
                if let Some(program) = &program {
                    attach_xdp_skb_mode_fd(program.as_fd(), NODE_INGRESS, &interface, index, &pin)?;
                }
            }
            veths.update(&key, &1u32.to_ne_bytes(), MapFlags::ANY).map_err(crate::error::map_error("pod_veths"))?;
            change.attached.push(Attachment {
                program: NODE_INGRESS.to_string(),
                hook: Hook::XdpIngress,
                interface,
                ifindex: index,
                mode: xdp_mode(index),
                link_pin: Some(pin),
                adopted: false,
            });
        } else {
            // tc counts before the XDP link goes: a moment counted twice, none lost.
            veths.update(&key, &0u32.to_ne_bytes(), MapFlags::ANY).map_err(crate::error::map_error("pod_veths"))?;
            replace_pin(&pin)?;
            change.detached.push(interface);
        }
    }
    Ok(change)
}

/// What [`serve_pod_veths`] changed.
#[derive(Debug, Clone, Default)]
pub struct PodVethsChange {
    /// The attachments made (or adopted) on the veths that were added.
    pub attached: Vec<Attachment>,
    /// Link pins removed: the veths that left.
    pub links_removed: Vec<PathBuf>,
}

const HOOKS: [Hook; 3] = [Hook::XdpIngress, Hook::TcIngress, Hook::TcEgress];

/// Attaches the pinned node programs to the pods' veths in `added` (tc
/// ingress and egress, and generic XDP while the filter has rules) and
/// takes them off those in `removed`, leaving every other attachment as it
/// is. A link already pinned for a veth's hook is adopted when it is alive
/// (its program is swapped in place) and replaced when it is not (the veth
/// was made again). `pod_veths` follows: a veth joins it before its links
/// exist, and entries of veths that are gone (or removed) leave it. A veth
/// that fails is left as it was before: none of its links, no entry. Must
/// run in the network namespace that owns the veths; [`super::establish`]
/// must have pinned the programs.
pub fn serve_pod_veths(pins: &PinLayout, added: &[String], removed: &[String]) -> Result<PodVethsChange, BpfError> {
    let veths = pins.open_map("pod_veths")?;
    let mut change = PodVethsChange::default();
    for interface in removed {
        change.links_removed.extend(unpin_links(pins, interface)?);
        // A veth of a pod that left has no index any more; one still there
        // (the pod moved to the host's stack) is told apart by name.
        if let Ok(index) = super::ifindex(interface) {
            let _ = veths.delete(&index.to_ne_bytes());
        }
    }
    for key in veths.keys().collect::<Vec<_>>() {
        let Ok(bytes) = <[u8; 4]>::try_from(key.as_slice()) else { continue };
        if interface_name(u32::from_ne_bytes(bytes)).is_none() {
            let _ = veths.delete(&key);
        }
    }
    if added.is_empty() {
        return Ok(change);
    }
    let xdp = filter_has_rules(&pins.open_map("filter_config")?);
    let programs = Programs {
        tc_ingress: open_pinned_program(&pins.progs().join(NODE_TC_INGRESS))?,
        egress: open_pinned_program(&pins.progs().join(NODE_EGRESS))?,
        ingress: if xdp { Some(open_pinned_program(&pins.progs().join(NODE_INGRESS))?) } else { None },
    };
    for interface in added {
        let index = super::ifindex(interface)?;
        match attach_veth(pins, &veths, &programs, interface, index) {
            Ok(attached) => change.attached.extend(attached),
            Err(e) => {
                let _ = unpin_links(pins, interface);
                let _ = veths.delete(&index.to_ne_bytes());
                return Err(e);
            }
        }
    }
    Ok(change)
}

/// The pinned programs a pod's veth runs.
struct Programs {
    tc_ingress: OwnedFd,
    egress: OwnedFd,
    /// While the filter has rules.
    ingress: Option<OwnedFd>,
}

/// Unpins the node datapath's links on `interface`; returns their pins.
fn unpin_links(pins: &PinLayout, interface: &str) -> Result<Vec<PathBuf>, BpfError> {
    let mut removed = Vec::new();
    for pin in HOOKS.map(|hook| pins.link(hook, interface)) {
        if pin.exists() {
            replace_pin(&pin)?;
            removed.push(pin);
        }
    }
    Ok(removed)
}

fn attach_veth(
    pins: &PinLayout,
    veths: &MapHandle,
    programs: &Programs,
    interface: &str,
    index: u32,
) -> Result<Vec<Attachment>, BpfError> {
    let mut attached = Vec::new();
    // Before its links: the tc programs judge a pod's veth by this entry.
    veths
        .update(&index.to_ne_bytes(), &u32::from(programs.ingress.is_some()).to_ne_bytes(), MapFlags::ANY)
        .map_err(crate::error::map_error("pod_veths"))?;
    if let Some(ingress) = &programs.ingress {
        let pin = pins.link(Hook::XdpIngress, interface);
        let adopted = adopt_link_fd(&pin, ingress.as_fd());
        if !adopted {
            attach_xdp_skb_mode_fd(ingress.as_fd(), NODE_INGRESS, interface, index, &pin)?;
        }
        attached.push(Attachment {
            program: NODE_INGRESS.to_string(),
            hook: Hook::XdpIngress,
            interface: interface.to_string(),
            ifindex: index,
            mode: xdp_mode(index),
            link_pin: Some(pin),
            adopted,
        });
    }
    // Each tcx attach waits out an RCU grace period (the kernel swaps the
    // device's program array): both hooks wait at once.
    let (ingress, egress) = std::thread::scope(|scope| {
        let egress =
            scope.spawn(|| attach_tc_fd(pins, programs.egress.as_fd(), NODE_EGRESS, Hook::TcEgress, interface, index));
        let ingress =
            attach_tc_fd(pins, programs.tc_ingress.as_fd(), NODE_TC_INGRESS, Hook::TcIngress, interface, index);
        (ingress, egress.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    });
    attached.push(ingress?);
    attached.push(egress?);
    Ok(attached)
}

/// Swaps `prog` into the live link pinned at `pin`; false when there is no
/// pin, or its link is defunct (its device went away), whose pin is then
/// removed. A link running the filter's expression program keeps it: that
/// program tail-calls the node program.
fn adopt_link_fd(pin: &Path, prog: BorrowedFd<'_>) -> bool {
    if !pin.exists() {
        return false;
    }
    let Ok(link) = libbpf_rs::Link::open(pin) else {
        let _ = replace_pin(pin);
        return false;
    };
    if super::link_program_name(&link).as_deref() == Some(super::EXPRESSION_PROGRAM) {
        return true;
    }
    // SAFETY: a valid link fd and program fd; no options.
    let rc = unsafe { libbpf_sys::bpf_link_update(link.as_fd().as_raw_fd(), prog.as_raw_fd(), std::ptr::null()) };
    if rc != 0 {
        let _ = replace_pin(pin);
    }
    rc == 0
}

/// Attaches a pinned tc program to `interface` through a pinned tcx link
/// (appended after whatever is attached; a live link already pinned for
/// the hook is adopted), or a clsact filter where the kernel has no tcx.
fn attach_tc_fd(
    pins: &PinLayout,
    prog: BorrowedFd<'_>,
    program: &str,
    hook: Hook,
    interface: &str,
    index: u32,
) -> Result<Attachment, BpfError> {
    let pin = pins.link(hook, interface);
    let attach_type = if hook == Hook::TcIngress { libbpf_sys::BPF_TCX_INGRESS } else { libbpf_sys::BPF_TCX_EGRESS };
    let base = Attachment {
        program: program.to_string(),
        hook,
        interface: interface.to_string(),
        ifindex: index,
        mode: AttachMode::Tcx,
        link_pin: Some(pin.clone()),
        adopted: true,
    };
    if adopt_link_fd(&pin, prog) {
        return Ok(base);
    }
    let opts = libbpf_sys::bpf_link_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _,
        ..Default::default()
    };
    // SAFETY: a valid program fd and options that outlive the call.
    let fd = unsafe { libbpf_sys::bpf_link_create(prog.as_raw_fd(), index as i32, attach_type, &opts) };
    if fd >= 0 {
        // SAFETY: fd was just returned to us and is owned here alone.
        let link = unsafe { OwnedFd::from_raw_fd(fd) };
        super::pin_link_fd(&link, &pin, &format!("tcx link on {interface}"))?;
        return Ok(Attachment { adopted: false, ..base });
    }
    // Only a kernel without tcx gets the fallback; any other refusal is an error.
    const ENOTSUPP: i32 = 524;
    if ![libc::EINVAL, libc::EOPNOTSUPP, ENOTSUPP].contains(&-fd) {
        return Err(BpfError::Attach {
            program: program.to_string(),
            target: format!("tcx {hook:?} on {interface}"),
            source: libbpf_rs::Error::from(std::io::Error::from_raw_os_error(-fd)),
        });
    }
    tracing::info!(interface, hook = ?hook, errno = -fd, "tcx unavailable; falling back to a clsact filter");
    super::attach_clsact(prog, program, hook, interface, index)?;
    Ok(Attachment { mode: AttachMode::Clsact, link_pin: None, adopted: false, ..base })
}
