//! `weir clustermesh status`: what each node knows of the other clusters of
//! its mesh: connected or not, since when, their nodes, identities and
//! global services, and the last error.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use weir_proto::clustermesh::v1 as pb;

use super::client;
use super::target::AgentTarget;
use crate::output::Format;

#[derive(Debug, Subcommand)]
pub enum ClusterMeshCommand {
    /// Each node's view of the other clusters of its mesh.
    ///
    /// For every other cluster: its state (connected; etcd-away: its etcd is
    /// gone but its nodes answer, so what was learned stays; stale: away
    /// past --clustermesh-stale-after, its backends out of the tables; lost:
    /// its etcd and nodes gone, its backends out of the tables), since when,
    /// its nodes, identities, global services and backends, and its last
    /// error. Exits 1 when a cluster is not connected on some node.
    ///
    /// In a lab mesh, name a cluster: `weir clustermesh status --lab east`.
    Status {
        #[command(flatten)]
        target: AgentTarget,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
}

pub fn run(cmd: ClusterMeshCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ClusterMeshCommand::Status { target, output } => status(&target, output),
    }
}

fn ask(target: &AgentTarget) -> anyhow::Result<Vec<(String, pb::StatusResponse)>> {
    let rt = client::runtime()?;
    target
        .agents()?
        .into_iter()
        .map(|(node, socket)| {
            let reply = rt
                .block_on(async {
                    let mut mesh = client::connect::<client::ClusterMesh>(socket).await?;
                    anyhow::Ok(mesh.status(pb::StatusRequest {}).await?.into_inner())
                })
                .map_err(|e| anyhow::anyhow!("{node}: {}", client::status_message(&e)))?;
            Ok((node, reply))
        })
        .collect()
}

fn ago(unix_ns: u64) -> String {
    if unix_ns == 0 {
        return "-".into();
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let secs = now.saturating_sub(unix_ns) / 1_000_000_000;
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

fn status(target: &AgentTarget, output: Format) -> anyhow::Result<ExitCode> {
    let all = ask(target)?;
    let healthy = all.iter().all(|(_, s)| s.remotes.iter().all(|r| r.ready));
    if output == Format::Json {
        let nodes: Vec<serde_json::Value> = all
            .iter()
            .map(|(node, s)| {
                serde_json::json!({
                    "node": node, "enabled": s.enabled, "cluster": s.cluster, "clusterId": s.cluster_id,
                    "sharesServices": s.shares_services, "sharedServices": s.shared_services,
                    "remotes": s.remotes.iter().map(|r| serde_json::json!({
                        "name": r.name, "clusterId": r.cluster_id, "etcd": r.etcd, "state": r.state,
                        "ready": r.ready, "sinceUnixNs": r.since_unix_ns, "nodes": r.nodes,
                        "identities": r.identities, "globalServices": r.global_services,
                        "backends": r.backends, "synced": r.synced, "failures": r.failures,
                        "lastError": r.last_error, "lastErrorUnixNs": r.last_error_unix_ns,
                        "appliedRevision": r.applied_revision, "appliedUnixNs": r.applied_unix_ns,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&nodes)?);
        return Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    for (node, s) in &all {
        if !s.enabled {
            println!("{node}: not in a mesh");
            continue;
        }
        let shared =
            if s.shares_services { format!(", shares {} global services", s.shared_services) } else { String::new() };
        println!("{node}: cluster {} (id {}){shared}", s.cluster, s.cluster_id);
        println!(
            "  {:<16} {:>3} {:<11} {:<9} {:>5} {:>10} {:>8} {:>8} {:>8}  LAST ERROR",
            "CLUSTER", "ID", "STATE", "SINCE", "NODES", "IDENTITIES", "SERVICES", "BACKENDS", "FAILURES"
        );
        for r in &s.remotes {
            // The whole error is in -o json; a table row keeps its start.
            let error = match r.last_error.char_indices().nth(80) {
                _ if r.last_error.is_empty() => "-".to_string(),
                Some((cut, _)) => format!("{}… ({})", &r.last_error[..cut], ago(r.last_error_unix_ns)),
                None => format!("{} ({})", r.last_error, ago(r.last_error_unix_ns)),
            };
            let services = if r.synced { r.global_services.to_string() } else { format!("{}*", r.global_services) };
            println!(
                "  {:<16} {:>3} {:<11} {:<9} {:>5} {:>10} {:>8} {:>8} {:>8}  {error}",
                r.name,
                r.cluster_id,
                r.state,
                ago(r.since_unix_ns),
                r.nodes,
                r.identities,
                services,
                r.backends,
                r.failures
            );
        }
        if s.remotes.iter().any(|r| !r.synced && r.ready) {
            println!("  * not synced: the cluster has not finished publishing; what was read before is kept");
        }
    }
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
