//! From raw stack samples to profiles people can read.
//!
//! # Layout
//! - [`procmaps`]: snapshots of processes' memory maps, taken while they
//!   live, so their stacks resolve even after they exit.
//! - [`cfi`]: `.eh_frame` rules that check a frame-pointer walk: the caller
//!   of a function sampled before its frame was set up is put back from the
//!   stack top, and a walk is cut where a caller cannot be known.
//! - [`elfsym`]: ELF symbol tables read on demand for the addresses asked
//!   (two streaming passes, nothing held), with blazesym's choice of symbol.
//! - [`kallsyms`]: kernel addresses to names the same way.
//! - [`symbolize`]: user stacks through ELF symbol tables (a stripped
//!   binary's from its debug file, found by build id) and kernel stacks
//!   through kallsyms, cached per binary build id, with names demangled;
//!   names are queued and resolved together; stops a user stack where frame-
//!   pointer unwinding left the program's code rather than show wrong frames.
//! - [`profile`]: folded stacks (pure): merge, render, parse, top-N.
//! - [`pprof`]: the pprof protobuf encoding (pure).
//! - [`flamegraph`]: interactive SVG through inferno (pure).

pub mod cfi;
pub mod elfsym;
pub mod flamegraph;
pub mod kallsyms;
pub mod pprof;
pub mod procmaps;
pub mod profile;
pub mod symbolize;

pub use profile::Profile;
