//! The `Services` service: Kubernetes Services and EndpointSlices for the
//! socket load balancer (`weir apply`, `weir service`).

use std::sync::Arc;

use tonic::{Request, Response, Status};
use weir_proto::agent::v1 as pb;

use super::convert::*;
use super::AgentState;

/// The `Services` service, on the agent's state.
#[derive(Debug, Clone)]
pub struct ServicesApi(pub Arc<AgentState>);

#[tonic::async_trait]
impl pb::services_server::Services for ServicesApi {
    async fn service_apply(
        &self,
        request: Request<pb::ServiceApplyRequest>,
    ) -> Result<Response<pb::ServiceChangeResponse>, Status> {
        let yaml = request.into_inner().yaml;
        let outcome = self.0.with_services(move |s| s.apply(&yaml).map_err(service_status)).await?;
        self.0.sync_lb_services().await;
        Ok(Response::new(change_response(outcome)))
    }

    async fn service_delete(
        &self,
        request: Request<pb::ServiceDeleteRequest>,
    ) -> Result<Response<pb::ServiceChangeResponse>, Status> {
        let r = request.into_inner();
        let key = weir_service::ObjectKey { namespace: r.namespace, name: r.name };
        let outcome = self.0.with_services(move |s| s.delete(&r.kind, &key).map_err(service_status)).await?;
        self.0.sync_lb_services().await;
        Ok(Response::new(change_response(outcome)))
    }

    async fn service_list(
        &self,
        _request: Request<pb::ServiceListRequest>,
    ) -> Result<Response<pb::ServiceListResponse>, Status> {
        let cgroup = self.0.config.socket_lb_cgroup().display().to_string();
        if let Err(why) = &self.0.services {
            return Ok(Response::new(pb::ServiceListResponse { cgroup, problem: why.clone(), ..Default::default() }));
        }
        let (views, hooks) = self
            .0
            .with_services(|s| {
                let hooks = s.attachments.iter().map(|a| a.hook.clone()).collect::<Vec<_>>();
                Ok((s.views().map_err(service_status)?, hooks))
            })
            .await?;
        Ok(Response::new(pb::ServiceListResponse {
            frontends: views.into_iter().map(frontend_message).collect(),
            cgroup,
            hooks,
            problem: String::new(),
        }))
    }
}
