//! The process cache: every live process this node's agent has seen, with
//! its exec id and parent, so each event can carry its ancestry.
//!
//! Exec ids are `NODE:KTIME:PID` (the kernel's monotonic time of the exec,
//! or of the start for processes found in /proc), unique on a node for its
//! uptime and stable for the process's life. Exited processes stay a while
//! so late events about them still resolve. Memory is bounded: past
//! `capacity` the oldest exited entry goes first, then the least recently
//! used; such evictions are counted.

use std::collections::{HashMap, VecDeque};

/// What the kernel said of a process's program and working directory
/// beyond their paths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgramMarks {
    /// Run from no file of any mount (memfd): the binary is the memfd's name.
    pub fileless: bool,
    /// The program's file had been deleted.
    pub binary_deleted: bool,
    /// The working directory had been deleted.
    pub cwd_deleted: bool,
    /// A dynamic loader run directly: the binary is the program it loaded.
    pub loader: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessInfo {
    pub exec_id: String,
    pub parent_exec_id: Option<String>,
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub binary: String,
    pub args: Vec<String>,
    pub args_truncated: bool,
    pub cwd: String,
    /// Monotonic ns of the exec (or start).
    pub start_ktime: u64,
    pub cgroup_id: u64,
    /// Seen in /proc at start rather than exec'd under the agent's eyes.
    pub from_procfs: bool,
    pub exited: bool,
    pub marks: ProgramMarks,
}

#[derive(Debug)]
struct Entry {
    info: ProcessInfo,
    last_used: u64,
}

#[derive(Debug)]
pub struct ProcessCache {
    node: String,
    capacity: usize,
    keep_exited: usize,
    by_pid: HashMap<u32, Entry>,
    exited: VecDeque<(u32, String)>,
    tick: u64,
    evictions: u64,
}

/// How far ancestry is followed.
pub const MAX_ANCESTORS: usize = 16;

impl ProcessCache {
    pub fn new(node: &str, capacity: usize) -> Self {
        Self {
            node: node.to_string(),
            capacity: capacity.max(2),
            keep_exited: (capacity / 8).max(1),
            by_pid: HashMap::new(),
            exited: VecDeque::new(),
            tick: 0,
            evictions: 0,
        }
    }

    pub fn exec_id(&self, ktime: u64, pid: u32) -> String {
        format!("{}:{ktime}:{pid}", self.node)
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }

    /// Entries dropped because the cache was full.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    pub fn get(&self, pid: u32) -> Option<&ProcessInfo> {
        self.by_pid.get(&pid).map(|e| &e.info)
    }

    fn parent_exec_id(&self, ppid: u32) -> Option<String> {
        self.get(ppid).map(|p| p.exec_id.clone())
    }

    fn insert(&mut self, info: ProcessInfo) -> ProcessInfo {
        self.tick += 1;
        if !self.by_pid.contains_key(&info.pid) && self.by_pid.len() >= self.capacity {
            self.evict_one();
        }
        self.by_pid.insert(info.pid, Entry { info: info.clone(), last_used: self.tick });
        info
    }

    fn evict_one(&mut self) {
        while let Some((pid, exec_id)) = self.exited.pop_front() {
            if self.by_pid.get(&pid).is_some_and(|e| e.info.exec_id == exec_id) {
                self.by_pid.remove(&pid);
                self.evictions += 1;
                return;
            }
        }
        if let Some(pid) = self.by_pid.iter().min_by_key(|(_, e)| e.last_used).map(|(pid, _)| *pid) {
            self.by_pid.remove(&pid);
            self.evictions += 1;
        }
    }

    /// A process found in /proc at start.
    pub fn seed(&mut self, mut info: ProcessInfo) {
        info.exec_id = self.exec_id(info.start_ktime, info.pid);
        info.from_procfs = true;
        self.insert(info);
    }

    /// Links parents of seeded processes once all are in.
    pub fn link_seeded(&mut self) {
        let links: Vec<(u32, Option<String>)> =
            self.by_pid.values().map(|e| (e.info.pid, self.parent_exec_id(e.info.ppid))).collect();
        for (pid, parent) in links {
            if let Some(e) = self.by_pid.get_mut(&pid) {
                e.info.parent_exec_id = parent;
            }
        }
    }

    /// A new program in `info.pid`; the exec id is made here.
    pub fn on_exec(&mut self, mut info: ProcessInfo) -> ProcessInfo {
        info.exec_id = self.exec_id(info.start_ktime, info.pid);
        info.parent_exec_id = self.parent_exec_id(info.ppid);
        self.insert(info)
    }

    /// A new process running its parent's program until it execs.
    #[allow(clippy::too_many_arguments, reason = "the fields of a fork event")]
    pub fn on_fork(&mut self, pid: u32, ppid: u32, uid: u32, gid: u32, ktime: u64, cgroup_id: u64) -> ProcessInfo {
        let parent = self.get(ppid).cloned();
        let info = ProcessInfo {
            exec_id: self.exec_id(ktime, pid),
            parent_exec_id: parent.as_ref().map(|p| p.exec_id.clone()),
            pid,
            ppid,
            uid,
            gid,
            binary: parent.as_ref().map(|p| p.binary.clone()).unwrap_or_default(),
            args: parent.as_ref().map(|p| p.args.clone()).unwrap_or_default(),
            args_truncated: parent.as_ref().is_some_and(|p| p.args_truncated),
            cwd: parent.as_ref().map(|p| p.cwd.clone()).unwrap_or_default(),
            start_ktime: ktime,
            cgroup_id,
            from_procfs: false,
            exited: false,
            marks: parent.as_ref().map(|p| p.marks).unwrap_or_default(),
        };
        self.insert(info)
    }

    /// The process as it was; it stays resolvable for a while.
    pub fn on_exit(&mut self, pid: u32) -> Option<ProcessInfo> {
        let entry = self.by_pid.get_mut(&pid)?;
        entry.info.exited = true;
        let info = entry.info.clone();
        self.exited.push_back((pid, info.exec_id.clone()));
        while self.exited.len() > self.keep_exited {
            if let Some((old, exec_id)) = self.exited.pop_front() {
                if self.by_pid.get(&old).is_some_and(|e| e.info.exec_id == exec_id) {
                    self.by_pid.remove(&old);
                }
            }
        }
        Some(info)
    }

    /// Parent first, up to [`MAX_ANCESTORS`]; stops where the chain is unknown.
    pub fn ancestors(&self, pid: u32) -> Vec<&ProcessInfo> {
        let mut out: Vec<&ProcessInfo> = Vec::new();
        let mut current = self.get(pid);
        while let Some(process) = current {
            if out.len() >= MAX_ANCESTORS || process.ppid == 0 || process.ppid == process.pid {
                break;
            }
            let Some(parent) = self.get(process.ppid) else { break };
            if out.iter().any(|p| p.pid == parent.pid) {
                break;
            }
            out.push(parent);
            current = Some(parent);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(pid: u32, ppid: u32, binary: &str, ktime: u64) -> ProcessInfo {
        ProcessInfo {
            exec_id: String::new(),
            parent_exec_id: None,
            pid,
            ppid,
            uid: 0,
            gid: 0,
            binary: binary.into(),
            args: vec![binary.into()],
            args_truncated: false,
            cwd: "/".into(),
            start_ktime: ktime,
            cgroup_id: 7,
            from_procfs: false,
            exited: false,
            marks: ProgramMarks::default(),
        }
    }

    #[test]
    fn ancestry_follows_forks_and_execs() {
        let mut cache = ProcessCache::new("n1", 100);
        cache.seed(exec(1, 0, "/sbin/init", 5));
        cache.seed(exec(10, 1, "/usr/bin/bash", 6));
        cache.link_seeded();
        let child = cache.on_fork(11, 10, 0, 0, 100, 7);
        assert_eq!(child.binary, "/usr/bin/bash");
        assert_eq!(child.parent_exec_id.as_deref(), Some("n1:6:10"));
        let sleep = cache.on_exec(exec(11, 10, "/usr/bin/sleep", 120));
        assert_eq!(sleep.exec_id, "n1:120:11");
        let chain: Vec<&str> = cache.ancestors(11).iter().map(|p| p.binary.as_str()).collect();
        assert_eq!(chain, ["/usr/bin/bash", "/sbin/init"]);
        let gone = cache.on_exit(11).expect("known");
        assert!(gone.exited);
        assert!(cache.get(11).is_some(), "exited processes stay resolvable for a while");
    }

    #[test]
    fn memory_is_bounded_and_evictions_counted() {
        let mut cache = ProcessCache::new("n", 10);
        for pid in 1..=10 {
            cache.on_exec(exec(pid, 0, "/bin/x", u64::from(pid)));
        }
        cache.on_exit(3);
        cache.on_exec(exec(11, 0, "/bin/y", 11));
        assert_eq!(cache.len(), 10);
        assert!(cache.get(3).is_none(), "the exited process goes first");
        cache.on_exec(exec(12, 0, "/bin/z", 12));
        assert!(cache.get(1).is_none(), "then the least recently used");
        assert_eq!(cache.evictions(), 2);
        for pid in 13..1000 {
            cache.on_exec(exec(pid, 0, "/bin/x", u64::from(pid)));
            cache.on_exit(pid);
        }
        assert!(cache.len() <= 10);
    }
}
