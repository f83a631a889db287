//! `weir observe` (who talked to whom, and why a packet died, live from
//! every node) and `weir policy` (what the nodes enforce, and which rule
//! decides a given flow). Policies are applied with `weir apply -f`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use weir_agent::client::connect;
use weir_proto::agent::v1 as pb;

use super::target::AgentTarget;
use crate::output::{self, Format};

/// Follow flows on the pod path: who talked to whom, and why a packet died.
///
/// Live from every node: each new flow a policy allowed, and every packet
/// dropped with its reason, with both ends' pod, namespace, labels and
/// identity, and the rule that decided.
///
/// Without --last it follows until interrupted; with --last N it prints the
/// N most recent flows each node remembers, and follows only with --follow.
///
/// Examples:
///   weir observe --verdict dropped
///   weir observe --last 20 --to-pod backend/api --label app=web
///   weir observe --pod frontend --protocol TCP --count 10 -o json
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ObserveArgs {
    /// Only flows from or to this pod (NAMESPACE/NAME) or namespace (NAMESPACE).
    #[arg(long)]
    pod: Option<String>,
    /// Only flows from this pod (NAMESPACE/NAME) or namespace.
    #[arg(long)]
    from_pod: Option<String>,
    /// Only flows to this pod (NAMESPACE/NAME) or namespace.
    #[arg(long)]
    to_pod: Option<String>,
    /// Only flows with this security identity on either side.
    #[arg(long)]
    identity: Option<u32>,
    /// Only flows with a pod carrying KEY=VALUE on either side; repeat to require several.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Only forwarded (new flows allowed) or dropped packets.
    #[arg(long, value_parser = ["forwarded", "dropped"])]
    verdict: Option<String>,
    /// Only this protocol: TCP, UDP, ICMP or SCTP.
    #[arg(long, value_parser = ["TCP", "UDP", "ICMP", "SCTP"], ignore_case = true)]
    protocol: Option<String>,
    /// First the N most recent flows of each node (up to 8192 are kept).
    #[arg(long, value_name = "N")]
    last: Option<u32>,
    /// With --last: then follow, live.
    #[arg(short = 'f', long, requires = "last")]
    follow: bool,
    /// Stop after this many flows [default: follow until interrupted].
    #[arg(long)]
    count: Option<usize>,
    /// Stop after this long, e.g. 30s [default: follow until interrupted].
    #[arg(long, value_parser = super::profile::parse_duration)]
    timeout: Option<Duration>,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: ObserveFormat,
    #[command(flatten)]
    target: AgentTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ObserveFormat {
    /// One line per flow, for reading.
    Text,
    /// One JSON object per line, Weir's fields.
    Json,
    /// One JSON object per line, Hubble's: a GetFlowsResponse as
    /// `hubble observe -o jsonpb` prints it (see docs/observe.md).
    Jsonpb,
}

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

fn hubble_flow_json(f: &pb::Flow) -> serde_json::Value {
    // The agent sends Hubble's form when asked; an agent too old to know
    // the field sends none.
    f.hubble.as_ref().map_or_else(
        || serde_json::json!({"error": format!("{}: the agent did not send Hubble's form of this flow", f.node)}),
        super::hubble_json::response,
    )
}

fn flow_json(f: &pb::Flow) -> serde_json::Value {
    serde_json::json!({
        "node": f.node, "timeUnixNs": f.time_unix_ns, "verdict": f.verdict, "dropReason": f.drop_reason,
        "dropReasonCode": f.drop_reason_code, "direction": f.direction, "protocol": f.protocol,
        "source": endpoint_json(f.source.as_ref()), "destination": endpoint_json(f.destination.as_ref()),
        "sourcePort": f.source_port, "destinationPort": f.destination_port, "rule": f.rule, "match": f.r#match,
        "tcpFlags": f.tcp_flags,
    })
}

fn tcp_flags(flags: u32) -> String {
    let names = [(0x02, "SYN"), (0x10, "ACK"), (0x01, "FIN"), (0x04, "RST"), (0x08, "PSH")];
    names.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, n)| *n).collect::<Vec<_>>().join("|")
}

fn flow_line(f: &pb::Flow) -> String {
    let time = crate::output::clock(f.time_unix_ns);
    let ports = |p: u32| if p == 0 { String::new() } else { format!(":{p}") };
    let flags = if f.protocol == "TCP" { format!(" {}", tcp_flags(f.tcp_flags)) } else { String::new() };
    let why = match (f.verdict.as_str(), f.r#match.as_str()) {
        ("dropped", _) if !f.rule.is_empty() => format!("DROPPED ({}) by {}", f.drop_reason, f.rule),
        ("dropped", "default_deny") => format!("DROPPED ({}): {} default deny", f.drop_reason, f.direction),
        ("dropped", _) => format!("DROPPED ({})", f.drop_reason),
        (_, "rule") => format!("FORWARDED {} allowed by {}", f.direction, f.rule),
        _ => format!("FORWARDED ({} not enforced)", f.direction),
    };
    format!(
        "{time} {:<8} {}{} -> {}{} {}{flags}  {why}",
        f.node,
        endpoint_name(f.source.as_ref()),
        ports(f.source_port),
        endpoint_name(f.destination.as_ref()),
        ports(f.destination_port),
        f.protocol,
    )
}

pub fn observe(args: ObserveArgs) -> anyhow::Result<ExitCode> {
    for (flag, pod) in [("--pod", &args.pod), ("--from-pod", &args.from_pod), ("--to-pod", &args.to_pod)] {
        if let Some(pod) = pod {
            args.target.check_pod(flag, pod, true)?;
        }
    }
    let request = pb::FlowsRequest {
        pod: args.pod.clone().unwrap_or_default(),
        verdict: args.verdict.clone().unwrap_or_default(),
        protocol: args.protocol.clone().map(|p| p.to_uppercase()).unwrap_or_default(),
        last: args.last.unwrap_or(0),
        follow: args.last.is_none() || args.follow,
        from_pod: args.from_pod.clone().unwrap_or_default(),
        to_pod: args.to_pod.clone().unwrap_or_default(),
        identity: args.identity.unwrap_or(0),
        labels: args.labels.clone(),
        hubble: args.output == ObserveFormat::Jsonpb,
    };
    super::follow::print_all(
        args.target.agents()?,
        move |mut client| {
            let request = request.clone();
            async move { client.flows(request).await }
        },
        super::follow::Limits { count: args.count, timeout: args.timeout },
        args.output != ObserveFormat::Text,
        if args.output == ObserveFormat::Jsonpb { hubble_flow_json } else { flow_json },
        flow_line,
    )
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
    let rt = super::filter::runtime()?;
    match cmd {
        PolicyCommand::Explain { source, destination, port, output, target } => {
            let (port, protocol) = parse_port(&port)?;
            let (node, socket) =
                target.agents()?.into_iter().next().ok_or_else(|| anyhow::anyhow!("no agent to ask"))?;
            let request = pb::PolicyExplainRequest { source, destination, port, protocol: protocol.clone() };
            let reply = rt
                .block_on(async { anyhow::Ok(connect(socket).await?.policy_explain(request).await?.into_inner()) })
                .map_err(|e| anyhow::anyhow!("{node}: {}", super::status_message(&e)))?;
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
            let all = target.ask_each(|mut c| async move { c.policy_list(pb::PolicyListRequest {}).await })?;
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
