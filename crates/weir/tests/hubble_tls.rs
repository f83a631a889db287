//! HTTPS flows without a proxy, in a lab on the pod path: a Python HTTPS
//! server (OpenSSL, a certificate made at test time) in backend/api and
//! curl (OpenSSL) in backend/db on the same node: the request and the
//! response are each one L7 flow with https URLs, the writer as the source
//! process and the reader as the destination process (pid, binary, pod),
//! and the response's latency. curl from frontend/web on the other node:
//! reported once, by the client's node (the server's node leaves it).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use common::*;
use serde_json::Value;

const PORT: u16 = 8443;

const SERVER: &str = r#"
import http.server, os, ssl, sys
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
os.chdir(sys.argv[1])
server = http.server.HTTPServer(("0.0.0.0", 8443), Quiet)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain("cert.pem", "key.pem")
server.socket = context.wrap_socket(server.socket, server_side=True)
print(f"ready pid={os.getpid()}", flush=True)
server.serve_forever()
"#;

fn observed(lab: &DocsLab, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["observe", "--lab", lab.name.as_str(), "--last", "2000", "-o", "jsonpb"];
    args.extend_from_slice(filters);
    weir_ok(&args)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Value>(l).expect("json"))
        .filter_map(|r| r.get("flow").cloned())
        .collect()
}

/// Every flow for `filters` that `test` accepts, once there is one.
fn wait_for(lab: &DocsLab, filters: &[&str], test: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut found = Vec::new();
    let seen = eventually(Duration::from_secs(30), || {
        found = observed(lab, filters).into_iter().filter(|f| test(f)).collect();
        !found.is_empty()
    });
    assert!(seen, "no flow for {filters:?}; seen: {:#?}", observed(lab, filters));
    found
}

fn l7_type(f: &Value) -> &str {
    f["l7"]["type"].as_str().unwrap_or("")
}

fn process<'a>(f: &'a Value, side: &str) -> &'a Value {
    &f["weir"][format!("{side}_process")]
}

/// Runs curl in `pod` through a shell that execs it: returns curl's pid.
fn curl(lab: &DocsLab, pod: &str, url: &str) -> u64 {
    let script = format!("echo pid=$$; exec curl -ksS -o /dev/null -w '%{{http_code}}' {url}");
    let out = lab.exec(pod, &["sh", "-c", &script]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    let mut lines = stdout.lines();
    let pid = lines.next().and_then(|l| l.strip_prefix("pid=")).and_then(|p| p.parse().ok()).expect("pid");
    assert_eq!(lines.next(), Some("200"), "{stdout}");
    pid
}

#[test]
fn https_requests_and_responses_are_l7_flows_with_their_processes() {
    let Some(lab) = DocsLab::pod_path("htls") else { return };
    let plan = lab.plan();
    let api = plan.pod("backend/api").expect("api").clone();
    let site = lab.dir.join("site");
    std::fs::create_dir_all(&site).expect("site");
    std::fs::write(site.join("hello.txt"), "hello over TLS\n").expect("page");
    std::fs::write(site.join("second.txt"), "again\n").expect("page");
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=api"])
        .args(["-keyout", "key.pem", "-out", "cert.pem"])
        .current_dir(&site)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl req");
    assert!(made.success(), "a certificate");
    let mut server = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["lab", "exec", "--lab", &lab.name, "backend/api", "--", "/usr/bin/python3", "-c", SERVER])
        .arg(&site)
        .stdout(Stdio::piped())
        .spawn()
        .expect("server");
    let stdout = server.stdout.take().expect("stdout");
    let _server = KillOnDrop(server);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("the server starts");
    let server_pid: u64 = line.trim().strip_prefix("ready pid=").and_then(|p| p.parse().ok()).expect("ready pid=");

    // Both ends on node-b.
    let hello = format!("https://{}:{PORT}/hello.txt", api.ip);
    let before = SystemTime::now();
    let client_pid = curl(&lab, "backend/db", &hello);
    let path = ["--http-path", "^/hello\\.txt$"];
    let from_db = |f: &Value| f["source"]["pod_name"] == "db" || f["destination"]["pod_name"] == "db";
    let request = wait_for(&lab, &path, |f| l7_type(f) == "REQUEST" && from_db(f)).remove(0);
    assert_eq!(request["Type"], "L7", "{request}");
    assert_eq!(request["event_type"]["type"], 129, "{request}");
    assert_eq!(request["l7"]["http"]["method"], "GET", "{request}");
    assert_eq!(request["l7"]["http"]["url"], hello, "{request}");
    assert_eq!(request["l7"]["http"]["protocol"], "HTTP/1.1", "{request}");
    assert_eq!((&request["source"]["pod_name"], &request["destination"]["pod_name"]), (&"db".into(), &"api".into()));
    let source = process(&request, "source");
    assert!(source["binary"].as_str().unwrap_or("").ends_with("curl"), "{request}");
    assert_eq!(source["pid"].as_u64(), Some(client_pid), "{request}");
    assert_eq!((&source["namespace"], &source["pod_name"]), (&"backend".into(), &"db".into()), "{request}");
    assert!(!source["exec_id"].as_str().unwrap_or("").is_empty(), "{request}");
    let destination = process(&request, "destination");
    assert!(destination["binary"].as_str().unwrap_or("").contains("python3"), "{request}");
    assert_eq!(destination["pid"].as_u64(), Some(server_pid), "{request}");

    let status = ["--http-status", "200"];
    let response = wait_for(&lab, &status, |f| l7_type(f) == "RESPONSE" && from_db(f)).remove(0);
    assert_eq!(response["l7"]["http"]["code"], 200, "{response}");
    assert_eq!(response["l7"]["http"]["method"], "GET", "the request it answers: {response}");
    assert_eq!(response["l7"]["http"]["url"], hello, "{response}");
    assert_eq!(response["is_reply"], true, "{response}");
    let latency: u64 = response["l7"]["latency_ns"].as_str().and_then(|t| t.parse().ok()).unwrap_or(0);
    assert!(latency > 0, "{response}");
    let source = process(&response, "source");
    assert!(source["binary"].as_str().unwrap_or("").contains("python3"), "{response}");
    assert_eq!(source["pid"].as_u64(), Some(server_pid), "{response}");
    assert_eq!(source["pod_name"], "api", "{response}");
    assert_eq!(process(&response, "destination")["pid"].as_u64(), Some(client_pid), "{response}");
    // Both are stamped on the pod path's flows' clock and read as wall time
    // between the wall clock before curl ran and after both were seen.
    let after = SystemTime::now();
    for flow in [&request, &response] {
        let at = flow["time"].as_str().and_then(|t| t.parse::<prost_types::Timestamp>().ok()).expect("a time");
        let at = SystemTime::try_from(at).expect("a wall time");
        assert!(before <= at && at <= after, "{before:?} <= {at:?} <= {after:?}: {flow}");
    }

    // From the other node: reported by node-a (curl's), left by node-b.
    let second = format!("https://{}:{PORT}/second.txt", api.ip);
    let remote_pid = curl(&lab, "frontend/web", &second);
    let second_path = ["--http-path", "^/second\\.txt$"];
    let remote = wait_for(&lab, &second_path, |f| l7_type(f) == "RESPONSE");
    assert_eq!(process(&remote[0], "destination")["pid"].as_u64(), Some(remote_pid), "{remote:?}");
    assert_eq!(remote[0]["node_name"].as_str().map(|n| n.ends_with("node-a")), Some(true), "{remote:?}");
    let node_b = plan.node("node-b").expect("node-b").clone();
    let left = eventually(Duration::from_secs(30), || {
        metric_sum(&scrape_metrics(&node_b), "weir_tls_messages_total{node=\"node-b\",outcome=\"elsewhere\"}") >= 2
    });
    assert!(left, "node-b leaves web's exchange to node-a: {}", scrape_metrics(&node_b));

    // Each message once: node-b has long since paired or given up on every
    // sighting of the first exchange (it handed over the second's).
    let all = observed(&lab, &["--http-path", "\\.txt$"]);
    let count =
        |url: &str, kind: &str| all.iter().filter(|f| l7_type(f) == kind && f["l7"]["http"]["url"] == url).count();
    assert_eq!((count(&hello, "REQUEST"), count(&hello, "RESPONSE")), (1, 1), "{all:#?}");
    assert_eq!((count(&second, "REQUEST"), count(&second, "RESPONSE")), (1, 1), "{all:#?}");
    let metrics = scrape_metrics(&node_b);
    assert!(metric_sum(&metrics, "weir_tls_messages_total{node=\"node-b\",outcome=\"reported\"}") >= 4, "{metrics}");
    assert_eq!(metric_sum(&metrics, "weir_tls_messages_total{node=\"node-b\",outcome=\"lost\"}"), 0, "{metrics}");
}

#[test]
fn no_tls_flows_leaves_openssl_unprobed_and_the_pod_path_l7_flows_on() {
    if !privileged("htlsoff") {
        return;
    }
    let name = unique_name("htlsoff");
    let spec = two_node_spec(&name).replace("routing: kernel", "routing: weir");
    let lab = TestLab::up_with(&name, &spec, true, &["--agent-arg=--no-tls-flows"]);
    let plan = lab.plan();
    for node in ["node-a", "node-b"] {
        let metrics = scrape_metrics(plan.node(node).expect("node"));
        assert!(metrics.contains("weir_l7_messages_total{"), "the pod path's L7 flows stay on: {metrics}");
        assert!(!metrics.contains("weir_tls_messages_total"), "no probes on {node}: {metrics}");
    }
}
