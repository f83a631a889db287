//! Is a remote cluster lost, or only its etcd? Heartbeats both ways.
//!
//! The etcd side is checked by [`super::remote`]: a `Status` call every
//! [`HEARTBEAT`] on the watched connection, which must answer within
//! [`ETCD_TIMEOUT`] (a watch alone says nothing when the other end vanishes
//! without a reset). While the etcd is away this module knocks on the
//! cluster's nodes every [`HEARTBEAT`]: a TCP connection to Cilium's health
//! port, 4240, answered (accepted or refused) within [`HEARTBEAT`] means the
//! node is up. No node answering for [`LOST_AFTER`] means the cluster is
//! lost: its backends leave this node's tables at once. A cluster whose
//! nodes answer keeps what was learned for the stale time
//! (`--clustermesh-stale-after`), then its backends leave too. Either way
//! its routes and pods stay, and its next read puts everything back.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::status::{write_status, RemoteState};
use super::{Learned, MeshContext};

pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// How long a `Status` call on a remote etcd may take before it is away.
pub const ETCD_TIMEOUT: Duration = Duration::from_secs(1);
/// How long every node of a cluster whose etcd is away may stay silent
/// before the cluster is lost.
pub const LOST_AFTER: Duration = Duration::from_secs(1);
/// Cilium's health port: a node answers on it, or refuses it, when it is up.
pub const HEALTH_PORT: u16 = 4240;

/// What a remote cluster is, given when its etcd went away (None: it is
/// reached) and when one of its nodes last answered. Pure.
pub fn judge(
    etcd_away_since: Option<Instant>,
    node_answered: Option<Instant>,
    now: Instant,
    stale_after: Option<Duration>,
) -> RemoteState {
    let Some(away) = etcd_away_since else { return RemoteState::Connected };
    // Silent since the etcd went away, or since a node last answered after that.
    let silent_since = node_answered.map_or(away, |answered| answered.max(away));
    if now.saturating_duration_since(silent_since) >= LOST_AFTER {
        RemoteState::Lost
    } else if stale_after.is_some_and(|after| now.saturating_duration_since(away) >= after) {
        RemoteState::Stale
    } else {
        RemoteState::EtcdAway
    }
}

/// Whether one of `nodes` answers a connection to its health port within a heartbeat.
async fn any_node_answers(nodes: &[Ipv4Addr]) -> bool {
    let knocks = nodes.iter().map(|address| async move {
        let addr = SocketAddr::from((*address, HEALTH_PORT));
        match tokio::time::timeout(HEARTBEAT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
            Err(_) => false,
        }
    });
    futures_util::future::join_all(knocks).await.into_iter().any(|up| up)
}

/// When each remote cluster's etcd went away (set by the follower, cleared
/// when it is read again).
pub(super) type AwaySince = Arc<Mutex<BTreeMap<String, Instant>>>;

/// Judges `cluster` every heartbeat while its etcd is away, and takes its
/// backends out of this node's tables when it is lost or stale.
pub(super) async fn watch(
    context: Arc<MeshContext>,
    learned: Arc<Mutex<Learned>>,
    away: AwaySince,
    cluster: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut answered: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let Some(since) = away.lock().ok().and_then(|a| a.get(&cluster).copied()) else {
            answered = None;
            continue;
        };
        let nodes: Vec<Ipv4Addr> = learned
            .lock()
            .map(|l| l.clusters.get(&cluster).map(|n| n.values().map(|n| n.address).collect()).unwrap_or_default())
            .unwrap_or_default();
        if any_node_answers(&nodes).await {
            answered = Some(Instant::now());
        }
        let verdict = judge(Some(since), answered, Instant::now(), context.config.stale_after);
        let Ok(mut status) = context.status.lock() else { return };
        // The follower may have read the cluster again meanwhile: then it is not away.
        if away.lock().ok().and_then(|a| a.get(&cluster).copied()) != Some(since) {
            continue;
        }
        let was = status.remotes.get(&cluster).map(|r| r.state);
        // Only a read of its store brings a dropped cluster's backends back:
        // its nodes answering again while its etcd is still away do not.
        if was == Some(verdict) || (was.is_some_and(RemoteState::dropped) && !verdict.dropped()) {
            continue;
        }
        if verdict.dropped() && !was.is_some_and(RemoteState::dropped) {
            if let Some(services) = &context.services {
                let dropped = services
                    .lock()
                    .map_err(|_| "poisoned".to_string())
                    .and_then(|mut s| s.set_remote(&cluster, BTreeMap::new()).map_err(|e| e.to_string()));
                match dropped {
                    Ok(()) => tracing::warn!(
                        cluster,
                        state = verdict.name(),
                        "remote cluster's backends left this node's tables"
                    ),
                    Err(e) => {
                        tracing::warn!(cluster, error = e, "taking a remote cluster's backends out failed; retried");
                        continue;
                    }
                }
            }
            if let Some(remote) = status.remotes.get_mut(&cluster) {
                remote.global_services = 0;
                remote.backends = 0;
            }
        }
        status.set_state(&cluster, verdict);
        drop(status);
        write_status(&context, &learned);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_is_lost_when_its_etcd_and_nodes_are_silent_and_stale_after_the_stale_time() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let ten_s = Some(Duration::from_secs(10));
        assert_eq!(judge(None, None, at(0), ten_s), RemoteState::Connected);
        // Etcd away, nodes not yet asked: away until LOST_AFTER of silence.
        assert_eq!(judge(Some(at(0)), None, at(500), ten_s), RemoteState::EtcdAway);
        assert_eq!(judge(Some(at(0)), None, at(1000), ten_s), RemoteState::Lost);
        // A node answered before the etcd went away: that does not count.
        assert_eq!(judge(Some(at(1000)), Some(at(0)), at(2000), ten_s), RemoteState::Lost);
        // Nodes answering: kept until the stale time, then stale.
        assert_eq!(judge(Some(at(0)), Some(at(9500)), at(9900), ten_s), RemoteState::EtcdAway);
        assert_eq!(judge(Some(at(0)), Some(at(9500)), at(10_000), ten_s), RemoteState::Stale);
        // No stale time: kept while its nodes answer, as Cilium keeps it.
        assert_eq!(judge(Some(at(0)), Some(at(99_500)), at(100_000), None), RemoteState::EtcdAway);
        // Nodes going silent later: lost.
        assert_eq!(judge(Some(at(0)), Some(at(5000)), at(6000), None), RemoteState::Lost);
    }
}
