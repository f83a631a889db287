//! The XDP load balancer's labs (xlb_lab.rs, xlb_redirect.rs): namespaces
//! wired like a deployment, agents in them, TCP servers and clients.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use super::{spawn_agent, weir_ok, KillOnDrop};

/// One namespace per member, named PREFIX-MEMBER (loopback up, reverse path
/// filtering off: the load balancer's outer sources are no host's), and
/// the pins and files of the test; all removed on drop, panic or not.
pub struct Site {
    pub prefix: String,
    members: Vec<&'static str>,
    pub dirs: Vec<PathBuf>,
}

impl Site {
    pub fn new(prefix: String, members: &[&'static str]) -> Self {
        let site = Site { prefix, members: members.to_vec(), dirs: Vec::new() };
        for member in members {
            weir_host::iproute::ip(None, &["netns", "add", &site.ns(member)]).expect("netns");
            sh(&site.ns(member), &["link set lo up"]);
            exec(
                &site.ns(member),
                &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"],
            );
        }
        site
    }

    pub fn ns(&self, member: &str) -> String {
        format!("{}-{member}", self.prefix)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for member in &self.members {
            let _ = weir_host::iproute::ip(None, &["netns", "del", &self.ns(member)]);
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `ip -batch` lines in namespace `ns`.
pub fn sh(ns: &str, commands: &[&str]) {
    let lines: Vec<String> = commands.iter().map(|c| c.to_string()).collect();
    weir_host::iproute::batch(Some(ns), &lines).unwrap_or_else(|e| panic!("{ns}: {e}"));
}

/// A command in namespace `ns`, which must succeed.
pub fn exec(ns: &str, args: &[&str]) {
    let out = std::process::Command::new("ip").args(["netns", "exec", ns]).args(args).output().expect("ip netns exec");
    assert!(out.status.success(), "{ns}: {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Links `a` (interface `a_if`, address `a_addr`) to `b` through a veth
/// pair; the ends also get `fd00:N::2` (a) and `fd00:N::1` (b), /64.
pub fn wire(a: &str, a_if: &str, a_addr: &str, b: &str, b_if: &str, b_addr: &str, net: u16) {
    sh(
        a,
        &[
            &format!("link add {a_if} type veth peer name {b_if} netns {b}"),
            &format!("addr add {a_addr} dev {a_if}"),
            &format!("addr add fd00:{net:x}::2/64 dev {a_if} nodad"),
            &format!("link set {a_if} up"),
        ],
    );
    sh(
        b,
        &[
            &format!("addr add {b_addr} dev {b_if}"),
            &format!("addr add fd00:{net:x}::1/64 dev {b_if} nodad"),
            &format!("link set {b_if} up"),
        ],
    );
}

/// Starts an agent in `member`'s namespace with `flags`; returns it and its socket.
pub fn start_agent(site: &Site, member: &str, flags: &[&str]) -> (KillOnDrop, PathBuf) {
    let roots = weir_lab::runtime::Roots::discover().expect("roots");
    let pins = roots.bpffs.join("weir").join("tests").join(site.ns(member));
    let dir = std::env::temp_dir().join(site.ns(member));
    let mut all = vec!["--node", member, "--runtime", "false"];
    all.extend_from_slice(flags);
    if !flags.contains(&"--metrics-addr") {
        all.extend_from_slice(&["--metrics-addr", "off"]);
    }
    (spawn_agent(&site.ns(member), &pins, &dir, &all), dir.join("agent.sock"))
}

/// A TCP server in `ns` on port `port` of every address, answering each
/// connection with `name`; the thread ends with the namespace.
pub fn serve(ns: &str, port: u16, name: &'static str) {
    let listener = weir_host::netns::run_in(ns, || TcpListener::bind(("0.0.0.0", port))).expect("netns").expect("bind");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.write_all(name.as_bytes());
        }
    });
}

/// Connects from the site's client to `vip`:80 and returns who answered.
pub fn ask(site: &Site, vip: &str) -> Option<String> {
    ask_at(site, format!("{vip}:80").parse().expect("addr"))
}

/// Connects from the site's client to `addr` and returns who answered.
pub fn ask_at(site: &Site, addr: SocketAddr) -> Option<String> {
    weir_host::netns::run_in(&site.ns("client"), || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut got = String::new();
        stream.read_to_string(&mut got).ok()?;
        Some(got)
    })
    .expect("netns")
}

/// `weir lb status -o json` of the agent at `socket`: its one node.
pub fn lb_status(socket: &std::path::Path) -> serde_json::Value {
    let text = weir_ok(&["lb", "status", "--socket", &socket.to_string_lossy(), "-o", "json"]);
    serde_json::from_str::<serde_json::Value>(&text).expect("json")[0].clone()
}
