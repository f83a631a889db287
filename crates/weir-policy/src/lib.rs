//! Identity-based network policy, pure: Kubernetes `NetworkPolicy` and the
//! common subset of `CiliumNetworkPolicy` (`k8s`, `cilium`), one shape for
//! both (`rules`), identities (`identity`), and `compile`, which turns
//! policies and pods into the ipcache and per-endpoint policy entries the
//! datapath holds, and decides a packet exactly as the kernel will.

pub mod cilium;
pub mod compile;
pub mod identity;
pub mod ipblock;
pub mod ipcache_index;
pub mod k8s;
pub mod rules;

pub use compile::{compile, decide, CidrIdentities, Cluster, Compiled, Decision, EndpointPolicy, MapEntry, Pod};
pub use rules::{Direction, Kind, Policy, PolicyKey};

use weir_spec::SpecError;

/// Parses one document of either kind into a policy, every error naming its field.
pub fn parse(kind: &str, yaml: &str) -> Result<Policy, SpecError> {
    match kind {
        "NetworkPolicy" => rules::from_network_policy(&weir_spec::parse_yaml(yaml)?),
        "CiliumNetworkPolicy" => rules::from_cilium_policy(&weir_spec::parse_yaml(yaml)?),
        other => Err(weir_spec::err("kind", format!("{other:?} is not a network policy"))),
    }
}

#[cfg(test)]
mod tests;
