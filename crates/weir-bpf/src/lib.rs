//! The one crate that calls bpf(2).
//!
//! # Layout
//! - [`skel`]: libbpf-cargo skeletons generated from `bpf/progs/*.bpf.c`.
//! - [`api`]: the C↔Rust contract: registries generated from `bpf/api/*.h`
//!   and the struct types the skeletons generate from BTF.
//! - [`datapath`]: loads the node datapath, pins it, attaches it, and on a
//!   restart adopts what the pins hold without detaching anything.
//! - [`filter`]: the packet filter's maps: planned writes, counters, the
//!   expression entry program, simulation on a private copy.
//! - [`chaos`]: chaos experiments' faults between pod addresses, with
//!   their end times, and what each experiment dropped;
//!   [`chaos_service`]: ServiceChaos's faults in the socket load balancer.
//! - [`socklb`]: the socket load balancer; [`socklb_quiet`]: its "nothing
//!   armed" flags, which let it skip the lookups of maps known empty.
//! - [`xlb`]: the XDP L4 load balancer (`weir lb`): its maps written from
//!   a weir-lb plan, its counters, private copies for fixtures, and the
//!   real servers' decapsulation program; [`xlb_baseline`]: the
//!   Katran-equivalent program its cost benchmark measures it against.
//! - [`xdp_peer`]: lets a veth take the frames its peer sends at XDP.
//! - [`clock`]: the clocks events are stamped with, and their wall time.
//! - [`stats`]: kernel run-time statistics, program and map introspection;
//!   [`map_fill`] counts a map's entries in batches, cheap enough per scrape.
//! - [`probe`]: learns what this kernel allows by loading tiny programs.
//! - [`profiler`]: the perf_event stack sampler behind `weir profile`;
//!   [`perf`] opens its cpu-clock events.
//! - [`testrun`]: the `BPF_PROG_TEST_RUN` fixture harness.
//! - [`runtime`]: runtime security's sensors: process and network-operation
//!   events, rules installed bank by bank, BPF LSM where allowed.
//! - [`tls`]: uprobes on OpenSSL's read and write functions: the
//!   plaintext HTTP/1.x heads of a scope's processes, with their sockets.
//!
//! Other crates never touch libbpf: they get plain Rust values from here,
//! so tests of pure logic elsewhere need no kernel.

pub mod api;
pub mod chaos;
pub mod chaos_dns;
pub mod chaos_service;
pub mod clock;
pub mod datapath;
mod error;
pub mod filter;
pub mod map_fill;
pub mod perf;
pub mod pods;
pub mod policy;
pub mod probe;
pub mod profiler;
pub mod reader_priority;
pub mod runtime;
pub mod skel;
pub mod sock_owner;
pub mod socklb;
pub mod socklb_quiet;
pub mod stats;
pub mod testrun;
pub mod tls;
pub mod xdp_peer;
pub mod xlb;
pub mod xlb_baseline;

pub use error::BpfError;

/// Now on the clock the kernel's `bpf_ktime_get_ns` reads (CLOCK_MONOTONIC),
/// in nanoseconds: the clock of every time a map holds (events' stamps:
/// [`clock`]).
pub fn ktime_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// Sends libbpf's own messages (verifier logs, load failures) to `tracing`
/// instead of stderr, so a daemon's log stays one structured line per entry.
pub fn log_libbpf_through_tracing() {
    fn forward(level: libbpf_rs::PrintLevel, message: String) {
        let message = message.trim_end();
        match level {
            libbpf_rs::PrintLevel::Warn => tracing::warn!(target: "libbpf", "{message}"),
            libbpf_rs::PrintLevel::Info => tracing::info!(target: "libbpf", "{message}"),
            libbpf_rs::PrintLevel::Debug => tracing::debug!(target: "libbpf", "{message}"),
        }
    }
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, forward)));
}
