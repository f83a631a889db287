//! VIPs of Kubernetes Services: a Service of `type: LoadBalancer` with
//! `spec.loadBalancerClass: weir.dev/xdp` is served by the XDP load
//! balancer, one VIP per (LoadBalancer address, port). Its addresses are
//! the Service's own (`status.loadBalancer.ingress[].ip`, else
//! `spec.loadBalancerIP`); its reals are the nodes its ready endpoints run
//! on, each weighted by how many run there, because a node that receives
//! the encapsulated packet strips it and serves the flow through its own
//! north-south translation (the Service's LoadBalancer frontend), replying
//! to the client directly. This is Cilium's standalone load balancer in
//! front of its nodes, and Katran in front of a Kubernetes cluster.
//!
//! The annotation `weir.dev/xdp-forwarding` chooses IPIP (the default) or
//! GUE; the Service's health-check annotation (`weir.dev/health-check`,
//! `weir.dev/udp-health-check`) is the VIP's. An explicit XdpLoadBalancer
//! document and the Services share one load balancer: a Service VIP that
//! collides with a document's is left out, and said so.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use weir_service::k8s::{Protocol, ServiceType};
use weir_service::table::{BackendState, FrontendKind};
use weir_service::{ClusterState, NodeContext};

use crate::hash::HashInput;
use crate::health::Probe;
use crate::spec::{Forwarding, LoadBalancer, Real, RealKey, Vip, VipKey, MAX_WEIGHT};
use crate::{MAX_REALS, MAX_VIPS};

/// The `loadBalancerClass` this load balancer implements.
pub const LOAD_BALANCER_CLASS: &str = "weir.dev/xdp";
/// IPIP (default) or GUE: how the load balancer reaches the nodes.
pub const FORWARDING_ANNOTATION: &str = "weir.dev/xdp-forwarding";

/// The VIPs the cluster's Services ask for, and what could not be served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceVips {
    pub vips: Vec<Vip>,
    /// One line each: the Service and why (an endpoint on an unknown node,
    /// a bad annotation, an SCTP port…).
    pub problems: Vec<String>,
}

/// The nodes of the cluster and their addresses, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterNodes {
    pub v4: BTreeMap<String, std::net::Ipv4Addr>,
    pub v6: BTreeMap<String, std::net::Ipv6Addr>,
}

impl ClusterNodes {
    fn address(&self, node: &str, ipv6: bool) -> Option<IpAddr> {
        if ipv6 {
            self.v6.get(node).copied().map(IpAddr::V6)
        } else {
            self.v4.get(node).copied().map(IpAddr::V4)
        }
    }
}

/// Every VIP `cluster`'s Services of class weir.dev/xdp ask for.
pub fn service_vips(cluster: &ClusterState, nodes: &ClusterNodes) -> ServiceVips {
    let mut out = ServiceVips::default();
    let context = NodeContext::default();
    for (key, service) in cluster.services() {
        if service.spec.service_type != ServiceType::LoadBalancer
            || service.spec.load_balancer_class.as_deref() != Some(LOAD_BALANCER_CLASS)
        {
            continue;
        }
        let forwarding = match service.metadata.annotations.get(FORWARDING_ANNOTATION).map(String::as_str) {
            None | Some("IPIP") => Forwarding::Ipip,
            Some("GUE") => Forwarding::Gue,
            Some(other) => {
                out.problems.push(format!(
                    "Service {key}: annotation {FORWARDING_ANNOTATION}: {other:?} must be IPIP or GUE; not served"
                ));
                continue;
            }
        };
        let frontends = cluster.service_frontends(&context, key);
        let mut lb_frontends = frontends.iter().filter(|f| f.kind == FrontendKind::LoadBalancer).peekable();
        if lb_frontends.peek().is_none() {
            out.problems.push(format!(
                "Service {key}: no LoadBalancer address yet (set status.loadBalancer.ingress[].ip or spec.loadBalancerIP)"
            ));
            continue;
        }
        for frontend in lb_frontends {
            let proto = match frontend.service.protocol {
                Protocol::Tcp => 6,
                Protocol::Udp => 17,
                Protocol::Sctp => {
                    out.problems.push(format!(
                        "Service {}: port {}/SCTP: the XDP load balancer balances TCP and UDP only",
                        frontend.service, frontend.port
                    ));
                    continue;
                }
            };
            let ipv6 = frontend.address.is_ipv6();
            // What a node hands its north-south frontend: with
            // externalTrafficPolicy Local, only its own endpoints. So each
            // node's endpoints are read as that node sees the frontend, and
            // a node with none is no real. This cluster's endpoints only:
            // a ClusterMesh's remote ones are not behind these nodes.
            let mut per_node: BTreeMap<IpAddr, u32> = BTreeMap::new();
            let local = |b: &&weir_service::Backend| b.state == BackendState::Active && b.cluster.is_none();
            for backend in frontend.backends.iter().filter(local) {
                match backend.node_name.as_deref() {
                    None => out.problems.push(format!(
                        "Service {}: endpoint {} names no nodeName: no node to send it to",
                        frontend.service, backend.address
                    )),
                    Some(node) if nodes.address(node, ipv6).is_none() => out.problems.push(format!(
                        "Service {}: endpoint {} is on node {node}, whose IPv{} address this load balancer does not know",
                        frontend.service,
                        backend.address,
                        if ipv6 { 6 } else { 4 }
                    )),
                    Some(_) => {}
                }
            }
            let names = if ipv6 { nodes.v6.keys().collect::<Vec<_>>() } else { nodes.v4.keys().collect() };
            for node in names {
                let Some(address) = nodes.address(node, ipv6) else { continue };
                let seen = NodeContext { name: node.clone(), addresses: Vec::new() };
                let same = |f: &&weir_service::Frontend| {
                    f.kind == FrontendKind::LoadBalancer
                        && (f.address, f.port, f.service.protocol)
                            == (frontend.address, frontend.port, frontend.service.protocol)
                };
                let there = cluster.service_frontends(&seen, key);
                let Some(as_seen) = there.iter().find(same) else { continue };
                let count =
                    as_seen.backends.iter().filter(local).filter(|b| b.node_name.as_deref() == Some(node)).count();
                if count > 0 {
                    per_node.insert(address, u32::try_from(count).unwrap_or(MAX_WEIGHT).min(MAX_WEIGHT));
                }
            }
            let reals = per_node
                .into_iter()
                .map(|(address, weight)| Real { key: RealKey { address, port: 0 }, weight, quic_server_id: None })
                .collect();
            out.vips.push(Vip {
                name: vip_name(&frontend.service.namespace, &frontend.service.name, frontend.port, proto),
                key: VipKey { address: frontend.address, port: frontend.port, proto },
                forwarding,
                hash: HashInput::ClientAddressAndPort,
                lru_bypass: false,
                local: false,
                quic: false,
                reals,
                source_routes: Vec::new(),
                // Through the node, as a client's connection goes.
                probe: Probe { check: frontend.health.clone(), port: 0 },
            });
        }
    }
    out.vips.sort_by_key(|v| v.key);
    let mut kept: Vec<Vip> = Vec::with_capacity(out.vips.len());
    for vip in out.vips {
        match kept.last() {
            Some(first) if first.key == vip.key => out.problems.push(format!(
                "Service VIP {}: its address and port are Service VIP {}'s; not served",
                vip.name, first.name
            )),
            _ => kept.push(vip),
        }
    }
    out.vips = kept;
    out
}

/// A Service VIP's name: `NAMESPACE/NAME:PORT/PROTOCOL` (no document VIP
/// can take it: theirs are DNS labels).
pub fn vip_name(namespace: &str, name: &str, port: u16, proto: u8) -> String {
    format!("{namespace}/{name}:{port}/{}", crate::spec::protocol_name(proto))
}

/// The load balancer as the kernel gets it: the document's VIPs (all of
/// them: it was validated whole), then the Services' that fit (a key the
/// document holds, the VIP limit, the reals limit). Returns what was left out.
pub fn merge(document: &LoadBalancer, services: &ServiceVips) -> (LoadBalancer, Vec<String>) {
    let mut merged = document.clone();
    let mut left_out = services.problems.clone();
    let mut reals: BTreeSet<RealKey> = merged.vips.iter().flat_map(|v| v.reals.iter().map(|r| r.key)).collect();
    for vip in &services.vips {
        if let Some(other) = merged.vips.iter().find(|v| v.key == vip.key) {
            left_out.push(format!(
                "Service VIP {}: its address and port are VIP {:?} of the XdpLoadBalancer document",
                vip.name, other.name
            ));
            continue;
        }
        if merged.vips.len() >= MAX_VIPS {
            left_out.push(format!("Service VIP {}: the load balancer holds {MAX_VIPS} VIPs at most", vip.name));
            continue;
        }
        let new: BTreeSet<RealKey> = vip.reals.iter().map(|r| r.key).filter(|k| !reals.contains(k)).collect();
        if reals.len() + new.len() > MAX_REALS - 1 {
            left_out.push(format!("Service VIP {}: the load balancer holds {} reals at most", vip.name, MAX_REALS - 1));
            continue;
        }
        reals.extend(new);
        merged.vips.push(vip.clone());
    }
    (merged, left_out)
}
