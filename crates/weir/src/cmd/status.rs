//! `weir status`: ask an agent how its node is doing.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use weir_host::paths;
use weir_proto::agent::v1 as pb;

use super::client;

use crate::output::{self, Format};

/// Show an agent's health, programs and attach points, map fill and run statistics.
///
/// Talks to the agent on its unix socket. In a lab, name the node:
/// `weir status --lab demo --node node-a`. With neither --lab nor --socket:
/// the lab that is up when exactly one is, the host agent when none is, and an
/// error naming them when several are.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The agent's socket (the host agent's is /run/weir/agent.sock).
    #[arg(long, conflicts_with_all = ["lab", "node"])]
    socket: Option<PathBuf>,
    /// The lab whose node to ask. Left out: the only lab that is up; with
    /// none up, the host agent; with several up, an error naming them.
    #[arg(long, env = "WEIR_LAB")]
    lab: Option<String>,
    /// The lab node to ask [default: the lab's first node].
    #[arg(long)]
    node: Option<String>,
    /// Measure program run counts and average ns over this window
    /// (0: report only what the agent already accounts).
    #[arg(long, default_value = "500ms", value_parser = weir_spec::parse_duration_or_zero)]
    sample: std::time::Duration,
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
}

fn socket_for(args: &StatusArgs) -> anyhow::Result<PathBuf> {
    if let Some(socket) = &args.socket {
        return Ok(socket.clone());
    }
    let Some(lab) = super::target::implied_lab(args.lab.as_deref())? else {
        if let Some(node) = &args.node {
            anyhow::bail!("--node {node}: no lab is up");
        }
        return Ok(PathBuf::from(paths::HOST_AGENT_SOCKET));
    };
    let plan = weir_lab::runtime::load_plan(&lab)?;
    let node = match &args.node {
        Some(name) => plan.node(name).with_context(|| format!("lab {lab} has no node {name}"))?,
        None => plan.nodes.first().context("the lab has no nodes")?,
    };
    Ok(node.agent.socket.clone())
}

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let socket = socket_for(&args)?;
    let runtime = client::runtime()?;
    let status = runtime.block_on(async {
        anyhow::Ok(
            client::connect::<client::Agent>(socket)
                .await?
                .get_status(pb::GetStatusRequest {
                    sample_ms: u32::try_from(args.sample.as_millis()).unwrap_or(60_000),
                })
                .await?
                .into_inner(),
        )
    })?;
    match args.output {
        Format::Json => output::json(&to_json(&status))?,
        Format::Table => print!("{}", render(&status)),
    }
    Ok(if status.health() == pb::Health::Ok { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

fn render(s: &pb::GetStatusResponse) -> String {
    let health = match s.health() {
        pb::Health::Ok => "ok".to_string(),
        _ => format!("DEGRADED: {}", s.health_detail.join("; ")),
    };
    let mut out = format!(
        "node {}{}  health {}  weir {}\n{}pins {}  state {}  metrics {}\nruntime security: {}\n",
        s.node,
        if s.lab.is_empty() { String::new() } else { format!(" (lab {})", s.lab) },
        health,
        s.version,
        if s.restored { "restored: adopted the pinned datapath at start\n" } else { "" },
        s.pin_dir,
        s.state_dir,
        if s.metrics_addr.is_empty() { "off" } else { &s.metrics_addr },
        if s.runtime_backend.is_empty() { "unknown" } else { &s.runtime_backend },
    );
    out.push_str("\nATTACHMENTS\n");
    let rows: Vec<Vec<String>> = s
        .attachments
        .iter()
        .map(|a| {
            // The link may run the filter's entry program, which tail-calls a.program.
            let entry = s.programs.iter().find(|p| p.id == a.program_id && p.name != a.program);
            vec![
                entry.map_or_else(|| a.program.clone(), |e| format!("{} -> {}", e.name, a.program)),
                a.hook.clone(),
                format!("{} (ifindex {})", a.interface, a.ifindex),
                a.mode.clone(),
                if a.attached { format!("yes, link {}", a.link_id) } else { "NO".into() },
            ]
        })
        .collect();
    out.push_str(&output::table(&["PROGRAM", "HOOK", "INTERFACE", "MODE", "ATTACHED"], &rows));
    let window = match (s.stats_window_ms, s.run_time_stats) {
        (0, true) => "since the agent started".to_string(),
        (0, false) => "not measured: use --sample".to_string(),
        (ms, _) => format!("over {ms} ms"),
    };
    out.push_str(&format!("\nPROGRAMS (kernel run statistics {window})\n"));
    let rows: Vec<Vec<String>> = s
        .programs
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.id.to_string(),
                p.run_count.to_string(),
                p.run_time_ns.checked_div(p.run_count).map_or("-".into(), |ns| ns.to_string()),
            ]
        })
        .collect();
    out.push_str(&output::table(&["PROGRAM", "ID", "RUNS", "AVG NS"], &rows));
    out.push_str("\nMAPS\n");
    let rows: Vec<Vec<String>> = s
        .maps
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.id.to_string(),
                m.r#type.clone(),
                format!("{}/{}", m.in_use, m.max_entries),
                format!("{:.0}%", 100.0 * f64::from(m.in_use) / f64::from(m.max_entries.max(1))),
            ]
        })
        .collect();
    out.push_str(&output::table(&["MAP", "ID", "TYPE", "IN USE", "FILL"], &rows));
    out.push_str("\nTRAFFIC (non-zero)\n");
    let rows: Vec<Vec<String>> = s
        .traffic
        .iter()
        .filter(|t| t.packets > 0)
        .map(|t| vec![t.direction.clone(), t.class.clone(), t.packets.to_string(), t.bytes.to_string()])
        .collect();
    out.push_str(&output::table(&["DIRECTION", "CLASS", "PACKETS", "BYTES"], &rows));
    out
}

fn to_json(s: &pb::GetStatusResponse) -> serde_json::Value {
    serde_json::json!({
        "node": s.node, "lab": s.lab, "version": s.version,
        "health": match s.health() { pb::Health::Ok => "ok", pb::Health::Degraded => "degraded", _ => "unknown" },
        "healthDetail": s.health_detail, "restored": s.restored, "startedUnixMs": s.started_unix_ms,
        "pinDir": s.pin_dir, "stateDir": s.state_dir, "metricsAddr": s.metrics_addr, "runTimeStats": s.run_time_stats, "statsWindowMs": s.stats_window_ms, "runtimeBackend": s.runtime_backend,
        "attachments": s.attachments.iter().map(|a| serde_json::json!({"program": a.program, "hook": a.hook, "interface": a.interface, "ifindex": a.ifindex, "mode": a.mode, "attached": a.attached, "linkId": a.link_id, "programId": a.program_id, "adopted": a.adopted})).collect::<Vec<_>>(),
        "programs": s.programs.iter().map(|p| serde_json::json!({"name": p.name, "id": p.id, "runCount": p.run_count, "runTimeNs": p.run_time_ns})).collect::<Vec<_>>(),
        "maps": s.maps.iter().map(|m| serde_json::json!({"name": m.name, "id": m.id, "type": m.r#type, "maxEntries": m.max_entries, "inUse": m.in_use})).collect::<Vec<_>>(),
        "traffic": s.traffic.iter().map(|t| serde_json::json!({"direction": t.direction, "class": t.class, "packets": t.packets, "bytes": t.bytes})).collect::<Vec<_>>(),
    })
}
