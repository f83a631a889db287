//! Runs of the backend choice array (`lb_picks` in bpf/api/service.h): each
//! frontend's active backends, copied into one contiguous run, so the socket
//! load balancer picks a backend by index (an array element) instead of a
//! second hash lookup.
//!
//! A run is never written while a frontend points at it: a change copies
//! the frontend's backends into a fresh run and then points the frontend at
//! it. The old run is retired, and only a later change may reuse it: by then
//! every program that read the old frontend value has long finished (they
//! run for microseconds, inside one system call).
//!
//! Runs come in power-of-two sizes, one free list per size; index 0 is never
//! handed out (0 in a frontend means "no run": the kernel falls back to the
//! frontend's slot entries). When the array is full, [`PickRuns::take`] says
//! so and the frontend does without a run.

use std::collections::BTreeMap;

/// Elements of `lb_picks`; must equal WEIR_LB_MAX_PICKS in bpf/api/service.h.
pub const MAX_PICKS: u32 = 262144;

/// A run: its first index and its size, 2^order elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Run {
    pub start: u32,
    pub order: u8,
}

impl Run {
    pub fn size(self) -> u32 {
        1 << self.order
    }

    /// The run a frontend with `active` backends holds at `start` (runs are
    /// sized by the active count they were made for); None for no run.
    pub fn of(start: u32, active: u16) -> Option<Run> {
        (start != 0 && active != 0).then(|| Run { start, order: order_for(usize::from(active)) })
    }
}

fn order_for(len: usize) -> u8 {
    len.max(1).next_power_of_two().trailing_zeros() as u8
}

/// The array's free space, as the executor of one node's plans sees it.
#[derive(Debug, Clone)]
pub struct PickRuns {
    capacity: u32,
    /// Everything at or above this index is free.
    next: u32,
    free: BTreeMap<u8, Vec<u32>>,
    /// Freed by the current change; free from the next one on.
    retired: Vec<Run>,
}

impl Default for PickRuns {
    fn default() -> Self {
        Self::new(MAX_PICKS)
    }
}

impl PickRuns {
    pub fn new(capacity: u32) -> Self {
        Self { capacity, next: 1, free: BTreeMap::new(), retired: Vec::new() }
    }

    /// The allocator of an array already holding `held` (read back from the
    /// kernel at start): the gaps between them are free.
    pub fn from_held(capacity: u32, held: impl IntoIterator<Item = Run>) -> Self {
        let mut runs: Vec<Run> = held.into_iter().filter(|r| r.start + r.size() <= capacity).collect();
        runs.sort();
        let mut picks = Self::new(capacity);
        for run in runs {
            if run.start >= picks.next {
                picks.free_gap(picks.next, run.start - picks.next);
                picks.next = run.start + run.size();
            }
        }
        picks
    }

    /// Splits a gap into power-of-two runs on the free lists.
    fn free_gap(&mut self, mut start: u32, mut len: u32) {
        while len > 0 {
            let order = 31 - len.leading_zeros() as u8;
            self.free.entry(order).or_default().push(start);
            start += 1 << order;
            len -= 1 << order;
        }
    }

    /// A run for `len` elements, or None when the array has no room.
    pub fn take(&mut self, len: usize) -> Option<Run> {
        let order = order_for(len);
        if let Some(start) = self.free.get_mut(&order).and_then(Vec::pop) {
            return Some(Run { start, order });
        }
        let size = 1u32 << order;
        if self.next.checked_add(size).is_some_and(|end| end <= self.capacity) {
            let start = self.next;
            self.next += size;
            return Some(Run { start, order });
        }
        // Out of fresh space: split a larger free run.
        let (&bigger, _) = self.free.range(order + 1..).find(|(_, starts)| !starts.is_empty())?;
        let start = self.free.get_mut(&bigger).and_then(Vec::pop)?;
        self.free_gap(start + size, (1u32 << bigger) - size);
        Some(Run { start, order })
    }

    /// Gives a run back once the current change is done (see [`PickRuns::settle`]).
    pub fn retire(&mut self, run: Run) {
        self.retired.push(run);
    }

    /// The current change is done: what it retired may be taken again.
    pub fn settle(&mut self) {
        for run in std::mem::take(&mut self.retired) {
            self.free.entry(run.order).or_default().push(run.start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_powers_of_two_never_at_zero_and_never_overlap() {
        let mut picks = PickRuns::new(64);
        let a = picks.take(10).expect("room");
        let b = picks.take(3).expect("room");
        let c = picks.take(1).expect("room");
        assert_eq!((a, b, c), (Run { start: 1, order: 4 }, Run { start: 17, order: 2 }, Run { start: 21, order: 0 }));
        assert!(picks.take(64).is_none(), "no run larger than the array");
    }

    #[test]
    fn a_retired_run_is_reused_only_after_the_change_settles() {
        let mut picks = PickRuns::new(20);
        let a = picks.take(16).expect("room");
        picks.retire(a);
        assert!(picks.take(16).is_none(), "retired in this change: not yet free");
        picks.settle();
        assert_eq!(picks.take(16), Some(a));
    }

    #[test]
    fn a_full_array_splits_a_larger_free_run() {
        let mut picks = PickRuns::new(17);
        let a = picks.take(16).expect("room");
        picks.retire(a);
        picks.settle();
        let small = picks.take(2).expect("split");
        assert_eq!(small, Run { start: 1, order: 1 });
        assert_eq!(picks.take(8), Some(Run { start: 3, order: 3 }));
        assert_eq!(picks.take(4), Some(Run { start: 11, order: 2 }));
        assert_eq!(picks.take(2), Some(Run { start: 15, order: 1 }));
        assert!(picks.take(1).is_none());
    }

    #[test]
    fn runs_read_back_at_start_keep_their_place_and_the_gaps_are_free() {
        let held = [Run::of(5, 3).expect("run"), Run::of(33, 10).expect("run")];
        let mut picks = PickRuns::from_held(64, held);
        let mut got = Vec::new();
        while let Some(run) = picks.take(1) {
            got.push(run.start);
        }
        got.sort();
        let expected: Vec<u32> = (1..5).chain(9..33).chain(49..64).collect();
        assert_eq!(got, expected);
    }
}
