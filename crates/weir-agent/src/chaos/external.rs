//! NetworkChaos's `externalTargets` on this node: names resolved by the
//! agent's resolver (getaddrinfo: /etc/hosts, then DNS) when the
//! experiment starts, CIDRs expanded, each address paired with every
//! selected pod's address of its family (direction `to`).

use std::net::{IpAddr, ToSocketAddrs};

use weir_chaos::external::ExternalTarget;

use crate::pods::PodRecord;

/// The addresses of `target`; a name that resolves to none is an error.
fn addresses(target: &ExternalTarget) -> Result<Vec<IpAddr>, String> {
    if let Some(addresses) = target.addresses() {
        return Ok(addresses);
    }
    let resolved: Vec<IpAddr> = (target.to_string().as_str(), 0)
        .to_socket_addrs()
        .map_err(|e| format!("spec.externalTargets: {target}: {e}"))?
        .map(|a| a.ip())
        .collect();
    if resolved.is_empty() {
        return Err(format!("spec.externalTargets: {target} resolves to no address"));
    }
    Ok(resolved)
}

/// (source, destination) addresses.
type Pairs = Vec<(IpAddr, IpAddr)>;

/// What the experiment shows for its external targets ("name (address …)"),
/// and the (selected pod, external address) pairs.
pub(super) fn pairs(targets: &[ExternalTarget], selected: &[PodRecord]) -> Result<(Vec<String>, Pairs), String> {
    let mut shown = Vec::new();
    let mut pairs = Vec::new();
    for target in targets {
        let mut addresses = addresses(target)?;
        addresses.sort();
        addresses.dedup();
        shown.push(match target {
            ExternalTarget::Name(name) => {
                let list: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
                format!("{name} ({})", list.join(" "))
            }
            ExternalTarget::Network(_) => target.to_string(),
        });
        for pod in selected {
            for dst in &addresses {
                let src = match dst {
                    IpAddr::V4(_) => Some(IpAddr::V4(pod.ip)),
                    IpAddr::V6(_) => pod.ipv6.map(IpAddr::V6),
                };
                if let Some(src) = src.filter(|src| src != dst) {
                    pairs.push((src, *dst));
                }
            }
        }
    }
    Ok((shown, pairs))
}
