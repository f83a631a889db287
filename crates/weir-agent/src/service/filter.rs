//! The `Filter` service: the packet filter's rules (`weir filter`,
//! FilterPolicy), its simulation and its trace.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tonic::{Request, Response, Status};
use weir_proto::agent::v1 as pb;

use super::convert::*;
use super::AgentState;

/// Lists from this many rules up hand their memory back once sent.
const LARGE_LIST: usize = 10_000;

/// Gives the heap's free pages back to the kernel once a large reply has
/// gone. Listing 100k rules takes some 40 MB (names, specs as JSON, the
/// encoded reply); glibc would keep them after the reply is freed. The
/// reply is encoded and sent after the handler returns, so the trim waits
/// a moment; a trim that comes early only returns less.
fn release_after_reply() {
    tokio::spawn(async {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let _ = tokio::task::spawn_blocking(crate::heap::release_free_memory).await;
    });
}

/// The `Filter` service, on the agent's state.
#[derive(Debug, Clone)]
pub struct FilterApi(pub Arc<AgentState>);

#[tonic::async_trait]
impl pb::filter_server::Filter for FilterApi {
    type FilterTraceStream = tokio_stream::wrappers::ReceiverStream<Result<pb::FilterEvent, Status>>;

    async fn filter_update(
        &self,
        request: Request<pb::FilterUpdateRequest>,
    ) -> Result<Response<pb::FilterUpdateResponse>, Status> {
        let mut request = request.into_inner();
        let mode = request.mode();
        // The request's JSON is dropped once parsed: it is as large as the rules.
        let rules = crate::filtering::parse_rules(&std::mem::take(&mut request.rules_json))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let origin = if request.origin.is_empty() { "cli".to_string() } else { request.origin.clone() };
        let outcome = self
            .0
            .with_filter(move |state| {
                match mode {
                    pb::filter_update_request::Mode::ReplaceOrigin => state.replace_origin(&origin, rules),
                    pb::filter_update_request::Mode::Add => state.add(&origin, rules),
                    pb::filter_update_request::Mode::Delete => state.delete(&request.delete),
                }
                .map_err(filter_status)
            })
            .await?;
        tracing::info!(
            added = outcome.added.len(),
            removed = outcome.removed.len(),
            changed = outcome.changed.len(),
            apply_ns = outcome.apply_ns,
            "filter updated"
        );
        Ok(Response::new(pb::FilterUpdateResponse {
            added: outcome.added,
            removed: outcome.removed,
            changed: outcome.changed,
            unchanged: outcome.unchanged as u32,
            apply_ns: outcome.apply_ns,
            total_rules: outcome.total as u32,
        }))
    }

    async fn filter_list(
        &self,
        _request: Request<pb::FilterListRequest>,
    ) -> Result<Response<pb::FilterListResponse>, Status> {
        let response = self
            .0
            .with_filter(|state| {
                let rows = state.list().map_err(filter_status)?;
                let drops = state.drops().map_err(filter_status)?;
                Ok(pb::FilterListResponse {
                    rules: rows
                        .into_iter()
                        .map(|(rule, slot, counter)| pb::FilterRule {
                            name: rule.spec.name.clone(),
                            origin: rule.origin.to_string(),
                            spec_json: serde_json::to_string(&rule.spec).unwrap_or_default(),
                            packets: counter.packets,
                            bytes: counter.bytes,
                            slot,
                        })
                        .collect(),
                    drops: drops.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                    trace_events_lost: state.events_lost().map_err(filter_status)?,
                    expression_program: state.has_expression_program(),
                })
            })
            .await?;
        if response.rules.len() >= LARGE_LIST {
            release_after_reply();
        }
        Ok(Response::new(response))
    }

    async fn filter_simulate(
        &self,
        request: Request<pb::FilterSimulateRequest>,
    ) -> Result<Response<pb::FilterSimulateResponse>, Status> {
        let request = request.into_inner();
        let packets = if request.packets.is_empty() { vec![request.packet] } else { request.packets };
        let report = self.0.with_filter(move |state| state.simulate(&packets).map_err(filter_status)).await?;
        tracing::debug!(packets = report.packets.len(), program_id = report.program_id, "filter simulation");
        let results: Vec<pb::FilterSimulateResult> = report
            .packets
            .into_iter()
            .map(|packet| match packet {
                Ok(p) => pb::FilterSimulateResult {
                    verdict: verdict_name(p.verdict),
                    rule: p.rule.unwrap_or_default(),
                    action: p.action.map(action_name).unwrap_or_default().to_string(),
                    error: String::new(),
                },
                Err(error) => pb::FilterSimulateResult { error, ..Default::default() },
            })
            .collect();
        let first = results.first().cloned().unwrap_or_default();
        Ok(Response::new(pb::FilterSimulateResponse {
            verdict: first.verdict,
            rule: first.rule,
            results,
            program_id: report.program_id,
        }))
    }

    async fn filter_trace(
        &self,
        request: Request<pb::FilterTraceRequest>,
    ) -> Result<Response<Self::FilterTraceStream>, Status> {
        let every = request.into_inner().every.max(1);
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let maps = weir_bpf::filter::FilterMaps::open(&self.0.pins).map_err(|e| Status::internal(e.to_string()))?;
        maps.set_trace(true, every).map_err(|e| Status::internal(e.to_string()))?;
        self.0.traces.fetch_add(1, Ordering::SeqCst);
        let guard = TraceGuard {
            traces: self.0.traces.clone(),
            maps: weir_bpf::filter::FilterMaps::open(&self.0.pins).map_err(|e| Status::internal(e.to_string()))?,
        };
        let filter = self.0.filter.clone();
        let closing = self.0.closing.subscribe();
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

/// Turns tracing off when the last trace stream ends.
struct TraceGuard {
    traces: Arc<AtomicUsize>,
    maps: weir_bpf::filter::FilterMaps,
}

impl Drop for TraceGuard {
    fn drop(&mut self) {
        if self.traces.fetch_sub(1, Ordering::SeqCst) == 1 {
            let _ = self.maps.set_trace(false, 1);
        }
    }
}
