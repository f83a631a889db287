//! Health verdicts shared through the cluster's etcd: each agent publishes
//! the verdicts of the backends it judges, and applies its peers'.
//!
//! Layout: `weir/health/v1/<node>/<tcp|udp>/<address>/<port>` → `{"passing":
//! BOOL}`, one key per backend the node judges, on a lease of the agent's
//! (`lease_ttl`: five probe intervals, 15 s at least) kept alive while it
//! runs. Keys are written only when a verdict changes (and all of them
//! after the lease is granted again), so the store's traffic does not
//! grow with the probe rate. When an agent dies its keys lapse with its lease:
//! its peers then have no verdict for its backends and take them as
//! passing, as kube-proxy keeps an endpoint nothing says is unready (its
//! pods and datapath may well run on; passive health still steers each
//! node's new connections from a backend that refuses them). While etcd
//! is away, each agent keeps the verdicts it last read.
//!
//! Peers' verdicts are read whole, then watched (etcd watch, not polling)
//! from the revision read; a watch that ends is read whole again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use serde::{Deserialize, Serialize};
use weir_service::plan::{self, BackendKey};

use crate::kvstore::ETCD_KEEPALIVE;
use crate::services::ServiceState;

pub const PREFIX: &str = "weir/health/v1/";
/// etcd's default limit of operations in one transaction.
const TXN_OPS: usize = 128;
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A verdict's stored value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Verdict {
    passing: bool,
}

/// How long a dead agent's verdicts outlive it.
pub fn lease_ttl(interval: Duration) -> Duration {
    (interval * 5).max(Duration::from_secs(15))
}

/// The key of `node`'s verdict on `backend`.
pub fn key(node: &str, backend: &BackendKey) -> String {
    let proto = if backend.proto == plan::IPPROTO_UDP { "udp" } else { "tcp" };
    format!("{PREFIX}{node}/{proto}/{}/{}", backend.address, backend.port)
}

/// The node and backend a key names; None for a key of another layout.
pub fn parse_key(key: &str) -> Option<(String, BackendKey)> {
    let mut parts = key.strip_prefix(PREFIX)?.split('/');
    let (node, proto, address, port) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || node.is_empty() {
        return None;
    }
    let proto = match proto {
        "tcp" => plan::IPPROTO_TCP,
        "udp" => plan::IPPROTO_UDP,
        _ => return None,
    };
    let address: IpAddr = address.parse().ok()?;
    Some((node.to_string(), BackendKey { address, port: port.parse().ok()?, proto }))
}

fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(ETCD_KEEPALIVE, Duration::from_secs(3))
}

/// A connection with this agent's lease, kept alive by a task that ends
/// when the lease is lost.
struct Session {
    client: Client,
    lease: i64,
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

async fn open_session(endpoints: &[String], ttl: Duration) -> Result<Session, etcd_client::Error> {
    let mut client = Client::connect(endpoints, Some(connect_options())).await?;
    let lease = client.lease_grant(ttl.as_secs() as i64, None).await?.id();
    let (mut keeper, mut answers) = client.lease_keep_alive(lease).await?;
    let keeper = tokio::spawn(async move {
        loop {
            if keeper.keep_alive().await.is_err() {
                return;
            }
            match answers.message().await {
                Ok(Some(answer)) if answer.ttl() > 0 => {}
                // No answer, or a TTL of 0: the lease is gone (expired while etcd was away).
                _ => return,
            }
            tokio::time::sleep(ttl / 5).await;
        }
    });
    Ok(Session { client, lease, keeper })
}

/// Publishes this node's verdicts (backend → passed) as `verdicts` changes,
/// until `stop` turns true. Nothing is written before the first round has
/// settled: a restarted agent does not wipe its last verdicts meanwhile.
pub async fn publish_verdicts(
    endpoints: Vec<String>,
    node: String,
    ttl: Duration,
    mut verdicts: tokio::sync::watch::Receiver<Option<BTreeMap<BackendKey, bool>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut session: Option<Session> = None;
    // What the store holds of this node's verdicts; None: unknown, written whole next.
    let mut published: Option<BTreeMap<BackendKey, bool>> = None;
    let mut backoff = INITIAL_BACKOFF;
    tokio::select! {
        first = verdicts.wait_for(Option::is_some) => if first.is_err() { return },
        _ = stop.wait_for(|s| *s) => return,
    }
    loop {
        let wanted = verdicts.borrow_and_update().clone().unwrap_or_default();
        let outcome = tokio::select! {
            outcome = publish_once(&endpoints, &node, ttl, &mut session, &mut published, &wanted) => outcome,
            _ = stop.wait_for(|s| *s) => return,
        };
        match outcome {
            Ok(()) => {
                backoff = INITIAL_BACKOFF;
                let Some(live) = session.as_mut() else { continue };
                let lease_lost = tokio::select! {
                    changed = verdicts.changed() => if changed.is_err() { return } else { false },
                    _ = &mut live.keeper => true,
                    _ = stop.wait_for(|s| *s) => return,
                };
                if lease_lost {
                    tracing::warn!("the health verdicts' etcd lease was lost; publishing them again");
                    session = None;
                    published = None;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "publishing health verdicts to the cluster's store failed; retrying");
                session = None;
                published = None;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn publish_once(
    endpoints: &[String],
    node: &str,
    ttl: Duration,
    session: &mut Option<Session>,
    published: &mut Option<BTreeMap<BackendKey, bool>>,
    wanted: &BTreeMap<BackendKey, bool>,
) -> Result<(), etcd_client::Error> {
    if session.is_none() {
        *session = Some(open_session(endpoints, ttl).await?);
        *published = None;
    }
    let Some(live) = session.as_mut() else { return Ok(()) };
    let (gone, changed): (Vec<String>, Vec<(&BackendKey, &bool)>) = match published {
        Some(before) => (
            before.keys().filter(|b| !wanted.contains_key(*b)).map(|b| key(node, b)).collect(),
            wanted.iter().filter(|(b, passed)| before.get(*b) != Some(*passed)).collect(),
        ),
        None => {
            // Written whole: what an earlier run of this agent left is deleted.
            let mine = format!("{PREFIX}{node}/");
            let held = live.client.get(mine, Some(GetOptions::new().with_prefix().with_keys_only())).await?;
            let wanted_keys: BTreeSet<String> = wanted.keys().map(|b| key(node, b)).collect();
            let gone = held
                .kvs()
                .iter()
                .filter_map(|kv| kv.key_str().ok())
                .filter(|k| !wanted_keys.contains(*k))
                .map(str::to_string)
                .collect();
            (gone, wanted.iter().collect())
        }
    };
    let mut ops: Vec<TxnOp> = gone.into_iter().map(|k| TxnOp::delete(k, None::<DeleteOptions>)).collect();
    for (backend, passed) in changed {
        let value = serde_json::to_string(&Verdict { passing: *passed }).unwrap_or_default();
        ops.push(TxnOp::put(key(node, backend), value, Some(PutOptions::new().with_lease(live.lease))));
    }
    for chunk in ops.chunks(TXN_OPS) {
        live.client.txn(Txn::new().and_then(chunk.to_vec())).await?;
    }
    *published = Some(wanted.clone());
    Ok(())
}

/// Applies the verdicts the other nodes publish to `state`, until `stop` turns true.
pub async fn follow_verdicts(
    endpoints: Vec<String>,
    node: String,
    state: Arc<Mutex<ServiceState>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = INITIAL_BACKOFF;
    loop {
        let outcome = tokio::select! {
            outcome = follow_once(&endpoints, &node, &state, &mut backoff) => outcome,
            _ = stop.wait_for(|s| *s) => return,
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "reading peers' health verdicts from the cluster's store failed; keeping the last read");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The peers' verdict a stored key and value give, if it is one.
fn peer_verdict(node: &str, key: &str, value: &[u8]) -> Option<((String, BackendKey), bool)> {
    let (judge, backend) = parse_key(key)?;
    if judge == node {
        return None;
    }
    let verdict: Verdict = serde_json::from_slice(value).ok()?;
    Some(((judge, backend), verdict.passing))
}

/// One connection: read the verdicts whole, then watch until the watch ends.
async fn follow_once(
    endpoints: &[String],
    node: &str,
    state: &Arc<Mutex<ServiceState>>,
    backoff: &mut Duration,
) -> Result<(), etcd_client::Error> {
    let mut client = Client::connect(endpoints, Some(connect_options())).await?;
    let reply = client.get(PREFIX, Some(GetOptions::new().with_prefix())).await?;
    let revision = reply.header().map_or(0, |h| h.revision());
    let mut verdicts: BTreeMap<(String, BackendKey), bool> =
        reply.kvs().iter().filter_map(|kv| peer_verdict(node, kv.key_str().ok()?, kv.value())).collect();
    deliver(state, &verdicts).await;
    let mut stream =
        client.watch(PREFIX, Some(WatchOptions::new().with_prefix().with_start_revision(revision + 1))).await?;
    *backoff = INITIAL_BACKOFF;
    while let Some(reply) = stream.message().await? {
        if reply.canceled() || reply.compact_revision() != 0 {
            // Read whole again on the next connection.
            return Ok(());
        }
        if reply.events().is_empty() {
            continue;
        }
        for event in reply.events() {
            let Some(kv) = event.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            match event.event_type() {
                EventType::Put => match peer_verdict(node, key, kv.value()) {
                    Some((judged, passed)) => {
                        verdicts.insert(judged, passed);
                    }
                    None => tracing::debug!(key, "not a peer's health verdict"),
                },
                // Deleted, or lapsed with its agent's lease: no verdict.
                EventType::Delete => {
                    if let Some(judged) = parse_key(key) {
                        verdicts.remove(&judged);
                    }
                }
            }
        }
        deliver(state, &verdicts).await;
    }
    Err(etcd_client::Error::WatchError("the watch ended".into()))
}

async fn deliver(state: &Arc<Mutex<ServiceState>>, verdicts: &BTreeMap<(String, BackendKey), bool>) {
    let (state, verdicts) = (state.clone(), verdicts.clone());
    let _ = tokio::task::spawn_blocking(move || {
        if let Ok(mut s) = state.lock() {
            if let Err(e) = s.set_peer_verdicts(verdicts) {
                tracing::error!(error = %e, "applying peers' health verdicts failed");
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_judge_and_the_backend_and_read_back() {
        let v6 = BackendKey { address: "fd00::1".parse().expect("ip"), port: 53, proto: plan::IPPROTO_UDP };
        let v4 = BackendKey { address: "10.244.1.2".parse().expect("ip"), port: 8080, proto: plan::IPPROTO_TCP };
        assert_eq!(key("node-b", &v4), "weir/health/v1/node-b/tcp/10.244.1.2/8080");
        for backend in [v4, v6] {
            assert_eq!(parse_key(&key("node-b", &backend)), Some(("node-b".to_string(), backend)));
        }
        for bad in
            ["weir/health/v1/node-b/sctp/10.0.0.1/1", "weir/health/v1//tcp/10.0.0.1/1", "weir/health/v1/n/tcp/x/1"]
        {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
        // Own verdicts are not a peer's; an unreadable value is no verdict.
        let k = key("node-b", &v4);
        assert_eq!(peer_verdict("node-a", &k, br#"{"passing":false}"#), Some((("node-b".into(), v4), false)));
        assert_eq!(peer_verdict("node-b", &k, br#"{"passing":false}"#), None);
        assert_eq!(peer_verdict("node-a", &k, b"yes"), None);
    }
}
