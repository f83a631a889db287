//! Ending experiments on time while the agent runs: the kernel already
//! ignores an entry past its end time, and this removes what the
//! experiment left (its pairs, socket and DNS entries, token buckets, the
//! idle shaper and delay line, frozen pods) within a tick of its end, so
//! nothing outlives it waiting for the next apply, stop or list.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{now_unix_ns, ChaosState};

/// How often the agent looks for an experiment past its end.
const TICK: Duration = Duration::from_millis(250);

impl ChaosState {
    /// Whether a live experiment is past its end time.
    fn has_ended_experiments(&self) -> bool {
        let now = now_unix_ns();
        self.running.values().any(|r| !r.ended && r.end_unix_ns.is_some_and(|end| end <= now))
    }
}

/// Starts the thread that ends `state`'s experiments on time; it lives as
/// long as the agent.
pub fn end_on_time(state: Arc<Mutex<ChaosState>>) {
    let started = std::thread::Builder::new().name("chaos-ends".into()).spawn(move || loop {
        std::thread::sleep(TICK);
        let Ok(mut chaos) = state.lock() else { return };
        if chaos.has_ended_experiments() {
            if let Err(e) = chaos.sweep() {
                tracing::warn!(error = %e, "removing ended chaos experiments' entries");
            }
        }
    });
    if let Err(e) = started {
        tracing::warn!(error = %e, "no thread to end chaos experiments on time: they end at the next apply, stop or list");
    }
}
