//! `weir setup cni`: install this binary as the `weir-cni` plugin where
//! runtimes look for plugins, and a conflist where they look for networks.

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use weir_cni::config;

/// The plugin directories runtimes search: containerd's and the CNI
/// project's default, and Debian's (podman, Debian's containerd).
const PLUGIN_DIRS: &[&str] = &["opt/cni/bin", "usr/lib/cni"];
/// Where runtimes read network configs.
const CONF_DIR: &str = "etc/cni/net.d";

/// Install parts of Weir into the host.
#[derive(Debug, Subcommand)]
pub enum SetupCommand {
    Cni(CniArgs),
}

/// Install the `weir-cni` plugin (this binary) into /opt/cni/bin and
/// /usr/lib/cni, and a conflist naming it into /etc/cni/net.d.
///
/// Files are replaced by rename, so a plugin run in progress keeps its
/// binary. The network config is checked by the plugin's own rules first:
/// nothing is written for a config it would refuse.
#[derive(Debug, Args)]
pub struct CniArgs {
    /// The node's pod CIDR (IPv4), handed out by Weir's IPAM.
    #[arg(long)]
    subnet: String,
    /// The containers' gateway (the host side of every veth); the subnet's
    /// first address unless given.
    #[arg(long)]
    gateway: Option<Ipv4Addr>,
    /// The node's IPv6 pod CIDR: containers are dual-stack, one address of
    /// each family.
    #[arg(long)]
    subnet6: Option<String>,
    /// The containers' IPv6 gateway; the subnet6's first address unless given.
    #[arg(long, requires = "subnet6")]
    gateway6: Option<Ipv6Addr>,
    /// The network's name (the conflist's `name`, and its file name).
    #[arg(long, default_value = "weir")]
    name: String,
    /// The conflist's cniVersion: 1.1.0 for runtimes that send STATUS and GC,
    /// 1.0.0 or 0.4.0 for older ones.
    #[arg(long, default_value = "1.0.0")]
    cni_version: String,
    /// Where Weir's IPAM keeps its allocations.
    #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// The host agent's socket the plugin hands containers to (the
    /// config's `agentSocket`; the default is /run/weir/agent.sock).
    #[arg(long, conflicts_with = "no_agent")]
    agent_socket: Option<PathBuf>,
    /// Containers get routed connectivity only: no agent is told (`"agent": false`).
    #[arg(long)]
    no_agent: bool,
    /// Install under this root instead of / (for packaging and tests).
    #[arg(long, default_value = "/")]
    prefix: PathBuf,
    /// Print what would be written, write nothing.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(cmd: SetupCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SetupCommand::Cni(args) => cni(args),
    }
}

fn cni(args: CniArgs) -> anyhow::Result<ExitCode> {
    let mut plugin = serde_json::json!({
        "type": config::PLUGIN_TYPE,
        "subnet": args.subnet,
        "dataDir": args.data_dir,
    });
    if let Some(gateway) = args.gateway {
        plugin["gateway"] = serde_json::json!(gateway);
    }
    if let Some(subnet6) = &args.subnet6 {
        plugin["subnet6"] = serde_json::json!(subnet6);
    }
    if let Some(gateway6) = args.gateway6 {
        plugin["gateway6"] = serde_json::json!(gateway6);
    }
    if let Some(socket) = &args.agent_socket {
        plugin["agentSocket"] = serde_json::json!(socket);
    }
    if args.no_agent {
        plugin["agent"] = serde_json::json!(false);
    }
    // What a runtime will hand the plugin: the entry plus the list's name and version.
    let mut as_run = plugin.clone();
    as_run["name"] = serde_json::json!(args.name);
    as_run["cniVersion"] = serde_json::json!(args.cni_version);
    if let Err(err) = config::parse(as_run.to_string().as_bytes()) {
        bail!(
            "the network config would be refused: {}{}",
            err.msg,
            if err.details.is_empty() { String::new() } else { format!(" ({})", err.details) }
        );
    }
    let conflist = serde_json::json!({ "cniVersion": args.cni_version, "name": args.name, "plugins": [plugin] });
    let conflist_text = format!("{}\n", serde_json::to_string_pretty(&conflist)?);
    let binary = std::env::current_exe().context("finding this binary")?;
    let plugins: Vec<PathBuf> = PLUGIN_DIRS.iter().map(|d| args.prefix.join(d).join(config::PLUGIN_TYPE)).collect();
    let conf_path = args.prefix.join(CONF_DIR).join(format!("10-{}.conflist", args.name));

    for path in &plugins {
        println!(
            "{} {} -> {}",
            if args.dry_run { "would install" } else { "installing" },
            binary.display(),
            path.display()
        );
    }
    println!("{} {}:\n{conflist_text}", if args.dry_run { "would write" } else { "writing" }, conf_path.display());
    if args.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    for path in &plugins {
        replace_file(path, 0o755, |tmp| {
            fs::copy(&binary, tmp).with_context(|| format!("copying {} to {}", binary.display(), tmp.display()))?;
            Ok(())
        })?;
    }
    replace_file(&conf_path, 0o644, |tmp| {
        fs::File::create(tmp)
            .and_then(|mut f| f.write_all(conflist_text.as_bytes()))
            .with_context(|| format!("writing {}", tmp.display()))
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Writes `path` through a temporary file renamed over it.
fn replace_file(path: &Path, mode: u32, write: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let dir = path.parent().context("an install path has a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.weir-tmp"));
    let result = write(&tmp)
        .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).context("setting permissions"))
        .and_then(|()| fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display())));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
