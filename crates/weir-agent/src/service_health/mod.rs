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

/// A DNS query for the root's NS records, with id `id`.
fn dns_query(id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(17);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    q.extend_from_slice(&[0, 0, 2, 0, 1]); // ".", NS, IN
    q
}

/// A UDP probe: the request goes out on a connected socket (so an ICMP port
/// unreachable comes back as an error) twice at most, and any datagram back
/// passes (for DNS, one with the query's id).
async fn probe_udp(addr: SocketAddr, check: &HealthCheck) -> Option<bool> {
    let id = (weir_bpf::ktime_now_ns() & 0xffff) as u16;
    let request = match check {
        HealthCheck::Dns => dns_query(id),
        HealthCheck::Udp { payload } => payload.as_bytes().to_vec(),
        _ => return None,
    };
    let local: SocketAddr =
        if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = tokio::net::UdpSocket::bind(local).await.ok()?;
    socket.connect(addr).await.ok()?;
    let mut buf = [0u8; 512];
    loop {
        socket.send(&request).await.ok()?;
        // The caller's timeout bounds the whole probe; a lost datagram is sent again.
        match tokio::time::timeout(Duration::from_millis(300), socket.recv(&mut buf)).await {
            Ok(Ok(n)) => return Some(!matches!(check, HealthCheck::Dns) || (n >= 2 && buf[..2] == id.to_be_bytes())),
            Ok(Err(_)) => return Some(false), // port unreachable: nothing listens
            Err(_) => continue,
        }
    }
}

/// Runs one probe: TCP connect, an HTTP GET that must answer 2xx or 3xx,
/// or a UDP request that must be answered.
pub async fn probe(backend: &BackendKey, check: &HealthCheck, timeout: Duration) -> bool {
    let addr = SocketAddr::new(backend.address, backend.port);
    if backend.proto == plan::IPPROTO_UDP {
        return matches!(tokio::time::timeout(timeout, probe_udp(addr, check)).await, Ok(Some(true)));
    }
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        if let HealthCheck::Http { path } = check {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: weir-health\r\n\r\n");
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut head = [0u8; 12];
            stream.read_exact(&mut head).await.ok()?;
            let status = std::str::from_utf8(&head[9..12]).ok()?;
            return Some(status.starts_with('2') || status.starts_with('3'));
        }
        Some(true)
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
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
