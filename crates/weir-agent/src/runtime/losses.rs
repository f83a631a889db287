//! Lost-event records: what a `weir events` stream is told it missed.

use weir_proto::agent::v1 as pb;

use super::monotonic_ns;

/// Where lost events were lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossSource {
    KernelRing,
    SlowStream,
    ProcessCacheEvicted,
}

impl LossSource {
    pub fn name(self) -> &'static str {
        match self {
            Self::KernelRing => "kernel_ring",
            Self::SlowStream => "slow_stream",
            Self::ProcessCacheEvicted => "process_cache_evicted",
        }
    }
}

/// Running totals of what was lost on a node (see `RuntimeState::loss_totals`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LossTotals {
    pub kernel_ring: u64,
    pub process_cache_evicted: u64,
}

impl LossTotals {
    /// What was lost between `self` and `now`, as records for a stream.
    pub fn since(self, now: LossTotals, node: &str) -> Vec<pb::RuntimeEvent> {
        [
            (LossSource::KernelRing, self.kernel_ring, now.kernel_ring),
            (LossSource::ProcessCacheEvicted, self.process_cache_evicted, now.process_cache_evicted),
        ]
        .into_iter()
        .filter(|(_, before, after)| after > before)
        .map(|(source, before, after)| lost_record(node, source, after - before))
        .collect()
    }
}

pub const LOST_EVENTS: &str = "lost_events";

pub(super) fn lost_record(node: &str, source: LossSource, count: u64) -> pb::RuntimeEvent {
    let wall = monotonic_ns(libc::CLOCK_REALTIME);
    pb::RuntimeEvent {
        node: node.to_string(),
        r#type: LOST_EVENTS.to_string(),
        time_unix_ns: u64::try_from(wall).unwrap_or(0),
        lost_events: Some(pb::RuntimeLostEvents { source: source.name().to_string(), count }),
        ..Default::default()
    }
}
