//! The `Endpoints` service: containers the CNI plugin hands over, their
//! published ports on the socket load balancer and their identity and
//! policy on the pod path.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use weir_proto::agent::v1 as pb;

use super::convert::*;
use super::AgentState;

/// The `Endpoints` service, on the agent's state.
#[derive(Debug, Clone)]
pub struct EndpointsApi(pub Arc<AgentState>);

#[tonic::async_trait]
impl pb::endpoints_server::Endpoints for EndpointsApi {
    async fn endpoint_add(
        &self,
        request: Request<pb::EndpointAddRequest>,
    ) -> Result<Response<pb::EndpointAddResponse>, Status> {
        let request = request.into_inner();
        let record = crate::cni_endpoints::record_of(&request, &self.0.desired.node)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let veth = record.host_interface.clone();
        // Host ports first: a port someone holds refuses the endpoint before anything else changes.
        let published = match (&self.0.services, record.host_ports.is_empty()) {
            (Err(why), false) => {
                return Err(Status::failed_precondition(format!(
                    "port mappings need the socket load balancer, which is unavailable on this node: {why}"
                )))
            }
            (Err(_), true) => None,
            (Ok(_), _) => {
                let (container, veth) = (record.clone(), veth.clone());
                Some(self.0.with_services(move |s| s.publish(&veth, Some(&container)).map_err(service_status)).await?)
            }
        };
        let added = self.0.with_netpolicy(move |p| p.add_cni_endpoint(record).map_err(netpolicy_status)).await;
        match (added, published) {
            (Ok(identity), _) => Ok(Response::new(pb::EndpointAddResponse { identity })),
            (Err(status), Some(previous)) => {
                let undone =
                    self.0.with_services(move |s| s.restore_host_ports(&veth, previous).map_err(service_status)).await;
                if let Err(e) = undone {
                    tracing::error!(error = %e, "putting a refused endpoint's host ports back failed");
                }
                Err(status)
            }
            (Err(status), None) => Err(status),
        }
    }

    async fn endpoint_delete(
        &self,
        request: Request<pb::EndpointDeleteRequest>,
    ) -> Result<Response<pb::EndpointDeleteResponse>, Status> {
        let veth = request.into_inner().host_interface;
        if self.0.services.is_ok() {
            let veth = veth.clone();
            self.0.with_services(move |s| s.publish(&veth, None).map_err(service_status)).await?;
        }
        let existed = self.0.with_netpolicy(move |p| p.delete_cni_endpoint(&veth).map_err(netpolicy_status)).await?;
        Ok(Response::new(pb::EndpointDeleteResponse { existed }))
    }
}
