//! From raw stack samples to profiles people can read.
//!
//! # Layout
//! - [`procmaps`]: snapshots of processes' memory maps, taken while they
//!   live, so their stacks resolve even after they exit.
//! - [`cfi`]: `.eh_frame` rules that check a frame-pointer walk: the caller
//!   of a function sampled before its frame was set up is put back from the
//!   stack top, and a walk is cut where a caller cannot be known.
//! - [`symbolize`]: blazesym over ELF symbol tables (a stripped binary's
//!   from its debug file, found by build id) and kallsyms, cached per
//!   binary build id, with names demangled; stops a user stack where frame-
//!   pointer unwinding left the program's code rather than show wrong frames.
//! - [`profile`]: folded stacks (pure): merge, render, parse, top-N.
//! - [`pprof`]: the pprof protobuf encoding (pure).
//! - [`flamegraph`]: interactive SVG through inferno (pure).

pub mod cfi;
pub mod flamegraph;
pub mod pprof;
pub mod procmaps;
pub mod profile;
pub mod symbolize;

pub use profile::Profile;
