//! Services as Kubernetes defines them, and the tables Weir's socket load
//! balancer holds for them. Pure: no I/O.
//!
//! - [`k8s`]: `Service` and `EndpointSlice` documents, every field.
//! - [`table`]: validation, the cluster's applied state, and per-node frontends.
//! - [`network`]: checks against the cluster: node-port range, addresses in use, IP families.
//! - [`hostport`]: containers' published ports (CNI `portMappings`) as frontends.
//! - [`maglev`]: Maglev consistent hashing.
//! - [`picks`]: runs of the kernel's backend choice array, one per frontend.

pub mod hostport;
pub mod k8s;
pub mod maglev;
pub mod network;
pub mod picks;
pub mod plan;
pub mod table;

pub use network::ClusterNetwork;
pub use table::{
    frontends, parse_stream, Algorithm, ApplyReport, Backend, BackendState, ClusterState, Frontend, FrontendKind,
    HealthCheck, NodeContext, Object, ObjectKey, ServicePortRef,
};

#[cfg(test)]
mod tests;
