//! The `Chaos` service: chaos experiments started (`weir apply`), listed
//! and stopped (`weir chaos`).

use std::sync::Arc;

use tonic::{Request, Response, Status};
use weir_proto::agent::v1 as pb;

use super::convert::*;
use super::AgentState;

/// The `Chaos` service, on the agent's state.
#[derive(Debug, Clone)]
pub struct ChaosApi(pub Arc<AgentState>);

#[tonic::async_trait]
impl pb::chaos_server::Chaos for ChaosApi {
    async fn chaos_apply(
        &self,
        request: Request<pb::ChaosApplyRequest>,
    ) -> Result<Response<pb::ChaosChangeResponse>, Status> {
        let request = request.into_inner();
        let pods = self.0.with_netpolicy(|p| Ok(p.pods().to_vec())).await?;
        // ServiceChaos names Services: their frontends, as this node's socket load balancer holds them.
        let frontends = match &self.0.services {
            Ok(_) => Ok(self.0.with_services(|s| Ok(s.frontends())).await?),
            Err(why) => Err(why.clone()),
        };
        let started = self
            .0
            .with_chaos(move |c| {
                let frontends = frontends.as_deref().map_err(Clone::clone);
                c.apply(&request.yaml, request.started_unix_ns, &pods, frontends).map_err(chaos_status)
            })
            .await?;
        Ok(Response::new(pb::ChaosChangeResponse { started, stopped: Vec::new() }))
    }

    async fn chaos_stop(
        &self,
        request: Request<pb::ChaosStopRequest>,
    ) -> Result<Response<pb::ChaosChangeResponse>, Status> {
        let request = request.into_inner();
        let stopped = self.0.with_chaos(move |c| c.stop(&request.names, request.all).map_err(chaos_status)).await?;
        Ok(Response::new(pb::ChaosChangeResponse { started: Vec::new(), stopped }))
    }

    async fn chaos_list(
        &self,
        _request: Request<pb::ChaosListRequest>,
    ) -> Result<Response<pb::ChaosListResponse>, Status> {
        if let Err(why) = &self.0.chaos {
            return Ok(Response::new(pb::ChaosListResponse { problem: why.clone(), ..Default::default() }));
        }
        Ok(Response::new(self.0.with_chaos(|c| c.list().map_err(chaos_status)).await?))
    }
}
