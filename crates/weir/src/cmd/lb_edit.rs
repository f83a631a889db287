//! `weir lb vip add|del|list` and `weir lb real add|del|drain`: Katran's
//! imperative commands, each one change to the XdpLoadBalancer document
//! every load balancer addressed holds, checked and applied whole there.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use weir_lb::health::HealthCheckSpec;
use weir_lb::spec::VipSpec;
use weir_proto::agent::v1 as pb;

use super::apply::ask;
use super::client;
use super::target::AgentTarget;
use crate::output::{self, Format};

#[derive(Debug, Subcommand)]
pub enum VipCommand {
    /// Adds a VIP to the document (give it reals with `weir lb real add`).
    Add {
        /// The VIP's name, a DNS label.
        name: String,
        /// Its address, IPv4 or IPv6.
        #[arg(long)]
        address: IpAddr,
        /// Its port; 0: any port.
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[arg(long, default_value = "TCP", value_parser = ["TCP", "UDP"])]
        protocol: String,
        /// How packets reach the reals [default: IPIP].
        #[arg(long, value_parser = ["IPIP", "GUE", "NAT"])]
        forwarding: Option<String>,
        /// What picks a connection's real on the ring [default: ClientAddressAndPort].
        #[arg(long, value_parser = ["ClientAddressAndPort", "ClientAddress", "DestinationPort"])]
        hash: Option<String>,
        /// No connection table: every packet takes the ring.
        #[arg(long)]
        lru_bypass: bool,
        /// Deliver to this node's stack instead of forwarding.
        #[arg(long)]
        local: bool,
        /// UDP: QUIC short headers go to the real their connection id names.
        #[arg(long)]
        quic: bool,
        /// How each real is probed: tcp, http:/PATH, dns, udp:PAYLOAD or none
        /// [default: tcp for a TCP VIP with a port, none otherwise].
        #[arg(long, value_name = "CHECK")]
        health_check: Option<String>,
        /// The port probed [default: the VIP's].
        #[arg(long, requires = "health_check")]
        health_check_port: Option<u16>,
        #[command(flatten)]
        target: AgentTarget,
    },
    /// Deletes a VIP of the document: its connections end.
    Del {
        name: String,
        #[command(flatten)]
        target: AgentTarget,
    },
    /// Each load balancer's VIPs: the document's and the Services'.
    List {
        #[command(flatten)]
        target: AgentTarget,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
}

#[derive(Debug, Subcommand)]
pub enum RealCommand {
    /// Adds a real to a VIP, or with --weight changes an existing one's.
    Add {
        vip: String,
        address: IpAddr,
        /// Relative weight [default: 1 for a new real]; 0 drains it.
        #[arg(long)]
        weight: Option<u32>,
        /// NAT VIPs: the port the real listens on [default: the VIP's].
        #[arg(long)]
        port: Option<u16>,
        #[command(flatten)]
        target: AgentTarget,
    },
    /// Deletes a real from a VIP: its connections move to the others.
    Del {
        vip: String,
        address: IpAddr,
        #[arg(long)]
        port: Option<u16>,
        #[command(flatten)]
        target: AgentTarget,
    },
    /// Drains a real (weight 0): new connections go to the others, its
    /// established ones stay.
    Drain {
        vip: String,
        address: IpAddr,
        #[arg(long)]
        port: Option<u16>,
        #[command(flatten)]
        target: AgentTarget,
    },
}

/// `--health-check` as the document writes it.
fn health_check(text: &str, port: Option<u16>) -> anyhow::Result<HealthCheckSpec> {
    let (kind, path, payload) = match text {
        "none" => ("None", None, None),
        "tcp" => ("TCP", None, None),
        "dns" => ("DNS", None, None),
        _ => match (text.strip_prefix("http:"), text.strip_prefix("udp:")) {
            (Some(path), _) => ("HTTP", Some(path.to_string()), None),
            (_, Some(payload)) => ("UDP", None, Some(payload.to_string())),
            _ => anyhow::bail!("--health-check {text:?}: use tcp, http:/PATH, dns, udp:PAYLOAD or none"),
        },
    };
    Ok(HealthCheckSpec { kind: kind.into(), path, payload, port })
}

fn real_edit(vip: String, address: IpAddr, port: Option<u16>, weight: Option<u32>) -> pb::LbRealEdit {
    pb::LbRealEdit { vip, address: address.to_string(), port: u32::from(port.unwrap_or(0)), weight }
}

/// Of `agents` (node, socket), those that run the XDP load balancer, with
/// its interface; an error when none does.
pub(super) fn balancers(
    rt: &tokio::runtime::Runtime,
    agents: &[(String, PathBuf)],
) -> anyhow::Result<Vec<(String, PathBuf, String)>> {
    let mut out = Vec::new();
    for (node, socket) in agents {
        let status =
            ask(
                rt,
                node,
                socket,
                |mut c: client::LoadBalancer| async move { c.lb_status(pb::LbStatusRequest {}).await },
            )?;
        if !status.interface.is_empty() {
            out.push((node.clone(), socket.clone(), status.interface));
        }
    }
    if out.is_empty() {
        anyhow::bail!("no agent here runs the XDP load balancer (agent flag --lb-interface)");
    }
    Ok(out)
}

/// Sends `edit` to every agent addressed that runs the load balancer.
fn send(target: &AgentTarget, edit: pb::lb_edit_request::Edit) -> anyhow::Result<ExitCode> {
    let rt = client::runtime()?;
    let request = pb::LbEditRequest { edit: Some(edit) };
    let mut took = Vec::new();
    for (node, socket, _) in balancers(&rt, &target.agents()?)? {
        let request = request.clone();
        match ask(&rt, &node, &socket, |mut c: client::LoadBalancer| async move { c.lb_edit(request).await }) {
            Ok(reply) => println!("{node}: {}", reply.changes.join("; ")),
            // Load balancers behind one ECMP route must hold the same
            // document: say which ones now differ.
            Err(e) if !took.is_empty() => {
                anyhow::bail!("{e}\n(already changed: {}; they now differ from {node} and the rest)", took.join(", "))
            }
            Err(e) => return Err(e),
        }
        took.push(node);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn vip(cmd: VipCommand) -> anyhow::Result<ExitCode> {
    use pb::lb_edit_request::Edit;
    match cmd {
        VipCommand::Add {
            name,
            address,
            port,
            protocol,
            forwarding,
            hash,
            lru_bypass,
            local,
            quic,
            health_check: check,
            health_check_port,
            target,
        } => {
            let vip = VipSpec {
                name,
                address: address.to_string(),
                port,
                protocol,
                forwarding,
                hash,
                lru_bypass,
                local,
                quic,
                reals: Vec::new(),
                source_routes: Vec::new(),
                health_check: check.as_deref().map(|c| health_check(c, health_check_port)).transpose()?,
            };
            send(&target, Edit::VipAdd(serde_json::to_string(&vip)?))
        }
        VipCommand::Del { name, target } => send(&target, Edit::VipDelete(name)),
        VipCommand::List { target, output } => list(&target, output),
    }
}

pub fn real(cmd: RealCommand) -> anyhow::Result<ExitCode> {
    use pb::lb_edit_request::Edit;
    match cmd {
        RealCommand::Add { vip, address, weight, port, target } => {
            send(&target, Edit::RealAdd(real_edit(vip, address, port, weight)))
        }
        RealCommand::Del { vip, address, port, target } => {
            send(&target, Edit::RealDelete(real_edit(vip, address, port, None)))
        }
        RealCommand::Drain { vip, address, port, target } => {
            send(&target, Edit::RealDrain(real_edit(vip, address, port, None)))
        }
    }
}

fn list(target: &AgentTarget, format: Format) -> anyhow::Result<ExitCode> {
    let statuses =
        target.ask_each(|mut c: client::LoadBalancer| async move { c.lb_status(pb::LbStatusRequest {}).await })?;
    let mut rows = Vec::new();
    let mut json = Vec::new();
    for (node, status) in statuses.iter().filter(|(_, s)| !s.interface.is_empty()) {
        for v in &status.vips {
            let port = if v.port == 0 { "*".to_string() } else { v.port.to_string() };
            let from = if v.name.contains('/') { "Service" } else { "document" };
            let reals: Vec<String> = v.reals.iter().map(|r| format!("{}×{}", r.address, r.weight)).collect();
            json.push(serde_json::json!({
                "node": node, "name": v.name, "address": v.address, "port": v.port, "protocol": v.protocol,
                "forwarding": v.forwarding, "from": from,
                "reals": v.reals.iter().map(|r| serde_json::json!({"address": r.address, "port": r.port, "weight": r.weight})).collect::<Vec<_>>(),
            }));
            rows.push(vec![
                node.clone(),
                v.name.clone(),
                format!("{}:{port}/{}", v.address, v.protocol),
                v.forwarding.clone(),
                from.to_string(),
                if reals.is_empty() { "-".into() } else { reals.join(" ") },
            ]);
        }
    }
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!("{}", output::table(&["NODE", "VIP", "ADDRESS", "FORWARD", "FROM", "REALS (address×weight)"], &rows));
    }
    Ok(ExitCode::SUCCESS)
}
