//! How long the delay line holds each packet, with netem's semantics (which
//! Chaos Mesh's `delay` inherits): a latency, a jitter drawn uniformly in
//! ±jitter with netem's correlated random numbers, and reordering that
//! sends one packet in `gap` at once with the `reorder` probability.

use std::time::Duration;

/// A delay experiment's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayModel {
    pub latency: Duration,
    pub jitter: Duration,
    /// Of 2^32: how much each jitter draw leans on the previous one.
    pub correlation: u32,
    pub reorder: Option<Reorder>,
}

/// netem's `reorder PERCENT [CORRELATION] gap GAP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reorder {
    /// Of 2^32: the chance a packet at the gap goes at once.
    pub probability: u32,
    pub correlation: u32,
    /// Packets delayed before one may go at once; at least 1.
    pub gap: u32,
}

/// netem's `get_crandom`: a draw that is the fresh one weighted against
/// the previous by the correlation.
#[derive(Debug, Clone, Copy, Default)]
pub struct CorrelatedRandom {
    last: u32,
}

impl CorrelatedRandom {
    pub fn next(&mut self, correlation: u32, fresh: u32) -> u32 {
        if correlation == 0 {
            return fresh;
        }
        let rho = u64::from(correlation) + 1;
        let answer = ((u64::from(fresh) * ((1u64 << 32) - rho) + u64::from(self.last) * rho) >> 32) as u32;
        self.last = answer;
        answer
    }
}

/// What one sender's packets carry from one to the next (netem keeps it
/// per qdisc, that is per pod device).
#[derive(Debug, Clone, Copy, Default)]
pub struct DelayState {
    jitter: CorrelatedRandom,
    reorder: CorrelatedRandom,
    counter: u32,
}

impl DelayState {
    /// How long the next packet waits; `fresh` gives uniform draws.
    pub fn next_delay(&mut self, model: &DelayModel, fresh: &mut impl FnMut() -> u32) -> Duration {
        if let Some(reorder) = &model.reorder {
            let gap = reorder.gap.max(1);
            if self.counter >= gap - 1 && reorder.probability >= self.reorder.next(reorder.correlation, fresh()) {
                self.counter = 0;
                return Duration::ZERO;
            }
        }
        self.counter = self.counter.saturating_add(1);
        if model.jitter.is_zero() {
            return model.latency;
        }
        let draw = self.jitter.next(model.correlation, fresh());
        // Uniform in [latency - jitter, latency + jitter).
        let span = 2 * model.jitter.as_nanos() as u64;
        let offset = ((u128::from(draw) * u128::from(span)) >> 32) as u64;
        let low = model.latency.as_nanos() as i128 - model.jitter.as_nanos() as i128;
        Duration::from_nanos((low + i128::from(offset)).max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(seed: u64) -> impl FnMut() -> u32 {
        let mut state = seed;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 16) as u32
        }
    }

    #[test]
    fn latency_and_jitter_stay_in_their_bounds() {
        let model = DelayModel {
            latency: Duration::from_millis(100),
            jitter: Duration::from_millis(20),
            correlation: 0,
            reorder: None,
        };
        let mut state = DelayState::default();
        let mut fresh = draws(7);
        let delays: Vec<Duration> = (0..10_000).map(|_| state.next_delay(&model, &mut fresh)).collect();
        assert!(delays.iter().all(|d| *d >= Duration::from_millis(80) && *d < Duration::from_millis(120)));
        let mean = delays.iter().map(|d| d.as_secs_f64()).sum::<f64>() / delays.len() as f64;
        assert!((mean - 0.1).abs() < 0.001, "mean {mean}");
        let fixed = DelayModel { jitter: Duration::ZERO, ..model };
        assert_eq!(state.next_delay(&fixed, &mut fresh), Duration::from_millis(100));
    }

    #[test]
    fn correlation_makes_draws_lean_on_the_last_one() {
        let mut fresh = draws(3);
        let mut random = CorrelatedRandom::default();
        let steps = |random: &mut CorrelatedRandom, fresh: &mut dyn FnMut() -> u32, rho: u32| {
            let mut last = random.next(rho, fresh());
            let mut total = 0u64;
            for _ in 0..1000 {
                let next = random.next(rho, fresh());
                total += u64::from(next.abs_diff(last));
                last = next;
            }
            total / 1000
        };
        let free = steps(&mut random, &mut fresh, 0);
        let leaning = steps(&mut random, &mut fresh, 3 << 30);
        assert!(leaning * 2 < free, "correlated steps {leaning} vs free {free}");
    }

    #[test]
    fn reorder_sends_its_share_at_once_past_the_gap() {
        let model = DelayModel {
            latency: Duration::from_millis(10),
            jitter: Duration::ZERO,
            correlation: 0,
            reorder: Some(Reorder { probability: u32::MAX, correlation: 0, gap: 5 }),
        };
        let mut state = DelayState::default();
        let mut fresh = draws(11);
        let delays: Vec<bool> = (0..10).map(|_| state.next_delay(&model, &mut fresh).is_zero()).collect();
        // Always at the gap: every fifth goes at once.
        assert_eq!(delays, [false, false, false, false, true, false, false, false, false, true]);
        let half = DelayModel { reorder: Some(Reorder { probability: 1 << 31, correlation: 0, gap: 1 }), ..model };
        let at_once = (0..10_000).filter(|_| state.next_delay(&half, &mut fresh).is_zero()).count();
        assert!((4_500..5_500).contains(&at_once), "{at_once} of 10000 at once");
    }
}
