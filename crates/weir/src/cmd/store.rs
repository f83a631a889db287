//! The CLI's side of the cluster's store: a lab of several nodes on the pod
//! path keeps its desired state in its etcd (layout: `weir-store`). The
//! etcd listens on the lab's fabric, so every call is made from a thread in
//! the etcd node's network namespace, on a runtime of its own.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Txn, TxnOp, TxnOpResponse};
use weir_store::ObjectRef;

/// Commits that lost a race with another writer, retried before giving up.
const MAX_ATTEMPTS: usize = 8;

#[derive(Debug, Clone)]
pub struct ClusterStore {
    netns: String,
    url: String,
}

/// What the store holds: every key under `weir/state/v1/` and its value, at a revision.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub revision: i64,
    pub objects: BTreeMap<String, String>,
}

impl ClusterStore {
    /// The store of the lab `plan` describes, if it has one.
    pub fn of_plan(plan: &weir_lab::LabPlan) -> Option<Self> {
        weir_lab::runtime::etcd_endpoint(plan).map(|(netns, url)| Self { netns, url })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs `work` with a client, from the etcd node's network namespace.
    fn with_client<T: Send>(
        &self,
        work: impl FnOnce(Client) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<T>> + Send>> + Send,
    ) -> anyhow::Result<T> {
        let url = self.url.clone();
        weir_host::netns::run_in(&self.netns, move || {
            let runtime = super::client::runtime()?;
            runtime.block_on(async move {
                let options = ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(10));
                let client = Client::connect([url.as_str()], Some(options))
                    .await
                    .with_context(|| format!("the cluster's store (etcd at {url})"))?;
                work(client).await
            })
        })?
        .with_context(|| format!("the cluster's store (etcd at {})", self.url))
    }

    /// Everything under `prefix` (within `weir/state/v1/`), and the revision read at.
    pub fn read(&self, prefix: &str) -> anyhow::Result<Snapshot> {
        let prefix = prefix.to_string();
        self.with_client(move |mut client| {
            Box::pin(async move {
                let reply = client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())).await?;
                let objects = reply
                    .kvs()
                    .iter()
                    .filter_map(|kv| Some((kv.key_str().ok()?.to_string(), kv.value_str().ok()?.to_string())))
                    .collect();
                Ok(Snapshot { revision: reply.header().map_or(0, |h| h.revision()), objects })
            })
        })
    }

    /// Commits `puts` (key, value) in one transaction, on the condition that
    /// nothing under `weir/state/v1/` changed after `read_at`: the documents
    /// were checked against the store as it was then. Ok(None) when another
    /// writer came first (read again and retry); Ok(Some(revision)) when committed.
    pub fn commit_puts(&self, read_at: i64, puts: Vec<(String, String)>) -> anyhow::Result<Option<i64>> {
        self.with_client(move |mut client| {
            Box::pin(async move {
                let txn = Txn::new()
                    .when([Compare::mod_revision(weir_store::PREFIX, CompareOp::Less, read_at + 1).with_prefix()])
                    .and_then(puts.into_iter().map(|(k, v)| TxnOp::put(k, v, None)).collect::<Vec<_>>());
                let reply = client.txn(txn).await?;
                Ok(reply.succeeded().then(|| reply.header().map_or(0, |h| h.revision())))
            })
        })
    }

    /// Puts every key of `before` back as it was (None: deleted), in one
    /// transaction, on the condition that none changed after `revision`
    /// (the commit being undone). The revision of the restore, or None.
    pub fn restore(&self, revision: i64, before: Vec<(String, Option<String>)>) -> anyhow::Result<Option<i64>> {
        self.with_client(move |mut client| {
            Box::pin(async move {
                let unchanged: Vec<Compare> =
                    before.iter().map(|(k, _)| Compare::mod_revision(k.as_str(), CompareOp::Equal, revision)).collect();
                let ops: Vec<TxnOp> = before
                    .into_iter()
                    .map(|(k, v)| match v {
                        Some(v) => TxnOp::put(k, v, None),
                        None => TxnOp::delete(k, None::<DeleteOptions>),
                    })
                    .collect();
                let reply = client.txn(Txn::new().when(unchanged).and_then(ops)).await?;
                Ok(reply.succeeded().then(|| reply.header().map_or(0, |h| h.revision())))
            })
        })
    }

    /// Deletes every key of `objects` in one transaction, or none: Err names
    /// those the store does not hold (unless `ignore_not_found`, which deletes
    /// the others). The revision of the delete.
    pub fn delete(&self, objects: &[ObjectRef], ignore_not_found: bool) -> anyhow::Result<(i64, Vec<ObjectRef>)> {
        for _ in 0..MAX_ATTEMPTS {
            let snapshot = self.read(weir_store::PREFIX)?;
            let (present, missing): (Vec<&ObjectRef>, Vec<&ObjectRef>) =
                objects.iter().partition(|o| snapshot.objects.contains_key(&o.key()));
            if !missing.is_empty() && !ignore_not_found {
                return Ok((snapshot.revision, missing.into_iter().cloned().collect()));
            }
            let keys: Vec<String> = present.iter().map(|o| o.key()).collect();
            let read_at = snapshot.revision;
            let committed = self.with_client(move |mut client| {
                Box::pin(async move {
                    let txn = Txn::new()
                        .when([Compare::mod_revision(weir_store::PREFIX, CompareOp::Less, read_at + 1).with_prefix()])
                        .and_then(
                            keys.into_iter().map(|k| TxnOp::delete(k, None::<DeleteOptions>)).collect::<Vec<_>>(),
                        );
                    let reply = client.txn(txn).await?;
                    let deleted: i64 = reply
                        .op_responses()
                        .iter()
                        .map(|r| match r {
                            TxnOpResponse::Delete(d) => d.deleted(),
                            _ => 0,
                        })
                        .sum();
                    Ok(reply.succeeded().then(|| (reply.header().map_or(0, |h| h.revision()), deleted)))
                })
            })?;
            if let Some((revision, _)) = committed {
                return Ok((revision, missing.into_iter().cloned().collect()));
            }
        }
        anyhow::bail!("the cluster's store changed under every one of {MAX_ATTEMPTS} attempts to delete; try again")
    }
}

/// How many times `weir apply` reads, checks and commits before it gives up
/// on a store that other writers keep changing.
pub const APPLY_ATTEMPTS: usize = MAX_ATTEMPTS;

fn now_unix_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// The Services and EndpointSlices of this change checked with those the
/// store holds already, as the API server checks a new object against the
/// cluster (a cluster IP or node port taken, a slice's service).
fn check_services(
    snapshot: &Snapshot,
    change: &[(ObjectRef, String, String)],
    plan: Option<&weir_lab::LabPlan>,
) -> anyhow::Result<()> {
    use weir_store::Kind;
    let is_service = |kind: Kind| matches!(kind, Kind::Service | Kind::EndpointSlice);
    if !change.iter().any(|(o, _, _)| is_service(o.kind)) {
        return Ok(());
    }
    let replaced: std::collections::BTreeSet<String> = change.iter().map(|(o, _, _)| o.key()).collect();
    let mut objects = Vec::new();
    let mut changed_services = std::collections::BTreeSet::new();
    for (key, value) in &snapshot.objects {
        let Some(object) = ObjectRef::parse_key(key).filter(|o| is_service(o.kind) && !replaced.contains(key)) else {
            continue;
        };
        let stored = weir_store::Stored::decode(key, value.as_bytes())?;
        for doc in weir_spec::split_documents(&stored.yaml).map_err(|e| anyhow::anyhow!("{key}: {e}"))? {
            objects.push(
                weir_service::table::parse_object(&doc.api_version, &doc.kind, &doc.text)
                    .map_err(|e| anyhow::anyhow!("{object} in the store: {e}"))?,
            );
        }
    }
    for (object, text, position) in change.iter().filter(|(o, _, _)| is_service(o.kind)) {
        let parsed = weir_service::table::parse_object(
            if object.kind == Kind::Service { "v1" } else { "discovery.k8s.io/v1" },
            object.kind.name(),
            text,
        )
        .map_err(|e| anyhow::anyhow!("{position}: {e}"))?;
        if let weir_service::Object::Service(_) = &parsed {
            changed_services.insert(parsed.key());
        }
        objects.push(parsed);
    }
    let services: Vec<weir_service::ObjectKey> = objects
        .iter()
        .filter(|o| matches!(o, weir_service::Object::Service(_)))
        .map(weir_service::Object::key)
        .collect();
    let (cluster, _) = weir_service::ClusterState::default()
        .apply(objects)
        .map_err(|e| anyhow::anyhow!("{e} (checked with the Services and EndpointSlices the cluster's store holds)"))?;
    // A frontend (address, port, protocol) belongs to one service port on
    // every node, as each agent checks before it writes its tables.
    for node in plan.map(|p| p.nodes.as_slice()).unwrap_or_default() {
        let context = weir_service::NodeContext {
            name: node.name.clone(),
            addresses: [Some(node.address.into()), node.address6.map(Into::into)].into_iter().flatten().collect(),
        };
        let mut owners: BTreeMap<(std::net::IpAddr, u16, String), (weir_service::table::ServicePortRef, bool)> =
            BTreeMap::new();
        for key in &services {
            let changed = changed_services.contains(key);
            for frontend in cluster.service_frontends(&context, key) {
                let slot = (frontend.address, frontend.port, format!("{:?}", frontend.service.protocol));
                match owners.get(&slot) {
                    Some((owner, owner_changed)) if *owner != frontend.service && (changed || *owner_changed) => {
                        let (mine, theirs) =
                            if changed { (&frontend.service, owner) } else { (owner, &frontend.service) };
                        anyhow::bail!(
                            "Service {mine}: {}:{}/{} already belongs to {theirs} (in the cluster's store)",
                            frontend.address,
                            frontend.port,
                            slot.2.to_uppercase()
                        );
                    }
                    Some(_) => {}
                    None => {
                        owners.insert(slot, (frontend.service.clone(), changed));
                    }
                }
            }
        }
    }
    Ok(())
}

/// `weir apply` on a lab with a store: every document (already checked on
/// its own) checked with the store's, then all committed in one
/// transaction; then every agent waited for until it holds the revision.
pub fn apply(
    store: &ClusterStore,
    target: &super::target::AgentTarget,
    change: &[(ObjectRef, String, String)],
) -> anyhow::Result<std::process::ExitCode> {
    let plan = target.lab_plan()?;
    for _ in 0..APPLY_ATTEMPTS {
        let snapshot = store.read(weir_store::PREFIX)?;
        check_services(&snapshot, change, plan.as_ref())?;
        let now = now_unix_ns();
        let (mut created, mut configured, mut unchanged, mut puts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (object, text, _) in change {
            let key = object.key();
            let before = snapshot.objects.get(&key).map(|v| weir_store::Stored::decode(&key, v.as_bytes()));
            match before {
                Some(Ok(old)) if old.yaml == *text => {
                    unchanged.push(object.to_string());
                    continue;
                }
                Some(_) => configured.push(object.to_string()),
                None => created.push(object.to_string()),
            }
            puts.push((key, weir_store::Stored { yaml: text.clone(), applied_unix_ns: now }.encode()));
        }
        let summary = [("created", &created), ("configured", &configured), ("unchanged", &unchanged)]
            .iter()
            .filter(|(_, list)| !list.is_empty())
            .map(|(verb, list)| format!("{verb} {}", list.join(", ")))
            .collect::<Vec<_>>()
            .join("; ");
        if puts.is_empty() {
            println!("{summary} (the store is at revision {})", snapshot.revision);
            return Ok(std::process::ExitCode::SUCCESS);
        }
        let keys: Vec<String> = puts.iter().map(|(k, _)| k.clone()).collect();
        if let Some(revision) = store.commit_puts(snapshot.revision, puts)? {
            let committed = now_unix_ns();
            println!("{summary} (one transaction: revision {revision})");
            let waited = wait_for_agents(target, revision, committed, &keys)?;
            if waited.refused.is_empty() {
                return Ok(waited.exit_code());
            }
            // A node refused part of the file: take the whole file back out.
            let before: Vec<(String, Option<String>)> =
                keys.iter().map(|k| (k.clone(), snapshot.objects.get(k).cloned())).collect();
            match store.restore(revision, before)? {
                Some(restored) => {
                    eprintln!(
                        "rolled back: the store holds what it held before the apply again (revision {restored}); nothing of the file stays"
                    );
                    wait_for_agents(target, restored, now_unix_ns(), &keys)?;
                }
                None => eprintln!(
                    "not rolled back: the refused objects changed in the store since this apply; fix them with another apply or delete"
                ),
            }
            return Ok(std::process::ExitCode::FAILURE);
        }
    }
    anyhow::bail!("the cluster's store changed under every one of {APPLY_ATTEMPTS} attempts to apply; try again")
}

/// `weir delete` on a lab with a store: one transaction.
pub fn delete(
    store: &ClusterStore,
    target: &super::target::AgentTarget,
    objects: &[ObjectRef],
    ignore_not_found: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let (revision, missing) = store.delete(objects, ignore_not_found)?;
    if !missing.is_empty() && !ignore_not_found {
        for object in &missing {
            eprintln!(
                "Error from server (NotFound): {} {:?} not found{} (nothing was deleted)",
                object.kind.api_resource(),
                object.name,
                object.namespace.as_ref().map(|n| format!(" in namespace {n}")).unwrap_or_default()
            );
        }
        return Ok(std::process::ExitCode::FAILURE);
    }
    let deleted: Vec<String> = objects.iter().filter(|o| !missing.contains(o)).map(ToString::to_string).collect();
    if deleted.is_empty() {
        println!("nothing to delete");
        return Ok(std::process::ExitCode::SUCCESS);
    }
    println!("deleted {} (one transaction: revision {revision})", deleted.join(", "));
    let keys: Vec<String> = objects.iter().map(ObjectRef::key).collect();
    Ok(wait_for_agents(target, revision, now_unix_ns(), &keys)?.exit_code())
}

/// What waiting for the agents found.
#[derive(Debug, Default)]
struct Waited {
    /// Some agent did not reach the revision (it catches up later).
    behind: bool,
    /// Keys of the change some node refused.
    refused: Vec<String>,
}

impl Waited {
    fn exit_code(&self) -> std::process::ExitCode {
        if self.behind || !self.refused.is_empty() {
            std::process::ExitCode::FAILURE
        } else {
            std::process::ExitCode::SUCCESS
        }
    }
}

/// How long `weir apply` waits for every agent to hold what it committed.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an agent may not answer at all before it is reported as not running.
const AGENT_AWAY: Duration = Duration::from_secs(2);

/// Waits until every agent holds `revision`, and reports each: when its
/// last map write for the change came after the commit, or which objects of
/// `keys` it refused. An agent that does not get there in time is named: it
/// catches up when it can (the store holds the change).
fn wait_for_agents(
    target: &super::target::AgentTarget,
    revision: i64,
    committed_unix_ns: u64,
    keys: &[String],
) -> anyhow::Result<Waited> {
    use weir_proto::store::v1 as pb;
    let rt = super::client::runtime()?;
    let mut waited = Waited::default();
    for (node, socket) in target.agents()? {
        let reached = rt.block_on(async {
            let deadline = tokio::time::Instant::now() + CONVERGE_TIMEOUT;
            let mut last: Result<pb::StatusResponse, String> = Err("no answer yet".into());
            let mut answered = tokio::time::Instant::now();
            while tokio::time::Instant::now() < deadline {
                let asked = async {
                    let mut client = super::client::connect::<super::client::StoreSync>(socket.clone())
                        .await
                        .map_err(|e| format!("{e:#}"))?;
                    client
                        .status(pb::StatusRequest {})
                        .await
                        .map(|r| r.into_inner())
                        .map_err(|s| s.message().to_string())
                };
                last = asked.await;
                if last.as_ref().is_ok_and(|s| s.revision >= revision) {
                    break;
                }
                if last.is_ok() {
                    answered = tokio::time::Instant::now();
                } else if answered.elapsed() > AGENT_AWAY {
                    // No agent answers: it catches up from the store when one runs.
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            last
        });
        match reached {
            Ok(status) if status.revision >= revision => {
                let refused: Vec<(&String, &String)> =
                    keys.iter().filter_map(|k| status.refused.get(k).map(|why| (k, why))).collect();
                if refused.is_empty() {
                    let after = status.applied_unix_ns.saturating_sub(committed_unix_ns) as f64 / 1e6;
                    println!("{node}: holds revision {} (applied {after:.3} ms after the commit)", status.revision);
                }
                for (key, why) in refused {
                    eprintln!("{node}: refused {key}: {why}");
                    waited.refused.push(key.clone());
                }
            }
            Ok(status) => {
                waited.behind = true;
                let why = if status.last_error.is_empty() { String::new() } else { format!(": {}", status.last_error) };
                eprintln!(
                    "{node}: still at revision {} after {CONVERGE_TIMEOUT:?}{why}; it applies revision {revision} when it reaches the store",
                    status.revision
                );
            }
            Err(why) => {
                waited.behind = true;
                eprintln!("{node}: {why}; it applies revision {revision} from the store when its agent runs");
            }
        }
    }
    Ok(waited)
}
