//! The CPU priority of a thread that reads a kernel ring of events: it
//! yields to the node's work while it keeps up, and competes for the CPU
//! as soon as a backlog builds.
//!
//! Why: a reader wakes on its timer and reads a few hundred events in a
//! burst. At normal priority that burst takes the core from whatever was
//! about to run there, and on the pod path that is a request waiting for
//! its response: one HTTP stream between two pods ran at 0.73–0.93 of its
//! rate without L7 visibility with the reader at normal priority, and at
//! 0.92–1.1 with it yielding (same labs, alternated). A yielding reader
//! runs on cycles nothing else wants, and any task that wakes preempts it.
//! A reader kept from the CPU too long loses events, though (the ring
//! refuses new records when full), so once a read finds a quarter of the
//! ring waiting, or the reader woke well after its timer was due, the
//! thread competes at normal priority, and yields again only after reads
//! kept up for a while.

use std::time::{Duration, Instant};

/// A read that found this share of the ring or more: the reader is behind.
const BEHIND_SHARE: usize = 4;
/// A reader that woke this much after its timer was due: it is kept from
/// the CPU (the node's cores are busy), and competes for it.
const LATE: Duration = Duration::from_millis(20);
/// How long a reader competes after it was last behind or late, before it
/// yields again: a busy node's reader should not go back and forth.
const HOLD: Duration = Duration::from_secs(5);
/// The nice value of a reader that yields: the least weight the fair
/// scheduler gives (a fiftieth of a normal task's), and wakeups of normal
/// tasks preempt it. Not `SCHED_IDLE`: a reader there waited over a second
/// for a busy node's cores, and lost most of a flood's events before it
/// could tell it was behind; at nice 19 it waits some 100 ms, and the ring
/// holds more.
const YIELDING_NICE: libc::c_int = 19;

/// The priority a ring's reader thread runs at, changed by what its reads
/// find. Made on the reader thread (the priority it sets is that
/// thread's).
#[derive(Debug)]
pub struct ReaderPriority {
    ring_bytes: usize,
    /// Whether the thread may yield: it can return to normal priority
    /// (CAP_SYS_NICE), and it yielded once.
    may_yield: bool,
    yielding: bool,
    /// Bytes read since the read began.
    read: usize,
    /// When a read last found the reader behind or late.
    behind_at: Option<Instant>,
}

impl ReaderPriority {
    /// Starts the calling thread yielding, when it will be able to return
    /// to normal priority (else it stays as it is, and so does every later
    /// call).
    pub fn start(ring_bytes: usize) -> Self {
        let may_yield = may_raise_priority() && set_yielding(true).is_ok();
        Self { ring_bytes, may_yield, yielding: may_yield, read: 0, behind_at: None }
    }

    /// A record of `bytes` was read. Once a read finds the reader behind,
    /// it competes at once, for the rest of the read too: a reader taking
    /// a large backlog at the least weight under load would fall further
    /// behind with every record.
    pub fn record(&mut self, bytes: usize) {
        self.read += bytes;
        if self.yielding && self.read >= self.ring_bytes / BEHIND_SHARE {
            self.set(false);
        }
    }

    /// A read ended, `waited` after the reader began waiting for records
    /// with `timeout`: what it found sets the priority for the next.
    pub fn read_done(&mut self, waited: Duration, timeout: Duration, now: Instant) {
        let behind = self.read >= self.ring_bytes / BEHIND_SHARE || waited >= timeout + LATE;
        self.read = 0;
        if behind {
            self.behind_at = Some(now);
        }
        let since_behind = self.behind_at.map_or(Duration::MAX, |at| now.saturating_duration_since(at));
        let yielding = next_yielding(self.yielding, behind, since_behind);
        if yielding != self.yielding {
            self.set(yielding);
        }
    }

    fn set(&mut self, yielding: bool) {
        if !self.may_yield {
            return;
        }
        match set_yielding(yielding) {
            Ok(()) => self.yielding = yielding,
            Err(e) => {
                // Not expected with CAP_SYS_NICE; normal priority then, for
                // good, so the reader never stays behind.
                tracing::warn!(error = %e, "changing the flow reader's CPU priority; it stays at normal priority");
                self.may_yield = false;
                self.yielding = self.yielding && set_yielding(false).is_err();
            }
        }
    }

    /// Whether the thread yields now.
    pub fn is_yielding(&self) -> bool {
        self.yielding
    }
}

/// Whether a reader should yield after a read that found it `behind` (or
/// not), `since_behind` after a read last did, given whether it yielded
/// (pure).
fn next_yielding(yielding: bool, behind: bool, since_behind: Duration) -> bool {
    if behind {
        false
    } else {
        yielding || since_behind >= HOLD
    }
}

/// Sets the calling thread's nice value: the yielding one, or normal (0).
/// On Linux a nice value is a thread's, not its process's.
fn set_yielding(yielding: bool) -> std::io::Result<()> {
    let nice = if yielding { YIELDING_NICE } else { 0 };
    // SAFETY: PRIO_PROCESS with who 0 is the calling thread; no pointers.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether the calling thread holds CAP_SYS_NICE, which going back from
/// nice 19 to 0 needs (any thread may lower its priority, not raise it).
fn may_raise_priority() -> bool {
    const CAP_SYS_NICE: u32 = 23;
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim().to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_NICE) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RING: usize = 4 << 20;

    #[test]
    fn a_reader_competes_as_soon_as_a_read_finds_it_behind() {
        assert!(!next_yielding(true, true, Duration::ZERO));
        assert!(!next_yielding(false, true, Duration::MAX));
        assert!(next_yielding(true, false, Duration::ZERO), "a yielding reader that keeps up goes on yielding");
    }

    #[test]
    fn a_competing_reader_yields_again_only_after_keeping_up_for_a_while() {
        assert!(!next_yielding(false, false, HOLD - Duration::from_millis(1)));
        assert!(next_yielding(false, false, HOLD));
    }

    /// The calling thread's nice value.
    fn nice() -> libc::c_int {
        // SAFETY: no pointers; errno is not consulted (0 is a valid result).
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[test]
    fn a_thread_yields_and_competes_as_its_reads_say() {
        // On a thread of its own: the nice value is the thread's.
        std::thread::spawn(|| {
            let timeout = Duration::from_millis(20);
            let mut priority = ReaderPriority::start(RING);
            if !may_raise_priority() {
                assert!(!priority.is_yielding(), "without CAP_SYS_NICE the reader never yields");
                return;
            }
            assert!(priority.is_yielding());
            assert_eq!(nice(), YIELDING_NICE);
            let t0 = Instant::now();
            priority.record(RING / 8);
            priority.read_done(timeout, timeout, t0);
            assert!(priority.is_yielding(), "an eighth of the ring, on time: keeping up");
            priority.record(RING / 8);
            priority.record(RING / 8);
            assert!(!priority.is_yielding(), "a quarter of the ring, in the middle of a read: competing at once");
            assert_eq!(nice(), 0);
            priority.read_done(timeout, timeout, t0);
            priority.read_done(timeout, timeout, t0 + HOLD / 2);
            assert!(!priority.is_yielding(), "still competing within the hold");
            priority.read_done(timeout, timeout, t0 + HOLD);
            assert!(priority.is_yielding());
            assert_eq!(nice(), YIELDING_NICE);
            priority.read_done(timeout + LATE, timeout, t0 + HOLD * 2);
            assert!(!priority.is_yielding(), "a late wakeup: the node's cores are busy");
            assert_eq!(nice(), 0);
        })
        .join()
        .expect("the reader thread's checks");
    }
}
