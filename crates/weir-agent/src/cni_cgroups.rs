//! Which cgroup a CNI container runs in. The runtime does not say: the
//! plugin gets only the container's network namespace, and podman makes
//! that before the container has a process (it runs ADD first). So the
//! agent looks for the container afterwards: a process in the endpoint's
//! network namespace whose cgroup holds nothing but processes of that
//! namespace. That is the container's own cgroup; a cgroup it shares with
//! anything else (a runtime that gave it none, a process not moved into
//! its cgroup yet) is never taken for it.
//!
//! The search is retried with growing pauses for [`LEARN_FOR`] after ADD,
//! then given up: a container with no process by then is not attributed
//! until the agent restarts (which searches again for every endpoint whose
//! cgroup is unknown).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long after ADD the container's cgroup is looked for.
pub const LEARN_FOR: Duration = Duration::from_secs(60);

/// The pause before each search after the first: doubling from 20 ms to 2 s,
/// so a container that starts at once is found at once and one that never
/// starts costs a few dozen scans of /proc.
pub fn pauses() -> impl Iterator<Item = Duration> {
    std::iter::successors(Some(Duration::from_millis(20)), |d| Some((*d * 2).min(Duration::from_secs(2))))
}

/// The pid a netns path names directly (`/proc/PID/ns/net`, as containerd
/// passes it), if it does: that process is looked at first.
fn pid_of_netns_path(netns: &str) -> Option<i32> {
    netns.strip_prefix("/proc/")?.strip_suffix("/ns/net")?.parse().ok()
}

/// The pids a cgroup directory holds.
fn procs(cgroup: &Path) -> Option<Vec<i32>> {
    let text = std::fs::read_to_string(cgroup.join("cgroup.procs")).ok()?;
    Some(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// The inode of a process's network namespace.
fn netns_of(pid: i32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net")).ok().map(|m| m.ino())
}

/// The cgroup (an absolute path under `cgroup2`) of the container whose
/// network namespace is `netns`; None while it has no process, when the
/// namespace is gone, or when its processes share their cgroup with others.
pub fn container_cgroup(netns: &str, cgroup2: &Path) -> Option<PathBuf> {
    let inode = std::fs::metadata(netns).ok()?.ino();
    let candidates = pid_of_netns_path(netns)
        .into_iter()
        .chain(weir_host::process::pids_in_netns(inode))
        .filter(|pid| netns_of(*pid) == Some(inode));
    for pid in candidates {
        let Some(relative) = weir_host::process::cgroup_of(pid as u32) else { continue };
        if relative.as_os_str().is_empty() {
            // The hierarchy's root is every process's.
            continue;
        }
        let cgroup = cgroup2.join(relative);
        let Some(members) = procs(&cgroup) else { continue };
        if !members.is_empty() && members.iter().all(|p| netns_of(*p) == Some(inode)) {
            return Some(cgroup);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_netns_paths_name_their_pid() {
        assert_eq!(pid_of_netns_path("/proc/4242/ns/net"), Some(4242));
        assert_eq!(pid_of_netns_path("/run/netns/cni-1234"), None);
        assert_eq!(pid_of_netns_path("/proc/self/ns/net"), None);
    }

    #[test]
    fn pauses_grow_to_two_seconds_and_the_search_ends_within_a_minute_of_tries() {
        let first: Vec<u128> = pauses().take(8).map(|d| d.as_millis()).collect();
        assert_eq!(first, [20, 40, 80, 160, 320, 640, 1280, 2000]);
        let mut total = Duration::ZERO;
        let tries = pauses().take_while(|d| {
            total += *d;
            total < LEARN_FOR
        });
        assert!(tries.count() < 40, "a container that never starts costs few scans");
    }

    #[test]
    fn a_namespace_that_is_gone_has_no_cgroup() {
        assert_eq!(container_cgroup("/nonexistent/netns", Path::new("/sys/fs/cgroup")), None);
    }
}
