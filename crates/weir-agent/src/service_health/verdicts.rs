//! The health verdicts that apply on one node, pure: who judges each
//! backend, this node's probes' verdicts and its peers', and from them what
//! is quarantined and what this node must probe.

use std::collections::{BTreeMap, BTreeSet};

use weir_service::plan::{self, BackendKey};
use weir_service::{Backend, Frontend, HealthCheck};

/// Which node's probe decides a backend's health, seen from one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judge<'a> {
    /// This node probes it.
    ThisNode,
    /// The agent of this other node of the cluster does, and shares its verdict.
    Peer(&'a str),
}

/// One node's verdicts.
#[derive(Debug, Clone, Default)]
pub struct Verdicts {
    /// The other nodes of the cluster, when verdicts are shared through the
    /// store; None: this node judges every backend.
    peer_nodes: Option<BTreeSet<String>>,
    /// This node's probes': the backends it judges that failed.
    local_failing: BTreeSet<BackendKey>,
    /// Peers' from the store: (judging node, backend) → passed.
    peers: BTreeMap<(String, BackendKey), bool>,
}

fn key(backend: &Backend, proto: u8) -> BackendKey {
    BackendKey { address: backend.address, port: backend.port, proto }
}

impl Verdicts {
    /// From now on, backends on `peer_nodes` (the cluster's other nodes)
    /// are judged by their own node.
    pub fn share(&mut self, peer_nodes: BTreeSet<String>) {
        self.peer_nodes = Some(peer_nodes);
    }

    /// Who judges a backend whose endpoint names `node_name`: a peer for
    /// a backend on another node of the cluster; this node for its own, for
    /// those on no node or on a node it does not know, and for every
    /// backend when nothing is shared.
    pub fn judge<'a>(&self, node_name: Option<&'a str>) -> Judge<'a> {
        match (&self.peer_nodes, node_name) {
            (Some(peers), Some(node)) if peers.contains(node) => Judge::Peer(node),
            _ => Judge::ThisNode,
        }
    }

    pub fn set_local(&mut self, failing: BTreeSet<BackendKey>) {
        self.local_failing = failing;
    }

    /// Replaces the peers' verdicts; returns the backends whose verdict
    /// turned from failing to passing.
    pub fn set_peers(&mut self, verdicts: BTreeMap<(String, BackendKey), bool>) -> BTreeSet<BackendKey> {
        let recovered = verdicts
            .iter()
            .filter(|(judged, passed)| **passed && self.peers.get(*judged) == Some(&false))
            .map(|((_, backend), _)| *backend)
            .collect();
        self.peers = verdicts;
        recovered
    }

    /// Who judges `backend` of a frontend with `check`, on node `this_node`,
    /// and the verdict that applies. None: not probed, or its node has
    /// published no verdict (taken as passing, as kube-proxy keeps an
    /// endpoint nothing says is unready).
    pub fn verdict(
        &self,
        this_node: &str,
        backend: &Backend,
        check: &HealthCheck,
        proto: u8,
    ) -> Option<(String, bool)> {
        if *check == HealthCheck::None {
            return None;
        }
        let key = key(backend, proto);
        match self.judge(backend.node_name.as_deref()) {
            Judge::ThisNode => Some((this_node.to_string(), !self.local_failing.contains(&key))),
            Judge::Peer(peer) => self.peers.get(&(peer.to_string(), key)).map(|passed| (peer.to_string(), *passed)),
        }
    }

    /// The backends of `frontends` that the verdicts applying on `this_node`
    /// say failed, with the node that judged each.
    pub fn failing<'a>(
        &self,
        this_node: &str,
        frontends: impl Iterator<Item = &'a Frontend>,
    ) -> BTreeMap<BackendKey, String> {
        let mut out = BTreeMap::new();
        for fe in frontends {
            let proto = plan::proto_number(fe.service.protocol);
            for b in &fe.backends {
                if let Some((judge, false)) = self.verdict(this_node, b, &fe.health, proto) {
                    out.insert(key(b, proto), judge);
                }
            }
        }
        out
    }

    /// Every (backend, check) of `frontends` this node probes: the backends it judges.
    pub fn probes<'a>(&self, frontends: impl Iterator<Item = &'a Frontend>) -> BTreeSet<(BackendKey, HealthCheck)> {
        let mut out = BTreeSet::new();
        for fe in frontends.filter(|fe| fe.health != HealthCheck::None) {
            let proto = plan::proto_number(fe.service.protocol);
            for b in fe.backends.iter().filter(|b| self.judge(b.node_name.as_deref()) == Judge::ThisNode) {
                out.insert((key(b, proto), fe.health.clone()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_judges_its_own_backends_and_those_on_no_known_node() {
        let alone = Verdicts::default();
        assert_eq!(alone.judge(Some("node-b")), Judge::ThisNode, "no store: every backend is probed here");
        assert_eq!(alone.judge(None), Judge::ThisNode);
        let mut shared = Verdicts::default();
        shared.share(["node-b".to_string()].into());
        assert_eq!(shared.judge(Some("node-b")), Judge::Peer("node-b"));
        assert_eq!(shared.judge(Some("node-a")), Judge::ThisNode, "this node's own backend");
        assert_eq!(shared.judge(None), Judge::ThisNode, "an external address");
        assert_eq!(shared.judge(Some("elsewhere")), Judge::ThisNode, "a node the cluster does not have");
    }

    #[test]
    fn a_peers_verdict_applies_to_its_own_backends_only_and_none_means_passing() {
        let backend = |ip: &str, node: Option<&str>| Backend {
            address: ip.parse().expect("ip"),
            port: 8080,
            state: weir_service::BackendState::Active,
            node_name: node.map(str::to_string),
            zone: None,
            cluster: None,
            standby: false,
        };
        let (remote, own, external) =
            (backend("10.244.1.2", Some("node-b")), backend("10.244.0.3", Some("node-a")), backend("192.0.2.1", None));
        let tcp = plan::IPPROTO_TCP;
        let mut v = Verdicts::default();
        v.share(["node-b".to_string()].into());
        let check = HealthCheck::Tcp;
        assert_eq!(v.verdict("node-a", &remote, &check, tcp), None, "node-b has published nothing: no verdict");
        assert_eq!(v.verdict("node-a", &own, &check, tcp), Some(("node-a".into(), true)));
        assert_eq!(v.verdict("node-a", &remote, &HealthCheck::None, tcp), None, "not probed");

        // node-b says its backend fails; a verdict of node-b's on another node's backend counts for nothing.
        let recovered = v.set_peers(
            [(("node-b".to_string(), key(&remote, tcp)), false), (("node-b".to_string(), key(&own, tcp)), false)]
                .into(),
        );
        assert!(recovered.is_empty());
        assert_eq!(v.verdict("node-a", &remote, &check, tcp), Some(("node-b".into(), false)));
        assert_eq!(v.verdict("node-a", &own, &check, tcp), Some(("node-a".into(), true)));
        v.set_local([key(&external, tcp)].into());
        assert_eq!(v.verdict("node-a", &external, &check, tcp), Some(("node-a".into(), false)));

        // Passing again: reported as recovered; gone (lapsed): no verdict.
        let recovered = v.set_peers([(("node-b".to_string(), key(&remote, tcp)), true)].into());
        assert_eq!(recovered, [key(&remote, tcp)].into());
        assert_eq!(v.verdict("node-a", &remote, &check, tcp), Some(("node-b".into(), true)));
        assert!(v.set_peers(BTreeMap::new()).is_empty());
        assert_eq!(v.verdict("node-a", &remote, &check, tcp), None);
    }
}
