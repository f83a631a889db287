//! Finding and mounting the pseudo-filesystems eBPF work needs.
//!
//! cgroup2 lives at `/sys/fs/cgroup/unified` on hybrid hosts and at
//! `/sys/fs/cgroup` on most others, so it is always found from `/proc/mounts`
//! rather than assumed.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use crate::paths;

/// An error finding or mounting a filesystem.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("reading /proc/mounts")]
    Read(#[source] io::Error),
    #[error("mounting {fstype} at {path}")]
    Mount {
        fstype: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no cgroup2 filesystem is mounted and mounting one at {path} failed")]
    NoCgroup2 {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One line of `/proc/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub source: String,
    pub target: PathBuf,
    pub fstype: String,
}

/// A snapshot of the mount table.
#[derive(Debug, Clone, Default)]
pub struct Mounts {
    entries: Vec<MountEntry>,
}

impl Mounts {
    /// Reads the mount table of the calling process's mount namespace.
    pub fn read() -> Result<Self, MountError> {
        let text = std::fs::read_to_string("/proc/mounts").map_err(MountError::Read)?;
        Ok(Self::parse(&text))
    }

    /// Parses `/proc/mounts` text. Octal escapes (`\040` for a space) are decoded.
    pub fn parse(text: &str) -> Self {
        let entries = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                let source = fields.next()?;
                let target = fields.next()?;
                let fstype = fields.next()?;
                Some(MountEntry {
                    source: unescape(source),
                    target: PathBuf::from(unescape(target)),
                    fstype: fstype.to_string(),
                })
            })
            .collect();
        Self { entries }
    }

    /// The first mount point of a filesystem type, e.g. `"cgroup2"` or `"bpf"`.
    pub fn find(&self, fstype: &str) -> Option<&Path> {
        self.entries.iter().find(|e| e.fstype == fstype).map(|e| e.target.as_path())
    }
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let value = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mount(fstype: &'static str, target: &Path) -> Result<(), MountError> {
    let err = |source| MountError::Mount { fstype, path: target.to_path_buf(), source };
    std::fs::create_dir_all(target).map_err(err)?;
    let c_target = CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let c_type = CString::new(fstype).map_err(|e| err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call; data is null.
    let rc = unsafe { libc::mount(c_type.as_ptr(), c_target.as_ptr(), c_type.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    tracing::info!(fstype, path = %target.display(), "mounted");
    Ok(())
}

/// Returns where `fstype` is mounted, mounting it at `default` first if absent.
fn ensure(fstype: &'static str, default: &str) -> Result<PathBuf, MountError> {
    if let Some(found) = Mounts::read()?.find(fstype) {
        return Ok(found.to_path_buf());
    }
    mount(fstype, Path::new(default))?;
    Ok(PathBuf::from(default))
}

/// The bpffs mount, mounted at `/sys/fs/bpf` if there is none.
pub fn ensure_bpffs() -> Result<PathBuf, MountError> {
    ensure("bpf", paths::BPFFS_DEFAULT)
}

/// The tracefs mount, mounted at `/sys/kernel/tracing` if there is none.
/// libbpf resolves `tracepoint/` attach points through it.
pub fn ensure_tracefs() -> Result<PathBuf, MountError> {
    ensure("tracefs", paths::TRACEFS_DEFAULT)
}

/// The securityfs mount, mounted at `/sys/kernel/security` if there is none.
pub fn ensure_securityfs() -> Result<PathBuf, MountError> {
    ensure("securityfs", paths::SECURITYFS_DEFAULT)
}

/// The cgroup2 mount: found in `/proc/mounts`, else mounted at `/sys/fs/cgroup/unified`
/// (beside a v1 hierarchy) or `/sys/fs/cgroup` (on a host with none).
pub fn ensure_cgroup2() -> Result<PathBuf, MountError> {
    let mounts = Mounts::read()?;
    if let Some(found) = mounts.find("cgroup2") {
        return Ok(found.to_path_buf());
    }
    let target = if mounts.find("cgroup").is_some() { "/sys/fs/cgroup/unified" } else { "/sys/fs/cgroup" };
    mount("cgroup2", Path::new(target)).map_err(|e| match e {
        MountError::Mount { path, source, .. } => MountError::NoCgroup2 { path, source },
        other => other,
    })?;
    Ok(PathBuf::from(target))
}

/// The kernel lockdown mode (`none`, `integrity` or `confidentiality`), or
/// `None` when the kernel has no lockdown LSM.
pub fn lockdown_mode() -> Result<Option<String>, MountError> {
    let securityfs = ensure_securityfs()?;
    let Ok(text) = std::fs::read_to_string(securityfs.join("lockdown")) else {
        return Ok(None);
    };
    // The active mode is bracketed: "none [integrity] confidentiality".
    Ok(text.split_whitespace().find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']'))).map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "proc /proc proc rw,relatime 0 0\n\
        tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0\n\
        cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
        cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n\
        bpf /sys/fs/bpf\\040x bpf rw 0 0\n";

    #[test]
    fn finds_cgroup2_on_a_hybrid_host_below_unified() {
        let mounts = Mounts::parse(HYBRID);
        assert_eq!(mounts.find("cgroup2"), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(mounts.find("tracefs"), None);
    }

    #[test]
    fn decodes_octal_escapes_in_mount_points() {
        assert_eq!(Mounts::parse(HYBRID).find("bpf"), Some(Path::new("/sys/fs/bpf x")));
    }

    #[test]
    fn ignores_short_lines() {
        assert_eq!(Mounts::parse("garbage\n\nx y\n").find("y"), None);
    }
}
