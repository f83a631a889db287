//! Connecting to an agent's gRPC socket, for the CLI and for tests: one
//! channel carries every service the agent serves, and each service's
//! client takes the agent's message size limits.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use weir_proto::agent::v1::agent_client::AgentClient;
use weir_proto::agent::v1::chaos_client::ChaosClient;
use weir_proto::agent::v1::endpoints_client::EndpointsClient;
use weir_proto::agent::v1::filter_client::FilterClient;
use weir_proto::agent::v1::load_balancer_client::LoadBalancerClient;
use weir_proto::agent::v1::network_policy_client::NetworkPolicyClient;
use weir_proto::agent::v1::runtime_client::RuntimeClient;
use weir_proto::agent::v1::services_client::ServicesClient;
use weir_proto::clustermesh::v1::cluster_mesh_client::ClusterMeshClient;
use weir_proto::store::v1::store_sync_client::StoreSyncClient;

/// An error reaching an agent.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no agent socket at {0}: start one with `weir agent`, or a lab with `weir lab up -f examples/lab.yaml`")]
    NoSocket(PathBuf),
    #[error("connecting to the agent at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
}

/// The largest gRPC message either side accepts: a whole cluster's Services
/// and EndpointSlices in one apply (10k services with 10 endpoints each are
/// about 10 MB of YAML), or the list of every frontend.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// A client of one of the agent's services.
pub trait ServiceClient: Sized {
    /// The client over `channel`, accepting and sending messages up to [`MAX_MESSAGE_BYTES`].
    fn over(channel: Channel) -> Self;
}

macro_rules! service_clients {
    ($($client:ident),* $(,)?) => {$(
        impl ServiceClient for $client<Channel> {
            fn over(channel: Channel) -> Self {
                $client::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES)
            }
        }
    )*};
}

service_clients!(
    AgentClient,
    FilterClient,
    ServicesClient,
    RuntimeClient,
    NetworkPolicyClient,
    EndpointsClient,
    ChaosClient,
    LoadBalancerClient,
    StoreSyncClient,
    ClusterMeshClient,
);

/// A client of one of the services of the agent listening on `socket`.
pub async fn connect<C: ServiceClient>(socket: PathBuf) -> Result<C, ClientError> {
    Ok(C::over(channel(socket).await?))
}

/// A channel to the agent listening on `socket`, for any of its services.
pub async fn channel(socket: PathBuf) -> Result<Channel, ClientError> {
    if !socket.exists() {
        return Err(ClientError::NoSocket(socket));
    }
    let path = socket.clone();
    // The URI is required by the API but unused: the connector dials the socket.
    let endpoint = Endpoint::from_static("http://weir-agent.local");
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|source| ClientError::Connect { path: socket, source })
}
