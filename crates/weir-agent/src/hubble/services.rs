//! Which Service each end of a flow is: the Service whose frontend or
//! backend is that (address, port, protocol), as Hubble's Flow names it in
//! `source_service` and `destination_service`. The socket load balancer
//! translates a connection to its backend before the pod path sees a
//! packet, so a pod's flow to a Service shows the backend: its Service is
//! named from the backend's address and port. A backend of several
//! Services is named by the first (by namespace and name). Pure.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use weir_proto::flow;
use weir_service::k8s::Protocol;
use weir_service::{Frontend, FrontendKind};

/// (address, port, IP protocol number) → the Service.
pub type ServiceNames = HashMap<(IpAddr, u16, u8), Arc<flow::Service>>;

fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// The Services of `frontends` (containers' host ports are no Service).
pub fn service_names(frontends: &[Frontend]) -> ServiceNames {
    let mut sorted: Vec<&Frontend> = frontends.iter().filter(|f| f.kind != FrontendKind::HostPort).collect();
    sorted.sort_by(|a, b| (&a.service.namespace, &a.service.name).cmp(&(&b.service.namespace, &b.service.name)));
    let mut names = ServiceNames::new();
    for fe in sorted {
        let service =
            Arc::new(flow::Service { name: fe.service.name.clone(), namespace: fe.service.namespace.clone() });
        let proto = protocol_number(fe.service.protocol);
        let ends = std::iter::once((fe.address, fe.port)).chain(fe.backends.iter().map(|b| (b.address, b.port)));
        for (address, port) in ends {
            names.entry((address, port, proto)).or_insert_with(|| service.clone());
        }
    }
    names
}

/// The Service at (address, port, protocol), if any.
pub fn service_at(names: &ServiceNames, address: IpAddr, port: u16, protocol: u8) -> Option<flow::Service> {
    names.get(&(address, port, protocol)).map(|s| (**s).clone())
}
