//! The scratch world of the socket load balancer's kernel tests: a private
//! network namespace, a pin directory and a cgroup.

use std::path::PathBuf;

use weir_host::{iproute, mounts, testing, Cgroup};

/// Removes the netns, the pins and the cgroup, and takes the process back to
/// where it was, even when the test panics.
pub struct Scratch {
    pub netns: String,
    pub pins: PathBuf,
    pub cgroup: Cgroup,
    home_procs: PathBuf,
}

impl Scratch {
    /// A network namespace with `lo` up, a pin directory and a cgroup, all
    /// named from `prefix` and unique to this run.
    pub fn new(prefix: &str) -> Self {
        let bpffs = mounts::ensure_bpffs().expect("bpffs");
        let cgroup2 = mounts::ensure_cgroup2().expect("cgroup2");
        let name = testing::unique_name(prefix);
        let home = std::fs::read_to_string("/proc/self/cgroup").expect("own cgroup");
        let home = home.lines().find_map(|l| l.strip_prefix("0::")).expect("cgroup v2 entry").to_string();
        let scratch = Scratch {
            netns: name.clone(),
            pins: bpffs.join(&name),
            cgroup: Cgroup::new(cgroup2.join(&name)),
            home_procs: cgroup2.join(home.trim_start_matches('/')).join("cgroup.procs"),
        };
        iproute::batch(None, &[format!("netns add {name}")]).expect("netns");
        iproute::batch(Some(&name), &["link set lo up".to_string()]).expect("lo up");
        scratch.cgroup.create().expect("cgroup");
        scratch
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.home_procs, std::process::id().to_string());
        let _ = self.cgroup.destroy();
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = iproute::ip(None, &["netns", "del", &self.netns]);
    }
}
