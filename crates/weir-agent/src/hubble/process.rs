//! A process as a flow names it (Hubble's `flow.weir` `WeirProcess`), named
//! as `weir events` names it (the runtime's process cache, so a flow joins
//! runtime events on exec_id) or from /proc while the process lives. Two
//! sources of pids: TLS probes report what the kernel saw of the caller
//! ([`Processes`], checked against the process's start), and the pod path
//! reports the pid that made a local pod's socket (bpf/lib/sock_owner.h;
//! [`ProcessNames`], which also shares a connection's pids among its
//! events). The pod is the caller's to fill (by the socket's address).
//!
//! A pid is recycled once its process is gone. A TLS sighting carries its
//! process's start time, checked against /proc's. A pod-path tag carries
//! only the pid and the command name of the thread that made the socket
//! (a start time would grow the pod path's flow event): a live pid none of
//! whose threads has that command name is another process now, and the
//! flow is named by the command alone. A recycled pid running a command
//! of the same name is not told apart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

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
                let (found, from_runtime) = self.resolve(seen);
                // Only runtime security's names are kept: one made up from
                // /proc (the runtime not having seen the exec yet) is asked
                // again next time, so the exec id becomes `weir events`' one.
                if from_runtime {
                    if self.known.len() >= REMEMBERED {
                        self.known.clear();
                    }
                    self.known.insert(key, found.clone());
                }
                found
            }
        };
        WeirProcess { pid: seen.pid, binary, exec_id, uid: seen.uid, namespace: String::new(), pod_name: String::new() }
    }

    /// (exec id, binary), and whether runtime security named them.
    fn resolve(&self, seen: &Seen) -> ((String, String), bool) {
        // The runtime's entry for this pid is this process if its exec (or
        // start, for one read from /proc) is not before this one's start.
        let cached = self.runtime.as_ref().and_then(|lookup| lookup(seen.pid));
        if let Some((exec_id, binary, _)) = cached.filter(|(_, _, since)| since + START_SLACK_NS >= seen.start_ns) {
            return ((exec_id, binary), true);
        }
        let exec_id = format!("{}:{}:{}", self.node, seen.start_ns, seen.pid);
        let binary = proc_binary(seen).unwrap_or_else(|| seen.exe.clone());
        ((exec_id, binary), false)
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

/// How long a pid's name is trusted before it is read again (a pid can be
/// reused, or exec another program).
const FRESH_FOR: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct ProcessNames {
    runtime: OnceLock<ProcessLookup>,
    recent: Mutex<HashMap<Owner, (Arc<WeirProcess>, Instant)>>,
    /// The pids seen at each end of recent connections: the datapath looks
    /// up only the judged pod's socket, and only for a connection's first
    /// packets, so its other events (the other pod's end on this node,
    /// replies, L7 messages) take the pids from here.
    connections: Mutex<HashMap<Connection, [End; 2]>>,
    /// Whether `connections` holds any.
    remembering: std::sync::atomic::AtomicBool,
}

/// A socket's creator as its tag names it: pid and command name.
type Owner = (u32, [u8; 16]);

/// A connection as its first packet went: source, destination, protocol.
type Connection = (std::net::IpAddr, u16, std::net::IpAddr, u16, u8);

/// One end's process: its pid (0: none) and the command name the kernel
/// kept with its socket (all zero: none).
pub type End = (u32, [u8; 16]);

/// At most this many connections' pids are remembered (then afresh).
const CONNECTIONS_MAX: usize = 16384;

impl std::fmt::Debug for ProcessNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessNames").field("runtime", &self.runtime.get().is_some()).finish_non_exhaustive()
    }
}

impl ProcessNames {
    /// From now on, names come from runtime security's cache first.
    pub fn use_runtime(&self, lookup: ProcessLookup) {
        let _ = self.runtime.set(lookup);
    }

    /// The process `pid` (0: none), or None when it is gone unnamed.
    /// `comm` is the command name the kernel saw make its socket (NUL-
    /// padded; all zero: none): the name of last resort, for a process
    /// gone before runtime security or /proc could name it, or for a pid
    /// that is another process's now (no thread of it runs that command). A
    /// name of last resort is not remembered, so the next event asks again.
    pub fn name(&self, pid: u32, comm: &[u8; 16]) -> Option<Arc<WeirProcess>> {
        if pid == 0 {
            return None;
        }
        let now = Instant::now();
        if let Some((named, at)) = self.recent.lock().ok()?.get(&(pid, *comm)) {
            if now.duration_since(*at) < FRESH_FOR {
                return Some(named.clone());
            }
        }
        let read = if runs_command(pid, comm) { self.read(pid) } else { None };
        let Some(read) = read else {
            let comm = command_name(comm);
            return (!comm.is_empty()).then(|| Arc::new(WeirProcess { pid, binary: comm, ..Default::default() }));
        };
        let named = Arc::new(read);
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() >= REMEMBERED {
                recent.clear();
            }
            recent.insert((pid, *comm), (named.clone(), now));
        }
        Some(named)
    }

    /// The processes of `event`'s source and destination: its own (the
    /// one end the kernel looked up, with its command name), else those
    /// seen on earlier events of its connection (either way round).
    pub fn ends(&self, event: &weir_bpf::policy::FlowEvent) -> [End; 2] {
        // Only one end is ever looked up per event: the command name is its.
        let own = |pid: u32| -> End { (pid, if pid == 0 { [0; 16] } else { event.owner_comm }) };
        let (mut src, mut dst) = (own(event.src_pid), own(event.dst_pid));
        // Nothing to take or to give: no lock (the common case of a flood
        // of drops from and to no known socket).
        if src.0 == 0 && dst.0 == 0 && !self.remembering.load(std::sync::atomic::Ordering::Relaxed) {
            return [src, dst];
        }
        let Ok(mut connections) = self.connections.lock() else { return [src, dst] };
        let forward = (event.src, event.sport, event.dst, event.dport, event.protocol);
        let reverse = (event.dst, event.dport, event.src, event.sport, event.protocol);
        let none: End = (0, [0; 16]);
        let (key, [known_src, known_dst]) = match (connections.get(&forward), connections.get(&reverse)) {
            (Some(known), _) => (forward, *known),
            (None, Some(&[s, d])) => (reverse, [d, s]),
            (None, None) => (forward, [none, none]),
        };
        src = if src.0 == 0 { known_src } else { src };
        dst = if dst.0 == 0 { known_dst } else { dst };
        if (src.0, dst.0) != (known_src.0, known_dst.0) {
            if connections.len() >= CONNECTIONS_MAX {
                connections.clear();
            }
            let stored = if key == forward { [src, dst] } else { [dst, src] };
            connections.insert(key, stored);
            self.remembering.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        [src, dst]
    }

    fn read(&self, pid: u32) -> Option<WeirProcess> {
        // An exited process keeps its name: a short-lived client's flow is
        // often read after it is gone.
        if let Some((exec_id, binary, _)) = self.runtime.get().and_then(|lookup| lookup(pid)) {
            let uid = from_procfs(pid).map_or(0, |p| p.uid);
            return Some(WeirProcess { pid, binary, exec_id, uid, ..Default::default() });
        }
        from_procfs(pid)
    }
}

/// A NUL-padded command name as text.
fn command_name(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|c| *c == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// Whether `pid` may still be the process whose thread made a socket under
/// command name `comm`: yes when the name is unknown or the pid is gone
/// from /proc (runtime security's cache may know it), else when one of its
/// threads runs that command now (a worker thread may bear a name of its
/// own, so the leader's alone would not do).
fn runs_command(pid: u32, comm: &[u8; 16]) -> bool {
    let wanted = command_name(comm);
    if wanted.is_empty() {
        return true;
    }
    let same =
        |path: std::path::PathBuf| std::fs::read_to_string(path).is_ok_and(|c| c.trim_end_matches('\n') == wanted);
    let dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    if same(dir.join("comm")) {
        return true;
    }
    let Ok(threads) = std::fs::read_dir(dir.join("task")) else { return true };
    threads.flatten().any(|thread| same(thread.path().join("comm")))
}

/// A process as /proc shows it: its program and real uid.
fn from_procfs(pid: u32) -> Option<WeirProcess> {
    let dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    let binary = std::fs::read_link(dir.join("exe")).ok()?.to_string_lossy().into_owned();
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap_or(0);
    Some(WeirProcess { pid, binary, uid, ..Default::default() })
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

    fn event(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, pids: [u32; 2]) -> weir_bpf::policy::FlowEvent {
        weir_bpf::policy::FlowEvent {
            time_ns: 0,
            src: src.into(),
            dst: dst.into(),
            sport,
            dport,
            protocol: 6,
            direction: weir_policy::Direction::Egress,
            verdict: 0,
            policy_match: 0,
            drop_reason: 0,
            src_identity: 0,
            dst_identity: 0,
            rule: 0,
            ifindex: 0,
            tcp_flags: 0,
            icmp_type: 0,
            src_pid: pids[0],
            dst_pid: pids[1],
            owner_comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            l7: None,
        }
    }

    #[test]
    fn a_connections_events_share_the_pids_either_end_was_seen_with() {
        let names = ProcessNames::default();
        let (web, api) = ([10, 0, 0, 1], [10, 0, 1, 2]);
        let pids = |ends: [End; 2]| [ends[0].0, ends[1].0];
        // The client's egress, then the server's ingress on the same node.
        assert_eq!(pids(names.ends(&event(web, 40000, api, 80, [11, 0]))), [11, 0]);
        assert_eq!(pids(names.ends(&event(web, 40000, api, 80, [0, 22]))), [11, 22]);
        // A reply and an L7 response name both, the other way round, each
        // with the command name its socket's event had.
        let reply = names.ends(&event(api, 80, web, 40000, [0, 0]));
        assert_eq!(pids(reply), [22, 11]);
        assert_eq!(&reply[1].1[..4], b"curl", "the client's command name, kept with its pid");
        // Another connection knows nothing of them.
        assert_eq!(pids(names.ends(&event(web, 40001, api, 80, [0, 0]))), [0, 0]);
    }

    #[test]
    fn a_live_process_is_named_by_its_program_and_pid_zero_is_no_process() {
        let names = ProcessNames::default();
        let me = names.name(std::process::id(), &[0; 16]).expect("this test's own process");
        assert_eq!(me.pid, std::process::id());
        assert_eq!(me.binary, std::env::current_exe().expect("own executable").to_string_lossy());
        assert!(names.name(0, b"curl\0\0\0\0\0\0\0\0\0\0\0\0").is_none());
        // A process gone unnamed is named by the kernel's command name.
        let gone = names.name(u32::MAX - 1, b"wget\0\0\0\0\0\0\0\0\0\0\0\0").expect("named by its command");
        assert_eq!((gone.binary.as_str(), gone.exec_id.as_str()), ("wget", ""));
        assert!(names.name(u32::MAX - 1, &[0; 16]).is_none(), "not remembered");
    }

    fn comm_of(name: &str) -> [u8; 16] {
        let mut comm = [0u8; 16];
        comm[..name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
        comm
    }

    /// A live pid whose threads run another command than the one its
    /// socket was made under is a recycled pid: named by that command
    /// alone, not by /proc. A worker thread's own name still names it.
    #[test]
    fn a_pid_running_another_command_is_not_named_from_proc() {
        let names = ProcessNames::default();
        let pid = std::process::id();
        let binary = std::env::current_exe().expect("own executable").to_string_lossy().into_owned();
        let leader = std::fs::read_to_string("/proc/self/comm").expect("own comm");
        let me = names.name(pid, &comm_of(leader.trim_end())).expect("this test's own process");
        assert_eq!(me.binary, binary, "the leader's command: this process");

        let recycled = names.name(pid, &comm_of("nginx")).expect("named by its command");
        assert_eq!((recycled.binary.as_str(), recycled.exec_id.as_str()), ("nginx", ""), "not this process");

        let (named_tx, named_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::Builder::new()
            .name("weir-worker-7".into())
            .spawn(move || {
                named_tx.send(()).expect("named");
                let _ = done_rx.recv();
            })
            .expect("a named thread");
        named_rx.recv().expect("the worker runs");
        let by_worker = names.name(pid, &comm_of("weir-worker-7")).expect("a worker thread's socket");
        drop(done_tx);
        worker.join().expect("the worker ends");
        assert_eq!(by_worker.binary, binary, "a thread of this process runs that command");
    }
}
