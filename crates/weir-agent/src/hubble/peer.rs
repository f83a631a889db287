//! Hubble's `peer.Peer` service: the cluster's nodes and where each serves
//! Hubble's Observer API, for a relay to discover them (`weir relay
//! --peer-service`). The nodes are the agent's `--cluster-node`s and itself;
//! every agent is taken to serve on the port this one serves on (Hubble's
//! 4244 when this one serves only on its socket), as Cilium's agents do.
//! In a ClusterMesh the other clusters' nodes are peers too, as their etcd
//! lists them, added and removed as they come and go; every peer is then
//! named `cluster/node`, as Cilium names nodes across a mesh, so one relay
//! serves the whole mesh and two clusters' `node-a` stay apart.

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

/// The mesh this agent's cluster is in: its name, and where the other
/// clusters' nodes are read.
#[derive(Debug, Clone)]
pub struct MeshPeers {
    pub cluster: String,
    pub status: crate::clustermesh::SharedMeshStatus,
    /// The Hubble port the other clusters' agents serve on (this one's).
    pub port: u16,
}

/// The peers of a mesh: this cluster's as `cluster/node`, then every node
/// the other clusters publish, at its address and `port`. Pure.
pub fn mesh_peers(
    cluster: &str,
    own: &[PeerAddress],
    remotes: &BTreeMap<String, Vec<(String, Ipv4Addr)>>,
    port: u16,
) -> Vec<PeerAddress> {
    let mut peers: Vec<PeerAddress> =
        own.iter().map(|p| PeerAddress { name: format!("{cluster}/{}", p.name), address: p.address.clone() }).collect();
    for (remote, nodes) in remotes {
        peers.extend(nodes.iter().map(|(name, ip)| PeerAddress {
            name: format!("{remote}/{name}"),
            address: SocketAddr::new(IpAddr::V4(*ip), port).to_string(),
        }));
    }
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    peers
}

/// What changed from `before` to `after`, as Hubble's notifications:
/// removed peers, then added and moved ones. Pure.
pub fn changes(before: &[PeerAddress], after: &[PeerAddress]) -> Vec<peer::ChangeNotification> {
    use peer::ChangeNotificationType as T;
    let note = |p: &PeerAddress, kind: T| peer::ChangeNotification {
        name: p.name.clone(),
        address: p.address.clone(),
        r#type: kind as i32,
        tls: None,
    };
    let gone = before.iter().filter(|b| !after.iter().any(|a| a.name == b.name)).map(|p| note(p, T::PeerDeleted));
    let new_or_moved = after.iter().filter_map(|a| match before.iter().find(|b| b.name == a.name) {
        None => Some(note(a, T::PeerAdded)),
        Some(b) if b.address != a.address => Some(note(a, T::PeerUpdated)),
        Some(_) => None,
    });
    gone.chain(new_or_moved).collect()
}

/// The Peer service of one agent.
#[derive(Debug, Clone)]
pub struct HubblePeers {
    peers: Vec<PeerAddress>,
    mesh: Option<MeshPeers>,
    closing: tokio::sync::watch::Receiver<bool>,
}

/// How often a mesh's peers are read again for a Notify stream.
const MESH_REREAD: std::time::Duration = std::time::Duration::from_secs(1);

impl HubblePeers {
    pub fn new(peers: Vec<PeerAddress>, mesh: Option<MeshPeers>, closing: tokio::sync::watch::Receiver<bool>) -> Self {
        Self { peers, mesh, closing }
    }

    /// Every peer now: the cluster's, and in a mesh the other clusters'.
    fn current(&self) -> Vec<PeerAddress> {
        let Some(mesh) = &self.mesh else { return self.peers.clone() };
        let remotes: BTreeMap<String, Vec<(String, Ipv4Addr)>> = mesh
            .status
            .lock()
            .map(|s| {
                s.remotes
                    .iter()
                    .map(|(cluster, r)| {
                        (cluster.clone(), r.nodes.iter().map(|n| (n.name.clone(), n.address)).collect())
                    })
                    .collect()
            })
            .unwrap_or_default();
        mesh_peers(&mesh.cluster, &self.peers, &remotes, mesh.port)
    }
}

type NotifyStream = tokio_stream::wrappers::ReceiverStream<Result<peer::ChangeNotification, Status>>;

#[tonic::async_trait]
impl Peer for HubblePeers {
    type NotifyStream = NotifyStream;

    async fn notify(&self, _request: Request<peer::NotifyRequest>) -> Result<Response<Self::NotifyStream>, Status> {
        let mut known = self.current();
        let (tx, rx) = tokio::sync::mpsc::channel(known.len().max(16));
        for added in changes(&[], &known) {
            // The channel holds every node: this cannot wait.
            let _ = tx.send(Ok(added)).await;
        }
        // The cluster's nodes are fixed for the agent's life; a mesh's other
        // clusters' are read again every second. The stream stays open (a
        // relay takes its end as the agent's) until either side goes.
        let mut closing = self.closing.clone();
        let service = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = closing.wait_for(|c| *c) => return,
                    _ = tokio::time::sleep(MESH_REREAD), if service.mesh.is_some() => {}
                }
                let now = service.current();
                for change in changes(&known, &now) {
                    if tx.send(Ok(change)).await.is_err() {
                        return;
                    }
                }
                known = now;
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

    #[test]
    fn a_mesh_names_every_peer_by_cluster_and_tells_of_the_other_clusters_comings_and_goings() {
        let socket = std::path::Path::new("/run/weir/agent.sock");
        let own = cluster_peers("node-a", Some("0.0.0.0:4244"), socket, &cluster());
        let west =
            |ip: [u8; 4]| BTreeMap::from([("west".to_string(), vec![("node-a".to_string(), Ipv4Addr::from(ip))])]);
        let before = mesh_peers("east", &own, &BTreeMap::new(), 4244);
        let names: Vec<&str> = before.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["east/node-a", "east/node-b"]);
        let after = mesh_peers("east", &own, &west([172, 30, 0, 9]), 4244);
        assert_eq!(after[2], PeerAddress { name: "west/node-a".into(), address: "172.30.0.9:4244".into() });
        use peer::ChangeNotificationType as T;
        let added = changes(&before, &after);
        assert_eq!(added.len(), 1);
        assert_eq!((added[0].name.as_str(), added[0].r#type), ("west/node-a", T::PeerAdded as i32));
        let moved = changes(&after, &mesh_peers("east", &own, &west([172, 30, 0, 10]), 4244));
        assert_eq!((moved[0].address.as_str(), moved[0].r#type), ("172.30.0.10:4244", T::PeerUpdated as i32));
        let gone = changes(&after, &before);
        assert_eq!((gone[0].name.as_str(), gone[0].r#type), ("west/node-a", T::PeerDeleted as i32));
        assert!(changes(&after, &after).is_empty());
    }
}
