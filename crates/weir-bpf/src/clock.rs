//! The kernel's clocks and wall time.
//!
//! Flow events (the pod path's, L7 ones included) and OpenSSL's events are
//! stamped with `bpf_ktime_get_boot_ns`: CLOCK_BOOTTIME, which counts the
//! time a machine spent suspended, so a stamp taken before a suspend still
//! names its moment after the resume. Map deadlines and runtime events keep
//! `bpf_ktime_get_ns` (CLOCK_MONOTONIC, [`crate::ktime_now_ns`]).
//!
//! A stamp becomes wall time by the wall clock's offset from CLOCK_BOOTTIME.
//! That offset changes only when the wall clock is stepped (an NTP step, an
//! operator's `date -s`): a suspend moves both clocks alike, and NTP's
//! slewing too. It is measured again every second and replaced when it moved
//! by more than a millisecond, so a flow read twice shows one time (two
//! readings of the clocks differ by the nanoseconds between the reads), and
//! a step is followed within a second. An offset taken once at start would
//! carry every later stamp off by a step, and a CLOCK_MONOTONIC one by every
//! suspend too.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// How often the offset is measured again.
const REMEASURE_NS: u64 = 1_000_000_000;
/// A measured offset further than this from the one in use is a step.
const STEP_NS: i64 = 1_000_000;
/// A measurement whose two wall-clock reads are further apart than this
/// (the thread was preempted between them) is taken again.
const READ_GAP_NS: u64 = 20_000;
/// No offset measured yet.
const UNSET: i64 = i64::MIN;

static BOOT_TO_UNIX_NS: AtomicI64 = AtomicI64::new(UNSET);
static MEASURED_AT_BOOT_NS: AtomicU64 = AtomicU64::new(0);

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// Now on the clock `bpf_ktime_get_boot_ns` reads (CLOCK_BOOTTIME), in ns.
pub fn boot_now_ns() -> u64 {
    read(libc::CLOCK_BOOTTIME)
}

/// Now on the wall clock, in nanoseconds since the Unix epoch.
pub fn unix_now_ns() -> u64 {
    read(libc::CLOCK_REALTIME)
}

/// The wall time of `stamp`, taken on a clock that reads `clock_now` at the
/// wall clock's `unix_now`; 0 for a stamp from before the epoch.
pub fn unix_of(stamp: u64, clock_now: u64, unix_now: u64) -> u64 {
    let unix = i128::from(unix_now) - (i128::from(clock_now) - i128::from(stamp));
    u64::try_from(unix.max(0)).unwrap_or(u64::MAX)
}

/// The wall time of a `bpf_ktime_get_boot_ns` stamp: the same for the same
/// stamp until the wall clock is stepped.
pub fn boot_to_unix_ns(stamp: u64) -> u64 {
    let unix = i128::from(stamp) + i128::from(boot_to_unix_offset(stamp));
    u64::try_from(unix.max(0)).unwrap_or(u64::MAX)
}

/// The wall clock less CLOCK_BOOTTIME, as in use for a stamp. The stamp
/// stands for now when it is within a second of the last measurement: the
/// stamps a reader converts are fresh, and a clock read per event was 2% of
/// the flow reader's time; a stamp a second past it measures again.
fn boot_to_unix_offset(stamp: u64) -> i64 {
    let in_use = BOOT_TO_UNIX_NS.load(Ordering::Relaxed);
    if in_use != UNSET && stamp.saturating_sub(MEASURED_AT_BOOT_NS.load(Ordering::Relaxed)) < REMEASURE_NS {
        return in_use;
    }
    // A stamp is never later than now: measured now.
    let now = boot_now_ns();
    let kept = settle((in_use != UNSET).then_some(in_use), measure());
    BOOT_TO_UNIX_NS.store(kept, Ordering::Relaxed);
    MEASURED_AT_BOOT_NS.store(now, Ordering::Relaxed);
    kept
}

/// The wall clock less CLOCK_BOOTTIME: the boot clock read between two
/// reads of the wall clock, within [`READ_GAP_NS`] of each other when the
/// thread is not preempted in a few tries.
fn measure() -> i64 {
    let mut offset = 0;
    for _ in 0..5 {
        let (before, boot, after) = (unix_now_ns(), boot_now_ns(), unix_now_ns());
        offset = (before / 2 + after / 2) as i64 - boot as i64;
        if after.saturating_sub(before) <= READ_GAP_NS {
            break;
        }
    }
    offset
}

/// The offset to use: the one in use, unless the measurement says the wall
/// clock was stepped.
fn settle(in_use: Option<i64>, measured: i64) -> i64 {
    match in_use {
        Some(offset) if offset.abs_diff(measured) <= STEP_NS as u64 => offset,
        _ => measured,
    }
}

/// The wall time of a `bpf_ktime_get_ns` stamp: right for stamps taken
/// since the last resume (CLOCK_MONOTONIC stops while suspended).
pub fn monotonic_to_unix_ns(stamp: u64) -> u64 {
    let monotonic = crate::ktime_now_ns();
    unix_of(stamp, monotonic, unix_now_ns())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_stamp_is_as_long_before_wall_now_as_before_its_clocks_now() {
        assert_eq!(unix_of(95 * SEC, 100 * SEC, 1_700_000_000 * SEC), 1_699_999_995 * SEC);
        // A stamp read just after the clocks were (a reader races its ring).
        assert_eq!(unix_of(100 * SEC + 7, 100 * SEC, 1_700_000_000 * SEC), 1_700_000_000 * SEC + 7);
        assert_eq!(unix_of(0, u64::MAX, 5), 0, "before the epoch");
    }

    /// The agent started at boot time 100 s (wall 1_700_000_000 s); the
    /// machine then slept 60 s and ran 10 s more. An event stamped a second
    /// ago is a second before now, where the offset taken at start put it
    /// 60 s in the past; and a stamp from before the suspend keeps its time.
    #[test]
    fn a_suspend_after_start_moves_no_stamp() {
        let (boot_at_start, unix_at_start) = (100 * SEC, 1_700_000_000 * SEC);
        let (boot_now, unix_now) = (boot_at_start + 70 * SEC, unix_at_start + 70 * SEC);
        let monotonic_now = boot_now - 60 * SEC;
        let fresh = unix_of(boot_now - SEC, boot_now, unix_now);
        assert_eq!(fresh, unix_now - SEC);
        let offset_at_start = unix_at_start - boot_at_start;
        assert_ne!((monotonic_now - SEC) + offset_at_start, fresh, "a monotonic stamp and a start offset drift");
        assert_eq!(unix_of(boot_at_start + 5 * SEC, boot_now, unix_now), unix_at_start + 5 * SEC);
    }

    /// The wall clock stepped back 30 s after start (NTP): a fresh stamp
    /// reads as now on the stepped clock.
    #[test]
    fn a_wall_clock_step_after_start_moves_no_new_stamp() {
        let (boot_now, unix_now) = (500 * SEC, 1_700_000_400 * SEC - 30 * SEC);
        assert_eq!(unix_of(boot_now, boot_now, unix_now), unix_now);
    }

    /// A stamp reads between the wall clock read before and after it, give
    /// or take how far apart a measurement's reads may be; and it reads the
    /// same every time.
    #[test]
    fn a_boot_stamp_reads_between_the_wall_clock_around_it_and_always_the_same() {
        let (before, stamp, after) = (unix_now_ns(), boot_now_ns(), unix_now_ns());
        let at = boot_to_unix_ns(stamp);
        let slack = STEP_NS as u64;
        assert!(before - slack <= at && at <= after + slack, "{before} <= {at} <= {after}");
        assert!((0..1000).all(|_| boot_to_unix_ns(stamp) == at), "one stamp, one time");
    }

    #[test]
    fn the_offset_in_use_stays_until_the_wall_clock_is_stepped() {
        assert_eq!(settle(None, 5_000), 5_000, "the first measurement");
        assert_eq!(settle(Some(5_000), 5_700), 5_000, "the nanoseconds between two reads");
        assert_eq!(settle(Some(5_000), 5_000 - STEP_NS), 5_000);
        let stepped = 5_000 - 30 * SEC as i64;
        assert_eq!(settle(Some(5_000), stepped), stepped, "stepped back 30 s");
    }
}
