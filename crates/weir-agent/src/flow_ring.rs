//! The agent's ring of recent flow events: the newest `capacity` kept, each
//! numbered in arrival order, with a count of those overwritten per second so
//! a reader asking for a time the ring no longer holds is told how many it
//! missed (Hubble's `lost_events`). Pure: no I/O.

use std::collections::VecDeque;

/// Seconds of overwrite history kept; older overwrites are summed into one count.
const EVICTION_SECONDS: usize = 86_400;

#[derive(Debug, Clone)]
pub struct FlowRing<T> {
    capacity: usize,
    /// (sequence number, unix ns, item), oldest first.
    items: VecDeque<(u64, u64, T)>,
    seen: u64,
    /// Overwritten items by unix second, oldest first.
    evicted: VecDeque<(u64, u64)>,
    /// Overwritten items whose per-second count was folded away, and the
    /// last second they cover.
    evicted_folded: (u64, u64),
}

/// What a reader asked the ring for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub since_ns: Option<u64>,
    pub until_ns: Option<u64>,
}

impl Window {
    /// Whether unix time `t` (ns) falls in the window, both ends included.
    pub fn contains(&self, t: u64) -> bool {
        self.since_ns.is_none_or(|s| t >= s) && self.until_ns.is_none_or(|u| t <= u)
    }
}

impl<T: Clone> FlowRing<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            items: VecDeque::with_capacity(capacity.max(1)),
            seen: 0,
            evicted: VecDeque::new(),
            evicted_folded: (0, 0),
        }
    }

    /// Adds an item observed at `time_ns` (unix); returns its sequence number.
    pub fn push(&mut self, time_ns: u64, item: T) -> u64 {
        if self.items.len() == self.capacity {
            self.evict_oldest();
        }
        self.seen += 1;
        self.items.push_back((self.seen, time_ns, item));
        self.seen
    }

    /// Overwrites (drops) the oldest items now, so that `incoming` more fit
    /// without overwriting any: a caller that is about to build that many
    /// items frees the old ones first, and the allocator hands it back
    /// memory it has just touched. Reads ahead what dropping each item will
    /// touch (`warm` loads it; its sum is kept from the optimizer): the
    /// oldest items are cold, and plain loads of items further on overlap
    /// with the drop of this one, where a drop's atomic reference-count
    /// decrements wait for each miss in turn.
    pub fn make_room_warming(&mut self, incoming: usize, mut warm: impl FnMut(&T) -> usize) {
        /// How many items ahead of the one dropped are read.
        const AHEAD: usize = 8;
        let over = (self.items.len() + incoming).saturating_sub(self.capacity).min(self.items.len());
        let mut touched: usize = self.items.iter().take(over.min(AHEAD)).map(|(_, _, item)| warm(item)).sum();
        for dropped in 0..over {
            if dropped + AHEAD < over {
                if let Some((_, _, item)) = self.items.get(AHEAD) {
                    touched = touched.wrapping_add(warm(item));
                }
            }
            self.evict_oldest();
        }
        std::hint::black_box(touched);
    }

    fn evict_oldest(&mut self) {
        if let Some((_, old_time, _)) = self.items.pop_front() {
            self.count_eviction(old_time / 1_000_000_000);
        }
    }

    fn count_eviction(&mut self, second: u64) {
        match self.evicted.back_mut() {
            Some((s, n)) if *s >= second => *n += 1,
            _ => self.evicted.push_back((second, 1)),
        }
        if self.evicted.len() > EVICTION_SECONDS {
            if let Some((s, n)) = self.evicted.pop_front() {
                self.evicted_folded = (self.evicted_folded.0 + n, s);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Items ever pushed.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Items overwritten.
    pub fn overwritten(&self) -> u64 {
        self.evicted_folded.0 + self.evicted.iter().map(|(_, n)| n).sum::<u64>()
    }

    /// The items within `window`, oldest first, with their sequence numbers.
    pub fn within(&self, window: Window) -> Vec<(u64, u64, T)> {
        self.items.iter().filter(|(_, t, _)| window.contains(*t)).cloned().collect()
    }

    /// The items within `window`, oldest first, borrowed.
    pub fn iter_within(&self, window: Window) -> impl Iterator<Item = &T> + '_ {
        self.items.iter().filter(move |(_, t, _)| window.contains(*t)).map(|(_, _, item)| item)
    }

    /// Overwritten items that fell within `window`, to the second (an item
    /// overwritten in the second `since` falls in counts, whatever its
    /// nanoseconds); folded history counts whole when the window reaches it.
    pub fn overwritten_within(&self, window: Window) -> u64 {
        let since = window.since_ns.map_or(0, |s| s / 1_000_000_000);
        let until = window.until_ns.map_or(u64::MAX, |u| u / 1_000_000_000);
        let recent: u64 = self.evicted.iter().filter(|(s, _)| *s >= since && *s <= until).map(|(_, n)| n).sum();
        let folded =
            if self.evicted_folded.0 > 0 && since <= self.evicted_folded.1 { self.evicted_folded.0 } else { 0 };
        recent + folded
    }

    /// The sequence number of the newest item (0 when none yet).
    pub fn last_sequence(&self) -> u64 {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn the_ring_keeps_the_newest_and_counts_what_it_overwrote_by_second() {
        let mut ring = FlowRing::new(3);
        for (i, t) in [10 * S, 10 * S + 5, 11 * S, 12 * S, 13 * S].into_iter().enumerate() {
            assert_eq!(ring.push(t, i), i as u64 + 1);
        }
        assert_eq!((ring.len(), ring.seen(), ring.overwritten()), (3, 5, 2));
        assert_eq!(ring.within(Window::default()).iter().map(|(_, _, i)| *i).collect::<Vec<_>>(), vec![2, 3, 4]);
        let w = |since: u64, until: Option<u64>| Window { since_ns: Some(since), until_ns: until };
        assert_eq!(ring.overwritten_within(w(10 * S, None)), 2);
        assert_eq!(ring.overwritten_within(w(11 * S, None)), 0, "both overwritten ones were from second 10");
        assert_eq!(ring.overwritten_within(w(0, Some(9 * S))), 0);
        assert_eq!(ring.within(w(12 * S, Some(12 * S))).len(), 1);
    }

    #[test]
    fn making_room_overwrites_the_oldest_as_pushing_would() {
        let mut ring = FlowRing::new(4);
        for i in 0..4u64 {
            ring.push(10 * S + i, i);
        }
        ring.make_room_warming(3, |_| 0);
        assert_eq!(ring.within(Window::default()).iter().map(|(_, _, i)| *i).collect::<Vec<_>>(), vec![3]);
        assert_eq!(
            (ring.overwritten(), ring.overwritten_within(Window { since_ns: Some(10 * S), until_ns: None })),
            (3, 3)
        );
        let mut warmed = Vec::new();
        ring.make_room_warming(9, |i| {
            warmed.push(*i);
            0
        });
        assert_eq!(warmed, vec![3], "only what goes is read first");
        assert!(ring.is_empty(), "more than it holds empties it");
        assert_eq!((ring.seen(), ring.overwritten()), (4, 4));
        for i in 4..8u64 {
            ring.push(11 * S, i);
        }
        assert_eq!(ring.overwritten(), 4, "the room made was used without overwriting");
    }
}
