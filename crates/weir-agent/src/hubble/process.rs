//! A process as a flow names it (Hubble's `flow.weir` `WeirProcess`): from
//! what the kernel said of it (pid, start, uid, program file name), the
//! runtime's process cache where runtime security runs (its exec id and
//! binary, so a flow joins `weir events` on exec_id), else /proc while the
//! process lives. The pod is the caller's to fill (by the socket's address).

use std::collections::HashMap;
use std::sync::Arc;

use weir_proto::flow::WeirProcess;

/// What the runtime's process cache knows of a pid: (exec id, binary, the
/// exec's CLOCK_MONOTONIC time).
pub type ProcessLookup = Arc<dyn Fn(u32) -> Option<(String, String, u64)> + Send + Sync>;

/// How far a start time read from /proc (clock ticks) may be from the
/// kernel's (ns) and still be the same process.
const START_SLACK_NS: u64 = 20_000_000;
/// Processes remembered; past it the memory starts afresh.
const REMEMBERED: usize = 4096;

/// What the kernel reported of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub pid: u32,
    /// CLOCK_MONOTONIC ns of its start (fork).
    pub start_ns: u64,
    pub uid: u32,
    /// Its program file's name (the last component), or its command.
    pub exe: String,
}

/// Turns what the kernel saw into WeirProcess, remembering each process.
pub struct Processes {
    node: String,
    runtime: Option<ProcessLookup>,
    known: HashMap<(u32, u64), (String, String)>,
}

impl std::fmt::Debug for Processes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processes").field("node", &self.node).field("known", &self.known.len()).finish()
    }
}

impl Processes {
    pub fn new(node: &str, runtime: Option<ProcessLookup>) -> Self {
        Self { node: node.to_string(), runtime, known: HashMap::new() }
    }

    pub fn process(&mut self, seen: &Seen) -> WeirProcess {
        let key = (seen.pid, seen.start_ns);
        let (exec_id, binary) = match self.known.get(&key) {
            Some(known) => known.clone(),
            None => {
                let found = self.resolve(seen);
                if self.known.len() >= REMEMBERED {
                    self.known.clear();
                }
                self.known.insert(key, found.clone());
                found
            }
        };
        WeirProcess { pid: seen.pid, binary, exec_id, uid: seen.uid, namespace: String::new(), pod_name: String::new() }
    }

    fn resolve(&self, seen: &Seen) -> (String, String) {
        // The runtime's entry for this pid is this process if its exec (or
        // start, for one read from /proc) is not before this one's start.
        let cached = self.runtime.as_ref().and_then(|lookup| lookup(seen.pid));
        if let Some((exec_id, binary, _)) = cached.filter(|(_, _, since)| since + START_SLACK_NS >= seen.start_ns) {
            return (exec_id, binary);
        }
        let exec_id = format!("{}:{}:{}", self.node, seen.start_ns, seen.pid);
        let binary = proc_binary(seen).unwrap_or_else(|| seen.exe.clone());
        (exec_id, binary)
    }
}

/// /proc/PID/exe, when PID is still the process the kernel saw.
fn proc_binary(seen: &Seen) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", seen.pid)).ok()?;
    let start_ticks: u64 = start_ticks(&stat)?;
    // SAFETY: sysconf has no preconditions.
    let ticks = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100).max(1);
    let start_ns = start_ticks.saturating_mul(1_000_000_000 / ticks);
    if start_ns.abs_diff(seen.start_ns) > START_SLACK_NS {
        return None;
    }
    let exe = std::fs::read_link(format!("/proc/{}/exe", seen.pid)).ok()?;
    Some(exe.display().to_string())
}

/// The start time field of /proc/PID/stat (clock ticks since boot).
fn start_ticks(stat: &str) -> Option<u64> {
    // Fields after the command name, which may hold spaces and parentheses.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_names_a_process_it_saw_exec_after_its_start() {
        let lookup: ProcessLookup = Arc::new(|pid| match pid {
            7 => Some(("n1:500:7".to_string(), "/usr/bin/curl".to_string(), 500)),
            _ => None,
        });
        let mut processes = Processes::new("n1", Some(lookup));
        let seen = Seen { pid: 7, start_ns: 400, uid: 0, exe: "curl".into() };
        let p = processes.process(&seen);
        assert_eq!((p.exec_id.as_str(), p.binary.as_str(), p.pid), ("n1:500:7", "/usr/bin/curl", 7));
        // An older process with the same pid is not this one: its own id.
        let later = Seen { pid: 7, start_ns: 10_000_000_000, uid: 0, exe: "curl".into() };
        assert_eq!(processes.process(&later).exec_id, "n1:10000000000:7");
    }

    #[test]
    fn stat_start_time_survives_odd_command_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 12345 1000 10";
        assert_eq!(start_ticks(stat), Some(12345));
        assert_eq!(start_ticks("garbage"), None);
    }
}
