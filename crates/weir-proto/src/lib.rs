//! The agent's gRPC API, generated from `proto/weir/agent/v1/agent.proto`.
#![allow(missing_debug_implementations, clippy::all, reason = "generated code")]

pub mod agent {
    pub mod v1 {
        tonic::include_proto!("weir.agent.v1");
    }
}
