//! Services as Kubernetes defines them, and the tables Weir's socket load
//! balancer holds for them. Pure: no I/O.
//!
//! - [`k8s`]: `Service` and `EndpointSlice` documents, every field.
//! - [`table`]: validation, the cluster's applied state, and per-node frontends.
//! - [`maglev`]: Maglev consistent hashing.

pub mod k8s;
pub mod maglev;
pub mod plan;
pub mod table;

pub use table::{
    frontends, parse_stream, Algorithm, ApplyReport, Backend, BackendState, ClusterState, Frontend, FrontendKind,
    HealthCheck, NodeContext, Object, ObjectKey, ServicePortRef,
};

#[cfg(test)]
mod tests;
