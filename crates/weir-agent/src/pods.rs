//! The lab's pods, as `weir lab up` writes them for its agents: who they
//! are (for events and pod selectors) and where their veths are (for the
//! pod path).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use weir_bpf::pods::{Endpoint, PodEndpoints};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Absolute cgroup directory.
    pub cgroup: PathBuf,
    pub ip: Ipv4Addr,
    /// The node-side end of the pod's veth.
    pub host_interface: String,
    /// The pod's named network namespace; its end of the veth is `eth0`.
    pub netns: String,
}

/// Every pod of the lab; none when the file is missing or unreadable.
pub fn read(file: &Path) -> Vec<PodRecord> {
    std::fs::read_to_string(file).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
}

/// The MAC address of `interface`, in `netns` or this namespace.
fn mac(netns: Option<&str>, interface: &str) -> Result<[u8; 6], String> {
    #[derive(Deserialize)]
    struct Link {
        address: String,
    }
    let json = weir_host::iproute::ip(netns, &["-j", "link", "show", interface]).map_err(|e| e.to_string())?;
    let links: Vec<Link> = serde_json::from_str(&json).map_err(|e| format!("{interface}: {e}"))?;
    let text = links.first().map(|l| l.address.as_str()).ok_or_else(|| format!("no address for {interface}"))?;
    let bytes: Vec<u8> = text.split(':').filter_map(|b| u8::from_str_radix(b, 16).ok()).collect();
    bytes.try_into().map_err(|_| format!("{interface}: {text:?} is not a MAC address"))
}

/// The index of `interface` in this network namespace; 0 when there is none.
pub fn ifindex(interface: &str) -> u32 {
    let Ok(name) = std::ffi::CString::new(interface) else { return 0 };
    // SAFETY: name is a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

/// Writes the endpoint table from the pods whose veth is on this node;
/// returns how many. Pods of other nodes have no veth here.
pub fn install_endpoints(table: &PodEndpoints, file: &Path) -> Result<usize, String> {
    let mut endpoints = Vec::new();
    for pod in read(file) {
        let index = ifindex(&pod.host_interface);
        if index == 0 {
            continue;
        }
        let node_mac = mac(None, &pod.host_interface)?;
        let pod_mac = mac(Some(&pod.netns), "eth0")?;
        endpoints.push(Endpoint { address: pod.ip, ifindex: index, pod_mac, node_mac });
    }
    table.replace(&endpoints).map_err(|e| e.to_string())?;
    Ok(endpoints.len())
}
