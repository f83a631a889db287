//! The `LoadBalancer` service: the XDP L4 load balancer's configuration
//! (`weir apply` of an XdpLoadBalancer), status and simulation (`weir lb`).

use std::sync::Arc;

use tonic::{Request, Response, Status};
use weir_proto::agent::v1 as pb;

use super::convert::*;
use super::AgentState;

/// The `LoadBalancer` service, on the agent's state.
#[derive(Debug, Clone)]
pub struct LoadBalancerApi(pub Arc<AgentState>);

#[tonic::async_trait]
impl pb::load_balancer_server::LoadBalancer for LoadBalancerApi {
    async fn lb_apply(&self, request: Request<pb::LbApplyRequest>) -> Result<Response<pb::LbApplyResponse>, Status> {
        let yaml = request.into_inner().yaml;
        let changes = self.0.with_lb(move |lb| lb.apply(&yaml).map_err(lb_status)).await?;
        Ok(Response::new(pb::LbApplyResponse { changes }))
    }

    async fn lb_edit(&self, request: Request<pb::LbEditRequest>) -> Result<Response<pb::LbEditResponse>, Status> {
        let request = request.into_inner();
        let changes = self.0.with_lb(move |lb| lb.edit(request).map_err(lb_status)).await?;
        Ok(Response::new(pb::LbEditResponse { changes }))
    }

    async fn lb_status(
        &self,
        _request: Request<pb::LbStatusRequest>,
    ) -> Result<Response<pb::LbStatusResponse>, Status> {
        if self.0.lb.is_none() {
            let problem = "not running on this node (agent flags --lb-interface, --lb-decap-interface)".to_string();
            return Ok(Response::new(pb::LbStatusResponse { problem, ..Default::default() }));
        }
        Ok(Response::new(self.0.with_lb(|lb| lb.status().map_err(lb_status)).await?))
    }

    async fn lb_simulate(
        &self,
        request: Request<pb::LbSimulateRequest>,
    ) -> Result<Response<pb::LbSimulateResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(self.0.with_lb(move |lb| lb.simulate(&request).map_err(lb_status)).await?))
    }
}
