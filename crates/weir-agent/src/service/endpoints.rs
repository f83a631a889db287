//! The `Endpoints` service: containers the CNI plugin hands over, their
//! published ports on the socket load balancer and their identity and
//! policy on the pod path.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use weir_proto::agent::v1 as pb;

use super::convert::*;
use super::AgentState;

/// The `Endpoints` service, on the agent's state.
#[derive(Debug, Clone)]
pub struct EndpointsApi(pub Arc<AgentState>);

#[tonic::async_trait]
impl pb::endpoints_server::Endpoints for EndpointsApi {
    async fn endpoint_add(
        &self,
        request: Request<pb::EndpointAddRequest>,
    ) -> Result<Response<pb::EndpointAddResponse>, Status> {
        let started = std::time::Instant::now();
        let request = request.into_inner();
        let record = crate::cni_endpoints::record_of(&request, &self.0.desired.node)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let veth = record.host_interface.clone();
        let netns = record.netns.clone();
        // Host ports first: a port someone holds refuses the endpoint before anything else changes.
        let published = match (&self.0.services, record.host_ports.is_empty()) {
            (Err(why), false) => {
                return Err(Status::failed_precondition(format!(
                    "port mappings need the socket load balancer, which is unavailable on this node: {why}"
                )))
            }
            (Err(_), true) => None,
            (Ok(_), _) => {
                let (container, veth) = (record.clone(), veth.clone());
                Some(self.0.with_services(move |s| s.publish(&veth, Some(&container)).map_err(service_status)).await?)
            }
        };
        let added = self.0.with_netpolicy(move |p| p.add_cni_endpoint(record).map_err(netpolicy_status)).await;
        match (added, published) {
            (Ok(identity), _) => {
                tracing::info!(
                    veth,
                    identity,
                    took_us = started.elapsed().as_micros() as u64,
                    "a CNI endpoint is served"
                );
                tokio::spawn(learn_container(self.0.clone(), veth, netns));
                Ok(Response::new(pb::EndpointAddResponse { identity }))
            }
            (Err(status), Some(previous)) => {
                let undone =
                    self.0.with_services(move |s| s.restore_host_ports(&veth, previous).map_err(service_status)).await;
                if let Err(e) = undone {
                    tracing::error!(error = %e, "putting a refused endpoint's host ports back failed");
                }
                Err(status)
            }
            (Err(status), None) => Err(status),
        }
    }

    async fn endpoint_delete(
        &self,
        request: Request<pb::EndpointDeleteRequest>,
    ) -> Result<Response<pb::EndpointDeleteResponse>, Status> {
        let veth = request.into_inner().host_interface;
        if self.0.services.is_ok() {
            let veth = veth.clone();
            self.0.with_services(move |s| s.publish(&veth, None).map_err(service_status)).await?;
        }
        let existed = self.0.with_netpolicy(move |p| p.delete_cni_endpoint(&veth).map_err(netpolicy_status)).await?;
        Ok(Response::new(pb::EndpointDeleteResponse { existed }))
    }

    async fn endpoint_list(
        &self,
        _: Request<pb::EndpointListRequest>,
    ) -> Result<Response<pb::EndpointListResponse>, Status> {
        let records = self.0.with_netpolicy(|p| Ok(p.cni_endpoints())).await?;
        let endpoints = records
            .into_iter()
            .map(|r| {
                let attachment = r.cni_attachment.unwrap_or(crate::pods::CniAttachment {
                    network: String::new(),
                    container_id: String::new(),
                    ifname: String::new(),
                    podman_labels_read: false,
                });
                pb::EndpointAttachment {
                    host_interface: r.host_interface,
                    network: attachment.network,
                    container_id: attachment.container_id,
                    ifname: attachment.ifname,
                    chained: r.chained,
                }
            })
            .collect();
        Ok(Response::new(pb::EndpointListResponse { endpoints }))
    }

    async fn endpoint_get(
        &self,
        request: Request<pb::EndpointGetRequest>,
    ) -> Result<Response<pb::EndpointGetResponse>, Status> {
        let veth = request.into_inner().host_interface;
        let record = self.0.with_netpolicy(move |p| Ok(p.cni_endpoint(&veth))).await?;
        Ok(Response::new(record.map_or_else(pb::EndpointGetResponse::default, |r| pb::EndpointGetResponse {
            found: true,
            namespace: r.namespace,
            name: r.name,
            ip: r.ip.to_string(),
            cgroup: r.cgroup.display().to_string(),
        })))
    }
}

/// Learns what ADD could not say of the container on `veth` (in `netns`),
/// once it has a process: its cgroup (runtime security and profiles name
/// its processes from then on) and, when podman runs it, podman's labels
/// for it (its identity and policies follow them). Gives up after
/// [`crate::cni_cgroups::LEARN_FOR`], or as soon as the endpoint is gone.
pub async fn learn_container(state: Arc<AgentState>, veth: String, netns: String) {
    let started = tokio::time::Instant::now();
    let mut pauses = crate::cni_cgroups::pauses();
    loop {
        let (v, ns) = (veth.clone(), netns.clone());
        let current = state.with_netpolicy(move |p| Ok(p.cni_endpoint(&v).filter(|r| r.netns == ns))).await;
        let Ok(Some(record)) = current else { return };
        let cgroup_known = !record.cgroup.as_os_str().is_empty() || learn_cgroup(&state, &veth, &netns).await;
        let mut podman_pending = record.cni_attachment.as_ref().is_some_and(|a| !a.podman_labels_read);
        if let Some(attachment) = record.cni_attachment.as_ref().filter(|_| podman_pending) {
            let (ns, id) = (netns.clone(), attachment.container_id.clone());
            let found = tokio::task::spawn_blocking(move || crate::cni_podman::find(&ns, &id)).await.ok().flatten();
            match found {
                // Failing (podman busy past its time, say), it is asked again at the next look.
                Some(container) => podman_pending = !learn_podman_labels(&state, &veth, &netns, &container).await,
                // A container in a cgroup of its own has its conmon by now: none, it is not podman's.
                None if cgroup_known => {
                    tracing::debug!(veth, netns, "no podman conmon runs this CNI container: not podman's");
                    podman_pending = false;
                }
                None => {}
            }
        }
        if cgroup_known && !podman_pending {
            return;
        }
        if started.elapsed() >= crate::cni_cgroups::LEARN_FOR {
            if !cgroup_known {
                tracing::warn!(
                    veth,
                    netns,
                    "no cgroup of this CNI container's own found: its events and profiles are not named"
                );
            }
            if podman_pending {
                tracing::warn!(veth, netns, "no podman conmon of this CNI container found: no podman labels read");
            }
            return;
        }
        tokio::time::sleep(pauses.next().unwrap_or(std::time::Duration::from_secs(2))).await;
    }
}

/// Looks for the cgroup of the container on `veth` once and records it;
/// returns whether it found it.
async fn learn_cgroup(state: &Arc<AgentState>, veth: &str, netns: &str) -> bool {
    let (cgroup2, ns) = (state.config.cgroup2.clone(), netns.to_string());
    let found =
        tokio::task::spawn_blocking(move || crate::cni_cgroups::container_cgroup(&ns, &cgroup2)).await.ok().flatten();
    let Some(cgroup) = found else { return false };
    let (v, ns, c) = (veth.to_string(), netns.to_string(), cgroup.clone());
    match state.with_netpolicy(move |p| p.set_cni_cgroup(&v, &ns, &c).map_err(netpolicy_status)).await {
        Ok(true) => {
            tracing::info!(veth, cgroup = %cgroup.display(), "a CNI container's cgroup");
            if state.runtime.is_ok() {
                let refreshed = state.with_runtime(|r| r.refresh_pods().map_err(runtime_status)).await;
                if let Err(e) = refreshed {
                    tracing::warn!(veth, error = %e, "installing the RuntimePolicies again for a CNI container");
                }
            }
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(veth, error = %e, "recording a CNI container's cgroup"),
    }
    true
}

/// Reads podman's labels for `container` and gives them to the endpoint on
/// `veth`, under the labels ADD gave it (which win); returns whether that
/// is done. Failing, the endpoint keeps the labels it has: ADD is long
/// over, nothing is refused.
async fn learn_podman_labels(
    state: &Arc<AgentState>,
    veth: &str,
    netns: &str,
    container: &crate::cni_podman::PodmanContainer,
) -> bool {
    let podman = match crate::cni_podman::labels(container).await {
        Ok(labels) => labels,
        Err(e) => {
            tracing::warn!(veth, container = container.id, error = %e, "reading a podman container's labels");
            return false;
        }
    };
    let (labels, skipped) = crate::cni_podman::merge(&Default::default(), podman);
    for (key, value) in skipped {
        tracing::warn!(veth, key, value, "a podman label that could not be a Kubernetes label is left out");
    }
    let (v, ns) = (veth.to_string(), netns.to_string());
    match state.with_netpolicy(move |p| p.set_cni_podman_labels(&v, &ns, labels).map_err(netpolicy_status)).await {
        Ok(Some(identity)) => tracing::info!(veth, container = container.id, identity, "a podman container's labels"),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(veth, error = %e, "giving a CNI endpoint podman's labels");
            return false;
        }
    }
    true
}

/// Learns what is still unknown of the CNI endpoints (an agent restarted
/// before it learned it): their cgroups, podman's labels.
pub async fn learn_unfinished_endpoints(state: Arc<AgentState>) {
    let Ok(records) = state.with_netpolicy(|p| Ok(p.cni_endpoints())).await else { return };
    let unfinished = records.into_iter().filter(|r| {
        r.cgroup.as_os_str().is_empty() || r.cni_attachment.as_ref().is_some_and(|a| !a.podman_labels_read)
    });
    for record in unfinished {
        tokio::spawn(learn_container(state.clone(), record.host_interface, record.netns));
    }
}
