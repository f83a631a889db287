//! Benchmark: the heap an update of N field rules takes in the planner, by a
//! counting global allocator (live bytes and their peak), for the rule set
//! `scripts/bench/filter-reapply.sh` applies: N rules of one shape, a /32
//! source and a TCP destination port each. It prints the heap the wanted
//! rules take, the peak while planning the first apply and what its plan
//! (the applied state and the map writes) holds, then the same for the
//! second apply (one rule changed). The wanted rules are shared with the
//! plan's result, as the agent shares them.
//! `cargo run --release -p weir-filter --example plan_memory [RULES]`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use weir_filter::plan::{plan, Applied};
use weir_filter::spec::{Action, MatchSpec, PortRange, Protocol};
use weir_filter::RuleSpec;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Live heap now, and resets the peak to it.
fn mark() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

fn rule(i: u32, port: u16) -> RuleSpec {
    RuleSpec {
        name: format!("r{i}"),
        priority: 1000,
        matches: MatchSpec {
            source: Some(format!("{}/32", std::net::Ipv4Addr::from(0x0a00_0000 + i)).parse().expect("net")),
            protocol: Some(Protocol::TCP),
            destination_port: Some(PortRange { low: port, high: port }),
            ..Default::default()
        },
        expression: None,
        action: Action::Drop,
        rate_limit: None,
    }
}

fn main() {
    let n: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let base = mark();
    let wanted: Vec<Arc<RuleSpec>> = (0..n).map(|i| Arc::new(rule(i, 1000 + (i % 50_000) as u16))).collect();
    let specs = mark() - base;
    println!("{n} rules; heap in MiB (per rule in bytes)");
    println!("  wanted rules                    {:>8.1} ({:>5})", mib(specs), specs / n as usize);
    let mut current = Applied::default();
    for (label, desired) in [
        ("first apply", wanted.clone()),
        ("one rule changed", {
            let mut changed = wanted.clone();
            changed[n as usize / 2] = Arc::new(rule(n / 2, 7));
            changed
        }),
    ] {
        let before = mark();
        let planned = plan(&current, desired.iter(), |_| None).expect("plans");
        let peak = PEAK.load(Ordering::Relaxed) - before;
        let held = LIVE.load(Ordering::Relaxed) - before;
        let ops = planned.ops.len();
        let ops_bytes = ops * std::mem::size_of::<weir_filter::plan::Op>();
        println!("{label}: {ops} map writes");
        println!("  peak while planning             {:>8.1} ({:>5})", mib(peak), peak / n as usize);
        println!("  held by the plan                {:>8.1} ({:>5})", mib(held), held / n as usize);
        println!("    of which the map writes       {:>8.1} ({:>5})", mib(ops_bytes), ops_bytes / n as usize);
        current = planned.result;
    }
    println!("size of one map write (Op): {} bytes", std::mem::size_of::<weir_filter::plan::Op>());
}
