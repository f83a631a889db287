//! Finding and signalling processes.

use std::time::{Duration, Instant};

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub fn kill(pid: i32, signal: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// The kernel's task flag of a process in exit(2) (PF_EXITING).
const PF_EXITING: u64 = 0x4;

/// Whether `pid` names a live process: zombies, and processes already in
/// exit(2) (a killed agent can take seconds there, releasing its BPF
/// objects), count as gone.
pub fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state field, then ppid, pgrp, session, tty_nr, tpgid and flags,
    // follow the parenthesised command name.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let state_alive = fields.first().is_some_and(|state| *state != "Z" && *state != "X");
    let exiting = fields.get(6).and_then(|f| f.parse::<u64>().ok()).is_some_and(|flags| flags & PF_EXITING != 0);
    state_alive && !exiting
}

/// The cgroup v2 of `pid`, relative to the cgroup2 root; None when there is
/// no such process.
pub fn cgroup_of(pid: u32) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|line| line.strip_prefix("0::")).map(|path| path.trim_start_matches('/').into())
}

/// The parent of `pid`; None when there is no such process, or it has none
/// (pid 1, kthreadd).
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state, then the ppid, follow the parenthesised command name (which may hold ')').
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok().filter(|ppid| *ppid > 0)
}

/// The real and effective uid of `pid` (`Uid:` in its status).
pub fn uids_of(pid: i32) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(|id| id.parse().ok());
    Some((ids.next()??, ids.next()??))
}

/// The command name (`comm`) of `pid`.
pub fn comm_of(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|c| c.trim_end_matches('\n').to_string())
}

/// The arguments `pid` was started with (lossily UTF-8); None when there is
/// no such process or it has none (a kernel thread, a zombie).
pub fn cmdline_of(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let raw = raw.strip_suffix(&[0]).unwrap_or(&raw);
    if raw.is_empty() {
        return None;
    }
    Some(raw.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
}

/// Pids whose network namespace has inode `netns_inode`.
pub fn pids_in_netns(netns_inode: u64) -> Vec<i32> {
    let wanted = format!("net:[{netns_inode}]");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|l| l.as_os_str() == wanted.as_str()))
        .collect()
}

/// Waits until none of `pids` is alive; returns those still alive at the deadline.
pub fn wait_gone(pids: &[i32], deadline: Duration) -> Vec<i32> {
    let start = Instant::now();
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || start.elapsed() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_running_process_is_alive_and_no_process_is_not() {
        assert!(super::alive(std::process::id() as i32));
        assert!(!super::alive(i32::MAX));
    }

    #[test]
    fn a_process_names_its_parent_command_and_arguments() {
        let me = std::process::id() as i32;
        // SAFETY: getppid(2) has no preconditions.
        assert_eq!(super::parent_of(me), Some(unsafe { libc::getppid() }));
        assert_eq!(super::parent_of(1), None, "pid 1 has no parent");
        let argv0 = std::env::args().next().expect("argv[0]");
        assert_eq!(super::cmdline_of(me).and_then(|a| a.first().cloned()), Some(argv0.clone()));
        // SAFETY: getuid(2) and geteuid(2) have no preconditions.
        assert_eq!(super::uids_of(me), Some(unsafe { (libc::getuid(), libc::geteuid()) }));
        assert_eq!(super::uids_of(i32::MAX), None);
        let comm = super::comm_of(me).expect("comm");
        assert!(!comm.is_empty() && !comm.ends_with('\n'), "{comm:?}");
        assert_eq!(
            (super::parent_of(i32::MAX), super::comm_of(i32::MAX), super::cmdline_of(i32::MAX)),
            (None, None, None)
        );
    }
}
