//! The `Runtime` service: runtime security's policies (`weir apply`, `weir
//! runtime`) and its events (`weir events`).

use std::sync::{Arc, Mutex};

use tonic::{Request, Response, Status};
use weir_proto::agent::v1 as pb;

use super::convert::*;
use super::AgentState;

/// The `Runtime` service, on the agent's state.
#[derive(Debug, Clone)]
pub struct RuntimeApi(pub Arc<AgentState>);

#[tonic::async_trait]
impl pb::runtime_server::Runtime for RuntimeApi {
    async fn runtime_apply(
        &self,
        request: Request<pb::RuntimeApplyRequest>,
    ) -> Result<Response<pb::RuntimeChangeResponse>, Status> {
        let yaml = request.into_inner().yaml;
        let change = self.0.with_runtime(move |r| r.apply(&yaml).map_err(runtime_status)).await?;
        Ok(Response::new(runtime_change(change)))
    }

    async fn runtime_delete(
        &self,
        request: Request<pb::RuntimeDeleteRequest>,
    ) -> Result<Response<pb::RuntimeChangeResponse>, Status> {
        let names = request.into_inner().names;
        let change = self.0.with_runtime(move |r| r.delete(&names).map_err(runtime_status)).await?;
        Ok(Response::new(runtime_change(change)))
    }

    async fn runtime_list(
        &self,
        _request: Request<pb::RuntimeListRequest>,
    ) -> Result<Response<pb::RuntimeListResponse>, Status> {
        if let Err(why) = &self.0.runtime {
            return Ok(Response::new(pb::RuntimeListResponse { problem: why.clone(), ..Default::default() }));
        }
        Ok(Response::new(self.0.with_runtime(|r| r.list().map_err(runtime_status)).await?))
    }

    type EventsStream = tokio_stream::wrappers::ReceiverStream<Result<pb::RuntimeEvent, Status>>;

    async fn events(&self, request: Request<pb::EventsRequest>) -> Result<Response<Self::EventsStream>, Status> {
        let request = request.into_inner();
        let known = crate::runtime::event_types();
        if let Some(bad) = request.types.iter().find(|t| !known.contains(&t.as_str())) {
            return Err(Status::invalid_argument(format!(
                "types: unknown event type {bad:?}; known: {}",
                known.join(", ")
            )));
        }
        let (mut events, runtime) = {
            let runtime = self.0.runtime.clone().map_err(|why| {
                Status::failed_precondition(format!("runtime security is not running on this node: {why}"))
            })?;
            let subscribed = runtime.lock().map_err(|_| Status::internal("the runtime state is poisoned"))?.subscribe();
            (subscribed, runtime)
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let mut closing = self.0.closing.subscribe();
        let totals = |runtime: &Arc<Mutex<crate::runtime::RuntimeState>>| {
            runtime.lock().map(|r| (r.loss_totals(), r.node().to_string())).ok()
        };
        let (mut seen, node) = totals(&runtime).unwrap_or_default();
        tokio::spawn(async move {
            // Losses on the node while this stream is connected are told to
            // it as records, as they are counted.
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
            loop {
                let next = tokio::select! {
                    next = events.recv() => Some(next),
                    _ = tick.tick() => None,
                    _ = tx.closed() => return,
                    _ = closing.wait_for(|c| *c) => return,
                };
                let records = match next {
                    None => {
                        let Some((now, _)) = totals(&runtime) else { return };
                        let records = seen.since(now, &node);
                        seen = now;
                        records
                    }
                    Some(Ok(event)) => {
                        if crate::runtime::wanted(&event, &request) && tx.send(Ok((*event).clone())).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Some(Err(tokio::sync::broadcast::error::RecvError::Lagged(lost))) => {
                        let Ok(r) = runtime.lock() else { return };
                        r.note_slow_stream(lost);
                        vec![r.lost_record(crate::runtime::LossSource::SlowStream, lost)]
                    }
                    Some(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return,
                };
                for record in records {
                    if tx.send(Ok(record)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}
