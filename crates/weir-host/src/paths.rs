//! Every filesystem path Weir reads or writes, so a reviewer can see them all
//! at once and tests can relocate them.

use std::path::PathBuf;

/// Root of Weir's runtime files (sockets, lab records): wiped on reboot.
pub const RUN_DIR: &str = "/run/weir";
/// Default state directory of an agent on a real host: survives reboots.
pub const HOST_STATE_DIR: &str = "/var/lib/weir";
/// Default gRPC socket of the agent on a real host.
pub const HOST_AGENT_SOCKET: &str = "/run/weir/agent.sock";
/// Where bpffs is mounted when nothing else has mounted it.
pub const BPFFS_DEFAULT: &str = "/sys/fs/bpf";
/// Where tracefs is mounted when nothing else has mounted it.
pub const TRACEFS_DEFAULT: &str = "/sys/kernel/tracing";
/// Where securityfs (which exposes the lockdown mode) is mounted.
pub const SECURITYFS_DEFAULT: &str = "/sys/kernel/security";
/// Where `ip netns` keeps its named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// Subdirectory of bpffs that holds every Weir pin.
pub const PIN_SUBDIR: &str = "weir";
/// Subdirectory of the cgroup2 root that holds every Weir cgroup.
pub const CGROUP_SUBDIR: &str = "weir";

/// Directory holding the records of every lab.
pub fn labs_dir() -> PathBuf {
    PathBuf::from(RUN_DIR).join("labs")
}

/// Directory holding one lab's record, agent sockets, logs and state.
pub fn lab_dir(lab: &str) -> PathBuf {
    labs_dir().join(lab)
}

/// Pin directory of the agent on a real host, below the bpffs mount.
pub fn host_pin_dir(bpffs: &std::path::Path) -> PathBuf {
    bpffs.join(PIN_SUBDIR).join("host")
}

/// Pin directory holding all of a lab's agents' pins, below the bpffs mount.
pub fn lab_pin_dir(bpffs: &std::path::Path, lab: &str) -> PathBuf {
    bpffs.join(PIN_SUBDIR).join("labs").join(lab)
}
