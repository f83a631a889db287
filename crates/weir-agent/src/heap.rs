//! The agent's heap as glibc's allocator keeps it.
//!
//! A change of 100k filter rules briefly needs some 100 MB (the request, the
//! plan, its map writes), most of it in small allocations made on several
//! threads. Left to its defaults glibc gives each thread an arena of its
//! own and keeps what was freed: 100k rules left the agent at 150 MB
//! resident after the change where it holds 60 MB of them. With two
//! arenas, large buffers mapped on their own and free pages handed back
//! after large changes, it stays under 100 MB (docs/filter.md, "Cost").

/// Arenas for the whole agent: one per core of the machine the project
/// targets; threads share them rather than each keeping its own free memory.
const ARENAS: i32 = 2;

/// Allocations from this size up are mapped on their own and unmapped when
/// freed. glibc's default (128 KiB) rises to each large buffer freed, up to
/// 32 MB, after which a 26 MB rule list stays in the heap once freed. 1 MiB
/// keeps mapping calls off the paths that allocate often.
const MAP_ABOVE: i32 = 1 << 20;

/// Sets the allocator up for a long-running agent. Call first thing, before
/// any thread exists: arenas are created by threads' first allocations.
pub fn tune_for_daemon() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocator parameters; no thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MAP_ABOVE);
    }
}

/// Hands the heap's free pages back to the kernel; without this the
/// allocator keeps a large change's working memory long after it is done.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator's arenas to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
