//! The process behind each end of a flow, in a lab on the pod path with
//! real processes: a Python HTTP server in backend/api (node-b) and Python
//! clients in frontend/web (node-a, across nodes) and backend/db (node-b,
//! the same node). Each flow names the pid and program of the pod's socket
//! owner at every end its node can see, with the exec id `weir events`
//! gives the same process.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A program run in a pod with `weir lab exec`, which first prints its pid.
struct PodProcess {
    pid: u32,
    _child: KillOnDrop,
}

fn start_in_pod(lab: &DocsLab, pod: &str, script: &str) -> PodProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["lab", "exec", "--lab", &lab.name, pod, "--", "python3", "-u", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("weir lab exec");
    let stdout = child.stdout.take().expect("stdout");
    let child = KillOnDrop(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("the program's pid");
    let pid = line.trim().parse().unwrap_or_else(|_| panic!("{pod}: not a pid: {line:?}"));
    PodProcess { pid, _child: child }
}

/// A server on port 8080 that answers every GET.
const SERVER: &str = r#"
import os, http.server
print(os.getpid(), flush=True)
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"hello\n")
http.server.HTTPServer(("0.0.0.0", 8080), Hello).serve_forever()
"#;

/// A client that sends one request to SERVER at `ip` (retrying until it
/// listens), prints "answered", and stays alive.
fn client(ip: std::net::Ipv4Addr) -> String {
    format!(
        r#"
import os, socket, sys, time
print(os.getpid(), flush=True)
deadline = time.time() + 60
while True:
    try:
        s = socket.create_connection(("{ip}", 8080), timeout=5)
        s.sendall(b"GET /hello HTTP/1.0\r\n\r\n")
        if b"hello" in s.recv(4096):
            break
    except OSError:
        if time.time() > deadline:
            sys.exit(1)
        time.sleep(0.2)
time.sleep(600)
"#
    )
}

/// Weir's JSON flows of the lab, oldest first.
fn flows(lab: &DocsLab) -> Vec<Value> {
    weir_ok(&["observe", "--lab", &lab.name, "--last", "5000", "-o", "weir-json", "--port", "8080"])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect()
}

fn pid(end: &Value) -> u64 {
    end["process"]["pid"].as_u64().unwrap_or(0)
}

/// Waits for a flow `test` accepts and returns it.
fn wait_for(lab: &DocsLab, what: &str, test: impl Fn(&Value) -> bool) -> Value {
    let mut found = None;
    let seen = eventually(Duration::from_secs(60), || {
        found = flows(lab).into_iter().find(|f| test(f));
        found.is_some()
    });
    assert!(seen, "no flow {what}; seen: {:#?}", flows(lab));
    found.expect("found")
}

#[test]
fn flows_name_the_process_behind_each_pods_socket() {
    let Some(lab) = DocsLab::pod_path("hproc") else { return };
    let plan = lab.plan();
    let api = plan.pod("backend/api").expect("api").clone();
    let server = start_in_pod(&lab, "backend/api", SERVER);
    let web = start_in_pod(&lab, "frontend/web", &client(api.ip));
    let db = start_in_pod(&lab, "backend/db", &client(api.ip));

    // Across nodes: node-a sees web's client, node-b api's server.
    let out = wait_for(&lab, "from web's client", |f| {
        f["source"]["pod"] == "web" && f["destinationPort"] == 8080 && pid(&f["source"]) == u64::from(web.pid)
    });
    assert_eq!(out["node"], "node-a", "{out}");
    assert!(out["source"]["process"]["binary"].as_str().is_some_and(|b| b.contains("python3")), "{out}");
    wait_for(&lab, "into api's server from web", |f| {
        f["source"]["pod"] == "web"
            && f["destination"]["pod"] == "api"
            && pid(&f["destination"]) == u64::from(server.pid)
    });
    // On one node, one flow names both ends.
    let both = wait_for(&lab, "from db's client to api's server", |f| {
        f["source"]["pod"] == "db"
            && pid(&f["source"]) == u64::from(db.pid)
            && pid(&f["destination"]) == u64::from(server.pid)
    });
    assert_eq!(both["node"], "node-b", "{both}");
    // No flow names another process for these sockets.
    for f in flows(&lab) {
        if f["source"]["pod"] == "web" && f["destinationPort"] == 8080 && pid(&f["source"]) != 0 {
            assert_eq!(pid(&f["source"]), u64::from(web.pid), "{f}");
        }
        if f["destination"]["pod"] == "api" && f["destinationPort"] == 8080 && pid(&f["destination"]) != 0 {
            assert_eq!(pid(&f["destination"]), u64::from(server.pid), "{f}");
        }
    }
    // The exec id is runtime security's for the process (node:ktime:pid).
    let exec_id = out["source"]["process"]["execId"].as_str().unwrap_or_default();
    assert!(exec_id.starts_with("node-a:") && exec_id.ends_with(&format!(":{}", web.pid)), "{out}");

    // Once api is a Service's backend, flows to it name the Service (as
    // a connection to the Service's address looks once translated), and
    // Hubble's service filters select them.
    let service = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: hello, namespace: backend}}\nspec:\n  clusterIP: 10.96.0.77\n  ports: [{{port: 80, targetPort: 8080}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: hello-1\n  namespace: backend\n  labels: {{kubernetes.io/service-name: hello}}\naddressType: IPv4\nports: [{{port: 8080, protocol: TCP}}]\nendpoints:\n  - {{addresses: [{}], nodeName: node-b, conditions: {{ready: true}}}}\n",
        api.ip
    );
    weir_ok(&["apply", "--lab", &lab.name, "-f", &lab.write("hello.yaml", &service)]);
    let later = {
        let mut later = None;
        let named = eventually(Duration::from_secs(60), || {
            let client = start_in_pod(&lab, "frontend/web", &client(api.ip));
            let client_pid = u64::from(client.pid);
            let seen = eventually(Duration::from_secs(20), || {
                flows(&lab)
                    .iter()
                    .any(|f| pid(&f["source"]) == client_pid && f["destination"]["service"]["name"] == "hello")
            });
            if seen {
                later = Some(client);
            }
            seen
        });
        assert!(named, "no flow names the Service hello: {:#?}", flows(&lab));
        later.expect("the client")
    };
    let to_hello =
        weir_ok(&["observe", "--lab", &lab.name, "--last", "5000", "-o", "weir-json", "--to-service", "backend/hel"]);
    let selected: Vec<Value> = to_hello.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert!(selected.iter().any(|f| pid(&f["source"]) == u64::from(later.pid)), "{to_hello}");
    assert!(selected.iter().all(|f| f["destination"]["service"]["name"] == "hello"), "{to_hello}");
    let none =
        weir_ok(&["observe", "--lab", &lab.name, "--last", "5000", "-o", "weir-json", "--to-service", "default/hello"]);
    assert!(none.trim().is_empty(), "another namespace's Service selects nothing: {none}");
}
