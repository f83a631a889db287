//! The lab: a whole cluster on one machine.
//!
//! # Layout
//! - [`spec`]: the `Lab` YAML document, parsed and validated with no I/O.
//! - [`mesh`]: the `ClusterMesh` document: several clusters (each a lab)
//!   on one fabric, lowered to one `Lab` per cluster.
//! - [`plan`]: every name and address a spec resolves to, with no I/O.
//! - [`runtime`]: builds, inspects and tears down labs: network namespaces,
//!   veth pairs, a fabric bridge, cgroups, agents.
//! - `edge`: the load balancers, router and clients of `spec.edge`.
//! - [`follow`]: waits for the agents to apply a change of the pods file.
//!
//! A node is a network namespace on a shared fabric (a bridge in its own
//! namespace). A pod is a network namespace with a veth to its node and a
//! cgroup of its own. External hosts sit on the fabric outside the cluster.
//! Without an agent's datapath, a pod reaches only its own node.

mod edge;
pub mod follow;
pub mod mesh;
pub mod mesh_runtime;
pub mod plan;
pub mod runtime;
pub mod spec;

#[cfg(test)]
mod mesh_tests;
#[cfg(test)]
mod spec_tests;

pub use mesh::MeshSpec;
pub use plan::LabPlan;
pub use runtime::{LabError, UpOptions};
pub use spec::{LabSpec, SpecError};
