//! What the API server checks that depends on the cluster, not the document:
//! node ports inside the node-port range, cluster IPs that no pod, pod CIDR
//! or node uses, and IP families that agree with the addresses. Pure.

use std::net::IpAddr;
use std::ops::RangeInclusive;

use ipnet::IpNet;
use weir_spec::{err, SpecError};

use crate::k8s::Service;

/// kube-apiserver's default `--service-node-port-range`.
pub const DEFAULT_NODE_PORT_RANGE: RangeInclusive<u16> = 30000..=32767;

/// Addresses a cluster IP may not take, each with what holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    pub net: IpNet,
    /// "node node-a's address", "the pod CIDR of node node-b", "pod backend/api".
    pub holder: String,
}

/// The cluster a Service is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNetwork {
    pub node_port_range: RangeInclusive<u16>,
    pub reserved: Vec<Reserved>,
}

impl Default for ClusterNetwork {
    fn default() -> Self {
        Self { node_port_range: DEFAULT_NODE_PORT_RANGE, reserved: Vec::new() }
    }
}

impl ClusterNetwork {
    /// Adds an address (a /32 or /128) or a CIDR that `holder` uses.
    pub fn reserve(&mut self, net: IpNet, holder: impl Into<String>) {
        self.reserved.push(Reserved { net, holder: holder.into() });
    }

    pub fn reserve_address(&mut self, address: IpAddr, holder: impl Into<String>) {
        self.reserve(IpNet::from(address), holder);
    }

    /// Refuses node ports outside the range and cluster IPs that something else holds.
    pub fn check(&self, service: &Service) -> Result<(), SpecError> {
        let spec = &service.spec;
        for (i, port) in spec.ports.iter().enumerate() {
            if let Some(p) = port.node_port {
                let in_range = u16::try_from(p).is_ok_and(|p| self.node_port_range.contains(&p));
                if !in_range {
                    return Err(err(
                        format!("spec.ports[{i}].nodePort"),
                        format!(
                            "{p} is outside the node-port range {}-{} (the agent's --service-node-port-range)",
                            self.node_port_range.start(),
                            self.node_port_range.end()
                        ),
                    ));
                }
            }
        }
        let named = spec
            .cluster_ip
            .iter()
            .map(|ip| ("spec.clusterIP".to_string(), ip))
            .chain(spec.cluster_ips.iter().enumerate().map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip)));
        for (field, text) in named {
            let Ok(ip) = text.parse::<IpAddr>() else { continue };
            if let Some(reserved) = self.reserved.iter().find(|r| r.net.contains(&ip)) {
                let what = if reserved.net.prefix_len() == reserved.net.max_prefix_len() {
                    reserved.holder.clone()
                } else {
                    format!("inside {} ({})", reserved.net, reserved.holder)
                };
                return Err(err(field, format!("{ip} is {what}: a cluster IP must be an address no pod or node uses")));
            }
        }
        Ok(())
    }
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// `ipFamilies`, `ipFamilyPolicy` and the cluster IPs agree, as the API
/// server requires. Headless services (`None`) have no addresses to check.
pub fn check_families(service: &Service) -> Result<(), SpecError> {
    let spec = &service.spec;
    for (i, f) in spec.ip_families.iter().enumerate() {
        if f != "IPv4" && f != "IPv6" {
            return Err(err(format!("spec.ipFamilies[{i}]"), format!("{f:?}: use IPv4 or IPv6")));
        }
        if spec.ip_families[..i].contains(f) {
            return Err(err(format!("spec.ipFamilies[{i}]"), format!("{f} is listed twice")));
        }
    }
    if spec.ip_families.len() > 2 {
        return Err(err("spec.ipFamilies", "at most two families, one of each"));
    }
    let policy = spec.ip_family_policy.as_deref();
    if let Some(p) = policy {
        if !matches!(p, "SingleStack" | "PreferDualStack" | "RequireDualStack") {
            return Err(err(
                "spec.ipFamilyPolicy",
                format!("{p:?}: use SingleStack, PreferDualStack or RequireDualStack"),
            ));
        }
    }
    if policy == Some("SingleStack") && spec.ip_families.len() > 1 {
        return Err(err("spec.ipFamilies", "ipFamilyPolicy SingleStack allows one family"));
    }
    let headless = spec.cluster_ip.as_deref() == Some("None");
    if headless {
        return Ok(());
    }
    // clusterIPs[0] equals clusterIP (checked with the document); clusterIP alone stands for it.
    let addresses: Vec<(String, IpAddr)> = if spec.cluster_ips.is_empty() {
        spec.cluster_ip.iter().filter_map(|ip| Some(("spec.clusterIP".to_string(), ip.parse().ok()?))).collect()
    } else {
        spec.cluster_ips
            .iter()
            .enumerate()
            .filter_map(|(i, ip)| Some((format!("spec.clusterIPs[{i}]"), ip.parse().ok()?)))
            .collect()
    };
    if addresses.len() > 2 {
        return Err(err("spec.clusterIPs", "at most two addresses, one of each family"));
    }
    if addresses.len() == 2 {
        if family(addresses[0].1) == family(addresses[1].1) {
            return Err(err(
                "spec.clusterIPs[1]",
                format!(
                    "{} is {} like clusterIPs[0]: dual-stack needs one of each family",
                    addresses[1].1,
                    family(addresses[1].1)
                ),
            ));
        }
        if policy.is_none_or(|p| p == "SingleStack") {
            return Err(err("spec.ipFamilyPolicy", "two clusterIPs need PreferDualStack or RequireDualStack"));
        }
    }
    if policy == Some("RequireDualStack") && addresses.len() < 2 {
        return Err(err(
            "spec.clusterIPs",
            "ipFamilyPolicy RequireDualStack needs an address of each family: Weir has no API server to allocate the second",
        ));
    }
    for (i, wanted) in spec.ip_families.iter().enumerate() {
        if let Some((field, ip)) = addresses.get(i) {
            if family(*ip) != wanted {
                return Err(err(
                    format!("spec.ipFamilies[{i}]"),
                    format!("{wanted} does not match {field} {ip}, an {} address", family(*ip)),
                ));
            }
        }
    }
    Ok(())
}
