//! Subcommands.

mod agent;
mod apply;
mod chaos;
mod client;
mod clustermesh;
pub mod cni;
pub mod containerd;
mod filter;
mod follow;
mod get;
mod lab;
mod lb;
mod lb_edit;
mod lb_stats;
mod observe;
mod policy;
mod probe;
mod profile;
mod relay;
mod runtime;
mod service;
mod setup;
mod status;
mod store;
mod target;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Weir: kernel-level resilience for Linux hosts and Kubernetes-style clusters.
///
/// Start with `weir probe` to see what this kernel allows, then
/// `weir lab up -f examples/lab.yaml` to run a whole cluster on this machine.
#[derive(Debug, Parser)]
#[command(name = "weir", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build, inspect and tear down lab clusters on this machine.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    Probe(probe::ProbeArgs),
    #[command(subcommand)]
    Filter(filter::FilterCommand),
    Profile(profile::ProfileArgs),
    /// Apply Kubernetes Services, EndpointSlices and NetworkPolicies,
    /// CiliumNetworkPolicies, Chaos Mesh NetworkChaos, PodChaos and DNSChaos, and
    /// Weir FilterPolicies, RuntimePolicies, SocketChaos, ServiceChaos, DNSChaos and XdpLoadBalancers, to
    /// every node.
    Apply(apply::ApplyArgs),
    /// Remove what a file names: Services, EndpointSlices, network policies,
    /// chaos experiments, RuntimePolicies, and FilterPolicies from a cluster's store.
    Delete(apply::DeleteArgs),
    /// Show what the cluster's store holds, in the YAML it was applied as.
    Get(get::GetArgs),
    Events(runtime::EventsArgs),
    /// Runtime security: the backend each node enforces with, and its rules.
    #[command(subcommand)]
    Runtime(runtime::RuntimeCommand),
    Observe(Box<observe::ObserveArgs>),
    Relay(relay::RelayArgs),
    /// Chaos experiments (NetworkChaos, PodChaos, SocketChaos, DNSChaos, ServiceChaos): list them, stop them.
    #[command(subcommand)]
    Chaos(chaos::ChaosCommand),
    /// ClusterMesh: what each node knows of the other clusters of its mesh.
    #[command(subcommand)]
    Clustermesh(clustermesh::ClusterMeshCommand),
    /// Network policy: what each node enforces, and which rule decides a flow.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// The XDP L4 load balancer: its VIPs, reals and counters; where a packet goes.
    #[command(subcommand)]
    Lb(lb::LbCommand),
    /// Services the socket load balancer holds: list, get, explain.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    Agent(Box<agent::AgentArgs>),
    /// Run as the CNI plugin: CNI_* environment and the network config on
    /// stdin, a result or error object on stdout (the same as running this
    /// binary under the name `weir-cni`).
    Cni,
    #[command(subcommand)]
    Setup(setup::SetupCommand),
    Status(status::StatusArgs),
}

impl Cli {
    /// Parses the command line (with `weir observe`'s `--not` joined to the
    /// flag it negates).
    pub fn from_args() -> Self {
        Self::parse_from(observe::join_negations(std::env::args_os().collect()))
    }

    /// Whether this invocation runs a long-lived daemon.
    pub fn is_daemon(&self) -> bool {
        matches!(self.command, Command::Agent(_) | Command::Relay(_))
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Lab(cmd) => lab::run(cmd),
        Command::Probe(args) => probe::run(args),
        Command::Filter(cmd) => filter::run(cmd),
        Command::Profile(args) => profile::run(args),
        Command::Apply(args) => apply::apply(args),
        Command::Delete(args) => apply::delete(args),
        Command::Get(args) => get::run(args),
        Command::Service(cmd) => service::run(cmd),
        Command::Events(args) => runtime::events(args),
        Command::Runtime(cmd) => runtime::run(cmd),
        Command::Observe(args) => observe::run(*args),
        Command::Relay(args) => relay::run(args),
        Command::Chaos(cmd) => chaos::run(cmd),
        Command::Clustermesh(cmd) => clustermesh::run(cmd),
        Command::Lb(cmd) => lb::run(cmd),
        Command::Policy(cmd) => policy::run(cmd),
        Command::Agent(args) => agent::run(*args),
        Command::Cni => Ok(cni::run()),
        Command::Setup(cmd) => setup::run(cmd),
        Command::Status(args) => status::run(args),
    }
}

/// A daemon's clean stop: SIGTERM or SIGINT. Installed when called (inside
/// the runtime), so a signal that arrives while the daemon starts still
/// means a clean stop rather than the default instant death.
pub(crate) fn termination() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        }
    })
}
