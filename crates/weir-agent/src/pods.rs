//! The lab's pods, as `weir lab up` writes them for its agents: who they
//! are (for events and pod selectors) and where their veths are (for the
//! pod path).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weir_bpf::pods::Endpoint;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Absolute cgroup directory.
    pub cgroup: PathBuf,
    pub ip: Ipv4Addr,
    /// Dual-stack: its IPv6 address.
    #[serde(default)]
    pub ipv6: Option<Ipv6Addr>,
    /// The node-side end of the pod's veth.
    pub host_interface: String,
    /// The pod's named network namespace; its end of the veth is `eth0`.
    pub netns: String,
    /// The node it runs on.
    #[serde(default)]
    pub node: String,
    /// Its namespace's labels (namespace selectors).
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, String>,
    /// Its declared ports (named ports in policies).
    #[serde(default)]
    pub ports: Vec<weir_policy::rules::NamedPort>,
    /// The MAC address of the pod's end of the veth, when known without
    /// looking (a CNI endpoint: its netns is a path, its interface any name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_mac: Option<String>,
    /// Its published ports (a CNI endpoint's `portMappings`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_ports: Vec<weir_service::hostport::HostPort>,
    /// As its `metadata.generateName` and `ownerReferences`, where known
    /// (a lab's pod that declares them): Hubble's workload comes from them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<weir_spec::OwnerReference>,
    /// A CNI endpoint chained after the plugin that made its veth: the pod
    /// path judges its packets but leaves their forwarding to that plugin.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub chained: bool,
    /// A CNI endpoint's attachment: what GC compares with the runtime's
    /// valid attachments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_attachment: Option<CniAttachment>,
}

/// The CNI network, container id and interface an endpoint was added for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CniAttachment {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    /// The container's labels in podman's database have been added to the
    /// endpoint's (learned after ADD, see `cni_podman`): not again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub podman_labels_read: bool,
}

/// Every pod of the lab; none when the file is missing or unreadable.
pub fn read(file: &Path) -> Vec<PodRecord> {
    read_checked(file).unwrap_or_default()
}

/// Every pod of the lab; none when the file is missing, an error when it
/// cannot be read or parsed (a caller following it keeps what it had).
pub fn read_checked(file: &Path) -> Result<Vec<PodRecord>, String> {
    match std::fs::read_to_string(file) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("{}: {e}", file.display())),
    }
}

/// [`read_checked`], with the digest of the bytes read (of none, for a
/// missing file): the version of the file the records come from.
pub fn read_with_digest(file: &Path) -> Result<(Vec<PodRecord>, String), String> {
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("{}: {e}", file.display())),
    };
    let digest = weir_host::pods_file::digest(&bytes);
    if bytes.is_empty() {
        return Ok((Vec::new(), digest));
    }
    let records = serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok((records, digest))
}

/// The MAC address of `interface`, in `netns` or this namespace, and the
/// id of the namespace its peer is in, where it has one.
fn link(netns: Option<&str>, interface: &str) -> Result<([u8; 6], Option<u32>), String> {
    #[derive(Deserialize)]
    struct Link {
        address: String,
        link_netnsid: Option<u32>,
    }
    let json = weir_host::iproute::ip(netns, &["-j", "link", "show", interface]).map_err(|e| e.to_string())?;
    let links: Vec<Link> = serde_json::from_str(&json).map_err(|e| format!("{interface}: {e}"))?;
    let link = links.first().ok_or_else(|| format!("no address for {interface}"))?;
    let mac =
        parse_mac(&link.address).ok_or_else(|| format!("{interface}: {:?} is not a MAC address", link.address))?;
    Ok((mac, link.link_netnsid))
}

/// `aa:bb:cc:dd:ee:ff` as bytes.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = parts.iter().map(|b| u8::from_str_radix(b, 16).ok()).collect();
    bytes?.try_into().ok()
}

/// The index of `interface` in this network namespace; 0 when there is none.
pub fn ifindex(interface: &str) -> u32 {
    let Ok(name) = std::ffi::CString::new(interface) else { return 0 };
    // SAFETY: name is a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

/// A local pod's veth as the endpoint table needs it; None for pods of other
/// nodes (their veth is not here).
pub fn local_endpoint(pod: &PodRecord) -> Result<Option<Endpoint>, String> {
    let index = ifindex(&pod.host_interface);
    if index == 0 {
        return Ok(None);
    }
    let (node_mac, netnsid) = link(None, &pod.host_interface)?;
    let pod_mac = match &pod.pod_mac {
        Some(text) => parse_mac(text).ok_or_else(|| format!("{}: {text:?} is not a MAC address", pod.name))?,
        None => link(Some(&pod.netns), "eth0")?.0,
    };
    Ok(Some(Endpoint {
        address: pod.ip,
        address6: pod.ipv6,
        ifindex: index,
        pod_mac,
        node_mac,
        identity: 0,
        policy_revision: 0,
        netnsid,
        chained: pod.chained,
    }))
}

/// Every address of this network namespace but loopback and link-local
/// ones (the host identity).
pub fn local_addresses() -> Vec<IpAddr> {
    #[derive(Deserialize)]
    struct Link {
        #[serde(default)]
        addr_info: Vec<Addr>,
    }
    #[derive(Deserialize)]
    struct Addr {
        local: Option<IpAddr>,
    }
    let json = weir_host::iproute::ip(None, &["-j", "addr", "show"]).unwrap_or_default();
    let links: Vec<Link> = serde_json::from_str(&json).unwrap_or_default();
    let link_local = |a: &IpAddr| matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
    links
        .iter()
        .flat_map(|l| l.addr_info.iter().filter_map(|a| a.local))
        .filter(|a| !a.is_loopback() && !link_local(a))
        .collect()
}
