//! Host ports: a container's port published on this node's addresses (the
//! CNI `portMappings` capability, `podman run -p 8080:80`). Each mapping is
//! a frontend of its own kind beside NodePort, translated by the same
//! datapath, but only on this node's addresses (or the one `hostIP` names)
//! and on any port, not only the node-port range. Pure.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::k8s::Protocol;
use crate::table::{Algorithm, Backend, BackendState, Frontend, FrontendKind, HealthCheck, ServicePortRef};

/// One published port of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HostPort {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
    /// Only this address of the node; every address of it when None.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
}

/// A mapping that cannot be installed, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("port mapping {mapping}: {why}")]
pub struct HostPortError {
    pub mapping: String,
    pub why: String,
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:")?,
            None => {}
        }
        write!(f, "{}:{}/{}", self.host_port, self.container_port, self.protocol.as_str().to_lowercase())
    }
}

/// The container a host port leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPortOwner<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// The node side of its veth: one container per veth, so it keeps two
    /// containers of the same name apart.
    pub host_interface: &'a str,
    pub address: IpAddr,
}

/// The service port a mapping is held as: a name no Service can have (a
/// Service's name is a DNS label), so it never shares a Service's tables,
/// and says whose it is in a conflict ("default/container web on
/// wcni...:hostPort 8080").
pub fn owner_ref(owner: &HostPortOwner<'_>, mapping: &HostPort) -> ServicePortRef {
    let port_name = match mapping.host_ip {
        Some(ip) => format!("hostPort {}", std::net::SocketAddr::new(ip, mapping.host_port)),
        None => format!("hostPort {}", mapping.host_port),
    };
    ServicePortRef {
        namespace: owner.namespace.to_string(),
        name: format!("container {} on {}", owner.name, owner.host_interface),
        port_name,
        protocol: mapping.protocol,
    }
}

/// Whether a frontend is a container's host port (and not a Service's).
pub fn is_host_port(reference: &ServicePortRef) -> bool {
    reference.name.starts_with("container ") && reference.port_name.starts_with("hostPort ")
}

/// The frontends of one container's mappings on a node with `addresses`:
/// each mapping on each address of the container's family (or its
/// `hostIP`), to the container's address and port. A mapping that cannot
/// be installed is an error naming it; two mappings of the container on
/// the same address, port and protocol are one too.
pub fn frontends(
    owner: &HostPortOwner<'_>,
    mappings: &[HostPort],
    addresses: &[IpAddr],
) -> Result<Vec<Frontend>, HostPortError> {
    let mut out: Vec<Frontend> = Vec::new();
    for mapping in mappings {
        let error = |why: String| HostPortError { mapping: mapping.to_string(), why };
        if mapping.host_port == 0 || mapping.container_port == 0 {
            return Err(error("ports run from 1 to 65535".into()));
        }
        if mapping.protocol == Protocol::Sctp {
            return Err(error("SCTP is not load-balanced by Weir; tcp or udp".into()));
        }
        let on: Vec<IpAddr> = match mapping.host_ip {
            Some(ip) if ip.is_unspecified() => addresses.to_vec(),
            Some(ip) if addresses.contains(&ip) => vec![ip],
            Some(ip) => {
                let have: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
                return Err(error(format!(
                    "hostIP {ip} is not an address of this node (its addresses: {})",
                    if have.is_empty() { "none".to_string() } else { have.join(", ") }
                )));
            }
            None => addresses.to_vec(),
        };
        let on: Vec<IpAddr> = on.into_iter().filter(|a| a.is_ipv4() == owner.address.is_ipv4()).collect();
        if on.is_empty() {
            return Err(error(format!("this node has no address of {}'s family to publish it on", owner.address)));
        }
        let reference = owner_ref(owner, mapping);
        for address in on {
            if let Some(other) = out
                .iter()
                .find(|f| f.address == address && f.port == mapping.host_port && f.service.protocol == mapping.protocol)
            {
                return Err(error(format!("{address}:{} is also {}", mapping.host_port, other.service)));
            }
            out.push(Frontend {
                address,
                port: mapping.host_port,
                kind: FrontendKind::HostPort,
                service: reference.clone(),
                backends: vec![Backend {
                    address: owner.address,
                    port: mapping.container_port,
                    state: BackendState::Active,
                    node_name: None,
                    zone: None,
                    cluster: None,
                    standby: false,
                }],
                affinity_timeout: None,
                algorithm: Algorithm::Random,
                // A refused connection, as with no listener on the host.
                no_backend_errno: 111,
                health: HealthCheck::None,
                source_ranges: Vec::new(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> HostPortOwner<'static> {
        HostPortOwner {
            namespace: "default",
            name: "web",
            host_interface: "wcni0123",
            address: "10.80.0.5".parse().expect("valid"),
        }
    }

    fn mapping(host_port: u16, container_port: u16, protocol: Protocol, host_ip: Option<&str>) -> HostPort {
        HostPort { host_port, container_port, protocol, host_ip: host_ip.map(|ip| ip.parse().expect("valid")) }
    }

    fn addresses() -> Vec<IpAddr> {
        ["192.0.2.10", "198.51.100.7", "2001:db8::1"].iter().map(|a| a.parse().expect("valid")).collect()
    }

    #[test]
    fn a_mapping_is_published_on_every_node_address_of_the_containers_family() {
        let got = frontends(&owner(), &[mapping(8082, 80, Protocol::Tcp, None)], &addresses()).expect("valid");
        let on: Vec<String> = got.iter().map(|f| format!("{}:{}", f.address, f.port)).collect();
        assert_eq!(on, ["192.0.2.10:8082", "198.51.100.7:8082"]);
        assert!(got.iter().all(|f| f.kind == FrontendKind::HostPort
            && f.backends.len() == 1
            && f.backends[0].address == owner().address
            && f.backends[0].port == 80));
        assert_eq!(got[0].service.to_string(), "default/container web on wcni0123:hostPort 8082");
        assert!(is_host_port(&got[0].service));
    }

    #[test]
    fn host_ip_limits_a_mapping_to_that_address_and_must_be_the_nodes() {
        let got = frontends(&owner(), &[mapping(53, 5353, Protocol::Udp, Some("198.51.100.7"))], &addresses())
            .expect("valid");
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].address.to_string().as_str(), got[0].service.protocol), ("198.51.100.7", Protocol::Udp));
        let all = frontends(&owner(), &[mapping(53, 53, Protocol::Udp, Some("0.0.0.0"))], &addresses()).expect("valid");
        assert_eq!(all.len(), 2);
        let err = frontends(&owner(), &[mapping(80, 80, Protocol::Tcp, Some("203.0.113.1"))], &addresses())
            .expect_err("not the node's");
        assert!(err.to_string().contains("hostIP 203.0.113.1 is not an address of this node"), "{err}");
        assert!(err.to_string().starts_with("port mapping 203.0.113.1:80:80/tcp"), "{err}");
    }

    #[test]
    fn bad_and_clashing_mappings_are_named() {
        let err =
            |mappings: &[HostPort]| frontends(&owner(), mappings, &addresses()).expect_err("an error").to_string();
        assert!(err(&[mapping(0, 80, Protocol::Tcp, None)]).contains("1 to 65535"));
        assert!(err(&[mapping(80, 80, Protocol::Sctp, None)]).contains("SCTP"));
        let twice = err(&[mapping(80, 80, Protocol::Tcp, None), mapping(80, 81, Protocol::Tcp, Some("192.0.2.10"))]);
        assert!(twice.contains("192.0.2.10:80 is also default/container web on wcni0123:hostPort 80"), "{twice}");
        // The same port over both protocols is two mappings, not a clash.
        let both = [mapping(80, 80, Protocol::Tcp, None), mapping(80, 80, Protocol::Udp, None)];
        assert_eq!(frontends(&owner(), &both, &addresses()).expect("valid").len(), 4);
        assert!(frontends(&owner(), &[mapping(80, 80, Protocol::Tcp, None)], &[]).is_err(), "no address");
    }
}
