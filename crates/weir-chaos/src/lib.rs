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
//! - [`select`]: which pods an experiment picks (`mode` and `value`).
//! - [`delay`]: how long the delay line holds each packet (netem's model).
//! - [`params`]: delay's and bandwidth's parameters, checked as netem and
//!   tbf would.
//! - [`duration`]: Go duration strings (`30s`, `1m30s`, `250ms`).

pub mod delay;
pub mod duration;
pub mod external;
pub mod params;
pub mod pod;
pub mod select;
pub mod service;
pub mod socket;
pub mod spec;

/// Parses and validates one chaos document of `kind` (`NetworkChaos`,
/// `PodChaos` or Weir's `SocketChaos` and `ServiceChaos`).
pub fn parse(kind: &str, yaml: &str) -> Result<Experiment, weir_spec::SpecError> {
    match kind {
        socket::KIND => socket::SocketChaos::parse(yaml),
        pod::KIND => pod::PodChaos::parse(yaml),
        service::KIND => service::ServiceChaos::parse(yaml),
        _ => NetworkChaos::parse(yaml),
    }
}

pub use delay::{DelayModel, DelayState, Reorder};
pub use select::{choose, matches, pairs, seed_of, seeded, PodRef};
pub use spec::{Direction, Experiment, Fault, Mode, NetworkChaos, PodSelection, Selector, Shaping};
