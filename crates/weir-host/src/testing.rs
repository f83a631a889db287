//! Support for Weir's privileged tests.

/// Whether a privileged test may run. Without root it is skipped with a note,
/// except under `CI=true`, where a skipped privileged test fails the run.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: needs root, and CI=true forbids skipping privileged tests"
    );
    eprintln!("SKIPPED {test}: needs root");
    false
}

/// A name unique to this process and call, for netns, cgroups and pins.
///
/// Under `scripts/test.sh` the name ends with the run's tag
/// (`WEIR_TEST_RUN`, at most 4 lowercase letters and digits, so a lab name
/// made of an 8-character prefix still fits in 20), so the run can tell what
/// it left behind from labs that someone else brought up meanwhile.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let run = run_tag();
    format!("{prefix}{}x{}{run}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The test run's tag from `WEIR_TEST_RUN`, or nothing when it is unset or
/// not a short run of lowercase letters and digits.
fn run_tag() -> String {
    std::env::var("WEIR_TEST_RUN")
        .ok()
        .filter(|t| (1..=4).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        .unwrap_or_default()
}
