//! Chaos experiments' kernel state, pinned with the node datapath: the
//! faults between pairs of pod addresses (`chaos_pairs`), each carrying its
//! end time, and what each experiment dropped (`chaos_counters`).

use std::net::IpAddr;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::api::{address_of_words as address, bytes_of, chaos_action, read_pod, words_of_address as words, Counter};
use crate::datapath::{read_counters, PinLayout};
use crate::error::map_error;
use crate::skel::node::types::{weir_chaos_entry, weir_chaos_key};
use crate::BpfError;

/// Experiments the kernel counts at once (slots of `chaos_counters`).
pub const MAX_EXPERIMENTS: u32 = 1024;

/// What a pair's packets suffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChaosFault {
    Partition,
    /// Dropped when a draw is below `probability` (of 2^32; u32::MAX:
    /// always); with `correlation` (of 2^32) a packet shares the previous
    /// packet's fate instead.
    Loss {
        probability: u32,
        correlation: u32,
    },
}

/// One pair's fault, as the kernel holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChaosEntry {
    pub fault: ChaosFault,
    /// CLOCK_MONOTONIC nanoseconds ([`crate::ktime_now_ns`]); from then on the
    /// kernel ignores the entry. u64::MAX: until removed.
    pub end_ns: u64,
    /// Slot of the experiment's counter, below [`MAX_EXPERIMENTS`].
    pub experiment: u32,
}

fn key(src: IpAddr, dst: IpAddr) -> Result<weir_chaos_key, BpfError> {
    let family = match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => 4,
        (IpAddr::V6(_), IpAddr::V6(_)) => 6,
        _ => return Err(BpfError::Chaos(format!("chaos pair {src} -> {dst} mixes address families"))),
    };
    Ok(weir_chaos_key { src: words(src), dst: words(dst), family, ..Default::default() })
}

#[derive(Debug)]
pub struct ChaosMaps {
    pairs: MapHandle,
    counters: MapHandle,
}

impl ChaosMaps {
    pub fn open(pins: &PinLayout) -> Result<Self, BpfError> {
        Ok(Self { pairs: pins.open_map("chaos_pairs")?, counters: pins.open_map("chaos_counters")? })
    }

    /// The maps of a private, unpinned copy of the node datapath (fixtures).
    pub fn of(skel: &crate::skel::node::NodeSkel<'_>) -> Result<Self, BpfError> {
        let handle = |map, name| MapHandle::try_from(map).map_err(map_error(name));
        Ok(Self {
            pairs: handle(&skel.maps.chaos_pairs, "chaos_pairs")?,
            counters: handle(&skel.maps.chaos_counters, "chaos_counters")?,
        })
    }

    /// Packets from `src` to `dst` (both of one family) suffer `entry`.
    pub fn insert(&self, src: IpAddr, dst: IpAddr, entry: &ChaosEntry) -> Result<(), BpfError> {
        if entry.experiment >= MAX_EXPERIMENTS {
            return Err(BpfError::Chaos(format!("chaos experiment slot {} is out of range", entry.experiment)));
        }
        let (action, probability, correlation) = match entry.fault {
            ChaosFault::Partition => (chaos_action::PARTITION, 0, 0),
            ChaosFault::Loss { probability, correlation } => (chaos_action::LOSS, probability, correlation),
        };
        let value = weir_chaos_entry {
            end_ns: entry.end_ns,
            action,
            probability,
            correlation,
            experiment: entry.experiment,
            ..Default::default()
        };
        self.pairs.update(bytes_of(&key(src, dst)?), bytes_of(&value), MapFlags::ANY).map_err(map_error("chaos_pairs"))
    }

    /// Every pair the kernel holds, expired ones included.
    pub fn entries(&self) -> Vec<(IpAddr, IpAddr, ChaosEntry)> {
        self.pairs
            .keys()
            .filter_map(|raw| {
                let key: weir_chaos_key = read_pod(&raw)?;
                let value: weir_chaos_entry = read_pod(&self.pairs.lookup(&raw, MapFlags::ANY).ok()??)?;
                let fault = match value.action {
                    chaos_action::PARTITION => ChaosFault::Partition,
                    _ => ChaosFault::Loss { probability: value.probability, correlation: value.correlation },
                };
                let entry = ChaosEntry { fault, end_ns: value.end_ns, experiment: value.experiment };
                Some((address(key.family, key.src), address(key.family, key.dst), entry))
            })
            .collect()
    }

    /// Removes every pair whose experiment slot `which` picks, counters
    /// left as they are; returns the pairs removed.
    pub fn remove_pairs(&self, which: impl Fn(u32) -> bool) -> Result<usize, BpfError> {
        let mut removed = 0;
        for (src, dst, entry) in self.entries() {
            if which(entry.experiment) {
                self.pairs.delete(bytes_of(&key(src, dst)?)).map_err(map_error("chaos_pairs"))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes every pair of the experiment in `slot` and zeroes its
    /// counter, so the slot can serve another; returns the pairs removed.
    pub fn remove_experiment(&self, slot: u32) -> Result<usize, BpfError> {
        let removed = self.remove_pairs(|s| s == slot)?;
        let cpus = libbpf_rs::num_possible_cpus().map_err(map_error("chaos_counters"))?;
        let zeros = vec![vec![0u8; std::mem::size_of::<Counter>()]; cpus];
        self.counters.update_percpu(&slot.to_ne_bytes(), &zeros, MapFlags::ANY).map_err(map_error("chaos_counters"))?;
        Ok(removed)
    }

    /// What the experiment in `slot` dropped, over all CPUs.
    pub fn dropped(&self, slot: u32) -> Result<Counter, BpfError> {
        Ok(read_counters(&self.counters, [slot])?.pop().unwrap_or_default())
    }
}
