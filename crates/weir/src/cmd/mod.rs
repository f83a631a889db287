//! Subcommands.

mod agent;
mod apply;
mod chaos;
pub mod cni;
mod filter;
mod follow;
mod get;
mod hubble_json;
mod lab;
mod policy;
mod probe;
mod profile;
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
    /// CiliumNetworkPolicies, Chaos Mesh NetworkChaos, and Weir FilterPolicies
    /// and RuntimePolicies, to every node.
    Apply(apply::ApplyArgs),
    /// Remove the Services, EndpointSlices, network policies, NetworkChaos and RuntimePolicies a file names.
    Delete(apply::DeleteArgs),
    /// Show what the cluster's store holds, in the YAML it was applied as.
    Get(get::GetArgs),
    Events(runtime::EventsArgs),
    /// Runtime security: the backend each node enforces with, and its rules.
    #[command(subcommand)]
    Runtime(runtime::RuntimeCommand),
    Observe(policy::ObserveArgs),
    /// Chaos experiments (Chaos Mesh NetworkChaos): list them, stop them.
    #[command(subcommand)]
    Chaos(chaos::ChaosCommand),
    /// Network policy: what each node enforces, and which rule decides a flow.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
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
    /// Whether this invocation runs a long-lived daemon.
    pub fn is_daemon(&self) -> bool {
        matches!(self.command, Command::Agent(_))
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
        Command::Observe(args) => policy::observe(args),
        Command::Chaos(cmd) => chaos::run(cmd),
        Command::Policy(cmd) => policy::run(cmd),
        Command::Agent(args) => agent::run(*args),
        Command::Cni => Ok(cni::run()),
        Command::Setup(cmd) => setup::run(cmd),
        Command::Status(args) => status::run(args),
    }
}

/// The message of an error from an agent: a gRPC status's own message, or the whole chain.
pub(crate) fn status_message(err: &anyhow::Error) -> String {
    match err.downcast_ref::<tonic::Status>() {
        Some(status) => status.message().to_string(),
        None => format!("{err:#}"),
    }
}
