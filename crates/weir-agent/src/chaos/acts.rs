//! What experiments do outside the kernel's maps: killing pods' processes,
//! and finding the cgroups whose connect() calls a socket fault judges.

use std::net::IpAddr;

use crate::pods::PodRecord;

/// Kills every process of `pods` (their cgroup subtrees): SIGTERM, then
/// SIGKILL after `grace` from a thread of its own (at once when zero).
/// Returns the processes signalled.
pub(super) fn kill_pods(pods: &[PodRecord], grace: std::time::Duration) -> u64 {
    let mut signalled = 0;
    for pod in pods {
        let cgroup = weir_host::Cgroup::new(&pod.cgroup);
        if !cgroup.exists() {
            continue;
        }
        let pids = cgroup.pids_recursive();
        signalled += pids.len() as u64;
        let kill = move || {
            if let Err(e) = cgroup.kill_all(std::time::Duration::from_secs(5)) {
                tracing::warn!(error = %e, "pod-kill");
            }
        };
        if grace.is_zero() {
            kill();
        } else {
            pids.iter().for_each(|pid| weir_host::process::kill(*pid, libc::SIGTERM));
            std::thread::spawn(move || {
                std::thread::sleep(grace);
                kill();
            });
        }
    }
    signalled
}

/// The (cgroup id, destination) of each connect() fault: each selected pod
/// with a cgroup on this machine, to its pairs' destinations. (A pod's
/// calls are judged only by its own node's hooks, so an entry for another
/// node's pod never matches there.)
pub(super) fn connect_keys(selected: &[PodRecord], pairs: &[(IpAddr, IpAddr)]) -> Vec<(u64, IpAddr)> {
    use std::os::unix::fs::MetadataExt;
    let mut keys = Vec::new();
    for pod in selected {
        let Ok(meta) = std::fs::metadata(&pod.cgroup) else { continue };
        let addrs: Vec<IpAddr> = std::iter::once(IpAddr::V4(pod.ip)).chain(pod.ipv6.map(IpAddr::V6)).collect();
        for (_, dst) in pairs.iter().filter(|(src, _)| addrs.contains(src)) {
            keys.push((meta.ino(), *dst));
        }
    }
    keys
}
