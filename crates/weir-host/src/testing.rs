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
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}x{}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::Relaxed))
}
