//! PodChaos pod-failure: the selected pods of this node made unavailable by
//! freezing every process of each (cgroup v2's `cgroup.freeze`), thawed when
//! the experiment ends or is stopped.
//!
//! The end must come on time with no agent left: each experiment with an
//! end time gets a helper, this binary's hidden `weir chaos thaw-at`, in a
//! session of its own (not in the agent's process group, so a signal to
//! the agent's group spares it), which sleeps until the end and thaws the
//! pods. The agent thaws at once on stop, and when it finds the end passed
//! (a restarted agent too); it ends the helper then, so a stale helper
//! never thaws a later experiment's freeze. A thaw that happens twice is
//! harmless: thawing a thawed cgroup does nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weir_host::Cgroup;

use weir_chaos::Fault;

use super::{ChaosError, ChaosState, Running};

/// The hidden subcommand the helper runs (`weir chaos thaw-at`).
pub const THAW_COMMAND: [&str; 2] = ["chaos", "thaw-at"];

/// How long freezing may take before the experiment is refused.
const FREEZE_DEADLINE: Duration = Duration::from_secs(5);

fn now_unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Freezes each cgroup and waits until each is frozen; the processes
/// frozen. On a failure nothing stays frozen.
pub(super) fn freeze(cgroups: &[PathBuf]) -> Result<u64, ChaosError> {
    let mut processes = 0;
    for (index, path) in cgroups.iter().enumerate() {
        let cgroup = Cgroup::new(path);
        let frozen = cgroup.set_frozen(true).map_err(|e| e.to_string()).and_then(|()| {
            let start = std::time::Instant::now();
            while !cgroup.is_frozen() {
                if start.elapsed() > FREEZE_DEADLINE {
                    return Err(format!("{} did not freeze within {FREEZE_DEADLINE:?}", path.display()));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        });
        if let Err(e) = frozen {
            thaw(&cgroups[..=index]);
            return Err(ChaosError::Spec(format!("pod-failure: freezing the pod's processes: {e}")));
        }
        processes += cgroup.pids_recursive().len() as u64;
    }
    Ok(processes)
}

/// Thaws each cgroup that still exists (a failure is logged: there is no
/// one to tell).
pub(super) fn thaw(cgroups: &[PathBuf]) {
    for path in cgroups {
        let cgroup = Cgroup::new(path);
        if cgroup.exists() {
            if let Err(e) = cgroup.set_frozen(false) {
                tracing::warn!(error = %e, "pod-failure: thawing");
            }
        }
    }
}

/// Starts the helper that thaws `cgroups` at `end_unix_ns` for
/// `experiment`; its pid. The agent reaps it while it runs; an agent that
/// died leaves it to init.
pub(super) fn spawn_helper(experiment: &str, end_unix_ns: u64, cgroups: &[PathBuf]) -> Result<i32, ChaosError> {
    use std::os::unix::process::CommandExt;
    let failed = |e: std::io::Error| ChaosError::Spec(format!("pod-failure: starting its thaw helper: {e}"));
    let exe = std::env::current_exe().map_err(failed)?;
    let mut command = std::process::Command::new(exe);
    command
        .args(THAW_COMMAND)
        .args(["--experiment", experiment, "--end-unix-ns", &end_unix_ns.to_string()])
        .args(cgroups)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(failed)?;
    let pid = child.id() as i32;
    std::thread::spawn(move || child.wait());
    Ok(pid)
}

/// Whether `pid` is the thaw helper of `experiment` (not a process that
/// reused its pid).
pub(super) fn helper_alive(pid: i32, experiment: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2).any(|w| w == [THAW_COMMAND[0].as_bytes(), THAW_COMMAND[1].as_bytes()])
        && args.contains(&experiment.as_bytes())
}

/// Ends the helper of `experiment`, if it still runs.
pub(super) fn stop_helper(pid: Option<i32>, experiment: &str) {
    if let Some(pid) = pid.filter(|pid| helper_alive(*pid, experiment)) {
        weir_host::process::kill(pid, libc::SIGKILL);
    }
}

/// The helper's work: sleeps until `end_unix_ns` (wall clock, as the
/// experiment's end), then thaws `cgroups`. Returns early when none of them
/// exists any more (the pods are gone).
pub fn thaw_at(end_unix_ns: u64, cgroups: &[PathBuf]) {
    loop {
        let now = now_unix_ns();
        if now >= end_unix_ns {
            break;
        }
        if !cgroups.iter().any(|c| Cgroup::new(c).exists()) {
            return;
        }
        std::thread::sleep(Duration::from_nanos(end_unix_ns - now).min(Duration::from_millis(500)));
    }
    thaw(cgroups);
}

/// The pods of `frozen` whose cgroups are frozen now.
pub(super) fn frozen_now(frozen: &[(String, PathBuf)]) -> Vec<String> {
    frozen.iter().filter(|(_, path)| Cgroup::new(Path::new(path)).is_frozen()).map(|(pod, _)| pod.clone()).collect()
}

/// Freezes the pods of each planned pod-failure and starts its thaw
/// helper; on a failure, nothing of the batch stays frozen.
pub(super) fn freeze_planned(planned: &mut [(String, Running)]) -> Result<(), ChaosError> {
    for index in 0..planned.len() {
        let (key, run) = &mut planned[index];
        if !matches!(run.experiment.fault, Fault::PodFailure) {
            continue;
        }
        let cgroups: Vec<std::path::PathBuf> = run.frozen.iter().map(|(_, c)| c.clone()).collect();
        let started = freeze(&cgroups).and_then(|processes| {
            run.done = processes;
            match run.end_unix_ns {
                Some(end) if !cgroups.is_empty() => spawn_helper(key, end, &cgroups).map(Some),
                _ => Ok(None),
            }
        });
        match started {
            Ok(helper) => run.thaw_helper = helper,
            Err(e) => {
                thaw(&cgroups);
                planned[..index].iter().for_each(|(key, run)| release(key, run));
                return Err(e);
            }
        }
    }
    Ok(())
}

/// What a live pod-failure holds outside the kernel: its helper ended, its
/// pods thawed (once: when it ends or is stopped, as its pods may be
/// another experiment's afterwards). Nothing for other experiments.
pub(super) fn release(key: &str, run: &Running) {
    if run.frozen.is_empty() {
        return;
    }
    stop_helper(run.thaw_helper, key);
    let cgroups: Vec<std::path::PathBuf> = run.frozen.iter().map(|(_, c)| c.clone()).collect();
    thaw(&cgroups);
}

impl ChaosState {
    /// Live pod-failures with an end whose thaw helper is gone (it died
    /// with the agent, or the machine restarted) get a new one.
    pub(super) fn guard_thaws(&mut self) {
        for (key, run) in self.running.iter_mut().filter(|(_, r)| !r.ended && !r.frozen.is_empty()) {
            let (Some(end), false) = (run.end_unix_ns, run.thaw_helper.is_some_and(|pid| helper_alive(pid, key)))
            else {
                continue;
            };
            let cgroups: Vec<std::path::PathBuf> = run.frozen.iter().map(|(_, c)| c.clone()).collect();
            match spawn_helper(key, end, &cgroups) {
                Ok(pid) => run.thaw_helper = Some(pid),
                Err(e) => tracing::warn!(experiment = %key, error = %e, "pod-failure: no thaw helper"),
            }
        }
    }
}
