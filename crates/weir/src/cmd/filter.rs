//! `weir filter`: live packet-of-death patching at XDP.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use weir_filter::spec::{Action, ByteBase, BytesMatch, Icmp, MatchSpec, Range, RateLimit, RatePer, TcpFlag, TcpFlags};
use weir_filter::{FilterPolicy, RuleSpec};
use weir_proto::agent::v1::{self as pb, filter_update_request::Mode};

use super::client;
use super::target::AgentTarget;
use crate::output::{self, Format};

/// Drop, rate-limit or audit packets at XDP, changed live with nothing lost.
///
/// Rules match any combination of interface, source/destination CIDR,
/// protocol, ports or port ranges, TCP flags, ICMP type/code, length,
/// fragments, IPv4 options, TTL and raw bytes — or a full tcpdump
/// expression. The matching rule with the lowest priority wins (ties: the
/// rule added first); no match passes. Examples:
///
///   weir filter add --expr 'udp dst port 53 and udp[10] & 0x80 != 0' --action drop
///
///   weir filter add block-net --src 203.0.113.0/24 --action drop
///
///   weir filter add ssh-syn --proto tcp --dport 22 --tcp-flags syn,ack/syn --action rate-limit --rate 50 --per source
///
///   weir filter apply -f examples/filter.yaml
#[derive(Debug, Subcommand)]
pub enum FilterCommand {
    /// Add a rule (or change a rule of the same name).
    Add(Box<AddArgs>),
    /// Remove rules by name.
    Del {
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        target: AgentTarget,
        /// Name every rule removed, not only the first few.
        #[arg(short, long)]
        verbose: bool,
    },
    /// List the rules with their counters.
    List {
        #[command(flatten)]
        target: AgentTarget,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Packet rates and top rules, measured over an interval.
    Stats {
        #[command(flatten)]
        target: AgentTarget,
        #[arg(long, default_value = "1s", value_parser = weir_spec::parse_duration, allow_negative_numbers = true)]
        interval: Duration,
        /// Rules to show.
        #[arg(long, default_value_t = 10, allow_negative_numbers = true)]
        top: usize,
    },
    /// Stream sampled packets matched by drop, rate-limit and audit rules.
    Trace {
        #[command(flatten)]
        target: AgentTarget,
        /// Sample one matching packet in N.
        #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
        every: u32,
        /// Stop after this many packets.
        #[arg(long, allow_negative_numbers = true)]
        count: Option<u64>,
        /// Write the packets to a pcap file that tcpdump and Wireshark read.
        #[arg(short = 'w', long)]
        write: Option<PathBuf>,
    },
    /// Apply a FilterPolicy document: its rules replace the rules it applied before, atomically.
    Apply {
        /// The FilterPolicy document (see examples/filter.yaml).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        target: AgentTarget,
        /// Name every rule added, changed and removed, not only the first few of each.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Run packets through the loaded rules (BPF_PROG_TEST_RUN on a private copy, loaded once) and say which rule decides each.
    Simulate(SimulateArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ActionArg {
    Drop,
    Pass,
    RateLimit,
    Audit,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PerArg {
    Rule,
    Source,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The rule's name [default: derived from its content].
    name: Option<String>,
    #[arg(long, value_enum)]
    action: ActionArg,
    /// Lower wins among matching rules.
    #[arg(long, default_value_t = weir_filter::spec::DEFAULT_PRIORITY, allow_negative_numbers = true)]
    priority: u32,
    /// A tcpdump/pcap filter expression instead of field matches.
    #[arg(long, conflicts_with_all = ["interface", "src", "dst", "proto", "sport", "dport", "tcp_flags", "icmp_type", "icmp_code", "length", "fragment", "ip_options", "ttl", "bytes"])]
    expr: Option<String>,
    #[arg(long)]
    interface: Option<String>,
    /// Source CIDR (IPv4 or IPv6).
    #[arg(long)]
    src: Option<String>,
    /// Destination CIDR.
    #[arg(long)]
    dst: Option<String>,
    /// tcp, udp, icmp, icmpv6 or a number.
    #[arg(long)]
    proto: Option<String>,
    /// Source port or range LOW-HIGH.
    #[arg(long, allow_hyphen_values = true)]
    sport: Option<String>,
    /// Destination port or range LOW-HIGH.
    #[arg(long, allow_hyphen_values = true)]
    dport: Option<String>,
    /// MASK/VALUE as flag lists, e.g. syn,ack/syn.
    #[arg(long)]
    tcp_flags: Option<String>,
    #[arg(long, allow_negative_numbers = true)]
    icmp_type: Option<u8>,
    #[arg(long, allow_negative_numbers = true)]
    icmp_code: Option<u8>,
    /// Frame length MIN-MAX (either side may be empty: -100 is at most 100).
    #[arg(long, allow_hyphen_values = true)]
    length: Option<String>,
    #[arg(long)]
    fragment: Option<bool>,
    #[arg(long)]
    ip_options: Option<bool>,
    /// TTL or hop limit MIN-MAX (either side may be empty).
    #[arg(long, allow_hyphen_values = true)]
    ttl: Option<String>,
    /// l3|l4+OFFSET=HEX[/MASK], e.g. l4+10=0x80/0x80; up to two.
    #[arg(long)]
    bytes: Vec<String>,
    /// Packets per second, with --action rate-limit.
    #[arg(long, allow_negative_numbers = true)]
    rate: Option<u64>,
    #[arg(long, allow_negative_numbers = true)]
    burst: Option<u64>,
    #[arg(long, value_enum, default_value = "rule")]
    per: PerArg,
    #[command(flatten)]
    target: AgentTarget,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// The frame as hex, from the Ethernet header on.
    #[arg(long, group = "packet_source")]
    hex: Option<String>,
    /// Every packet of a pcap file, in order.
    #[arg(long, group = "packet_source")]
    pcap: Option<PathBuf>,
    /// The packet by fields, e.g. 'ipv4 src=10.0.0.1 dst=10.0.0.2 udp sport=1000 dport=53 payload=0x0001'.
    #[arg(long, group = "packet_source")]
    packet: Option<String>,
    #[command(flatten)]
    target: AgentTarget,
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
}

fn range(field: &str, text: &str) -> anyhow::Result<Range> {
    let (min, max) = text.split_once('-').with_context(|| format!("--{field}: {text:?} is not MIN-MAX"))?;
    let parse = |s: &str, default: u32| {
        if s.trim().is_empty() {
            Ok(default)
        } else {
            s.trim().parse::<u32>().with_context(|| format!("--{field}: {s:?} is not a number"))
        }
    };
    Ok(Range { min: parse(min, 0)?, max: parse(max, u32::MAX)? })
}

fn flags(list: &str) -> anyhow::Result<Vec<TcpFlag>> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|f| {
            serde_json::from_value(serde_json::Value::String(f.trim().to_lowercase()))
                .with_context(|| format!("--tcp-flags: unknown flag {f:?} (fin, syn, rst, psh, ack, urg, ece, cwr)"))
        })
        .collect()
}

fn bytes_match(text: &str) -> anyhow::Result<BytesMatch> {
    let bad = || format!("--bytes: {text:?} is not l3|l4+OFFSET=HEX[/MASK]");
    let (base, rest) = text.split_once('+').with_context(bad)?;
    let (offset, value) = rest.split_once('=').with_context(bad)?;
    let (value, mask) = match value.split_once('/') {
        Some((v, m)) => (v.to_string(), Some(m.to_string())),
        None => (value.to_string(), None),
    };
    let base = match base {
        "l3" => ByteBase::L3,
        "l4" => ByteBase::L4,
        _ => anyhow::bail!(bad()),
    };
    Ok(BytesMatch { base, offset: offset.parse().with_context(bad)?, value, mask })
}

fn rule_from(args: &AddArgs) -> anyhow::Result<RuleSpec> {
    let net = |field: &str, v: &Option<String>| -> anyhow::Result<Option<ipnet::IpNet>> {
        v.as_deref()
            .map(|s| {
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .with_context(|| format!("--{field}: {s:?} is not a CIDR or address"))
            })
            .transpose()
    };
    let tcp_flags = match &args.tcp_flags {
        Some(text) => {
            let (mask, value) = text.split_once('/').unwrap_or((text, text));
            Some(TcpFlags { mask: flags(mask)?, value: flags(value)? })
        }
        None => None,
    };
    let matches = MatchSpec {
        interface: args.interface.clone(),
        source: net("src", &args.src)?,
        destination: net("dst", &args.dst)?,
        protocol: args.proto.as_deref().map(str::parse).transpose().map_err(anyhow::Error::msg).context("--proto")?,
        source_port: args
            .sport
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(anyhow::Error::msg)
            .context("--sport")?,
        destination_port: args
            .dport
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(anyhow::Error::msg)
            .context("--dport")?,
        tcp_flags,
        icmp: (args.icmp_type.is_some() || args.icmp_code.is_some())
            .then_some(Icmp { kind: args.icmp_type, code: args.icmp_code }),
        length: args.length.as_deref().map(|t| range("length", t)).transpose()?,
        fragment: args.fragment,
        ip_options: args.ip_options,
        ttl: args.ttl.as_deref().map(|t| range("ttl", t)).transpose()?,
        bytes: args.bytes.iter().map(|b| bytes_match(b)).collect::<anyhow::Result<_>>()?,
    };
    let action = match args.action {
        ActionArg::Drop => Action::Drop,
        ActionArg::Pass => Action::Pass,
        ActionArg::RateLimit => Action::RateLimit,
        ActionArg::Audit => Action::Audit,
    };
    let rate_limit = args.rate.map(|pps| RateLimit {
        packets_per_second: pps,
        burst: args.burst,
        per: if matches!(args.per, PerArg::Source) { RatePer::Source } else { RatePer::Rule },
    });
    let mut rule = RuleSpec {
        name: args.name.clone().unwrap_or_default(),
        priority: args.priority,
        matches,
        expression: args.expr.clone(),
        action,
        rate_limit,
    };
    if rule.name.is_empty() {
        // A stable name from the content, so re-running the same command changes nothing.
        let text = serde_json::to_string(&rule)?;
        let hash =
            text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        rule.name = format!("rule-{:08x}", hash as u32);
    }
    rule.validate("").map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(rule)
}

/// Names shown of each kind of change, unless every name is asked for.
const NAMES_SHOWN: usize = 5;

/// Sends `request` to every agent and prints, per node, how many rules were
/// added, changed and removed, with the first few names of each.
pub(crate) async fn update_all(target: &AgentTarget, request: pb::FilterUpdateRequest) -> anyhow::Result<()> {
    update_all_listing(target, request, false).await
}

/// As `update_all`; `every_name` lists all the names instead of the first few.
pub(crate) async fn update_all_listing(
    target: &AgentTarget,
    request: pb::FilterUpdateRequest,
    every_name: bool,
) -> anyhow::Result<()> {
    for (node, socket) in target.agents()? {
        // End to end: the agent answers once the kernel holds the rules.
        let start = std::time::Instant::now();
        let reply = client::connect::<client::Filter>(socket)
            .await?
            .filter_update(request.clone())
            .await
            .map_err(|s| anyhow::anyhow!("{node}: {}", s.message()))?
            .into_inner();
        let elapsed = start.elapsed();
        println!(
            "{node}: {} ({} rules; in the kernel {:.1} ms after the request, {:.1} ms of it writing maps)",
            change_summary(&reply, every_name),
            reply.total_rules,
            elapsed.as_secs_f64() * 1e3,
            reply.apply_ns as f64 / 1e6
        );
    }
    Ok(())
}

/// "N added (a, b), N changed (c), N removed, N unchanged", names cut to
/// the first few unless `every_name`.
fn change_summary(reply: &pb::FilterUpdateResponse, every_name: bool) -> String {
    // A changed rule takes a new slot and frees its old one: the agent
    // reports it in added and removed too.
    let changed: std::collections::HashSet<&str> = reply.changed.iter().map(String::as_str).collect();
    let only =
        |names: &[String]| -> Vec<String> { names.iter().filter(|n| !changed.contains(n.as_str())).cloned().collect() };
    let mut cut = false;
    let mut part = |verb: &str, names: &[String]| {
        let shown = if every_name { names.len() } else { names.len().min(NAMES_SHOWN) };
        cut |= shown < names.len();
        match names.len() {
            0 => format!("0 {verb}"),
            n if shown < n => format!("{n} {verb} ({}, and {} more)", names[..shown].join(", "), n - shown),
            n => format!("{n} {verb} ({})", names.join(", ")),
        }
    };
    let text = [
        part("added", &only(&reply.added)),
        part("changed", &reply.changed),
        part("removed", &only(&reply.removed)),
        format!("{} unchanged", reply.unchanged),
    ]
    .join(", ");
    if cut {
        format!("{text}; -v lists every name")
    } else {
        text
    }
}

pub fn run(cmd: FilterCommand) -> anyhow::Result<ExitCode> {
    let rt = client::runtime()?;
    match cmd {
        FilterCommand::Add(args) => {
            let rule = rule_from(&args)?;
            let request = pb::FilterUpdateRequest {
                mode: Mode::Add.into(),
                rules_json: serde_json::to_string(&[rule])?,
                delete: Vec::new(),
                origin: "cli".into(),
            };
            rt.block_on(update_all(&args.target, request))?;
        }
        FilterCommand::Del { names, target, verbose } => {
            let request = pb::FilterUpdateRequest {
                mode: Mode::Delete.into(),
                rules_json: String::new(),
                delete: names,
                origin: String::new(),
            };
            rt.block_on(update_all_listing(&target, request, verbose))?;
        }
        FilterCommand::Apply { file, target, verbose } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let policy = FilterPolicy::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let request = pb::FilterUpdateRequest {
                mode: Mode::ReplaceOrigin.into(),
                rules_json: serde_json::to_string(&policy.spec.rules)?,
                delete: Vec::new(),
                origin: format!("FilterPolicy/{}", policy.metadata.name),
            };
            rt.block_on(update_all_listing(&target, request, verbose))?;
        }
        FilterCommand::List { target, output } => {
            let mut all = Vec::new();
            for (node, socket) in target.agents()? {
                let list = rt.block_on(async {
                    anyhow::Ok(
                        client::connect::<client::Filter>(socket)
                            .await?
                            .filter_list(pb::FilterListRequest {})
                            .await?
                            .into_inner(),
                    )
                })?;
                all.push((node, list));
            }
            match output {
                Format::Json => {
                    let json: Vec<serde_json::Value> = all
                        .iter()
                        .map(|(node, l)| {
                            serde_json::json!({
                                "node": node,
                                "rules": l.rules.iter().map(|r| serde_json::json!({"name": r.name, "origin": r.origin, "spec": serde_json::from_str::<serde_json::Value>(&r.spec_json).unwrap_or_default(), "packets": r.packets, "bytes": r.bytes})).collect::<Vec<_>>(),
                                "drops": l.drops, "traceEventsLost": l.trace_events_lost, "expressionProgram": l.expression_program,
                            })
                        })
                        .collect();
                    output::json(&json)?;
                }
                Format::Table => {
                    for (node, l) in &all {
                        println!("{node}{}", if l.expression_program { " (expression program in front)" } else { "" });
                        let rows: Vec<Vec<String>> = l
                            .rules
                            .iter()
                            .map(|r| {
                                let spec: RuleSpec = serde_json::from_str(&r.spec_json).unwrap_or_else(|_| RuleSpec {
                                    name: r.name.clone(),
                                    priority: 0,
                                    matches: MatchSpec::default(),
                                    expression: None,
                                    action: Action::Pass,
                                    rate_limit: None,
                                });
                                vec![
                                    r.name.clone(),
                                    spec.priority.to_string(),
                                    serde_json::to_value(spec.action)
                                        .ok()
                                        .and_then(|v| v.as_str().map(str::to_string))
                                        .unwrap_or_default(),
                                    describe(&spec),
                                    r.packets.to_string(),
                                    r.bytes.to_string(),
                                    r.origin.clone(),
                                ]
                            })
                            .collect();
                        print!(
                            "{}",
                            output::table(
                                &["NAME", "PRIORITY", "ACTION", "MATCH", "PACKETS", "BYTES", "ORIGIN"],
                                &rows
                            )
                        );
                    }
                }
            }
        }
        FilterCommand::Stats { target, interval, top } => {
            for (node, socket) in target.agents()? {
                let (first, second) = rt.block_on(async {
                    let mut client = client::connect::<client::Filter>(socket).await?;
                    let first = client.filter_list(pb::FilterListRequest {}).await?.into_inner();
                    tokio::time::sleep(interval).await;
                    let second = client.filter_list(pb::FilterListRequest {}).await?.into_inner();
                    anyhow::Ok((first, second))
                })?;
                let secs = interval.as_secs_f64();
                let mut rows: Vec<(f64, Vec<String>)> = second
                    .rules
                    .iter()
                    .map(|r| {
                        let before = first.rules.iter().find(|f| f.name == r.name && f.slot == r.slot);
                        let pps = before.map_or(0.0, |b| r.packets.saturating_sub(b.packets) as f64 / secs);
                        let bps = before.map_or(0.0, |b| r.bytes.saturating_sub(b.bytes) as f64 * 8.0 / secs);
                        (
                            pps,
                            vec![
                                r.name.clone(),
                                format!("{pps:.1}"),
                                format!("{:.1}", bps / 1e6),
                                r.packets.to_string(),
                            ],
                        )
                    })
                    .collect();
                rows.sort_by(|a, b| b.0.total_cmp(&a.0));
                println!("{node}: top rules over {interval:?}");
                print!(
                    "{}",
                    output::table(
                        &["RULE", "PKT/S", "MBIT/S", "TOTAL PACKETS"],
                        &rows.into_iter().take(top).map(|r| r.1).collect::<Vec<_>>()
                    )
                );
                let drops: Vec<String> =
                    second.drops.iter().filter(|(_, n)| **n > 0).map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "drops by reason: {}   trace events lost: {}\n",
                    if drops.is_empty() { "none".to_string() } else { drops.join(" ") },
                    second.trace_events_lost
                );
            }
        }
        FilterCommand::Trace { target, every, count, write } => {
            let (node, socket) = target.one()?;
            let mut file = match &write {
                Some(path) => {
                    let mut f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
                    std::io::Write::write_all(&mut f, &weir_packet::pcap::file_header(128))?;
                    Some(f)
                }
                None => None,
            };
            eprintln!(
                "tracing on {node}{}; Ctrl-C to stop",
                write.as_ref().map(|p| format!(" into {}", p.display())).unwrap_or_default()
            );
            rt.block_on(async {
                let mut stream = client::connect::<client::Filter>(socket)
                    .await?
                    .filter_trace(pb::FilterTraceRequest { every })
                    .await?
                    .into_inner();
                let boot_to_unix = unix_now_ns().saturating_sub(weir_bpf::ktime_now_ns());
                let mut seen = 0u64;
                while let Some(event) = stream.message().await? {
                    seen += 1;
                    println!(
                        "{:>14.6} {:<20} {:<10} {:<9} if{} len {} {}",
                        event.timestamp_ns as f64 / 1e9,
                        event.rule,
                        event.action,
                        event.verdict,
                        event.ifindex,
                        event.length,
                        summary(&event.data)
                    );
                    if let Some(f) = file.as_mut() {
                        std::io::Write::write_all(
                            f,
                            &weir_packet::pcap::record(boot_to_unix + event.timestamp_ns, &event.data, event.length),
                        )?;
                    }
                    if count.is_some_and(|c| seen >= c) {
                        break;
                    }
                }
                anyhow::Ok(())
            })?;
        }
        FilterCommand::Simulate(args) => return simulate(&rt, &args),
    }
    Ok(ExitCode::SUCCESS)
}

fn unix_now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// One line about a frame: addresses, protocol, ports.
fn summary(frame: &[u8]) -> String {
    let ethertype = |at: usize| frame.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let mut l3 = 14;
    let mut proto = ethertype(12);
    while proto == Some(0x8100) || proto == Some(0x88a8) {
        proto = ethertype(l3 + 2);
        l3 += 4;
    }
    let ports = |at: usize| {
        frame
            .get(at..at + 4)
            .map(|p| format!(" {} > {}", u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]])))
            .unwrap_or_default()
    };
    match proto {
        Some(0x0800) if frame.len() >= l3 + 20 => {
            let ihl = usize::from(frame[l3] & 0x0f) * 4;
            let p = frame[l3 + 9];
            let name = match p {
                6 => "tcp",
                17 => "udp",
                1 => "icmp",
                _ => "ip",
            };
            let src = std::net::Ipv4Addr::new(frame[l3 + 12], frame[l3 + 13], frame[l3 + 14], frame[l3 + 15]);
            let dst = std::net::Ipv4Addr::new(frame[l3 + 16], frame[l3 + 17], frame[l3 + 18], frame[l3 + 19]);
            format!("{name} {src} > {dst}{}", if p == 6 || p == 17 { ports(l3 + ihl) } else { String::new() })
        }
        Some(0x86dd) if frame.len() >= l3 + 40 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&frame[l3 + 8..l3 + 24]);
            let mut b = [0u8; 16];
            b.copy_from_slice(&frame[l3 + 24..l3 + 40]);
            format!("ip6 {} > {} next {}", std::net::Ipv6Addr::from(a), std::net::Ipv6Addr::from(b), frame[l3 + 6])
        }
        Some(other) => format!("ethertype {other:#06x}"),
        None => "runt frame".into(),
    }
}

/// A short description of a rule's match.
fn describe(rule: &RuleSpec) -> String {
    if let Some(expr) = &rule.expression {
        return format!("expr '{expr}'");
    }
    let json = serde_json::to_value(&rule.matches).unwrap_or_default();
    json.as_object()
        .map(|m| {
            m.iter().map(|(k, v)| format!("{k}={}", v.to_string().trim_matches('"'))).collect::<Vec<_>>().join(" ")
        })
        .unwrap_or_default()
}

/// Packets per simulation request are cut at this many bytes; each request
/// loads the datapath copy once.
const SIMULATE_REQUEST_BYTES: usize = 64 << 20;

/// One simulated packet as printed.
struct Simulated {
    packet: Vec<u8>,
    result: pb::FilterSimulateResult,
    program_id: u32,
}

fn simulate(rt: &tokio::runtime::Runtime, args: &SimulateArgs) -> anyhow::Result<ExitCode> {
    let packets = simulate_packets(args)?;
    let (node, socket) = args.target.one()?;
    let mut simulated: Vec<Simulated> = Vec::with_capacity(packets.len());
    let mut rest = &packets[..];
    while !rest.is_empty() {
        let mut bytes = 0;
        let take = rest
            .iter()
            .take_while(|p| {
                bytes += p.len();
                bytes <= SIMULATE_REQUEST_BYTES
            })
            .count()
            .max(1);
        let (chunk, after) = rest.split_at(take);
        rest = after;
        let reply = rt.block_on(async {
            anyhow::Ok(
                client::connect::<client::Filter>(socket.clone())
                    .await?
                    .filter_simulate(pb::FilterSimulateRequest { packet: Vec::new(), packets: chunk.to_vec() })
                    .await
                    .map_err(|s| anyhow::anyhow!("{node}: {}", s.message()))?
                    .into_inner(),
            )
        })?;
        anyhow::ensure!(
            reply.results.len() == chunk.len(),
            "{node}: the agent answered for {} of {} packets (an agent older than this weir?)",
            reply.results.len(),
            chunk.len()
        );
        simulated.extend(chunk.iter().zip(reply.results).map(|(packet, result)| Simulated {
            packet: packet.clone(),
            result,
            program_id: reply.program_id,
        }));
    }
    let failed = simulated.iter().filter(|s| !s.result.error.is_empty()).count();
    match args.output {
        Format::Json => {
            let packets: Vec<serde_json::Value> = simulated
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let r = &s.result;
                    let text = |t: &str| (!t.is_empty()).then(|| t.to_string());
                    serde_json::json!({
                        "index": i + 1,
                        "length": s.packet.len(),
                        "summary": summary(&s.packet),
                        "verdict": text(&r.verdict),
                        "rule": text(&r.rule),
                        "action": text(&r.action),
                        "error": text(&r.error),
                        "programId": s.program_id,
                    })
                })
                .collect();
            output::json(&serde_json::json!({ "node": node, "packets": packets }))?;
        }
        Format::Table if simulated.len() == 1 => {
            let s = &simulated[0];
            let r = &s.result;
            if r.error.is_empty() {
                println!(
                    "{node}: {} {} ({} bytes: {})",
                    r.verdict,
                    if r.rule.is_empty() {
                        "(no rule matched: the default passes)".to_string()
                    } else {
                        format!("by rule {} ({})", r.rule, r.action)
                    },
                    s.packet.len(),
                    summary(&s.packet)
                );
            } else {
                println!("{node}: not simulated: {} ({} bytes: {})", r.error, s.packet.len(), summary(&s.packet));
            }
        }
        Format::Table => {
            let mut loads: Vec<u32> = simulated.iter().map(|s| s.program_id).collect();
            loads.dedup();
            println!(
                "{node}: {} packets through {} load{} of the datapath copy",
                simulated.len(),
                loads.len(),
                if loads.len() == 1 { "" } else { "s" }
            );
            let rows: Vec<Vec<String>> = simulated
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let r = &s.result;
                    let dash = |t: &str| if t.is_empty() { "-".to_string() } else { t.to_string() };
                    let verdict = if r.error.is_empty() { r.verdict.clone() } else { format!("error: {}", r.error) };
                    vec![
                        (i + 1).to_string(),
                        verdict,
                        dash(&r.rule),
                        dash(&r.action),
                        s.packet.len().to_string(),
                        summary(&s.packet),
                    ]
                })
                .collect();
            print!("{}", output::table(&["#", "VERDICT", "RULE", "ACTION", "BYTES", "PACKET"], &rows));
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} packets could not be simulated", simulated.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn simulate_packets(args: &SimulateArgs) -> anyhow::Result<Vec<Vec<u8>>> {
    if let Some(path) = &args.pcap {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let packets =
            weir_packet::pcap::read(&bytes).map_err(anyhow::Error::msg).with_context(|| path.display().to_string())?;
        anyhow::ensure!(!packets.is_empty(), "{} holds no packet", path.display());
        return Ok(packets);
    }
    Ok(vec![simulate_packet(args)?])
}

fn simulate_packet(args: &SimulateArgs) -> anyhow::Result<Vec<u8>> {
    if let Some(hex) = &args.hex {
        let digits: String = hex.chars().filter(|c| !c.is_whitespace() && *c != ':').collect();
        anyhow::ensure!(digits.len().is_multiple_of(2), "--hex: an odd number of digits");
        return (0..digits.len())
            .step_by(2)
            .map(|i| {
                u8::from_str_radix(&digits[i..i + 2], 16)
                    .with_context(|| format!("--hex: {:?} is not hex", &digits[i..i + 2]))
            })
            .collect();
    }
    if let Some(fields) = &args.packet {
        return build_packet(fields);
    }
    anyhow::bail!("give the packet with --hex, --pcap or --packet")
}

/// Builds a frame from "LAYER key=value ... LAYER key=value ...".
fn build_packet(text: &str) -> anyhow::Result<Vec<u8>> {
    use weir_packet::Packet;
    let mut layers: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for token in text.split_whitespace() {
        match token.split_once('=') {
            Some((k, v)) => layers
                .last_mut()
                .with_context(|| format!("--packet: {token:?} comes before any layer"))?
                .1
                .push((k.to_string(), v.to_string())),
            None => layers.push((token.to_lowercase(), Vec::new())),
        }
    }
    let get = |fields: &[(String, String)], key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let num = |fields: &[(String, String)], key: &str, default: u64| -> anyhow::Result<u64> {
        get(fields, key)
            .map_or(Ok(default), |v| v.parse().with_context(|| format!("--packet: {key}={v:?} is not a number")))
    };
    let mut packet = Packet::eth();
    let mut payload = Vec::new();
    for (layer, fields) in &layers {
        packet = match layer.as_str() {
            "vlan" => packet.vlan(num(fields, "id", 1)? as u16),
            "ipv4" | "ip" => {
                let src: std::net::Ipv4Addr =
                    get(fields, "src").unwrap_or("10.0.0.1".into()).parse().context("--packet: ipv4 src")?;
                let dst: std::net::Ipv4Addr =
                    get(fields, "dst").unwrap_or("10.0.0.2".into()).parse().context("--packet: ipv4 dst")?;
                packet.ipv4(src, dst).ttl(num(fields, "ttl", 64)? as u8)
            }
            "ipv6" | "ip6" => {
                let src: std::net::Ipv6Addr =
                    get(fields, "src").unwrap_or("fd00::1".into()).parse().context("--packet: ipv6 src")?;
                let dst: std::net::Ipv6Addr =
                    get(fields, "dst").unwrap_or("fd00::2".into()).parse().context("--packet: ipv6 dst")?;
                packet.ipv6(src, dst).ttl(num(fields, "ttl", 64)? as u8)
            }
            "tcp" => {
                let flags = flags(&get(fields, "flags").unwrap_or_default())?.iter().fold(0, |acc, f| acc | f.bit());
                packet.tcp(num(fields, "sport", 40000)? as u16, num(fields, "dport", 80)? as u16, flags)
            }
            "udp" => packet.udp(num(fields, "sport", 40000)? as u16, num(fields, "dport", 53)? as u16),
            "icmp" | "icmpv6" => packet.icmp(num(fields, "type", 8)? as u8, num(fields, "code", 0)? as u8),
            other => anyhow::bail!("--packet: unknown layer {other:?} (vlan, ipv4, ipv6, tcp, udp, icmp)"),
        };
        if let Some(hex) = get(fields, "payload") {
            payload =
                weir_filter::spec::parse_hex_any(&hex).map_err(anyhow::Error::msg).context("--packet: payload")?;
        }
    }
    Ok(packet.payload(&payload).build())
}
