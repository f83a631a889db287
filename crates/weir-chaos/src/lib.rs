//! Chaos experiments, pure.
//!
//! - [`spec`]: Chaos Mesh's `NetworkChaos` (`chaos-mesh.org/v1alpha1`) as
//!   its users write it; what Weir cannot honour is refused by its path.
//! - [`external`]: NetworkChaos's `externalTargets`.
//! - [`socket`]: Weir's `SocketChaos` (`chaos.weir.dev/v1alpha1`): connect()
//!   failing with a chosen errno.
//! - [`service`]: Weir's `ServiceChaos`: a share of a Service's new
//!   connections refused or sent to a black hole.
//! - [`pod`]: Chaos Mesh's `PodChaos` (`pod-kill`).
//! - [`dns`]: `DNSChaos`, Chaos Mesh's and Weir's: DNS queries answered
//!   NXDOMAIN or SERVFAIL, or delayed, for selected names.
//! - [`select`]: which pods an experiment picks (`mode` and `value`).
//! - [`delay`]: how long the delay line holds each packet (netem's model).
//! - [`params`]: delay's and bandwidth's parameters, checked as netem and
//!   tbf would.
//! - [`duration`]: Go duration strings (`30s`, `1m30s`, `250ms`).
//! - [`effect`]: what a fault did to a packet it let through, for flows.

pub mod delay;
pub mod dns;
#[cfg(test)]
mod doc_examples;
pub mod duration;
pub mod effect;
pub mod external;
pub mod params;
pub mod pod;
pub mod select;
pub mod service;
pub mod socket;
pub mod spec;

/// Parses and validates one chaos document of `kind` (`NetworkChaos`,
/// `PodChaos`, `DNSChaos` or Weir's `SocketChaos` and `ServiceChaos`).
pub fn parse(kind: &str, yaml: &str) -> Result<Experiment, weir_spec::SpecError> {
    match kind {
        socket::KIND => socket::SocketChaos::parse(yaml),
        pod::KIND => pod::PodChaos::parse(yaml),
        dns::KIND => dns::parse(yaml),
        service::KIND => service::ServiceChaos::parse(yaml),
        _ => NetworkChaos::parse(yaml),
    }
}

pub use delay::{DelayModel, DelayState, Reorder};
pub use select::{choose, matches, pairs, seed_of, seeded, PodRef};
pub use spec::{Direction, Experiment, Fault, Mode, NetworkChaos, PodSelection, Selector, Shaping};
