//! The CPU priority of a thread that reads a kernel ring of events: it
//! runs only on cycles nothing else wants while it keeps up, and competes
//! for the CPU as soon as a backlog builds.
//!
//! Why: a reader wakes on its timer and reads a few hundred events in a
//! burst. At normal priority that burst takes the core from whatever was
//! about to run there, and on the pod path that is a request waiting for
//! its response: one HTTP stream between two pods lost 5–8% of its rate to
//! the reader at normal priority or at nice 19, and 1–4% with it in
//! `SCHED_IDLE` (same labs, alternated; docs/observe.md). An idle-class
//! thread runs only when a core has nothing else to run, and any task that
//! wakes preempts it at once.
//!
//! The price: on busy cores an idle-class thread does not run at all (one
//! waited 1.6 s under a flood, and the ring filled and refused most of the
//! flood's events), so it cannot be the one to notice it is behind. A
//! guard thread at normal priority notices for it, and costs nothing while
//! all is well: it sleeps on the ring's file, which the kernel wakes only
//! when the backlog reaches a mark (bpf/lib/ring_wakeup.h, a quarter of the
//! ring), and on a timer that checks the reader read lately. Either puts the
//! reader back in the normal class at once. The reader also competes when a
//! read finds a quarter of the ring waiting, or it woke well after its
//! timer was due, and yields again only after its reads kept up for a
//! while.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A read that found this share of the ring or more: the reader is behind.
const BEHIND_SHARE: usize = 4;
/// A reader that woke this much after its timer was due: it is kept from
/// the CPU (the node's cores are busy), and competes for it.
const LATE: Duration = Duration::from_millis(20);
/// How long a reader competes after it was last behind or late, before it
/// yields again: a busy node's reader should not go back and forth.
const HOLD: Duration = Duration::from_secs(5);
/// How often the guard checks the reader read lately, and how long without
/// a read it calls starved: a reader that keeps up ends a read every poll
/// interval (20 ms for the flow ring). A starved reader is found within
/// 75 ms, a third of what the flow ring holds under a 220k events/s flood
/// (a guard that looked every 100 ms let such a flood fill it once in five
/// runs, when the kernel's wakeup at the mark did not come); a guard's
/// wakeup costs a few microseconds.
const GUARD_INTERVAL: Duration = Duration::from_millis(25);
const STARVED: Duration = Duration::from_millis(50);

/// The priority a ring's reader thread runs at, changed by what its reads
/// find and by its guard. Made on the reader thread (the policy it sets is
/// that thread's).
#[derive(Debug)]
pub struct ReaderPriority {
    shared: Arc<Shared>,
    ring_bytes: usize,
    /// Bytes read since the read began.
    read: usize,
}

/// What the reader and its guard share.
#[derive(Debug)]
struct Shared {
    /// The reader thread.
    tid: libc::pid_t,
    /// Whether the reader runs in the idle class now (written under `state`).
    yielding: AtomicBool,
    state: Mutex<State>,
    /// When the reader last ended a read, in ns since `epoch`.
    read_end_ns: AtomicU64,
    epoch: Instant,
}

#[derive(Debug)]
struct State {
    /// Whether the thread may yield: it can return to the normal class
    /// (CAP_SYS_NICE), and changing its class worked so far.
    may_yield: bool,
    /// When the reader was last found behind, late or starved.
    behind_at: Option<Instant>,
}

impl ReaderPriority {
    /// The calling thread's priority, as a ring's reader: it competes
    /// until its first read ends, and yields from then on while its reads
    /// keep up, when it will be able to return to the normal class (else
    /// it stays as it is). Whatever waits for the reader to start (an
    /// agent's startup) never waits on an idle-class thread.
    pub fn start(ring_bytes: usize) -> Self {
        let tid = this_thread();
        let may_yield = may_raise_priority();
        let epoch = Instant::now();
        let shared = Shared {
            tid,
            yielding: AtomicBool::new(false),
            state: Mutex::new(State { may_yield, behind_at: None }),
            read_end_ns: AtomicU64::new(0),
            epoch,
        };
        Self { shared: Arc::new(shared), ring_bytes, read: 0 }
    }

    /// A record of `bytes` was read. Once a read finds the reader behind,
    /// it competes at once, for the rest of the read too: a reader taking
    /// a large backlog on leftover cycles would fall further behind with
    /// every record.
    pub fn record(&mut self, bytes: usize) {
        self.read += bytes;
        if self.read >= self.ring_bytes / BEHIND_SHARE && self.shared.yielding.load(Ordering::Relaxed) {
            self.shared.compete(Instant::now());
        }
    }

    /// A read ended, `waited` after the reader began waiting for records
    /// with `timeout`: what it found sets the priority for the next.
    pub fn read_done(&mut self, waited: Duration, timeout: Duration, now: Instant) {
        let behind = self.read >= self.ring_bytes / BEHIND_SHARE || waited >= timeout + LATE;
        self.read = 0;
        self.shared.read_end_ns.store(self.shared.since_epoch(now), Ordering::Relaxed);
        let mut state = self.shared.lock();
        if behind {
            state.behind_at = Some(now);
        }
        let since_behind = state.behind_at.map_or(Duration::MAX, |at| now.saturating_duration_since(at));
        let yielding = self.shared.yielding.load(Ordering::Relaxed);
        let next = next_yielding(yielding, behind, since_behind);
        if next != yielding {
            self.shared.set(&mut state, next);
        }
    }

    /// The normal class for good: a reader nothing can guard.
    pub fn stop_yielding(&self) {
        self.shared.stop_yielding();
    }

    /// Whether the thread yields now.
    pub fn is_yielding(&self) -> bool {
        self.shared.yielding.load(Ordering::Relaxed)
    }

    /// Starts the guard that puts this reader back in the normal class when
    /// `ring` (a file the kernel wakes once the ring's backlog reaches its
    /// mark) wakes, or the reader has not read for a while. None when the
    /// reader never yields (nothing to guard), or the guard could not start
    /// (the reader then stays in the normal class for good).
    pub fn guard(&self, ring: OwnedFd) -> Option<ReaderGuard> {
        if !self.shared.lock().may_yield {
            return None;
        }
        match ReaderGuard::start(ring, self.shared.clone()) {
            Ok(guard) => Some(guard),
            Err(e) => {
                tracing::warn!(error = %e, "starting a ring reader's guard; the reader stays in the normal class");
                self.shared.stop_yielding();
                None
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn since_epoch(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The reader is behind (or kept from the CPU): it competes, from now
    /// on for at least the hold.
    fn compete(&self, now: Instant) {
        let mut state = self.lock();
        state.behind_at = Some(now);
        if self.yielding.load(Ordering::Relaxed) {
            self.set(&mut state, false);
        }
    }

    /// The normal class for good.
    fn stop_yielding(&self) {
        let mut state = self.lock();
        self.set(&mut state, false);
        state.may_yield = false;
    }

    /// Whether a yielding reader has not ended a read for too long.
    fn starved(&self, now: Instant) -> bool {
        let last = Duration::from_nanos(self.read_end_ns.load(Ordering::Relaxed));
        self.yielding.load(Ordering::Relaxed) && now.saturating_duration_since(self.epoch) >= last + STARVED
    }

    fn set(&self, state: &mut State, yielding: bool) {
        if !state.may_yield {
            return;
        }
        match set_yielding(self.tid, yielding) {
            Ok(()) => self.yielding.store(yielding, Ordering::Relaxed),
            Err(e) => {
                // Not expected with CAP_SYS_NICE; the normal class then, for
                // good, so the reader never stays behind.
                tracing::warn!(error = %e, "changing a ring reader's CPU scheduling class; it stays in the normal class");
                state.may_yield = false;
                let stuck = self.yielding.load(Ordering::Relaxed) && set_yielding(self.tid, false).is_err();
                self.yielding.store(stuck, Ordering::Relaxed);
            }
        }
    }
}

/// Whether a reader should yield after a read that found it `behind` (or
/// not), `since_behind` after it was last found behind, given whether it
/// yielded (pure).
fn next_yielding(yielding: bool, behind: bool, since_behind: Duration) -> bool {
    if behind {
        false
    } else {
        yielding || since_behind >= HOLD
    }
}

/// The calling thread's id.
fn this_thread() -> libc::pid_t {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// Puts the reader thread in the idle class, or back in the normal one.
fn set_yielding(tid: libc::pid_t, yielding: bool) -> std::io::Result<()> {
    let policy = if yielding { libc::SCHED_IDLE } else { libc::SCHED_OTHER };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` outlives the call; a tid names one thread.
    if unsafe { libc::sched_setscheduler(tid, policy, &param) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether the calling thread holds CAP_SYS_NICE, which leaving the idle
/// class needs (any thread may lower its priority, not raise it).
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

/// A thread at normal priority that returns a yielding reader to the
/// normal class when its ring wakes it or the reader starves. Stopped and
/// joined when dropped.
#[derive(Debug)]
pub struct ReaderGuard {
    stop: OwnedFd,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The guard thread.
    tid: libc::pid_t,
}

impl ReaderGuard {
    fn start(ring: OwnedFd, shared: Arc<Shared>) -> std::io::Result<Self> {
        let epoll = owned(
            // SAFETY: no pointers.
            unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) },
        )?;
        let stop = owned(
            // SAFETY: no pointers.
            unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) },
        )?;
        // Edge-triggered: woken once per kernel wakeup, not for as long as
        // the ring holds anything.
        watch(&epoll, &ring, (libc::EPOLLIN | libc::EPOLLET) as u32, RING_TOKEN)?;
        watch(&epoll, &stop, libc::EPOLLIN as u32, STOP_TOKEN)?;
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new().name("weir-ring-guard".into()).spawn(move || {
            // Open while the guard watches it.
            let _ring = ring;
            // A thread starts in its creator's class, and the reader that
            // starts its guard is idle already: a guard starved with it
            // would guard nothing.
            let tid = this_thread();
            let normal = set_yielding(tid, false).map(|()| tid);
            let started = normal.is_ok();
            let _ = started_tx.send(normal);
            if started {
                guard_loop(&epoll, &shared);
            }
        })?;
        let started = started_rx.recv().map_err(|_| std::io::Error::other("the guard thread ended before it started"));
        match started.and_then(|normal| normal) {
            Ok(tid) => Ok(Self { stop, thread: Some(thread), tid }),
            Err(e) => {
                let _ = thread.join();
                Err(e)
            }
        }
    }

    /// The guard thread's id.
    pub fn tid(&self) -> libc::pid_t {
        self.tid
    }
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from `one`, which outlives the call.
        unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

const RING_TOKEN: u64 = 0;
const STOP_TOKEN: u64 = 1;

fn guard_loop(epoll: &OwnedFd, shared: &Shared) {
    let timeout = i32::try_from(GUARD_INTERVAL.as_millis()).unwrap_or(i32::MAX);
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
    loop {
        // SAFETY: `events` has room for the 2 asked for and outlives the call.
        let n = unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), 2, timeout) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // The reader is left unguarded: it competes for good.
            tracing::warn!(error = %e, "a ring reader's guard stopped; the reader stays in the normal class");
            shared.stop_yielding();
            return;
        }
        let woken = &events[..usize::try_from(n).unwrap_or(0)];
        if woken.iter().any(|e| e.u64 == STOP_TOKEN) {
            return;
        }
        let now = Instant::now();
        if woken.iter().any(|e| e.u64 == RING_TOKEN) || shared.starved(now) {
            shared.compete(now);
        }
    }
}

fn owned(fd: libc::c_int) -> std::io::Result<OwnedFd> {
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned to us, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn watch(epoll: &OwnedFd, fd: &OwnedFd, events: u32, token: u64) -> std::io::Result<()> {
    let mut event = libc::epoll_event { events, u64: token };
    // SAFETY: `event` outlives the call; both descriptors are open.
    if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut event) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
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

    /// The calling thread's scheduling policy.
    fn policy() -> libc::c_int {
        // SAFETY: no pointers; 0 is the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    fn eventfd() -> OwnedFd {
        // SAFETY: no pointers.
        owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) }).expect("an eventfd")
    }

    fn signal(fd: &OwnedFd) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from `one`, which outlives the call.
        assert_eq!(unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) }, 8);
    }

    /// Waits up to 5 s for `done`.
    fn eventually(done: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        done()
    }

    #[test]
    fn a_thread_yields_and_competes_as_its_reads_say() {
        // On a thread of its own: the scheduling class is the thread's.
        std::thread::spawn(|| {
            let timeout = Duration::from_millis(20);
            let mut priority = ReaderPriority::start(RING);
            assert!(!priority.is_yielding(), "a reader competes until its first read ends");
            assert_eq!(policy(), libc::SCHED_OTHER);
            let t0 = Instant::now();
            priority.read_done(timeout, timeout, t0);
            if !may_raise_priority() {
                assert!(!priority.is_yielding(), "without CAP_SYS_NICE the reader never yields");
                return;
            }
            assert!(priority.is_yielding(), "a first read that kept up");
            assert_eq!(policy(), libc::SCHED_IDLE);
            priority.record(RING / 8);
            priority.read_done(timeout, timeout, t0);
            assert!(priority.is_yielding(), "an eighth of the ring, on time: keeping up");
            priority.record(RING / 8);
            priority.record(RING / 8);
            assert!(!priority.is_yielding(), "a quarter of the ring, in the middle of a read: competing at once");
            assert_eq!(policy(), libc::SCHED_OTHER);
            let t1 = Instant::now();
            priority.read_done(timeout, timeout, t1);
            priority.read_done(timeout, timeout, t1 + HOLD / 2);
            assert!(!priority.is_yielding(), "still competing within the hold");
            priority.read_done(timeout, timeout, t1 + HOLD);
            assert!(priority.is_yielding());
            assert_eq!(policy(), libc::SCHED_IDLE);
            priority.read_done(timeout + LATE, timeout, t1 + HOLD * 2);
            assert!(!priority.is_yielding(), "a late wakeup: the node's cores are busy");
            assert_eq!(policy(), libc::SCHED_OTHER);
        })
        .join()
        .expect("the reader thread's checks");
    }

    #[test]
    fn the_guard_returns_the_reader_to_the_normal_class_when_the_ring_wakes_it_or_the_reader_starves() {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        // A reader that reads once, then nothing until told to stop.
        let reader = std::thread::spawn(move || {
            let mut priority = ReaderPriority::start(RING);
            let timeout = Duration::from_millis(20);
            priority.read_done(timeout, timeout, Instant::now());
            ready_tx.send(priority).expect("the test waits");
            let _ = done_rx.recv();
        });
        let priority = ready_rx.recv().expect("the reader's priority");
        let tid = priority.shared.tid;
        let class = || {
            // SAFETY: no pointers; the reader thread lives until `done_tx` is dropped.
            unsafe { libc::sched_getscheduler(tid) }
        };
        if !may_raise_priority() {
            assert!(priority.guard(eventfd()).is_none(), "no guard needed");
            return;
        }
        assert_eq!(class(), libc::SCHED_IDLE);
        let ring = eventfd();
        let woken = ring.try_clone().expect("a second descriptor");
        // A reader that read just now, as far as the guard can tell: only
        // the ring's wakeup can return it to the normal class.
        priority.shared.read_end_ns.store(u64::MAX / 2, Ordering::Relaxed);
        // Started from a thread in the idle class, as a reader starts its
        // guard: the guard runs in the normal class.
        set_yielding(this_thread(), true).expect("the idle class");
        let guard = priority.guard(ring).expect("a yielding reader is guarded");
        set_yielding(this_thread(), false).expect("back to the normal class");
        // SAFETY: no pointers; the guard thread lives until `guard` is dropped.
        assert_eq!(unsafe { libc::sched_getscheduler(guard.tid()) }, libc::SCHED_OTHER);
        std::thread::sleep(STARVED * 2);
        assert_eq!(class(), libc::SCHED_IDLE, "nothing woke the guard");
        signal(&woken);
        assert!(
            eventually(|| class() == libc::SCHED_OTHER),
            "the ring's wakeup returned the reader to the normal class"
        );
        // The reader yields again (its own call, once the hold has passed);
        // its last read was long ago, and the guard finds it starved.
        priority.shared.read_end_ns.store(0, Ordering::Relaxed);
        {
            let mut state = priority.shared.lock();
            priority.shared.set(&mut state, true);
        }
        assert_eq!(class(), libc::SCHED_IDLE);
        assert!(eventually(|| class() == libc::SCHED_OTHER), "a reader that stopped reading is starved");
        drop(guard);
        drop(done_tx);
        reader.join().expect("the reader");
    }
}
