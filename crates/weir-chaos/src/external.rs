//! NetworkChaos's `externalTargets`: addresses outside the cluster a fault
//! applies to, as Chaos Mesh takes them (an IP address, a CIDR, or a domain
//! name resolved when the experiment starts), only with `direction: to`.
//! Weir takes IPv6 as well, and expands a CIDR into its addresses: at most
//! [`MAX_CIDR_ADDRESSES`] of them.

use std::net::IpAddr;

use weir_spec::{err, SpecError};

/// The most addresses one CIDR of `externalTargets` may hold (a /24, or an
/// IPv6 /120): each becomes an address pair with every selected pod.
pub const MAX_CIDR_ADDRESSES: u32 = 256;

/// One entry of `externalTargets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExternalTarget {
    /// An address, or a network given as a CIDR.
    Network(ipnet::IpNet),
    /// A domain name, resolved by each node's agent when it starts the experiment.
    Name(String),
}

impl std::fmt::Display for ExternalTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Network(net) if net.prefix_len() == net.max_prefix_len() => write!(f, "{}", net.addr()),
            Self::Network(net) => write!(f, "{net}"),
            Self::Name(name) => write!(f, "{name}"),
        }
    }
}

impl ExternalTarget {
    /// The addresses of a network (every one, network and broadcast
    /// included); None for a name.
    pub fn addresses(&self) -> Option<Vec<IpAddr>> {
        match self {
            Self::Network(net) if net.prefix_len() == net.max_prefix_len() => Some(vec![net.addr()]),
            Self::Network(ipnet::IpNet::V4(net)) => {
                Some(ipnet::Ipv4AddrRange::new(net.network(), net.broadcast()).map(IpAddr::V4).collect())
            }
            Self::Network(ipnet::IpNet::V6(net)) => {
                let first = u128::from(net.network());
                let count = 1u128 << (128 - net.prefix_len());
                Some((0..count).map(|i| IpAddr::V6((first + i).into())).collect())
            }
            Self::Name(_) => None,
        }
    }
}

/// Parses `spec.externalTargets` (each entry's field is `at[i]`).
pub fn parse(at: &str, entries: &[String]) -> Result<Vec<ExternalTarget>, SpecError> {
    if entries.is_empty() {
        return Err(err(at, "names no target (leave it out instead)"));
    }
    let mut out = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let field = format!("{at}[{i}]");
        let text = entry.trim();
        let target = if let Ok(addr) = text.parse::<IpAddr>() {
            ExternalTarget::Network(ipnet::IpNet::from(addr))
        } else if text.contains('/') {
            let net: ipnet::IpNet = text
                .parse()
                .map_err(|_| err(&field, format!("{entry:?} is neither an address, a CIDR nor a domain name")))?;
            let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
            if host_bits > MAX_CIDR_ADDRESSES.trailing_zeros() {
                return Err(err(
                    &field,
                    format!("{entry:?}: at most {MAX_CIDR_ADDRESSES} addresses (a /24, or an IPv6 /120) per CIDR"),
                ));
            }
            ExternalTarget::Network(net)
        } else {
            check_domain(&field, text)?;
            ExternalTarget::Name(text.trim_end_matches('.').to_ascii_lowercase())
        };
        if !out.contains(&target) {
            out.push(target);
        }
    }
    Ok(out)
}

/// A domain name: dot-separated labels of letters, digits and hyphens.
fn check_domain(field: &str, name: &str) -> Result<(), SpecError> {
    let bare = name.trim_end_matches('.');
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if bare.is_empty() || bare.len() > 253 || !bare.split('.').all(label_ok) {
        return Err(err(field, format!("{name:?} is neither an address, a CIDR nor a domain name")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(entries: &[&str]) -> Result<Vec<ExternalTarget>, String> {
        let entries: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
        parse("spec.externalTargets", &entries).map_err(|e| e.field)
    }

    #[test]
    fn addresses_cidrs_and_names() {
        let got = parsed(&["172.30.0.9", "www.Example.com.", "10.1.2.0/30", "2001:db8::1", "172.30.0.9"]).expect("ok");
        assert_eq!(got.len(), 4, "duplicates are dropped: {got:?}");
        assert_eq!(got[0].to_string(), "172.30.0.9");
        assert_eq!(got[1], ExternalTarget::Name("www.example.com".into()));
        let quad: Vec<String> = got[2].addresses().expect("net").iter().map(|a| a.to_string()).collect();
        assert_eq!(quad, ["10.1.2.0", "10.1.2.1", "10.1.2.2", "10.1.2.3"]);
        assert_eq!(got[3].addresses().expect("addr").len(), 1);
        let six = parsed(&["2001:db8::/126"]).expect("ok");
        assert_eq!(six[0].addresses().expect("net").len(), 4);
        assert_eq!(parsed(&["10.0.0.0/24"]).expect("a /24")[0].addresses().expect("net").len(), 256);
    }

    #[test]
    fn bad_entries_are_refused_by_index() {
        assert_eq!(parsed(&["10.0.0.1", "10.0.0.0/23"]), Err("spec.externalTargets[1]".into()));
        assert_eq!(parsed(&["2001:db8::/119"]), Err("spec.externalTargets[0]".into()));
        assert_eq!(parsed(&["10.0.0.0/33"]), Err("spec.externalTargets[0]".into()));
        assert_eq!(parsed(&["bad_name.example"]), Err("spec.externalTargets[0]".into()));
        assert_eq!(parsed(&["-x.example"]), Err("spec.externalTargets[0]".into()));
        assert_eq!(parsed(&[]), Err("spec.externalTargets".into()));
    }
}
