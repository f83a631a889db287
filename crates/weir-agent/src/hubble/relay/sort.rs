//! Putting several nodes' answers in time order (pure).
//!
//! Each node sends its flows in time order, but the nodes' streams interleave
//! as the network delivers them. Followed flows wait in a bounded buffer:
//! the oldest leaves when the buffer is full or when it has waited the drain
//! timeout, as Hubble Relay's `--sort-buffer-len-max` and
//! `--sort-buffer-drain-timeout` do. A flow that arrives after a newer one
//! has left is sent at once, out of order, rather than dropped.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// A followed answer waiting its turn.
#[derive(Debug)]
struct Waiting<T> {
    at_ns: u64,
    /// Arrival order: equal times leave in the order they came.
    order: u64,
    arrived: Instant,
    item: T,
}

impl<T> PartialEq for Waiting<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ns, self.order) == (other.at_ns, other.order)
    }
}
impl<T> Eq for Waiting<T> {}
impl<T> PartialOrd for Waiting<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Waiting<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at_ns, self.order).cmp(&(other.at_ns, other.order))
    }
}

/// The sort buffer of one followed request.
#[derive(Debug)]
pub struct SortBuffer<T> {
    heap: BinaryHeap<Reverse<Waiting<T>>>,
    len_max: usize,
    drain_after: Duration,
    arrivals: u64,
}

impl<T> SortBuffer<T> {
    pub fn new(len_max: usize, drain_after: Duration) -> Self {
        Self { heap: BinaryHeap::new(), len_max: len_max.max(1), drain_after, arrivals: 0 }
    }

    /// Adds an answer of time `at_ns`; returns what must leave now because
    /// the buffer is full, oldest first.
    pub fn push(&mut self, at_ns: u64, item: T, now: Instant) -> Vec<T> {
        self.arrivals += 1;
        self.heap.push(Reverse(Waiting { at_ns, order: self.arrivals, arrived: now, item }));
        let mut out = Vec::new();
        while self.heap.len() > self.len_max {
            if let Some(Reverse(w)) = self.heap.pop() {
                out.push(w.item);
            }
        }
        out
    }

    /// What has waited the drain timeout, with everything older than it,
    /// oldest first.
    pub fn drain_due(&mut self, now: Instant) -> Vec<T> {
        let Some(newest_due) = self
            .heap
            .iter()
            .filter(|Reverse(w)| now.saturating_duration_since(w.arrived) >= self.drain_after)
            .map(|Reverse(w)| (w.at_ns, w.order))
            .max()
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while self.heap.peek().is_some_and(|Reverse(w)| (w.at_ns, w.order) <= newest_due) {
            if let Some(Reverse(w)) = self.heap.pop() {
                out.push(w.item);
            }
        }
        out
    }

    /// Everything, oldest first (the request ends).
    pub fn drain_all(&mut self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.heap.len());
        while let Some(Reverse(w)) = self.heap.pop() {
            out.push(w.item);
        }
        out
    }
}

/// A finished answer from every node, in time order, cut to the request's
/// `number` of flows over all nodes (the last ones, or the first with
/// `first`). `is_flow` tells flows from notices (lost events, node status),
/// which are all kept, in their place.
pub fn merge_finished<T>(mut answers: Vec<(u64, T)>, number: u64, first: bool, is_flow: impl Fn(&T) -> bool) -> Vec<T> {
    // Stable: one node's answers keep their order at equal times.
    answers.sort_by_key(|(at, _)| *at);
    let number = usize::try_from(number).unwrap_or(usize::MAX);
    let flows = answers.iter().filter(|(_, a)| is_flow(a)).count();
    if number == 0 || flows <= number {
        return answers.into_iter().map(|(_, a)| a).collect();
    }
    let mut skip = flows - number;
    if first {
        let mut kept = 0;
        answers
            .into_iter()
            .filter(|(_, a)| {
                if !is_flow(a) {
                    return true;
                }
                kept += 1;
                kept <= number
            })
            .map(|(_, a)| a)
            .collect()
    } else {
        answers
            .into_iter()
            .filter(|(_, a)| {
                if !is_flow(a) || skip == 0 {
                    return true;
                }
                skip -= 1;
                false
            })
            .map(|(_, a)| a)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_buffer_lets_the_oldest_go() {
        let now = Instant::now();
        let mut buffer = SortBuffer::new(3, Duration::from_secs(60));
        assert!(buffer.push(30, "c", now).is_empty());
        assert!(buffer.push(10, "a", now).is_empty());
        assert!(buffer.push(20, "b", now).is_empty());
        assert_eq!(buffer.push(40, "d", now), vec!["a"]);
        assert_eq!(buffer.drain_all(), vec!["b", "c", "d"]);
    }

    #[test]
    fn waiting_past_the_timeout_lets_it_and_everything_older_go() {
        let start = Instant::now();
        let mut buffer = SortBuffer::new(100, Duration::from_millis(500));
        buffer.push(50, "late-node", start);
        buffer.push(10, "early", start + Duration::from_millis(400));
        buffer.push(90, "newest", start + Duration::from_millis(400));
        assert!(buffer.drain_due(start + Duration::from_millis(100)).is_empty(), "nothing is due yet");
        // "late-node" is due; "early" is older, so it goes first, with it.
        assert_eq!(buffer.drain_due(start + Duration::from_millis(500)), vec!["early", "late-node"]);
        assert_eq!(buffer.drain_due(start + Duration::from_millis(900)), vec!["newest"]);
    }

    #[test]
    fn equal_times_keep_their_arrival_order() {
        let now = Instant::now();
        let mut buffer = SortBuffer::new(10, Duration::ZERO);
        for item in ["x", "y", "z"] {
            buffer.push(7, item, now);
        }
        assert_eq!(buffer.drain_due(now), vec!["x", "y", "z"]);
    }

    #[test]
    fn a_finished_answer_is_cut_to_number_over_all_nodes() {
        // (time, name); names starting with '!' are notices.
        let answers = || vec![(5, "b1"), (1, "a1"), (3, "!lost"), (2, "b0"), (9, "a2")];
        let is_flow = |a: &&str| !a.starts_with('!');
        assert_eq!(merge_finished(answers(), 0, false, is_flow), vec!["a1", "b0", "!lost", "b1", "a2"]);
        assert_eq!(merge_finished(answers(), 2, false, is_flow), vec!["!lost", "b1", "a2"]);
        assert_eq!(merge_finished(answers(), 2, true, is_flow), vec!["a1", "b0", "!lost"]);
        assert_eq!(merge_finished(answers(), 10, true, is_flow).len(), 5);
    }
}
