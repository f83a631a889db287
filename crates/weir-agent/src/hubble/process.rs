//! The process behind a flow's end: a pid the datapath read off the local
//! pod's socket (bpf/lib/sock_owner.h), named as `weir events` names it
//! (runtime security's process cache, so flows and runtime events join on
//! the exec id) or, with runtime security off or a process it has not
//! seen, from /proc (no exec id then). Names are kept briefly per pid, so a
//! burst of flows from one process reads /proc once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use weir_proto::flow::WeirProcess;

use crate::runtime::ProcessLookup;

/// How long a pid's name is trusted before it is read again (a pid can be
/// reused, or exec another program).
const FRESH_FOR: Duration = Duration::from_secs(2);
/// At most this many pids are remembered (then the table starts afresh).
const REMEMBERED_MAX: usize = 4096;

#[derive(Debug, Default)]
pub struct ProcessNames {
    runtime: OnceLock<ProcessLookup>,
    recent: Mutex<HashMap<u32, (Arc<WeirProcess>, Instant)>>,
    /// The pids seen at each end of recent connections: the datapath looks
    /// up only the judged pod's socket, and only for a connection's first
    /// packets, so its other events (the other pod's end on this node,
    /// replies, L7 messages) take the pids from here.
    connections: Mutex<HashMap<Connection, [u32; 2]>>,
}

/// A connection as its first packet went: source, destination, protocol.
type Connection = (std::net::IpAddr, u16, std::net::IpAddr, u16, u8);

/// At most this many connections' pids are remembered (then afresh).
const CONNECTIONS_MAX: usize = 16384;

impl ProcessNames {
    /// From now on, names come from runtime security's cache first.
    pub fn use_runtime(&self, lookup: ProcessLookup) {
        let _ = self.runtime.set(lookup);
    }

    /// The process `pid` (0: none), or None when it is gone unnamed.
    pub fn name(&self, pid: u32) -> Option<Arc<WeirProcess>> {
        if pid == 0 {
            return None;
        }
        let now = Instant::now();
        if let Some((named, at)) = self.recent.lock().ok()?.get(&pid) {
            if now.duration_since(*at) < FRESH_FOR {
                return Some(named.clone());
            }
        }
        let named = Arc::new(self.read(pid)?);
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() >= REMEMBERED_MAX {
                recent.clear();
            }
            recent.insert(pid, (named.clone(), now));
        }
        Some(named)
    }

    /// The pids of `event`'s source and destination: its own, else those
    /// seen on earlier events of its connection (either way round).
    pub fn pids(&self, event: &weir_bpf::policy::FlowEvent) -> [u32; 2] {
        let (mut src, mut dst) = (event.src_pid, event.dst_pid);
        let Ok(mut connections) = self.connections.lock() else { return [src, dst] };
        let forward = (event.src, event.sport, event.dst, event.dport, event.protocol);
        let reverse = (event.dst, event.dport, event.src, event.sport, event.protocol);
        let (key, [known_src, known_dst]) = match (connections.get(&forward), connections.get(&reverse)) {
            (Some(known), _) => (forward, *known),
            (None, Some(&[s, d])) => (reverse, [d, s]),
            (None, None) => (forward, [0, 0]),
        };
        src = if src == 0 { known_src } else { src };
        dst = if dst == 0 { known_dst } else { dst };
        if (src, dst) != (known_src, known_dst) {
            if connections.len() >= CONNECTIONS_MAX {
                connections.clear();
            }
            let stored = if key == forward { [src, dst] } else { [dst, src] };
            connections.insert(key, stored);
        }
        [src, dst]
    }

    fn read(&self, pid: u32) -> Option<WeirProcess> {
        // An exited process keeps its name: a short-lived client's flow is
        // often read after it is gone.
        if let Some(p) = self.runtime.get().and_then(|r| r.get(pid)) {
            return Some(WeirProcess { pid, binary: p.binary, exec_id: p.exec_id, uid: p.uid, ..Default::default() });
        }
        from_procfs(pid)
    }
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
            l7: None,
        }
    }

    #[test]
    fn a_connections_events_share_the_pids_either_end_was_seen_with() {
        let names = ProcessNames::default();
        let (web, api) = ([10, 0, 0, 1], [10, 0, 1, 2]);
        // The client's egress, then the server's ingress on the same node.
        assert_eq!(names.pids(&event(web, 40000, api, 80, [11, 0])), [11, 0]);
        assert_eq!(names.pids(&event(web, 40000, api, 80, [0, 22])), [11, 22]);
        // A reply and an L7 response name both, the other way round.
        assert_eq!(names.pids(&event(api, 80, web, 40000, [0, 0])), [22, 11]);
        // Another connection knows nothing of them.
        assert_eq!(names.pids(&event(web, 40001, api, 80, [0, 0])), [0, 0]);
    }

    #[test]
    fn a_live_process_is_named_by_its_program_and_pid_zero_is_no_process() {
        let names = ProcessNames::default();
        let me = names.name(std::process::id()).expect("this test's own process");
        assert_eq!(me.pid, std::process::id());
        assert_eq!(me.binary, std::env::current_exe().expect("own executable").to_string_lossy());
        assert!(names.name(0).is_none());
    }
}
