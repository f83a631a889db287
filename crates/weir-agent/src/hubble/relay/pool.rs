//! The relay's peers: discovered through a Peer service (Hubble's
//! `peer.Peer/Notify`), each dialled and redialled, each with its state
//! (connected, or unavailable and why) for node status events, ServerStatus
//! and GetNodes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::sync::broadcast;
use tonic::transport::{Channel, Endpoint, Uri};
use weir_proto::observer::{observer_client::ObserverClient, ServerStatusRequest};
use weir_proto::peer::{peer_client::PeerClient, ChangeNotificationType};
use weir_proto::relay::NodeState;

/// A change in one node's state, for the followers of every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeChange {
    pub node: String,
    pub state: NodeState,
    pub message: String,
}

/// One peer as the relay knows it.
#[derive(Debug, Clone)]
pub struct PeerState {
    pub name: String,
    pub address: String,
    /// Set while the peer is reachable.
    pub channel: Option<Channel>,
    /// Why the peer is unavailable, when it is.
    pub error: String,
}

/// Every peer of the cluster.
#[derive(Debug)]
pub struct Pool {
    peers: Mutex<BTreeMap<String, PeerState>>,
    changes: broadcast::Sender<NodeChange>,
    dial_timeout: Duration,
}

/// Dials a gRPC target: `unix:///path`, `unix:/path`, `host:port` or
/// `http://host:port`.
pub async fn dial(target: &str, timeout: Duration) -> Result<Channel, String> {
    if let Some(path) = target.strip_prefix("unix://").or_else(|| target.strip_prefix("unix:")) {
        let path = std::path::PathBuf::from(path);
        let endpoint = Endpoint::from_static("http://weir-hubble.local").connect_timeout(timeout);
        let connecting = endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }));
        return tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| format!("{target}: no answer within {timeout:?}"))?
            .map_err(|e| format!("{target}: {}", source_chain(&e)));
    }
    let uri = if target.contains("://") { target.to_string() } else { format!("http://{target}") };
    let endpoint = Endpoint::from_shared(uri).map_err(|e| format!("{target}: {e}"))?.connect_timeout(timeout);
    tokio::time::timeout(timeout, endpoint.connect())
        .await
        .map_err(|_| format!("{target}: no answer within {timeout:?}"))?
        .map_err(|e| format!("{target}: {}", source_chain(&e)))
}

/// An error with its causes, for a node status message.
pub fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // Layers often repeat what they wrap.
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

impl Pool {
    pub fn new(dial_timeout: Duration) -> Arc<Self> {
        let (changes, _) = broadcast::channel(1024);
        Arc::new(Self { peers: Mutex::new(BTreeMap::new()), changes, dial_timeout })
    }

    pub fn dial_timeout(&self) -> Duration {
        self.dial_timeout
    }

    /// Every peer now, by name.
    pub fn snapshot(&self) -> Vec<PeerState> {
        self.peers.lock().map(|p| p.values().cloned().collect()).unwrap_or_default()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<NodeChange> {
        self.changes.subscribe()
    }

    fn announce(&self, node: &str, state: NodeState, message: String) {
        let _ = self.changes.send(NodeChange { node: node.to_string(), state, message });
    }

    /// A request to `node` failed: it is unavailable until redialled.
    pub fn failed(&self, node: &str, why: String) {
        let was_connected = {
            let Ok(mut peers) = self.peers.lock() else { return };
            let Some(peer) = peers.get_mut(node) else { return };
            peer.error = why.clone();
            peer.channel.take().is_some()
        };
        if was_connected {
            tracing::warn!(node, error = %why, "hubble peer unavailable");
            self.announce(node, NodeState::NodeUnavailable, why);
        }
    }

    /// A peer added or moved: known, and dialled by the next [`Pool::redial`].
    pub fn add(&self, name: &str, address: &str) {
        self.upsert(name, address);
    }

    fn upsert(&self, name: &str, address: &str) {
        let Ok(mut peers) = self.peers.lock() else { return };
        let entry = peers.entry(name.to_string()).or_insert_with(|| PeerState {
            name: name.to_string(),
            address: address.to_string(),
            channel: None,
            error: "not yet dialled".to_string(),
        });
        if entry.address != address {
            entry.address = address.to_string();
            entry.channel = None;
            entry.error = "its address changed; not yet dialled".to_string();
        }
    }

    fn remove(&self, name: &str) {
        let removed = self.peers.lock().map(|mut p| p.remove(name).is_some()).unwrap_or(false);
        if removed {
            self.announce(name, NodeState::NodeGone, String::new());
        }
    }

    /// Dials every peer that has no connection.
    pub async fn redial(&self) {
        let unconnected: Vec<(String, String)> =
            self.snapshot().into_iter().filter(|p| p.channel.is_none()).map(|p| (p.name, p.address)).collect();
        let dials = unconnected.into_iter().map(|(name, address)| async move {
            let result = dial(&address, self.dial_timeout).await;
            (name, address, result)
        });
        for (name, address, result) in futures_util::future::join_all(dials).await {
            let connected = {
                let Ok(mut peers) = self.peers.lock() else { return };
                let Some(peer) = peers.get_mut(&name).filter(|p| p.address == address) else { continue };
                match result {
                    Ok(channel) => {
                        peer.channel = Some(channel);
                        peer.error.clear();
                        true
                    }
                    Err(why) => {
                        peer.error = why;
                        false
                    }
                }
            };
            if connected {
                tracing::info!(node = name, address, "hubble peer connected");
                self.announce(&name, NodeState::NodeConnected, String::new());
            }
        }
    }

    /// Follows the Peer service at `target` for the relay's life: every
    /// notification updates the pool; a lost service is redialled.
    pub async fn discover(
        self: Arc<Self>,
        target: String,
        retry: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let stream = async {
                let channel = dial(&target, self.dial_timeout).await?;
                PeerClient::new(channel)
                    .notify(weir_proto::peer::NotifyRequest {})
                    .await
                    .map_err(|s| format!("{target}: {}", s.message()))
            };
            match stream.await {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    loop {
                        let next = tokio::select! {
                            next = stream.message() => next,
                            _ = stop.wait_for(|s| *s) => return,
                        };
                        match next {
                            Ok(Some(change)) => match change.r#type() {
                                ChangeNotificationType::PeerAdded | ChangeNotificationType::PeerUpdated => {
                                    self.upsert(&change.name, &change.address);
                                    self.redial().await;
                                }
                                ChangeNotificationType::PeerDeleted => self.remove(&change.name),
                                ChangeNotificationType::Unknown => {}
                            },
                            Ok(None) => {
                                tracing::warn!(target, "the peer service ended its stream");
                                break;
                            }
                            Err(status) => {
                                tracing::warn!(target, error = status.message(), "the peer service failed");
                                break;
                            }
                        }
                    }
                }
                Err(why) => tracing::warn!(error = %why, "cannot reach the peer service"),
            }
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Asks every connected peer for its status: one that does not answer
    /// within the dial timeout is unavailable.
    async fn check_connected(&self) {
        let connected: Vec<(String, Channel)> =
            self.snapshot().into_iter().filter_map(|p| p.channel.map(|c| (p.name, c))).collect();
        let checks = connected.into_iter().map(|(name, channel)| async move {
            let mut client = ObserverClient::new(channel);
            let asked = client.server_status(ServerStatusRequest {});
            let result = match tokio::time::timeout(self.dial_timeout, asked).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(status)) => Err(status.message().to_string()),
                Err(_) => Err(format!("no answer within {:?}", self.dial_timeout)),
            };
            (name, result)
        });
        for (name, result) in futures_util::future::join_all(checks).await {
            if let Err(why) = result {
                self.failed(&name, why);
            }
        }
    }

    /// Every `retry` for the relay's life: checks the connected peers and
    /// redials the others.
    pub async fn keep_dialling(self: Arc<Self>, retry: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            self.check_connected().await;
            self.redial().await;
        }
    }
}
