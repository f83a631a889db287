//! Chaos experiments, pure.
//!
//! - [`spec`]: Chaos Mesh's `NetworkChaos` (`chaos-mesh.org/v1alpha1`) as
//!   its users write it; what Weir cannot honour is refused by its path.
//! - [`select`]: which pods an experiment picks (`mode` and `value`).
//! - [`delay`]: how long the delay line holds each packet (netem's model).
//! - [`duration`]: Go duration strings (`30s`, `1m30s`, `250ms`).

pub mod delay;
pub mod duration;
pub mod select;
pub mod spec;

pub use delay::{DelayModel, DelayState, Reorder};
pub use select::{choose, matches, pairs, seed_of, seeded, PodRef};
pub use spec::{Direction, Experiment, Fault, Mode, NetworkChaos, PodSelection, Selector, Shaping};
