//! The `NetworkPolicy` service: network policies (`weir apply`, `weir
//! policy`) and the flows the pod path judged (`weir observe`'s source).

use std::sync::Arc;

use tonic::{Request, Response, Status};
use weir_proto::agent::v1 as pb;

use super::convert::*;
use super::AgentState;

/// The `NetworkPolicy` service, on the agent's state.
#[derive(Debug, Clone)]
pub struct NetworkPolicyApi(pub Arc<AgentState>);

#[tonic::async_trait]
impl pb::network_policy_server::NetworkPolicy for NetworkPolicyApi {
    async fn policy_apply(
        &self,
        request: Request<pb::PolicyApplyRequest>,
    ) -> Result<Response<pb::PolicyChangeResponse>, Status> {
        let yaml = request.into_inner().yaml;
        let reply = self
            .0
            .with_netpolicy(move |p| {
                let change = p.apply(&yaml).map_err(netpolicy_status)?;
                Ok(netpolicy_change(change, p.list().revision))
            })
            .await?;
        Ok(Response::new(reply))
    }

    async fn policy_delete(
        &self,
        request: Request<pb::PolicyDeleteRequest>,
    ) -> Result<Response<pb::PolicyChangeResponse>, Status> {
        let names = request.into_inner().names;
        let reply = self
            .0
            .with_netpolicy(move |p| {
                let change = p.delete(&names).map_err(netpolicy_status)?;
                Ok(netpolicy_change(change, p.list().revision))
            })
            .await?;
        Ok(Response::new(reply))
    }

    async fn policy_list(
        &self,
        _request: Request<pb::PolicyListRequest>,
    ) -> Result<Response<pb::PolicyListResponse>, Status> {
        if self.0.netpolicy.is_none() {
            return Ok(Response::new(pb::PolicyListResponse {
                problem: "the pod path is off on this node (a lab with routing: weir or vxlan)".into(),
                ..Default::default()
            }));
        }
        Ok(Response::new(self.0.with_netpolicy(|p| Ok(p.list())).await?))
    }

    async fn policy_explain(
        &self,
        request: Request<pb::PolicyExplainRequest>,
    ) -> Result<Response<pb::PolicyExplainResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(self.0.with_netpolicy(move |p| p.explain(&request).map_err(netpolicy_status)).await?))
    }

    type FlowsStream = tokio_stream::wrappers::ReceiverStream<Result<pb::Flow, Status>>;

    async fn flows(&self, request: Request<pb::FlowsRequest>) -> Result<Response<Self::FlowsStream>, Status> {
        let request = request.into_inner();
        if !request.verdict.is_empty() && !["forwarded", "dropped"].contains(&request.verdict.to_lowercase().as_str()) {
            return Err(Status::invalid_argument(format!(
                "verdict: {:?} is neither forwarded nor dropped",
                request.verdict
            )));
        }
        let shared = self.0.with_netpolicy(|p| Ok(p.shared())).await?;
        let request_hubble = request.hubble;
        let mut flows = shared.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let mut closing = self.0.closing.subscribe();
        let recent = shared.recent(&request, request.last as usize);
        // Hubble's form of each flow goes only to those who asked for it.
        let shaped = move |mut flow: pb::Flow| {
            if !request_hubble {
                flow.hubble = None;
            }
            flow
        };
        tokio::spawn(async move {
            for flow in recent {
                if tx.send(Ok(shaped(flow))).await.is_err() {
                    return;
                }
            }
            if !request.follow {
                return;
            }
            loop {
                let next = tokio::select! {
                    next = flows.recv() => next,
                    _ = tx.closed() => return,
                    _ = closing.wait_for(|c| *c) => return,
                };
                match next {
                    Ok(flow) => {
                        if crate::netpolicy::wanted(&flow, &request)
                            && tx.send(Ok(shaped((*flow).clone()))).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(lost)) => {
                        shared.slow_stream.fetch_add(lost, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}
