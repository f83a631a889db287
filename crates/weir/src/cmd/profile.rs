//! `weir profile`: CPU flamegraphs of a node, a pod, a namespace, a label
//! selector, a process or a binary; of one lab node or the whole lab at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use weir_profile::{flamegraph, pprof, Profile};
use weir_proto::agent::v1 as pb;

use crate::output;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProfileFormat {
    /// Interactive flamegraph (open in a browser).
    Svg,
    /// Folded stacks, one `frame;frame;... count` per line.
    Folded,
    /// gzipped pprof protobuf, for `go tool pprof` and friends.
    Pprof,
}

/// Sample CPU stacks and draw a flamegraph, with no change to any program.
///
/// Stacks are rooted at node, pod (or "[no pod]") and process, so a lab-wide
/// profile shows who burns CPU where. Examples:
///
///   weir profile --lab demo --duration 10s -o cluster.svg
///
///   weir profile --pod frontend/web --duration 5s -o web.svg
///
///   weir profile --lab demo -l app=api --continuous --window 5s
///
/// User stacks are walked with frame pointers: code built without them shows
/// "[unwind stopped…]" where the walk was cut, never wrong callers.
#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// The lab to profile. Left out: the only lab that is up; with none up,
    /// the host agent; with several up, an error naming them.
    #[arg(long, env = "WEIR_LAB")]
    lab: Option<String>,
    /// Only this lab node [default: every node, merged].
    #[arg(long)]
    node: Option<String>,
    /// Ask the agent on this socket instead of a lab's agents.
    #[arg(long, conflicts_with_all = ["lab", "node", "namespace", "selector"])]
    socket: Option<PathBuf>,
    /// Only this pod (NAMESPACE/NAME). Outside a lab (or with --socket), a
    /// container the agent has from the CNI plugin.
    #[arg(long)]
    pod: Option<String>,
    /// Only pods in this namespace.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Only pods with these labels (key=value[,key=value]).
    #[arg(long, short = 'l')]
    selector: Option<String>,
    /// Only this process.
    #[arg(long)]
    pid: Option<u32>,
    /// Only processes running this executable (file name or full path).
    #[arg(long)]
    binary: Option<String>,
    /// How long to sample (e.g. 500ms, 10s, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Samples per second on every CPU.
    #[arg(long, default_value_t = 99)]
    frequency: u32,
    /// Stack map capacity; samples beyond it are counted as lost, never stored.
    #[arg(long, default_value_t = 16384)]
    max_stacks: u32,
    /// Include kernel frames (suffixed `_[k]`).
    #[arg(long)]
    kernel: bool,
    /// Write the profile here; the format follows the extension (.svg, .folded, .pb.gz) unless --format says otherwise.
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
    #[arg(long, value_enum)]
    format: Option<ProfileFormat>,
    /// Rows in the top-functions table (0: none).
    #[arg(long, default_value_t = 15)]
    top: usize,
    /// Keep profiling in rolling windows of --window, rewriting --output after each, until interrupted.
    #[arg(long)]
    continuous: bool,
    /// The window length with --continuous.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    window: Duration,
}

use weir_spec::parse_duration;

fn format_for(args: &ProfileArgs) -> ProfileFormat {
    args.format.unwrap_or_else(|| match args.output.as_ref().and_then(|p| p.to_str()) {
        Some(p) if p.ends_with(".folded") || p.ends_with(".txt") => ProfileFormat::Folded,
        Some(p) if p.ends_with(".pb.gz") || p.ends_with(".pprof") || p.ends_with(".pb") => ProfileFormat::Pprof,
        _ => ProfileFormat::Svg,
    })
}

/// Whom a profile asks, and what it keeps.
struct Targets {
    sockets: Vec<PathBuf>,
    /// Keep only these cgroups (pod scopes); empty: all.
    cgroups: Vec<String>,
    /// Keep only these pods, which the agent finds by name (its CNI containers).
    pods: Vec<String>,
    /// Where it runs, for the flamegraph's title: "lab demo, node node-a".
    place: String,
}

/// What was profiled, for the flamegraph's title: "pod frontend/web".
fn scope(args: &ProfileArgs) -> String {
    let mut parts = Vec::new();
    if let Some(pod) = &args.pod {
        parts.push(format!("pod {pod}"));
    }
    if let Some(namespace) = &args.namespace {
        parts.push(format!("namespace {namespace}"));
    }
    if let Some(selector) = &args.selector {
        parts.push(format!("pods {selector}"));
    }
    if let Some(pid) = args.pid {
        parts.push(format!("pid {pid}"));
    }
    if let Some(binary) = &args.binary {
        parts.push(format!("binary {binary}"));
    }
    if parts.is_empty() {
        parts.push("every process".into());
    }
    parts.join(", ")
}

/// The flamegraph's title: where, what, how long and how often.
fn title(args: &ProfileArgs, place: &str, duration: Duration) -> String {
    format!("weir profile: {place}; {}; {duration:?} at {} Hz", scope(args), args.frequency)
}

/// The process `--pid` names, as its cgroup (relative to the cgroup2 root).
fn pid_cgroup(pid: u32) -> anyhow::Result<PathBuf> {
    weir_host::process::cgroup_of(pid).with_context(|| format!("--pid {pid}: there is no process {pid}"))
}

/// The agents to ask, and the cgroups to keep.
fn targets(args: &ProfileArgs) -> anyhow::Result<Targets> {
    let pid_cgroup = args.pid.map(pid_cgroup).transpose()?;
    if let Some(socket) = &args.socket {
        return Ok(Targets {
            sockets: vec![socket.clone()],
            cgroups: Vec::new(),
            pods: args.pod.iter().cloned().collect(),
            place: format!("agent at {}", socket.display()),
        });
    }
    let Some(lab) = super::target::implied_lab(args.lab.as_deref())? else {
        if args.namespace.is_some() || args.selector.is_some() || args.node.is_some() {
            anyhow::bail!("--namespace, --selector and --node choose within a lab, and no lab is up");
        }
        return Ok(Targets {
            sockets: vec![PathBuf::from(weir_host::paths::HOST_AGENT_SOCKET)],
            cgroups: Vec::new(),
            pods: args.pod.iter().cloned().collect(),
            place: "host".into(),
        });
    };
    lab_targets(args, &lab, pid_cgroup.as_deref())
}

fn lab_targets(args: &ProfileArgs, lab: &str, pid_cgroup: Option<&std::path::Path>) -> anyhow::Result<Targets> {
    let plan = weir_lab::runtime::load_plan(lab)?;
    let roots = weir_lab::runtime::Roots::discover()?;
    let selector: Vec<(String, String)> = match &args.selector {
        Some(s) => s
            .split(',')
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .with_context(|| format!("--selector: {kv:?} is not key=value"))
            })
            .collect::<anyhow::Result<_>>()?,
        None => Vec::new(),
    };
    let pods: Vec<&weir_lab::plan::PodPlan> = plan
        .pods
        .iter()
        .filter(|p| args.pod.as_deref().is_none_or(|q| q == format!("{}/{}", p.namespace, p.name)))
        .filter(|p| args.namespace.as_deref().is_none_or(|n| n == p.namespace))
        .filter(|p| selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
        .collect();
    let pod_scoped = args.pod.is_some() || args.namespace.is_some() || args.selector.is_some();
    if let Some(pod) = &args.pod {
        super::target::check_pod_in(&plan, lab, args.node.as_deref(), "--pod", pod, false)?;
    }
    if let Some(namespace) = &args.namespace {
        super::target::check_namespace_in(&plan, lab, args.node.as_deref(), "--namespace", namespace)?;
    }
    if pod_scoped && pods.is_empty() {
        let asked = [
            args.pod.as_ref().map(|p| format!("pod {p}")),
            args.namespace.as_ref().map(|n| format!("namespace {n}")),
            args.selector.as_ref().map(|s| format!("labels {s}")),
        ];
        let asked: Vec<String> = asked.into_iter().flatten().collect();
        anyhow::bail!("no pod of lab {lab} matches {}", asked.join(" and "));
    }
    let nodes: Vec<&weir_lab::plan::NodePlan> = plan
        .nodes
        .iter()
        .filter(|n| args.node.as_deref().is_none_or(|want| want == n.name))
        .filter(|n| !pod_scoped || pods.iter().any(|p| p.node == n.name))
        .collect();
    if nodes.is_empty() {
        anyhow::bail!("lab {lab} has no node {}", args.node.as_deref().unwrap_or("matching the selection"));
    }
    // A process runs on one node: ask that node's agent only.
    let nodes = match (args.pid, pid_cgroup) {
        (Some(pid), Some(cgroup)) => {
            let on: Vec<_> = nodes.into_iter().filter(|n| cgroup.starts_with(&n.cgroup)).collect();
            if on.is_empty() {
                let node = args.node.as_deref().map(|n| format!(" node {n} of")).unwrap_or_default();
                anyhow::bail!(
                    "--pid {pid}: process {pid} is not in{node} lab {lab} (its cgroup is /{})",
                    cgroup.display()
                );
            }
            on
        }
        _ => nodes,
    };
    let cgroups = if pod_scoped {
        pods.iter().map(|p| roots.cgroup2.join(&p.cgroup).display().to_string()).collect()
    } else {
        Vec::new()
    };
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let place = if names.len() == plan.nodes.len() && names.len() > 1 {
        format!("lab {lab}, every node")
    } else {
        format!("lab {lab}, node {}", names.join(", "))
    };
    Ok(Targets { sockets: nodes.iter().map(|n| n.agent.socket.clone()).collect(), cgroups, pods: Vec::new(), place })
}

async fn profile_once(
    args: &ProfileArgs,
    sockets: &[PathBuf],
    (cgroups, pods): (&[String], &[String]),
    duration: Duration,
) -> anyhow::Result<(Profile, Vec<pb::ProfileResponse>)> {
    let request = pb::ProfileRequest {
        duration_ms: u32::try_from(duration.as_millis()).context("--duration is too long")?,
        frequency_hz: args.frequency,
        max_stacks: args.max_stacks,
        cgroups: cgroups.to_vec(),
        pid: args.pid.unwrap_or(0),
        binary: args.binary.clone().unwrap_or_default(),
        kernel: args.kernel,
        pods: pods.to_vec(),
    };
    // Every node samples over the same window.
    let calls = sockets.iter().cloned().map(|socket| {
        let request = request.clone();
        async move {
            let mut client = super::client::connect::<super::client::Agent>(socket.clone()).await?;
            anyhow::Ok(
                client
                    .profile(request)
                    .await
                    .with_context(|| format!("profiling through {}", socket.display()))?
                    .into_inner(),
            )
        }
    });
    let mut responses = Vec::new();
    let mut handles = Vec::new();
    for call in calls {
        handles.push(tokio::spawn(call));
    }
    for handle in handles {
        responses.push(handle.await??);
    }
    let mut merged = Profile::default();
    for response in &responses {
        for stack in &response.stacks {
            merged.add(stack.frames.clone(), stack.count);
        }
    }
    Ok((merged, responses))
}

fn write_output(
    args: &ProfileArgs,
    profile: &Profile,
    duration: Duration,
    title: &str,
    subtitle: &str,
) -> anyhow::Result<()> {
    let Some(path) = &args.output else { return Ok(()) };
    if profile.samples() == 0 && format_for(args) == ProfileFormat::Svg {
        anyhow::bail!("no samples in {duration:?}: no flamegraph to draw, {} not written", path.display());
    }
    let period_ns = 1_000_000_000 / i64::from(args.frequency.max(1));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let bytes = match format_for(args) {
        ProfileFormat::Svg => flamegraph::svg(profile, title, subtitle).map_err(anyhow::Error::msg)?,
        ProfileFormat::Folded => profile.folded().into_bytes(),
        ProfileFormat::Pprof => {
            pprof::encode_gzip(profile, period_ns, duration.as_nanos() as i64, now.as_nanos() as i64)?
        }
    };
    write_file(path, &bytes)
}

/// Writes a profile to `path`: through a file renamed over it, so a
/// continuous profile never leaves a torn file; but what is not a regular
/// file (`-o /dev/null`, a FIFO, /dev/stdout) is written to, never renamed
/// over, which would put a file where the device was.
fn write_file(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()));
    }
    let tmp = path.with_extension("weir-tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn report(args: &ProfileArgs, profile: &Profile, responses: &[pb::ProfileResponse]) -> String {
    let samples: u64 = responses.iter().map(|r| r.samples).sum();
    let truncated: u64 = responses.iter().map(|r| r.truncated_stacks).sum();
    let mut losses: BTreeMap<&str, u64> = BTreeMap::new();
    for r in responses {
        for (k, v) in &r.losses {
            *losses.entry(k).or_default() += v;
        }
    }
    let nodes: Vec<&str> = responses.iter().map(|r| r.node.as_str()).collect();
    let processes: u32 = responses.iter().map(|r| r.processes).sum();
    let unresolved: u32 = responses.iter().map(|r| r.processes_unresolved).sum();
    let event = responses.first().map(|r| r.event.as_str()).unwrap_or_default();
    let mut out = format!(
        "{samples} samples from {processes} processes on {} at {} Hz of {event}",
        nodes.join(", "),
        args.frequency
    );
    if truncated > 0 {
        out.push_str(&format!("; {truncated} with unwinding cut short (no frame pointers)"));
    }
    if unresolved > 0 {
        out.push_str(&format!("; {unresolved} processes exited before their maps were read"));
    }
    if !losses.is_empty() {
        out.push_str(&format!(
            "; lost: {}",
            losses.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
        ));
    }
    out.push('\n');
    if args.top > 0 && samples > 0 {
        // Node, pod and process frames are roots, not functions.
        let rows: Vec<Vec<String>> = profile
            .top(args.top, 3)
            .into_iter()
            .map(|t| {
                vec![
                    format!("{:.1}%", 100.0 * t.self_samples as f64 / samples as f64),
                    format!("{:.1}%", 100.0 * t.total_samples as f64 / samples as f64),
                    t.self_samples.to_string(),
                    t.function,
                ]
            })
            .collect();
        out.push_str(&output::table(&["SELF", "TOTAL", "SAMPLES", "FUNCTION"], &rows));
    }
    out
}

pub fn run(args: ProfileArgs) -> anyhow::Result<ExitCode> {
    if args.frequency == 0 || args.frequency > 10_000 {
        anyhow::bail!("--frequency: must be between 1 and 10000 Hz");
    }
    let Targets { sockets, cgroups, pods, place } = targets(&args)?;
    let runtime = super::client::runtime()?;
    let duration = if args.continuous { args.window } else { args.duration };
    let title = title(&args, &place, duration);
    loop {
        eprintln!("profiling {} node(s) for {:?} at {} Hz…", sockets.len(), duration, args.frequency);
        let (profile, responses) = runtime.block_on(profile_once(&args, &sockets, (&cgroups, &pods), duration))?;
        let text = report(&args, &profile, &responses);
        let subtitle = text.lines().next().unwrap_or_default().to_string();
        let written = write_output(&args, &profile, duration, &title, &subtitle);
        print!("{text}");
        match (written, &args.output) {
            (Ok(()), Some(path)) => println!("wrote {} ({:?})", path.display(), format_for(&args)),
            (Ok(()), None) => {}
            // An idle window does not end a continuous profile.
            (Err(e), _) if args.continuous => eprintln!("{e:#}"),
            (Err(e), _) => return Err(e),
        }
        if !args.continuous {
            return Ok(ExitCode::SUCCESS);
        }
        println!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_written_to_a_device_leaves_the_device_in_place() {
        let dir = std::env::temp_dir().join(format!("weir-profile-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        // Through a link to /dev/null: renaming over the link (the defect)
        // would replace the link, never /dev/null itself.
        let out = dir.join("out");
        let _ = std::fs::remove_file(&out);
        std::os::unix::fs::symlink("/dev/null", &out).expect("link");
        write_file(&out, b"main;work 1\n").expect("written");
        let kept = std::fs::symlink_metadata(&out).expect("out").file_type().is_symlink();
        let file = dir.join("profile.folded");
        write_file(&file, b"main;work 1\n").expect("written");
        let written = std::fs::read(&file).expect("read");
        std::fs::remove_dir_all(&dir).expect("clean");
        assert!(kept, "the device (through its link) is written to, not replaced by a file");
        assert_eq!(written, b"main;work 1\n", "a regular file is written whole");
    }
}
