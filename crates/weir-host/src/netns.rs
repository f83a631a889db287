//! Named network namespaces, as `ip netns` keeps them under `/run/netns`.
//!
//! Entering a namespace is per thread (setns(2) with CLONE_NEWNET affects only
//! the caller), so work inside one runs on a dedicated thread, and a child
//! process enters one between fork and exec.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use crate::paths::NETNS_DIR;

/// An error entering or inspecting a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {name}")]
    Open {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("entering network namespace {name}")]
    Enter {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("the thread working in network namespace {name} panicked")]
    Panicked { name: String },
}

/// The bind-mount file of a named namespace.
pub fn path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

/// Whether a named namespace exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Opens a named namespace for setns(2).
pub fn open(name: &str) -> Result<File, NetnsError> {
    File::open(path(name)).map_err(|source| NetnsError::Open { name: name.to_string(), source })
}

/// The namespace's inode number, as `/proc/PID/ns/net` links show it.
pub fn inode(name: &str) -> Result<u64, NetnsError> {
    std::fs::metadata(path(name)).map(|m| m.ino()).map_err(|source| NetnsError::Open { name: name.to_string(), source })
}

/// Names of the namespaces that start with `prefix`, sorted.
pub fn list_with_prefix(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

fn setns_net(file: &File) -> io::Result<()> {
    // SAFETY: setns takes a valid open fd, which `file` keeps open for the call.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Runs `work` on a fresh thread that has entered namespace `name`.
pub fn run_in<T: Send>(name: &str, work: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let ns = open(name)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns_net(&ns).map_err(|source| NetnsError::Enter { name: name.to_string(), source })?;
                Ok(work())
            })
            .join()
            .map_err(|_| NetnsError::Panicked { name: name.to_string() })?
    })
}

/// Runs `work` on a fresh thread that has entered the namespace open in
/// `ns` (a bind mount or a `/proc/PID/ns/net` handle).
pub fn run_in_file<T: Send>(ns: &File, work: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let name = format!("fd {}", ns.as_raw_fd());
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns_net(ns).map_err(|source| NetnsError::Enter { name: name.clone(), source })?;
                Ok(work())
            })
            .join()
            .map_err(|_| NetnsError::Panicked { name: name.clone() })?
    })
}

/// Makes the child of `cmd` enter `netns` and, if given, join the cgroup whose
/// `cgroup.procs` file is open in `cgroup_procs`, after fork and before exec,
/// so not one instruction of the new program runs outside them.
pub fn confine_command(cmd: &mut Command, netns: Option<File>, cgroup_procs: Option<File>) {
    // SAFETY: the closure only makes async-signal-safe system calls (setns,
    // write) on fds opened before fork, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(procs) = &cgroup_procs {
                // Writing "0" moves the writing process itself.
                let rc = libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1);
                if rc != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(ns) = &netns {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}
