//! Benchmark: how long the load balancer takes to follow a change. Two
//! figures, p50 and p99 over many runs:
//! - the weighted Maglev table of one VIP with 1,000 reals (weights 1 to
//!   4), 65,537 slots, as `weir lb` builds it;
//! - a VIP change applied end to end on a private copy of the datapath: a
//!   1,001st real in (or out again), planned against the previous plan,
//!   diffed, and written to the kernel's maps (the real, the ring slots
//!   that moved); each phase is timed too.
//!
//! Run as root: `scripts/bench/xlb-update.sh [RUNS]`; the figures are
//! userspace time, so the script builds the crates doing the work optimized.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use weir_bpf::xlb;
use weir_lb::plan;

const REALS: usize = 1000;

/// One VIP with `reals` reals (10.1.x.y), weights 1 to 4.
fn config(reals: usize) -> String {
    let mut doc = String::from(
        "apiVersion: weir.dev/v1alpha1\nkind: XdpLoadBalancer\nmetadata: {name: bench}\nspec:\n  vips:\n  - name: \
         web\n    address: 198.51.100.10\n    port: 80\n    protocol: TCP\n    reals:\n",
    );
    for i in 0..reals {
        let _ = writeln!(doc, "    - {{address: 10.1.{}.{}, weight: {}}}", i / 250, i % 250 + 1, i % 4 + 1);
    }
    doc
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (at(0.50), at(0.99))
}

fn print_row(name: &str, samples: Vec<Duration>) {
    let (p50, p99) = percentiles(samples);
    println!("{name:<62} {:>9.2} {:>9.2}", p50.as_secs_f64() * 1e3, p99.as_secs_f64() * 1e3);
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let base = weir_lb::spec::parse(&config(REALS)).expect("valid configuration");
    let grown = weir_lb::spec::parse(&config(REALS + 1)).expect("valid configuration");

    let names: Vec<String> = (0..REALS).map(|i| format!("10.1.{}.{}:0", i / 250, i % 250 + 1)).collect();
    let weights: Vec<u32> = (0..REALS).map(|i| i as u32 % 4 + 1).collect();
    let table: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            let ring = weir_service::maglev::weighted_table(&names, &weights, weir_lb::RING_SIZE);
            let took = start.elapsed();
            assert_eq!(ring.len(), weir_lb::RING_SIZE);
            took
        })
        .collect();

    let (mut planning, mut diffing, mut writing, mut total) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut slots = Vec::new();
    xlb::with_private(|_skel, maps| {
        let mut current = plan::plan(&base, None);
        maps.apply(&plan::changes(None, &current)).expect("first plan applied");
        for run in 0..runs {
            // Alternate: the 1,001st real in, then out again.
            let wanted = if run % 2 == 0 { &grown } else { &base };
            let start = Instant::now();
            let next = plan::plan(wanted, Some(&current));
            let planned = Instant::now();
            let changes = plan::changes(Some(&current), &next);
            let diffed = Instant::now();
            maps.apply(&changes).expect("change applied");
            let written = Instant::now();
            assert!(!changes.ring_slots_written.is_empty(), "a real in or out rewrites ring slots");
            slots.push(changes.ring_slots_written.iter().map(|(_, s)| s.len()).sum::<usize>());
            planning.push(planned - start);
            diffing.push(diffed - planned);
            writing.push(written - diffed);
            total.push(written - start);
            current = next;
        }
    })
    .expect("load the load balancer");

    println!("{runs} runs; milliseconds");
    println!("{:<62} {:>9} {:>9}", "", "p50", "p99");
    print_row("Maglev table, 1,000 weighted reals, 65,537 slots", table);
    print_row("VIP change end to end (a real in or out)", total);
    print_row("  plan (the VIP's Maglev table, indexes kept)", planning);
    print_row("  diff against the previous plan", diffing);
    print_row("  map writes (the real, the ring slots that moved: one batch)", writing);
    slots.sort_unstable();
    println!("ring slots rewritten per change: median {}", slots[slots.len() / 2]);
}
