//! On-demand CPU profiles: sample, resolve, fold.
//!
//! Memory maps are snapshotted at every drain while processes live, so a
//! process that exits before the profile ends still resolves. Each stack is
//! rooted at the node, then the pod (from the cgroup path, `…/pods/NS.NAME`)
//! or "[no pod]", then the process, so profiles of several nodes merge into one
//! cluster flamegraph.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use weir_bpf::api::profile_loss;
use weir_bpf::profiler::{self, RawSample, SamplerConfig};
use weir_profile::procmaps::ProcessInfo;
use weir_profile::symbolize::{Symbolizer, NO_USER_STACK, UNWIND_STOPPED};
use weir_profile::Profile;

/// What to profile.
#[derive(Debug, Clone)]
pub struct ProfileSpec {
    pub duration: Duration,
    pub frequency_hz: u64,
    pub max_stacks: u32,
    pub cgroups: Vec<PathBuf>,
    pub pid: Option<u32>,
    pub binary: Option<String>,
    pub kernel: bool,
}

/// A finished profile.
#[derive(Debug, Clone, Default)]
pub struct ProfileResult {
    pub profile: Profile,
    pub samples: u64,
    /// (reason, count) for every non-zero loss.
    pub losses: Vec<(&'static str, u64)>,
    pub truncated_stacks: u64,
    pub processes: u32,
    pub processes_unresolved: u32,
    /// The perf event sampled, e.g. "cpu-clock (software)".
    pub event: &'static str,
}

/// The workload frame of processes outside any pod (the agent, host daemons).
pub const NO_POD: &str = "[no pod]";

/// How often the sampler's buffers are drained (and memory maps captured).
const DRAIN_INTERVAL: Duration = Duration::from_millis(250);

/// The samples drained so far, one entry per distinct stack (of one
/// process, cgroup and command) with its count: a long profile holds as many
/// entries as the node ran distinct stacks, not one per stack per drain.
#[derive(Debug, Default)]
struct Drained {
    /// Keyed by the sample with its count zeroed.
    counts: HashMap<RawSample, u64>,
}

impl Drained {
    fn add(&mut self, batch: Vec<RawSample>) {
        for mut sample in batch {
            let count = std::mem::take(&mut sample.count);
            *self.counts.entry(sample).or_default() += count;
        }
    }

    fn stacks(&self) -> impl Iterator<Item = &RawSample> {
        self.counts.keys()
    }

    fn into_samples(self) -> impl Iterator<Item = RawSample> {
        self.counts.into_iter().map(|(sample, count)| RawSample { count, ..sample })
    }
}

/// Every cgroup directory below `root` by inode (= cgroup id).
pub(crate) fn cgroup_paths(root: &Path) -> HashMap<u64, PathBuf> {
    let mut found = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(meta) = std::fs::metadata(&dir) {
            found.insert(meta.ino(), dir.clone());
        }
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
    found
}

/// The pods this agent knows by their cgroups, as ("NAMESPACE/NAME",
/// cgroup): the CNI plugin's containers whose cgroups it has found, and this
/// node's pods of the pods file.
pub fn known_pods(state_dir: &Path, pods_file: Option<&Path>, node: &str) -> Vec<(String, PathBuf)> {
    pods_file
        .map(crate::pods::read)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.node == node)
        .chain(crate::cni_endpoints::read_records(state_dir))
        .filter(|p| !p.cgroup.as_os_str().is_empty())
        .map(|p| (format!("{}/{}", p.namespace, p.name), p.cgroup))
        .collect()
}

/// The second root frame: "NS/NAME" for a lab pod's cgroup, else "[no pod]".
fn workload(path: Option<&PathBuf>) -> String {
    let pod = path.and_then(|p| {
        let name = p.file_name()?.to_str()?;
        let parent = p.parent()?.file_name()?.to_str()?;
        (parent == "pods").then(|| name.replacen('.', "/", 1))
    });
    pod.unwrap_or_else(|| NO_POD.to_string())
}

/// Refuses a pid that names no process, or a process outside this node's
/// cgroup (its samples would never be taken): an empty profile would say
/// nothing of why.
pub fn check_pid(pid: u32, cgroup2: &Path, node_cgroup: Option<&Path>, node: &str) -> Result<(), String> {
    let cgroup = weir_host::process::cgroup_of(pid).ok_or_else(|| format!("pid: there is no process {pid}"))?;
    match node_cgroup {
        Some(scope) if !cgroup2.join(&cgroup).starts_with(scope) => {
            Err(format!("pid: process {pid} is not on node {node} (its cgroup is /{})", cgroup.display()))
        }
        _ => Ok(()),
    }
}

/// Samples until the duration passes or `cancelled` is set, then symbolizes.
/// Blocking: run on a blocking thread.
/// `named`: pods by cgroup id, for those whose cgroup paths do not say
/// (the CNI plugin's containers).
pub fn collect(
    node: &str,
    cgroup2: &Path,
    node_cgroup: Option<&Path>,
    named: &HashMap<u64, String>,
    spec: &ProfileSpec,
    cancelled: &AtomicBool,
) -> Result<ProfileResult, weir_bpf::BpfError> {
    // Filter in the kernel as narrowly as one cgroup allows; refine below.
    let kernel_scope = match spec.cgroups.as_slice() {
        [only] => Some(only.clone()),
        _ => node_cgroup.map(Path::to_path_buf),
    };
    let config = SamplerConfig {
        frequency_hz: spec.frequency_hz,
        max_stacks: spec.max_stacks,
        scope_cgroup: kernel_scope,
        scope_tgid: spec.pid,
    };
    let mut processes: HashMap<u32, Option<ProcessInfo>> = HashMap::new();
    let mut drained = Drained::default();
    let start = Instant::now();
    let session = profiler::run_session(
        &config,
        DRAIN_INTERVAL.min(spec.duration.max(Duration::from_millis(10))),
        || cancelled.load(Ordering::Relaxed) || start.elapsed() >= spec.duration,
        |batch| {
            for sample in &batch {
                processes.entry(sample.tgid).or_insert_with(|| ProcessInfo::snapshot(sample.tgid).ok());
            }
            drained.add(batch);
        },
    )?;

    let cgroups = cgroup_paths(node_cgroup.unwrap_or(cgroup2));
    let wanted: Option<HashSet<u64>> =
        (!spec.cgroups.is_empty()).then(|| spec.cgroups.iter().flat_map(|c| cgroup_paths(c).into_keys()).collect());
    let mut symbolizer = Symbolizer::new();
    // Every name the profile needs is looked up at once: one pass over each
    // binary's symbol table and one over kallsyms, none of them held.
    for sample in drained.stacks() {
        let process = processes.get(&sample.tgid).and_then(Option::as_ref);
        if let Some(stack) = &sample.user {
            symbolizer.queue_user_stack(process, stack, &sample.stack_top);
        }
        if spec.kernel {
            symbolizer.queue_kernel_stack(&sample.kernel);
        }
    }
    symbolizer.resolve_queued();
    let mut result = ProfileResult::default();
    let mut seen = HashSet::new();
    for sample in drained.into_samples() {
        if wanted.as_ref().is_some_and(|w| !w.contains(&sample.cgroup_id)) {
            continue;
        }
        let process = processes.get(&sample.tgid).and_then(Option::as_ref);
        if let Some(binary) = &spec.binary {
            if !process.is_some_and(|p| p.runs(binary)) {
                continue;
            }
        }
        if seen.insert(sample.tgid) {
            result.processes += 1;
            if process.is_none() {
                result.processes_unresolved += 1;
            }
        }
        let pod = named.get(&sample.cgroup_id).cloned().unwrap_or_else(|| workload(cgroups.get(&sample.cgroup_id)));
        let mut frames = vec![node.to_string(), pod, sample.comm.clone()];
        match &sample.user {
            Some(stack) => {
                let user = symbolizer.user_stack(process, stack, &sample.stack_top);
                if user.truncated {
                    result.truncated_stacks += sample.count;
                    frames.push(UNWIND_STOPPED.to_string());
                }
                frames.extend(user.frames.into_iter().rev());
            }
            None if sample.kernel.is_empty() || process.is_some() => frames.push(NO_USER_STACK.to_string()),
            None => {}
        }
        if spec.kernel {
            frames.extend(symbolizer.kernel_stack(&sample.kernel).into_iter().rev().map(|f| format!("{f}_[k]")));
        }
        result.samples += sample.count;
        result.profile.add(frames, sample.count);
    }
    let losses = session.losses;
    result.event = session.event.name();
    result.losses = profile_loss::ALL
        .iter()
        .filter(|(code, _, _)| *code != profile_loss::NONE)
        .filter_map(|(code, name, _)| losses.get(*code as usize).filter(|n| **n > 0).map(|n| (*name, *n)))
        .collect();
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each drain hands over the stacks seen since the last one; a stack the
    /// node keeps running comes in every batch, and is held once.
    #[test]
    fn a_stack_drained_again_and_again_is_held_once() {
        let hot = RawSample {
            tgid: 7,
            cgroup_id: 1,
            comm: "burn".into(),
            user: Some(vec![0x1010, 0x2020, 0x3030]),
            kernel: Vec::new(),
            stack_top: vec![0; 4],
            count: 3,
        };
        let other = RawSample { user: Some(vec![0x1010, 0x3030]), count: 1, ..hot.clone() };
        let mut drained = Drained::default();
        for _ in 0..1000 {
            drained.add(vec![hot.clone(), other.clone()]);
        }
        assert_eq!(drained.stacks().count(), 2);
        let mut samples: Vec<RawSample> = drained.into_samples().collect();
        samples.sort_by_key(|s| s.count);
        assert_eq!(samples, [RawSample { count: 1000, ..other }, RawSample { count: 3000, ..hot }]);
    }

    #[test]
    fn pods_are_named_from_their_cgroup_paths() {
        let pod = PathBuf::from("/sys/fs/cgroup/weir/labs/demo/node-a/pods/frontend.web");
        assert_eq!(workload(Some(&pod)), "frontend/web");
        assert_eq!(workload(Some(&PathBuf::from("/sys/fs/cgroup/weir/labs/demo/node-a/agent"))), NO_POD);
        assert_eq!(workload(None), NO_POD);
    }
}
