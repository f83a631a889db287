//! What this cluster publishes for the others, in its own etcd: each node,
//! and (from one agent) the cluster's global shared services.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{GetOptions, PutOptions};

use super::{connect, MeshContext, MeshNode, MeshService, LEASE_TTL_SECS, NODES, RETRY, SERVICES, SYNCED};

/// How often the publishers check that the cluster's etcd still holds what they put there.
const CHECK: Duration = Duration::from_secs(5);

/// Keeps this node's key in its own cluster's etcd, re-publishing after a failure.
pub(super) async fn publish(context: Arc<MeshContext>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let config = &context.config;
    let key = format!("{NODES}{}/{}", config.name, context.node);
    let node = MeshNode {
        cluster: config.name.clone(),
        cluster_id: config.id,
        name: context.node.clone(),
        address: config.address,
        pod_cidr: config.pod_cidr,
    };
    let value = serde_json::to_string(&node).expect("a MeshNode serializes");
    loop {
        let attempt = async {
            let mut client = connect(&context.etcd).await.map_err(|e| e.to_string())?;
            let lease = client.lease_grant(LEASE_TTL_SECS, None).await.map_err(|e| e.to_string())?.id();
            client
                .put(key.as_str(), value.as_str(), Some(PutOptions::new().with_lease(lease)))
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(key, "published this node to the cluster's etcd for the mesh");
            let (mut keeper, mut answers) = client.lease_keep_alive(lease).await.map_err(|e| e.to_string())?;
            loop {
                // Often, so an etcd that came back empty (the lease unknown
                // there) is found within seconds and the node put again.
                tokio::time::sleep(CHECK).await;
                keeper.keep_alive().await.map_err(|e| e.to_string())?;
                match answers.message().await.map_err(|e| e.to_string())? {
                    Some(answer) if answer.ttl() > 0 => {}
                    _ => return Err::<(), String>("the node's lease is gone from the cluster's etcd".to_string()),
                }
            }
        };

        tokio::select! {
            result = attempt => if let Err(e) = result {
                tracing::warn!(error = e, "publishing this node for the mesh failed; retrying");
            },
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One writer per cluster shares its global services: the agent of the node
/// that runs the cluster's etcd (its first node). Every node holds the same
/// Services and EndpointSlices (from the store), so any one would do.
pub(super) fn publishes_services(context: &MeshContext) -> bool {
    let me = format!("//{}:", context.config.address);
    context.etcd.iter().any(|url| url.contains(&me))
}

/// Keeps `SERVICES<cluster>/` in this cluster's etcd equal to what its socket
/// load balancer holds as global and shared, after every change to it.
pub(super) async fn publish_services(context: Arc<MeshContext>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(services) = context.services.clone() else { return };
    let Ok(mut changes) = services.lock().map(|s| s.subscribe()) else { return };
    let prefix = format!("{SERVICES}{}/", context.config.name);
    loop {
        let attempt = async {
            let mut client = connect(&context.etcd).await?;
            let canary = format!("{SYNCED}{}", context.config.name);
            let mut canary_written = false;
            let mut held: Option<BTreeMap<String, Vec<u8>>> = None;
            loop {
                changes.borrow_and_update();
                let shared = services.lock().map(|s| s.global_shared()).unwrap_or_default();
                let wanted: BTreeMap<String, String> = shared
                    .into_iter()
                    .map(|(key, endpoint_slices)| {
                        let service = MeshService {
                            cluster: context.config.name.clone(),
                            namespace: key.namespace.clone(),
                            name: key.name.clone(),
                            endpoint_slices,
                        };
                        let value = serde_json::to_string(&service).expect("a MeshService serializes");
                        (format!("{prefix}{}/{}", key.namespace, key.name), value)
                    })
                    .collect();
                // Read once per connection; then what this loop wrote is what etcd holds.
                if held.is_none() {
                    let reply = client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())).await?;
                    held = Some(
                        reply
                            .kvs()
                            .iter()
                            .filter_map(|kv| Some((kv.key_str().ok()?.to_string(), kv.value().to_vec())))
                            .collect(),
                    );
                }
                let was = held.take().unwrap_or_default();
                for (key, value) in &wanted {
                    if was.get(key).map(Vec::as_slice) != Some(value.as_bytes()) {
                        client.put(key.as_str(), value.as_str(), None).await?;
                    }
                }
                for key in was.keys().filter(|k| !wanted.contains_key(*k)) {
                    client.delete(key.as_str(), None).await?;
                }
                held = Some(wanted.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect());
                if !canary_written {
                    // Everything is shared: other clusters may now drop what they
                    // read before that this cluster no longer shares.
                    let at =
                        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                    let value = serde_json::json!({"node": context.node, "unixSeconds": at}).to_string();
                    client.put(canary.as_str(), value, None).await?;
                    canary_written = true;
                }
                if let Ok(mut status) = context.status.lock() {
                    status.shared_services = Some(wanted.len());
                }
                tracing::debug!(services = wanted.len(), "this cluster's global services shared with the mesh");
                // The next change; meanwhile, every few seconds, the canary must
                // still be there: an etcd that came back empty is published again.
                loop {
                    tokio::select! {
                        changed = changes.changed() => {
                            if changed.is_err() {
                                return Ok(());
                            }
                            break;
                        }
                        _ = tokio::time::sleep(CHECK) => {
                            let there = client.get(canary.as_str(), Some(GetOptions::new().with_count_only())).await?;
                            if there.count() == 0 {
                                tracing::warn!("this cluster's sync canary is gone from its etcd; sharing every global service again");
                                held = None;
                                canary_written = false;
                                break;
                            }
                        }
                    }
                }
            }
        };
        tokio::select! {
            result = attempt => if let Err(e) = result {
                let e: etcd_client::Error = e;
                tracing::warn!(error = %e, "sharing the global services with the mesh failed; retrying");
            },
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
