//! `weir relay`: Hubble's Observer API for a whole cluster, as Hubble Relay
//! serves it. The relay learns the cluster's nodes from an agent's Peer
//! service, keeps a connection to each, and answers GetFlows from all of
//! them: finished requests merged in time order and cut to `number` over all
//! nodes; followed ones through a sort buffer (`sort`). Every change in a
//! node's reachability is a node status event to each follower, and a
//! followed node that comes back resumes after the last flow it sent, so a
//! restarted agent's ring fills the gap.
//!
//! - [`pool`]: the peers, their connections and states.
//! - [`sort`]: time order across nodes (pure).
//! - [`ui`]: the service map, a web page over the merged flows.

pub mod pool;
pub mod sort;
pub mod ui;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use weir_proto::observer::{self, get_flows_response::ResponseTypes, observer_client::ObserverClient};
use weir_proto::relay::{self, NodeState};

use super::flows::{prost_timestamp, timestamp_ns};
use pool::Pool;

/// How the relay is run (Hubble Relay's options, by the same names).
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Where to serve the Observer API.
    pub listen_address: String,
    /// An agent's Peer service: `unix:///run/weir/agent.sock` or `host:port`.
    pub peer_service: String,
    /// How long to wait for a node to answer a dial or a status request.
    pub dial_timeout: Duration,
    /// How long to wait before redialling an unreachable node or peer service.
    pub retry_timeout: Duration,
    /// Followed flows held back to be put in time order, at most.
    pub sort_buffer_len_max: usize,
    /// How long a followed flow is held back, at most.
    pub sort_buffer_drain_timeout: Duration,
    /// Where to serve the service map, if anywhere.
    pub ui_listen_address: Option<String>,
    /// What the service map holds, and over how long.
    pub ui_limits: ui::graph::Limits,
}

/// An error serving the relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("listening on {addr}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serving the Observer API")]
    Serve(#[source] tonic::transport::Error),
}

/// Serves the relay until `shutdown` completes.
pub async fn serve(config: RelayConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<(), RelayError> {
    let listener = tokio::net::TcpListener::bind(&config.listen_address)
        .await
        .map_err(|source| RelayError::Listen { addr: config.listen_address.clone(), source })?;
    let ui_listener = match &config.ui_listen_address {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| RelayError::Listen { addr: addr.clone(), source })?,
        ),
        None => None,
    };
    let pool = Pool::new(config.dial_timeout);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let discovery =
        tokio::spawn(pool.clone().discover(config.peer_service.clone(), config.retry_timeout, stop_rx.clone()));
    let dialling = tokio::spawn(pool.clone().keep_dialling(config.retry_timeout, stop_rx.clone()));
    tracing::info!(
        listen = config.listen_address,
        peers = config.peer_service,
        "serving Hubble's Observer API for the cluster"
    );
    let relay = RelayObserver { pool, config, started: Instant::now(), closing: stop_rx.clone() };
    let mut ui_tasks = Vec::new();
    if let Some(ui_listener) = ui_listener {
        let graph = Arc::new(std::sync::Mutex::new(ui::graph::Graph::new(relay.config.ui_limits)));
        tracing::info!(listen = relay.config.ui_listen_address, "serving the service map");
        ui_tasks.push(tokio::spawn(ui::follow(relay.clone(), graph.clone(), stop_rx.clone())));
        ui_tasks.push(tokio::spawn(ui::serve(ui_listener, graph, stop_rx)));
    }
    let served = tonic::transport::Server::builder()
        .add_service(observer::observer_server::ObserverServer::new(relay))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
        .await;
    let _ = discovery.await;
    let _ = dialling.await;
    for task in ui_tasks {
        let _ = task.await;
    }
    served.map_err(RelayError::Serve)
}

/// The relay's Observer service.
#[derive(Debug, Clone)]
pub struct RelayObserver {
    pool: Arc<Pool>,
    config: RelayConfig,
    started: Instant,
    closing: tokio::sync::watch::Receiver<bool>,
}

/// The name the relay's own notices carry.
const RELAY_NODE_NAME: &str = "weir-relay";

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn node_status(state: NodeState, nodes: Vec<String>, message: String) -> observer::GetFlowsResponse {
    observer::GetFlowsResponse {
        response_types: Some(ResponseTypes::NodeStatus(relay::NodeStatusEvent {
            state_change: state as i32,
            node_names: nodes,
            message,
        })),
        node_name: RELAY_NODE_NAME.to_string(),
        time: Some(prost_timestamp(now_ns())),
    }
}

fn answer_time(answer: &observer::GetFlowsResponse) -> u64 {
    answer.time.as_ref().and_then(timestamp_ns).unwrap_or(0)
}

/// What one node's stream tells the request.
enum FromNode {
    Answer(String, Box<observer::GetFlowsResponse>),
    /// The node failed, with why.
    Failed(String, String),
    /// The node's answer is complete.
    Done(String),
}

/// Streams one node's answer to `request` into `out`.
fn stream_node(name: String, channel: Channel, request: observer::GetFlowsRequest, out: mpsc::Sender<FromNode>) {
    tokio::spawn(async move {
        let mut stream = match ObserverClient::new(channel).get_flows(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                let _ = out.send(FromNode::Failed(name, status.message().to_string())).await;
                return;
            }
        };
        loop {
            let next = tokio::select! {
                next = stream.message() => next,
                _ = out.closed() => return,
            };
            let message = match next {
                Ok(Some(answer)) => FromNode::Answer(name.clone(), Box::new(answer)),
                Ok(None) => FromNode::Done(name.clone()),
                Err(status) => FromNode::Failed(name.clone(), status.message().to_string()),
            };
            let last = !matches!(message, FromNode::Answer(..));
            if out.send(message).await.is_err() || last {
                return;
            }
        }
    });
}

fn is_flow(answer: &observer::GetFlowsResponse) -> bool {
    matches!(answer.response_types, Some(ResponseTypes::Flow(_)))
}

impl RelayObserver {
    /// A relay over these nodes only (`weir observe` merging a lab's agents
    /// itself), dialled before it returns and redialled every
    /// `retry_timeout` until the returned sender says stop.
    pub async fn over(
        peers: Vec<super::peer::PeerAddress>,
        config: RelayConfig,
    ) -> (Self, tokio::sync::watch::Sender<bool>) {
        let pool = Pool::new(config.dial_timeout);
        for peer in &peers {
            pool.add(&peer.name, &peer.address);
        }
        pool.redial().await;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(pool.clone().keep_dialling(config.retry_timeout, stop_rx.clone()));
        (Self { pool, config, started: Instant::now(), closing: stop_rx }, stop_tx)
    }

    /// The nodes and their states now.
    pub fn peers(&self) -> Vec<pool::PeerState> {
        self.pool.snapshot()
    }

    /// GetFlows's answer, as a stream of every node's responses.
    pub fn flows(&self, request: observer::GetFlowsRequest) -> Result<FlowStream, Status> {
        if request.first && request.follow {
            return Err(Status::invalid_argument("first cannot be combined with follow"));
        }
        // The nodes check the same; the client hears of a bad filter once.
        super::filter::Filters::parse(&request.whitelist, &request.blacklist).map_err(Status::invalid_argument)?;
        let (tx, rx) = mpsc::channel(1024);
        let relay = self.clone();
        tokio::spawn(async move {
            if request.follow {
                relay.followed(request, tx).await;
            } else {
                relay.finished(request, tx).await;
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    /// A finished request: every node's answer, merged and cut.
    async fn finished(
        &self,
        request: observer::GetFlowsRequest,
        tx: mpsc::Sender<Result<observer::GetFlowsResponse, Status>>,
    ) {
        let (node_tx, mut node_rx) = mpsc::channel(1024);
        let mut unavailable = Vec::new();
        let mut pending = 0usize;
        for peer in self.pool.snapshot() {
            match peer.channel {
                Some(channel) => {
                    pending += 1;
                    stream_node(peer.name, channel, request.clone(), node_tx.clone());
                }
                None => unavailable.push((peer.name, peer.error)),
            }
        }
        drop(node_tx);
        let mut answers = Vec::new();
        while pending > 0 {
            match node_rx.recv().await {
                Some(FromNode::Answer(_, answer)) => answers.push((answer_time(&answer), *answer)),
                Some(FromNode::Done(_)) => pending -= 1,
                Some(FromNode::Failed(name, why)) => {
                    pending -= 1;
                    self.pool.failed(&name, why.clone());
                    unavailable.push((name, why));
                }
                None => break,
            }
        }
        for (name, why) in unavailable {
            if tx.send(Ok(node_status(NodeState::NodeUnavailable, vec![name], why))).await.is_err() {
                return;
            }
        }
        for answer in sort::merge_finished(answers, request.number, request.first, is_flow) {
            if tx.send(Ok(answer)).await.is_err() {
                return;
            }
        }
    }

    /// A followed request: every node's answer through the sort buffer, with
    /// node status events, until the client goes.
    async fn followed(
        &self,
        request: observer::GetFlowsRequest,
        tx: mpsc::Sender<Result<observer::GetFlowsResponse, Status>>,
    ) {
        let started_ns = now_ns();
        let mut changes = self.pool.subscribe();
        let (node_tx, mut node_rx) = mpsc::channel(1024);
        // Each node's state as this client was last told, and the time of
        // the last answer it sent (to resume after).
        let mut told: BTreeMap<String, NodeState> = BTreeMap::new();
        let mut last_ns: BTreeMap<String, u64> = BTreeMap::new();
        let mut streaming: BTreeSet<String> = BTreeSet::new();
        let (mut connected, mut unavailable) = (Vec::new(), Vec::new());
        for peer in self.pool.snapshot() {
            match peer.channel {
                Some(channel) => {
                    stream_node(peer.name.clone(), channel, request.clone(), node_tx.clone());
                    streaming.insert(peer.name.clone());
                    told.insert(peer.name.clone(), NodeState::NodeConnected);
                    connected.push(peer.name);
                }
                None => {
                    told.insert(peer.name.clone(), NodeState::NodeUnavailable);
                    unavailable.push((peer.name, peer.error));
                }
            }
        }
        let mut notices = Vec::new();
        if !connected.is_empty() {
            notices.push(node_status(NodeState::NodeConnected, connected, String::new()));
        }
        notices.extend(unavailable.into_iter().map(|(n, why)| node_status(NodeState::NodeUnavailable, vec![n], why)));
        for notice in notices {
            if tx.send(Ok(notice)).await.is_err() {
                return;
            }
        }
        let mut buffer = sort::SortBuffer::new(self.config.sort_buffer_len_max, self.config.sort_buffer_drain_timeout);
        let mut tick =
            tokio::time::interval((self.config.sort_buffer_drain_timeout / 4).max(Duration::from_millis(20)));
        let mut closing = self.closing.clone();
        loop {
            let mut out = Vec::new();
            tokio::select! {
                next = node_rx.recv() => match next {
                    Some(FromNode::Answer(name, answer)) => {
                        let at = answer_time(&answer);
                        last_ns.insert(name, at);
                        out = buffer.push(at, *answer, Instant::now());
                    }
                    Some(FromNode::Done(name)) => {
                        // Only a request with `until` ends: when every node has.
                        streaming.remove(&name);
                        if streaming.is_empty() && request.until.is_some() {
                            for answer in buffer.drain_all() {
                                if tx.send(Ok(answer)).await.is_err() {
                                    return;
                                }
                            }
                            return;
                        }
                    }
                    Some(FromNode::Failed(name, why)) => {
                        streaming.remove(&name);
                        self.pool.failed(&name, why.clone());
                        if told.insert(name.clone(), NodeState::NodeUnavailable) != Some(NodeState::NodeUnavailable) {
                            out.push(node_status(NodeState::NodeUnavailable, vec![name], why));
                        }
                    }
                    None => return,
                },
                change = changes.recv() => match change {
                    Ok(change) => {
                        if change.state == NodeState::NodeConnected && !streaming.contains(&change.node) {
                            let channel = self.pool.snapshot().into_iter().find(|p| p.name == change.node).and_then(|p| p.channel);
                            if let Some(channel) = channel {
                                // Resume after the last answer it sent. A node
                                // new to this request starts where the request
                                // asked (`since`: its ring's flows, as the nodes
                                // there at the start sent theirs), else from
                                // when the request began.
                                let asked = request.since.as_ref().and_then(timestamp_ns);
                                let since = match last_ns.get(&change.node) {
                                    Some(t) => (t + 1).max(asked.unwrap_or(0)),
                                    None => asked.unwrap_or(started_ns),
                                };
                                let resume = observer::GetFlowsRequest {
                                    number: 0,
                                    first: false,
                                    since: Some(prost_timestamp(since)),
                                    ..request.clone()
                                };
                                stream_node(change.node.clone(), channel, resume, node_tx.clone());
                                streaming.insert(change.node.clone());
                            }
                        }
                        if told.insert(change.node.clone(), change.state) != Some(change.state) {
                            out.push(node_status(change.state, vec![change.node], change.message));
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => out = buffer.drain_due(Instant::now()),
                _ = tx.closed() => return,
                _ = async { let _ = closing.wait_for(|c| *c).await; } => return,
            }
            for answer in out {
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        }
    }

    fn uptime_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

pub type FlowStream = tokio_stream::wrappers::ReceiverStream<Result<observer::GetFlowsResponse, Status>>;

#[tonic::async_trait]
impl observer::observer_server::Observer for RelayObserver {
    type GetFlowsStream = FlowStream;

    async fn get_flows(
        &self,
        request: Request<observer::GetFlowsRequest>,
    ) -> Result<Response<Self::GetFlowsStream>, Status> {
        Ok(Response::new(self.flows(request.into_inner())?))
    }

    async fn get_nodes(
        &self,
        _request: Request<observer::GetNodesRequest>,
    ) -> Result<Response<observer::GetNodesResponse>, Status> {
        let timeout = self.pool.dial_timeout();
        let asks = self.pool.snapshot().into_iter().map(|peer| async move {
            let Some(channel) = peer.channel.clone() else { return (peer, Err(None)) };
            let mut client = ObserverClient::new(channel);
            let asked = client.get_nodes(observer::GetNodesRequest {});
            match tokio::time::timeout(timeout, asked).await {
                Ok(Ok(nodes)) => (peer, Ok(nodes.into_inner().nodes)),
                Ok(Err(status)) => (peer, Err(Some(status.message().to_string()))),
                Err(_) => (peer, Err(Some(format!("no answer within {timeout:?}")))),
            }
        });
        let mut nodes = Vec::new();
        for (peer, answer) in futures_util::future::join_all(asks).await {
            match answer {
                Ok(theirs) => nodes.extend(theirs),
                Err(why) => {
                    if let Some(why) = why {
                        self.pool.failed(&peer.name, why);
                    }
                    nodes.push(observer::Node {
                        name: peer.name,
                        address: peer.address,
                        state: NodeState::NodeUnavailable as i32,
                        ..Default::default()
                    });
                }
            }
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(observer::GetNodesResponse { nodes }))
    }

    async fn get_namespaces(
        &self,
        _request: Request<observer::GetNamespacesRequest>,
    ) -> Result<Response<observer::GetNamespacesResponse>, Status> {
        let timeout = self.pool.dial_timeout();
        let asks = self.pool.snapshot().into_iter().map(|peer| async move {
            let Some(channel) = peer.channel.clone() else { return (peer.name, Err(None)) };
            let mut client = ObserverClient::new(channel);
            let asked = client.get_namespaces(observer::GetNamespacesRequest {});
            match tokio::time::timeout(timeout, asked).await {
                Ok(Ok(answer)) => (peer.name, Ok(answer.into_inner().namespaces)),
                Ok(Err(status)) => (peer.name, Err(Some(status.message().to_string()))),
                Err(_) => (peer.name, Err(Some(format!("no answer within {timeout:?}")))),
            }
        });
        // Every node's, once each, in Hubble's order; a node that did not
        // answer is marked for redialling, as for the other calls.
        let mut all = std::collections::BTreeSet::new();
        for (name, answer) in futures_util::future::join_all(asks).await {
            match answer {
                Ok(theirs) => all.extend(theirs.into_iter().map(|n| (n.cluster, n.namespace))),
                Err(Some(why)) => self.pool.failed(&name, why),
                Err(None) => {}
            }
        }
        let namespaces =
            all.into_iter().map(|(cluster, namespace)| observer::Namespace { cluster, namespace }).collect();
        Ok(Response::new(observer::GetNamespacesResponse { namespaces }))
    }

    async fn server_status(
        &self,
        _request: Request<observer::ServerStatusRequest>,
    ) -> Result<Response<observer::ServerStatusResponse>, Status> {
        let timeout = self.pool.dial_timeout();
        let asks = self.pool.snapshot().into_iter().map(|peer| async move {
            let Some(channel) = peer.channel.clone() else { return (peer.name, Err(None)) };
            let mut client = ObserverClient::new(channel);
            let asked = client.server_status(observer::ServerStatusRequest {});
            match tokio::time::timeout(timeout, asked).await {
                Ok(Ok(status)) => (peer.name, Ok(status.into_inner())),
                Ok(Err(status)) => (peer.name, Err(Some(status.message().to_string()))),
                Err(_) => (peer.name, Err(Some(format!("no answer within {timeout:?}")))),
            }
        });
        let mut total = observer::ServerStatusResponse {
            uptime_ns: self.uptime_ns(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        };
        let mut connected = 0u32;
        for (name, answer) in futures_util::future::join_all(asks).await {
            match answer {
                Ok(status) => {
                    connected += 1;
                    total.num_flows += status.num_flows;
                    total.max_flows += status.max_flows;
                    total.seen_flows += status.seen_flows;
                }
                Err(why) => {
                    if let Some(why) = why {
                        self.pool.failed(&name, why);
                    }
                    total.unavailable_nodes.push(name);
                }
            }
        }
        total.unavailable_nodes.sort();
        total.num_connected_nodes = Some(connected);
        total.num_unavailable_nodes = Some(u32::try_from(total.unavailable_nodes.len()).unwrap_or(u32::MAX));
        Ok(Response::new(total))
    }
}
