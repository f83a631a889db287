//! Hubble's `peer.Peer` service: the cluster's nodes and where each serves
//! Hubble's Observer API, for a relay to discover them (`weir relay
//! --peer-service`). The nodes are the agent's `--cluster-node`s and itself;
//! every agent is taken to serve on the port this one serves on (Hubble's
//! 4244 when this one serves only on its socket), as Cilium's agents do.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tonic::{Request, Response, Status};
use weir_proto::peer::{self, peer_server::Peer};

/// Hubble's agent port.
pub const HUBBLE_PORT: u16 = 4244;

/// One node and where its Observer API is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddress {
    pub name: String,
    pub address: String,
}

/// The cluster's Hubble peers: every node of `cluster`, at its address and
/// this agent's Hubble port, and this node where it serves (`hubble_listen`,
/// or its unix `socket` when it serves no TCP).
pub fn cluster_peers(
    node: &str,
    hubble_listen: Option<&str>,
    socket: &std::path::Path,
    cluster: &BTreeMap<String, Ipv4Addr>,
) -> Vec<PeerAddress> {
    let listen: Option<SocketAddr> = hubble_listen.and_then(|a| a.parse().ok());
    let port = listen.map_or(HUBBLE_PORT, |a| a.port());
    let own = match listen {
        Some(a) if !a.ip().is_unspecified() => a.to_string(),
        Some(a) => match cluster.get(node) {
            Some(ip) => SocketAddr::new(IpAddr::V4(*ip), a.port()).to_string(),
            None => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), a.port()).to_string(),
        },
        None => format!("unix://{}", socket.display()),
    };
    let mut peers: Vec<PeerAddress> = cluster
        .iter()
        .filter(|(name, _)| name.as_str() != node)
        .map(|(name, ip)| PeerAddress {
            name: name.clone(),
            address: SocketAddr::new(IpAddr::V4(*ip), port).to_string(),
        })
        .collect();
    peers.push(PeerAddress { name: node.to_string(), address: own });
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    peers
}

/// The Peer service of one agent.
#[derive(Debug, Clone)]
pub struct HubblePeers {
    peers: Vec<PeerAddress>,
    closing: tokio::sync::watch::Receiver<bool>,
}

impl HubblePeers {
    pub fn new(peers: Vec<PeerAddress>, closing: tokio::sync::watch::Receiver<bool>) -> Self {
        Self { peers, closing }
    }
}

type NotifyStream = tokio_stream::wrappers::ReceiverStream<Result<peer::ChangeNotification, Status>>;

#[tonic::async_trait]
impl Peer for HubblePeers {
    type NotifyStream = NotifyStream;

    async fn notify(&self, _request: Request<peer::NotifyRequest>) -> Result<Response<Self::NotifyStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(self.peers.len().max(1));
        for p in &self.peers {
            let added = peer::ChangeNotification {
                name: p.name.clone(),
                address: p.address.clone(),
                r#type: peer::ChangeNotificationType::PeerAdded as i32,
                tls: None,
            };
            // The channel holds every node: this cannot wait.
            let _ = tx.send(Ok(added)).await;
        }
        // The cluster's nodes are fixed for the agent's life: the stream
        // stays open (a relay takes its end as the agent's) until either side
        // goes.
        let mut closing = self.closing.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tx.closed() => {}
                _ = closing.wait_for(|c| *c) => {}
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> BTreeMap<String, Ipv4Addr> {
        [("node-a", [172, 30, 0, 2]), ("node-b", [172, 30, 0, 3])]
            .into_iter()
            .map(|(n, ip)| (n.to_string(), Ipv4Addr::from(ip)))
            .collect()
    }

    #[test]
    fn peers_are_served_where_this_agent_serves_its_port() {
        let socket = std::path::Path::new("/run/weir/agent.sock");
        let peers = cluster_peers("node-a", Some("0.0.0.0:4300"), socket, &cluster());
        assert_eq!(
            peers,
            vec![
                PeerAddress { name: "node-a".into(), address: "172.30.0.2:4300".into() },
                PeerAddress { name: "node-b".into(), address: "172.30.0.3:4300".into() },
            ]
        );
        let peers = cluster_peers("node-b", Some("127.0.0.1:4244"), socket, &cluster());
        assert_eq!(peers[1].address, "127.0.0.1:4244", "its own listener as given");
        assert_eq!(peers[0].address, "172.30.0.2:4244");
        let peers = cluster_peers("node-b", None, socket, &cluster());
        assert_eq!(peers[1].address, "unix:///run/weir/agent.sock", "only its socket");
        assert_eq!(peers[0].address, "172.30.0.2:4244", "Hubble's port for the others");
        let alone = cluster_peers("host", None, socket, &BTreeMap::new());
        assert_eq!(alone, vec![PeerAddress { name: "host".into(), address: "unix:///run/weir/agent.sock".into() }]);
    }
}
