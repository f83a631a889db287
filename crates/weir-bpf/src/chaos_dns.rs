//! DNS faults' kernel state (`chaos_dns`, pinned with the node datapath):
//! per sending pod address, the names whose queries the pod path answers
//! (or sends to the delay line), with the experiment's end time.

use std::net::IpAddr;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::api::{address_of_words as address, bytes_of, read_pod, words_of_address as words};
use crate::chaos::MAX_EXPERIMENTS;
use crate::datapath::PinLayout;
use crate::error::map_error;
use crate::skel::node::types::{weir_chaos_dns, weir_chaos_dns_pattern, weir_chaos_key};
use crate::BpfError;

/// Patterns one entry holds.
pub const MAX_PATTERNS: usize = 8;
/// Bytes of a pattern's text.
pub const PATTERN_BYTES: usize = 256;

/// One sending pod's DNS fault, as the kernel holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsEntry {
    /// The answer's response code (2 SERVFAIL, 3 NXDOMAIN); 0: delayed.
    pub rcode: u8,
    /// Of 2^32: the share of matching queries; u32::MAX all.
    pub probability: u32,
    /// Lower-case text (`?` any one character) and whether it is a prefix;
    /// none: every name.
    pub patterns: Vec<(Vec<u8>, bool)>,
    /// As [`crate::chaos::ChaosEntry::end_ns`].
    pub end_ns: u64,
    pub experiment: u32,
}

#[derive(Debug)]
pub struct DnsFaults {
    map: MapHandle,
}

fn key(src: IpAddr) -> weir_chaos_key {
    let family = if src.is_ipv6() { 6 } else { 4 };
    weir_chaos_key { src: words(src), family, ..Default::default() }
}

impl DnsFaults {
    pub fn open(pins: &PinLayout) -> Result<Self, BpfError> {
        Ok(Self { map: pins.open_map("chaos_dns")? })
    }

    /// The map of a private, unpinned copy of the node datapath (fixtures).
    pub fn of(skel: &crate::skel::node::NodeSkel<'_>) -> Result<Self, BpfError> {
        Ok(Self { map: MapHandle::try_from(&skel.maps.chaos_dns).map_err(map_error("chaos_dns"))? })
    }

    /// The DNS queries `src` sends suffer `entry`.
    pub fn insert(&self, src: IpAddr, entry: &DnsEntry) -> Result<(), BpfError> {
        if entry.experiment >= MAX_EXPERIMENTS {
            return Err(BpfError::Chaos(format!("chaos experiment slot {} is out of range", entry.experiment)));
        }
        if entry.patterns.len() > MAX_PATTERNS {
            return Err(BpfError::Chaos(format!("{} DNS patterns: at most {MAX_PATTERNS}", entry.patterns.len())));
        }
        let mut value = weir_chaos_dns {
            end_ns: entry.end_ns,
            experiment: entry.experiment,
            probability: entry.probability,
            rcode: u32::from(entry.rcode),
            patterns: entry.patterns.len() as u32,
            ..Default::default()
        };
        for (slot, (text, wildcard)) in value.pattern.iter_mut().zip(&entry.patterns) {
            if text.len() >= PATTERN_BYTES {
                return Err(BpfError::Chaos(format!("a DNS pattern of {} bytes: at most 253", text.len())));
            }
            let mut pattern =
                weir_chaos_dns_pattern { len: text.len() as u16, wildcard: u8::from(*wildcard), ..Default::default() };
            pattern.text[..text.len()].copy_from_slice(text);
            *slot = pattern;
        }
        self.map.update(bytes_of(&key(src)), bytes_of(&value), MapFlags::ANY).map_err(map_error("chaos_dns"))
    }

    /// Every sending address held, with its experiment's slot.
    pub fn entries(&self) -> Vec<(IpAddr, u32)> {
        self.map
            .keys()
            .filter_map(|raw| {
                let key: weir_chaos_key = read_pod(&raw)?;
                let value: weir_chaos_dns = read_pod(&self.map.lookup(&raw, MapFlags::ANY).ok()??)?;
                Some((address(key.family, key.src), value.experiment))
            })
            .collect()
    }

    /// Removes every entry whose experiment slot `which` picks; returns how many.
    pub fn remove(&self, which: impl Fn(u32) -> bool) -> Result<usize, BpfError> {
        let mut removed = 0;
        for (src, slot) in self.entries() {
            if which(slot) {
                self.map.delete(bytes_of(&key(src))).map_err(map_error("chaos_dns"))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
