//! cgroup v2 directories: each lab pod and node gets one, and `down` must
//! leave none behind even after a crash, so removal kills first and then
//! removes depth-first.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// An error managing a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("creating cgroup {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening {path}/cgroup.procs")]
    Procs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("removing cgroup {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {path}/cgroup.freeze")]
    Freeze {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("processes in cgroup {path} survived SIGKILL for {waited:?}: {pids:?}")]
    Unkillable { path: PathBuf, pids: Vec<i32>, waited: Duration },
}

/// A cgroup v2 directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn exists(&self) -> bool {
        self.path.join("cgroup.procs").exists()
    }

    /// Creates the cgroup and its missing parents.
    pub fn create(&self) -> Result<(), CgroupError> {
        std::fs::create_dir_all(&self.path).map_err(|source| CgroupError::Create { path: self.path.clone(), source })
    }

    /// The cgroup id BPF programs see (`bpf_get_current_cgroup_id`): the directory's inode.
    pub fn id(&self) -> io::Result<u64> {
        std::fs::metadata(&self.path).map(|m| m.ino())
    }

    /// `cgroup.procs` opened for writing: a process that writes "0" joins.
    pub fn procs_for_join(&self) -> Result<File, CgroupError> {
        OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))
            .map_err(|source| CgroupError::Procs { path: self.path.clone(), source })
    }

    /// Pids in this cgroup and every descendant.
    pub fn pids_recursive(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        let mut stack = vec![self.path.clone()];
        while let Some(dir) = stack.pop() {
            if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
            stack.extend(subdirs(&dir));
        }
        pids
    }

    /// One handle per distinct network namespace that a process of this
    /// subtree is in (`/proc/PID/ns/net`); processes that exit meanwhile are skipped.
    pub fn net_namespaces(&self) -> Vec<std::fs::File> {
        use std::os::unix::fs::MetadataExt;
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for pid in self.pids_recursive() {
            let Ok(file) = std::fs::File::open(format!("/proc/{pid}/ns/net")) else { continue };
            let Ok(meta) = file.metadata() else { continue };
            if seen.insert((meta.dev(), meta.ino())) {
                out.push(file);
            }
        }
        out
    }

    /// How long killed processes get to leave: an agent in exit(2) closes its
    /// BPF links and maps, each waiting out an RCU grace period, which takes
    /// seconds on a loaded machine. Reached only when something is wrong.
    pub const KILL_DEADLINE: Duration = Duration::from_secs(30);

    /// Kills every process in the subtree and waits until it is empty.
    pub fn kill_all(&self, deadline: Duration) -> Result<(), CgroupError> {
        if !self.path.exists() {
            return Ok(());
        }
        // cgroup.kill (Linux 5.14) kills the whole subtree atomically, so a
        // forking process cannot escape; signal pid by pid where it is absent.
        let used_kill_file = std::fs::write(self.path.join("cgroup.kill"), "1").is_ok();
        let start = Instant::now();
        loop {
            let pids = self.pids_recursive();
            // Exiting tasks leave cgroup.procs before the cgroup stops counting
            // as populated; rmdir fails with EBUSY until it does.
            if pids.is_empty() && !self.populated() {
                return Ok(());
            }
            if !used_kill_file || start.elapsed() > Duration::from_millis(200) {
                for pid in &pids {
                    crate::process::kill(*pid, libc::SIGKILL);
                }
            }
            if start.elapsed() > deadline {
                return Err(CgroupError::Unkillable { path: self.path.clone(), pids, waited: deadline });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Freezes every process of the subtree, or thaws it (cgroup v2's
    /// `cgroup.freeze`). Freezing is asynchronous: [`Cgroup::is_frozen`]
    /// says when it is done. Frozen processes can still be killed.
    pub fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        std::fs::write(self.path.join("cgroup.freeze"), if frozen { "1" } else { "0" })
            .map_err(|source| CgroupError::Freeze { path: self.path.clone(), source })
    }

    /// Whether the whole subtree is frozen now (`cgroup.events`).
    pub fn is_frozen(&self) -> bool {
        std::fs::read_to_string(self.path.join("cgroup.events"))
            .is_ok_and(|events| events.lines().any(|l| l == "frozen 1"))
    }

    /// Whether any task is still inside the subtree (`cgroup.events`).
    fn populated(&self) -> bool {
        std::fs::read_to_string(self.path.join("cgroup.events"))
            .is_ok_and(|events| events.lines().any(|l| l == "populated 1"))
    }

    /// Kills everything inside, then removes the subtree depth-first.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        self.kill_all(Self::KILL_DEADLINE)?;
        remove_depth_first(&self.path)
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.path())
        .collect()
}

fn remove_depth_first(dir: &Path) -> Result<(), CgroupError> {
    if !dir.exists() {
        return Ok(());
    }
    for child in subdirs(dir) {
        remove_depth_first(&child)?;
    }
    // A cgroup's control files vanish with rmdir; they cannot be unlinked.
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CgroupError::Remove { path: dir.to_path_buf(), source }),
    }
}

/// The cgroup v2 directory the calling process is in, under the hierarchy
/// mounted at `cgroup2` (from the `0::` line of /proc/self/cgroup).
pub fn own_cgroup(cgroup2: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(cgroup2.join(path.trim_start_matches('/')))
}
