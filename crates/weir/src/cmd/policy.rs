//! `weir policy`: what the nodes enforce, and which rule decides a given
//! flow. Policies are applied with `weir apply -f`; flows are `weir observe`.

use std::process::ExitCode;

use clap::Subcommand;
use weir_proto::agent::v1 as pb;

use super::client;
use super::target::AgentTarget;
use crate::output::{self, Format};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Each node's policies and the pods they select, its pods' enforcement,
    /// identities, and where identity numbers come from.
    List {
        #[command(flatten)]
        target: AgentTarget,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
    },
    /// Which rule decides traffic from SOURCE to DESTINATION on PORT/PROTO.
    ///
    /// The source pod's egress policy and the destination pod's ingress
    /// policy, evaluated as the kernel evaluates them.
    ///
    /// Example: weir policy explain frontend/web backend/api 80/TCP
    #[command(verbatim_doc_comment)]
    Explain {
        /// NAMESPACE/POD or an IPv4 address.
        source: String,
        /// NAMESPACE/POD or an IPv4 address.
        destination: String,
        /// PORT/PROTOCOL, e.g. 80/TCP, 53/UDP, 0/ICMP.
        port: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Format,
        #[command(flatten)]
        target: AgentTarget,
    },
}

fn endpoint_name(e: Option<&pb::FlowEndpoint>) -> String {
    let Some(e) = e else { return "?".into() };
    let who = if !e.pod.is_empty() {
        format!("{}/{}", e.namespace, e.pod)
    } else if !e.identity_name.is_empty() {
        format!("{} ({})", e.ip, e.identity_name)
    } else {
        e.ip.clone()
    };
    format!("{who} [{}]", e.identity)
}

fn endpoint_json(e: Option<&pb::FlowEndpoint>) -> serde_json::Value {
    e.map_or(serde_json::Value::Null, |e| {
        serde_json::json!({
            "ip": e.ip, "identity": e.identity, "identityName": e.identity_name,
            "namespace": e.namespace, "pod": e.pod, "labels": e.labels,
        })
    })
}

fn parse_port(text: &str) -> anyhow::Result<(u32, String)> {
    let (port, proto) = text.split_once('/').unwrap_or((text, "TCP"));
    let port: u16 =
        port.parse().map_err(|_| anyhow::anyhow!("{text:?}: the port is not a number (PORT/PROTO, e.g. 80/TCP)"))?;
    Ok((u32::from(port), proto.to_uppercase()))
}

fn verdict_line(direction: &str, v: Option<&pb::PolicyVerdict>) -> String {
    match v {
        None => format!("{direction:<7} not a pod: no {direction} policy applies"),
        Some(v) if v.rule.is_empty() => format!("{direction:<7} of {:<20} {}", v.endpoint, v.decision),
        Some(v) => format!("{direction:<7} of {:<20} {} by {}", v.endpoint, v.decision, v.rule),
    }
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    let rt = client::runtime()?;
    match cmd {
        PolicyCommand::Explain { source, destination, port, output, target } => {
            let (port, protocol) = parse_port(&port)?;
            let (node, socket) =
                target.agents()?.into_iter().next().ok_or_else(|| anyhow::anyhow!("no agent to ask"))?;
            let request = pb::PolicyExplainRequest { source, destination, port, protocol: protocol.clone() };
            let reply = rt
                .block_on(async {
                    anyhow::Ok(
                        client::connect::<client::NetworkPolicy>(socket)
                            .await?
                            .policy_explain(request)
                            .await?
                            .into_inner(),
                    )
                })
                .map_err(|e| anyhow::anyhow!("{node}: {}", client::status_message(&e)))?;
            if output == Format::Json {
                let verdict = |v: Option<&pb::PolicyVerdict>| {
                    v.map(|v| serde_json::json!({"endpoint": v.endpoint, "decision": v.decision, "rule": v.rule, "cidrNotes": v.cidr_notes}))
                };
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "source": endpoint_json(reply.source.as_ref()),
                        "destination": endpoint_json(reply.destination.as_ref()),
                        "port": port, "protocol": protocol,
                        "egress": verdict(reply.egress.as_ref()), "ingress": verdict(reply.ingress.as_ref()),
                        "allowed": reply.allowed,
                    }))?
                );
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{} -> {} {protocol}/{port}",
                endpoint_name(reply.source.as_ref()),
                endpoint_name(reply.destination.as_ref())
            );
            for (direction, verdict) in [("egress", reply.egress.as_ref()), ("ingress", reply.ingress.as_ref())] {
                println!("  {}", verdict_line(direction, verdict));
                for note in verdict.iter().flat_map(|v| &v.cidr_notes) {
                    println!("          {note}");
                }
            }
            println!("verdict: {}", if reply.allowed { "ALLOWED" } else { "DENIED" });
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::List { target, output } => {
            let all = target.ask_each(|mut c: client::NetworkPolicy| async move {
                c.policy_list(pb::PolicyListRequest {}).await
            })?;
            if output == Format::Json {
                let nodes: Vec<serde_json::Value> = all
                    .iter()
                    .map(|(node, l)| {
                        serde_json::json!({
                            "node": node, "problem": l.problem, "allocator": l.allocator, "revision": l.revision,
                            "policies": l.policies.iter().map(|p| serde_json::json!({"name": p.name, "selects": p.selects})).collect::<Vec<_>>(),
                            "identities": l.identities.iter().map(|i| serde_json::json!({"id": i.id, "labels": i.labels})).collect::<Vec<_>>(),
                            "endpoints": l.endpoints.iter().map(|e| serde_json::json!({"pod": e.pod, "ip": e.ip, "identity": e.identity, "ingressEnforced": e.ingress_enforced, "egressEnforced": e.egress_enforced, "entries": e.entries})).collect::<Vec<_>>(),
                            "ipcache": l.ipcache.iter().map(|e| serde_json::json!({"cidr": e.cidr, "identity": e.identity, "tunnelEndpoint": e.tunnel_endpoint, "addressIdentity": e.address_identity})).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&nodes)?);
                return Ok(ExitCode::SUCCESS);
            }
            for (node, l) in &all {
                if !l.problem.is_empty() {
                    println!("{node}: network policy is not running: {}", l.problem);
                    continue;
                }
                println!(
                    "{node}: {} policies, {} identities (allocated by {}), revision {}",
                    l.policies.len(),
                    l.identities.len(),
                    l.allocator,
                    l.revision
                );
                for p in &l.policies {
                    println!(
                        "  {} selects {}",
                        p.name,
                        if p.selects.is_empty() { "no pod".into() } else { p.selects.join(", ") }
                    );
                }
                let rows: Vec<Vec<String>> = l
                    .endpoints
                    .iter()
                    .map(|e| {
                        let on = |b: bool| if b { "enforced" } else { "-" }.to_string();
                        vec![
                            e.pod.clone(),
                            e.ip.clone(),
                            e.identity.to_string(),
                            on(e.ingress_enforced),
                            on(e.egress_enforced),
                            e.entries.to_string(),
                        ]
                    })
                    .collect();
                print!("{}", output::table(&["POD", "IP", "IDENTITY", "INGRESS", "EGRESS", "ENTRIES"], &rows));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
