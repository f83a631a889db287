//! What the load balancer's fixture files share: the outer source a
//! client's packets get, and the program's counters.

use std::net::{Ipv4Addr, Ipv6Addr};

use weir_bpf::xlb::XlbMaps;
use weir_lb::hash::{rss_word, FlowTuple};

/// The outer IPv4 source of `t`'s packets under the default prefix (172.16.0.0/16).
pub fn outer_source4(t: &FlowTuple) -> Ipv4Addr {
    let rss = rss_word(t);
    Ipv4Addr::new(172, 16, (rss >> 8) as u8, rss as u8)
}

/// The outer IPv6 source of `t`'s packets under the default prefix (100::/96).
pub fn outer_source6(t: &FlowTuple) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o[0] = 1;
    o[12..].copy_from_slice(&rss_word(t).to_ne_bytes());
    Ipv6Addr::from(o)
}

/// Packets counted under the program counter `code`.
pub fn counter(maps: &XlbMaps, code: u32) -> u64 {
    maps.counters().expect("counters")[code as usize].packets
}

/// Packets dropped for `reason`.
pub fn dropped(maps: &XlbMaps, reason: u32) -> u64 {
    maps.drops().expect("drops").iter().find(|(r, _)| *r == reason).map(|(_, c)| c.packets).unwrap_or(0)
}
