//! Following the cluster's store: on a cluster of several nodes, the
//! desired state lives in etcd (layout: `weir-store`), and this node makes
//! its capabilities hold what the store holds.
//!
//! The store is read whole once, then watched from the revision read (etcd
//! watch, not polling); each change is handed to the capability that owns
//! its kind (one [`sink::Sink`] per capability). What the node applied, the
//! store's view at the revision it holds, and the keys of a change under way
//! are kept in `<state dir>/store.json`: a restart converges from there
//! first (etcd may be down: the capabilities also restore their own records,
//! so the node enforces without it), then resumes the watch from that
//! revision, or reads the store whole again if etcd has compacted it.

mod filter;
mod netpolicy;
mod runtime;
mod services;
pub mod sink;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};
use weir_proto::store::v1 as pb;
use weir_store::{Applied, Kind, ObjectRef, Step, Stored};

use crate::kvstore::ETCD_KEEPALIVE;
use crate::service::{AgentState, FilterApi, NetworkPolicyApi, RuntimeApi, ServicesApi};
use sink::Sink;

const RECORD: &str = "store.json";
/// The first wait before reaching etcd again.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between attempts to reach an etcd that is away.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What is kept in the state dir.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    /// The store as this node last saw it (key → value), at `applied.revision`.
    view: BTreeMap<String, String>,
    applied: Applied,
}

/// Where following stands, for `StoreSync.Status`.
#[derive(Debug, Default, Clone)]
struct Progress {
    connected: bool,
    last_error: String,
    refused: BTreeMap<String, String>,
    applied_unix_ns: u64,
    relists: u64,
    watch_events: u64,
    changes: u64,
}

/// One node following the store.
pub struct Follower {
    node: String,
    endpoints: Vec<String>,
    path: PathBuf,
    sinks: Vec<Box<dyn Sink>>,
    record: tokio::sync::Mutex<Record>,
    progress: Mutex<Progress>,
    /// The revision held, published for waiters.
    revision: tokio::sync::watch::Sender<i64>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Follower({})", self.endpoints.join(","))
    }
}

fn now_unix_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn load(path: &Path) -> Record {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "unreadable store record; reading the store whole");
            Record::default()
        }),
        Err(_) => Record::default(),
    }
}

fn save(path: &Path, record: &Record) -> std::io::Result<()> {
    let text = serde_json::to_string(record).map_err(std::io::Error::other)?;
    // Write-then-rename: a crash never leaves a torn record.
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

impl Follower {
    /// A follower of the etcd at `endpoints`, applying through `state`'s capabilities.
    pub fn new(node: &str, endpoints: Vec<String>, state_dir: &Path, state: Arc<AgentState>) -> Arc<Self> {
        let path = state_dir.join(RECORD);
        let record = load(&path);
        let sinks: Vec<Box<dyn Sink>> = vec![
            Box::new(services::Services(ServicesApi(state.clone()))),
            Box::new(netpolicy::NetPolicies(NetworkPolicyApi(state.clone()))),
            Box::new(runtime::RuntimePolicies(RuntimeApi(state.clone()))),
            Box::new(filter::FilterPolicies(FilterApi(state))),
        ];
        let (revision, _) = tokio::sync::watch::channel(record.applied.revision);
        Arc::new(Self {
            node: node.to_string(),
            endpoints,
            path,
            sinks,
            record: tokio::sync::Mutex::new(record),
            progress: Mutex::new(Progress::default()),
            revision,
        })
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows the store until `stop` turns true: converges from the record
    /// first, then reads and watches, reconnecting with backoff.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        {
            let mut record = self.record.lock().await;
            let view = record.view.clone();
            let revision = record.applied.revision;
            self.converge(&mut record, view, revision).await;
        }
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let outcome = tokio::select! {
                outcome = self.follow_once() => outcome,
                _ = stop.wait_for(|s| *s) => return,
            };
            let was_connected = {
                let mut progress = self.progress();
                if let Err(e) = &outcome {
                    progress.last_error = e.to_string();
                }
                std::mem::replace(&mut progress.connected, false)
            };
            // A watch that was live is retried at once; failures in a row back off.
            if was_connected {
                backoff = INITIAL_BACKOFF;
            }
            if let Err(e) = outcome {
                tracing::warn!(error = %e, endpoints = %self.endpoints.join(","), "the cluster's store is away; enforcing what was applied");
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection: read the store whole if need be, then watch from the
    /// revision held until the watch ends. Returns when it must reconnect.
    async fn follow_once(&self) -> Result<(), etcd_client::Error> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(ETCD_KEEPALIVE, Duration::from_secs(3));
        let mut client = Client::connect(&self.endpoints, Some(options)).await?;
        let mut relist = self.record.lock().await.applied.revision == 0;
        loop {
            if relist {
                let reply = client.get(weir_store::PREFIX, Some(GetOptions::new().with_prefix())).await?;
                let revision = reply.header().map_or(0, |h| h.revision());
                let view: BTreeMap<String, String> = reply
                    .kvs()
                    .iter()
                    .filter_map(|kv| Some((kv.key_str().ok()?.to_string(), kv.value_str().ok()?.to_string())))
                    .collect();
                self.progress().relists += 1;
                let mut record = self.record.lock().await;
                self.converge(&mut record, view, revision).await;
            }
            let held = self.record.lock().await.applied.revision;
            // A watch may start at the compaction revision itself, whose
            // deletions etcd has already dropped: read at the revision held
            // first, and if etcd no longer has it, read the store whole.
            if !relist {
                let at = GetOptions::new().with_prefix().with_count_only().with_revision(held);
                match client.get(weir_store::PREFIX, Some(at)).await {
                    Ok(_) => {}
                    Err(e) if e.to_string().contains("compacted") => {
                        tracing::info!(
                            revision = held,
                            "the store's history is compacted past this node's revision; reading it whole"
                        );
                        relist = true;
                        continue;
                    }
                    // A revision this etcd never reached: the record is of another store.
                    Err(e) if e.to_string().contains("future revision") => {
                        tracing::warn!(
                            revision = held,
                            "this node's record is ahead of the store (another etcd?); reading it whole"
                        );
                        relist = true;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let from = held + 1;
            let mut stream = client
                .watch(weir_store::PREFIX, Some(WatchOptions::new().with_prefix().with_start_revision(from)))
                .await?;
            {
                let mut progress = self.progress();
                progress.connected = true;
                progress.last_error.clear();
            }
            relist = false;
            while let Some(reply) = stream.message().await? {
                if reply.canceled() || reply.compact_revision() != 0 {
                    tracing::info!(
                        compacted = reply.compact_revision(),
                        reason = reply.cancel_reason(),
                        "the store's history is compacted past this node's revision; reading it whole"
                    );
                    relist = true;
                    break;
                }
                let Some(revision) = reply.header().map(|h| h.revision()) else { continue };
                if reply.events().is_empty() {
                    continue;
                }
                self.progress().watch_events += reply.events().len() as u64;
                let mut record = self.record.lock().await;
                let mut view = record.view.clone();
                for event in reply.events() {
                    let Some(kv) = event.kv() else { continue };
                    let Ok(key) = kv.key_str() else { continue };
                    match event.event_type() {
                        EventType::Put => {
                            view.insert(key.to_string(), kv.value_str().unwrap_or_default().to_string());
                        }
                        EventType::Delete => {
                            view.remove(key);
                        }
                    }
                }
                self.converge(&mut record, view, revision).await;
            }
            if !relist {
                return Err(etcd_client::Error::WatchError("the watch ended".into()));
            }
        }
    }

    /// Makes the capabilities hold `view` (the store at `revision`), and
    /// records it: the keys touched are recorded as pending first, so a crash
    /// mid-change is finished on restart.
    async fn converge(&self, record: &mut Record, view: BTreeMap<String, String>, revision: i64) {
        let plan = weir_store::plan(&record.applied, &view);
        let mut refused: BTreeMap<String, String> =
            plan.refused.iter().map(|(key, e)| (key.clone(), e.to_string())).collect();
        if !plan.steps.is_empty() {
            record.applied.pending = plan.steps.iter().map(|s| s.object().key()).collect();
            self.persist(record);
        }
        for sink in &self.sinks {
            let mine = |kind: &Kind| sink.kinds().contains(kind);
            let mut puts: Vec<(ObjectRef, String, Stored)> = Vec::new();
            for step in &plan.steps {
                match step {
                    Step::Put { object, value, stored } if mine(&object.kind) => {
                        puts.push((object.clone(), value.clone(), stored.clone()))
                    }
                    Step::Remove { object } if mine(&object.kind) => match sink.remove(object).await {
                        Ok(()) => {
                            record.applied.objects.remove(&object.key());
                        }
                        Err(status) => {
                            refused.insert(object.key(), format!("removing {object}: {}", status.message()));
                        }
                    },
                    _ => {}
                }
            }
            if puts.is_empty() {
                continue;
            }
            // Kinds in the order they depend on one another (a Service before its slices).
            puts.sort_by(|a, b| (a.0.kind, &a.0).cmp(&(b.0.kind, &b.0)));
            let batch: Vec<(ObjectRef, Stored)> = puts.iter().map(|(o, _, s)| (o.clone(), s.clone())).collect();
            match sink.put(&batch).await {
                Ok(()) => {
                    for (object, value, _) in puts {
                        record.applied.objects.insert(object.key(), value);
                    }
                }
                // One refused document refuses the batch: find which, one by one.
                Err(status) if puts.len() == 1 => {
                    refused.insert(puts[0].0.key(), status.message().to_string());
                }
                Err(_) => {
                    for (object, value, stored) in puts {
                        match sink.put(&[(object.clone(), stored)]).await {
                            Ok(()) => {
                                record.applied.objects.insert(object.key(), value);
                            }
                            Err(status) => {
                                refused.insert(object.key(), status.message().to_string());
                            }
                        }
                    }
                }
            }
        }
        for (key, why) in &refused {
            tracing::warn!(key, error = %why, "an object of the store is not applied on this node");
        }
        record.applied.pending.clear();
        record.applied.revision = revision;
        record.view = view;
        self.persist(record);
        {
            let mut progress = self.progress();
            // Refusals stand until the object applies or leaves the store.
            progress.refused.retain(|key, _| {
                record.view.contains_key(key) && record.applied.objects.get(key) != record.view.get(key)
            });
            progress.refused.extend(refused);
            if !plan.steps.is_empty() {
                progress.applied_unix_ns = now_unix_ns();
                progress.changes += plan.steps.len() as u64;
            }
        }
        self.revision.send_replace(revision);
    }

    fn persist(&self, record: &Record) {
        if let Err(e) = save(&self.path, record) {
            tracing::warn!(path = %self.path.display(), error = %e, "recording what the store holds");
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The numbers of the metrics endpoint.
    pub async fn metrics(&self) -> crate::metrics::StoreMetrics {
        let status = self.status().await;
        let progress = self.progress().clone();
        crate::metrics::StoreMetrics {
            revision: status.revision,
            connected: status.connected,
            objects: status.objects,
            refused: status.refused.len() as u64,
            relists: status.relists,
            watch_events: progress.watch_events,
            changes: progress.changes,
        }
    }

    async fn status(&self) -> pb::StatusResponse {
        let (revision, objects) = {
            let record = self.record.lock().await;
            (record.applied.revision, record.applied.objects.len() as u64)
        };
        let progress = self.progress().clone();
        pb::StatusResponse {
            enabled: true,
            revision,
            connected: progress.connected,
            last_error: progress.last_error,
            refused: progress.refused.into_iter().collect(),
            applied_unix_ns: progress.applied_unix_ns,
            objects,
            relists: progress.relists,
        }
    }
}

/// The `StoreSync` gRPC service: where this node is in following the store.
#[derive(Debug, Clone)]
pub struct StoreSyncService(pub Option<Arc<Follower>>);

#[tonic::async_trait]
impl pb::store_sync_server::StoreSync for StoreSyncService {
    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(match &self.0 {
            Some(follower) => follower.status().await,
            None => pb::StatusResponse::default(),
        }))
    }
}
