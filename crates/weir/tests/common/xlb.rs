//! The XDP load balancer's labs (xlb_lab.rs, xlb_redirect.rs,
//! xlb_health.rs): namespaces wired like a deployment, agents in them, TCP
//! servers and clients. [`Site::up`] builds the common one: a client behind
//! a router; the router sends 198.51.100.0/28 to a load-balancer node
//! (`lb`, its balanced interface `l0`, a management veth `mgmt0`); two real
//! servers (`real1` 10.2.1.2, `real2` 10.2.2.2, interface `e0`, IPv6
//! fd00:21::2 and fd00:22::2) hold the VIPs on loopback and strip the
//! encapsulation at tc.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use super::{compile_fixture, spawn_agent, unique_name, weir_ok, KillOnDrop};

/// One namespace per member, named PREFIX-MEMBER (loopback up, reverse path
/// filtering off: the load balancer's outer sources are no host's), and
/// the pins and files of the test; all removed on drop, panic or not.
pub struct Site {
    pub prefix: String,
    members: Vec<String>,
    pub dirs: Vec<PathBuf>,
}

impl Site {
    pub fn new(prefix: String, members: &[&str]) -> Self {
        let site = Site { prefix, members: members.iter().map(|m| m.to_string()).collect(), dirs: Vec::new() };
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

    /// The lab, the reals holding `vips` (IPv4 or IPv6) on loopback;
    /// `extra` members get a namespace (loopback up, no reverse-path
    /// filter) and nothing more: the caller wires them.
    pub fn up(prefix: &str, vips: &[&str], extra: &[&str]) -> Self {
        let mut members = vec!["client", "router", "lb", "real1", "real2"];
        members.extend_from_slice(extra);
        let mut site = Site::new(unique_name(prefix), &members);
        let roots = weir_lab::runtime::Roots::discover().expect("roots");
        for member in ["lb", "real1", "real2"] {
            site.dirs.push(roots.bpffs.join("weir").join("tests").join(site.ns(member)));
            site.dirs.push(std::env::temp_dir().join(site.ns(member)));
        }
        let (client, router, lb, real1, real2) =
            (site.ns("client"), site.ns("router"), site.ns("lb"), site.ns("real1"), site.ns("real2"));
        wire(&client, "c0", "192.0.2.2/24", &router, "r-c", "192.0.2.1/24", 0xc);
        wire(&lb, "l0", "10.1.0.2/24", &router, "r-lb", "10.1.0.1/24", 0x10);
        wire(&real1, "e0", "10.2.1.2/24", &router, "r-real1", "10.2.1.1/24", 0x21);
        wire(&real2, "e0", "10.2.2.2/24", &router, "r-real2", "10.2.2.1/24", 0x22);
        for (ns, net) in [(&client, "c"), (&lb, "10"), (&real1, "21"), (&real2, "22")] {
            sh(ns, &[&format!("route add ::/0 via fd00:{net}::1")]);
        }
        // Room for the outer header: the client's segments stay below the path's MTU.
        sh(&client, &["link set c0 mtu 1400", "route add default via 192.0.2.1"]);
        sh(
            &lb,
            &[
                "route add default via 10.1.0.1",
                "link add mgmt0 type veth peer name mgmt1",
                "link set mgmt0 up",
                "link set mgmt1 up",
            ],
        );
        for (ns, gw) in [(&real1, "10.2.1.1"), (&real2, "10.2.2.1")] {
            sh(ns, &[&format!("route add default via {gw}")]);
            for vip in vips {
                let (len, nodad) = if vip.contains(':') { (128, " nodad") } else { (32, "") };
                sh(ns, &[&format!("addr add {vip}/{len} dev lo{nodad}")]);
            }
        }
        sh(&router, &["route add 198.51.100.0/28 via 10.1.0.2"]);
        for vip in vips.iter().filter(|v| v.contains(':')) {
            sh(&router, &[&format!("route add {vip}/128 via fd00:10::2")]);
        }
        exec(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]);
        // XDP_TX on a veth needs an XDP program on its peer (a NIC needs nothing).
        let pass = compile_fixture("xdp_pass.bpf.c", &["-target", "bpf", "-O2", "-c"]);
        site.dirs.push(pass.clone());
        exec(&router, &["ip", "link", "set", "dev", "r-lb", "xdp", "obj", &pass.to_string_lossy(), "sec", "xdp"]);
        // A NIC hands XDP complete checksums; a veth would hand it the client's
        // unfinished ones (checksum offload), which the real then refuses.
        exec(&client, &["ethtool", "-K", "c0", "tx", "off"]);
        site
    }

    /// The load balancer's agent (`--lb-interface l0`) and the reals'
    /// (`--lb-decap-interface e0`): (lb, real1, real2), each with its socket.
    pub fn start_agents(&self, lb_flags: &[&str]) -> [(KillOnDrop, PathBuf); 3] {
        let mut flags = vec!["--interface", "mgmt0", "--lb-interface", "l0"];
        flags.extend_from_slice(lb_flags);
        [
            start_agent(self, "lb", &flags),
            start_agent(self, "real1", &["--interface", "e0", "--lb-decap-interface", "e0"]),
            start_agent(self, "real2", &["--interface", "e0", "--lb-decap-interface", "e0"]),
        ]
    }

    /// Applies an XdpLoadBalancer document whose `vips:` list is `vips`
    /// (YAML lines, each indented by two spaces) to the agent at `socket`.
    pub fn apply(&mut self, socket: &std::path::Path, vips: &str) {
        let config = std::env::temp_dir().join(format!("{}.yaml", self.prefix));
        let yaml = format!(
            "apiVersion: weir.dev/v1alpha1\nkind: XdpLoadBalancer\nmetadata: {{name: edge}}\nspec:\n  vips:\n{vips}"
        );
        std::fs::write(&config, yaml).expect("config");
        if !self.dirs.contains(&config) {
            self.dirs.push(config.clone());
        }
        weir_ok(&["apply", "-f", &config.to_string_lossy(), "--socket", &socket.to_string_lossy()]);
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for member in &self.members {
            let _ = weir_host::iproute::ip(None, &["netns", "del", &self.ns(member)]);
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
            let _ = std::fs::remove_file(dir);
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

/// `real` of VIP `vip` in a status.
pub fn status_real(status: &serde_json::Value, vip: &str, real: &str) -> Option<serde_json::Value> {
    let vip = status["vips"].as_array()?.iter().find(|v| v["name"] == vip)?;
    vip["reals"].as_array()?.iter().find(|r| r["address"] == real).cloned()
}

/// Writes `text` to `nft -f -` in namespace `ns`.
pub fn nft(ns: &str, text: &str) {
    let mut nft = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft");
    nft.stdin.as_mut().expect("stdin").write_all(text.as_bytes()).expect("rules");
    assert!(nft.wait().expect("nft").success(), "{ns}: {text}");
}

/// The packet counts of the rules of nftables table `family name` in `ns`, in order.
pub fn nft_counts(ns: &str, family: &str, name: &str) -> Vec<u64> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "table", family, name])
        .output()
        .expect("nft");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("packets ").skip(1).filter_map(|t| t.split_whitespace().next()?.parse().ok()).collect()
}

/// New connections from the site's client to `vip`:80 until `reals`
/// different reals answered and at least `at_least` answers came, within
/// 30 s: whether they did, who answered, and how many answers.
pub fn every_real_answers(site: &Site, vip: &str, reals: usize, at_least: usize) -> (bool, BTreeSet<String>, usize) {
    let mut seen = BTreeSet::new();
    let mut answers = 0;
    let done = super::eventually(Duration::from_secs(30), || {
        if let Some(who) = ask(site, vip) {
            answers += 1;
            seen.insert(who);
        }
        seen.len() == reals && answers >= at_least
    });
    (done, seen, answers)
}
