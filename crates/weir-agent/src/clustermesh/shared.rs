//! Another cluster's global services as read from its store, kept per key:
//! a change to one service is applied from its watch event, without
//! reading the others again.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::SystemTime;

use ipnet::Ipv4Net;
use weir_service::k8s::EndpointSlice;
use weir_service::ObjectKey;

use super::status::MeshStatus;
use super::{MeshContext, MeshService, SERVICES};

/// What a remote cluster shares, as accepted here.
#[derive(Debug, Default)]
pub(super) struct RemoteServices {
    by_key: BTreeMap<String, (ObjectKey, Vec<EndpointSlice>)>,
    /// The remote cluster's pod CIDRs and node addresses: its backends must be inside.
    theirs: Vec<Ipv4Net>,
    /// Whether its sync canary is there: until it is, what was merged before stays.
    pub synced: bool,
}

impl RemoteServices {
    pub fn new(theirs: Vec<Ipv4Net>, synced: bool) -> Self {
        RemoteServices { by_key: BTreeMap::new(), theirs, synced }
    }

    /// A service's key was written: taken if it is valid, dropped (and logged) if not.
    pub fn put(&mut self, cluster: &str, key: &str, value: &[u8]) {
        match parse(cluster, key, value, &self.theirs) {
            Some(service) => self.by_key.insert(key.to_string(), service),
            None => self.by_key.remove(key),
        };
    }

    pub fn delete(&mut self, key: &str) {
        self.by_key.remove(key);
    }

    pub fn shared(&self) -> BTreeMap<ObjectKey, Vec<EndpointSlice>> {
        self.by_key.values().cloned().collect()
    }
}

/// A remote cluster's shared service, if its key and value agree and its
/// slices are valid (the others are logged), with the endpoints outside
/// the remote cluster's addresses removed.
fn parse(cluster: &str, key: &str, value: &[u8], theirs: &[Ipv4Net]) -> Option<(ObjectKey, Vec<EndpointSlice>)> {
    let service: MeshService = match serde_json::from_slice(value) {
        Ok(service) => service,
        Err(e) => {
            tracing::warn!(cluster, key, error = %e, "a remote global service is not what weir publishes; ignored");
            return None;
        }
    };
    let problem = if service.cluster != cluster
        || key != format!("{SERVICES}{cluster}/{}/{}", service.namespace, service.name)
    {
        Some("it names another cluster or service than its key".to_string())
    } else {
        service.endpoint_slices.iter().find_map(|s| weir_service::table::validate_slice(s).err()).map(|e| e.to_string())
    };
    if let Some(problem) = problem {
        tracing::warn!(cluster, key, problem, "a remote global service is refused");
        return None;
    }
    let mut slices = service.endpoint_slices;
    keep_theirs(cluster, key, &mut slices, theirs);
    Some((ObjectKey { namespace: service.namespace, name: service.name }, slices))
}

/// Keeps the endpoints whose addresses are all the remote cluster's (its
/// pod CIDRs and node addresses, `theirs`); the others are logged.
fn keep_theirs(cluster: &str, key: &str, slices: &mut [EndpointSlice], theirs: &[Ipv4Net]) {
    for slice in slices {
        slice.endpoints.retain(|e| {
            let inside = e
                .addresses
                .iter()
                .all(|a| a.parse::<Ipv4Addr>().is_ok_and(|a| theirs.iter().any(|n| n.contains(&a))));
            if !inside {
                tracing::warn!(cluster, key, addresses = ?e.addresses, "a remote backend outside its cluster's pod CIDRs and nodes is refused");
            }
            inside
        });
    }
}

/// Merges what `cluster` shares (read at `revision`) into this node's
/// global services, once its canary is there; notes it in `status` (the
/// caller holds its lock, so the liveness judge cannot come between).
pub(super) fn merge(
    context: &MeshContext,
    cluster: &str,
    services: &RemoteServices,
    revision: i64,
    status: &mut MeshStatus,
) {
    if let Some(remote) = status.remotes.get_mut(cluster) {
        remote.synced = services.synced;
    }
    let Some(table) = &context.services else { return };
    if !services.synced {
        tracing::info!(
            cluster,
            "remote cluster has not finished publishing its services (no sync canary); keeping what was read before"
        );
        return;
    }
    let shared = services.shared();
    let (count, backends) = (shared.len(), shared.values().flatten().map(|s| s.endpoints.len()).sum());
    let merged = table
        .lock()
        .map_err(|_| "poisoned".to_string())
        .and_then(|mut s| s.set_remote(cluster, shared).map_err(|e| e.to_string()));
    match merged {
        Ok(()) => {
            tracing::debug!(cluster, revision, services = count, backends, "merged a remote cluster's global services");
            if let Some(remote) = status.remotes.get_mut(cluster) {
                remote.global_services = count;
                remote.backends = backends;
                remote.applied_revision = revision;
                remote.applied_at = Some(SystemTime::now());
            }
        }
        Err(e) => {
            tracing::warn!(
                cluster,
                error = e,
                "merging a remote cluster's global services failed; retried on its next change"
            );
            status.failed(cluster, format!("merging its global services: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_backend_outside_its_clusters_pod_cidrs_and_nodes_is_refused() {
        let slice = |addresses: &[&str]| -> EndpointSlice {
            let endpoints: String = addresses.iter().map(|a| format!("  - {{addresses: [\"{a}\"]}}\n")).collect();
            let yaml = format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: api-1, namespace: shop, labels: {{kubernetes.io/service-name: api}}}}\naddressType: IPv4\nendpoints:\n{endpoints}"
            );
            serde_yaml::from_str(&yaml).expect("a slice")
        };
        let theirs: Vec<Ipv4Net> = vec!["10.245.0.0/24".parse().expect("net"), "172.30.0.5/32".parse().expect("net")];
        // A pod of theirs, one of their nodes, one of ours, somewhere else, and a spelling that is no IPv4 address.
        let mut slices = vec![slice(&["10.245.0.7", "172.30.0.5", "10.244.0.2", "192.0.2.1", "::ffff:10.245.0.7"])];
        keep_theirs("west", "k", &mut slices, &theirs);
        let kept: Vec<&str> = slices[0].endpoints.iter().map(|e| e.addresses[0].as_str()).collect();
        assert_eq!(kept, ["10.245.0.7", "172.30.0.5"]);
    }

    #[test]
    fn a_service_changed_or_deleted_by_key_changes_only_itself_and_a_bad_one_is_dropped() {
        let value = |name: &str, cluster: &str| {
            format!(
                r#"{{"cluster":"{cluster}","namespace":"shop","name":"{name}","endpointSlices":[{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{{"name":"{name}-1","namespace":"shop","labels":{{"kubernetes.io/service-name":"{name}"}}}},"addressType":"IPv4","endpoints":[{{"addresses":["10.245.0.7"]}}]}}]}}"#
            )
        };
        let key = |name: &str| format!("{SERVICES}west/shop/{name}");
        let mut services = RemoteServices::new(vec!["10.245.0.0/24".parse().expect("net")], true);
        services.put("west", &key("api"), value("api", "west").as_bytes());
        services.put("west", &key("db"), value("db", "west").as_bytes());
        assert_eq!(services.shared().len(), 2);
        services.delete(&key("db"));
        assert_eq!(services.shared().keys().map(|k| k.name.as_str()).collect::<Vec<_>>(), ["api"]);
        // A value naming another cluster replaces nothing: the key goes.
        services.put("west", &key("api"), value("api", "east").as_bytes());
        assert!(services.shared().is_empty());
    }
}
