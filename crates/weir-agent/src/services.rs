//! Services as the agent runs them: the applied Kubernetes objects (kept in
//! the state dir), the kernel's socket-LB tables, and backend health.
//!
//! **Invariant: every change is planned against what the kernel holds.** At
//! start the tables are read back from the pinned maps, so an agent killed
//! in the middle of a change finishes it on restart, and a change that fails
//! half-way is rolled back to the previous tables.
//!
//! A change costs what it touches: only the services it names are checked,
//! rebuilt, planned ([`plan::plan_service`]) and recorded (one file per
//! object in `services/` of the state dir), however many others there are.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use weir_bpf::datapath::PinLayout;
use weir_bpf::socklb::{self, CgroupAttachment, LbMaps, ServiceCounters};
use weir_service::plan::{self, BackendKey, FrontendKey, KernelBackendState, Tables};
use weir_service::{
    ApplyReport, ClusterNetwork, ClusterState, Frontend, HealthCheck, NodeContext, Object, ObjectKey, ServicePortRef,
};
use weir_spec::SpecError;

use crate::service_health::Verdicts;

/// One JSON file per applied object: `<Kind>.<namespace>.<name>.json`.
const STATE_DIR: &str = "services";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Bpf(#[from] weir_bpf::BpfError),
    #[error("service state file {path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("no {kind} {key}")]
    NotFound { kind: String, key: String },
    #[error("{field}: {address}:{port}/{protocol} already belongs to {owner}")]
    FrontendTaken { field: String, address: IpAddr, port: u16, protocol: &'static str, owner: String },
    #[error("container {container}: {source}")]
    HostPort {
        container: String,
        #[source]
        source: weir_service::hostport::HostPortError,
    },
}

/// What an apply or delete did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub report: ApplyReport,
    pub deleted: Vec<String>,
    pub map_writes: usize,
    /// Writing the kernel's maps.
    pub apply_ns: u64,
    /// The whole change: parsing, checking, planning, recording and writing.
    pub total_ns: u64,
}

/// One backend of one frontend, with the kernel's view of it.
#[derive(Debug, Clone, Serialize)]
pub struct BackendView {
    pub id: u32,
    pub address: IpAddr,
    pub port: u16,
    pub state: KernelBackendState,
    /// A connection from this node failed lately (passive health): new ones
    /// avoid it until its probe passes or the mark ages out.
    pub suspect: bool,
    pub connects: u64,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    /// A global service's backend of another cluster (ClusterMesh): its name.
    pub cluster: Option<String>,
    /// A ready backend of a global service's non-preferred side
    /// (`service.cilium.io/affinity`): draining while a preferred one serves.
    pub standby: bool,
    /// The node whose probe decides this backend's health: this one, or
    /// (shared through the store) the backend's own. None: not probed, or
    /// its node has published no verdict (taken as passing).
    pub judged_by: Option<String>,
}

/// One frontend as the kernel holds it.
#[derive(Debug, Clone, Serialize)]
pub struct FrontendView {
    pub frontend: Frontend,
    pub key: FrontendKey,
    pub service_id: u32,
    /// Backend ids in slot order (slots 1..): active first, then those that
    /// take no new connections (terminating, quarantined).
    pub slots: Vec<u32>,
    pub active: u16,
    pub counters: ServiceCounters,
    pub backends: Vec<BackendView>,
}

/// What Services are checked against on this node (see [`weir_service::network`]).
#[derive(Debug, Clone, Default)]
pub struct Network {
    pub cluster: ClusterNetwork,
    /// The lab's pods: their addresses are no cluster IPs.
    pub pods_file: Option<PathBuf>,
}

impl Network {
    /// The cluster network with every pod's address as it is now.
    fn now(&self) -> ClusterNetwork {
        let mut cluster = self.cluster.clone();
        for pod in self.pods_file.as_deref().map(crate::pods::read).unwrap_or_default() {
            let holder = format!("pod {}/{}'s address", pod.namespace, pod.name);
            cluster.reserve_address(pod.ip.into(), holder.clone());
            if let Some(ip6) = pod.ipv6 {
                cluster.reserve_address(ip6.into(), holder);
            }
        }
        cluster
    }
}

#[derive(Debug)]
pub struct ServiceState {
    maps: LbMaps,
    network: Network,
    state_dir: PathBuf,
    cluster: ClusterState,
    node: NodeContext,
    /// Who judges each backend's health, and the verdicts (see [`crate::service_health`]).
    health: Verdicts,
    /// What the kernel holds as quarantined: what the verdicts that apply
    /// on this node say failed.
    quarantined: BTreeSet<BackendKey>,
    tables: Tables,
    /// Frontends by service port, as last planned: Services' and containers' host ports.
    desired: BTreeMap<ServicePortRef, Vec<Frontend>>,
    /// Containers' host ports (CNI `portMappings`), by the node side of their veth.
    host_ports: BTreeMap<String, Vec<Frontend>>,
    pub attachments: Vec<CgroupAttachment>,
    /// The cgroup the socket load balancer serves: its processes' network
    /// namespaces are searched for connected UDP sockets to end.
    clients: weir_host::Cgroup,
    /// Whether this kernel can end sockets (bpf_sock_destroy); the reason when not.
    sock_destroy: Result<(), String>,
    /// Moves with every applied or deleted object: the ClusterMesh publisher
    /// waits on it to share this cluster's global services again.
    changes: tokio::sync::watch::Sender<u64>,
}

impl ServiceState {
    /// Attaches the socket load balancer to `cgroup`, marks `opt_out`
    /// cgroups, and makes the kernel hold the services in the state dir and
    /// the host ports of `containers` (the CNI endpoints recorded).
    pub fn open(
        pins: &PinLayout,
        state_dir: &Path,
        cgroup: &Path,
        node: NodeContext,
        network: Network,
        opt_out: &[PathBuf],
        containers: &[crate::pods::PodRecord],
    ) -> Result<Self, ServiceError> {
        let attachments = socklb::establish(pins, cgroup)?;
        let maps = LbMaps::open(pins)?;
        // North-south traffic leaves translated with the node's IPv4 address as its source.
        let node_v4 = node.addresses.iter().find_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        });
        if maps.set_node_address(node_v4)? {
            match node_v4 {
                Some(addr) => {
                    tracing::info!(%addr, "NodePort, LoadBalancer and external IPs are translated at tc ingress")
                }
                None => {
                    tracing::warn!("no IPv4 address on the node interface: traffic from outside is not load-balanced")
                }
            }
        }
        let opted_out = opt_out
            .iter()
            .map(|dir| {
                weir_host::Cgroup::new(dir).id().map_err(|e| ServiceError::State {
                    path: dir.clone(),
                    message: format!("opting out of the socket load balancer: {e}"),
                })
            })
            .collect::<Result<BTreeSet<u64>, _>>()?;
        maps.set_opt_outs(&opted_out)?;
        let state_dir = state_dir.join(STATE_DIR);
        let cluster = load_objects(&state_dir)?;
        let tables = maps.read_tables()?;
        let sock_destroy = weir_bpf::probe::sock_destroy().map(|_| ());
        if let Err(why) = &sock_destroy {
            tracing::warn!(
                %why,
                "connected UDP sockets to a removed backend cannot be ended: they keep sending to it until the application connects again"
            );
        }
        let mut state = Self {
            maps,
            network,
            state_dir,
            cluster,
            node,
            health: Verdicts::default(),
            quarantined: BTreeSet::new(),
            tables,
            desired: BTreeMap::new(),
            host_ports: BTreeMap::new(),
            attachments,
            clients: weir_host::Cgroup::new(cgroup),
            sock_destroy,
            changes: tokio::sync::watch::Sender::new(0),
        };
        for container in containers {
            match host_port_frontends(container, &state.node.addresses) {
                Ok(frontends) if !frontends.is_empty() => {
                    state.host_ports.insert(container.host_interface.clone(), frontends);
                }
                Ok(_) => {}
                // The node's addresses changed since: the container keeps running, unpublished.
                Err(e) => tracing::warn!(error = %e, "a container's host ports are not published"),
            }
        }
        state.reconcile_all()?;
        Ok(state)
    }

    /// Makes the kernel hold exactly the recorded services and host ports (at start).
    fn reconcile_all(&mut self) -> Result<(), ServiceError> {
        let mut desired = weir_service::frontends(&self.cluster, &self.node);
        let taken: BTreeSet<FrontendKey> = desired.iter().map(frontend_key).collect();
        for (veth, frontends) in &self.host_ports {
            // Recorded Services come first: a clash (only possible through
            // edited state files) leaves the container unpublished.
            match frontends.iter().find(|f| taken.contains(&frontend_key(f))) {
                Some(f) => {
                    tracing::warn!(veth, frontend = %f.service, "a host port clashes with a Service; not published")
                }
                None => desired.extend(frontends.iter().cloned()),
            }
        }
        let (ops, tables) = plan::plan(&self.tables, &desired, &self.quarantined)?;
        self.maps.execute(&ops)?;
        self.tables = tables;
        self.end_departed_udp(&ops);
        self.desired.clear();
        for fe in desired {
            self.desired.entry(fe.service.clone()).or_default().push(fe);
        }
        Ok(())
    }

    /// ClusterMesh: this cluster's global, shared services with their ready endpoints.
    pub fn global_shared(&self) -> BTreeMap<ObjectKey, Vec<weir_service::k8s::EndpointSlice>> {
        self.cluster.global_shared()
    }

    /// Wakes on every applied or deleted Service or EndpointSlice.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// ClusterMesh: what cluster `cluster` shares now, merged into this
    /// node's global services of the same namespace and name.
    pub fn set_remote(
        &mut self,
        cluster: &str,
        shared: BTreeMap<ObjectKey, Vec<weir_service::k8s::EndpointSlice>>,
    ) -> Result<(), ServiceError> {
        let previous = self.cluster.remote_of(cluster);
        let touched = self.cluster.set_remote(cluster, shared);
        if touched.is_empty() {
            return Ok(());
        }
        self.commit(&touched, &[]).map(drop).inspect_err(|_| {
            // As before, so the cluster's next read is a change again.
            self.cluster.set_remote(cluster, previous);
            let _ = self.resync();
        })
    }

    /// Applies a YAML stream of Services and EndpointSlices, all or nothing.
    pub fn apply(&mut self, yaml: &str) -> Result<Outcome, ServiceError> {
        let started = Instant::now();
        let objects = weir_service::parse_stream(yaml)?;
        // What the API server would refuse in this cluster; recorded objects are not judged again.
        let network = self.network.now();
        for object in &objects {
            if let Object::Service(service) = object {
                network.check(service).map_err(|e| SpecError {
                    field: format!("Service {}: {}", object.key(), e.field),
                    message: e.message,
                })?;
            }
        }
        let previous: Vec<(&'static str, ObjectKey, Option<Object>)> =
            objects.iter().map(|o| (o.kind(), o.key(), self.current(o.kind(), &o.key()))).collect();
        // Checked before anything changes: an invalid stream changes nothing.
        let (report, touched) = self.cluster.apply_in_place(objects.clone())?;
        let records: Vec<Record> = objects.into_iter().map(Record::Write).collect();
        let mut outcome = match self.commit(&touched, &records) {
            Ok(outcome) => outcome,
            Err(e) => {
                self.undo(previous);
                return Err(e);
            }
        };
        outcome.report = report;
        outcome.total_ns = started.elapsed().as_nanos() as u64;
        self.changes.send_modify(|n| *n += 1);
        Ok(outcome)
    }

    pub fn delete(&mut self, kind: &str, key: &ObjectKey) -> Result<Outcome, ServiceError> {
        let started = Instant::now();
        let kind = weir_service::table::canonical_kind(kind)?;
        let previous = vec![(kind, key.clone(), self.current(kind, key))];
        let Some(touched) = self.cluster.delete_in_place(kind, key)? else {
            return Err(ServiceError::NotFound { kind: kind.to_string(), key: key.to_string() });
        };
        let mut outcome = match self.commit(&touched, &[Record::Remove(kind, key.clone())]) {
            Ok(outcome) => outcome,
            Err(e) => {
                self.undo(previous);
                return Err(e);
            }
        };
        outcome.deleted.push(format!("{kind} {key}"));
        outcome.total_ns = started.elapsed().as_nanos() as u64;
        self.changes.send_modify(|n| *n += 1);
        Ok(outcome)
    }

    /// The service ports of one service as last planned: a range of the
    /// ordered map, so the cost does not grow with the number of services.
    fn ports_of(&self, key: &ObjectKey) -> Vec<ServicePortRef> {
        let first = ServicePortRef {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            port_name: String::new(),
            protocol: weir_service::k8s::Protocol::Tcp,
        };
        self.desired
            .range(first..)
            .take_while(|(r, _)| r.namespace == key.namespace && r.name == key.name)
            .map(|(r, _)| r.clone())
            .collect()
    }

    fn current(&self, kind: &str, key: &ObjectKey) -> Option<Object> {
        match kind {
            "Service" => self.cluster.services().get(key).cloned().map(|s| Object::Service(Box::new(s))),
            _ => self.cluster.slices().get(key).cloned().map(|s| Object::EndpointSlice(Box::new(s))),
        }
    }

    /// After a failed change: the objects, their record and the kernel go back to how they were.
    fn undo(&mut self, previous: Vec<(&'static str, ObjectKey, Option<Object>)>) {
        for (kind, key, object) in previous {
            let record = match object {
                Some(object) => {
                    let _ = self.cluster.apply_in_place(vec![object.clone()]);
                    Record::Write(object)
                }
                None => {
                    let _ = self.cluster.delete_in_place(kind, &key);
                    Record::Remove(kind, key)
                }
            };
            if let Err(e) = self.record(&record) {
                tracing::error!(error = %e, "restoring the service record failed");
            }
        }
        if let Err(e) = self.resync() {
            tracing::error!(error = %e, "putting the kernel's service tables back failed");
        }
    }

    /// Makes the kernel hold exactly the applied services, planned against
    /// what its maps hold now. At start, and after a failure.
    fn resync(&mut self) -> Result<(), ServiceError> {
        self.tables = self.maps.read_tables()?;
        self.reconcile_all()
    }

    /// Publishes `container`'s host ports (replacing what it published
    /// before) or, with `None`, takes the ones on `host_interface` down.
    /// Returns what was published before, for an undo. A port another
    /// container or a Service holds on an address is an error naming the
    /// holder, and changes nothing.
    pub fn publish(
        &mut self,
        host_interface: &str,
        container: Option<&crate::pods::PodRecord>,
    ) -> Result<Vec<Frontend>, ServiceError> {
        let wanted = match container {
            Some(record) => host_port_frontends(record, &self.node.addresses)?,
            None => Vec::new(),
        };
        if !wanted.is_empty() && std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "0")
        {
            tracing::warn!(
                host_interface,
                "net.ipv4.ip_forward is 0: host ports answer clients on this host, not from outside it"
            );
        }
        self.set_host_ports(host_interface, wanted)
    }

    /// Puts back what [`ServiceState::publish`] returned.
    pub fn restore_host_ports(&mut self, host_interface: &str, previous: Vec<Frontend>) -> Result<(), ServiceError> {
        self.set_host_ports(host_interface, previous).map(|_| ())
    }

    fn set_host_ports(&mut self, host_interface: &str, wanted: Vec<Frontend>) -> Result<Vec<Frontend>, ServiceError> {
        let previous = self.host_ports.get(host_interface).cloned().unwrap_or_default();
        if previous == wanted {
            return Ok(previous);
        }
        let group = |frontends: &[Frontend]| {
            let mut by_ref: BTreeMap<ServicePortRef, Vec<Frontend>> = BTreeMap::new();
            for fe in frontends {
                by_ref.entry(fe.service.clone()).or_default().push(fe.clone());
            }
            by_ref
        };
        let (old, new) = (group(&previous), group(&wanted));
        for fe in &wanted {
            let Some((_, owner)) = self.tables.owner_of(&frontend_key(fe)) else { continue };
            if owner.is_some_and(|o| old.contains_key(o) || new.contains_key(o)) {
                continue;
            }
            return Err(ServiceError::FrontendTaken {
                field: format!("port mapping {}", fe.service),
                address: fe.address,
                port: fe.port,
                protocol: fe.service.protocol.as_str(),
                owner: owner.map_or_else(|| "a frontend the agent does not know".to_string(), ToString::to_string),
            });
        }
        let mut ops = Vec::new();
        let planned = (|| -> Result<(), ServiceError> {
            // Mappings gone first, so their frontend keys are free for the new ones.
            for (reference, frontends) in old.iter().filter(|(r, _)| !new.contains_key(*r)) {
                let keys: Vec<FrontendKey> = frontends.iter().map(frontend_key).collect();
                ops.extend(plan::plan_service(&mut self.tables, reference, &keys, &[], &self.quarantined)?);
            }
            for (reference, frontends) in &new {
                let keys: Vec<FrontendKey> = old.get(reference).into_iter().flatten().map(frontend_key).collect();
                ops.extend(plan::plan_service(&mut self.tables, reference, &keys, frontends, &self.quarantined)?);
            }
            self.maps.execute(&ops)?;
            Ok(())
        })();
        if let Err(e) = planned {
            let _ = self.resync();
            return Err(e);
        }
        self.end_departed_udp(&ops);
        for reference in old.keys() {
            self.desired.remove(reference);
        }
        self.desired.extend(new);
        if wanted.is_empty() {
            self.host_ports.remove(host_interface);
        } else {
            self.host_ports.insert(host_interface.to_string(), wanted);
        }
        Ok(previous)
    }

    /// From now on, backends on `peers` (the cluster's other nodes) are
    /// judged by their own node, whose verdicts come through the store.
    pub fn share_health(&mut self, peers: BTreeSet<String>) {
        self.health.share(peers);
    }

    /// This node's probes' verdicts: `failing` are the backends it judges that failed.
    pub fn set_local_verdicts(&mut self, failing: BTreeSet<BackendKey>) -> Result<(), ServiceError> {
        self.health.set_local(failing);
        self.apply_verdicts()
    }

    /// The peers' verdicts as the store holds them now, (judging node,
    /// backend) → passed. A backend that turns passing is suspect no more
    /// (passive health) for marks made before now.
    pub fn set_peer_verdicts(&mut self, verdicts: BTreeMap<(String, BackendKey), bool>) -> Result<(), ServiceError> {
        let recovered = self.health.set_peers(verdicts);
        let result = self.apply_verdicts();
        if !recovered.is_empty() {
            self.clear_suspects(&recovered, weir_bpf::ktime_now_ns());
        }
        result
    }

    /// Quarantines what the verdicts that apply here say failed.
    fn apply_verdicts(&mut self) -> Result<(), ServiceError> {
        let failing = self.health.failing(&self.node.name, self.desired.values().flatten());
        crate::service_health::log_changes(&self.quarantined, &failing);
        self.set_quarantined(failing.into_keys().collect())
    }

    /// Backends that fail their probe take no new connections until they pass again.
    fn set_quarantined(&mut self, quarantined: BTreeSet<BackendKey>) -> Result<(), ServiceError> {
        if quarantined == self.quarantined {
            return Ok(());
        }
        let changed: BTreeSet<BackendKey> = quarantined.symmetric_difference(&self.quarantined).copied().collect();
        self.quarantined = quarantined;
        let affected: Vec<ServicePortRef> = self
            .desired
            .iter()
            .filter(|(reference, frontends)| {
                let proto = plan::proto_number(reference.protocol);
                frontends
                    .iter()
                    .flat_map(|f| &f.backends)
                    .any(|b| changed.contains(&BackendKey { address: b.address, port: b.port, proto }))
            })
            .map(|(reference, _)| reference.clone())
            .collect();
        let mut ops = Vec::new();
        for reference in &affected {
            let frontends = &self.desired[reference];
            let keys: Vec<FrontendKey> = frontends.iter().map(frontend_key).collect();
            match plan::plan_service(&mut self.tables, reference, &keys, frontends, &self.quarantined) {
                Ok(more) => ops.extend(more),
                Err(e) => {
                    let _ = self.resync();
                    return Err(e.into());
                }
            }
        }
        if let Err(e) = self.maps.execute(&ops) {
            let _ = self.resync();
            return Err(e.into());
        }
        self.end_departed_udp(&ops);
        Ok(())
    }

    /// Ends the connected UDP sockets of clients whose backend `ops` took
    /// out of service (kube-proxy flushes their conntrack entries): sendmsg
    /// does not run for a connected socket, so nothing else would move them.
    /// The tables have changed by now, so a reconnect finds a backend that
    /// is still there. A failure here is logged; the change stands.
    fn end_departed_udp(&self, ops: &[plan::Op]) {
        let gone = plan::udp_departures(ops);
        if gone.is_empty() || self.sock_destroy.is_err() {
            return;
        }
        let namespaces = self.clients.net_namespaces();
        match self.maps.end_udp_sockets(&gone, &namespaces) {
            Ok(ending) if ending.ended + ending.kept > 0 => tracing::info!(
                ended = ending.ended,
                not_ended = ending.kept,
                namespaces = ending.namespaces,
                "connected UDP sockets to departed backends ended"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "ending connected UDP sockets to departed backends failed"),
        }
    }

    /// Backends whose probe passed are suspect no more (passive health),
    /// unless a connection failed after the probe started.
    pub fn clear_suspects(&self, passed: &BTreeSet<BackendKey>, probe_started_ns: u64) {
        for backend in passed.iter().filter(|b| b.proto == plan::IPPROTO_TCP) {
            match self.maps.clear_suspect(backend, probe_started_ns) {
                Ok(true) => tracing::info!(
                    backend = %SocketAddr::new(backend.address, backend.port),
                    "suspect backend passed its health check; back in service"
                ),
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "clearing a suspect backend failed"),
            }
        }
    }

    /// Every (backend, check) this node's prober should run: the backends it judges.
    pub fn probes(&self) -> BTreeSet<(BackendKey, HealthCheck)> {
        self.health.probes(self.desired.values().flatten())
    }

    /// Plans the touched services against the kernel's tables, records the
    /// objects and writes the maps. On an error the caller undoes the change.
    fn commit(&mut self, touched: &BTreeSet<ObjectKey>, records: &[Record]) -> Result<Outcome, ServiceError> {
        let mut new_desired: BTreeMap<ServicePortRef, Vec<Frontend>> = BTreeMap::new();
        for key in touched {
            for fe in self.cluster.service_frontends(&self.node, key) {
                new_desired.entry(fe.service.clone()).or_default().push(fe);
            }
        }
        let old_refs: Vec<ServicePortRef> = touched.iter().flat_map(|key| self.ports_of(key)).collect();
        // Kubernetes allocates service addresses uniquely; written by hand they may clash.
        for (reference, frontends) in &new_desired {
            for fe in frontends {
                if let Some((_, Some(owner))) = self.tables.owner_of(&frontend_key(fe)) {
                    if owner != reference && !old_refs.contains(owner) {
                        return Err(ServiceError::FrontendTaken {
                            field: format!("Service {}/{}", reference.namespace, reference.name),
                            address: fe.address,
                            port: fe.port,
                            protocol: fe.service.protocol.as_str(),
                            owner: owner.to_string(),
                        });
                    }
                }
            }
        }
        for record in records {
            self.record(record)?;
        }
        let mut ops = Vec::new();
        // Removed service ports first, so their frontend keys are free for the others.
        for reference in old_refs.iter().filter(|r| !new_desired.contains_key(r)) {
            let keys: Vec<FrontendKey> = self.desired[reference].iter().map(frontend_key).collect();
            ops.extend(plan::plan_service(&mut self.tables, reference, &keys, &[], &self.quarantined)?);
        }
        for (reference, frontends) in &new_desired {
            let keys: Vec<FrontendKey> = self.desired.get(reference).into_iter().flatten().map(frontend_key).collect();
            ops.extend(plan::plan_service(&mut self.tables, reference, &keys, frontends, &self.quarantined)?);
        }
        let started = Instant::now();
        self.maps.execute(&ops)?;
        let apply_ns = started.elapsed().as_nanos() as u64;
        self.end_departed_udp(&ops);
        for reference in old_refs {
            self.desired.remove(&reference);
        }
        self.desired.extend(new_desired);
        Ok(Outcome { map_writes: ops.len(), apply_ns, ..Outcome::default() })
    }

    fn record(&self, record: &Record) -> Result<(), ServiceError> {
        let err = |message: String| ServiceError::State { path: self.state_dir.clone(), message };
        std::fs::create_dir_all(&self.state_dir).map_err(|e| err(e.to_string()))?;
        let path = self.state_dir.join(record.file_name());
        match record {
            Record::Write(object) => {
                let json = match object {
                    Object::Service(s) => serde_json::to_string(s),
                    Object::EndpointSlice(s) => serde_json::to_string(s),
                }
                .map_err(|e| err(e.to_string()))?;
                // Write-then-rename: a crash never leaves a torn file behind.
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, json).map_err(|e| err(e.to_string()))?;
                std::fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))
            }
            Record::Remove(..) => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(err(e.to_string())),
                _ => Ok(()),
            },
        }
    }

    /// Every frontend as last planned (Services' and containers' host ports).
    pub fn frontends(&self) -> Vec<Frontend> {
        self.desired.values().flatten().cloned().collect()
    }

    /// The Services and EndpointSlices applied.
    pub fn cluster(&self) -> &ClusterState {
        &self.cluster
    }

    /// Every frontend with the kernel's tables and counters, read from the maps.
    pub fn views(&self) -> Result<Vec<FrontendView>, ServiceError> {
        let held = self.maps.read_tables()?;
        let suspects = self.maps.suspects()?;
        let now = weir_bpf::ktime_now_ns();
        let mark_lifetime = Duration::from_secs(socklb::SUSPECT_SECONDS).as_nanos() as u64;
        let is_suspect =
            |key: &BackendKey| suspects.get(key).is_some_and(|(marked, _)| now.saturating_sub(*marked) < mark_lifetime);
        let mut out = Vec::new();
        for fe in self.desired.values().flatten() {
            let key = frontend_key(fe);
            let Some(entry) = held.frontends.get(&key) else { continue };
            let counters = self.maps.service_counters(entry.meta.service_id)?;
            let mut backends = Vec::new();
            for id in &entry.slots {
                let Some(backend) = held.backends.get(id) else { continue };
                let (bkey, state) = (&backend.key, &backend.state);
                let spec = fe.backends.iter().find(|b| b.address == bkey.address && b.port == bkey.port);
                backends.push(BackendView {
                    id: *id,
                    address: bkey.address,
                    port: bkey.port,
                    state: *state,
                    suspect: is_suspect(bkey),
                    connects: self.maps.backend_connects(*id)?,
                    node_name: spec.and_then(|b| b.node_name.clone()),
                    zone: spec.and_then(|b| b.zone.clone()),
                    cluster: spec.and_then(|b| b.cluster.clone()),
                    standby: spec.is_some_and(|b| b.standby && b.state == weir_service::BackendState::Active),
                    judged_by: spec
                        .and_then(|b| self.health.verdict(&self.node.name, b, &fe.health, key.proto))
                        .map(|(judge, _)| judge),
                });
            }
            out.push(FrontendView {
                frontend: fe.clone(),
                key,
                service_id: entry.meta.service_id,
                slots: entry.slots.clone(),
                active: entry.meta.active,
                counters,
                backends,
            });
        }
        Ok(out)
    }
}

/// A container's host ports as frontends on a node with `addresses`.
fn host_port_frontends(record: &crate::pods::PodRecord, addresses: &[IpAddr]) -> Result<Vec<Frontend>, ServiceError> {
    use weir_service::hostport::{self, HostPortOwner};
    let owner = HostPortOwner {
        namespace: &record.namespace,
        name: &record.name,
        host_interface: &record.host_interface,
        address: record.ip.into(),
    };
    hostport::frontends(&owner, &record.host_ports, addresses)
        .map_err(|source| ServiceError::HostPort { container: format!("{}/{}", record.namespace, record.name), source })
}

fn frontend_key(fe: &Frontend) -> FrontendKey {
    FrontendKey { address: fe.address, port: fe.port, proto: plan::proto_number(fe.service.protocol) }
}

/// A change to the record of applied objects.
enum Record {
    Write(Object),
    Remove(&'static str, ObjectKey),
}

impl Record {
    fn kind(&self) -> &'static str {
        match self {
            Record::Write(o) => o.kind(),
            Record::Remove(kind, _) => kind,
        }
    }

    fn key(&self) -> ObjectKey {
        match self {
            Record::Write(o) => o.key(),
            Record::Remove(_, key) => key.clone(),
        }
    }

    fn file_name(&self) -> String {
        let key = self.key();
        format!("{}.{}.{}.json", self.kind(), key.namespace, key.name)
    }
}

/// Reads every recorded object back.
fn load_objects(dir: &Path) -> Result<ClusterState, ServiceError> {
    let err = |message: String| ServiceError::State { path: dir.to_path_buf(), message };
    let mut objects = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ClusterState::default()),
        Err(e) => return Err(err(e.to_string())),
    };
    for entry in entries {
        let path = entry.map_err(|e| err(e.to_string()))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        if !name.ends_with(".json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        let object = if name.starts_with("Service.") {
            Object::Service(Box::new(serde_json::from_str(&text).map_err(|e| err(format!("{}: {e}", path.display())))?))
        } else {
            Object::EndpointSlice(Box::new(
                serde_json::from_str(&text).map_err(|e| err(format!("{}: {e}", path.display())))?,
            ))
        };
        objects.push(object);
    }
    let mut state = ClusterState::default();
    state.apply_in_place(objects)?;
    Ok(state)
}

/// The addresses NodePort frontends listen on: the IPv4 and IPv6 addresses
/// of `interface` (global scope).
pub fn node_addresses(interface: &str) -> Vec<IpAddr> {
    let Ok(json) = weir_host::iproute::ip(None, &["-j", "addr", "show", "dev", interface]) else {
        return Vec::new();
    };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&json) else { return Vec::new() };
    value
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|link| link.get("addr_info").and_then(|a| a.as_array()).cloned().unwrap_or_default())
        .filter(|a| a.get("scope").and_then(|s| s.as_str()) == Some("global"))
        .filter_map(|a| a.get("local")?.as_str()?.parse().ok())
        .collect()
}
