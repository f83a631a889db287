//! `weir relay`: Hubble's Observer API for the whole cluster.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

/// Serve Hubble's Observer API for every node of the cluster, as Hubble
/// Relay does: the nodes come from an agent's Peer service, and GetFlows,
/// ServerStatus, GetNodes and GetNamespaces answer for all of them.
///
/// Finished requests (`--last N`) are merged in time order and cut to N over
/// all nodes; followed ones are put in time order within a sort buffer. A
/// node that cannot be reached is a NODE_UNAVAILABLE status event to
/// followers and is redialled every --retry-timeout; when it returns,
/// followers get NODE_CONNECTED and its flows resume after the last one
/// they saw. In a ClusterMesh, an agent's Peer service lists every
/// cluster's nodes (as cluster/node), so one relay serves the whole mesh.
/// Plaintext, no authentication: listen on a trusted network.
///
/// Example, with every agent started with `--hubble-listen 0.0.0.0:4244`:
///   weir relay --peer-service unix:///run/weir/agent.sock
///   hubble observe --server localhost:4245 --follow
///
/// With --ui-listen-address, the relay also serves the service map: a web
/// page of the cluster's pods, Services and the flows between them over the last
/// --ui-window, live, and its JSON API (/api/graph, /api/flows). The page
/// and its graph library are in the binary; it works offline.
///   weir relay --ui-listen-address :12000   # then open http://HOST:12000/
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct RelayArgs {
    /// Where to serve the Observer API (Hubble Relay's port is 4245; ":4245"
    /// means every address).
    #[arg(long, default_value = ":4245", value_parser = parse_listen)]
    listen_address: String,
    /// An agent's Peer service, which lists the cluster's nodes:
    /// `unix:///path/to/agent.sock` or `host:port` (an agent's --hubble-listen).
    #[arg(long, default_value = "unix:///run/weir/agent.sock")]
    peer_service: String,
    /// How long a node may take to accept a connection or answer a status request.
    #[arg(long, default_value = "5s", value_parser = weir_spec::parse_duration)]
    dial_timeout: Duration,
    /// How long to wait before redialling an unreachable node, and how often
    /// connected nodes are checked.
    #[arg(long, default_value = "5s", value_parser = weir_spec::parse_duration)]
    retry_timeout: Duration,
    /// At most this many followed flows are held back to be put in time order.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    sort_buffer_len_max: u32,
    /// A followed flow is held back at most this long.
    #[arg(long, default_value = "1s", value_parser = weir_spec::parse_duration)]
    sort_buffer_drain_timeout: Duration,
    /// Where to serve the service map (Hubble UI's port is 12000; ":12000"
    /// means every address). Not served unless given.
    #[arg(long, value_parser = parse_listen)]
    ui_listen_address: Option<String>,
    /// The service map shows the flows of this last stretch of time.
    #[arg(long, default_value = "5m", value_parser = parse_ui_window)]
    ui_window: Duration,
    /// The service map keeps at most this many edges; flows of edges past
    /// it are counted as refused.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..))]
    ui_max_edges: u32,
    /// The service map keeps at most this many nodes (pods, reserved
    /// identities, addresses).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(2..))]
    ui_max_nodes: u32,
    #[arg(long, default_value = "info", env = "WEIR_LOG")]
    log_level: String,
}

/// The service map's window: whole seconds, 10 s to a day (its counts are
/// kept in buckets of a thirtieth of it).
fn parse_ui_window(text: &str) -> Result<Duration, String> {
    let window = weir_spec::parse_duration(text)?;
    if window < Duration::from_secs(10) || window > Duration::from_secs(86_400) || window.subsec_nanos() != 0 {
        return Err(format!("{text:?}: the window is whole seconds from 10s to 24h"));
    }
    Ok(window)
}

/// Hubble's `:PORT` form means every address.
fn parse_listen(text: &str) -> Result<String, String> {
    let full = match text.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => text.to_string(),
    };
    full.parse::<std::net::SocketAddr>()
        .map(|_| full.clone())
        .map_err(|e| format!("{text:?} is not ADDRESS:PORT or :PORT ({e})"))
}

fn ui_limits(window: Duration, max_edges: u32, max_nodes: u32) -> weir_agent::hubble::relay::ui::graph::Limits {
    let window_ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
    weir_agent::hubble::relay::ui::graph::Limits {
        window_ns,
        bucket_ns: window_ns / 30,
        // Rates over the last minute, or the whole window if shorter.
        rate_window_ns: window_ns.min(60_000_000_000),
        max_edges: max_edges as usize,
        max_nodes: max_nodes as usize,
        ..Default::default()
    }
}

pub fn run(args: RelayArgs) -> anyhow::Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .map_err(|e| anyhow::anyhow!("--log-level {:?}: {e}", args.log_level))?;
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let config = weir_agent::hubble::relay::RelayConfig {
        listen_address: args.listen_address,
        peer_service: args.peer_service,
        dial_timeout: args.dial_timeout,
        retry_timeout: args.retry_timeout,
        sort_buffer_len_max: args.sort_buffer_len_max as usize,
        sort_buffer_drain_timeout: args.sort_buffer_drain_timeout,
        ui_listen_address: args.ui_listen_address,
        ui_limits: ui_limits(args.ui_window, args.ui_max_edges, args.ui_max_nodes),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        // Installed before the daemon starts (see termination).
        let shutdown = super::termination()?;
        weir_agent::hubble::relay::serve(config, shutdown).await?;
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hubbles_port_only_form_means_every_address() {
        assert_eq!(parse_listen(":4245").as_deref(), Ok("0.0.0.0:4245"));
        assert_eq!(parse_listen("127.0.0.1:4300").as_deref(), Ok("127.0.0.1:4300"));
        assert!(parse_listen("localhost").is_err());
        assert!(parse_listen(":port").is_err());
    }

    #[test]
    fn the_ui_window_is_whole_seconds_within_bounds() {
        assert_eq!(parse_ui_window("5m"), Ok(Duration::from_secs(300)));
        for bad in ["1s", "48h", "10500ms", "soon"] {
            assert!(parse_ui_window(bad).is_err(), "{bad}");
        }
    }
}
