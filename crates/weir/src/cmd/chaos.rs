//! `weir chaos list` and `weir chaos stop`: the chaos experiments each node
//! runs (started with `weir apply -f` of a chaos document), what they did
//! (packets dropped, delayed, sent twice or corrupted; calls failed; DNS
//! answers given; processes frozen) and their time left; stopping them by
//! name or all at once.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use weir_proto::agent::v1 as pb;

use super::client;
use super::target::AgentTarget;
use crate::output::Format;

#[derive(Debug, Subcommand)]
pub enum ChaosCommand {
    /// Each node's experiments: targets, what they did (packets dropped,
    /// delayed, sent twice or corrupted; calls failed; DNS answers given;
    /// processes frozen), time left.
    List {
        #[command(flatten)]
        target: AgentTarget,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// End experiments now, by NAME or NAMESPACE/NAME (namespace default).
    Stop {
        /// The experiments to stop.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        names: Vec<String>,
        /// Every experiment, and every chaos entry an earlier agent left.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        target: AgentTarget,
    },
    /// The agent's helper for a PodChaos pod-failure, in a session of its
    /// own: sleeps until the experiment's end, then thaws the pods' cgroups,
    /// whether an agent is left or not.
    #[command(hide = true)]
    ThawAt {
        /// "namespace/name", which the agent checks before ending it.
        #[arg(long)]
        experiment: String,
        #[arg(long)]
        end_unix_ns: u64,
        cgroups: Vec<std::path::PathBuf>,
    },
}

fn time_left(end_unix_ns: u64) -> String {
    if end_unix_ns == 0 {
        return "until stopped".into();
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    match end_unix_ns.checked_sub(now) {
        Some(left) if left > 0 => format!("{:.1}s", left as f64 / 1e9),
        _ => "ended (the kernel ignores it)".into(),
    }
}

pub fn run(cmd: ChaosCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ChaosCommand::List { target, output } => list(&target, output),
        ChaosCommand::ThawAt { experiment: _, end_unix_ns, cgroups } => {
            weir_agent::chaos::thaw_at(end_unix_ns, &cgroups);
            Ok(ExitCode::SUCCESS)
        }
        ChaosCommand::Stop { names, all, target } => {
            let names: Vec<String> =
                names.into_iter().map(|n| if n.contains('/') { n } else { format!("default/{n}") }).collect();
            let replies = target.ask_each(|mut c: client::Chaos| {
                let request = pb::ChaosStopRequest { names: names.clone(), all };
                async move { c.chaos_stop(request).await }
            })?;
            for (node, reply) in replies {
                if reply.stopped.is_empty() {
                    println!("{node}: no experiment was running");
                } else {
                    println!("{node}: stopped NetworkChaos {}", reply.stopped.join(", "));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn list(target: &AgentTarget, output: Format) -> anyhow::Result<ExitCode> {
    let all = target.ask_each(|mut c: client::Chaos| async move { c.chaos_list(pb::ChaosListRequest {}).await })?;
    if output == Format::Json {
        let nodes: Vec<serde_json::Value> = all
            .iter()
            .map(|(node, l)| {
                serde_json::json!({
                    "node": node, "problem": l.problem,
                    "experiments": l.experiments.iter().map(|e| serde_json::json!({
                        "name": e.name, "action": e.action, "percent": e.percent,
                        "correlationPercent": e.correlation_percent, "direction": e.direction,
                        "pods": e.pods, "targets": e.targets, "pairs": e.pairs,
                        "packetsAffected": e.packets_affected, "endUnixNs": e.end_unix_ns,
                        "checksum": e.checksum, "rateBytes": e.rate_bytes, "limit": e.limit,
                        "buffer": e.buffer, "peakrate": e.peakrate, "minburst": e.minburst,
                        "queueDropped": e.queue_dropped, "latencyNs": e.latency_ns, "jitterNs": e.jitter_ns,
                        "reorderPercent": e.reorder_percent,
                        "reorderCorrelationPercent": e.reorder_correlation_percent, "reorderGap": e.reorder_gap,
                        "errno": e.errno, "frozen": e.frozen, "dnsPatterns": e.dns_patterns,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&nodes)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (node, l) in &all {
        if !l.problem.is_empty() {
            println!("{node}: chaos is not available: {}", l.problem);
            continue;
        }
        if l.experiments.is_empty() {
            println!("{node}: no experiments");
            continue;
        }
        println!("{node}:");
        println!(
            "  {:<28} {:<30} {:<6} {:>8} {:>10}  {:<16} PODS -> TARGETS",
            "NAME", "ACTION", "DIR", "PAIRS", "AFFECTED", "LEFT"
        );
        for e in &l.experiments {
            let action = match e.action.as_str() {
                "loss" | "duplicate" => format!("{} {}%/{}%", e.action, e.percent, e.correlation_percent),
                "corrupt" => format!("corrupt {}%/{}% ({})", e.percent, e.correlation_percent, e.checksum),
                "bandwidth" => format!("bandwidth {}B/s, {} queue-dropped", e.rate_bytes, e.queue_dropped),
                "connect-error" => format!("connect-error errno {} {}%", e.errno, e.percent),
                "refuse" => format!("refuse errno {} {}%", e.errno, e.percent),
                "blackhole" => format!("blackhole {}%", e.percent),
                "pod-kill" => format!("pod-kill ({} processes)", e.packets_affected),
                "pod-failure" if e.frozen.is_empty() => "pod-failure (none frozen now)".to_string(),
                "pod-failure" => format!("pod-failure (frozen: {})", e.frozen.join(",")),
                "tcp-reset" => format!("tcp-reset ({} connections)", e.packets_affected),
                "dns-nxdomain" | "dns-servfail" | "dns-delay" => {
                    let names =
                        if e.dns_patterns.is_empty() { "every name".to_string() } else { e.dns_patterns.join(",") };
                    let latency =
                        if e.latency_ns > 0 { format!(" {}ms", e.latency_ns as f64 / 1e6) } else { String::new() };
                    format!("{}{latency} {}% {names}", e.action, e.percent)
                }
                "delay" => {
                    let ms = |ns: u64| ns as f64 / 1e6;
                    let mut text = format!("delay {}ms ±{}ms", ms(e.latency_ns), ms(e.jitter_ns));
                    if e.reorder_percent > 0.0 {
                        text.push_str(&format!(", reorder {}% gap {}", e.reorder_percent, e.reorder_gap));
                    }
                    text
                }
                _ => e.action.clone(),
            };
            println!(
                "  {:<28} {:<30} {:<6} {:>8} {:>10}  {:<16} {} -> {}",
                e.name,
                action,
                e.direction,
                e.pairs,
                e.packets_affected,
                time_left(e.end_unix_ns),
                e.pods.join(","),
                e.targets.join(",")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn the_agent_starts_its_thaw_helper_with_a_command_this_binary_has() {
        let mut args = vec!["weir"];
        args.extend(weir_agent::chaos::THAW_COMMAND);
        args.extend(["--experiment", "shop/freeze", "--end-unix-ns", "1", "/sys/fs/cgroup/pod"]);
        let cli = super::super::Cli::try_parse_from(args).expect("parses");
        assert!(format!("{cli:?}").contains("ThawAt"), "{cli:?}");
    }
}
