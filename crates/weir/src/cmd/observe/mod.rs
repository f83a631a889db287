//! `weir observe`: a Hubble client. Flows come from Hubble's Observer API:
//! every agent of the lab (merged in time order here, as `weir relay` merges
//! them), one agent's socket, or a relay or agent over TCP (`--server`). The
//! flags and formats are `hubble observe`'s (`json` an alias of `jsonpb`,
//! as Hubble's), plus Weir's own `text` and `weir-json`, which name the
//! rule that decided, the processes and the Services.
//!
//! - [`filters`]: the filter flags as Hubble's FlowFilters (pure).
//! - [`print`]: the output formats.

mod filters;
mod print;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use weir_agent::hubble::peer::PeerAddress;
use weir_agent::hubble::relay::{RelayConfig, RelayObserver};
use weir_proto::observer::{self, get_flows_response::ResponseTypes};

use super::target::AgentTarget;

/// Flows on the pod path, as Hubble shows them: who talked to whom, and why a packet died.
///
/// Every node's flows, merged in time order: each new flow a policy allowed
/// and every packet dropped with its reason, both ends' pod, namespace,
/// labels and identity, and (in Weir's `text` and `weir-json`) the rule that
/// decided. The flags are `hubble observe`'s: `--from-*` and `--to-*` filter
/// one end, the same flag without a side either end; flags of different
/// kinds must all match; a repeated flag matches any of its values; `--not`
/// negates the filter flag after it.
///
/// Without --all, --last, --first, --since or --until it follows until interrupted;
/// with one of them it prints those flows and follows only with --follow.
///
/// Examples:
///   weir observe --verdict dropped
///   weir observe --type drop --type trace:to-endpoint
///   weir observe --last 20 --to-pod backend/api --label app=web -o compact
///   weir observe --namespace backend --not --from-pod backend/db --since 5m
///   weir observe --server 127.0.0.1:4245 --follow -o jsonpb      # a relay
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ObserveArgs {
    /// Flows from or to this pod: NAMESPACE/POD-NAME-PREFIX, or NAMESPACE/ for the namespace.
    #[arg(long, value_name = "[NAMESPACE/]POD")]
    pod: Vec<String>,
    #[arg(long, value_name = "[NAMESPACE/]POD")]
    from_pod: Vec<String>,
    #[arg(long, value_name = "[NAMESPACE/]POD")]
    to_pod: Vec<String>,
    /// Flows from or to this Service (its frontend, or one of its
    /// backends): NAMESPACE/NAME-PREFIX, or NAME-PREFIX in any namespace.
    #[arg(long, value_name = "[NAMESPACE/]SERVICE")]
    service: Vec<String>,
    #[arg(long, value_name = "[NAMESPACE/]SERVICE")]
    from_service: Vec<String>,
    #[arg(long, value_name = "[NAMESPACE/]SERVICE")]
    to_service: Vec<String>,
    /// Flows from or to pods of this namespace.
    #[arg(long, short = 'n')]
    namespace: Vec<String>,
    #[arg(long)]
    from_namespace: Vec<String>,
    #[arg(long)]
    to_namespace: Vec<String>,
    /// Flows from or to this address or CIDR.
    #[arg(long)]
    ip: Vec<String>,
    #[arg(long)]
    from_ip: Vec<String>,
    #[arg(long)]
    to_ip: Vec<String>,
    /// Flows from or to an endpoint this label selector selects (e.g.
    /// `app=web`, `k8s:app in (web, api)`, `tier=backend,app!=db`).
    #[arg(long, short = 'l')]
    label: Vec<String>,
    #[arg(long)]
    from_label: Vec<String>,
    #[arg(long)]
    to_label: Vec<String>,
    /// Flows from or to this security identity.
    #[arg(long)]
    identity: Vec<String>,
    #[arg(long)]
    from_identity: Vec<String>,
    #[arg(long)]
    to_identity: Vec<String>,
    /// Flows from or to this port.
    #[arg(long)]
    port: Vec<String>,
    #[arg(long)]
    from_port: Vec<String>,
    #[arg(long)]
    to_port: Vec<String>,
    /// Flows from or to a pod of this workload (the Deployment, StatefulSet,
    /// DaemonSet, Job or CronJob that controls it, as Hubble derives it
    /// from the pod's owners): NAME, KIND/NAME or KIND/.
    #[arg(long, value_name = "[KIND/]NAME")]
    workload: Vec<String>,
    #[arg(long, value_name = "[KIND/]NAME")]
    from_workload: Vec<String>,
    #[arg(long, value_name = "[KIND/]NAME")]
    to_workload: Vec<String>,
    /// FORWARDED or DROPPED (any case).
    #[arg(long)]
    verdict: Vec<String>,
    /// Drops of this reason, by Hubble's name: POLICY_DENIED, POLICY_DENY,
    /// FIB_LOOKUP_FAILED, ... (docs/observe.md lists Weir's).
    #[arg(long, value_name = "REASON")]
    drop_reason_desc: Vec<String>,
    /// tcp, udp, icmp, icmpv6 or sctp.
    #[arg(long)]
    protocol: Vec<String>,
    /// Flows observed on this node.
    #[arg(long)]
    node_name: Vec<String>,
    /// ingress or egress.
    #[arg(long)]
    traffic_direction: Vec<String>,
    /// Flows with all these TCP flags set, e.g. SYN or SYN,ACK.
    #[arg(long)]
    tcp_flags: Vec<String>,
    /// 4 or 6.
    #[arg(long)]
    ip_version: Vec<String>,
    /// L7 flows whose DNS query matches this regular expression, e.g.
    /// `example\.com\.$` (names end with a dot).
    #[arg(long)]
    dns_query: Vec<String>,
    /// L7 flows of HTTP requests with this method (GET, POST, ...).
    #[arg(long)]
    http_method: Vec<String>,
    /// L7 flows of HTTP requests whose path matches this regular expression.
    #[arg(long)]
    http_path: Vec<String>,
    /// L7 flows of HTTP responses with this status: 404, or a prefix: 4+, 40+.
    #[arg(long)]
    http_status: Vec<String>,
    /// Flows of this Cilium event type, as Hubble's: drop, policy-verdict
    /// (Weir's allowed new flows), trace (a packet a chaos fault changed
    /// and let through), l7, or a number; TYPE:SUB-TYPE narrows it
    /// (trace:to-endpoint, trace:from-endpoint, drop:133 for a drop reason).
    #[arg(long = "type", short = 't', value_name = "TYPE[:SUB-TYPE]")]
    event_type: Vec<String>,
    /// Negates the filter flag after it: `--not --from-pod backend/db`.
    #[arg(long, value_name = "FILTER-FLAG", allow_hyphen_values = true)]
    not: Vec<String>,
    /// The N most recent matching flows (over all nodes; each keeps 8192).
    #[arg(long, value_name = "N")]
    last: Option<u64>,
    /// Every matching flow the nodes still hold, then ends (or follows with --follow).
    #[arg(long, conflicts_with_all = ["last", "first"])]
    all: bool,
    /// The N oldest matching flows the nodes still hold.
    #[arg(long, value_name = "N", conflicts_with_all = ["last", "follow"])]
    first: Option<u64>,
    /// Flows since this time: RFC 3339 (2026-12-06T04:00:00Z) or a duration ago (5m, 1h).
    #[arg(long)]
    since: Option<String>,
    /// Flows until this time, in the same forms.
    #[arg(long)]
    until: Option<String>,
    /// Then follow, live.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Stop after this many flows [default: follow until interrupted].
    #[arg(long)]
    count: Option<usize>,
    /// Stop after this long, e.g. 30s [default: follow until interrupted].
    #[arg(long, value_parser = weir_spec::parse_duration)]
    timeout: Option<Duration>,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: ObserveFormat,
    /// Print the node each flow was observed on (compact, dict, table).
    #[arg(long)]
    print_node_name: bool,
    /// A Hubble Observer to read from instead of the agents: `weir relay`'s
    /// address, an agent's --hubble-listen, or unix:///path/to/agent.sock.
    #[arg(long, conflicts_with_all = ["lab", "node", "socket"])]
    server: Option<String>,
    #[command(flatten)]
    target: AgentTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ObserveFormat {
    /// One line per flow with the rule that decided (Weir's).
    Text,
    /// One JSON object per line, Weir's fields (with the rule, Weir's drop
    /// reason, the processes and Services).
    WeirJson,
    /// Hubble's: a GetFlowsResponse per line, as `hubble observe -o jsonpb`
    /// prints it (see docs/observe.md).
    Jsonpb,
    /// The same as jsonpb, as in Hubble's CLI (where `-o json` became an
    /// alias of `-o jsonpb`).
    Json,
    /// Hubble's one line per flow.
    Compact,
    /// Hubble's record per flow.
    Dict,
    /// Hubble's table.
    Table,
}

/// Joins `--not --FLAG VALUE` (or `--not --FLAG=VALUE`) into one
/// `--not=FLAG=VALUE` argument before clap reads `weir observe`'s line, so
/// `--not` negates exactly the filter flag after it, as in Hubble's CLI.
pub fn join_negations(args: Vec<OsString>) -> Vec<OsString> {
    let is_observe =
        args.iter().skip(1).find(|a| !a.to_string_lossy().starts_with('-')).is_some_and(|a| a == "observe");
    if !is_observe {
        return args;
    }
    let mut out = Vec::with_capacity(args.len());
    let mut rest = args.into_iter();
    while let Some(arg) = rest.next() {
        if arg != "--not" {
            out.push(arg);
            continue;
        }
        let Some(next) = rest.next() else {
            out.push(arg);
            break;
        };
        let text = next.to_string_lossy().into_owned();
        let flag = text.strip_prefix("--").unwrap_or(&text);
        let joined = match flag.split_once('=') {
            Some((name, value)) if filters::is_filter_flag(name) => Some(format!("--not={name}={value}")),
            None if filters::is_filter_flag(flag) => {
                rest.next().map(|value| format!("--not={flag}={}", value.to_string_lossy()))
            }
            _ => None,
        };
        match joined {
            Some(joined) => out.push(joined.into()),
            None => {
                // Not a filter flag: refused by name later, and itself
                // parsed as what it is.
                out.push(format!("--not={text}").into());
                out.push(next);
            }
        }
    }
    out
}

impl ObserveArgs {
    /// Every filter flag given, as (name, value, negated).
    fn filter_flags(&self) -> anyhow::Result<Vec<(String, String, bool)>> {
        let mut flags = Vec::new();
        let lists: [(&str, &Vec<String>); 36] = [
            ("pod", &self.pod),
            ("from-pod", &self.from_pod),
            ("to-pod", &self.to_pod),
            ("service", &self.service),
            ("from-service", &self.from_service),
            ("to-service", &self.to_service),
            ("namespace", &self.namespace),
            ("from-namespace", &self.from_namespace),
            ("to-namespace", &self.to_namespace),
            ("ip", &self.ip),
            ("from-ip", &self.from_ip),
            ("to-ip", &self.to_ip),
            ("label", &self.label),
            ("from-label", &self.from_label),
            ("to-label", &self.to_label),
            ("identity", &self.identity),
            ("from-identity", &self.from_identity),
            ("to-identity", &self.to_identity),
            ("port", &self.port),
            ("from-port", &self.from_port),
            ("to-port", &self.to_port),
            ("workload", &self.workload),
            ("from-workload", &self.from_workload),
            ("to-workload", &self.to_workload),
            ("verdict", &self.verdict),
            ("drop-reason-desc", &self.drop_reason_desc),
            ("protocol", &self.protocol),
            ("node-name", &self.node_name),
            ("traffic-direction", &self.traffic_direction),
            ("tcp-flags", &self.tcp_flags),
            ("ip-version", &self.ip_version),
            ("dns-query", &self.dns_query),
            ("http-method", &self.http_method),
            ("http-path", &self.http_path),
            ("http-status", &self.http_status),
            ("type", &self.event_type),
        ];
        for (name, values) in lists {
            flags.extend(values.iter().map(|v| (name.to_string(), v.clone(), false)));
        }
        for negated in &self.not {
            let Some((name, value)) = negated.split_once('=').filter(|(n, _)| filters::is_filter_flag(n)) else {
                anyhow::bail!(
                    "--not {negated:?}: --not negates the filter flag after it, e.g. --not --from-pod backend/db"
                );
            };
            flags.push((name.to_string(), value.to_string(), true));
        }
        Ok(flags)
    }

    fn request(&self) -> anyhow::Result<observer::GetFlowsRequest> {
        let (whitelist, blacklist) = filters::build(&self.filter_flags()?).map_err(anyhow::Error::msg)?;
        let now = now_ns();
        let at = |flag: &str, text: &Option<String>| {
            text.as_deref()
                .map(|t| parse_time(t, now).map(weir_agent::hubble::flows::prost_timestamp))
                .transpose()
                .map_err(|e| anyhow::anyhow!("--{flag}: {e}"))
        };
        let bounded =
            self.all || self.last.is_some() || self.first.is_some() || self.since.is_some() || self.until.is_some();
        Ok(observer::GetFlowsRequest {
            number: self.last.or(self.first).unwrap_or(0),
            first: self.first.is_some(),
            follow: self.follow || !bounded,
            whitelist,
            blacklist,
            since: at("since", &self.since)?,
            until: at("until", &self.until)?,
        })
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Days from 1970-01-01 to a civil date (proleptic Gregorian).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `--since`/`--until`: a duration ago (`5m`), or RFC 3339
/// (`2026-12-06T04:00:00Z`, `...T04:00:00.5+01:00`), as unix ns.
fn parse_time(text: &str, now_ns: u64) -> Result<u64, String> {
    if let Ok(ago) = weir_spec::parse_duration(text) {
        return Ok(now_ns.saturating_sub(u64::try_from(ago.as_nanos()).unwrap_or(u64::MAX)));
    }
    let bad = || format!("{text:?} is neither a duration (5m, 1h) nor RFC 3339 (2026-12-06T04:00:00Z)");
    let b = text.trim().as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num =
        |range: std::ops::Range<usize>| text.trim().get(range).and_then(|s| s.parse::<u32>().ok()).ok_or_else(bad);
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return Err(bad());
    }
    let rest = &text.trim()[19..];
    let (fraction, zone) = match rest.strip_prefix('.') {
        Some(f) => {
            let digits = f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len());
            let (d, z) = f.split_at(digits);
            if d.is_empty() {
                return Err(bad());
            }
            let nanos: u64 = format!("{:0<9}", &d[..d.len().min(9)]).parse().map_err(|_| bad())?;
            (nanos, z)
        }
        None => (0, rest),
    };
    let offset_s: i64 = match zone {
        "Z" | "z" => 0,
        z if z.len() == 6 && (z.starts_with('+') || z.starts_with('-')) && &z[3..4] == ":" => {
            let h: i64 = z[1..3].parse().map_err(|_| bad())?;
            let m: i64 = z[4..6].parse().map_err(|_| bad())?;
            let sign = if z.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return Err(bad()),
    };
    let seconds = days_from_civil(i64::from(year), month, day) * 86_400
        + i64::from(hour) * 3600
        + i64::from(minute) * 60
        + i64::from(second)
        - offset_s;
    let seconds = u64::try_from(seconds).map_err(|_| format!("{text:?} is before 1970"))?;
    Ok(seconds * 1_000_000_000 + fraction)
}

/// Where the flows come from: a relay over the lab's agents, or one server.
async fn source(args: &ObserveArgs) -> anyhow::Result<(RelayObserver, tokio::sync::watch::Sender<bool>)> {
    let peers: Vec<PeerAddress> = match &args.server {
        Some(server) => vec![PeerAddress { name: server.clone(), address: server.clone() }],
        None => {
            let mut peers = Vec::new();
            for (name, socket) in args.target.agents()? {
                if !socket.exists() {
                    return Err(weir_agent::client::ClientError::NoSocket(socket).into());
                }
                peers.push(PeerAddress { name, address: format!("unix://{}", socket.display()) });
            }
            peers
        }
    };
    let config = RelayConfig {
        listen_address: String::new(),
        peer_service: String::new(),
        dial_timeout: Duration::from_secs(5),
        retry_timeout: Duration::from_secs(2),
        sort_buffer_len_max: 100,
        sort_buffer_drain_timeout: Duration::from_millis(500),
        ui_listen_address: None,
        ui_limits: Default::default(),
    };
    Ok(RelayObserver::over(peers, config).await)
}

pub fn run(args: ObserveArgs) -> anyhow::Result<ExitCode> {
    for (flag, pods) in [("--pod", &args.pod), ("--from-pod", &args.from_pod), ("--to-pod", &args.to_pod)] {
        for pod in pods {
            args.target.check_pod(flag, pod, true)?;
        }
    }
    let request = args.request()?;
    let rt = super::client::runtime()?;
    rt.block_on(async {
        let (relay, stop) = source(&args).await?;
        // A node that cannot be reached at all is an error, as before the
        // first flow: with several, the others still answer.
        let peers = relay_peers_unreachable(&relay);
        if peers.0 == peers.1 {
            anyhow::bail!("no agent answered: {}", peers.2.join("; "));
        }
        let mut stream = relay.flows(request).map_err(|s| anyhow::anyhow!("{}", s.message()))?.into_inner();
        let deadline = args.timeout.map(|t| tokio::time::Instant::now() + t);
        let node_name = args.print_node_name;
        if args.output == ObserveFormat::Table {
            println!("{}", print::table_header(node_name));
        }
        let mut seen = 0usize;
        loop {
            let next = match deadline {
                Some(at) => match tokio::time::timeout_at(at, stream.recv()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
                None => tokio::select! {
                    next = stream.recv() => next,
                    _ = tokio::signal::ctrl_c() => break,
                },
            };
            let Some(response) = next else { break };
            let response = response.map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            if matches!(args.output, ObserveFormat::Jsonpb | ObserveFormat::Json) {
                println!("{}", print::jsonpb(&response));
            } else if let Some(notice) = print::notice(&response) {
                eprintln!("{notice}");
            }
            let Some(ResponseTypes::Flow(f)) = &response.response_types else { continue };
            match args.output {
                ObserveFormat::Jsonpb | ObserveFormat::Json => {}
                ObserveFormat::Text => println!("{}", print::text(f)),
                ObserveFormat::WeirJson => println!("{}", print::weir_json(f)),
                ObserveFormat::Compact => println!("{}", print::compact(f, node_name)),
                ObserveFormat::Dict => println!("{}", print::dict(f, node_name)),
                ObserveFormat::Table => println!("{}", print::table(f, node_name)),
            }
            seen += 1;
            if args.count.is_some_and(|n| seen >= n) {
                break;
            }
        }
        let _ = stop.send(true);
        Ok(ExitCode::SUCCESS)
    })
}

/// (peers, unreachable peers, their errors).
fn relay_peers_unreachable(relay: &RelayObserver) -> (usize, usize, Vec<String>) {
    let peers = relay.peers();
    let down: Vec<String> =
        peers.iter().filter(|p| p.channel.is_none()).map(|p| format!("{}: {}", p.name, p.error)).collect();
    (peers.len(), down.len(), down)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn not_is_joined_to_the_filter_flag_after_it() {
        assert_eq!(
            join_negations(os(&["weir", "observe", "--not", "--from-pod", "a/b", "--to-port", "80"])),
            os(&["weir", "observe", "--not=from-pod=a/b", "--to-port", "80"])
        );
        assert_eq!(
            join_negations(os(&["weir", "observe", "--not", "--verdict=DROPPED"])),
            os(&["weir", "observe", "--not=verdict=DROPPED"])
        );
        // Not a filter flag: kept as itself, and named in --not's refusal.
        assert_eq!(
            join_negations(os(&["weir", "observe", "--not", "--last", "5"])),
            os(&["weir", "observe", "--not=--last", "--last", "5"])
        );
        // Other commands are untouched.
        assert_eq!(
            join_negations(os(&["weir", "events", "--not", "--pod", "x"])),
            os(&["weir", "events", "--not", "--pod", "x"])
        );
    }

    #[derive(Debug, clap::Parser)]
    struct Line {
        #[command(flatten)]
        observe: ObserveArgs,
    }

    fn request(args: &[&str]) -> observer::GetFlowsRequest {
        use clap::Parser;
        let line =
            Line::try_parse_from(std::iter::once("observe").chain(args.iter().copied())).expect("the flags parse");
        line.observe.request().expect("a request")
    }

    #[test]
    fn all_asks_for_every_flow_held_and_ends() {
        let all = request(&["--all"]);
        assert_eq!((all.number, all.first, all.follow), (0, false, false));
        assert!(request(&["--all", "--follow"]).follow);
        let live = request(&[]);
        assert!(live.follow, "without a bound it follows");
        use clap::Parser;
        let err = Line::try_parse_from(["observe", "--all", "--last", "5"]).expect_err("refused");
        assert!(err.to_string().contains("--last"), "{err}");
    }

    #[test]
    fn times_are_durations_ago_or_rfc3339() {
        let now = 1_796_529_157_000_000_000;
        assert_eq!(parse_time("5m", now), Ok(now - 300_000_000_000));
        assert_eq!(parse_time("2026-12-06T03:52:37Z", now), Ok(1_796_529_157_000_000_000));
        assert_eq!(parse_time("2026-12-06T04:52:37.5+01:00", now), Ok(1_796_529_157_500_000_000));
        assert_eq!(parse_time("1970-01-01T00:00:00Z", now), Ok(0));
        for bad in ["yesterday", "2026-13-06T00:00:00Z", "2026-12-06T03:52:37", "2026-12-06T03:52:37.Z"] {
            let err = parse_time(bad, now).expect_err("refused");
            assert!(err.contains("neither a duration"), "{bad}: {err}");
        }
    }
}
