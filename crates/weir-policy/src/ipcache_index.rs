//! The ipcache (address prefix → identity) as a lookup for naming flows:
//! the datapath's own trie answers the packet path, this answers the agent
//! for what the datapath leaves to it (an L7 event's peer, OpenSSL's
//! flows), at the rate events arrive. Pod and node addresses are most of
//! an ipcache and are host prefixes: one hash lookup; the few wider
//! prefixes (CIDR identities) are tried longest first after.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::identity::WORLD;

#[derive(Debug, Clone, Default)]
pub struct IpcacheIndex {
    /// /32 and /128 entries.
    hosts: HashMap<IpAddr, u32>,
    /// Every other entry, longest prefix first.
    prefixes: Vec<(IpNet, u32)>,
}

impl IpcacheIndex {
    /// From the ipcache's entries; of two for one prefix, the later counts.
    pub fn new(entries: impl IntoIterator<Item = (IpNet, u32)>) -> Self {
        let mut index = Self::default();
        let mut wider = HashMap::new();
        for (net, identity) in entries {
            if net.prefix_len() == net.max_prefix_len() {
                index.hosts.insert(net.addr(), identity);
            } else {
                wider.insert(net.trunc(), identity);
            }
        }
        index.prefixes = wider.into_iter().collect();
        index.prefixes.sort_by(|a, b| b.0.prefix_len().cmp(&a.0.prefix_len()).then(a.0.cmp(&b.0)));
        index
    }

    /// The identity of `ip` by the longest prefix holding it; reserved
    /// world when none does (as the datapath's lookup).
    pub fn identity_of(&self, ip: IpAddr) -> u32 {
        if let Some(identity) = self.hosts.get(&ip) {
            return *identity;
        }
        self.prefixes.iter().find(|(net, _)| net.contains(&ip)).map_or(WORLD, |(_, identity)| *identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("a prefix")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn the_longest_prefix_holding_an_address_gives_its_identity() {
        let index = IpcacheIndex::new([
            (net("10.0.0.0/8"), 100),
            (net("10.1.0.0/16"), 200),
            (net("10.1.2.3/32"), 300),
            (net("fd00::/64"), 400),
            (net("fd00::5/128"), 500),
        ]);
        assert_eq!(index.identity_of(ip("10.1.2.3")), 300);
        assert_eq!(index.identity_of(ip("10.1.2.4")), 200);
        assert_eq!(index.identity_of(ip("10.9.9.9")), 100);
        assert_eq!(index.identity_of(ip("fd00::5")), 500);
        assert_eq!(index.identity_of(ip("fd00::6")), 400);
        assert_eq!(index.identity_of(ip("192.0.2.1")), WORLD);
        assert_eq!(index.identity_of(ip("fd01::1")), WORLD);
    }

    #[test]
    fn families_do_not_mix_and_later_entries_win() {
        let index = IpcacheIndex::new([
            (net("0.0.0.0/0"), 7),
            (net("10.0.0.1/32"), 8),
            (net("10.0.0.1/32"), 9),
            (net("10.0.0.0/24"), 10),
            (net("10.0.0.9/24"), 11),
        ]);
        assert_eq!(index.identity_of(ip("10.0.0.1")), 9);
        assert_eq!(index.identity_of(ip("10.0.0.2")), 11, "one prefix however its address was written");
        assert_eq!(index.identity_of(ip("::ffff:10.0.0.2")), WORLD, "an IPv6 address is not in an IPv4 prefix");
        assert_eq!(index.identity_of(ip("8.8.8.8")), 7);
    }
}
