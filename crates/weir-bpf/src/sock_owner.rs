//! The node object's socket-owner tag (`weir_sock_owner`, cgroup/sock_create;
//! bpf/lib/sock_owner.h): every socket made below a cgroup remembers the
//! process that made it, so a local pod's flow events name the process
//! behind them. Attached from the pins after the node datapath is
//! established, through a pinned link that a restarted agent updates in
//! place.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::datapath::{open_pinned_program, replace_pin, PinLayout};
use crate::BpfError;

const PROGRAM: &str = "weir_sock_owner";

fn link_pin(pins: &PinLayout) -> PathBuf {
    pins.links().join("sock-owner")
}

fn failed(cgroup: &Path, what: &str, errno: i32) -> BpfError {
    BpfError::Attach {
        program: PROGRAM.to_string(),
        target: format!("cgroup {} sock_create ({what})", cgroup.display()),
        source: libbpf_rs::Error::from(std::io::Error::from_raw_os_error(errno)),
    }
}

/// Tags the sockets made below `cgroup` from now on. Returns true when a
/// pinned link from an earlier run was updated to the pinned program.
pub fn establish(pins: &PinLayout, cgroup: &Path) -> Result<bool, BpfError> {
    let program = open_pinned_program(&pins.progs().join(PROGRAM))?;
    let pin = link_pin(pins);
    if pin.exists() {
        if let Ok(link) = open_pinned_program(&pin) {
            // SAFETY: a link fd and a program fd, both valid for the call.
            let rc = unsafe { libbpf_sys::bpf_link_update(link.as_raw_fd(), program.as_raw_fd(), std::ptr::null()) };
            if rc == 0 {
                return Ok(true);
            }
            tracing::warn!(pin = %pin.display(), errno = -rc, "pinned sock_create link is defunct; attaching afresh");
        }
        replace_pin(&pin)?;
    }
    let dir = std::fs::File::open(cgroup)
        .map_err(|source| BpfError::Query { what: format!("cgroup {}", cgroup.display()), source })?;
    // SAFETY: a valid program fd, a cgroup directory fd, no options.
    let fd = unsafe {
        libbpf_sys::bpf_link_create(
            program.as_raw_fd(),
            dir.as_raw_fd(),
            libbpf_sys::BPF_CGROUP_INET_SOCK_CREATE,
            std::ptr::null(),
        )
    };
    if fd < 0 {
        return Err(failed(cgroup, "bpf_link_create", -fd));
    }
    // SAFETY: fd was just returned to us and is owned here alone.
    let link = unsafe { OwnedFd::from_raw_fd(fd) };
    let path = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes()).unwrap_or_default();
    // SAFETY: a valid link fd and a NUL-terminated path.
    let rc = unsafe { libbpf_sys::bpf_obj_pin(link.as_raw_fd(), path.as_ptr()) };
    if rc < 0 {
        return Err(failed(cgroup, "pinning the link", -rc));
    }
    Ok(false)
}
