//! Network policy on this node: the cluster's pods (from the pods file,
//! re-read when it changes), their identities (etcd or the state dir), the
//! applied policies (one file each in the state dir), and what the kernel
//! holds — the endpoint table, the ipcache and one policy map per local pod,
//! swapped whole. Flow events from the kernel are named (pods, labels,
//! identities, rules) and fanned out to `weir observe` streams.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use tokio::sync::broadcast;
use weir_bpf::api::{drop_reason, flow_verdict, policy_match};
use weir_bpf::datapath::PinLayout;
use weir_bpf::pods::PodEndpoints;
use weir_bpf::policy::{FlowEvent, FlowReader, PolicyMaps};
use weir_policy::compile::{Compiled, EndpointPolicy};
use weir_policy::identity::{reserved_name, IdentityLabels};
use weir_policy::ipcache_index::IpcacheIndex;
use weir_policy::{CidrIdentities, Cluster, Decision, Direction, Kind, Policy, PolicyKey};
use weir_proto::agent::v1 as pb;
use weir_spec::SpecError;

use crate::cni_endpoints::CniEndpoints;
use crate::flow_ring::{FlowRing, Window};
use crate::identities::{Allocator, IdentityError};
use crate::kvstore::Kvstore;
use crate::pods::{self, PodRecord};

mod cni;
mod explain;
mod flows;
mod remembered;
mod tls;
mod veths;

pub use remembered::connect_cluster;
pub use tls::TlsSetup;

pub(crate) use flows::code_name;
use flows::STREAM_BUFFER;
pub use flows::{wanted, ChaosName, ChaosNames, FlowShared, NamedEvent, Naming, RECENT_FLOWS};

#[derive(Debug, thiserror::Error)]
pub enum NetPolicyError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("no such policy: {0}")]
    NotFound(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("kernel maps: {0}")]
    Bpf(#[from] weir_bpf::BpfError),
    #[error("{0}")]
    Pods(String),
    #[error(transparent)]
    CniEndpoint(#[from] crate::cni_endpoints::CniEndpointError),
    #[error("{path}: {source}")]
    Record {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct NetPolicyOptions {
    pub node: String,
    /// This node's cluster's id in a mesh (0 outside one): identities carry it.
    pub cluster_id: u8,
    /// In a mesh: this node's cluster's name (every pod's identity labels
    /// carry it), and the other clusters' pods as read from their stores.
    pub mesh: Option<(String, crate::clustermesh::SharedRemotePods)>,
    pub state_dir: PathBuf,
    pub pods_file: PathBuf,
    /// Every node of the cluster, with its address.
    pub nodes: BTreeMap<String, Ipv4Addr>,
    /// Dual-stack: every node's IPv6 address.
    pub nodes6: BTreeMap<String, Ipv6Addr>,
    /// etcd client URLs; empty: identities are allocated in the state dir.
    pub etcd: Vec<String>,
    /// The node datapath's interfaces at start besides the uplinks: the
    /// pods' veths and the overlay device (generic XDP).
    pub pod_interfaces: Vec<String>,
    /// The veths of the CNI endpoints recorded when the agent started, which
    /// its first attach served with `pod_interfaces`.
    pub cni_veths_at_start: Vec<String>,
    /// What the node datapath is attached to, shared with status.
    pub attachments: Attachments,
    /// Hubble's metric families to count flows into (`--hubble-metrics`).
    pub hubble_metrics: Option<crate::hubble::metrics::HubbleMetrics>,
    /// Whether the pod path reports pods' DNS and HTTP/1.x messages as L7 flows.
    pub l7_flows: bool,
    /// Flows kept for GetFlows and `--last`.
    pub flow_ring_capacity: usize,
    /// OpenSSL's probes for HTTPS flows (with `l7_flows`); None: off.
    pub tls: Option<TlsSetup>,
}

/// The node datapath's attachments, kept current as pods come and go.
pub type Attachments = Arc<std::sync::Mutex<Vec<weir_bpf::datapath::Attachment>>>;

/// What flow events are named with; replaced whole after every change.
#[derive(Debug, Default)]
pub(crate) struct FlowContext {
    /// Every pod by each of its addresses.
    pub(crate) pods: BTreeMap<IpAddr, PodRecord>,
    pub(crate) rules: Vec<weir_policy::compile::RuleRef>,
    /// Hubble's policy match type of each rule.
    pub(crate) rule_matches: Vec<&'static str>,
    /// In a mesh: this cluster's name, and each remote pod's cluster by address.
    pub(crate) cluster: Option<String>,
    pub(crate) remote_clusters: BTreeMap<IpAddr, String>,
    /// The ipcache as compiled: identities of addresses the datapath did
    /// not number itself (L7 events' peers, OpenSSL's flows).
    pub(crate) ipcache: Arc<IpcacheIndex>,
}

impl FlowContext {
    /// The identity of `ip` by the longest ipcache prefix holding it;
    /// reserved world when none does.
    pub(crate) fn identity_of(&self, ip: IpAddr) -> u32 {
        self.ipcache.identity_of(ip)
    }
}

/// How long a starting agent waits for the other nodes' pods.
const CLUSTER_SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Recorded {
    policy: Policy,
    yaml: String,
}

#[derive(Debug)]
pub struct NetPolicyState {
    options: NetPolicyOptions,
    allocator: Allocator,
    maps: PolicyMaps,
    table: PodEndpoints,
    policies: BTreeMap<PolicyKey, Recorded>,
    cidrs: CidrIdentities,
    cluster: Cluster,
    records: Vec<PodRecord>,
    /// Other clusters' pods (in a mesh), and the version of them read.
    mesh_records: Vec<PodRecord>,
    /// The cluster of each of `mesh_records`, by address.
    mesh_clusters: BTreeMap<IpAddr, String>,
    mesh_version: u64,
    compiled: Compiled,
    /// Each local pod's policy as installed, and its revision.
    installed: BTreeMap<Ipv4Addr, (EndpointPolicy, u32)>,
    revision: u32,
    pods_stamp: Option<SystemTime>,
    /// A cluster of several nodes: where pods are shared (etcd), the
    /// store's revision last read, and what this node last published.
    kvstore: Option<Kvstore>,
    store_revision: i64,
    published: Option<String>,
    /// etcd was away at start: the other nodes' pods as last read from it,
    /// until it is reached (see [`NetPolicyState::etcd_away`]).
    remembered: Option<Vec<PodRecord>>,
    /// What was last written to the state dir's memory of the cluster.
    memory_written: Option<String>,
    /// The digest of the pods file the cluster view last read comes from,
    /// when every node's pods in it do (they are published from files of
    /// that digest); and the digest last recorded as applied.
    pods_digest: Option<String>,
    applied_digest: Option<String>,
    /// Interfaces the node datapath serves besides the uplinks, with the
    /// index each had when it was attached: pods' veths, and others given
    /// at start (the overlay device).
    served: BTreeMap<String, u32>,
    /// Local pods' veths and MACs by veth name, as last read.
    veths: BTreeMap<String, weir_bpf::pods::Endpoint>,
    /// Containers the CNI plugin handed over: pods of this node.
    cni: CniEndpoints,
    pins: PinLayout,
    shared: Arc<FlowShared>,
    _reader: FlowReader,
    tls: tls::TlsFlows,
}

/// What a change did, for the reply.
#[derive(Debug, Default)]
pub struct Change {
    pub created: Vec<String>,
    pub configured: Vec<String>,
    pub unchanged: Vec<String>,
    pub deleted: Vec<String>,
    pub endpoints_updated: u32,
    pub apply_ns: u64,
}

fn record_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("netpolicy")
}

fn record_file(state_dir: &Path, key: &PolicyKey) -> PathBuf {
    record_dir(state_dir).join(format!("{:?}.{}.{}.yaml", key.kind, key.namespace, key.name))
}

pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::NetworkPolicy => "NetworkPolicy",
        Kind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
    }
}

fn pod_labels(record: &PodRecord, options: &NetPolicyOptions) -> IdentityLabels {
    crate::clustermesh::labels_in_cluster(record, options.mesh.as_ref().map(|(cluster, _)| cluster.as_str()))
}

impl NetPolicyState {
    /// Restores the recorded policies and installs everything; call on a
    /// blocking thread of the agent's runtime.
    pub fn open(pins: &PinLayout, options: NetPolicyOptions) -> Result<Self, NetPolicyError> {
        let (allocator, kvstore, remembered) = if options.etcd.is_empty() {
            (Allocator::local(&options.state_dir)?, None, None)
        } else {
            match connect_cluster(&options.etcd, &options.node, options.cluster_id) {
                Ok((allocator, kvstore)) => (allocator, Some(kvstore), None),
                // etcd away: enforce what this node last knew of the cluster.
                Err(e) => {
                    let Some(memory) = remembered::load(&options.state_dir) else { return Err(e.into()) };
                    tracing::warn!(error = %e, remote_pods = memory.remote_pods.len(), identities = memory.numbers.len(), "etcd is away: starting from the cluster as last read from it");
                    let allocator = Allocator::Remembered { endpoints: options.etcd.clone(), numbers: memory.numbers };
                    (allocator, None, Some(memory.remote_pods))
                }
            }
        };
        let (tx, _) = broadcast::channel(STREAM_BUFFER);
        let shared = Arc::new(FlowShared {
            node: options.node.clone(),
            flow_node: options
                .mesh
                .as_ref()
                .map_or_else(|| options.node.clone(), |(c, _)| format!("{c}/{}", options.node)),
            context: RwLock::new(Arc::new(FlowContext::default())),
            tx,
            read: [AtomicU64::new(0), AtomicU64::new(0)],
            slow_stream: AtomicU64::new(0),
            l7_unparsed: AtomicU64::new(0),
            tls_elsewhere: AtomicU64::new(0),
            tls_not_pods: AtomicU64::new(0),
            http_requests: std::sync::Mutex::default(),
            delivering: std::sync::Mutex::default(),
            processes: crate::hubble::process::ProcessNames::default(),
            services: RwLock::default(),
            recent: std::sync::Mutex::new(FlowRing::new(options.flow_ring_capacity)),
            followers: broadcast::channel(STREAM_BUFFER).0,
            chaos_names: ChaosNames::default(),
            hubble_metrics: options.hubble_metrics.clone().map(std::sync::Mutex::new),
        });
        let reader_shared = shared.clone();
        let reader = FlowReader::start(pins, move |events| reader_shared.on_events(events))?;
        let tls = tls::start(&shared, options.tls.as_ref(), options.l7_flows);
        let mut policies = BTreeMap::new();
        let dir = record_dir(&options.state_dir);
        std::fs::create_dir_all(&dir).map_err(|source| NetPolicyError::Record { path: dir.clone(), source })?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|source| NetPolicyError::Record { path: dir.clone(), source })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for file in files {
            let yaml = std::fs::read_to_string(&file)
                .map_err(|source| NetPolicyError::Record { path: file.clone(), source })?;
            let doc = weir_spec::split_documents(&yaml)?.into_iter().next();
            if let Some(doc) = doc {
                let policy = weir_policy::parse(&doc.kind, &doc.text)?;
                policies.insert(policy.key.clone(), Recorded { policy, yaml: doc.text });
            }
        }
        // What the agent's first attach served (see `run`): the pods' veths
        // it was told of, and the veths of the CNI endpoints it recorded.
        let served = veths::by_index(options.pod_interfaces.iter().chain(&options.cni_veths_at_start));
        let table = PodEndpoints::open(pins)?;
        let cni = CniEndpoints::open(&options.state_dir)?;
        // Above every revision the kernel still holds from an earlier run, so
        // its conntrack entries are judged again under this run's policy.
        let revision = table.max_policy_revision();
        let maps = PolicyMaps::open(pins)?;
        maps.set_l7_enabled(options.l7_flows)?;
        let mut state = Self {
            options,
            allocator,
            maps,
            table,
            policies,
            cidrs: CidrIdentities::default(),
            cluster: Cluster::default(),
            records: Vec::new(),
            mesh_records: Vec::new(),
            mesh_clusters: BTreeMap::new(),
            mesh_version: 0,
            compiled: Compiled::default(),
            installed: BTreeMap::new(),
            revision,
            pods_stamp: None,
            kvstore,
            store_revision: 0,
            published: None,
            remembered,
            memory_written: None,
            pods_digest: None,
            applied_digest: None,
            served,
            veths: BTreeMap::new(),
            cni,
            pins: pins.clone(),
            shared,
            _reader: reader,
            tls,
        };
        state.reload_pods()?;
        state.await_cluster()?;
        state.install()?;
        state.record_applied();
        Ok(state)
    }

    /// A cluster of several nodes: waits (a while) until every node has
    /// published its pods, so the first policy maps know every peer.
    fn await_cluster(&mut self) -> Result<(), NetPolicyError> {
        let Some(kv) = self.kvstore.as_mut() else { return Ok(()) };
        let start = Instant::now();
        loop {
            let published = kv.nodes()?;
            let missing: Vec<&String> = self.options.nodes.keys().filter(|n| !published.contains(n)).collect();
            if missing.is_empty() {
                break;
            }
            if start.elapsed() > CLUSTER_SYNC_WAIT {
                tracing::warn!(?missing, "nodes have not published their pods yet; going on, they will follow");
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.reload_pods()
    }

    pub fn shared(&self) -> Arc<FlowShared> {
        self.shared.clone()
    }

    pub fn allocator(&self) -> String {
        self.allocator.describe()
    }

    fn stamp(&self) -> Option<SystemTime> {
        std::fs::metadata(&self.options.pods_file).and_then(|m| m.modified()).ok()
    }

    /// Reads the pods file and gives every label set its identity.
    fn reload_pods(&mut self) -> Result<(), NetPolicyError> {
        let stamp = self.stamp();
        let (mut records, digest) = pods::read_with_digest(&self.options.pods_file).map_err(NetPolicyError::Pods)?;
        records.extend(self.cni.records().cloned());
        let mut whole_cluster = true;
        if let Some(kv) = self.kvstore.as_mut() {
            // This node's pods come from its pods file and are published;
            // every other node's come from etcd. The revision is read first:
            // whatever is published after it moves it, and is read next time.
            let revision = kv.revision()?;
            records.retain(|r| r.node == self.options.node);
            let text = format!("{digest} {}", serde_json::to_string(&records).unwrap_or_default());
            if self.published.as_ref() != Some(&text) {
                kv.publish(&records, &digest)?;
                self.published = Some(text);
            }
            // Read before the pods: those read next are at least as new.
            let sources = kv.node_sources()?;
            whole_cluster = self.options.nodes.keys().all(|node| sources.get(node) == Some(&digest));
            records.extend(kv.remote_pods()?);
            self.store_revision = revision;
        } else if let Some(remote) = &self.remembered {
            records.retain(|r| r.node == self.options.node);
            records.extend(remote.iter().cloned());
            whole_cluster = false;
        }
        let mut identities = BTreeMap::new();
        let mut cluster_pods = Vec::new();
        for r in &records {
            let labels = pod_labels(r, &self.options);
            if !identities.contains_key(&labels) {
                let id = self.allocator.allocate(&labels)?;
                identities.insert(labels.clone(), id);
            }
            cluster_pods.push(weir_policy::Pod {
                name: r.name.clone(),
                labels,
                ip: r.ip,
                ipv6: r.ipv6,
                node: r.node.clone(),
                ports: r.ports.clone(),
            });
        }
        // Other clusters' pods: their numbers come from their own stores.
        self.mesh_records.clear();
        self.mesh_clusters.clear();
        if let Some((_, remote)) = &self.options.mesh {
            if let Ok(remote) = remote.lock() {
                self.mesh_version = remote.version;
                for pod in remote.by_cluster.values().flatten() {
                    let labels = crate::clustermesh::labels_in_cluster(&pod.record, Some(&pod.cluster));
                    identities.insert(labels.clone(), pod.identity);
                    cluster_pods.push(weir_policy::Pod {
                        name: pod.record.name.clone(),
                        labels,
                        ip: pod.record.ip,
                        ipv6: None,
                        node: format!("{}/{}", pod.cluster, pod.record.node),
                        ports: pod.record.ports.clone(),
                    });
                    self.mesh_records.push(pod.record.clone());
                    self.mesh_clusters.insert(IpAddr::V4(pod.record.ip), pod.cluster.clone());
                }
            }
        }
        self.cluster = Cluster {
            pods: cluster_pods,
            identities,
            host_addresses: pods::local_addresses(),
            nodes: self.options.nodes.clone(),
            node_addresses6: self
                .options
                .nodes6
                .iter()
                .filter(|(name, _)| **name != self.options.node)
                .map(|(_, a)| *a)
                .collect(),
            local_node: self.options.node.clone(),
        };
        self.records = records;
        self.remember_cluster();
        self.pods_digest = whole_cluster.then_some(digest);
        // Only now: a failure above (etcd away) is retried on the next look.
        self.pods_stamp = stamp;
        Ok(())
    }

    /// Says, in the state directory, which pods file this node's kernel
    /// tables now follow on every node, once they all do (`weir lab up`
    /// waits for it).
    fn record_applied(&mut self) {
        let Some(digest) = self.pods_digest.clone() else { return };
        if self.applied_digest.as_ref() == Some(&digest) {
            return;
        }
        match weir_host::pods_file::record_applied(&self.options.state_dir, &digest) {
            Ok(()) => self.applied_digest = Some(digest),
            Err(e) => tracing::warn!(error = %e, "recording the pods file applied"),
        }
    }

    /// Re-reads the pods file when it changed (pods created or deleted) and
    /// brings identities, the ipcache, the endpoint table and policy maps
    /// up to date. Returns whether anything was read.
    pub fn refresh(&mut self) -> Result<bool, NetPolicyError> {
        let store_moved = match self.kvstore.as_mut() {
            Some(kv) => kv.revision()? != self.store_revision,
            None => false,
        };
        let mesh_moved = self
            .options
            .mesh
            .as_ref()
            .is_some_and(|(_, remote)| remote.lock().is_ok_and(|r| r.version != self.mesh_version));
        let store_moved = store_moved || mesh_moved;
        if self.stamp() == self.pods_stamp && !store_moved {
            return Ok(false);
        }
        self.reload_pods()?;
        self.install()?;
        self.record_applied();
        Ok(true)
    }

    /// Registers a container from the CNI plugin as a pod of this node and
    /// installs everything for it (identity, ipcache, its policy, the
    /// datapath on its veth, the endpoint table); returns its identity. On
    /// failure the endpoint is forgotten again and the kernel put back.
    pub fn add_cni_endpoint(&mut self, record: PodRecord) -> Result<u32, NetPolicyError> {
        let veth = record.host_interface.clone();
        // One address, one pod: a second pod on it would take its identity.
        if let Some(holder) = self.records.iter().find(|r| r.ip == record.ip && r.host_interface != veth) {
            return Err(crate::cni_endpoints::CniEndpointError::Invalid(format!(
                "ip {}: already the address of pod {}/{} (on {})",
                record.ip, holder.namespace, holder.name, holder.host_interface
            ))
            .into());
        }
        if let Some(ipv6) = record.ipv6 {
            if let Some(holder) = self.records.iter().find(|r| r.ipv6 == Some(ipv6) && r.host_interface != veth) {
                return Err(crate::cni_endpoints::CniEndpointError::Invalid(format!(
                    "ipv6 {ipv6}: already the address of pod {}/{} (on {})",
                    holder.namespace, holder.name, holder.host_interface
                ))
                .into());
            }
        }
        let labels = pod_labels(&record, &self.options);
        let replaced = self.cni.insert(record)?;
        let installed = self.reload_pods().and_then(|()| self.install());
        if let Err(e) = installed {
            let _ = match replaced {
                Some(previous) => self.cni.insert(previous).map(|_| ()),
                None => self.cni.remove(&veth).map(|_| ()),
            };
            self.installed.clear();
            let _ = self.reload_pods().and_then(|()| self.install());
            return Err(e);
        }
        Ok(self.cluster.identities.get(&labels).copied().unwrap_or_default())
    }

    /// Forgets a CNI endpoint and takes it out of the kernel; returns
    /// whether it was known.
    pub fn delete_cni_endpoint(&mut self, host_interface: &str) -> Result<bool, NetPolicyError> {
        if self.cni.remove(host_interface)?.is_none() {
            return Ok(false);
        }
        self.reload_pods()?;
        self.install()?;
        Ok(true)
    }

    fn policy_list(&self) -> Vec<Policy> {
        self.policies.values().map(|r| r.policy.clone()).collect()
    }

    /// Compiles and writes everything: the ipcache first (new entries, then
    /// stale ones removed), the endpoint table, then each local pod's policy
    /// map whose entries changed, each swapped in with one update.
    fn install(&mut self) -> Result<u32, NetPolicyError> {
        let policies = self.policy_list();
        let compiled = weir_policy::compile(&policies, &self.cluster, &mut self.cidrs);
        // Flows name endpoints the datapath may already know: the pods are
        // named before the maps take them. Rules are named after (below):
        // a flow carries the rule index of the maps it went through.
        let pods = pods_by_address(&[self.records.as_slice(), self.mesh_records.as_slice()].concat());
        let (cluster, remote_clusters) =
            (self.options.mesh.as_ref().map(|(cluster, _)| cluster.clone()), self.mesh_clusters.clone());
        let ipcache = Arc::new(IpcacheIndex::new(compiled.ipcache.iter().map(|e| (e.cidr, e.identity))));
        let naming = move |rules, rule_matches| FlowContext {
            ipcache: ipcache.clone(),
            pods: pods.clone(),
            rules,
            rule_matches,
            cluster: cluster.clone(),
            remote_clusters: remote_clusters.clone(),
        };
        if let Ok(mut ctx) = self.shared.context.write() {
            *ctx = Arc::new(naming(ctx.rules.clone(), ctx.rule_matches.clone()));
        }
        self.maps.set_ipcache(&compiled.ipcache)?;
        // A pod's veth and MACs are read once (two `ip` runs), not at
        // every policy change; a veth that is gone, or now another pod's,
        // is read afresh.
        let mut endpoints = Vec::new();
        for record in &self.records {
            let index = pods::ifindex(&record.host_interface);
            let cached = self
                .veths
                .get(&record.host_interface)
                .filter(|ep| ep.ifindex == index && ep.address == record.ip && ep.address6 == record.ipv6);
            let ep = match cached {
                Some(ep) => Some(ep.clone()),
                None => pods::local_endpoint(record).map_err(NetPolicyError::Pods)?,
            };
            if let Some(ep) = ep {
                self.veths.insert(record.host_interface.clone(), ep.clone());
                endpoints.push(ep);
            }
        }
        self.veths.retain(|name, _| self.records.iter().any(|r| &r.host_interface == name));
        let local: Vec<Ipv4Addr> = endpoints.iter().map(|e| e.address).collect();
        // A new pod's veth runs the datapath (its egress policy) before the
        // endpoint table makes it reachable.
        let veths: Vec<String> =
            self.records.iter().filter(|r| local.contains(&r.ip)).map(|r| r.host_interface.clone()).collect();
        let veth_change = self.veth_change(&veths);
        self.revision = self.revision.wrapping_add(1);
        let changed: Vec<(Ipv4Addr, &EndpointPolicy)> = local
            .iter()
            .filter_map(|ip| compiled.endpoints.get(ip).map(|policy| (*ip, policy)))
            .filter(|(ip, policy)| self.installed.get(ip).map(|(p, _)| p) != Some(*policy))
            .collect();
        // Pods that came get the datapath on their veths (only theirs: the
        // programs pinned at start, nothing loaded again) while the policy
        // maps are written: each waits on the kernel, not on the other.
        let (served, installed) = std::thread::scope(|scope| {
            let (pins, revision) = (&self.pins, self.revision);
            let serving = veth_change
                .as_ref()
                .map(|c| scope.spawn(move || weir_bpf::datapath::serve_pod_veths(pins, &c.added, &c.removed)));
            let installed = self.maps.install_many(&changed, revision);
            (serving.map(|s| s.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))), installed)
        });
        if let (Some(change), Some(served)) = (veth_change, served) {
            self.served(change, served?);
        }
        installed?;
        let updated = changed.len() as u32;
        for (ip, policy) in changed {
            self.installed.insert(ip, (policy.clone(), self.revision));
        }
        for ep in &mut endpoints {
            let (policy, revision) = self.installed.get(&ep.address).map_or((0, 0), |(p, r)| (p.identity, *r));
            ep.identity = policy;
            ep.policy_revision = revision;
        }
        // A new pod gets its policy before it is reachable; the revisions
        // follow the maps they name.
        self.table.replace(&endpoints)?;
        self.maps.retain(&local)?;
        self.installed.retain(|ip, _| local.contains(ip));
        let context = naming(compiled.rules.clone(), crate::hubble::metrics::rule_matches(&compiled));
        if let Ok(mut ctx) = self.shared.context.write() {
            *ctx = Arc::new(context);
        }
        self.shared.hubble_pods_now(&self.records);
        self.compiled = compiled;
        Ok(updated)
    }

    fn replace_policies(
        &mut self,
        next: BTreeMap<PolicyKey, Recorded>,
        mut change: Change,
        started: Instant,
    ) -> Result<Change, NetPolicyError> {
        let previous = std::mem::replace(&mut self.policies, next);
        match self.install() {
            Ok(updated) => change.endpoints_updated = updated,
            Err(e) => {
                // Put the old set back into the kernel: nothing half-applied.
                self.policies = previous;
                self.installed.clear();
                let _ = self.install();
                return Err(e);
            }
        }
        change.apply_ns = started.elapsed().as_nanos() as u64;
        // Records follow the kernel: a crash before this re-applies the old set.
        let dir = record_dir(&self.options.state_dir);
        for key in previous.keys().filter(|k| !self.policies.contains_key(*k)) {
            let _ = std::fs::remove_file(record_file(&self.options.state_dir, key));
        }
        for (key, rec) in &self.policies {
            let file = record_file(&self.options.state_dir, key);
            if previous.get(key).map(|p| &p.yaml) != Some(&rec.yaml) {
                std::fs::write(&file, &rec.yaml)
                    .map_err(|source| NetPolicyError::Record { path: dir.clone(), source })?;
            }
        }
        Ok(change)
    }

    /// Applies every document (NetworkPolicy, CiliumNetworkPolicy), all or none.
    pub fn apply(&mut self, yaml: &str) -> Result<Change, NetPolicyError> {
        let started = Instant::now();
        let mut next = self.policies.clone();
        let mut change = Change::default();
        for doc in weir_spec::split_documents(yaml)? {
            let policy = weir_policy::parse(&doc.kind, &doc.text).map_err(|e| doc.locate(e))?;
            let name = format!("{} {}/{}", kind_name(policy.key.kind), policy.key.namespace, policy.key.name);
            match self.policies.get(&policy.key) {
                None => change.created.push(name),
                Some(old) if old.yaml == doc.text => change.unchanged.push(name),
                Some(_) => change.configured.push(name),
            }
            next.insert(policy.key.clone(), Recorded { policy, yaml: doc.text });
        }
        self.replace_policies(next, change, started)
    }

    pub fn delete(&mut self, names: &[pb::PolicyName]) -> Result<Change, NetPolicyError> {
        let started = Instant::now();
        let mut next = self.policies.clone();
        let mut change = Change::default();
        for n in names {
            let kind = match n.kind.as_str() {
                "NetworkPolicy" => Kind::NetworkPolicy,
                "CiliumNetworkPolicy" => Kind::CiliumNetworkPolicy,
                other => return Err(NetPolicyError::NotFound(format!("{other} {}/{}", n.namespace, n.name))),
            };
            let key = PolicyKey { kind, namespace: n.namespace.clone(), name: n.name.clone() };
            if next.remove(&key).is_none() {
                return Err(NetPolicyError::NotFound(format!("{} {}/{}", n.kind, n.namespace, n.name)));
            }
            change.deleted.push(format!("{} {}/{}", n.kind, n.namespace, n.name));
        }
        self.replace_policies(next, change, started)
    }

    pub fn list(&self) -> pb::PolicyListResponse {
        let policies = self
            .policies
            .values()
            .map(|r| pb::PolicyInfo {
                name: format!("{} {}/{}", kind_name(r.policy.key.kind), r.policy.key.namespace, r.policy.key.name),
                selects: self
                    .cluster
                    .pods
                    .iter()
                    .filter(|p| r.policy.selects(&p.labels))
                    .map(|p| format!("{}/{}", p.labels.namespace, p.name))
                    .collect(),
            })
            .collect();
        let endpoints = self
            .installed
            .iter()
            .map(|(ip, (ep, _))| pb::EndpointInfo {
                pod: self.pod_name(*ip).unwrap_or_default(),
                ip: ip.to_string(),
                identity: ep.identity,
                ingress_enforced: ep.ingress_enforced,
                egress_enforced: ep.egress_enforced,
                entries: ep.entries.len() as u32,
            })
            .collect();
        pb::PolicyListResponse {
            policies,
            identities: self
                .cluster
                .identities
                .iter()
                .map(|(labels, id)| pb::IdentityInfo { id: *id, labels: labels.to_string() })
                .collect(),
            ipcache: self
                .compiled
                .ipcache
                .iter()
                .map(|e| pb::IpcacheInfo {
                    cidr: e.cidr.to_string(),
                    identity: e.identity,
                    tunnel_endpoint: e.tunnel_endpoint.map(|a| a.to_string()).unwrap_or_default(),
                    address_identity: e.address_identity.unwrap_or(0),
                })
                .collect(),
            endpoints,
            allocator: self.allocator.describe(),
            revision: self.revision,
            problem: String::new(),
        }
    }

    pub fn metrics(&self) -> crate::metrics::NetPolicyMetrics {
        // Drops by reason name (those seen), and flow events lost by cause.
        let drops = self
            .maps
            .drops()
            .map(|counters| {
                drop_reason::ALL
                    .iter()
                    .filter_map(|(code, name, _)| {
                        let c = counters.get(*code as usize)?;
                        (c.packets > 0).then_some((*name, c.packets, c.bytes))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut lost = self.maps.losses().unwrap_or_default();
        lost.push(("slow_stream", self.shared.slow_stream.load(Ordering::Relaxed)));
        let (policies, identities, endpoints) = self.summary();
        let hubble = self.shared.hubble_metrics_text(&lost);
        let mut l7 = self.maps.l7_outcomes().unwrap_or_default();
        l7.push(("unreadable", self.shared.l7_unparsed.load(Ordering::Relaxed)));
        crate::metrics::NetPolicyMetrics {
            tls: self.tls.outcomes(&self.shared),
            drops,
            flows: vec![
                ("forwarded", self.shared.read[flow_verdict::FORWARDED as usize].load(Ordering::Relaxed)),
                ("dropped", self.shared.read[flow_verdict::DROPPED as usize].load(Ordering::Relaxed)),
            ],
            lost,
            l7,
            policies,
            identities,
            endpoints,
            conntrack: self.maps.conntrack_entries(),
            hubble,
        }
    }

    /// Flow events the kernel could not hand over (its ring was full), since the datapath was loaded.
    pub fn kernel_flow_losses(&self) -> u64 {
        self.maps.losses().map(|l| l.iter().map(|(_, n)| n).sum()).unwrap_or(0)
    }

    /// Every pod of the cluster, as last read (chaos selects from them).
    pub fn pods(&self) -> &[PodRecord] {
        &self.records
    }

    pub fn summary(&self) -> (usize, usize, usize) {
        (self.policies.len(), self.cluster.identities.len(), self.installed.len())
    }
}

fn pods_by_address(records: &[PodRecord]) -> BTreeMap<IpAddr, PodRecord> {
    records
        .iter()
        .flat_map(|r| std::iter::once(IpAddr::V4(r.ip)).chain(r.ipv6.map(IpAddr::V6)).map(move |a| (a, r.clone())))
        .collect()
}
