//! Containers the CNI plugin handed to this agent (`weir-cni` ADD): pods of
//! this node that no pods file names. Each is one JSON file in
//! `<state dir>/cni-endpoints/`, named by its node-side veth, written before
//! the kernel learns of it: an agent restarted keeps serving them.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use weir_proto::agent::v1 as pb;
use weir_service::hostport::HostPort;
use weir_service::k8s::Protocol;

use crate::pods::{self, PodRecord};

#[derive(Debug, thiserror::Error)]
pub enum CniEndpointError {
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The endpoints recorded in `state_dir`, read without changing anything
/// (none when there are none, or the directory cannot be read): who is in
/// which cgroup, for runtime security and profiles.
pub fn read_records(state_dir: &Path) -> Vec<PodRecord> {
    let dir = state_dir.join("cni-endpoints");
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter_map(|p| serde_json::from_slice(&std::fs::read(p).ok()?).ok())
        .collect()
}

/// The node-side veths of the endpoints recorded in `state_dir` that are
/// still there: an agent that starts again serves them from its first
/// attach, so a restart leaves their datapath in place.
pub fn present_veths(state_dir: &Path) -> Vec<String> {
    read_records(state_dir)
        .into_iter()
        .map(|r| r.host_interface)
        .filter(|veth| weir_bpf::datapath::ifindex(veth).is_ok())
        .collect()
}

/// The endpoints, by node-side veth.
#[derive(Debug)]
pub struct CniEndpoints {
    dir: PathBuf,
    records: BTreeMap<String, PodRecord>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CniEndpointError + '_ {
    move |source| CniEndpointError::Io { path: path.to_path_buf(), source }
}

/// A veth name the kernel would take (and a safe file name).
fn valid_interface(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// A DNS-label-like name for the endpoint's namespace and pod name.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The record an ADD asks for, checked field by field.
pub fn record_of(request: &pb::EndpointAddRequest, node: &str) -> Result<PodRecord, CniEndpointError> {
    let invalid = |what: String| Err(CniEndpointError::Invalid(what));
    if !valid_interface(&request.host_interface) {
        return invalid(format!("host_interface {:?}: not an interface name", request.host_interface));
    }
    for (field, value) in [("namespace", &request.namespace), ("name", &request.name)] {
        if !valid_name(value) {
            return invalid(format!("{field} {value:?}: letters, digits, '-', '_', '.' (1 to 253)"));
        }
    }
    let ip: Ipv4Addr = match request.ip.parse() {
        Ok(ip) => ip,
        Err(_) => return invalid(format!("ip {:?}: not an IPv4 address", request.ip)),
    };
    let ipv6 = match request.ipv6.as_str() {
        "" => None,
        text => match text.parse::<Ipv6Addr>() {
            // A pod's address routes off its veth: no link-local, multicast, loopback or unspecified one.
            Ok(ip)
                if !(ip.is_unspecified()
                    || ip.is_loopback()
                    || ip.is_multicast()
                    || (ip.segments()[0] & 0xffc0) == 0xfe80
                    || ip.to_ipv4_mapped().is_some()) =>
            {
                Some(ip)
            }
            _ => return invalid(format!("ipv6 {text:?}: not a routable IPv6 unicast address")),
        },
    };
    if pods::parse_mac(&request.container_mac).is_none() {
        return invalid(format!("container_mac {:?}: not a MAC address", request.container_mac));
    }
    let mut host_ports = Vec::new();
    for mapping in &request.port_mappings {
        let port = |field: &str, port: u32| match u16::try_from(port) {
            Ok(port) if port != 0 => Ok(port),
            _ => Err(CniEndpointError::Invalid(format!("port_mappings: {field} {port}: not a port (1 to 65535)"))),
        };
        let protocol = match mapping.protocol.to_ascii_lowercase().as_str() {
            "tcp" | "" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => return invalid(format!("port_mappings: protocol {other:?}: tcp or udp")),
        };
        let host_ip = match mapping.host_ip.as_str() {
            "" => None,
            text => match text.parse::<std::net::IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => return invalid(format!("port_mappings: host_ip {text:?}: not an IP address")),
            },
        };
        host_ports.push(HostPort {
            host_port: port("host_port", mapping.host_port)?,
            container_port: port("container_port", mapping.container_port)?,
            protocol,
            host_ip,
        });
    }
    Ok(PodRecord {
        namespace: request.namespace.clone(),
        name: request.name.clone(),
        labels: request.labels.clone().into_iter().collect(),
        cgroup: PathBuf::new(),
        ip,
        ipv6,
        host_interface: request.host_interface.clone(),
        netns: request.netns.clone(),
        node: node.to_string(),
        namespace_labels: BTreeMap::new(),
        ports: Vec::new(),
        pod_mac: Some(request.container_mac.to_lowercase()),
        host_ports,
        // The runtime tells a CNI plugin no owners.
        generate_name: None,
        owner_references: Vec::new(),
        chained: request.chained,
        cni_attachment: Some(pods::CniAttachment {
            network: request.network.clone(),
            container_id: request.container_id.clone(),
            ifname: request.ifname.clone(),
            podman_labels_read: false,
        }),
    })
}

impl CniEndpoints {
    /// Every endpoint recorded in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, CniEndpointError> {
        let dir = state_dir.join("cni-endpoints");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut records = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let path = entry.map_err(io(&dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let text = std::fs::read(&path).map_err(io(&path))?;
            let record: PodRecord = serde_json::from_slice(&text)
                .map_err(|source| CniEndpointError::Decode { path: path.clone(), source })?;
            records.insert(record.host_interface.clone(), record);
        }
        Ok(Self { dir, records })
    }

    pub fn records(&self) -> impl Iterator<Item = &PodRecord> {
        self.records.values()
    }

    pub fn get(&self, host_interface: &str) -> Option<&PodRecord> {
        self.records.get(host_interface)
    }

    fn file(&self, host_interface: &str) -> PathBuf {
        self.dir.join(format!("{host_interface}.json"))
    }

    /// Records `record` (replacing one on the same veth) on disk, by
    /// rename; returns what it replaced.
    pub fn insert(&mut self, record: PodRecord) -> Result<Option<PodRecord>, CniEndpointError> {
        let file = self.file(&record.host_interface);
        let temporary = self.dir.join(format!(".{}.json.tmp", record.host_interface));
        let text = serde_json::to_vec_pretty(&record)
            .map_err(|source| CniEndpointError::Decode { path: file.clone(), source })?;
        std::fs::write(&temporary, text).map_err(io(&temporary))?;
        std::fs::rename(&temporary, &file).map_err(io(&file))?;
        Ok(self.records.insert(record.host_interface.clone(), record))
    }

    /// Forgets the endpoint on `host_interface`; returns it if there was one.
    pub fn remove(&mut self, host_interface: &str) -> Result<Option<PodRecord>, CniEndpointError> {
        if !valid_interface(host_interface) {
            return Err(CniEndpointError::Invalid(format!("host_interface {host_interface:?}: not an interface name")));
        }
        let file = self.file(host_interface);
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&file)(e)),
        }
        Ok(self.records.remove(host_interface))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> pb::EndpointAddRequest {
        pb::EndpointAddRequest {
            host_interface: "wcni0123456789a".into(),
            namespace: "default".into(),
            name: "web".into(),
            labels: [("app".to_string(), "web".to_string())].into_iter().collect(),
            ip: "10.244.0.2".into(),
            container_mac: "0A:00:00:00:00:01".into(),
            netns: "/run/netns/x".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            ipv6: "fd00:244::2".into(),
            port_mappings: vec![pb::PortMapping {
                host_port: 8082,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new(),
            }],
            chained: true,
            network: "weirnet".into(),
        }
    }

    #[test]
    fn a_request_becomes_a_local_pod_and_bad_fields_are_named() {
        let record = record_of(&request(), "node-a").expect("valid");
        assert_eq!(record.node, "node-a");
        assert!(record.chained, "a chained endpoint stays chained");
        assert_eq!(record.pod_mac.as_deref(), Some("0a:00:00:00:00:01"));
        assert_eq!(record.ipv6, Some("fd00:244::2".parse().expect("valid")));
        let v4_only = pb::EndpointAddRequest { ipv6: String::new(), ..request() };
        assert_eq!(record_of(&v4_only, "node-a").expect("valid").ipv6, None);
        assert_eq!(record.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(
            record.host_ports,
            [HostPort { host_port: 8082, container_port: 80, protocol: Protocol::Tcp, host_ip: None }]
        );
        for (change, named) in [
            (
                Box::new(|r: &mut pb::EndpointAddRequest| r.host_interface = "../etc".into()) as Box<dyn Fn(&mut _)>,
                "host_interface",
            ),
            (Box::new(|r: &mut pb::EndpointAddRequest| r.ip = "::ffff:10.0.0.1".into()), "ip"),
            (Box::new(|r: &mut pb::EndpointAddRequest| r.container_mac = "0a:00".into()), "container_mac"),
            (Box::new(|r: &mut pb::EndpointAddRequest| r.ipv6 = "10.0.0.1".into()), "ipv6"),
            (Box::new(|r: &mut pb::EndpointAddRequest| r.ipv6 = "fe80::1".into()), "ipv6"),
            (Box::new(|r: &mut pb::EndpointAddRequest| r.ipv6 = "::ffff:10.0.0.1".into()), "ipv6"),
            (Box::new(|r: &mut pb::EndpointAddRequest| r.name = "a/b".into()), "name"),
            (Box::new(|r: &mut pb::EndpointAddRequest| r.namespace = String::new()), "namespace"),
            (Box::new(|r: &mut pb::EndpointAddRequest| r.port_mappings[0].host_port = 65536), "port_mappings"),
            (Box::new(|r: &mut pb::EndpointAddRequest| r.port_mappings[0].protocol = "sctp".into()), "port_mappings"),
            (Box::new(|r: &mut pb::EndpointAddRequest| r.port_mappings[0].host_ip = "x".into()), "port_mappings"),
        ] {
            let mut bad = request();
            change(&mut bad);
            let err = record_of(&bad, "node-a").expect_err("an error").to_string();
            assert!(err.starts_with(named), "{err}");
        }
    }

    #[test]
    fn endpoints_survive_reopening_and_removal_is_idempotent() {
        let dir = std::env::temp_dir().join(format!("weir-cni-endpoints-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = CniEndpoints::open(&dir).expect("valid");
        store.insert(record_of(&request(), "n").expect("valid")).expect("valid");
        let reopened = CniEndpoints::open(&dir).expect("valid");
        assert_eq!(reopened.records().map(|r| r.ip).next(), Some("10.244.0.2".parse::<Ipv4Addr>().expect("valid")));
        assert_eq!(reopened.records().map(|r| r.host_ports.len()).next(), Some(1), "host ports are kept");
        let mut store = reopened;
        assert!(store.remove("wcni0123456789a").expect("valid").is_some());
        assert!(store.remove("wcni0123456789a").expect("valid").is_none());
        assert_eq!(CniEndpoints::open(&dir).expect("valid").records().count(), 0);
        std::fs::remove_dir_all(&dir).expect("valid");
    }
}
