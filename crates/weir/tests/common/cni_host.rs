//! A host for the CNI tests: a network namespace standing in for the
//! machine (an uplink, a default route), a `weir agent` with the pod path
//! in it, and the containers' namespaces; all removed on drop, panic or not.

use std::cell::RefCell;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::{eventually, spawn_agent, unique_name, weir, weir_ok, KillOnDrop};

/// The host's IPv6 uplink address ([`CniHost::add_ipv6_uplink`]).
pub const HOST_IPV6: &str = "2001:db8:10::10";
/// The outside's IPv6 address, the host's IPv6 default gateway.
pub const OUTSIDE_IPV6: &str = "2001:db8:10::1";

/// The host's namespace, the containers' namespaces, and the agent's directories.
pub struct CniHost {
    pub netns: String,
    /// The test's directory: the agent's state, socket and pods file.
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub pins: PathBuf,
    pub subnet: String,
    containers: RefCell<Vec<String>>,
}

impl Drop for CniHost {
    fn drop(&mut self) {
        for ns in self.containers.borrow().iter().chain([&self.netns]) {
            let _ = weir_host::iproute::ip(None, &["netns", "del", ns]);
        }
        for dir in [&self.pins, &self.dir] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl CniHost {
    /// A fresh host namespace named from `prefix`, for containers of `subnet`.
    pub fn new(prefix: &str, subnet: &str) -> Self {
        let name = unique_name(prefix);
        let dir = std::env::temp_dir().join(&name);
        let roots = weir_lab::runtime::Roots::discover().expect("roots");
        let pins = roots.bpffs.join("weir").join("tests").join(&name);
        std::fs::create_dir_all(&dir).expect("dir");
        weir_host::iproute::ip(None, &["netns", "add", &name]).expect("netns");
        let host = Self {
            netns: name,
            socket: dir.join("agent.sock"),
            dir,
            pins,
            subnet: subnet.to_string(),
            containers: RefCell::new(Vec::new()),
        };
        weir_host::iproute::batch(
            Some(&host.netns),
            &[
                "link set lo up".into(),
                "link add uplink0 type veth peer name peer0".into(),
                "addr add 192.0.2.10/24 dev uplink0".into(),
                "link set uplink0 up".into(),
                "link set peer0 up".into(),
                "route add default via 192.0.2.1 dev uplink0".into(),
            ],
        )
        .expect("host network");
        host
    }

    /// Gives the host an IPv6 uplink address ([`HOST_IPV6`], nodad) and a
    /// default IPv6 route, and turns IPv6 forwarding on in its namespace.
    pub fn add_ipv6_uplink(&self) {
        weir_host::iproute::batch(
            Some(&self.netns),
            &[
                format!("addr add {HOST_IPV6}/64 dev uplink0 nodad"),
                format!("route add default via {OUTSIDE_IPV6} dev uplink0"),
            ],
        )
        .expect("host IPv6 uplink");
        weir_host::netns::run_in(&self.netns, || std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", b"1"))
            .expect("enter netns")
            .expect("IPv6 forwarding");
    }

    /// Moves the uplink's peer into a namespace of its own, the outside
    /// world: 192.0.2.1 and [`OUTSIDE_IPV6`]. Returns its name.
    pub fn outside(&self) -> String {
        let ns = self.container_netns("cniout");
        weir_host::iproute::batch(Some(&self.netns), &[format!("link set peer0 netns {ns}")]).expect("move peer0");
        weir_host::iproute::batch(
            Some(&ns),
            &[
                "link set lo up".into(),
                "addr add 192.0.2.1/24 dev peer0".into(),
                format!("addr add {OUTSIDE_IPV6}/64 dev peer0 nodad"),
                "link set peer0 up".into(),
            ],
        )
        .expect("outside network");
        ns
    }

    pub fn socket_text(&self) -> String {
        self.socket.to_string_lossy().into_owned()
    }

    /// A container's network namespace, removed with the host.
    pub fn container_netns(&self, prefix: &str) -> String {
        let ns = unique_name(prefix);
        weir_host::iproute::ip(None, &["netns", "add", &ns]).expect("netns");
        self.containers.borrow_mut().push(ns.clone());
        ns
    }

    /// A namespace someone else (a runtime) made, removed with the host.
    pub fn forget_later(&self, ns: &str) {
        self.containers.borrow_mut().push(ns.to_string());
    }

    /// Starts the host's agent (pod path on, runtime security off) and
    /// waits until it answers.
    pub fn start_agent(&self) -> KillOnDrop {
        self.start_agent_with(&[])
    }

    /// [`CniHost::start_agent`] with `extra` arguments.
    pub fn start_agent_with(&self, extra: &[&str]) -> KillOnDrop {
        let pods = self.dir.join("pods.json").to_string_lossy().into_owned();
        let mut flags = vec!["--pods-file", pods.as_str(), "--pod-routing", "--cluster-cidr", &self.subnet];
        flags.extend(["--interface", "uplink0", "--metrics-addr", "off", "--node", "host-1"]);
        // Runtime security only when a test asks for it (`--runtime true`).
        if !extra.contains(&"--runtime") {
            flags.extend(["--runtime", "false"]);
        }
        flags.extend_from_slice(extra);
        let child = spawn_agent(&self.netns, &self.pins, &self.dir, &flags);
        let socket = self.socket_text();
        assert!(
            eventually(Duration::from_secs(20), || weir(&["policy", "list", "--socket", &socket]).status.success()),
            "agent ready"
        );
        child
    }
}

fn endpoints(socket: &str) -> Vec<Value> {
    let list: Value =
        serde_json::from_str(&weir_ok(&["policy", "list", "--socket", socket, "-o", "json"])).expect("json");
    list.as_array()
        .into_iter()
        .flatten()
        .flat_map(|node| node["endpoints"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The pods (NAMESPACE/NAME) the agent on `socket` has as endpoints.
pub fn policy_endpoints(socket: &str) -> Vec<String> {
    endpoints(socket).iter().map(|e| e["pod"].as_str().unwrap_or_default().to_string()).collect()
}

/// The address of the agent's endpoint `pod`.
pub fn policy_endpoint_ip(socket: &str, pod: &str) -> std::net::Ipv4Addr {
    endpoints(socket)
        .iter()
        .find(|e| e["pod"] == pod)
        .and_then(|e| e["ip"].as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("no endpoint {pod}"))
}

/// One run of the plugin in namespace `netns` (the host's), as a runtime runs it: the
/// `CNI_*` environment, `conf` on stdin, `dir` as `CNI_PATH`. Returns whether
/// it succeeded, its stdout as JSON (Null when empty) and its stderr.
pub fn run_plugin(
    netns: &str,
    dir: &std::path::Path,
    command: &str,
    env: &[(&str, &str)],
    conf: &Value,
) -> (bool, Value, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, env!("CARGO_BIN_EXE_weir"), "cni"])
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", dir)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir cni");
    child.stdin.take().expect("stdin").write_all(conf.to_string().as_bytes()).expect("config");
    let out = child.wait_with_output().expect("weir cni");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = if stdout.trim().is_empty() { Value::Null } else { serde_json::from_str(&stdout).expect("json") };
    (out.status.success(), value, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The port the CNI tests' servers listen on.
pub const PORT: u16 = 8080;

/// A listener on `ip`:[`PORT`] in `netns`, not blocking (see [`reaches`]).
pub fn listen(netns: &str, ip: impl Into<std::net::IpAddr>) -> std::net::TcpListener {
    let ip = ip.into();
    let listener = weir_host::netns::run_in(netns, || std::net::TcpListener::bind((ip, PORT)))
        .expect("enter netns")
        .expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    listener
}

/// Whether `from` reaches `listener` at `to` with a whole message: the
/// address the listener saw the connection come from when it did.
pub fn reaches(
    from: &str,
    to: impl Into<std::net::IpAddr>,
    listener: &std::net::TcpListener,
) -> Option<std::net::IpAddr> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from((to.into(), PORT));
    let connected =
        weir_host::netns::run_in(from, || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
            .expect("enter netns");
    let Ok(mut stream) = connected else { return None };
    stream.write_all(b"hello").expect("write");
    drop(stream);
    let mut accepted = None;
    assert!(
        eventually(Duration::from_secs(5), || {
            accepted = listener.accept().ok();
            accepted.is_some()
        }),
        "connected but never accepted"
    );
    let (mut accepted, peer) = accepted.expect("accepted");
    accepted.set_nonblocking(false).expect("blocking");
    accepted.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let mut got = Vec::new();
    let _ = accepted.read_to_end(&mut got);
    (got == b"hello").then_some(peer.ip())
}
