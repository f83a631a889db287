//! Host plumbing shared by the agent, the lab and the feature probe.
//!
//! # Layout
//! - [`paths`]: every filesystem path Weir uses, in one place.
//! - [`mounts`]: finds bpffs, tracefs, securityfs and cgroup2 in `/proc/mounts`
//!   and mounts the ones that are missing.
//! - [`netns`]: named network namespaces: entering them from a thread or a child.
//! - [`cgroup`]: cgroup v2 directories: create, join, kill every process, remove.
//! - [`iproute`]: runs batches of `ip` commands (iproute2) inside a namespace.
//! - [`process`]: finding and signalling processes.
//! - [`ethtool`]: interface offloads (GRO, transmit checksums) without the `ethtool` program.
//! - [`pods_file`]: the lab's pods file between `weir lab up` and the agents:
//!   its digest, and which one each agent has applied.
//!
//! Nothing here calls bpf(2); that is weir-bpf's job alone.

pub mod cgroup;
pub mod ethtool;
pub mod iproute;
pub mod mounts;
pub mod netns;
pub mod paths;
pub mod pods_file;
pub mod process;

pub use cgroup::Cgroup;
pub use mounts::Mounts;
pub mod testing;
