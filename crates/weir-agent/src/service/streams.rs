//! The streaming calls: flows for `weir observe`, runtime events for
//! `weir events`, and the filter's trace, each a task that forwards a
//! subscription until the client hangs up or the agent stops.

use super::*;

impl AgentState {
    pub(super) async fn flows_stream(
        &self,
        request: Request<pb::FlowsRequest>,
    ) -> Result<Response<tokio_stream::wrappers::ReceiverStream<Result<pb::Flow, Status>>>, Status> {
        let request = request.into_inner();
        if !request.verdict.is_empty() && !["forwarded", "dropped"].contains(&request.verdict.to_lowercase().as_str()) {
            return Err(Status::invalid_argument(format!(
                "verdict: {:?} is neither forwarded nor dropped",
                request.verdict
            )));
        }
        let shared = self.with_netpolicy(|p| Ok(p.shared())).await?;
        let request_hubble = request.hubble;
        let mut flows = shared.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let mut closing = self.closing.subscribe();
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

    pub(super) async fn events_stream(
        &self,
        request: Request<pb::EventsRequest>,
    ) -> Result<Response<tokio_stream::wrappers::ReceiverStream<Result<pb::RuntimeEvent, Status>>>, Status> {
        let request = request.into_inner();
        let known = crate::runtime::event_types();
        if let Some(bad) = request.types.iter().find(|t| !known.contains(&t.as_str())) {
            return Err(Status::invalid_argument(format!(
                "types: unknown event type {bad:?}; known: {}",
                known.join(", ")
            )));
        }
        let (mut events, runtime) = {
            let runtime = self.runtime.clone().map_err(|why| {
                Status::failed_precondition(format!("runtime security is not running on this node: {why}"))
            })?;
            let subscribed = runtime.lock().map_err(|_| Status::internal("the runtime state is poisoned"))?.subscribe();
            (subscribed, runtime)
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let mut closing = self.closing.subscribe();
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

    pub(super) async fn filter_trace_stream(
        &self,
        request: Request<pb::FilterTraceRequest>,
    ) -> Result<Response<tokio_stream::wrappers::ReceiverStream<Result<pb::FilterEvent, Status>>>, Status> {
        let every = request.into_inner().every.max(1);
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let maps = weir_bpf::filter::FilterMaps::open(&self.pins).map_err(|e| Status::internal(e.to_string()))?;
        maps.set_trace(true, every).map_err(|e| Status::internal(e.to_string()))?;
        self.traces.fetch_add(1, Ordering::SeqCst);
        let guard = TraceGuard {
            traces: self.traces.clone(),
            maps: weir_bpf::filter::FilterMaps::open(&self.pins).map_err(|e| Status::internal(e.to_string()))?,
        };
        let filter = self.filter.clone();
        let closing = self.closing.subscribe();
        std::thread::spawn(move || {
            let _guard = guard;
            let mut names: BTreeMap<u32, String> = BTreeMap::new();
            let closed = tx.clone();
            let result = maps.consume_events(
                || closed.is_closed() || *closing.borrow(),
                |event, data| {
                    let rule = names
                        .entry(event.slot)
                        .or_insert_with(|| {
                            filter
                                .lock()
                                .ok()
                                .and_then(|s| s.rule_name(event.slot))
                                .unwrap_or_else(|| format!("slot {}", event.slot))
                        })
                        .clone();
                    let _ = tx.blocking_send(Ok(pb::FilterEvent {
                        timestamp_ns: event.timestamp_ns,
                        rule,
                        action: action_name(event.action).to_string(),
                        verdict: verdict_name(u32::from(event.verdict)),
                        ifindex: event.ifindex,
                        length: event.length,
                        data: data.to_vec(),
                    }));
                },
            );
            if let Err(err) = result {
                let _ = tx.blocking_send(Err(Status::internal(err.to_string())));
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}
