//! Rounds of health probes, shared by the socket load balancer's backends
//! and the XDP load balancer's reals: every interval, list the probes under
//! the state's lock, run them all at once, and settle the results under the
//! lock again, off the async threads.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One probe of a round: its key, and whether it passed.
pub type ProbeFuture<K> = Pin<Box<dyn Future<Output = (K, bool)> + Send>>;

/// Runs rounds until `stop` turns true (or the state is poisoned). `list`
/// gets each probe's timeout (four fifths of the interval); `settle` gets
/// the results and the ktime the round started.
pub async fn probe_rounds<S, K>(
    state: Arc<Mutex<S>>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    list: impl Fn(&S, Duration) -> Vec<ProbeFuture<K>>,
    settle: impl Fn(&mut S, Vec<(K, bool)>, u64) + Clone + Send + 'static,
) where
    S: Send + 'static,
    K: Send + 'static,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let probes = match state.lock() {
            Ok(s) => list(&s, interval.mul_f32(0.8)),
            Err(_) => return,
        };
        let started_ns = weir_bpf::ktime_now_ns();
        let mut checks = tokio::task::JoinSet::new();
        for probe in probes {
            checks.spawn(probe);
        }
        let results = checks.join_all().await;
        let (state, settle) = (state.clone(), settle.clone());
        let _ = tokio::task::spawn_blocking(move || {
            if let Ok(mut s) = state.lock() {
                settle(&mut s, results, started_ns);
            }
        })
        .await;
    }
}
