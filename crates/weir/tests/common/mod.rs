//! Shared harness for the privileged integration tests: unique labs that
//! are torn down even when a test panics, and real traffic between namespaces.
#![allow(dead_code, unused_imports, reason = "each test binary uses a different part of the harness")]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub mod cni_host;
pub mod hubble_client;
pub mod mesh;
pub mod runtimes;
pub mod server_process;
pub mod xlb;

pub use weir_host::testing::{privileged, unique_name};

/// Runs the `weir` binary under test.
pub fn weir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir")).args(args).output().expect("running weir")
}

/// Runs `weir` and panics with its output unless it succeeds.
pub fn weir_ok(args: &[&str]) -> String {
    let out = weir(args);
    assert!(
        out.status.success(),
        "weir {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The spec of a lab named `name`: two nodes, three pods, one external host.
pub fn two_node_spec(name: &str) -> String {
    include_str!("../../../../examples/lab.yaml").replace("name: demo", &format!("name: {name}"))
}

/// A lab that exists for the life of the value and is removed on drop, panic or not.
pub struct TestLab {
    pub name: String,
    pub spec_path: PathBuf,
}

impl TestLab {
    /// For the privileged test `test`: a fresh two-node lab with a unique
    /// name, or None when the test must be skipped (see [`privileged`]).
    pub fn for_test(test: &str, agents: bool) -> Option<Self> {
        if !privileged(test) {
            return None;
        }
        let name = unique_name(&test.chars().take(5).collect::<String>().replace('_', "-"));
        Some(Self::up(&name, &two_node_spec(&name), agents))
    }

    /// Writes `spec` (with the lab named `name`) and brings the lab up.
    pub fn up(name: &str, spec: &str, agents: bool) -> Self {
        Self::up_with(name, spec, agents, &[])
    }

    /// [`TestLab::up`], passing `extra` to `weir lab up` (e.g. `--agent-arg=...`).
    pub fn up_with(name: &str, spec: &str, agents: bool, extra: &[&str]) -> Self {
        let spec_path = std::env::temp_dir().join(format!("{name}.lab.yaml"));
        std::fs::write(&spec_path, spec).expect("writing spec");
        let lab = Self { name: name.to_string(), spec_path };
        let path = lab.spec_path.to_string_lossy().into_owned();
        let mut args = vec!["lab", "up", "-f", path.as_str()];
        if !agents {
            args.push("--no-agents");
        }
        args.extend_from_slice(extra);
        weir_ok(&args);
        lab
    }

    pub fn plan(&self) -> weir_lab::LabPlan {
        weir_lab::runtime::load_plan(&self.name).expect("lab record")
    }

    pub fn netns(&self, member: &str) -> String {
        format!("weir.{}.{member}", self.name)
    }

    /// `weir lab exec` in this lab.
    pub fn exec(&self, pod: &str, command: &[&str]) -> Output {
        let mut args = vec!["lab", "exec", "--lab", self.name.as_str(), pod, "--"];
        args.extend_from_slice(command);
        weir(&args)
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let out = weir(&["lab", "down", &self.name]);
        if !out.status.success() {
            eprintln!("cleanup of lab {} failed: {}", self.name, String::from_utf8_lossy(&out.stderr));
        }
        let _ = std::fs::remove_file(&self.spec_path);
    }
}

/// A two-node lab on the pod path, and a directory for the test's
/// documents; both removed on drop, panic or not.
pub struct DocsLab {
    pub lab: TestLab,
    pub dir: PathBuf,
}

impl std::ops::Deref for DocsLab {
    type Target = TestLab;
    fn deref(&self) -> &TestLab {
        &self.lab
    }
}

impl Drop for DocsLab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl DocsLab {
    /// For the privileged test `prefix`: the lab, or None when it must be
    /// skipped (see [`privileged`]).
    pub fn pod_path(prefix: &str) -> Option<Self> {
        if !privileged(prefix) {
            return None;
        }
        let name = unique_name(prefix);
        let dir = std::env::temp_dir().join(format!("{name}-docs"));
        std::fs::create_dir_all(&dir).expect("docs dir");
        let lab = TestLab::up(&name, &two_node_spec(&name).replace("routing: kernel", "routing: weir"), true);
        Some(Self { lab, dir })
    }

    /// Writes `yaml` as the document `file` and returns its path.
    pub fn write(&self, file: &str, yaml: &str) -> String {
        let path = self.dir.join(file);
        std::fs::write(&path, yaml).expect("write document");
        path.to_string_lossy().into_owned()
    }
}

/// An agent started by a test, killed even when the test panics.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `weir agent` inside network namespace `netns`, pinning under
/// `pins`, its state in `dir/state` and its socket `dir/agent.sock`, with
/// `flags`; returns once the socket accepts connections.
pub fn spawn_agent(netns: &str, pins: &std::path::Path, dir: &std::path::Path, flags: &[&str]) -> KillOnDrop {
    let socket = dir.join("agent.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.arg("agent")
        .arg("--pin-dir")
        .arg(pins)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--socket")
        .arg(&socket)
        .args(flags);
    cmd.stderr(std::process::Stdio::null());
    weir_host::netns::confine_command(&mut cmd, Some(weir_host::netns::open(netns).expect("open netns")), None);
    let child = KillOnDrop(cmd.spawn().expect("agent"));
    // Generous: an agent starting beside three test binaries and two qemu
    // kernels once took over 30 s to load and attach its programs.
    assert!(
        eventually(Duration::from_secs(90), || std::os::unix::net::UnixStream::connect(&socket).is_ok()),
        "agent in {netns} ready within 90 s"
    );
    child
}

/// Compiles `tests/fixtures/SOURCE` with clang-19 and `flags` into a fresh temporary file.
pub fn compile_fixture(source: &str, flags: &[&str]) -> PathBuf {
    let out = std::env::temp_dir().join(unique_name(&format!("{}-", source.trim_end_matches(".c"))));
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(source);
    let status = std::process::Command::new("clang-19")
        .args(flags)
        .arg(&source)
        .arg("-o")
        .arg(&out)
        .status()
        .expect("clang-19 (installed by scripts/setup.sh)");
    assert!(status.success(), "compiling {}", source.display());
    out
}

/// GET /metrics from a lab node's agent, from inside the node's namespace.
pub fn scrape_metrics(node: &weir_lab::plan::NodePlan) -> String {
    weir_host::netns::run_in(&node.netns, || {
        let mut stream = TcpStream::connect(&node.agent.metrics_addr)?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut body = String::new();
        stream.read_to_string(&mut body)?;
        std::io::Result::Ok(body)
    })
    .expect("netns")
    .expect("scrape")
}

/// Polls `condition` until it holds or `deadline` passes.
pub fn eventually(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    condition()
}

/// Connects from namespace `client` to a listener in namespace `server` on
/// `server_ip`, sends a message and returns what the server read.
pub fn tcp_exchange(
    client: &str,
    server: &str,
    server_ip: impl Into<std::net::IpAddr>,
    message: &[u8],
) -> std::io::Result<Vec<u8>> {
    let server_ip = server_ip.into();
    let listener =
        weir_host::netns::run_in(server, || TcpListener::bind((server_ip, 0))).expect("enter server netns")?;
    let addr = listener.local_addr()?;
    let stream = weir_host::netns::run_in(client, || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .expect("enter client netns")?;
    let mut stream = stream;
    stream.write_all(message)?;
    drop(stream);
    let (mut accepted, _) = listener.accept()?;
    accepted.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut got = Vec::new();
    accepted.read_to_end(&mut got)?;
    Ok(got)
}

/// Sends one UDP datagram from namespace `client` to namespace `server` and
/// returns what arrived, or None when nothing arrived within the timeout.
pub fn udp_exchange(
    client: &str,
    server: &str,
    server_ip: impl Into<std::net::IpAddr>,
    message: &[u8],
) -> Option<Vec<u8>> {
    let server_ip = server_ip.into();
    let any: std::net::IpAddr =
        if server_ip.is_ipv6() { std::net::Ipv6Addr::UNSPECIFIED.into() } else { Ipv4Addr::UNSPECIFIED.into() };
    let socket = weir_host::netns::run_in(server, || UdpSocket::bind((server_ip, 0)))
        .expect("enter server netns")
        .expect("bind udp");
    socket.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
    let addr: SocketAddr = socket.local_addr().expect("addr");
    let sender =
        weir_host::netns::run_in(client, || UdpSocket::bind((any, 0))).expect("enter client netns").expect("bind");
    sender.send_to(message, addr).ok()?;
    let mut buf = [0u8; 2048];
    socket.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
}

/// Adds an nftables counter in namespace `netns` on `hook` (input, forward,
/// ...) for packets matching `rule` (empty: all), in table `inet weirtest`.
pub fn nft_counter(netns: &str, hook: &str, rule: &str) {
    let script = format!(
        "add table inet weirtest\nadd chain inet weirtest {hook} {{ type filter hook {hook} priority 0 ; }}\nadd rule inet weirtest {hook} {rule} counter\n"
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft");
    child.stdin.as_mut().expect("stdin").write_all(script.as_bytes()).expect("script");
    assert!(child.wait().expect("nft").success());
}

/// The packets the counter of [`nft_counter`] has seen.
pub fn nft_counted(netns: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "list", "table", "inet", "weirtest"])
        .output()
        .expect("nft");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("packets ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a counter")
}

/// The sum of the Prometheus samples whose line starts with `prefix`.
pub fn metric_sum(text: &str, prefix: &str) -> u64 {
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum()
}

/// Sends each (interface, frame, copies) out of `netns` through AF_PACKET raw sockets.
pub fn send_frames(netns: &str, frames: &[(&str, Vec<u8>, usize)]) {
    let frames: Vec<(String, Vec<u8>, usize)> = frames.iter().map(|(i, f, n)| (i.to_string(), f.clone(), *n)).collect();
    weir_host::netns::run_in(netns, move || {
        for (ifname, frame, copies) in &frames {
            // SAFETY: plain socket calls with valid arguments; the fd is closed below.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
                assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
                let name = std::ffi::CString::new(ifname.as_str()).expect("name");
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
                addr.sll_halen = 6;
                for _ in 0..*copies {
                    let sent = libc::sendto(
                        fd,
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        (&addr as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    );
                    assert_eq!(sent, frame.len() as isize, "sendto {ifname}: {}", std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
        }
    })
    .expect("netns");
}
