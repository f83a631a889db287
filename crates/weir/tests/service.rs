//! Services through the socket load balancer, end to end: a real lab with
//! agents, backends listening in pods, and a real client process inside a
//! pod (so inside the pod's cgroup, where the balancer is attached).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::server_process::ServerProcess;
use common::*;

const VIP: &str = "10.96.0.10";

/// A backend in a pod: answers every line (TCP) or datagram (UDP) with its name.
struct Backend {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Datagrams received (UDP).
    received: Arc<AtomicUsize>,
}

impl Backend {
    fn tcp(netns: &str, ip: Ipv4Addr, port: u16, name: &str) -> Self {
        let listener = weir_host::netns::run_in(netns, || TcpListener::bind((ip, port)))
            .expect("enter pod netns")
            .expect("backend listens");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, name) = (stop.clone(), name.to_string());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let name = name.clone();
                        std::thread::spawn(move || {
                            stream.set_nonblocking(false).ok();
                            stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
                            let mut writer = stream.try_clone().expect("clone");
                            for line in BufReader::new(stream).lines() {
                                if line.is_err() || writeln!(writer, "{name}").is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Self { stop, thread: Some(thread), received: Arc::default() }
    }

    fn udp(netns: &str, ip: Ipv4Addr, port: u16, name: &str) -> Self {
        let socket = weir_host::netns::run_in(netns, || UdpSocket::bind((ip, port)))
            .expect("enter pod netns")
            .expect("backend binds");
        socket.set_read_timeout(Some(Duration::from_millis(20))).expect("timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, name) = (stop.clone(), name.to_string());
        let received = Arc::new(AtomicUsize::new(0));
        let count = received.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = socket.send_to(format!("{name}\n").as_bytes(), from);
                }
            }
        });
        Self { stop, thread: Some(thread), received }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The echo service: TCP 80 -> 8080 and 8081 on api and db (4 backends),
/// UDP 53 -> 5353 on api and db. `extra_spec` goes into the Service's spec.
fn echo_service(plan: &weir_lab::LabPlan, extra_spec: &str, conditions: &[(&str, &str)]) -> String {
    let api = plan.pod("backend/api").expect("api").ip;
    let db = plan.pod("backend/db").expect("db").ip;
    let condition = |pod: &str| {
        conditions.iter().find(|(p, _)| *p == pod).map_or("{ready: true}".to_string(), |(_, c)| c.to_string())
    };
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: backend}}
spec:
  clusterIP: {VIP}
  selector: {{tier: backend}}
{extra_spec}  ports:
  - {{name: tcp, port: 80, targetPort: 8080}}
  - {{name: udp, port: 53, protocol: UDP, targetPort: 5353}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-main
  namespace: backend
  labels: {{kubernetes.io/service-name: echo}}
addressType: IPv4
ports:
  - {{name: tcp, protocol: TCP, port: 8080}}
  - {{name: udp, protocol: UDP, port: 5353}}
endpoints:
  - {{addresses: [{api}], nodeName: node-b, conditions: {api_c}}}
  - {{addresses: [{db}], nodeName: node-b, conditions: {db_c}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-alt
  namespace: backend
  labels: {{kubernetes.io/service-name: echo}}
addressType: IPv4
ports:
  - {{name: tcp, protocol: TCP, port: 8081}}
endpoints:
  - {{addresses: [{api}], nodeName: node-b, conditions: {api_c}}}
  - {{addresses: [{db}], nodeName: node-b, conditions: {db_c}}}
"#,
        api_c = condition("api"),
        db_c = condition("db"),
    )
}

/// Starts the six echo backends (named pod:port).
fn start_backends(plan: &weir_lab::LabPlan) -> BTreeMap<String, Backend> {
    let mut out = BTreeMap::new();
    for pod in ["api", "db"] {
        let p = plan.pod(&format!("backend/{pod}")).expect("pod");
        for port in [8080, 8081] {
            out.insert(format!("{pod}:{port}"), Backend::tcp(&p.netns, p.ip, port, &format!("{pod}:{port}")));
        }
        out.insert(format!("{pod}:5353"), Backend::udp(&p.netns, p.ip, 5353, &format!("{pod}:5353")));
    }
    out
}

fn apply(lab: &TestLab, yaml: &str) -> std::process::Output {
    let path = std::env::temp_dir().join(unique_name("svc-")).with_extension("yaml");
    std::fs::write(&path, yaml).expect("write");
    let out = weir(&["apply", "--lab", &lab.name, "-f", &path.to_string_lossy()]);
    let _ = std::fs::remove_file(&path);
    out
}

fn client() -> PathBuf {
    compile_fixture("svc_client.c", &["-O1"])
}

/// Runs the client in a pod; returns its lines.
fn run_client(lab: &TestLab, pod: &str, client: &std::path::Path, args: &[&str]) -> Vec<String> {
    let mut argv = vec![client.to_str().expect("utf-8 path")];
    argv.extend_from_slice(args);
    let out = lab.exec(pod, &argv);
    assert!(out.status.success(), "client: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// backend name -> answers, asserting every answer came "from" the service address.
fn tally(lines: &[String], service: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in lines {
        let backend = line
            .strip_prefix(&format!("peer={service} backend="))
            .unwrap_or_else(|| panic!("expected an answer through {service}, got {line:?}"));
        *out.entry(backend.to_string()).or_insert(0) += 1;
    }
    out
}

fn service_json(lab: &TestLab) -> Vec<serde_json::Value> {
    let out = weir_ok(&["service", "list", "--lab", &lab.name, "--node", "node-a", "-o", "json"]);
    serde_json::from_str(&out).expect("json")
}

#[test]
fn a_cluster_ip_spreads_tcp_and_udp_over_every_backend_and_the_client_sees_the_service_address() {
    let Some(lab) = TestLab::for_test("a_cluster_ip_spreads_tcp_and_udp", true) else { return };
    let plan = lab.plan();
    let _backends = start_backends(&plan);
    let out = apply(&lab, &echo_service(&plan, "", &[]));
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    let client = client();

    // 400 connections over 4 backends: each expects 100; binomial spread is about 9.
    let tcp = tally(&run_client(&lab, "frontend/web", &client, &["tcp", VIP, "80", "400"]), &format!("{VIP}:80"));
    assert_eq!(tcp.keys().cloned().collect::<Vec<_>>(), ["api:8080", "api:8081", "db:8080", "db:8081"], "{tcp:?}");
    assert!(tcp.values().all(|n| (60..=140).contains(n)), "not near uniform: {tcp:?}");
    // Unconnected UDP: replies appear to come from the service address (recvmsg).
    let udp = tally(&run_client(&lab, "frontend/web", &client, &["udp", VIP, "53", "100"]), &format!("{VIP}:53"));
    assert_eq!(udp.keys().cloned().collect::<Vec<_>>(), ["api:5353", "db:5353"], "{udp:?}");
    assert!(udp.values().all(|n| *n >= 25), "{udp:?}");

    // The kernel's table and counters, as the CLI shows them.
    let list = service_json(&lab);
    let tcp_fe = list.iter().find(|f| f["port"] == 80).expect("tcp frontend");
    assert_eq!(tcp_fe["connects"], 400);
    assert_eq!(tcp_fe["active"], 4);
    let explain = weir_ok(&["service", "explain", &format!("{VIP}:80"), "--lab", &lab.name, "--node", "node-a"]);
    assert!(explain.contains("slot 0: 4 active of 4 slots, random"), "{explain}");
    assert!(explain.contains("counters: 400 translated"), "{explain}");
    // Prometheus, from node-a's agent.
    let node_a = plan.node("node-a").expect("node-a");
    let body = scrape_metrics(node_a);
    assert!(
        body.lines().any(|l| l.starts_with("weir_service_connections_total{")
            && l.contains("service=\"backend/echo:tcp\"")
            && l.ends_with(" 400")),
        "{body}"
    );
    assert!(
        body.contains("weir_service_backends{node=\"node-a\",service=\"backend/echo:tcp\",state=\"active\"} 4"),
        "{body}"
    );

    // Bad documents are refused naming the field, and nothing changes.
    let before = service_json(&lab);
    let api_ip = plan.pod("backend/api").expect("api").ip.to_string();
    let node_b_ip = plan.node("node-b").expect("node-b").address.to_string();
    let with_cluster_ip =
        |ip: &str| echo_service(&plan, "", &[]).replace(&format!("clusterIP: {VIP}"), &format!("clusterIP: {ip}"));
    for (bad, field, why) in [
        (echo_service(&plan, "", &[]).replace("port: 80,", "port: 80000,"), "spec.ports[0].port", ""),
        (echo_service(&plan, "  sessionAffinty: ClientIP\n", &[]), "spec.sessionAffinty", ""),
        (
            echo_service(&plan, "", &[])
                .replace("{name: udp, protocol: UDP, port: 5353}", "{name: udp, protocol: TCP, port: 5353}"),
            "ports[1].protocol",
            "",
        ),
        // As the API server: cluster IPs no pod or node uses, node ports in
        // the node-port range, families that match the addresses.
        (with_cluster_ip(&api_ip), "spec.clusterIP", "pod backend/api's address"),
        (with_cluster_ip("10.244.0.200"), "spec.clusterIP", "the pod CIDR of node node-a"),
        (with_cluster_ip(&node_b_ip), "spec.clusterIP", "node node-b's address"),
        (
            echo_service(&plan, "  type: NodePort\n", &[])
                .replace("targetPort: 8080}", "targetPort: 8080, nodePort: 22}")
                .replace("targetPort: 5353}", "targetPort: 5353, nodePort: 30053}"),
            "spec.ports[0].nodePort",
            "outside the node-port range 30000-32767",
        ),
        (echo_service(&plan, "  ipFamilies: [IPv6]\n", &[]), "spec.ipFamilies[0]", "does not match spec.clusterIP"),
        (
            echo_service(&plan, "  ipFamilyPolicy: SingleStack\n", &[])
                .replace(&format!("clusterIP: {VIP}"), &format!("clusterIP: {VIP}\n  clusterIPs: [{VIP}, 10.96.0.11]")),
            "spec.clusterIPs[1]",
            "one of each family",
        ),
    ] {
        let out = apply(&lab, &bad);
        assert!(!out.status.success(), "{field}: accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(field) && stderr.contains(why), "{field}: {stderr}");
    }
    let after = service_json(&lab);
    let strip = |v: &[serde_json::Value]| -> Vec<(String, String)> {
        v.iter().map(|f| (f["address"].to_string() + &f["port"].to_string(), f["slots"].to_string())).collect()
    };
    assert_eq!(strip(&before), strip(&after), "a refused apply changed the tables");

    // The agent dies: the kernel keeps translating. It restarts: same tables, from its record.
    let node = plan.node("node-a").expect("node-a").clone();
    let pid = weir_lab::runtime::agent_pid(&node).expect("agent running");
    weir_host::process::kill(pid, libc::SIGKILL);
    assert!(weir_host::process::wait_gone(&[pid], Duration::from_secs(2)).is_empty(), "agent died");
    let dead = tally(&run_client(&lab, "frontend/web", &client, &["tcp", VIP, "80", "20"]), &format!("{VIP}:80"));
    assert_eq!(dead.values().sum::<usize>(), 20, "translated with the agent dead: {dead:?}");
    weir_ok(&["lab", "up", "-f", &lab.spec_path.to_string_lossy()]);
    let restarted = service_json(&lab);
    assert_eq!(strip(&before), strip(&restarted), "a restart changed the tables");
    let tcp_fe = restarted.iter().find(|f| f["port"] == 80).expect("tcp frontend");
    assert_eq!(tcp_fe["connects"], 420, "counters carried on across the restart");
    let _ = std::fs::remove_file(client);
}

#[test]
fn affinity_holds_and_a_terminating_backend_drains_its_connections_but_takes_no_new_ones() {
    let Some(lab) = TestLab::for_test("affinity_holds_and_a_terminating", true) else { return };
    let plan = lab.plan();
    let _backends = start_backends(&plan);
    let affinity = "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 300}}\n";
    assert!(apply(&lab, &echo_service(&plan, affinity, &[])).status.success());
    let client = client();
    let sticky = tally(&run_client(&lab, "frontend/web", &client, &["tcp", VIP, "80", "50"]), &format!("{VIP}:80"));
    assert_eq!(sticky.len(), 1, "ClientIP affinity: one backend for one client: {sticky:?}");

    // Without affinity, hold one connection open, then mark db terminating.
    assert!(apply(&lab, &echo_service(&plan, "", &[])).status.success());
    let mut held = None;
    for _ in 0..40 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["lab", "exec", "--lab", &lab.name, "frontend/web", "--"])
            .arg(&client)
            .args(["hold", VIP, "80"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("client");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = lines.next().expect("a line").expect("read");
        if first.ends_with("backend=db:8080") || first.ends_with("backend=db:8081") {
            held = Some((child, lines, first));
            break;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let (mut child, mut lines, first) = held.expect("a connection to db within 40 tries");
    let terminating = "{ready: false, serving: true, terminating: true}";
    assert!(apply(&lab, &echo_service(&plan, "", &[("db", terminating)])).status.success());
    let list = service_json(&lab);
    let fe = list.iter().find(|f| f["port"] == 80).expect("frontend");
    assert_eq!(fe["active"], 2, "db's two backends left the active slots: {fe}");
    // New connections never reach db...
    let fresh = tally(&run_client(&lab, "frontend/web", &client, &["tcp", VIP, "80", "60"]), &format!("{VIP}:80"));
    assert!(fresh.keys().all(|b| b.starts_with("api:")), "a terminating backend took a new connection: {fresh:?}");
    // ...while the held one carries on.
    writeln!(child.stdin.as_mut().expect("stdin"), "go").expect("signal");
    let second = lines.next().expect("a second line").expect("read");
    assert_eq!(second, first, "the existing connection continues on its backend");
    let _ = child.wait();

    // Every endpoint terminating but still serving (a rollout's last pods):
    // as kube-proxy, new connections fall back to them instead of failing.
    let all = [("api", terminating), ("db", terminating)];
    assert!(apply(&lab, &echo_service(&plan, "", &all)).status.success());
    let fallback = tally(&run_client(&lab, "frontend/web", &client, &["tcp", VIP, "80", "40"]), &format!("{VIP}:80"));
    assert_eq!(fallback.values().sum::<usize>(), 40, "served by the terminating endpoints: {fallback:?}");
    assert!(fallback.keys().any(|b| b.starts_with("db:")) && fallback.keys().any(|b| b.starts_with("api:")));
    // Terminating and no longer serving: nothing takes new connections.
    let gone = "{ready: false, serving: false, terminating: true}";
    assert!(apply(&lab, &echo_service(&plan, "", &[("api", gone), ("db", gone)])).status.success());
    assert_eq!(run_client(&lab, "frontend/web", &client, &["tcp", VIP, "80", "1"]), ["error=ECONNREFUSED"]);
    let _ = std::fs::remove_file(client);
}

#[test]
fn a_failed_backend_is_quarantined_within_the_health_interval_and_returns_when_it_recovers() {
    let Some(lab) = TestLab::for_test("a_failed_backend_is_quarantined", true) else { return };
    let plan = lab.plan();
    let mut backends = start_backends(&plan);
    assert!(apply(&lab, &echo_service(&plan, "", &[])).status.success());
    let state_of = |backend: &str| -> String {
        let (ip, port) = backend.split_once(":").expect("ip:port");
        let port: u64 = port.parse().expect("port");
        service_json(&lab)
            .iter()
            .filter(|f| f["port"] == 80)
            .flat_map(|f| f["backends"].as_array().cloned().unwrap_or_default())
            .find(|b| b["address"] == ip && b["port"] == port)
            .map(|b| b["state"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    let api = plan.pod("backend/api").expect("api");
    let victim = format!("{}:8081", api.ip);
    assert!(eventually(Duration::from_secs(5), || state_of(&victim) == "active"));

    // Kill the backend: the agent probes every second and quarantines it.
    drop(backends.remove("api:8081"));
    let started = std::time::Instant::now();
    assert!(eventually(Duration::from_secs(5), || state_of(&victim) == "quarantined"), "not quarantined");
    eprintln!("quarantined after {} ms", started.elapsed().as_millis());
    let client = client();
    let after = tally(&run_client(&lab, "frontend/web", &client, &["tcp", VIP, "80", "60"]), &format!("{VIP}:80"));
    assert!(!after.contains_key("api:8081"), "{after:?}");
    assert_eq!(after.values().sum::<usize>(), 60, "every connection found a live backend");

    // It comes back.
    backends.insert("api:8081".into(), Backend::tcp(&api.netns, api.ip, 8081, "api:8081"));
    assert!(eventually(Duration::from_secs(5), || state_of(&victim) == "active"), "did not return");
    let back = tally(&run_client(&lab, "frontend/web", &client, &["tcp", VIP, "80", "80"]), &format!("{VIP}:80"));
    assert!(back.contains_key("api:8081"), "{back:?}");
    let _ = std::fs::remove_file(client);
}

#[test]
fn a_connected_udp_socket_leaves_a_removed_backend_and_reconnects_to_one_that_remains() {
    let Some(lab) = TestLab::for_test("a_connected_udp_socket_leaves", true) else { return };
    let plan = lab.plan();
    let backends = start_backends(&plan);
    assert!(apply(&lab, &echo_service(&plan, "", &[])).status.success());
    let client = client();
    // A DNS-like client: one connected socket, an exchange per line on stdin.
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["lab", "exec", "--lab", &lab.name, "frontend/web", "--"])
        .arg(&client)
        .args(["cudp", VIP, "53"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("client");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut exchange = || -> String {
        writeln!(stdin, "go").expect("client reads");
        lines.next().expect("a line").expect("read")
    };
    let first = exchange();
    let victim = first
        .strip_prefix(&format!("peer={VIP}:53 backend="))
        .unwrap_or_else(|| panic!("through the service: {first}"))
        .to_string();
    assert_eq!(exchange(), first, "a connected socket stays on its backend");
    let (gone_pod, kept) = if victim == "api:5353" { ("api", "db:5353") } else { ("db", "api:5353") };

    // The victim's endpoint leaves the slice; its process lives on (a pod
    // being replaced), so only the balancer can keep datagrams from it.
    let ip = plan.pod(&format!("backend/{gone_pod}")).expect("pod").ip;
    let endpoint = format!("  - {{addresses: [{ip}], nodeName: node-b, conditions: {{ready: true}}}}\n");
    let without = echo_service(&plan, "", &[]).replacen(&endpoint, "", 1);
    assert_ne!(without, echo_service(&plan, "", &[]), "the endpoint line is in the slice");
    assert!(apply(&lab, &without).status.success());
    let received_before = backends[&victim].received.load(Ordering::SeqCst);

    // kube-proxy flushes the flow; here the socket is ended, the client
    // sees an error on its next call and connects again, to what remains.
    let after: Vec<String> = (0..10).map(|_| exchange()).collect();
    drop(stdin);
    let _ = child.wait();
    let errors = after.iter().filter(|l| l.starts_with("error=")).count();
    assert!(errors <= 1, "more than one failed exchange: {after:?}");
    let expected = format!("peer={VIP}:53 backend={kept}");
    assert!(after.iter().all(|l| l.starts_with("error=") || *l == expected), "{after:?}");
    assert!(after.last() == Some(&expected), "the client reached the remaining backend: {after:?}");
    assert_eq!(
        backends[&victim].received.load(Ordering::SeqCst),
        received_before,
        "a datagram reached the removed backend {victim}: {after:?}"
    );
    let _ = std::fs::remove_file(client);
}

/// The state `weir service list` shows for backend IP:PORT of frontend port `frontend_port` on node-a.
fn backend_state(lab: &TestLab, frontend_port: u64, backend: &str) -> String {
    let (ip, port) = backend.split_once(':').expect("ip:port");
    let port: u64 = port.parse().expect("port");
    service_json(lab)
        .iter()
        .filter(|f| f["port"] == frontend_port)
        .flat_map(|f| f["backends"].as_array().cloned().unwrap_or_default())
        .find(|b| b["address"] == ip && b["port"] == port)
        .map(|b| b["state"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

#[test]
fn a_killed_backend_costs_at_most_one_failed_connection_and_a_silent_udp_backend_is_quarantined() {
    if !privileged("passive health") {
        return;
    }
    // Probes every 10 s: between two of them, only passive health can spare the clients.
    let name = unique_name("passv");
    let lab = TestLab::up_with(&name, &two_node_spec(&name), true, &["--agent-arg=--health-interval=10s"]);
    let plan = lab.plan();
    let mut backends = start_backends(&plan);
    drop(backends.remove("api:8081"));
    drop(backends.remove("db:5353"));
    let server = compile_fixture("svc_server.c", &["-O1"]);
    let mut tcp_victim = ServerProcess::start(&lab, &server, "backend/api", "tcp", 8081, "api:8081");
    let udp_victim = ServerProcess::start(&lab, &server, "backend/db", "udp", 5353, "db:5353");
    let yaml = echo_service(&plan, "", &[]).replacen(
        "metadata: {name: echo, namespace: backend}",
        "metadata: {name: echo, namespace: backend, annotations: {weir.dev/udp-health-check: \"udp:ping\"}}",
        1,
    );
    let out = apply(&lab, &yaml);
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    let client = client();
    let api = plan.pod("backend/api").expect("api").ip;
    let db = plan.pod("backend/db").expect("db").ip;
    let tcp_backend = format!("{api}:8081");
    let udp_backend = format!("{db}:5353");
    let before = tally(&run_client(&lab, "frontend/web", &client, &["tcp", VIP, "80", "40"]), &format!("{VIP}:80"));
    assert!(before.contains_key("api:8081"), "the process serves: {before:?}");

    // Its process dies: the first connection to it is refused, the kernel
    // marks it suspect, and the next ones go elsewhere, long before a probe.
    tcp_victim.signal(libc::SIGKILL);
    assert!(weir_host::process::wait_gone(&[tcp_victim.pid], Duration::from_secs(5)).is_empty(), "killed");
    let lines = run_client(&lab, "frontend/web", &client, &["tcp", VIP, "80", "40"]);
    let failed = lines.iter().filter(|l| l.starts_with("error=")).count();
    assert!(failed <= 1, "{failed} of 40 new connections failed after the backend died: {lines:?}");
    let served: Vec<String> = lines.into_iter().filter(|l| !l.starts_with("error=")).collect();
    assert!(!tally(&served, &format!("{VIP}:80")).contains_key("api:8081"));
    let state = backend_state(&lab, 80, &tcp_backend);
    assert!(state == "suspect" || state == "quarantined", "{tcp_backend}: {state}");

    // It comes back: the probe passes and clears the mark.
    tcp_victim = ServerProcess::start(&lab, &server, "backend/api", "tcp", 8081, "api:8081");
    assert!(
        eventually(Duration::from_secs(40), || backend_state(&lab, 80, &tcp_backend) == "active"),
        "the probe did not bring {tcp_backend} back: {}",
        backend_state(&lab, 80, &tcp_backend)
    );
    let back = tally(&run_client(&lab, "frontend/web", &client, &["tcp", VIP, "80", "40"]), &format!("{VIP}:80"));
    assert!(back.contains_key("api:8081"), "{back:?}");
    drop(tcp_victim);

    // UDP: probed with the annotation's payload. A backend that stops
    // answering (stopped: no ICMP either) is quarantined; one whose port is
    // closed (port unreachable) too.
    assert_eq!(backend_state(&lab, 53, &udp_backend), "active");
    udp_victim.signal(libc::SIGSTOP);
    assert!(
        eventually(Duration::from_secs(40), || backend_state(&lab, 53, &udp_backend) == "quarantined"),
        "a silent UDP backend was not quarantined: {}",
        backend_state(&lab, 53, &udp_backend)
    );
    let udp = tally(&run_client(&lab, "frontend/web", &client, &["udp", VIP, "53", "20"]), &format!("{VIP}:53"));
    assert_eq!(udp.get("api:5353"), Some(&20), "{udp:?}");
    udp_victim.signal(libc::SIGCONT);
    assert!(
        eventually(Duration::from_secs(40), || backend_state(&lab, 53, &udp_backend) == "active"),
        "the UDP backend answered again but stayed out"
    );
    udp_victim.signal(libc::SIGKILL);
    assert!(
        eventually(Duration::from_secs(40), || backend_state(&lab, 53, &udp_backend) == "quarantined"),
        "a UDP backend with nothing listening was not quarantined"
    );
    let _ = std::fs::remove_file(client);
    let _ = std::fs::remove_file(server);
}

#[test]
fn with_no_ready_backend_connect_is_refused_at_once_and_an_opted_out_pod_is_not_translated() {
    let Some(lab) = TestLab::for_test("with_no_ready_backend", false) else { return };
    drop(lab);
    // A pod labelled weir.dev/socket-lb: disabled is left alone.
    let name = unique_name("noready");
    let spec = two_node_spec(&name)
        .replace("labels: {app: db, tier: backend}", "labels: {app: db, tier: backend, weir.dev/socket-lb: disabled}");
    let lab = TestLab::up(&name, &spec, true);
    let plan = lab.plan();
    let _backends = start_backends(&plan);
    let not_ready = "{ready: false}";
    assert!(apply(&lab, &echo_service(&plan, "", &[("api", not_ready), ("db", not_ready)])).status.success());
    let client = client();
    let started = std::time::Instant::now();
    let lines = run_client(&lab, "frontend/web", &client, &["tcp", VIP, "80", "1"]);
    assert_eq!(lines, ["error=ECONNREFUSED"]);
    assert!(started.elapsed() < Duration::from_secs(2), "refused at once, not after a timeout");

    assert!(apply(&lab, &echo_service(&plan, "", &[])).status.success());
    let api = run_client(&lab, "backend/api", &client, &["tcp", VIP, "80", "5"]);
    assert!(api.iter().all(|l| l.starts_with(&format!("peer={VIP}:80 backend="))), "{api:?}");
    // db opted out: its connect goes to the service address itself, which nothing routes.
    let db = run_client(&lab, "backend/db", &client, &["tcp", VIP, "80", "1"]);
    assert!(db.len() == 1 && db[0].starts_with("error="), "{db:?}");
    let _ = std::fs::remove_file(client);
}

/// One TCP exchange from namespace `netns` to `addr`: the answering backend's name.
/// The echo service with node ports 30080 (TCP) and 30053 (UDP).
fn with_node_ports(yaml: &str) -> String {
    yaml.replace("{name: tcp, port: 80, targetPort: 8080}", "{name: tcp, port: 80, targetPort: 8080, nodePort: 30080}")
        .replace(
            "{name: udp, port: 53, protocol: UDP, targetPort: 5353}",
            "{name: udp, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}",
        )
}

fn tcp_ask(netns: &str, addr: std::net::SocketAddr) -> std::io::Result<String> {
    weir_host::netns::run_in(netns, || {
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"hello\n")?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        Ok(line.trim().to_string())
    })
    .expect("enter netns")
}

#[test]
fn node_port_and_load_balancer_ip_from_the_external_host_reach_backends_and_replies_come_back() {
    let Some(lab) = TestLab::for_test("node_port_from_the_external_host", true) else { return };
    let plan = lab.plan();
    let _backends = start_backends(&plan);
    let yaml = with_node_ports(&echo_service(&plan, "  type: LoadBalancer\n", &[])).replacen(
        "---\napiVersion: discovery.k8s.io/v1",
        "status:\n  loadBalancer:\n    ingress: [{ip: 198.51.100.10}, {ip: 198.51.100.11, ipMode: Proxy}]\n---\napiVersion: discovery.k8s.io/v1",
        1,
    );
    let out = apply(&lab, &yaml);
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    let internet = plan.externals[0].netns.clone();
    // node-a has no backend of its own (they are on node-b); node-b has them all.
    for node in ["node-a", "node-b"] {
        let address = plan.node(node).expect("node").address;
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..60 {
            let backend = tcp_ask(&internet, (address, 30080).into()).unwrap_or_else(|e| panic!("{node}:30080: {e}"));
            *seen.entry(backend).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 4, "via {node}, every TCP backend answers: {seen:?}");

        let socket = weir_host::netns::run_in(&internet, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
            .expect("netns")
            .expect("bind");
        socket.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        socket.send_to(b"hello\n", (address, 30053)).expect("send");
        let mut buf = [0u8; 64];
        let (n, from) = socket.recv_from(&mut buf).unwrap_or_else(|e| panic!("{node}:30053 answers: {e}"));
        assert_eq!(from, (address, 30053).into(), "the reply comes from the node port");
        let name = String::from_utf8_lossy(&buf[..n]).trim().to_string();
        assert!(name.ends_with(":5353"), "{name}");
    }
    // The load balancer address, announced to the external host as a route via node-a.
    let node_a = plan.node("node-a").expect("node-a").address.to_string();
    weir_host::iproute::ip(Some(&internet), &["route", "add", "198.51.100.10/32", "via", &node_a]).expect("route");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..40 {
        let backend = tcp_ask(&internet, ([198, 51, 100, 10], 80).into()).expect("198.51.100.10:80 answers");
        *seen.entry(backend).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 4, "via the load balancer address, every TCP backend answers: {seen:?}");

    // ipMode Proxy: the external balancer's address is left to it, by the
    // socket load balancer too (a pod's connect goes to the address itself).
    let list = service_json(&lab);
    let addresses: Vec<&str> =
        list.iter().filter(|f| f["kind"] == "LoadBalancer").filter_map(|f| f["address"].as_str()).collect();
    assert!(addresses.contains(&"198.51.100.10"), "{addresses:?}");
    assert!(!addresses.contains(&"198.51.100.11"), "a Proxy-mode address was translated: {addresses:?}");
    let client = client();
    let vip = run_client(&lab, "frontend/web", &client, &["tcp", "198.51.100.10", "80", "1"]);
    assert!(vip[0].starts_with("peer=198.51.100.10:80 backend="), "{vip:?}");
    let proxy = run_client(&lab, "frontend/web", &client, &["tcp", "198.51.100.11", "80", "1"]);
    assert!(proxy[0].starts_with("error="), "a Proxy-mode address reached a backend: {proxy:?}");
    let _ = std::fs::remove_file(client);

    // Counted per service, like connections through the socket load balancer.
    let node_port = list.iter().find(|f| f["kind"] == "NodePort" && f["port"] == 30080).expect("NodePort frontend");
    assert!(node_port["connects"].as_u64().unwrap_or(0) >= 60, "{node_port}");
}

/// NodePort through node-a, whose pods are no backends, to the backends on
/// node-b, with Weir's pod path in `routing` (weir: FIB-routed; vxlan:
/// through the overlay). Replies must keep the backend's address on node-b
/// (no masquerade) to find their way back through node-a.
fn node_port_through_the_pod_path(routing: &str) {
    let name = unique_name(&format!("np{}", &routing[..2]));
    let lab =
        TestLab::up(&name, &two_node_spec(&name).replace("routing: kernel", &format!("routing: {routing}")), true);
    let plan = lab.plan();
    let _backends = start_backends(&plan);
    let yaml = with_node_ports(&echo_service(&plan, "  type: NodePort\n", &[]));
    let out = apply(&lab, &yaml);
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    let internet = plan.externals[0].netns.clone();
    let node_a = plan.node("node-a").expect("node-a").address;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..40 {
        let backend =
            tcp_ask(&internet, (node_a, 30080).into()).unwrap_or_else(|e| panic!("{routing}: node-a:30080: {e}"));
        *seen.entry(backend).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 4, "{routing}: every TCP backend on node-b answers through node-a: {seen:?}");
}

#[test]
fn node_port_reaches_backends_on_another_node_over_the_pod_path() {
    if !privileged("NodePort over the pod path") {
        return;
    }
    node_port_through_the_pod_path("weir");
    node_port_through_the_pod_path("vxlan");
}

fn run_weir_with_file(verb: &[&str], lab: &TestLab, yaml: &str) -> std::process::Output {
    let path = std::env::temp_dir().join(unique_name("svc-")).with_extension("yaml");
    std::fs::write(&path, yaml).expect("write");
    let mut args = verb.to_vec();
    let path_text = path.to_string_lossy().into_owned();
    args.extend(["--lab", &lab.name, "-f", &path_text]);
    let out = weir(&args);
    let _ = std::fs::remove_file(&path);
    out
}

#[test]
fn kubectl_get_output_applies_as_one_change_and_delete_needs_only_kind_namespace_and_name() {
    let Some(lab) = TestLab::for_test("kubectl_get_output_applies", true) else { return };
    let plan = lab.plan();
    let api = plan.pod("backend/api").expect("api").ip;
    // `kubectl get svc,endpointslices -n backend -o yaml`: a List, server
    // fields, and a slice with no endpoints printed as null.
    let list = format!(
        r#"apiVersion: v1
kind: List
metadata: {{resourceVersion: ""}}
items:
- apiVersion: v1
  kind: Service
  metadata: {{name: echo, namespace: backend, uid: 5d1c, resourceVersion: "77", creationTimestamp: "2024-05-01T10:00:00Z"}}
  spec:
    clusterIP: {VIP}
    clusterIPs: [{VIP}]
    ipFamilies: [IPv4]
    ipFamilyPolicy: SingleStack
    internalTrafficPolicy: Cluster
    sessionAffinity: None
    type: ClusterIP
    ports: [{{name: tcp, port: 80, protocol: TCP, targetPort: 8080}}]
  status: {{loadBalancer: {{}}}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  addressType: IPv4
  metadata: {{name: echo-empty, namespace: backend, generateName: echo-, labels: {{kubernetes.io/service-name: echo}}}}
  endpoints: null
  ports: null
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  addressType: IPv4
  metadata: {{name: echo-main, namespace: backend, labels: {{kubernetes.io/service-name: echo}}}}
  ports: [{{name: tcp, protocol: TCP, port: 8080}}]
  endpoints: [{{addresses: [{api}], conditions: {{ready: true}}}}]
"#
    );
    // One bad item: nothing of the List is applied.
    let out = run_weir_with_file(&["apply"], &lab, &list.replace("sessionAffinity: None", "sessionAffinity: Sticky"));
    assert!(!out.status.success(), "a bad item was accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("items[0]") && stderr.contains("spec.sessionAffinity"), "{stderr}");
    assert!(service_json(&lab).is_empty(), "a refused List changed something");

    let out = run_weir_with_file(&["apply"], &lab, &list);
    assert!(out.status.success(), "kubectl's List: {}", String::from_utf8_lossy(&out.stderr));
    let fe = service_json(&lab).into_iter().find(|f| f["port"] == 80).expect("the List's service");
    assert_eq!(fe["active"], 1, "{fe}");

    // An empty file is an error, for apply and delete alike.
    for verb in ["apply", "delete"] {
        let out = run_weir_with_file(&[verb], &lab, "");
        assert!(!out.status.success(), "{verb} of an empty file succeeded");
        assert!(String::from_utf8_lossy(&out.stderr).contains("no objects"), "{verb}");
    }

    // Delete reads kind, namespace and name only.
    let bare = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: echo-main, namespace: backend}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: backend}\n";
    let out = run_weir_with_file(&["delete"], &lab, bare);
    assert!(out.status.success(), "delete by name: {}", String::from_utf8_lossy(&out.stderr));
    assert!(service_json(&lab).is_empty(), "the service is gone");

    // Deleting what is not there fails and says what, unless told to ignore it.
    let out = run_weir_with_file(&["delete"], &lab, bare);
    assert!(!out.status.success(), "deleting an absent object succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(r#"Error from server (NotFound): services "echo" not found"#), "{stderr}");
    assert!(stderr.contains(r#"endpointslices.discovery.k8s.io "echo-main" not found"#), "{stderr}");
    let out = run_weir_with_file(&["delete", "--ignore-not-found"], &lab, bare);
    assert!(out.status.success(), "--ignore-not-found: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn load_balancer_source_ranges_admit_the_external_host_inside_them_and_drop_the_one_outside() {
    if !privileged("loadBalancerSourceRanges") {
        return;
    }
    let name = unique_name("lbsrc");
    let spec = two_node_spec(&name).replace(
        "    - name: internet           # a client outside the cluster, on the fabric",
        "    - name: internet           # a client outside the cluster, on the fabric\n    - name: outsider",
    );
    let lab = TestLab::up(&name, &spec, true);
    let plan = lab.plan();
    let _backends = start_backends(&plan);
    let external = |n: &str| plan.externals.iter().find(|e| e.name == n).expect("external host").clone();
    let (inside, outside) = (external("internet"), external("outsider"));
    let extra = format!("  type: LoadBalancer\n  loadBalancerSourceRanges: [\"{}/32\"]\n", inside.address);
    let yaml = with_node_ports(&echo_service(&plan, &extra, &[])).replacen(
        "---\napiVersion: discovery.k8s.io/v1",
        "status:\n  loadBalancer:\n    ingress: [{ip: 198.51.100.10}]\n---\napiVersion: discovery.k8s.io/v1",
        1,
    );
    let out = apply(&lab, &yaml);
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    let node_a = plan.node("node-a").expect("node-a").address.to_string();
    for host in [&inside, &outside] {
        weir_host::iproute::ip(Some(&host.netns), &["route", "add", "198.51.100.10/32", "via", &node_a])
            .expect("route");
    }
    let lb: std::net::SocketAddr = ([198, 51, 100, 10], 80).into();
    for _ in 0..5 {
        let backend = tcp_ask(&inside.netns, lb).expect("the host inside the range is served");
        assert!(backend.contains(":808"), "{backend}");
    }
    for _ in 0..3 {
        assert!(tcp_ask(&outside.netns, lb).is_err(), "the host outside the range reached a backend");
    }
    // Shown, and the kernel counted the drops under their reason.
    let get = weir_ok(&["service", "get", "backend/echo", "--lab", &lab.name, "--node", "node-a"]);
    assert!(get.contains(&format!("loadBalancerSourceRanges: {}/32", inside.address)), "{get}");
    let body = scrape_metrics(plan.node("node-a").expect("node-a"));
    let dropped = body
        .lines()
        .filter(|l| l.contains("lb_source_range") || l.contains("LB_SOURCE_RANGE"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert!(dropped >= 1.0, "no source-range drop in the metrics:\n{body}");
}
