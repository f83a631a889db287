//! Hubble's `observer.Observer` gRPC service, served by every agent next to
//! its own API: GetFlows over the ring of recent flow events and the live
//! ones, ServerStatus and GetNodes, wire-compatible with Hubble's clients.
//!
//! - [`flows`]: a flow event as Hubble's Flow.
//! - [`filter`]: Hubble's FlowFilter (pure).
//! - [`event_type`]: Cilium's monitor event types on flows and in filters (pure).
//! - [`workload`]: a pod's workload from its owners, as Cilium's, and its filter (pure).
//! - [`metrics`]: Hubble's metric families for the Prometheus endpoint.
//! - [`l7`]: DNS and HTTP/1.x messages the pod path copied, as Hubble's Layer7 (pure).
//! - [`json`]: Hubble's JSON of a response (`-o jsonpb`, the exporter).
//! - [`export`]: flows written to a file as Hubble's exporter writes them.
//! - [`peer`]: Hubble's Peer service, the cluster's nodes for a relay.
//! - [`tls`]: HTTPS messages from OpenSSL's probes, each reported once
//!   with both ends' processes and a response's latency (pure);
//!   [`process`]: a pid as Hubble's `WeirProcess`.
//! - [`relay`]: `weir relay`, one Observer for every agent of the cluster.

pub mod event_type;
pub mod export;
pub mod filter;
pub mod flows;
pub mod json;
pub mod l7;
pub mod metrics;
pub mod peer;
pub mod process;
pub mod relay;
pub mod services;
pub mod tls;
pub mod workload;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};
use weir_proto::flow;
use weir_proto::observer::{self, observer_server::Observer};
use weir_proto::relay as relay_proto;

use crate::flow_ring::Window;
use crate::netpolicy::{FlowShared, NetPolicyState};

/// How often a follower is told of flow events the kernel lost.
const KERNEL_LOSS_POLL: Duration = Duration::from_secs(1);

/// The kernel's flow-event loss count, read off the async threads.
async fn kernel_losses(netpolicy: &Option<Arc<Mutex<NetPolicyState>>>) -> u64 {
    let Some(state) = netpolicy.clone() else { return 0 };
    tokio::task::spawn_blocking(move || state.lock().map(|p| p.kernel_flow_losses()).unwrap_or(0)).await.unwrap_or(0)
}

/// The Observer service of one agent.
#[derive(Debug, Clone)]
pub struct HubbleObserver {
    node: String,
    /// The pod path's flows; None when the pod path is off on this node.
    flows: Option<Arc<FlowShared>>,
    netpolicy: Option<Arc<Mutex<NetPolicyState>>>,
    started: Instant,
    /// Where the service is served, for GetNodes.
    address: String,
    closing: tokio::sync::watch::Receiver<bool>,
}

impl HubbleObserver {
    pub fn new(
        node: String,
        netpolicy: Option<Arc<Mutex<NetPolicyState>>>,
        address: String,
        closing: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        let flows = netpolicy.as_ref().and_then(|p| p.lock().ok().map(|p| p.shared()));
        Self { node, flows, netpolicy, started: Instant::now(), address, closing }
    }

    fn uptime_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn status(&self) -> (u64, u64, u64) {
        self.flows.as_ref().map_or((0, 0, 0), |f| f.ring_status())
    }
}

/// How far back GetNamespaces looks for flows (Hubble's: an hour).
const NAMESPACES_WINDOW_NS: u64 = 3_600_000_000_000;

/// The namespaces of the pods at either end of `events` (named when read),
/// each once, sorted by cluster, then namespace.
fn namespaces<'a>(events: impl Iterator<Item = &'a crate::netpolicy::NamedEvent>) -> Vec<observer::Namespace> {
    let mut seen = std::collections::BTreeSet::new();
    for (event, naming) in events {
        let ctx = &naming.context;
        for ip in [event.src, event.dst] {
            let Some(pod) = ctx.pods.get(&ip) else { continue };
            let cluster = ctx.remote_clusters.get(&ip).or(ctx.cluster.as_ref()).cloned().unwrap_or_default();
            seen.insert((cluster, pod.namespace.clone()));
        }
    }
    seen.into_iter().map(|(cluster, namespace)| observer::Namespace { cluster, namespace }).collect()
}

fn lost(node: &str, source: flow::LostEventSource, count: u64, unix_ns: u64) -> observer::GetFlowsResponse {
    observer::GetFlowsResponse {
        response_types: Some(observer::get_flows_response::ResponseTypes::LostEvents(flow::LostEvent {
            source: source as i32,
            num_events_lost: count,
            cpu: None,
        })),
        node_name: node.to_string(),
        time: Some(flows::prost_timestamp(unix_ns)),
    }
}

fn response(f: flow::Flow) -> observer::GetFlowsResponse {
    observer::GetFlowsResponse {
        node_name: f.node_name.clone(),
        time: f.time,
        response_types: Some(observer::get_flows_response::ResponseTypes::Flow(f)),
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The ring's part of a GetFlows answer: a lost-events notice first when the
/// ring overwrote flows the request asked for, then the flows, oldest first;
/// and the sequence number of the last flow the ring held.
fn from_ring(
    shared: &FlowShared,
    request: &observer::GetFlowsRequest,
    window: Window,
    filters: &filter::Filters,
) -> (Vec<observer::GetFlowsResponse>, u64) {
    let ring = shared.ring();
    let upto = ring.last_sequence();
    let mut matching: Vec<flow::Flow> = ring
        .within(window)
        .iter()
        .map(|(_, _, (event, naming))| shared.hubble_flow(event, naming))
        .filter(|f| filters.wants(f))
        .collect();
    let number = usize::try_from(request.number).unwrap_or(usize::MAX);
    let overwritten = if window.since_ns.is_some() || window.until_ns.is_some() {
        ring.overwritten_within(window)
    } else {
        ring.overwritten()
    };
    let lost = lost_to_request(request, overwritten, matching.len() as u64);
    if number > 0 && matching.len() > number {
        if request.first {
            matching.truncate(number);
        } else {
            matching.drain(..matching.len() - number);
        }
    }
    let mut out = Vec::with_capacity(matching.len() + 1);
    if lost > 0 {
        let at = matching.first().and_then(|f| f.time).and_then(|t| flows::timestamp_ns(&t)).unwrap_or_else(now_ns);
        out.push(lost_event(shared.flow_node(), lost, at));
    }
    out.extend(matching.into_iter().map(response));
    (out, upto)
}

/// How many of the flows the ring overwrote (within the request's window)
/// the request asked for, given how many matching flows the ring still has.
/// Overwritten flows are not kept to be filtered: with filters, those
/// counted are the ones that could have been asked for.
fn lost_to_request(request: &observer::GetFlowsRequest, overwritten: u64, in_ring: u64) -> u64 {
    match (request.number, request.first) {
        // Everything: all of it.
        (0, _) => overwritten,
        // The first N: the overwritten ones come first.
        (n, true) => overwritten.min(n),
        // The last N: what the ring falls short of.
        (n, false) => overwritten.min(n.saturating_sub(in_ring)),
    }
}

fn lost_event(node: &str, count: u64, at: u64) -> observer::GetFlowsResponse {
    lost(node, flow::LostEventSource::HubbleRingBuffer, count, at)
}

fn window(request: &observer::GetFlowsRequest) -> Result<Window, Status> {
    let at = |t: &Option<prost_types::Timestamp>, name: &str| {
        t.as_ref()
            .map(|t| {
                flows::timestamp_ns(t)
                    .ok_or_else(|| Status::invalid_argument(format!("{name}: {t:?} is before 1970 or malformed")))
            })
            .transpose()
    };
    let window = Window { since_ns: at(&request.since, "since")?, until_ns: at(&request.until, "until")? };
    if let (Some(since), Some(until)) = (window.since_ns, window.until_ns) {
        if since > until {
            return Err(Status::invalid_argument("since is after until"));
        }
    }
    Ok(window)
}

type FlowStream = tokio_stream::wrappers::ReceiverStream<Result<observer::GetFlowsResponse, Status>>;

#[tonic::async_trait]
impl Observer for HubbleObserver {
    type GetFlowsStream = FlowStream;

    async fn get_flows(
        &self,
        request: Request<observer::GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        let request = request.into_inner();
        if request.first && request.follow {
            return Err(Status::invalid_argument("first cannot be combined with follow"));
        }
        let window = window(&request)?;
        let filters =
            filter::Filters::parse(&request.whitelist, &request.blacklist).map_err(Status::invalid_argument)?;
        let shared = self.flows.clone().ok_or_else(|| {
            Status::failed_precondition(
                "flows come from the pod path, which is off on this node (a lab with routing: weir or vxlan)",
            )
        })?;
        // Subscribed before the ring is read, so nothing falls between them;
        // what both hold is sent once (by sequence number).
        let mut live = shared.follow();
        // Following with neither a number nor a start: live flows only, as
        // Hubble's server does.
        let (recent, upto) = if request.follow && request.number == 0 && request.since.is_none() {
            (Vec::new(), shared.last_sequence())
        } else {
            from_ring(&shared, &request, window, &filters)
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let mut closing = self.closing.clone();
        let node = self.node.clone();
        let netpolicy = self.netpolicy.clone();
        let mut kernel_lost = if request.follow { kernel_losses(&netpolicy).await } else { 0 };
        tokio::spawn(async move {
            for r in recent {
                if tx.send(Ok(r)).await.is_err() {
                    return;
                }
            }
            // Without follow, the answer ends with the ring; so does a
            // follow whose window ended in the past.
            if !request.follow || window.until_ns.is_some_and(|u| u < now_ns()) {
                return;
            }
            let mut poll = tokio::time::interval(KERNEL_LOSS_POLL);
            loop {
                let next = tokio::select! {
                    next = live.recv() => Some(next),
                    _ = poll.tick() => None,
                    _ = tx.closed() => return,
                    _ = closing.wait_for(|c| *c) => return,
                };
                let Some(next) = next else {
                    // Events the kernel dropped while this follower was
                    // connected, whatever they were: they were never read.
                    let now = kernel_losses(&netpolicy).await;
                    if now > kernel_lost {
                        let missed = now - std::mem::replace(&mut kernel_lost, now);
                        let notice = lost(&node, flow::LostEventSource::PerfEventRingBuffer, missed, now_ns());
                        if tx.send(Ok(notice)).await.is_err() {
                            return;
                        }
                    }
                    continue;
                };
                let answer = match next {
                    Ok((sequence, _)) if sequence <= upto => continue,
                    Ok((_, (event, naming))) => {
                        let at = shared.unix_ns(&event);
                        if window.until_ns.is_some_and(|u| at > u) {
                            return;
                        }
                        if window.since_ns.is_some_and(|s| at < s) {
                            continue;
                        }
                        let f = shared.hubble_flow(&event, &naming);
                        if !filters.wants(&f) {
                            continue;
                        }
                        response(f)
                    }
                    Err(RecvError::Lagged(missed)) => {
                        shared.slow_stream.fetch_add(missed, std::sync::atomic::Ordering::Relaxed);
                        lost(&node, flow::LostEventSource::HubbleRingBuffer, missed, now_ns())
                    }
                    Err(RecvError::Closed) => return,
                };
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn get_nodes(
        &self,
        _request: Request<observer::GetNodesRequest>,
    ) -> Result<Response<observer::GetNodesResponse>, Status> {
        let (num_flows, max_flows, seen_flows) = self.status();
        let node = observer::Node {
            name: self.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            address: self.address.clone(),
            state: relay_proto::NodeState::NodeConnected as i32,
            tls: Some(observer::Tls { enabled: false, server_name: String::new() }),
            uptime_ns: self.uptime_ns(),
            num_flows,
            max_flows,
            seen_flows,
        };
        Ok(Response::new(observer::GetNodesResponse { nodes: vec![node] }))
    }

    async fn get_namespaces(
        &self,
        _request: Request<observer::GetNamespacesRequest>,
    ) -> Result<Response<observer::GetNamespacesResponse>, Status> {
        let window = Window { since_ns: Some(now_ns().saturating_sub(NAMESPACES_WINDOW_NS)), until_ns: None };
        let namespaces = self
            .flows
            .as_ref()
            .map_or_else(Vec::new, |shared| shared.with_ring(|ring| namespaces(ring.iter_within(window))));
        Ok(Response::new(observer::GetNamespacesResponse { namespaces }))
    }

    async fn server_status(
        &self,
        _request: Request<observer::ServerStatusRequest>,
    ) -> Result<Response<observer::ServerStatusResponse>, Status> {
        let (num_flows, max_flows, seen_flows) = self.status();
        Ok(Response::new(observer::ServerStatusResponse {
            num_flows,
            max_flows,
            seen_flows,
            uptime_ns: self.uptime_ns(),
            num_connected_nodes: Some(1),
            num_unavailable_nodes: Some(0),
            unavailable_nodes: Vec::new(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_told_of_the_overwritten_flows_it_asked_for() {
        let request = |number, first| observer::GetFlowsRequest { number, first, ..Default::default() };
        assert_eq!(lost_to_request(&request(0, false), 100, 8192), 100, "everything");
        assert_eq!(lost_to_request(&request(10, false), 100, 8192), 0, "the last 10 are all in the ring");
        assert_eq!(lost_to_request(&request(10, false), 100, 4), 6, "the ring has only 4");
        assert_eq!(lost_to_request(&request(10, false), 3, 4), 3, "no more than were overwritten");
        assert_eq!(lost_to_request(&request(10, true), 100, 8192), 10, "the first 10 were overwritten");
        assert_eq!(lost_to_request(&request(10, true), 0, 8192), 0);
    }
}
