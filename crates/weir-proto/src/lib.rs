//! The agent's gRPC API, generated from `proto/weir/agent/v1/agent.proto`,
//! and Hubble's Observer API, generated from `proto/hubble/` (Hubble's package
//! names: `observer`, `flow`, `relay`, `peer`).
#![allow(missing_debug_implementations, clippy::all, reason = "generated code")]

pub mod agent {
    pub mod v1 {
        tonic::include_proto!("weir.agent.v1");
    }
}

/// How an agent follows the cluster's store (`proto/weir/store/v1/store.proto`).
pub mod store {
    pub mod v1 {
        tonic::include_proto!("weir.store.v1");
    }
}

/// What an agent knows of its ClusterMesh (`proto/weir/clustermesh/v1/clustermesh.proto`).
pub mod clustermesh {
    pub mod v1 {
        tonic::include_proto!("weir.clustermesh.v1");
    }
}

/// containerd's Containers API, as far as the CNI plugin reads it
/// (`proto/containerd/services/containers/v1/containers.proto`).
pub mod containerd {
    pub mod containers {
        pub mod v1 {
            tonic::include_proto!("containerd.services.containers.v1");
        }
    }
}

pub mod observer {
    tonic::include_proto!("observer");
}

pub mod flow {
    tonic::include_proto!("flow");
}

pub mod relay {
    tonic::include_proto!("relay");
}

pub mod peer {
    tonic::include_proto!("peer");
}

/// The encoded `FileDescriptorSet` of `proto/hubble/`.
pub const HUBBLE_DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hubble.bin"));
