//! The CLI's one way to its agents: the runtime its calls run on, a client
//! of each of an agent's services over the agent's socket, and the words of
//! an agent's refusal. Commands take these from here, never from each other.

use std::path::PathBuf;

use tonic::transport::Channel;
pub(crate) use weir_agent::client::ServiceClient;
use weir_proto::agent::v1 as pb;

/// The agent's own service: status and profiles.
pub(crate) type Agent = pb::agent_client::AgentClient<Channel>;
/// The packet filter.
pub(crate) type Filter = pb::filter_client::FilterClient<Channel>;
/// The socket load balancer's Services and EndpointSlices.
pub(crate) type Services = pb::services_client::ServicesClient<Channel>;
/// Runtime security: policies and events.
pub(crate) type Runtime = pb::runtime_client::RuntimeClient<Channel>;
/// Network policy and the flows the pod path judged.
pub(crate) type NetworkPolicy = pb::network_policy_client::NetworkPolicyClient<Channel>;
/// Containers the CNI plugin hands over.
pub(crate) type Endpoints = pb::endpoints_client::EndpointsClient<Channel>;
/// Chaos experiments.
pub(crate) type Chaos = pb::chaos_client::ChaosClient<Channel>;
/// The XDP load balancer.
pub(crate) type LoadBalancer = pb::load_balancer_client::LoadBalancerClient<Channel>;
/// The store follower's progress (`StoreSync`).
pub(crate) type StoreSync = weir_proto::store::v1::store_sync_client::StoreSyncClient<Channel>;
/// What the node knows of the other clusters of its mesh (`ClusterMesh`).
pub(crate) type ClusterMesh = weir_proto::clustermesh::v1::cluster_mesh_client::ClusterMeshClient<Channel>;

/// The runtime a command's calls to agents run on: one thread is enough.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// A client of one service of the agent listening on `socket`; which one,
/// the type asked for says (`connect::<client::Agent>`).
pub(crate) async fn connect<C: ServiceClient>(socket: PathBuf) -> anyhow::Result<C> {
    Ok(weir_agent::client::connect(socket).await?)
}

/// The message of an error from an agent: a gRPC status's own message, or the whole chain.
pub(crate) fn status_message(err: &anyhow::Error) -> String {
    match err.downcast_ref::<tonic::Status>() {
        Some(status) => status.message().to_string(),
        None => format!("{err:#}"),
    }
}
