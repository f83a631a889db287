//! Processes that were running before the sensors came up, read from /proc.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use weir_bpf::runtime;
use weir_runtime::{ProcessInfo, ProgramMarks};

/// Processes already running below `scope`, from /proc.
pub(super) fn procfs_processes(scope: &Path, cgroup2: &Path) -> Vec<ProcessInfo> {
    // SAFETY: sysconf has no preconditions.
    let ticks = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100).max(1);
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let dir = entry.path();
        let Some(cgroup) = std::fs::read_to_string(dir.join("cgroup")).ok().and_then(|t| {
            t.lines().find_map(|l| l.strip_prefix("0::").map(|p| cgroup2.join(p.trim_start_matches('/'))))
        }) else {
            continue;
        };
        if !cgroup.starts_with(scope) {
            continue;
        }
        let Ok(binary) = std::fs::read_link(dir.join("exe")) else { continue };
        // The kernel's own marks: "/memfd:NAME (deleted)", "PATH (deleted)".
        let binary = binary.display().to_string();
        let (binary, binary_deleted) =
            binary.strip_suffix(" (deleted)").map_or((binary.clone(), false), |b| (b.to_string(), true));
        let fileless = binary.starts_with("/memfd:");
        let binary = if fileless { binary.trim_start_matches('/').to_string() } else { binary };
        let cwd = std::fs::read_link(dir.join("cwd")).map(|p| p.display().to_string()).unwrap_or_default();
        let (cwd, cwd_deleted) = cwd.strip_suffix(" (deleted)").map_or((cwd.clone(), false), |c| (c.to_string(), true));
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else { continue };
        // Fields after the command name, which may hold spaces and parentheses.
        let fields: Vec<&str> =
            stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
        let ppid = fields.get(1).and_then(|f| f.parse().ok()).unwrap_or(0);
        let start_ticks: u64 = fields.get(19).and_then(|f| f.parse().ok()).unwrap_or(0);
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let id_of = |key: &str| -> u32 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let args = runtime::split_args(&std::fs::read(dir.join("cmdline")).unwrap_or_default());
        out.push(ProcessInfo {
            exec_id: String::new(),
            parent_exec_id: None,
            pid,
            ppid,
            uid: id_of("Uid:"),
            gid: id_of("Gid:"),
            binary,
            args,
            args_truncated: false,
            cwd,
            start_ktime: start_ticks * (1_000_000_000 / ticks),
            cgroup_id: std::fs::metadata(&cgroup).map(|m| m.ino()).unwrap_or(0),
            from_procfs: true,
            exited: false,
            marks: ProgramMarks { fileless, binary_deleted: binary_deleted && !fileless, cwd_deleted, loader: false },
        });
    }
    out
}
