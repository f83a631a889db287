//! Cluster service state (Services and EndpointSlices as applied), their
//! validation, and the frontend -> backend tables one node's kernel holds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use weir_spec::{err, SpecError};

use crate::k8s::{
    AddressType, EndpointSlice, IntOrString, Protocol, Service, ServiceType, SessionAffinity, TrafficPolicy,
};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// `random` (default) or `maglev`.
pub const ALGORITHM_ANNOTATION: &str = "weir.dev/lb-algorithm";
/// What connect() does when no backend is ready: an errno name (default
/// `ECONNREFUSED`), or `none` to let the call through to the service address.
pub const NO_BACKENDS_ANNOTATION: &str = "weir.dev/no-backends-errno";
/// How the agent probes backends: `tcp` (default for TCP ports), `http:/path`, or `none`.
pub const HEALTH_ANNOTATION: &str = "weir.dev/health-check";
/// The probe of a Service's UDP ports (they are probed only when it is set).
pub const UDP_HEALTH_ANNOTATION: &str = "weir.dev/udp-health-check";
/// Cilium's ClusterMesh: `"true"` makes the Service global, its backends
/// those of every cluster that has a Service of the same namespace and name.
pub const GLOBAL_ANNOTATION: &str = "service.cilium.io/global";
/// Cilium's: `"false"` keeps a global Service's backends from the other
/// clusters (it still takes theirs); default `"true"`.
pub const SHARED_ANNOTATION: &str = "service.cilium.io/shared";
/// Cilium's: `local` (this cluster's backends, the others' only when none is
/// ready), `remote` (the reverse) or `none` (default: all of them).
pub const AFFINITY_ANNOTATION: &str = "service.cilium.io/affinity";
/// Kubernetes' default ClientIP affinity timeout: 3 hours.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

const ERRNOS: &[(&str, u16)] = &[
    ("ECONNREFUSED", 111),
    ("EHOSTUNREACH", 113),
    ("ENETUNREACH", 101),
    ("ETIMEDOUT", 110),
    ("EPERM", 1),
    ("none", 0),
];

/// A validated document.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Service(_) => "Service",
            Object::EndpointSlice(_) => "EndpointSlice",
        }
    }

    pub fn key(&self) -> ObjectKey {
        let meta = match self {
            Object::Service(s) => &s.metadata,
            Object::EndpointSlice(s) => &s.metadata,
        };
        ObjectKey { namespace: meta.namespace.clone(), name: meta.name.clone() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Reads a Service or EndpointSlice document and checks every field Weir
/// relies on. `kind` and `api_version` come from [`weir_spec::split_documents`].
pub fn parse_object(api_version: &str, kind: &str, text: &str) -> Result<Object, SpecError> {
    match (api_version, kind) {
        ("v1", "Service") => {
            let service: Service = weir_spec::parse_yaml(text)?;
            validate_service(&service)?;
            Ok(Object::Service(Box::new(service)))
        }
        ("discovery.k8s.io/v1", "EndpointSlice") => {
            let slice: EndpointSlice = weir_spec::parse_yaml(text)?;
            validate_slice(&slice)?;
            Ok(Object::EndpointSlice(Box::new(slice)))
        }
        (_, "Service") => Err(err("apiVersion", format!("{api_version:?}: a Service is apiVersion v1"))),
        (_, "EndpointSlice") => {
            Err(err("apiVersion", format!("{api_version:?}: an EndpointSlice is apiVersion discovery.k8s.io/v1")))
        }
        _ => Err(err("kind", format!("{kind:?} is not a Service or an EndpointSlice"))),
    }
}

fn check_port(field: &str, port: i64) -> Result<u16, SpecError> {
    u16::try_from(port).ok().filter(|p| *p != 0).ok_or_else(|| err(field, format!("{port} is not a port: use 1-65535")))
}

fn parse_ip(field: &str, text: &str) -> Result<IpAddr, SpecError> {
    text.parse().map_err(|_| err(field, format!("{text:?} is not an IP address")))
}

use weir_spec::check_port_name;

fn check_meta(meta: &crate::k8s::ObjectMeta) -> Result<(), SpecError> {
    weir_spec::check_dns_label("metadata.name", &meta.name, 63)?;
    weir_spec::check_dns_label("metadata.namespace", &meta.namespace, 63)
}

pub fn validate_service(service: &Service) -> Result<(), SpecError> {
    check_meta(&service.metadata)?;
    let spec = &service.spec;
    let external_type = matches!(spec.service_type, ServiceType::NodePort | ServiceType::LoadBalancer);
    let headless = spec.cluster_ip.as_deref() == Some("None");
    if spec.service_type != ServiceType::ExternalName && !headless && spec.ports.is_empty() {
        return Err(err("spec.ports", "a Service needs at least one port"));
    }
    let mut seen_names = BTreeSet::new();
    let mut seen_ports = BTreeSet::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let at = |f: &str| format!("spec.ports[{i}].{f}");
        check_port(&at("port"), port.port)?;
        if port.protocol == Protocol::Sctp {
            return Err(err(at("protocol"), "SCTP is not load-balanced by Weir: use TCP or UDP"));
        }
        match &port.name {
            Some(name) => {
                check_port_name(&at("name"), name)?;
                if !seen_names.insert(name.clone()) {
                    return Err(err(at("name"), format!("{name:?} is used by an earlier port")));
                }
            }
            None if spec.ports.len() > 1 => {
                return Err(err(at("name"), "required when a Service has more than one port"));
            }
            None => {}
        }
        if !seen_ports.insert((port.port, port.protocol)) {
            return Err(err(
                at("port"),
                format!("{} {} is used by an earlier port", port.protocol.as_str(), port.port),
            ));
        }
        match &port.target_port {
            Some(IntOrString::Int(p)) => {
                check_port(&at("targetPort"), *p)?;
            }
            Some(IntOrString::String(name)) => check_port_name(&at("targetPort"), name)?,
            None => {}
        }
        match (port.node_port, external_type) {
            (Some(p), true) => {
                check_port(&at("nodePort"), p)?;
            }
            (Some(_), false) => {
                return Err(err(at("nodePort"), "only a NodePort or LoadBalancer Service has node ports"))
            }
            (None, true) if spec.service_type == ServiceType::NodePort => {
                return Err(err(at("nodePort"), "required: Weir has no API server to allocate one"));
            }
            (None, _) => {}
        }
    }
    match spec.cluster_ip.as_deref() {
        None | Some("") if spec.service_type != ServiceType::ExternalName => {
            return Err(err(
                "spec.clusterIP",
                "required (or \"None\" for a headless Service): Weir has no API server to allocate one",
            ));
        }
        Some(ip) if ip != "None" && !ip.is_empty() => {
            parse_ip("spec.clusterIP", ip)?;
        }
        _ => {}
    }
    for (i, ip) in spec.cluster_ips.iter().enumerate() {
        let field = format!("spec.clusterIPs[{i}]");
        if ip != "None" {
            parse_ip(&field, ip)?;
        }
        if i == 0 && spec.cluster_ip.as_deref().is_some_and(|c| c != ip) {
            return Err(err(field, "must equal spec.clusterIP"));
        }
    }
    crate::network::check_families(service)?;
    for (i, ip) in spec.external_ips.iter().enumerate() {
        parse_ip(&format!("spec.externalIPs[{i}]"), ip)?;
    }
    if let Some(ip) = &spec.load_balancer_ip {
        parse_ip("spec.loadBalancerIP", ip)?;
    }
    source_ranges(service)?;
    if let Some(lb) = service.status.as_ref().and_then(|s| s.load_balancer.as_ref()) {
        for (i, ingress) in lb.ingress.iter().enumerate() {
            if let Some(ip) = &ingress.ip {
                parse_ip(&format!("status.loadBalancer.ingress[{i}].ip"), ip)?;
            }
            match (ingress.ip_mode.as_deref(), &ingress.ip) {
                (None, _) => {}
                (Some("VIP" | "Proxy"), Some(_)) => {}
                (Some("VIP" | "Proxy"), None) => {
                    return Err(err(format!("status.loadBalancer.ingress[{i}].ipMode"), "only with ip"))
                }
                (Some(other), _) => {
                    return Err(err(
                        format!("status.loadBalancer.ingress[{i}].ipMode"),
                        format!("{other:?}: use VIP or Proxy"),
                    ))
                }
            }
        }
    }
    if let Some(timeout) = spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()) {
        if spec.session_affinity != SessionAffinity::ClientIp {
            return Err(err("spec.sessionAffinityConfig", "only with sessionAffinity: ClientIP"));
        }
        if let Some(t) = timeout.timeout_seconds {
            if !(1..=86400).contains(&t) {
                return Err(err("spec.sessionAffinityConfig.clientIP.timeoutSeconds", format!("{t}: use 1-86400")));
            }
        }
    }
    if spec.external_traffic_policy.is_some() && !external_type && spec.external_ips.is_empty() {
        return Err(err(
            "spec.externalTrafficPolicy",
            "only for NodePort and LoadBalancer Services, or with externalIPs",
        ));
    }
    let annotations = &service.metadata.annotations;
    if let Some(v) = annotations.get(ALGORITHM_ANNOTATION) {
        if v != "random" && v != "maglev" {
            return Err(err(
                format!("metadata.annotations.{ALGORITHM_ANNOTATION}"),
                format!("{v:?}: use random or maglev"),
            ));
        }
    }
    if let Some(v) = annotations.get(NO_BACKENDS_ANNOTATION) {
        if !ERRNOS.iter().any(|(name, _)| name == v) {
            let names: Vec<&str> = ERRNOS.iter().map(|e| e.0).collect();
            return Err(err(
                format!("metadata.annotations.{NO_BACKENDS_ANNOTATION}"),
                format!("{v:?}: use one of {}", names.join(", ")),
            ));
        }
    }
    for name in [GLOBAL_ANNOTATION, SHARED_ANNOTATION] {
        if let Some(v) = annotations.get(name) {
            if v != "true" && v != "false" {
                return Err(err(format!("metadata.annotations.{name}"), format!("{v:?}: use \"true\" or \"false\"")));
            }
        }
    }
    if let Some(v) = annotations.get(AFFINITY_ANNOTATION) {
        if !["local", "remote", "none"].contains(&v.as_str()) {
            return Err(err(
                format!("metadata.annotations.{AFFINITY_ANNOTATION}"),
                format!("{v:?}: use local, remote or none"),
            ));
        }
    }
    if let Some(v) = annotations.get(HEALTH_ANNOTATION) {
        HealthCheck::parse(v).map_err(|m| err(format!("metadata.annotations.{HEALTH_ANNOTATION}"), m))?;
    }
    if let Some(v) = annotations.get(UDP_HEALTH_ANNOTATION) {
        HealthCheck::parse_udp(v).map_err(|m| err(format!("metadata.annotations.{UDP_HEALTH_ANNOTATION}"), m))?;
    }
    Ok(())
}

/// `spec.loadBalancerSourceRanges` as CIDRs (the API server trims spaces).
fn source_ranges(service: &Service) -> Result<Vec<ipnet::IpNet>, SpecError> {
    let ranges = &service.spec.load_balancer_source_ranges;
    if !ranges.is_empty() && service.spec.service_type != ServiceType::LoadBalancer {
        return Err(err("spec.loadBalancerSourceRanges", "only for a LoadBalancer Service"));
    }
    let mut out = ranges
        .iter()
        .enumerate()
        .map(|(i, text)| {
            text.trim().parse::<ipnet::IpNet>().map(|net| net.trunc()).map_err(|_| {
                err(format!("spec.loadBalancerSourceRanges[{i}]"), format!("{text:?} is not a CIDR, e.g. 192.0.2.0/24"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    out.sort();
    out.dedup();
    Ok(out)
}

pub fn validate_slice(slice: &EndpointSlice) -> Result<(), SpecError> {
    check_meta(&slice.metadata)?;
    if slice.endpoints.len() > 1000 {
        return Err(err("endpoints", "at most 1000 endpoints per slice"));
    }
    if slice.ports.len() > 100 {
        return Err(err("ports", "at most 100 ports per slice"));
    }
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        if endpoint.addresses.is_empty() || endpoint.addresses.len() > 100 {
            return Err(err(format!("endpoints[{i}].addresses"), "needs 1 to 100 addresses"));
        }
        for (j, address) in endpoint.addresses.iter().enumerate() {
            let field = format!("endpoints[{i}].addresses[{j}]");
            match slice.address_type {
                AddressType::IPv4 if !matches!(parse_ip(&field, address)?, IpAddr::V4(_)) => {
                    return Err(err(field, format!("{address:?} is not IPv4, but addressType is IPv4")));
                }
                AddressType::IPv6 if !matches!(parse_ip(&field, address)?, IpAddr::V6(_)) => {
                    return Err(err(field, format!("{address:?} is not IPv6, but addressType is IPv6")));
                }
                _ => {}
            }
        }
    }
    for (i, port) in slice.ports.iter().enumerate() {
        if let Some(p) = port.port {
            check_port(&format!("ports[{i}].port"), p)?;
        }
        if let Some(name) = &port.name {
            if !name.is_empty() {
                check_port_name(&format!("ports[{i}].name"), name)?;
            }
        }
    }
    Ok(())
}

/// Every Service and EndpointSlice applied, by namespace and name, with the
/// slices of each service indexed. Stored (as JSON) as the objects as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredState", into = "StoredState")]
pub struct ClusterState {
    services: BTreeMap<ObjectKey, Service>,
    slices: BTreeMap<ObjectKey, EndpointSlice>,
    /// service -> the slices labelled with its name.
    slice_index: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// In a ClusterMesh: global services' slices as other clusters publish
    /// them, service -> cluster -> slices. Not recorded: they are read
    /// from the other clusters again.
    remote: BTreeMap<ObjectKey, BTreeMap<String, Vec<EndpointSlice>>>,
}

#[derive(Serialize, Deserialize)]
struct StoredState {
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
}

fn meta_key(meta: &crate::k8s::ObjectMeta) -> ObjectKey {
    ObjectKey { namespace: meta.namespace.clone(), name: meta.name.clone() }
}

/// The service an EndpointSlice belongs to, by its label.
fn service_key_of(slice: &EndpointSlice) -> Option<ObjectKey> {
    let name = slice.metadata.labels.get(SERVICE_NAME_LABEL)?;
    Some(ObjectKey { namespace: slice.metadata.namespace.clone(), name: name.clone() })
}

impl From<StoredState> for ClusterState {
    fn from(stored: StoredState) -> Self {
        let mut state = ClusterState::default();
        for service in stored.services {
            state.services.insert(meta_key(&service.metadata), service);
        }
        for slice in stored.slices {
            state.insert_slice(slice);
        }
        state
    }
}

impl From<ClusterState> for StoredState {
    fn from(state: ClusterState) -> Self {
        StoredState { services: state.services.into_values().collect(), slices: state.slices.into_values().collect() }
    }
}

/// What an apply changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    pub created: Vec<String>,
    pub configured: Vec<String>,
    pub unchanged: Vec<String>,
}

impl ClusterState {
    pub fn services(&self) -> &BTreeMap<ObjectKey, Service> {
        &self.services
    }

    pub fn slices(&self) -> &BTreeMap<ObjectKey, EndpointSlice> {
        &self.slices
    }

    fn insert_slice(&mut self, slice: EndpointSlice) -> Option<EndpointSlice> {
        let key = meta_key(&slice.metadata);
        if let Some(service) = service_key_of(&slice) {
            self.slice_index.entry(service).or_default().insert(key.clone());
        }
        let previous = self.slices.insert(key.clone(), slice);
        if let Some(old_service) = previous.as_ref().and_then(service_key_of) {
            if Some(&old_service) != self.slices.get(&key).and_then(service_key_of).as_ref() {
                self.unindex(&old_service, &key);
            }
        }
        previous
    }

    fn remove_slice(&mut self, key: &ObjectKey) -> Option<EndpointSlice> {
        let previous = self.slices.remove(key)?;
        if let Some(service) = service_key_of(&previous) {
            self.unindex(&service, key);
        }
        Some(previous)
    }

    fn unindex(&mut self, service: &ObjectKey, slice: &ObjectKey) {
        if let Some(set) = self.slice_index.get_mut(service) {
            set.remove(slice);
            if set.is_empty() {
                self.slice_index.remove(service);
            }
        }
    }

    /// Applies `objects` together on a copy: either all of them take effect,
    /// or (on an error naming the document and field) none.
    pub fn apply(&self, objects: Vec<Object>) -> Result<(ClusterState, ApplyReport), SpecError> {
        let mut next = self.clone();
        let (report, _) = next.apply_in_place(objects)?;
        Ok((next, report))
    }

    /// Applies `objects` together: all of them, or (on an error) none. Checks
    /// only what they touch, so the cost follows the change, not the cluster.
    /// Returns the report and the services whose frontends may have changed.
    pub fn apply_in_place(&mut self, objects: Vec<Object>) -> Result<(ApplyReport, BTreeSet<ObjectKey>), SpecError> {
        // Stage: the last document for a key wins, as in a kubectl apply of one stream.
        let mut services: BTreeMap<ObjectKey, Service> = BTreeMap::new();
        let mut slices: BTreeMap<ObjectKey, EndpointSlice> = BTreeMap::new();
        let mut order = Vec::new();
        for object in objects {
            let key = object.key();
            order.push((object.kind(), key.clone()));
            match object {
                Object::Service(s) => {
                    services.insert(key, *s);
                }
                Object::EndpointSlice(s) => {
                    slices.insert(key, *s);
                }
            }
        }
        // Check every staged slice against its (staged or applied) service, and
        // every applied slice of a staged service against that service.
        let service_for = |key: &ObjectKey| services.get(key).or_else(|| self.services.get(key));
        for (key, slice) in &slices {
            if let Some(service) = service_key_of(slice).as_ref().and_then(service_for) {
                check_slice(key, slice, service)?;
            }
        }
        for (service_key, service) in &services {
            for slice_key in self.slice_index.get(service_key).into_iter().flatten() {
                if !slices.contains_key(slice_key) {
                    check_slice(slice_key, &self.slices[slice_key], service)?;
                }
            }
        }

        let mut touched: BTreeSet<ObjectKey> = services.keys().cloned().collect();
        let mut report = ApplyReport::default();
        let mut outcome: BTreeMap<(&'static str, ObjectKey), Option<bool>> = BTreeMap::new();
        for (key, service) in services {
            let changed = self.services.get(&key).map(|p| *p != service);
            self.services.insert(key.clone(), service);
            outcome.insert(("Service", key), changed);
        }
        for (key, slice) in slices {
            touched.extend(service_key_of(&slice));
            let previous = self.insert_slice(slice);
            touched.extend(previous.as_ref().and_then(service_key_of));
            let changed = previous.map(|p| Some(&p) != self.slices.get(&key));
            outcome.insert(("EndpointSlice", key), changed);
        }
        for (kind, key) in order {
            let label = format!("{kind} {key}");
            match outcome.remove(&(kind, key)) {
                Some(None) => report.created.push(label),
                Some(Some(true)) => report.configured.push(label),
                Some(Some(false)) => report.unchanged.push(label),
                None => {}
            }
        }
        Ok((report, touched))
    }

    /// Removes one object on a copy; Ok(false) when it was not there.
    pub fn delete(&self, kind: &str, key: &ObjectKey) -> Result<(ClusterState, bool), SpecError> {
        let mut next = self.clone();
        let removed = next.delete_in_place(kind, key)?.is_some();
        Ok((next, removed))
    }

    /// Removes one object; returns the services whose frontends may have
    /// changed, or None when it was not there.
    pub fn delete_in_place(&mut self, kind: &str, key: &ObjectKey) -> Result<Option<BTreeSet<ObjectKey>>, SpecError> {
        Ok(match canonical_kind(kind)? {
            "Service" => self.services.remove(key).map(|_| [key.clone()].into()),
            _ => self.remove_slice(key).map(|slice| service_key_of(&slice).into_iter().collect()),
        })
    }

    /// The frontends of one service on this node (none when it does not exist).
    pub fn service_frontends(&self, node: &NodeContext, key: &ObjectKey) -> Vec<Frontend> {
        let Some(service) = self.services.get(key) else { return Vec::new() };
        let slices: Vec<&EndpointSlice> =
            self.slice_index.get(key).into_iter().flatten().filter_map(|k| self.slices.get(k)).collect();
        let remote: Vec<(&str, Vec<&EndpointSlice>)> = if is_global(service) {
            let clusters = self.remote.get(key).into_iter().flatten();
            clusters.map(|(cluster, slices)| (cluster.as_str(), slices.iter().collect())).collect()
        } else {
            Vec::new()
        };
        service_frontends(service, &slices, &remote, node)
    }

    /// What this cluster shares with the others (ClusterMesh): each global,
    /// shared Service's own EndpointSlices, with their ready endpoints only.
    pub fn global_shared(&self) -> BTreeMap<ObjectKey, Vec<EndpointSlice>> {
        let shared = self.services.iter().filter(|(_, s)| {
            is_global(s) && s.metadata.annotations.get(SHARED_ANNOTATION).map(String::as_str) != Some("false")
        });
        shared
            .map(|(key, _)| {
                let slices = self.slice_index.get(key).into_iter().flatten().filter_map(|k| self.slices.get(k));
                let ready = slices
                    .map(|slice| {
                        let mut slice = slice.clone();
                        slice
                            .endpoints
                            .retain(|e| e.conditions.ready.unwrap_or(true) && e.conditions.terminating != Some(true));
                        slice
                    })
                    .collect();
                (key.clone(), ready)
            })
            .collect()
    }

    /// What `cluster` shares, as last set.
    pub fn remote_of(&self, cluster: &str) -> BTreeMap<ObjectKey, Vec<EndpointSlice>> {
        let shared =
            self.remote.iter().filter_map(|(key, by_cluster)| Some((key.clone(), by_cluster.get(cluster)?.clone())));
        shared.collect()
    }

    /// Replaces what `cluster` shares (service -> its slices); returns the
    /// services whose frontends may have changed.
    pub fn set_remote(
        &mut self,
        cluster: &str,
        shared: BTreeMap<ObjectKey, Vec<EndpointSlice>>,
    ) -> BTreeSet<ObjectKey> {
        let mut touched = BTreeSet::new();
        for (key, by_cluster) in self.remote.iter_mut() {
            if !shared.contains_key(key) && by_cluster.remove(cluster).is_some() {
                touched.insert(key.clone());
            }
        }
        self.remote.retain(|_, by_cluster| !by_cluster.is_empty());
        for (key, slices) in shared {
            let by_cluster = self.remote.entry(key.clone()).or_default();
            if by_cluster.get(cluster) != Some(&slices) {
                by_cluster.insert(cluster.to_string(), slices);
                touched.insert(key);
            }
        }
        touched
    }
}

/// `Service` or `EndpointSlice`, from how people write them (`svc`, `endpointslice`, …).
pub fn canonical_kind(kind: &str) -> Result<&'static str, SpecError> {
    match kind {
        "Service" | "service" | "svc" => Ok("Service"),
        "EndpointSlice" | "endpointslice" | "endpointslices" => Ok("EndpointSlice"),
        other => Err(err("kind", format!("{other:?}: use Service or EndpointSlice"))),
    }
}

/// An EndpointSlice port must speak its Service port's protocol.
fn check_slice(key: &ObjectKey, slice: &EndpointSlice, service: &Service) -> Result<(), SpecError> {
    for (i, port) in slice.ports.iter().enumerate() {
        let name = port.name.clone().unwrap_or_default();
        let same_name = service.spec.ports.iter().find(|p| p.name.clone().unwrap_or_default() == name);
        if let Some(sp) = same_name {
            if sp.protocol != port.protocol {
                return Err(err(
                    format!("EndpointSlice {key}: ports[{i}].protocol"),
                    format!(
                        "{} does not match port {name:?} of Service {}/{}, which is {}",
                        port.protocol.as_str(),
                        service.metadata.namespace,
                        service.metadata.name,
                        sp.protocol.as_str()
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FrontendKind {
    ClusterIP,
    NodePort,
    LoadBalancer,
    ExternalIP,
    /// A container's published port (CNI `portMappings`): this node's
    /// addresses only, on any port.
    HostPort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Random,
    Maglev,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheck {
    None,
    Tcp,
    Http {
        path: String,
    },
    /// UDP: a DNS query (the root's NS records); any answer with the query's id passes.
    Dns,
    /// UDP: this payload; any datagram back passes.
    Udp {
        payload: String,
    },
}

/// The longest UDP probe payload (one unfragmented datagram anywhere).
pub const MAX_UDP_PROBE_PAYLOAD: usize = 512;

impl HealthCheck {
    pub fn parse(text: &str) -> Result<HealthCheck, String> {
        match text {
            "none" => Ok(HealthCheck::None),
            "tcp" => Ok(HealthCheck::Tcp),
            _ => match text.strip_prefix("http:") {
                Some(path) if path.starts_with('/') && !path.contains(char::is_whitespace) => {
                    Ok(HealthCheck::Http { path: path.into() })
                }
                _ => Err(format!("{text:?}: use none, tcp, or http:/PATH")),
            },
        }
    }

    /// The probe of UDP ports: `none`, `dns`, or `udp:PAYLOAD`.
    pub fn parse_udp(text: &str) -> Result<HealthCheck, String> {
        match text {
            "none" => Ok(HealthCheck::None),
            "dns" => Ok(HealthCheck::Dns),
            _ => match text.strip_prefix("udp:") {
                Some(payload) if !payload.is_empty() && payload.len() <= MAX_UDP_PROBE_PAYLOAD => {
                    Ok(HealthCheck::Udp { payload: payload.into() })
                }
                Some(_) => Err(format!("{text:?}: the payload must be 1 to {MAX_UDP_PROBE_PAYLOAD} bytes")),
                None => Err(format!("{text:?}: use none, dns, or udp:PAYLOAD")),
            },
        }
    }

    /// As the annotations spell it.
    pub fn describe(&self) -> String {
        match self {
            HealthCheck::None => "none".into(),
            HealthCheck::Tcp => "tcp".into(),
            HealthCheck::Http { path } => format!("http:{path}"),
            HealthCheck::Dns => "dns".into(),
            HealthCheck::Udp { payload } => format!("udp:{payload}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    Active,
    Terminating,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Backend {
    pub address: IpAddr,
    pub port: u16,
    pub state: BackendState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// In a ClusterMesh: the other cluster a global service's backend is of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// A global service's backend on the side its affinity does not prefer:
    /// it takes new connections only while no preferred one can (not ready,
    /// or quarantined by its health check).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub standby: bool,
}

/// One service port, which every frontend of it shares: counters, affinity
/// and the Maglev table are per service port, as in kube-proxy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServicePortRef {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub protocol: Protocol,
}

impl std::fmt::Display for ServicePortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port_name.is_empty() {
            write!(f, ":{}", self.port_name)?;
        }
        Ok(())
    }
}

/// An address:port/protocol the kernel translates, and where to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frontend {
    pub address: IpAddr,
    pub port: u16,
    pub kind: FrontendKind,
    pub service: ServicePortRef,
    /// Sorted; Active ones take new connections.
    pub backends: Vec<Backend>,
    /// Seconds; None without ClientIP affinity.
    pub affinity_timeout: Option<u32>,
    pub algorithm: Algorithm,
    /// 0: let a call with no backend through unchanged.
    pub no_backend_errno: u16,
    pub health: HealthCheck,
    /// LoadBalancer frontends: only clients from these may open flows from
    /// outside the node; empty allows every client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ranges: Vec<ipnet::IpNet>,
}

/// What a node knows about itself when it builds its tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeContext {
    pub name: String,
    /// Addresses NodePort frontends listen on.
    pub addresses: Vec<IpAddr>,
}

/// Every frontend this node's kernel holds, in a stable order.
pub fn frontends(state: &ClusterState, node: &NodeContext) -> Vec<Frontend> {
    let mut out: Vec<Frontend> = state.services.keys().flat_map(|key| state.service_frontends(node, key)).collect();
    out.sort_by_key(|a| (a.address, a.port, a.service.protocol));
    out.dedup_by(|a, b| (a.address, a.port, a.service.protocol) == (b.address, b.port, b.service.protocol));
    out
}

fn is_global(service: &Service) -> bool {
    service.metadata.annotations.get(GLOBAL_ANNOTATION).map(String::as_str) == Some("true")
}

/// A global service's backends: its own and the other clusters' (each
/// named by its cluster). With `service.cilium.io/affinity` the side it
/// does not prefer stands by: the planner gives it new connections only
/// while no preferred backend is ready and passing its health check.
fn merge_clusters(service: &Service, own: Vec<Backend>, remote: Vec<Backend>) -> Vec<Backend> {
    let prefer_own = match service.metadata.annotations.get(AFFINITY_ANNOTATION).map(String::as_str) {
        Some("local") => Some(true),
        Some("remote") => Some(false),
        _ => None,
    };
    let mut out: Vec<Backend> = own.into_iter().chain(remote).collect();
    if let Some(prefer_own) = prefer_own {
        out.iter_mut().for_each(|b| b.standby = b.cluster.is_none() != prefer_own);
    }
    out.sort();
    out.dedup_by(|a, b| (a.address, a.port) == (b.address, b.port));
    out
}

/// The frontends of one service, given its slices and, for a global
/// service, the other clusters' slices of it.
fn service_frontends(
    service: &Service,
    own_slices: &[&EndpointSlice],
    remote: &[(&str, Vec<&EndpointSlice>)],
    node: &NodeContext,
) -> Vec<Frontend> {
    let mut out = Vec::new();
    let spec = &service.spec;
    if spec.service_type == ServiceType::ExternalName {
        return out;
    }
    let annotations = &service.metadata.annotations;
    let algorithm = match annotations.get(ALGORITHM_ANNOTATION).map(String::as_str) {
        Some("maglev") => Algorithm::Maglev,
        _ => Algorithm::Random,
    };
    let no_backend_errno = annotations
        .get(NO_BACKENDS_ANNOTATION)
        .and_then(|v| ERRNOS.iter().find(|(name, _)| name == v))
        .map_or(111, |(_, errno)| *errno);
    let affinity_timeout = (spec.session_affinity == SessionAffinity::ClientIp).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .map_or(DEFAULT_AFFINITY_TIMEOUT, |t| t as u32)
    });
    let cluster_ips: Vec<IpAddr> = if spec.cluster_ips.is_empty() {
        spec.cluster_ip.iter().filter_map(|ip| ip.parse().ok()).collect()
    } else {
        spec.cluster_ips.iter().filter_map(|ip| ip.parse().ok()).collect()
    };
    let mut external: Vec<(IpAddr, FrontendKind)> =
        spec.external_ips.iter().filter_map(|ip| ip.parse().ok()).map(|ip| (ip, FrontendKind::ExternalIP)).collect();
    if spec.service_type == ServiceType::LoadBalancer {
        let ingress = service.status.iter().filter_map(|s| s.load_balancer.as_ref()).flat_map(|lb| &lb.ingress);
        // ipMode Proxy: the load balancer proxies to the node ports; its
        // address is left to it (kube-proxy programs nothing for it either).
        let vip = ingress.filter(|i| i.ip_mode.as_deref() != Some("Proxy")).filter_map(|i| i.ip.as_ref());
        external.extend(
            spec.load_balancer_ip
                .iter()
                .chain(vip)
                .filter_map(|ip| ip.parse().ok())
                .map(|ip| (ip, FrontendKind::LoadBalancer)),
        );
    }
    for port in &spec.ports {
        let Ok(service_port) = u16::try_from(port.port) else { continue };
        let reference = ServicePortRef {
            namespace: service.metadata.namespace.clone(),
            name: service.metadata.name.clone(),
            port_name: port.name.clone().unwrap_or_default(),
            protocol: port.protocol,
        };
        let health = match (port.protocol, annotations.get(HEALTH_ANNOTATION), annotations.get(UDP_HEALTH_ANNOTATION)) {
            (Protocol::Tcp, Some(v), _) => HealthCheck::parse(v).unwrap_or(HealthCheck::None),
            (Protocol::Tcp, None, _) => HealthCheck::Tcp,
            (Protocol::Udp, _, Some(v)) => HealthCheck::parse_udp(v).unwrap_or(HealthCheck::None),
            _ => HealthCheck::None,
        };
        let internal_local = spec.internal_traffic_policy == Some(TrafficPolicy::Local);
        let external_local = spec.external_traffic_policy == Some(TrafficPolicy::Local);
        let ranges = source_ranges(service).unwrap_or_default();
        let make = |address: IpAddr, port_number: u16, kind: FrontendKind, local: bool| Frontend {
            address,
            port: port_number,
            kind,
            service: reference.clone(),
            backends: {
                let own =
                    backends(own_slices, service, &reference, address.is_ipv4(), local.then_some(node.name.as_str()));
                if remote.is_empty() {
                    own
                } else {
                    // Traffic policy Local keeps a node's own endpoints: none of another cluster.
                    let theirs = remote.iter().filter(|_| !local).flat_map(|(cluster, slices)| {
                        let mut theirs = backends(slices, service, &reference, address.is_ipv4(), None);
                        theirs.iter_mut().for_each(|b| b.cluster = Some(cluster.to_string()));
                        theirs
                    });
                    merge_clusters(service, own, theirs.collect())
                }
            },
            affinity_timeout,
            algorithm,
            no_backend_errno,
            health: health.clone(),
            // kube-proxy restricts the load balancer's addresses, not node ports or cluster IPs.
            source_ranges: if kind == FrontendKind::LoadBalancer { ranges.clone() } else { Vec::new() },
        };
        for ip in &cluster_ips {
            out.push(make(*ip, service_port, FrontendKind::ClusterIP, internal_local));
        }
        for (ip, kind) in &external {
            out.push(make(*ip, service_port, *kind, external_local));
        }
        let node_ports = spec.service_type == ServiceType::NodePort
            || (spec.service_type == ServiceType::LoadBalancer
                && spec.allocate_load_balancer_node_ports != Some(false));
        if let Some(node_port) = port.node_port.and_then(|p| u16::try_from(p).ok()).filter(|_| node_ports) {
            for ip in &node.addresses {
                out.push(make(*ip, node_port, FrontendKind::NodePort, external_local));
            }
        }
    }
    out
}

/// The backends of one service port for one address family, as kube-proxy
/// chooses them: the EndpointSlice port of the same name and protocol, each
/// endpoint's first address; ready endpoints take new connections,
/// terminating ones only drain, unless no endpoint is ready: then the
/// terminating ones that still serve take new connections too. With
/// `local_node`, only that node's endpoints.
fn backends(
    slices: &[&EndpointSlice],
    service: &Service,
    port: &ServicePortRef,
    ipv4: bool,
    local_node: Option<&str>,
) -> Vec<Backend> {
    let publish_not_ready = service.spec.publish_not_ready_addresses == Some(true);
    let mut out = BTreeSet::new();
    // Terminating endpoints that still serve: kube-proxy's fallback when no endpoint is ready.
    let mut serving_terminating: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
    for slice in slices {
        let family_ok = match slice.address_type {
            AddressType::IPv4 => ipv4,
            AddressType::IPv6 => !ipv4,
            AddressType::Fqdn => false,
        };
        if !family_ok {
            continue;
        }
        let Some(target) = slice
            .ports
            .iter()
            .find(|p| p.name.clone().unwrap_or_default() == port.port_name && p.protocol == port.protocol)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            if local_node.is_some_and(|node| endpoint.node_name.as_deref() != Some(node)) {
                continue;
            }
            let Some(address) = endpoint.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else { continue };
            let conditions = &endpoint.conditions;
            let ready = conditions.ready.unwrap_or(true);
            let state = if conditions.terminating == Some(true) {
                // `serving` unset follows `ready`.
                if conditions.serving.unwrap_or(ready) {
                    serving_terminating.insert((address, target));
                }
                BackendState::Terminating
            } else if ready || publish_not_ready {
                BackendState::Active
            } else {
                continue;
            };
            out.insert(Backend {
                address,
                port: target,
                state,
                node_name: endpoint.node_name.clone(),
                zone: endpoint.zone.clone(),
                cluster: None,
                standby: false,
            });
        }
    }
    // One address:port once, as active if any slice says so.
    let mut unique: BTreeMap<(IpAddr, u16), Backend> = BTreeMap::new();
    for backend in out {
        unique
            .entry((backend.address, backend.port))
            .and_modify(|b| {
                if backend.state == BackendState::Active {
                    b.state = BackendState::Active;
                }
            })
            .or_insert(backend);
    }
    // No endpoint ready: new connections go to the terminating ones that
    // still serve, rather than nowhere (kube-proxy does the same).
    if !unique.values().any(|b| b.state == BackendState::Active) {
        for (key, backend) in unique.iter_mut() {
            if serving_terminating.contains(key) {
                backend.state = BackendState::Active;
            }
        }
    }
    unique.into_values().collect()
}

/// Reads a YAML stream of Services and EndpointSlices. Errors name the
/// document (by position, kind and name) and the field.
pub fn parse_stream(yaml: &str) -> Result<Vec<Object>, SpecError> {
    let mut out = Vec::new();
    for doc in weir_spec::split_documents(yaml)? {
        let object = parse_object(&doc.api_version, &doc.kind, &doc.text).map_err(|e| doc.locate(e))?;
        out.push(object);
    }
    Ok(out)
}
