//! `weir service`: the services the socket load balancer holds, read from
//! each node's kernel, with connection counters.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Subcommand;
use weir_proto::agent::v1 as pb;

use super::client;
use super::target::AgentTarget;
use crate::output::{self, Format};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Every service port with its frontends and backend counts.
    List {
        /// Only this namespace.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[command(flatten)]
        target: AgentTarget,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// One service: each frontend and every backend with its state and connections.
    Get {
        /// NAMESPACE/NAME, or NAME with -n.
        service: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[command(flatten)]
        target: AgentTarget,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// The frontend -> backend table the kernel holds for IP:PORT: slot 0,
    /// every backend slot in order, and the counters.
    Explain {
        /// The service address, e.g. 10.96.0.10:80.
        address: SocketAddr,
        #[arg(long, value_enum, default_value = "tcp")]
        protocol: Protocol,
        #[command(flatten)]
        target: AgentTarget,
    },
}

fn list_all(target: &AgentTarget) -> anyhow::Result<Vec<(String, pb::ServiceListResponse)>> {
    let rt = client::runtime()?;
    let mut out = Vec::new();
    for (node, socket) in target.agents()? {
        let list = rt.block_on(async {
            anyhow::Ok(
                client::connect::<client::Services>(socket)
                    .await?
                    .service_list(pb::ServiceListRequest {})
                    .await?
                    .into_inner(),
            )
        })?;
        if !list.problem.is_empty() {
            eprintln!("{node}: the socket load balancer is not running: {}", list.problem);
        }
        out.push((node, list));
    }
    Ok(out)
}

fn backends_json(fe: &pb::ServiceFrontend) -> serde_json::Value {
    serde_json::json!(fe
        .backends
        .iter()
        .map(|b| serde_json::json!({"id": b.id, "address": b.address, "port": b.port, "state": b.state, "connects": b.connects, "nodeName": b.node_name, "zone": b.zone, "judgedBy": b.judged_by, "cluster": b.cluster}))
        .collect::<Vec<_>>())
}

fn frontend_json(node: &str, fe: &pb::ServiceFrontend) -> serde_json::Value {
    serde_json::json!({
        "node": node, "service": fe.service, "kind": fe.kind, "address": fe.address, "port": fe.port,
        "protocol": fe.protocol, "serviceId": fe.service_id, "algorithm": fe.algorithm,
        "affinityTimeout": fe.affinity_timeout, "noBackendErrno": fe.no_backend_errno, "healthCheck": fe.health_check,
        "slots": fe.slots, "active": fe.active, "connects": fe.connects, "noBackend": fe.no_backend,
        "sourceRanges": fe.source_ranges,
        "backends": backends_json(fe),
    })
}

/// The frontends `keep` selects, from every node, as one JSON array.
fn print_json(
    all: &[(String, pb::ServiceListResponse)],
    keep: impl Fn(&&pb::ServiceFrontend) -> bool + Copy,
) -> anyhow::Result<()> {
    let json: Vec<serde_json::Value> = all
        .iter()
        .flat_map(|(node, l)| l.frontends.iter().filter(keep).map(move |fe| frontend_json(node, fe)))
        .collect();
    output::json(&json)
}

/// Whose probe decides a backend's state, as `weir service get` says it
/// ("quarantined by node-b's probe").
fn judged_by(node: &str, b: &pb::ServiceBackend) -> String {
    let probe = match b.judged_by.as_str() {
        "" => return "-".to_string(),
        judge if judge == node => "this node's probe".to_string(),
        judge => format!("{judge}'s probe (shared)"),
    };
    match b.state.as_str() {
        "quarantined" => format!("quarantined by {probe}"),
        _ => format!("passes {probe}"),
    }
}

fn count(fe: &pb::ServiceFrontend, state: &str) -> usize {
    fe.backends.iter().filter(|b| b.state == state).count()
}

fn frontend_address(fe: &pb::ServiceFrontend) -> String {
    let ip: std::net::IpAddr = fe.address.parse().unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    format!("{}/{}", SocketAddr::new(ip, fe.port as u16), fe.protocol)
}

pub fn run(cmd: ServiceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ServiceCommand::List { namespace, target, output } => {
            let all = list_all(&target)?;
            let keep = |fe: &&pb::ServiceFrontend| {
                namespace.as_ref().is_none_or(|ns| fe.service.starts_with(&format!("{ns}/")))
            };
            match output {
                Format::Json => print_json(&all, keep)?,
                Format::Table => {
                    for (node, l) in &all {
                        println!("{node} (socket LB on {})", l.cgroup);
                        let rows: Vec<Vec<String>> = l
                            .frontends
                            .iter()
                            .filter(keep)
                            .map(|fe| {
                                vec![
                                    fe.service.clone(),
                                    fe.kind.clone(),
                                    frontend_address(fe),
                                    format!("{}/{}", fe.active, fe.backends.len()),
                                    count(fe, "terminating").to_string(),
                                    count(fe, "quarantined").to_string(),
                                    fe.algorithm.clone(),
                                    if fe.affinity_timeout > 0 {
                                        format!("ClientIP {}s", fe.affinity_timeout)
                                    } else {
                                        "-".into()
                                    },
                                    fe.connects.to_string(),
                                ]
                            })
                            .collect();
                        print!(
                            "{}",
                            output::table(
                                &[
                                    "SERVICE",
                                    "KIND",
                                    "FRONTEND",
                                    "ACTIVE",
                                    "TERMINATING",
                                    "QUARANTINED",
                                    "ALGORITHM",
                                    "AFFINITY",
                                    "CONNECTS"
                                ],
                                &rows
                            )
                        );
                    }
                }
            }
        }
        ServiceCommand::Get { service, namespace, target, output } => {
            let wanted = if service.contains('/') { service } else { format!("{namespace}/{service}") };
            let all = list_all(&target)?;
            let matches =
                |fe: &&pb::ServiceFrontend| fe.service == wanted || fe.service.starts_with(&format!("{wanted}:"));
            if !all.iter().any(|(_, l)| l.frontends.iter().any(|fe| matches(&fe))) {
                anyhow::bail!("no service {wanted} (see `weir service list`)");
            }
            match output {
                Format::Json => print_json(&all, matches)?,
                Format::Table => {
                    for (node, l) in &all {
                        for fe in l.frontends.iter().filter(matches) {
                            println!(
                                "{node}: {} {} {} ({} connections, {} with no backend)",
                                fe.service,
                                fe.kind,
                                frontend_address(fe),
                                fe.connects,
                                fe.no_backend
                            );
                            if !fe.source_ranges.is_empty() {
                                println!(
                                    "  loadBalancerSourceRanges: {} (other clients from outside the node are dropped)",
                                    fe.source_ranges.join(", ")
                                );
                            }
                            let rows: Vec<Vec<String>> = fe
                                .backends
                                .iter()
                                .map(|b| {
                                    vec![
                                        b.id.to_string(),
                                        format!("{}:{}", b.address, b.port),
                                        b.state.clone(),
                                        b.node_name.clone(),
                                        b.zone.clone(),
                                        if b.cluster.is_empty() { "-".into() } else { b.cluster.clone() },
                                        b.connects.to_string(),
                                        judged_by(node, b),
                                    ]
                                })
                                .collect();
                            print!(
                                "{}",
                                output::table(
                                    &["ID", "BACKEND", "STATE", "NODE", "ZONE", "CLUSTER", "CONNECTS", "HEALTH"],
                                    &rows
                                )
                            );
                        }
                    }
                }
            }
        }
        ServiceCommand::Explain { address, protocol, target } => {
            let protocol = match protocol {
                Protocol::Tcp => "TCP",
                Protocol::Udp => "UDP",
            };
            let mut found = false;
            for (node, l) in list_all(&target)? {
                for fe in l.frontends.iter().filter(|fe| {
                    fe.address.parse().ok() == Some(address.ip())
                        && fe.port == u32::from(address.port())
                        && fe.protocol == protocol
                }) {
                    found = true;
                    println!(
                        "{node}: {} -> {} ({}, service id {})",
                        frontend_address(fe),
                        fe.service,
                        fe.kind,
                        fe.service_id
                    );
                    let errno = match fe.no_backend_errno {
                        0 => "let through".to_string(),
                        n => format!("fail with errno {n}"),
                    };
                    println!(
                        "  slot 0: {} active of {} slots, {}{}, no backend: {errno}, health check {}",
                        fe.active,
                        fe.slots.len(),
                        fe.algorithm,
                        if fe.affinity_timeout > 0 {
                            format!(", ClientIP affinity {}s", fe.affinity_timeout)
                        } else {
                            String::new()
                        },
                        fe.health_check
                    );
                    for (i, id) in fe.slots.iter().enumerate() {
                        let b = fe.backends.iter().find(|b| b.id == *id);
                        let role = if i < fe.active as usize { "takes new connections" } else { "no new connections" };
                        match b {
                            Some(b) => println!(
                                "  slot {}: backend {id} {}:{} {} ({role}, {} connections)",
                                i + 1,
                                b.address,
                                b.port,
                                b.state,
                                b.connects
                            ),
                            None => println!("  slot {}: backend {id} (missing from the backend map)", i + 1),
                        }
                    }
                    println!("  counters: {} translated, {} found no backend", fe.connects, fe.no_backend);
                }
            }
            if !found {
                anyhow::bail!("no frontend {address}/{protocol} in the kernel (see `weir service list`)");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
