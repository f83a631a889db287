//! The pods of a cluster of several nodes, shared through etcd: every agent
//! publishes the pods of its own node (`weir/endpoints/v1/<node>/<ns>/<pod>`,
//! all replaced in one transaction) and reads every other node's, from
//! which its ipcache and policy peers are computed. Keys live on a lease of
//! 15 minutes, as Cilium's kvstore keys do: a node that stops publishing
//! is forgotten, but an agent restart is not a gap.

use std::time::Duration;

use etcd_client::{Client, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp};

use crate::identities::IdentityError;
use crate::pods::PodRecord;

const ENDPOINTS: &str = "weir/endpoints/v1/";
const NODES: &str = "weir/nodes/v1/";
const LEASE_TTL_SECS: i64 = 900;

pub struct Kvstore {
    client: Client,
    runtime: tokio::runtime::Handle,
    endpoints: String,
    node: String,
    lease: Option<i64>,
    keeper: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Kvstore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kvstore({}, node {})", self.endpoints, self.node)
    }
}

impl Drop for Kvstore {
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
    }
}

/// How often long-lived clients of etcd ping it (HTTP/2 keepalive). etcd
/// refuses pings closer than `--grpc-keepalive-min-time` (5 s by default):
/// a client pinging every 2 s had its connection closed (GOAWAY,
/// too_many_pings) every few seconds, and re-read the store each time.
pub const ETCD_KEEPALIVE: Duration = Duration::from_secs(10);

/// A client of the cluster's etcd, with timeouts: a request never hangs an agent.
pub fn connect_etcd(endpoints: &[String], runtime: &tokio::runtime::Handle) -> Result<Client, IdentityError> {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(5));
    runtime
        .block_on(Client::connect(endpoints, Some(options)))
        .map_err(|e| IdentityError::Etcd { endpoints: endpoints.join(","), message: e.to_string() })
}

impl Kvstore {
    /// Connects; call from a blocking thread of a tokio runtime.
    pub fn connect(endpoints: &[String], node: &str, runtime: tokio::runtime::Handle) -> Result<Self, IdentityError> {
        let client = connect_etcd(endpoints, &runtime)?;
        Ok(Self { client, runtime, endpoints: endpoints.join(","), node: node.to_string(), lease: None, keeper: None })
    }

    fn fail(&self, e: etcd_client::Error) -> IdentityError {
        IdentityError::Etcd { endpoints: self.endpoints.clone(), message: e.to_string() }
    }

    /// This agent's lease, granted once and kept alive by a task of its own.
    fn lease(&mut self) -> Result<i64, IdentityError> {
        if let Some(id) = self.lease {
            return Ok(id);
        }
        let mut client = self.client.clone();
        let id = self.runtime.block_on(client.lease_grant(LEASE_TTL_SECS, None)).map_err(|e| self.fail(e))?.id();
        self.keeper = Some(self.runtime.spawn(async move {
            let Ok((mut keeper, mut answers)) = client.lease_keep_alive(id).await else { return };
            loop {
                if keeper.keep_alive().await.is_err() || answers.message().await.is_err() {
                    tracing::warn!("etcd lease keep-alive failed; the node's pods stay published until the lease ends");
                    return;
                }
                tokio::time::sleep(Duration::from_secs((LEASE_TTL_SECS / 3) as u64)).await;
            }
        }));
        self.lease = Some(id);
        Ok(id)
    }

    /// Makes etcd hold exactly `local` as this node's pods, read from the
    /// pods file with digest `source`, in one transaction (etcd refuses a key
    /// both deleted and put in one, so the pods gone are deleted one by one).
    pub fn publish(&mut self, local: &[PodRecord], source: &str) -> Result<(), IdentityError> {
        let lease = self.lease()?;
        let prefix = format!("{ENDPOINTS}{}/", self.node);
        let mut client = self.client.clone();
        let current = self
            .runtime
            .block_on(client.get(prefix.as_str(), Some(GetOptions::new().with_prefix().with_keys_only())))
            .map_err(|e| self.fail(e))?;
        let wanted: Vec<String> = local.iter().map(|p| format!("{prefix}{}/{}", p.namespace, p.name)).collect();
        let mut ops: Vec<TxnOp> = current
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok())
            .filter(|k| !wanted.iter().any(|w| w == k))
            .map(|k| TxnOp::delete(k, None::<DeleteOptions>))
            .collect();
        for (pod, key) in local.iter().zip(wanted) {
            let value = serde_json::to_string(pod).map_err(|e| IdentityError::State(e.to_string()))?;
            ops.push(TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease))));
        }
        ops.push(TxnOp::put(format!("{NODES}{}", self.node), source, Some(PutOptions::new().with_lease(lease))));
        self.runtime.block_on(client.txn(Txn::new().and_then(ops))).map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// The store's revision: it moves whenever anything is published.
    pub fn revision(&mut self) -> Result<i64, IdentityError> {
        let mut client = self.client.clone();
        let reply = self
            .runtime
            .block_on(client.get(ENDPOINTS, Some(GetOptions::new().with_prefix().with_count_only())))
            .map_err(|e| self.fail(e))?;
        Ok(reply.header().map_or(0, |h| h.revision()))
    }

    /// Every other node's pods.
    pub fn remote_pods(&mut self) -> Result<Vec<PodRecord>, IdentityError> {
        let mut client = self.client.clone();
        let reply = self
            .runtime
            .block_on(client.get(ENDPOINTS, Some(GetOptions::new().with_prefix())))
            .map_err(|e| self.fail(e))?;
        let own = format!("{ENDPOINTS}{}/", self.node);
        Ok(reply
            .kvs()
            .iter()
            .filter(|kv| !kv.key().starts_with(own.as_bytes()))
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect())
    }

    /// The nodes that have published, and the digest of the pods file each
    /// published its pods from.
    pub fn node_sources(&mut self) -> Result<std::collections::BTreeMap<String, String>, IdentityError> {
        let mut client = self.client.clone();
        let reply = self
            .runtime
            .block_on(client.get(NODES, Some(GetOptions::new().with_prefix())))
            .map_err(|e| self.fail(e))?;
        Ok(reply
            .kvs()
            .iter()
            .filter_map(|kv| {
                let node = kv.key_str().ok()?.strip_prefix(NODES)?.to_string();
                Some((node, kv.value_str().ok()?.to_string()))
            })
            .collect())
    }

    /// The nodes that have published.
    pub fn nodes(&mut self) -> Result<Vec<String>, IdentityError> {
        let mut client = self.client.clone();
        let reply = self
            .runtime
            .block_on(client.get(NODES, Some(GetOptions::new().with_prefix().with_keys_only())))
            .map_err(|e| self.fail(e))?;
        Ok(reply.kvs().iter().filter_map(|kv| kv.key_str().ok()?.strip_prefix(NODES).map(str::to_string)).collect())
    }
}
