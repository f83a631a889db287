//! `weir lb status`, `weir lb stats` (in `lb_stats`), `weir lb vip|real`
//! (in `lb_edit`) and `weir lb simulate`: the XDP L4 load balancer of the
//! nodes that run it (agent flag --lb-interface; configured with `weir
//! apply -f` of an XdpLoadBalancer), and the real servers' decapsulation.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Subcommand;
use weir_proto::agent::v1 as pb;

use super::client;
use super::target::AgentTarget;
use crate::output::Format;

#[derive(Debug, Subcommand)]
pub enum LbCommand {
    /// Each node's VIPs and reals with their packets and bytes, the
    /// connection table's hits and misses, drops by reason, and what the
    /// real servers decapsulated.
    Status {
        #[command(flatten)]
        target: AgentTarget,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// VIPs of the XdpLoadBalancer document: add, delete, list.
    #[command(subcommand)]
    Vip(super::lb_edit::VipCommand),
    /// Reals of a VIP: add (or reweigh), delete, drain.
    #[command(subcommand)]
    Real(super::lb_edit::RealCommand),
    /// Rates over an interval, as Katran's CLI prints them: packets and
    /// bits per second per VIP and per real, the connection table's hit
    /// ratio, the flood guard, and drops by reason.
    Stats {
        /// How long to count for.
        #[arg(long, default_value = "1s", value_parser = weir_spec::parse_duration)]
        interval: std::time::Duration,
        #[command(flatten)]
        target: AgentTarget,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Where a client's packet to a VIP goes: the VIP, the real and why, and
    /// the packet that leaves (run through a private copy of the program
    /// holding the node's tables).
    Simulate {
        /// The client, ADDRESS:PORT ([ADDRESS]:PORT for IPv6).
        #[arg(long)]
        client: SocketAddr,
        /// The VIP, ADDRESS:PORT.
        #[arg(long)]
        vip: SocketAddr,
        #[arg(long, default_value = "TCP", value_parser = ["TCP", "UDP", "tcp", "udp"])]
        protocol: String,
        /// A packet of an established TCP connection (an ACK), not a SYN.
        #[arg(long)]
        established: bool,
        #[command(flatten)]
        target: AgentTarget,
    },
}

pub fn run(cmd: LbCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        LbCommand::Status { target, output } => status(&target, output),
        LbCommand::Vip(cmd) => super::lb_edit::vip(cmd),
        LbCommand::Real(cmd) => super::lb_edit::real(cmd),
        LbCommand::Stats { interval, target, output } => super::lb_stats::stats(&target, interval, output),
        LbCommand::Simulate { client, vip, protocol, established, target } => {
            let request = pb::LbSimulateRequest {
                client: client.ip().to_string(),
                client_port: u32::from(client.port()),
                vip: vip.ip().to_string(),
                vip_port: u32::from(vip.port()),
                protocol,
                established,
            };
            for (node, reply) in target.ask_each(|mut c: client::LoadBalancer| {
                let request = request.clone();
                async move { c.lb_simulate(request).await }
            })? {
                println!("{node}:");
                if reply.vip.is_empty() {
                    println!("  VIP      none");
                } else {
                    println!("  VIP      {}", reply.vip);
                    println!("  real     {}", if reply.real.is_empty() { "none" } else { &reply.real });
                }
                println!("  why      {}", reply.why);
                println!("  verdict  {}", reply.verdict);
                println!("  out      {}", reply.out_summary);
                println!("  in  hex  {}", reply.packet_in);
                println!("  out hex  {}", reply.packet_out);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn counter_json(c: &Option<pb::LbCounter>) -> serde_json::Value {
    match c {
        Some(c) => serde_json::json!({"packets": c.packets, "bytes": c.bytes}),
        None => serde_json::Value::Null,
    }
}

fn status(target: &AgentTarget, output: Format) -> anyhow::Result<ExitCode> {
    let all =
        target.ask_each(|mut c: client::LoadBalancer| async move { c.lb_status(pb::LbStatusRequest {}).await })?;
    if output == Format::Json {
        let nodes: Vec<serde_json::Value> = all
            .iter()
            .map(|(node, s)| {
                serde_json::json!({
                    "node": node, "problem": s.problem, "interface": s.interface,
                    "nextHop": s.next_hop, "gatewayMac": s.gateway_mac,
                    "vips": s.vips.iter().map(|v| serde_json::json!({
                        "name": v.name, "address": v.address, "port": v.port, "protocol": v.protocol,
                        "forwarding": v.forwarding, "hash": v.hash, "lruBypass": v.lru_bypass, "local": v.local,
                        "packets": v.packets, "bytes": v.bytes,
                        "reals": v.reals.iter().map(|r| serde_json::json!({
                            "address": r.address, "port": r.port, "weight": r.weight, "slots": r.slots,
                            "packets": r.packets, "bytes": r.bytes, "probed": r.probed, "healthy": r.probed && !r.unhealthy,
                            "probe": r.probe, "probeFailure": r.probe_failure,
                        })).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                    "counters": s.counters.iter().map(|c| (c.name.clone(), serde_json::json!({"packets": c.packets, "bytes": c.bytes}))).collect::<serde_json::Map<_, _>>(),
                    "drops": s.drops.iter().map(|c| (c.name.clone(), serde_json::json!(c.packets))).collect::<serde_json::Map<_, _>>(),
                    "decapInterfaces": s.decap_interfaces,
                    "decapsulated": counter_json(&s.decapsulated),
                    "decapFailed": counter_json(&s.decap_failed),
                    "leftOut": s.left_out,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&nodes)?);
        return Ok(ExitCode::SUCCESS);
    }
    for (node, s) in &all {
        if !s.problem.is_empty() {
            println!("{node}: the XDP load balancer is {}", s.problem);
            continue;
        }
        if !s.interface.is_empty() {
            let next_hop = match (s.next_hop.as_str(), s.gateway_mac.as_str()) {
                ("", _) => String::new(),
                (hop, "") => format!(", next hop {hop}"),
                (hop, mac) => format!(", next hop {hop} {mac}"),
            };
            println!("{node}: balancing at XDP on {}{next_hop}", s.interface);
            println!(
                "  {:<16} {:<28} {:<9} {:<6} {:>10} {:>12}  REALS (weight, ring slots, packets, probe and health)",
                "VIP", "ADDRESS", "FORWARD", "FLAGS", "PACKETS", "BYTES"
            );
            for v in &s.vips {
                let mut flags = Vec::new();
                match v.hash.as_str() {
                    "ClientAddress" => flags.push("nosport"),
                    "DestinationPort" => flags.push("dport"),
                    _ => {}
                }
                if v.lru_bypass {
                    flags.push("nolru");
                }
                if v.local {
                    flags.push("local");
                }
                let reals: Vec<String> = v
                    .reals
                    .iter()
                    .map(|r| {
                        let at = if r.port == 0 { r.address.clone() } else { format!("{}:{}", r.address, r.port) };
                        let health = match (r.probed, r.unhealthy) {
                            (false, _) => String::new(),
                            (true, false) => format!(", {} up", r.probe),
                            (true, true) => format!(", {} DOWN: {}", r.probe, r.probe_failure),
                        };
                        format!("{at} ({}, {}, {}{health})", r.weight, r.slots, r.packets)
                    })
                    .collect();
                let port = if v.port == 0 { "*".to_string() } else { v.port.to_string() };
                println!(
                    "  {:<16} {:<28} {:<9} {:<6} {:>10} {:>12}  {}",
                    v.name,
                    format!("{}:{port}/{}", v.address, v.protocol),
                    v.forwarding,
                    if flags.is_empty() { "-".into() } else { flags.join(",") },
                    v.packets,
                    v.bytes,
                    reals.join(" ")
                );
            }
            let counters: Vec<String> = s.counters.iter().map(|c| format!("{} {}", c.name, c.packets)).collect();
            println!("  counters: {}", counters.join(", "));
            if !s.drops.is_empty() {
                let drops: Vec<String> = s.drops.iter().map(|c| format!("{} {}", c.name, c.packets)).collect();
                println!("  dropped: {}", drops.join(", "));
            }
            for line in &s.left_out {
                println!("  not served: {line}");
            }
        }
        if !s.decap_interfaces.is_empty() {
            let done = s.decapsulated.as_ref().map(|c| c.packets).unwrap_or(0);
            let failed = s.decap_failed.as_ref().map(|c| c.packets).unwrap_or(0);
            println!(
                "{node}: real server, decapsulating on {}: {done} packets stripped, {failed} refused",
                s.decap_interfaces.join(", ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
