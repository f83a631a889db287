//! `weir events` (process and network-operation events, live, from every
//! node) and `weir runtime` (the enforcement backend, the policies and the
//! kernel rules they became). Policies are applied with `weir apply -f`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use weir_proto::agent::v1 as pb;

use super::client;
use super::target::AgentTarget;
use crate::output::{self, Format};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventFormat {
    /// One line per event, for reading.
    Text,
    /// One JSON object per line, for programs.
    Json,
}

/// Follow process and network-operation events on every node, live.
///
/// Events: exec (binary resolved by the kernel, arguments, cwd), fork, exit
/// (status or signal), connect, bind, listen, accept, and what a
/// RuntimePolicy did about them. Each carries its pod (in a lab), its
/// parent and ancestry, and a stable exec id. Events lost on the way are
/// always reported, whatever the filters: LOST N events (source).
///
/// Examples:
///   weir events --pod shop/web --type exec
///   weir events --policy-only -o json
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct EventsArgs {
    /// Only these event types (repeat, or comma-separate).
    #[arg(long = "type", short = 't', value_delimiter = ',',
          value_parser = clap::builder::PossibleValuesParser::new(weir_agent::runtime::event_types()))]
    types: Vec<String>,
    /// Only processes of this pod (NAMESPACE/NAME).
    #[arg(long)]
    pod: Option<String>,
    /// Only processes whose binary path contains this.
    #[arg(long)]
    binary: Option<String>,
    /// Only events a policy rule matched (audits, kills, refusals).
    #[arg(long)]
    policy_only: bool,
    /// Stop after this many events [default: follow until interrupted].
    #[arg(long)]
    count: Option<usize>,
    /// Stop after this long, e.g. 30s [default: follow until interrupted].
    #[arg(long, value_parser = weir_spec::parse_duration)]
    timeout: Option<Duration>,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: EventFormat,
    #[command(flatten)]
    target: AgentTarget,
}

#[derive(Debug, Subcommand)]
pub enum RuntimeCommand {
    /// The enforcement backend of each node, its policies, and the kernel
    /// rules they became, in the order the kernel judges them.
    List {
        #[command(flatten)]
        target: AgentTarget,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
}

fn pod_name(p: Option<&pb::Process>) -> String {
    p.and_then(|p| p.pod.as_ref()).map_or_else(|| "-".to_string(), |pod| format!("{}/{}", pod.namespace, pod.name))
}

fn process_json(p: &pb::Process) -> serde_json::Value {
    serde_json::json!({
        "execId": p.exec_id, "parentExecId": p.parent_exec_id, "pid": p.pid, "ppid": p.ppid,
        "uid": p.uid, "gid": p.gid, "binary": p.binary, "arguments": p.args, "argumentsTruncated": p.args_truncated,
        "cwd": p.cwd, "startTimeUnixNs": p.start_time_unix_ns, "cgroupId": p.cgroup_id, "cgroup": p.cgroup,
        "pod": p.pod.as_ref().map(|pod| serde_json::json!({"namespace": pod.namespace, "name": pod.name, "labels": pod.labels})),
        "fromProcfs": p.from_procfs, "fileless": p.fileless, "binaryDeleted": p.binary_deleted,
        "cwdDeleted": p.cwd_deleted, "viaLoader": p.via_loader,
    })
}

/// What a lost-events source means, for people.
fn loss_source(source: &str) -> &str {
    match source {
        "kernel_ring" => "the kernel's ring buffer was full",
        "slow_stream" => "this stream fell behind",
        "process_cache_evicted" => "processes evicted from the agent's cache: later events lack their ancestry",
        other => other,
    }
}

pub(crate) fn event_json(e: &pb::RuntimeEvent) -> serde_json::Value {
    if let Some(lost) = &e.lost_events {
        return serde_json::json!({
            "node": e.node, "type": e.r#type, "timeUnixNs": e.time_unix_ns,
            "lostEvents": {"source": lost.source, "count": lost.count},
        });
    }
    let mut v = serde_json::json!({
        "node": e.node, "type": e.r#type, "timeUnixNs": e.time_unix_ns, "tid": e.tid,
        "process": e.process.as_ref().map(process_json), "parent": e.parent.as_ref().map(process_json),
        "ancestors": e.ancestors,
    });
    let obj = v.as_object_mut().expect("an object");
    if e.r#type == "exit" {
        obj.insert("exit".into(), serde_json::json!({"status": e.exit_status, "signal": e.exit_signal}));
    }
    if !e.family.is_empty() {
        obj.insert(
            "network".into(),
            serde_json::json!({"family": e.family, "protocol": e.protocol, "local": format!("{}:{}", e.local_address, e.local_port), "remote": format!("{}:{}", e.remote_address, e.remote_port)}),
        );
    }
    if !e.path.is_empty() {
        obj.insert("file".into(), serde_json::json!({"path": e.path}));
    }
    if !e.action.is_empty() {
        obj.insert(
            "policy".into(),
            serde_json::json!({"name": e.policy, "rule": e.policy_rule, "action": e.action, "errno": e.errno, "lsm": e.lsm}),
        );
    }
    v
}

/// One word as a POSIX shell reads it back: as it is when every byte is
/// plain, else in single quotes (a quote inside as `'\''`); `''` when empty.
pub(crate) fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

fn event_line(e: &pb::RuntimeEvent) -> String {
    let p = e.process.as_ref();
    let time = crate::output::clock(e.time_unix_ns);
    if let Some(lost) = &e.lost_events {
        return format!(
            "{time} {:<8} LOST {} events ({}: {})",
            e.node,
            lost.count,
            lost.source,
            loss_source(&lost.source)
        );
    }
    let binary = p.map_or_else(
        || "?".to_string(),
        |p| {
            let mut b = if p.binary.is_empty() { "?".to_string() } else { shell_quote(&p.binary) };
            for (marked, mark) in
                [(p.fileless, " [fileless]"), (p.binary_deleted, " (deleted)"), (p.via_loader, " [via loader]")]
            {
                if marked {
                    b.push_str(mark);
                }
            }
            b
        },
    );
    let what = match e.r#type.as_str() {
        "exec" => {
            p.map(|p| p.args.iter().skip(1).map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")).unwrap_or_default()
        }
        "exit" if e.exit_signal != 0 => format!("signal {}", e.exit_signal),
        "exit" => format!("status {}", e.exit_status),
        "connect" | "sendmsg" => format!("{} -> {}:{}", e.protocol, e.remote_address, e.remote_port),
        "bind" | "listen" => format!("{} {}:{}", e.protocol, e.local_address, e.local_port),
        "accept" => {
            format!("{} {}:{} <- {}:{}", e.protocol, e.local_address, e.local_port, e.remote_address, e.remote_port)
        }
        "socket" => format!("{} {}", e.family, e.protocol),
        "file_open" => e.path.clone(),
        _ => String::new(),
    };
    let parent = e.parent.as_ref().map_or(String::new(), |pp| format!(" parent={}", shell_quote(&pp.binary)));
    let verdict = if e.action.is_empty() {
        String::new()
    } else {
        let errno = if e.errno != 0 { format!(" errno={}", e.errno) } else { String::new() };
        format!(
            "  [{} by {}#{}{errno}{}]",
            e.action.to_uppercase(),
            e.policy,
            e.policy_rule,
            if e.lsm { " lsm" } else { "" }
        )
    };
    format!(
        "{time} {:<8} {:<9} {:<18} pid={:<7} {binary} {what}{parent}{verdict}",
        e.node,
        e.r#type,
        pod_name(p),
        p.map_or(0, |p| p.pid)
    )
}

pub fn events(args: EventsArgs) -> anyhow::Result<ExitCode> {
    if let Some(pod) = &args.pod {
        args.target.check_pod("--pod", pod, false)?;
    }
    let request = pb::EventsRequest {
        types: args.types.clone(),
        pod: args.pod.clone().unwrap_or_default(),
        binary: args.binary.clone().unwrap_or_default(),
        policy_only: args.policy_only,
    };
    super::follow::print_all(
        args.target.agents()?,
        move |mut client: client::Runtime| {
            let request = request.clone();
            async move { client.events(request).await }
        },
        super::follow::Limits { count: args.count, timeout: args.timeout },
        args.output == EventFormat::Json,
        event_json,
        event_line,
    )
}

pub fn run(cmd: RuntimeCommand) -> anyhow::Result<ExitCode> {
    let RuntimeCommand::List { target, output } = cmd;
    let all =
        target.ask_each(|mut c: client::Runtime| async move { c.runtime_list(pb::RuntimeListRequest {}).await })?;
    if output == Format::Json {
        let nodes: Vec<serde_json::Value> = all
            .iter()
            .map(|(node, l)| {
                serde_json::json!({
                    "node": node, "backend": l.backend, "lsmUnavailable": l.lsm_unavailable, "scope": l.scope,
                    "policies": l.policies, "generation": l.generation, "hooks": l.hooks, "missingHooks": l.missing_hooks,
                    "processes": l.processes, "problem": l.problem, "chosenErrno": l.chosen_errno,
                    "rules": l.rules.iter().map(|r| serde_json::json!({"index": r.index, "policy": r.policy, "rule": r.rule, "action": r.action, "operations": r.operations, "enforcement": r.enforcement, "pods": r.pods})).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&nodes)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (node, l) in &all {
        if !l.problem.is_empty() {
            println!("{node}: runtime security is not running: {}", l.problem);
            continue;
        }
        let why =
            if l.lsm_unavailable.is_empty() { String::new() } else { format!(" (no BPF LSM: {})", l.lsm_unavailable) };
        println!(
            "{node}: backend {}{why}; {} hooks; {} processes known; rules generation {}; refusals use {}",
            l.backend,
            l.hooks.len(),
            l.processes,
            l.generation,
            if l.chosen_errno { "the rule's errno" } else { "EPERM (no bpf_set_retval)" }
        );
        for missing in &l.missing_hooks {
            println!("  not attached: {missing}");
        }
        if l.rules.is_empty() {
            println!("  no RuntimePolicy applied");
            continue;
        }
        let rows: Vec<Vec<String>> = l
            .rules
            .iter()
            .map(|r| {
                vec![
                    r.index.to_string(),
                    format!("{}#{}", r.policy, r.rule),
                    r.operations.join(","),
                    r.action.clone(),
                    r.enforcement.clone(),
                    if r.pods < 0 { "all".into() } else { format!("{} pods", r.pods) },
                ]
            })
            .collect();
        print!("{}", output::table(&["#", "POLICY#RULE", "OPERATIONS", "ACTION", "ENFORCED BY", "PROCESSES"], &rows));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_shell_quoted_so_each_reads_back_as_one() {
        assert_eq!(shell_quote("mid"), "mid");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("two words"), "'two words'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("[%s]"), "'[%s]'");
        assert_eq!(shell_quote("/usr/bin/x-1.2"), "/usr/bin/x-1.2");
        let event = pb::RuntimeEvent {
            r#type: "exec".into(),
            process: Some(pb::Process {
                binary: "/usr/bin/printf".into(),
                args: vec!["printf".into(), "[%s]".into(), String::new(), "mid".into(), "a b".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let line = event_line(&event);
        assert!(line.ends_with("/usr/bin/printf '[%s]' '' mid 'a b'"), "{line}");
        let deleted = pb::RuntimeEvent {
            r#type: "exec".into(),
            process: Some(pb::Process { binary: "memfd:x".into(), fileless: true, ..Default::default() }),
            ..Default::default()
        };
        assert!(event_line(&deleted).contains("memfd:x [fileless]"), "{}", event_line(&deleted));
    }

    #[test]
    fn lost_event_records_say_how_many_and_where() {
        let lost = pb::RuntimeEvent {
            node: "node-a".into(),
            r#type: "lost_events".into(),
            lost_events: Some(pb::RuntimeLostEvents { source: "kernel_ring".into(), count: 57708 }),
            ..Default::default()
        };
        let line = event_line(&lost);
        assert!(line.contains("LOST 57708 events (kernel_ring: the kernel's ring buffer was full)"), "{line}");
        let json = event_json(&lost);
        assert_eq!(json["lostEvents"], serde_json::json!({"source": "kernel_ring", "count": 57708}));
    }
}
