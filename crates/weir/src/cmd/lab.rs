//! `weir lab`: a whole cluster on one machine.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use weir_lab::{runtime, LabSpec, MeshSpec};

use crate::output::{self, Format};

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build a lab from a `Lab` YAML spec, or several clusters on one fabric
    /// from a `ClusterMesh` spec (idempotent: re-running restarts dead agents).
    ///
    /// Each node becomes a network namespace on a shared fabric, each pod a
    /// network namespace with a veth to its node and a cgroup of its own, and
    /// each node gets an agent. Example: `weir lab up -f examples/lab.yaml`.
    Up(UpArgs),
    /// Remove a lab and everything it left behind: namespaces, veths, cgroups, pins, processes.
    ///
    /// A mesh's name takes down its clusters and its fabric; a cluster's
    /// name takes down that cluster alone.
    Down {
        /// The lab's (or mesh's, or cluster's) metadata.name.
        name: String,
    },
    /// List the labs on this machine, including remnants of crashed ones.
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Show a lab's nodes, pods and external hosts and whether each is healthy.
    Status {
        name: String,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Run a command inside a pod's network namespace and cgroup.
    ///
    /// The command's exit status and output pass through. Example:
    /// `weir lab exec frontend/web -- ping -c1 10.244.0.1`
    Exec {
        /// The lab (in a mesh: the cluster); may be left out when exactly one lab is up.
        #[arg(long, env = "WEIR_LAB")]
        lab: Option<String>,
        /// The pod, as NAMESPACE/NAME; or an external host or edge client, by name.
        pod: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// The lab spec (see examples/lab.yaml).
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Build the network only; start no agents.
    #[arg(long)]
    no_agents: bool,
    /// Log level for the agents (error, warn, info, debug, trace).
    #[arg(long, default_value = "info")]
    agent_log_level: String,
    /// A flag for every agent this starts, e.g. --agent-arg=--runtime-ring-bytes=65536
    /// (see `weir agent --help`); repeat for several.
    #[arg(long = "agent-arg", value_name = "FLAG", allow_hyphen_values = true)]
    agent_args: Vec<String>,
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
}

pub fn run(cmd: LabCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        LabCommand::Up(args) => up(args),
        LabCommand::Down { name } => {
            let report = runtime::down(&name)?;
            println!(
                "lab {} down in {} ms: {} namespaces removed, {} processes killed{}{}",
                report.name,
                report.elapsed_ms,
                report.netns_removed,
                report.processes_killed,
                if report.cgroups_removed { ", cgroups removed" } else { "" },
                if report.pins_removed { ", pins removed" } else { "" },
            );
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::List { output } => {
            let labs = runtime::list();
            match output {
                Format::Json => output::json(&labs)?,
                Format::Table => {
                    let rows: Vec<Vec<String>> = labs
                        .iter()
                        .map(|l| {
                            vec![
                                l.name.clone(),
                                l.state.clone(),
                                l.nodes.to_string(),
                                l.pods.to_string(),
                                format!("{}/{}", l.agents_running, l.nodes),
                            ]
                        })
                        .collect();
                    print!("{}", output::table(&["NAME", "STATE", "NODES", "PODS", "AGENTS"], &rows));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Status { name, output } => {
            let clusters = weir_lab::mesh_runtime::clusters_of(&name);
            if clusters.is_empty() {
                status(&name, output)?;
            } else {
                if output == Format::Table {
                    println!("mesh {name}: clusters {}", clusters.join(", "));
                }
                for cluster in clusters {
                    status(&cluster, output)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Exec { lab, pod, command } => {
            let lab = runtime::resolve_lab(lab.as_deref())?;
            let status = runtime::exec(&lab, &pod, &command)?;
            use std::os::unix::process::ExitStatusExt;
            // Like a shell: a command killed by signal N exits 128+N.
            let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
        }
    }
}

/// One lab's (or one cluster's) members and their health.
fn status(name: &str, output: Format) -> anyhow::Result<()> {
    let (plan, members) = runtime::status(name)?;
    match output {
        Format::Json => output::json(&members)?,
        Format::Table => {
            let cluster = plan
                .mesh
                .as_ref()
                .map(|m| format!(", cluster {} of mesh {}", m.cluster_id, m.mesh))
                .unwrap_or_default();
            println!("lab {} (fabric {}{cluster})", plan.name, plan.fabric_cidr);
            let rows: Vec<Vec<String>> = members
                .iter()
                .map(|m| {
                    let health = match (m.netns_present, m.kind, m.agent_pid) {
                        (false, _, _) => "missing netns".to_string(),
                        (true, "node" | "loadbalancer", Some(pid)) => format!("ok, agent pid {pid}"),
                        (true, "node" | "loadbalancer", None) => "agent not running".to_string(),
                        _ => "ok".to_string(),
                    };
                    vec![m.kind.to_string(), m.name.clone(), m.address.clone(), health, m.detail.clone()]
                })
                .collect();
            print!("{}", output::table(&["KIND", "NAME", "ADDRESS", "HEALTH", "DETAIL"], &rows));
        }
    }
    Ok(())
}

fn up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let options = runtime::UpOptions {
        agent_exe: if args.no_agents {
            None
        } else {
            Some(std::env::current_exe().context("locating the weir binary")?)
        },
        agent_args: ["--log-level".to_string(), args.agent_log_level].into_iter().chain(args.agent_args).collect(),
    };
    if weir_lab::mesh::document_kind(&text).as_deref() == Some(weir_lab::mesh::KIND) {
        let mesh = MeshSpec::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
        let report = weir_lab::mesh_runtime::up(&mesh, &options)?;
        match args.output {
            Format::Json => output::json(&report)?,
            Format::Table => {
                let what = if report.built { "built" } else { "already up" };
                println!("mesh {} {what} in {} ms", report.name, report.elapsed_ms);
                for cluster in &report.clusters {
                    let what = if cluster.built { "built" } else { "already up" };
                    let agents = if cluster.agents_started.is_empty() {
                        String::new()
                    } else {
                        format!(", agents started on: {}", cluster.agents_started.join(", "))
                    };
                    println!("  cluster {} {what}{agents}", cluster.name);
                }
                println!(
                    "next: weir lab status {}   |   weir lab exec --lab CLUSTER NAMESPACE/POD -- CMD   |   weir lab down {}",
                    report.name, report.name
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let spec = LabSpec::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let report = runtime::up(&spec, &options)?;
    match args.output {
        Format::Json => output::json(&report)?,
        Format::Table => {
            let what = if report.built { "built" } else { "already up" };
            println!("lab {} {what} in {} ms", report.name, report.elapsed_ms);
            if !report.agents_started.is_empty() {
                println!("agents started on: {}", report.agents_started.join(", "));
            }
            if !report.built {
                let follow = match report.agents_applied_ms {
                    Some(ms) => format!("applied by the agents in {ms} ms"),
                    None => "the agents follow".to_string(),
                };
                for (verb, pods) in [("created", &report.pods_added), ("deleted", &report.pods_removed)] {
                    if !pods.is_empty() {
                        println!("pods {verb}: {} ({follow})", pods.join(", "));
                    }
                }
                if !report.namespaces_changed.is_empty() {
                    println!("namespaces changed: {} ({follow})", report.namespaces_changed.join(", "));
                }
            }
            println!(
                "next: weir lab status {}   |   weir lab exec NAMESPACE/POD -- CMD   |   weir lab down {}",
                report.name, report.name
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
