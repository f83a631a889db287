//! A Kubernetes Service of type LoadBalancer with `loadBalancerClass:
//! weir.dev/xdp`, served end to end in a lab with an edge (`spec.edge`):
//! two XDP load balancers behind a router's ECMP route, clients behind the
//! router, the Service's pods on two nodes. Real TCP clients (and curl and
//! wrk, over HTTP) reach every pod; replies go from the nodes to the router, never through a load
//! balancer; a connection keeps its pod when the router moves it from one
//! load balancer to the other; a load balancer's agent killed with SIGKILL
//! changes nothing in forwarding, and comes back with its VIP.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::*;

const VIP: &str = "198.51.100.10";

fn spec(name: &str) -> String {
    format!(
        "apiVersion: weir.dev/v1alpha1
kind: Lab
metadata: {{name: {name}}}
spec:
  nodes:
    - {{name: node-a, podCIDR: 10.244.0.0/24}}
    - {{name: node-b, podCIDR: 10.244.1.0/24}}
  namespaces: [{{name: shop}}]
  pods:
    - {{name: web-a, namespace: shop, node: node-a, labels: {{app: web}}}}
    - {{name: web-b, namespace: shop, node: node-b, labels: {{app: web}}}}
    - {{name: web-c, namespace: shop, node: node-b, labels: {{app: web}}}}
  edge:
    loadBalancers: [{{name: lb1}}, {{name: lb2}}]
    clients: [{{name: alice}}]
"
    )
}

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  loadBalancerClass: weir.dev/xdp
  loadBalancerIP: 198.51.100.10
  clusterIP: 10.96.0.20
  selector: {app: web}
  ports:
  - {name: line, port: 80, targetPort: 8080}
  - {name: http, port: 81, targetPort: 8081}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-pods
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: line, protocol: TCP, port: 8080}
- {name: http, protocol: TCP, port: 8081}
endpoints:
- {addresses: [10.244.0.2], nodeName: node-a}
- {addresses: [10.244.1.2], nodeName: node-b}
- {addresses: [10.244.1.3], nodeName: node-b}
";

/// A backend in a pod: answers each line with its name, on every connection.
fn serve(lab: &TestLab, pod: &str, name: &'static str) {
    let plan = lab.plan();
    let pod = plan.pod(pod).expect("pod");
    let addr = SocketAddr::from((pod.ip, 8080));
    let listener = weir_host::netns::run_in(&pod.netns, || TcpListener::bind(addr)).expect("pod netns").expect("bind");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut writer = stream;
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if writer.write_all(format!("{name}\n").as_bytes()).is_err() {
                        break;
                    }
                    line.clear();
                }
            });
        }
    });
}

/// A connection from the client to the VIP.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(netns: &str) -> std::io::Result<Self> {
        let addr: SocketAddr = format!("{VIP}:80").parse().expect("addr");
        let stream = weir_host::netns::run_in(netns, || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
            .expect("netns")?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        Ok(Self { reader: BufReader::new(stream.try_clone()?), writer: stream })
    }

    /// One line out, the backend's name back.
    fn ask(&mut self) -> std::io::Result<String> {
        self.writer.write_all(b"who\n")?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        if line.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line.trim().to_string())
    }
}

fn lb_status(lab: &str, node: &str) -> serde_json::Value {
    let text = weir_ok(&["lb", "status", "--lab", lab, "--node", node, "-o", "json"]);
    let all: serde_json::Value = serde_json::from_str(&text).expect("json");
    all[0].clone()
}

fn vip_packets(lab: &str, node: &str) -> u64 {
    let status = lb_status(lab, node);
    status["vips"].as_array().into_iter().flatten().filter_map(|v| v["packets"].as_u64()).sum()
}

fn diagnose(lab: &str) -> String {
    let mut out = String::from_utf8_lossy(&weir(&["lb", "status", "--lab", lab]).stdout).into_owned();
    out += &String::from_utf8_lossy(&weir(&["lab", "status", lab]).stdout);
    out
}

fn router(lab: &TestLab, args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.netns("router"), "ip"])
        .args(args)
        .output()
        .expect("ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_loadbalancer_service_of_class_weir_xdp_is_served_by_two_xdp_load_balancers_behind_ecmp() {
    let test = "a_loadbalancer_service_of_class_weir_xdp_is_served_by_two_xdp_load_balancers_behind_ecmp";
    if !privileged(test) {
        return;
    }
    let name = unique_name("xsvc");
    let lab = TestLab::up(&name, &spec(&name), true);
    let plan = lab.plan();
    let edge = plan.edge.clone().expect("the lab has an edge");
    let (lb1, lb2) = (&edge.load_balancers[0], &edge.load_balancers[1]);
    let client = edge.clients[0].netns.clone();
    for (pod, who) in [("shop/web-a", "web-a"), ("shop/web-b", "web-b"), ("shop/web-c", "web-c")] {
        serve(&lab, pod, who);
    }
    // And an HTTP server in each, for curl and wrk (killed with the lab).
    let www = std::env::temp_dir().join(format!("{name}-www"));
    let mut httpd = Vec::new();
    for who in ["web-a", "web-b", "web-c"] {
        let root = www.join(who);
        std::fs::create_dir_all(&root).expect("www");
        std::fs::write(root.join("index.html"), format!("{who}\n")).expect("index");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args([
                "lab",
                "exec",
                "--lab",
                &name,
                &format!("shop/{who}"),
                "--",
                "busybox",
                "httpd",
                "-f",
                "-p",
                "8081",
                "-h",
            ])
            .arg(&root)
            .spawn()
            .expect("busybox httpd");
        httpd.push(KillOnDrop(child));
    }
    // Replies reach the router from a node, never from a load balancer.
    let mac = |netns: &str| {
        let out = std::process::Command::new("ip")
            .args(["-n", netns, "-j", "link", "show", "eth0"])
            .output()
            .expect("ip link");
        let link: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        link[0]["address"].as_str().expect("mac").to_string()
    };
    let node_macs: Vec<String> = plan.nodes.iter().map(|n| mac(&n.netns)).collect();
    let lb_macs: Vec<String> = edge.load_balancers.iter().map(|b| mac(&b.netns)).collect();
    let rules = format!(
        "add table inet xsvc\n\
         add chain inet xsvc watch {{ type filter hook forward priority 0 ; }}\n\
         add rule inet xsvc watch ip saddr {VIP} ether saddr {{ {} }} counter\n\
         add rule inet xsvc watch ip saddr {VIP} ether saddr {{ {} }} counter\n",
        node_macs.join(", "),
        lb_macs.join(", ")
    );
    common::xlb::nft(&lab.netns("router"), &rules);
    let router_counts = || common::xlb::nft_counts(&lab.netns("router"), "inet", "xsvc");

    let docs = std::env::temp_dir().join(format!("{name}.service.yaml"));
    std::fs::write(&docs, SERVICE).expect("service");
    let applied = weir(&["apply", "-f", &docs.to_string_lossy(), "--lab", &name]);
    let _ = std::fs::remove_file(&docs);
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));

    // Each load balancer holds the Service's VIPs, their reals the two nodes
    // (node-b weighted two to one: it runs two of the three pods), both
    // passing their probes through the encapsulation.
    for balancer in [&lb1.name, &lb2.name] {
        let ready = eventually(Duration::from_secs(30), || {
            let status = lb_status(&name, balancer);
            let vips = status["vips"].as_array().cloned().unwrap_or_default();
            let names: Vec<&str> = vips.iter().filter_map(|v| v["name"].as_str()).collect();
            names == ["shop/web:80/TCP", "shop/web:81/TCP"]
                && vips.iter().all(|vip| {
                    let reals = vip["reals"].as_array().cloned().unwrap_or_default();
                    vip["address"] == VIP
                        && reals.len() == 2
                        && reals.iter().all(|r| r["healthy"] == true)
                        && reals.iter().any(|r| r["address"] == plan.nodes[1].address.to_string() && r["weight"] == 2)
                })
        });
        assert!(ready, "{balancer} does not serve the Service's VIP:\n{}", diagnose(&name));
    }

    // New connections reach every pod, through both load balancers (the
    // router hashes each connection onto one of them: as many as it takes).
    let mut answered = BTreeSet::new();
    let mut failures = Vec::new();
    let reached_all = eventually(Duration::from_secs(60), || {
        match Client::connect(&client).and_then(|mut c| c.ask()) {
            Ok(who) => {
                answered.insert(who);
            }
            Err(e) => failures.push(e.to_string()),
        }
        answered.len() == 3 && vip_packets(&name, &lb1.name) > 0 && vip_packets(&name, &lb2.name) > 0
    });
    assert!(reached_all, "pods answered: {answered:?}, failures {failures:?}\n{}", diagnose(&name));
    assert!(failures.is_empty(), "connections failed: {failures:?}\n{}", diagnose(&name));
    // curl and wrk, over HTTP: every request answered.
    let curl = std::process::Command::new("ip")
        .args(["netns", "exec", &client, "curl", "-sf", "--max-time", "5", &format!("http://{VIP}:81/")])
        .output()
        .expect("curl");
    let page = String::from_utf8_lossy(&curl.stdout).trim().to_string();
    assert!(
        curl.status.success() && page.starts_with("web-"),
        "curl: {page:?} {}",
        String::from_utf8_lossy(&curl.stderr)
    );
    let wrk = std::process::Command::new("ip")
        .args(["netns", "exec", &client, "wrk", "-t1", "-c8", "-d2s", "--timeout", "3s", &format!("http://{VIP}:81/")])
        .output()
        .expect("wrk");
    let report = String::from_utf8_lossy(&wrk.stdout).into_owned();
    let requests: u64 = report
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.parse().ok()))
        .unwrap_or(0);
    assert!(wrk.status.success() && requests > 0, "wrk: {report}");
    assert!(!report.contains("Socket errors") && !report.contains("Non-2xx"), "wrk: {report}");
    let _ = std::fs::remove_dir_all(&www);
    drop(httpd);
    let counts = router_counts();
    assert!(counts[0] > 0, "no reply reached the router from a node: {counts:?}");
    assert_eq!(counts[1], 0, "replies came back through a load balancer: {counts:?}");

    // One connection, moved between the load balancers by the router, keeps its pod.
    let mut flow = Client::connect(&client).expect("a connection to the VIP");
    let first = flow.ask().expect("an answer");
    for balancer in [lb1, lb2, lb1] {
        let before = vip_packets(&name, &balancer.name);
        router(&lab, &["route", "replace", &edge.vip_cidr.to_string(), "via", &balancer.address.to_string()]);
        assert_eq!(flow.ask().expect("the connection survives the path change"), first);
        assert!(vip_packets(&name, &balancer.name) > before, "the flow did not cross {}", balancer.name);
    }

    // `weir lb stats` counts the flow's rate while it runs: LRU hits (an
    // established connection), packets per second on the VIP and its real.
    let asking = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            assert_eq!(flow.ask().expect("an answer"), first);
        }
        (flow, first)
    });
    let stats = weir_ok(&["lb", "stats", "--lab", &name, "--node", &lb1.name, "--interval", "2s", "-o", "json"]);
    let (mut flow, first) = asking.join().expect("the asking thread");
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("stats json");
    let rate = |what: &str| {
        stats[0]["rates"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["what"] == what)
            .and_then(|r| r["packetsPerSecond"].as_f64())
    };
    assert!(rate("vip shop/web:80/TCP") > Some(1.0), "{stats}");
    assert!(rate("lru_hit") > Some(1.0), "{stats}");
    assert!(stats[0]["lruHitRatio"].as_f64() > Some(0.5), "{stats}");

    // lb1 carries everything; its agent is killed: forwarding goes on.
    let pid: i32 = std::fs::read_to_string(&lb1.agent.pid_file).expect("pid").trim().parse().expect("pid");
    weir_host::process::kill(pid, libc::SIGKILL);
    assert!(eventually(Duration::from_secs(5), || !weir_host::process::alive(pid)), "agent {pid} outlived SIGKILL");
    assert_eq!(flow.ask().expect("the connection survives the agent"), first);
    for _ in 0..5 {
        let who = Client::connect(&client).and_then(|mut c| c.ask());
        assert!(who.is_ok(), "a new connection failed with lb1's agent dead: {who:?}");
    }
    // `weir lab up` brings the agent back; it adopts the tables as they are.
    weir_ok(&["lab", "up", "-f", &lab.spec_path.to_string_lossy()]);
    assert_eq!(flow.ask().expect("the connection survives the restart"), first);
    let status = lb_status(&name, &lb1.name);
    assert_eq!(status["vips"][0]["name"], "shop/web:80/TCP", "{status}");
    assert_eq!(status["vips"][1]["name"], "shop/web:81/TCP", "{status}");
}
