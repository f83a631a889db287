//! Debian's real container runtimes around a [`CniHost`]: containerd
//! (`ctr run --cni`, runc) and podman (its CNI backend, with runc and crun),
//! their containers run from a root filesystem built once by
//! `scripts/setup.sh` (images cannot be pulled here). Containerd and podman
//! run in the host's network namespace, with the host's agent; what reaches
//! the plugin is what each runtime passes.
//!
//! This machine's quirks, handled here and not in Weir: the cgroup
//! hierarchy is hybrid (v1 controllers, v2 at /sys/fs/cgroup/unified),
//! which crun refuses, so crun's containers are run with podman in a mount
//! namespace where /sys/fs/cgroup is the v2 hierarchy, without cgroups of
//! their own; and the processes here may not raise resource limits, which
//! podman's defaults do, so containers are given lower ones.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::json;

use super::cni_host::*;
use super::*;

pub const SUBNET: &str = "10.80.0.0/24";
pub const LIMITS: [&str; 4] = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"];

pub fn rootfs() -> PathBuf {
    std::env::var_os("WEIR_CONTAINER_ROOTFS")
        .map_or_else(|| PathBuf::from("/var/cache/weir/rootfs-bookworm-v1"), PathBuf::from)
}

/// Where the cgroup2 hierarchy is mounted, when the hierarchy is hybrid.
pub fn hybrid_cgroup2() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let at = |fstype: &str| {
        mounts
            .lines()
            .find(|l| l.split(' ').nth(2) == Some(fstype))
            .and_then(|l| l.split(' ').nth(1).map(str::to_string))
    };
    at("cgroup2").filter(|p| p != "/sys/fs/cgroup")
}

/// The runtimes of one test, in its host's namespace. Containerd's
/// namespace is the test's own: runc keeps its state by namespace and id
/// in one directory for the whole machine.
pub struct Runtimes {
    // Dropped first: containerd goes before the host's namespace and files.
    _containerd: KillOnDrop,
    pub host: CniHost,
    pub netd: PathBuf,
    pub bin: PathBuf,
    pub containerd_socket: PathBuf,
    pub namespace: String,
    pub podman_dir: PathBuf,
}

impl Drop for Runtimes {
    fn drop(&mut self) {
        let _ = self.podman(false, &["rm", "-af", "-t", "0"]);
        let tasks = self.ctr(&["task", "ls", "-q"]);
        for id in String::from_utf8_lossy(&tasks.stdout).split_whitespace() {
            let _ = self.ctr(&["task", "kill", "-s", "KILL", id]);
            let _ = self.ctr(&["task", "delete", "-f", id]);
            let _ = self.ctr(&["container", "rm", id]);
        }
        // Shims outlive containerd: none of this test's may stay.
        let _ = Command::new("pkill").arg("-f").arg(format!("-address {}", self.containerd_socket.display())).output();
        let _ = Command::new("umount").arg("-R").arg(self.podman_dir.join("root/overlay")).output();
        let _ = std::fs::remove_dir_all(Path::new("/run/containerd/runc").join(&self.namespace));
    }
}

impl Runtimes {
    pub fn new(host: CniHost) -> Self {
        let (netd, bin) = (host.dir.join("net.d"), host.dir.join("bin"));
        std::fs::create_dir_all(&netd).expect("net.d");
        std::fs::create_dir_all(&bin).expect("bin");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_weir"), bin.join("weir-cni")).expect("the plugin");
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": "weirnet",
            "plugins": [{
                "type": "weir-cni", "subnet": SUBNET, "dataDir": host.dir.join("ipam"),
                "agentSocket": host.socket, "capabilities": {"portMappings": true},
            }],
        });
        std::fs::write(netd.join("10-weir.conflist"), conflist.to_string()).expect("conflist");
        let podman_dir = host.dir.join("podman");
        std::fs::create_dir_all(podman_dir.join("tmp")).expect("podman dir");
        std::fs::write(
            podman_dir.join("containers.conf"),
            format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\nnetwork_config_dir = \"{}\"\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
                bin.display(),
                netd.display()
            ),
        )
        .expect("containers.conf");
        let ctrd = host.dir.join("containerd");
        std::fs::create_dir_all(&ctrd).expect("containerd dir");
        std::fs::write(ctrd.join("config.toml"), "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n")
            .expect("config");
        let containerd_socket = ctrd.join("containerd.sock");
        // nsenter, not `ip netns exec`: the latter remounts /sys, hiding the
        // cgroup mounts runc needs.
        let containerd = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", host.netns))
            .arg("containerd")
            .arg("--config")
            .arg(ctrd.join("config.toml"))
            .arg("--root")
            .arg(ctrd.join("root"))
            .arg("--state")
            .arg(ctrd.join("state"))
            .arg("--address")
            .arg(&containerd_socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("containerd (scripts/setup.sh installs it)");
        let namespace = host.netns.clone();
        let runtimes =
            Self { _containerd: KillOnDrop(containerd), host, netd, bin, containerd_socket, namespace, podman_dir };
        assert!(
            eventually(Duration::from_secs(20), || runtimes.ctr(&["version"]).status.success()),
            "containerd answers"
        );
        runtimes
    }

    /// `ctr` in the host's namespace, with the test's CNI config and plugin
    /// where ctr looks (/etc/cni/net.d, /opt/cni/bin), in a mount namespace
    /// of its own.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        for dir in ["/etc/cni/net.d", "/opt/cni/bin"] {
            std::fs::create_dir_all(dir).expect("the CNI directories");
        }
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.host.netns))
            .args(["unshare", "-m", "sh", "-c"])
            .arg(r#"mount --bind "$1" /etc/cni/net.d && mount --bind "$2" /opt/cni/bin && shift 2 && exec ctr "$@""#)
            .arg("sh")
            .arg(&self.netd)
            .arg(&self.bin)
            .arg("-a")
            .arg(&self.containerd_socket)
            .arg("-n")
            .arg(&self.namespace)
            .args(args)
            // What ctr reads for its socket, and the plugin (ctr's child) too.
            .env("CONTAINERD_ADDRESS", &self.containerd_socket);
        cmd
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_command(args).output().expect("ctr")
    }

    /// A containerd container on Weir's network, its `ctr run` client kept
    /// (it removes the network when the task ends).
    pub fn ctr_run(&self, id: &str, command: &[&str]) -> KillOnDrop {
        self.ctr_run_with(id, &[], command)
    }

    /// [`Runtimes::ctr_run`] with `extra` options to `ctr run`.
    pub fn ctr_run_with(&self, id: &str, extra: &[&str], command: &[&str]) -> KillOnDrop {
        let rootfs = rootfs();
        let mut args = vec!["run", "--rm", "--cni"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--rootfs", rootfs.to_str().expect("utf-8"), id]);
        args.extend_from_slice(command);
        let log = std::fs::File::create(self.host.dir.join(format!("ctr-{id}.log"))).expect("log");
        let child =
            self.ctr_command(&args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().expect("ctr run");
        let pod = format!("default/{}-{id}", self.namespace);
        let socket = self.host.socket_text();
        assert!(
            eventually(Duration::from_secs(30), || policy_endpoints(&socket).contains(&pod)),
            "{pod} is the agent's endpoint; ctr run said: {}",
            std::fs::read_to_string(self.host.dir.join(format!("ctr-{id}.log"))).unwrap_or_default()
        );
        KillOnDrop(child)
    }

    /// podman in the host's namespace; with crun, in a mount namespace where
    /// /sys/fs/cgroup is the v2 hierarchy (crun refuses hybrid ones).
    pub fn podman(&self, crun: bool, args: &[&str]) -> Output {
        self.podman_command(crun, args).output().expect("podman (scripts/setup.sh installs it)")
    }

    pub fn podman_command(&self, crun: bool, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.host.netns));
        match hybrid_cgroup2().filter(|_| crun) {
            Some(cgroup2) => {
                cmd.args(["unshare", "-m", "--propagation", "unchanged", "sh", "-c"])
                    .arg(r#"mount --make-rprivate /sys && mount --bind "$1" /sys/fs/cgroup && shift && exec podman "$@""#)
                    .arg("sh")
                    .arg(cgroup2);
            }
            None => {
                cmd.arg("podman");
            }
        }
        cmd.arg("--root")
            .arg(self.podman_dir.join("root"))
            .arg("--runroot")
            .arg(self.podman_dir.join("run"))
            .arg("--tmpdir")
            .arg(self.podman_dir.join("tmp"))
            .args(args)
            .env("CONTAINERS_CONF", self.podman_dir.join("containers.conf"));
        cmd
    }

    pub fn podman_run(&self, name: &str, crun: bool, extra: &[&str], command: &[&str]) {
        let out = self.podman_run_command(name, crun, extra, command).output().expect("podman");
        assert!(out.status.success(), "podman run {name}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `podman run -d` of a container on Weir's network, not yet run.
    pub fn podman_run_command(&self, name: &str, crun: bool, extra: &[&str], command: &[&str]) -> Command {
        let rootfs = rootfs();
        let mut args = vec!["run", "-d", "--network", "weirnet", "--name", name, "--runtime"];
        args.push(if crun { "crun" } else { "runc" });
        args.extend_from_slice(&LIMITS);
        if crun && hybrid_cgroup2().is_some() {
            args.extend_from_slice(&["--cgroups", "disabled"]);
        }
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--rootfs", rootfs.to_str().expect("utf-8")]);
        args.extend_from_slice(command);
        self.podman_command(crun, &args)
    }

    /// `wget` from a container to `ip:port`: whether it got the page.
    pub fn fetch(&self, from: &Container, ip: std::net::Ipv4Addr, port: u16) -> bool {
        let (ok, why) = self.fetch_saying(from, ip, port);
        if !ok {
            eprintln!("{} -> {ip}:{port}: {why}", from.pod());
        }
        ok
    }

    pub fn fetch_saying(&self, from: &Container, ip: std::net::Ipv4Addr, port: u16) -> (bool, String) {
        let out = self.fetch_command(from, ip, port).output().expect("exec");
        (out.status.success() && !out.stdout.is_empty(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// The `wget` of [`Runtimes::fetch`], not yet run.
    pub fn fetch_command(&self, from: &Container, ip: std::net::Ipv4Addr, port: u16) -> Command {
        let url = format!("http://{ip}:{port}/hostname");
        // (busybox's own `wget -T` crashes in Debian 12's build: `timeout` bounds it.)
        let wget = ["/bin/busybox", "timeout", "5", "/bin/busybox", "wget", "-q", "-O", "-", url.as_str()];
        match from {
            Container::Ctr(id, _) => {
                let exec_id = unique_name("x");
                let mut args = vec!["task", "exec", "--exec-id", exec_id.as_str(), id.as_str()];
                args.extend_from_slice(&wget);
                self.ctr_command(&args)
            }
            Container::Podman(name, crun) => {
                let mut args = vec!["exec", name.as_str()];
                args.extend_from_slice(&wget);
                self.podman_command(*crun, &args)
            }
        }
    }
}

pub enum Container {
    /// Its id, and its containerd namespace.
    Ctr(String, String),
    /// Its name, and whether it runs with crun.
    Podman(String, bool),
}

impl Container {
    pub fn pod(&self) -> String {
        match self {
            // ctr passes `NAMESPACE-ID` as the container id, and no name.
            Container::Ctr(id, namespace) => format!("default/{namespace}-{id}"),
            Container::Podman(name, _) => format!("default/{name}"),
        }
    }
}
