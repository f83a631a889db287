//! Backend health of the socket load balancer: the probes, who runs them,
//! and the rounds that turn their results into quarantines.
//!
//! **Who probes what.** On a cluster whose nodes share a store (etcd), a
//! backend is judged by the agent of the node it runs on (its endpoint's
//! `nodeName`), as the kubelet judges readiness in Kubernetes: that node's
//! host reaches its own pods whatever their network policy says, while a
//! probe from another node is remote-node traffic that a default-deny
//! policy rightly drops. Each agent probes its own node's backends and
//! those on no node of the cluster (no `nodeName`, or a node it does not
//! know: external addresses), publishes its verdicts ([`shared`]) and
//! applies its peers' for the rest. An agent with no store probes every
//! backend itself.

pub mod shared;
mod verdicts;

pub use verdicts::{Judge, Verdicts};

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use weir_service::plan::{self, BackendKey};
use weir_service::HealthCheck;

use crate::services::ServiceState;

/// Runs one probe of `backend`: a UDP backend takes only DNS and UDP
/// checks; a TCP backend is connected to, and asked for HTTP's path.
pub async fn probe(backend: &BackendKey, check: &HealthCheck, timeout: Duration) -> bool {
    let over_udp = matches!(check, HealthCheck::Dns | HealthCheck::Udp { .. });
    let check = match (backend.proto == plan::IPPROTO_UDP, over_udp) {
        (true, false) => return false,
        (false, true) => &HealthCheck::Tcp,
        _ => check,
    };
    let target = SocketAddr::new(backend.address, backend.port);
    crate::probing::probe(target, check, 0, timeout).await.is_ok()
}

/// Probes the backends this node judges each `interval` and quarantines
/// the failing ones; a backend that passes again returns. With `publish`,
/// each round's verdicts (backend → passed) go to the store's publisher
/// (None until the first round has settled).
/// Stops when `stop` turns true.
pub async fn run_health_checks(
    state: std::sync::Arc<std::sync::Mutex<ServiceState>>,
    interval: Duration,
    publish: Option<tokio::sync::watch::Sender<Option<BTreeMap<BackendKey, bool>>>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let list = |s: &ServiceState, timeout: Duration| -> Vec<crate::probing::ProbeFuture<BackendKey>> {
        s.probes()
            .into_iter()
            .map(|(backend, check)| -> crate::probing::ProbeFuture<BackendKey> {
                Box::pin(async move { (backend, probe(&backend, &check, timeout).await) })
            })
            .collect()
    };
    let publish = std::sync::Arc::new(publish);
    // A passing probe clears only suspect marks made before it started.
    let settle = move |s: &mut ServiceState, results: Vec<(BackendKey, bool)>, started_ns: u64| {
        // One backend may be probed by several checks (services): it passes when all pass.
        let mut verdicts: BTreeMap<BackendKey, bool> = BTreeMap::new();
        for (backend, ok) in results {
            *verdicts.entry(backend).or_insert(true) &= ok;
        }
        let failing: BTreeSet<BackendKey> = verdicts.iter().filter(|(_, ok)| !**ok).map(|(b, _)| *b).collect();
        let passing: BTreeSet<BackendKey> = verdicts.iter().filter(|(_, ok)| **ok).map(|(b, _)| *b).collect();
        if let Err(e) = s.set_local_verdicts(failing) {
            tracing::error!(error = %e, "updating quarantined backends failed");
        }
        s.clear_suspects(&passing, started_ns);
        if let Some(publish) = publish.as_ref() {
            publish.send_if_modified(|published| {
                let changed = published.as_ref() != Some(&verdicts);
                if changed {
                    *published = Some(verdicts);
                }
                changed
            });
        }
    };
    crate::probing::probe_rounds(state, interval, stop, list, settle).await;
}

/// Logs the backends whose quarantine changed, naming whose probe decided.
pub fn log_changes(before: &BTreeSet<BackendKey>, after: &BTreeMap<BackendKey, String>) {
    for (b, judge) in after.iter().filter(|(b, _)| !before.contains(*b)) {
        tracing::warn!(backend = %SocketAddr::new(b.address, b.port), judge, "backend failed its health check; quarantined");
    }
    for b in before.iter().filter(|b| !after.contains_key(*b)) {
        tracing::info!(backend = %SocketAddr::new(b.address, b.port), "backend passed its health check; back in service");
    }
}
