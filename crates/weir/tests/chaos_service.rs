//! Weir's ServiceChaos in a lab with the pod path and the socket load
//! balancer: a share of a Service's new connections refused with the
//! chosen errno, or sent to the black hole (the connect times out, the SYN
//! is dropped with its reason), other Services and clients untouched, and
//! everything connects again once it stops.

mod chaos_lab;
mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use chaos_lab::*;
use common::*;

const API_VIP: &str = "10.96.0.40";
const OTHER_VIP: &str = "10.96.0.41";
const BACKEND_PORT: u16 = 8080;

/// `api` (backends api and db) and `other` (db alone), both on port 80.
fn services(plan: &weir_lab::LabPlan) -> String {
    let ip = |n: &str| plan.pod(n).expect("pod").ip;
    let (api, db) = (ip("backend/api"), ip("backend/db"));
    let service = |name: &str, vip: &str, backends: &[std::net::Ipv4Addr]| {
        let endpoints: String = backends
            .iter()
            .map(|b| format!("  - {{addresses: [{b}], nodeName: node-b, conditions: {{ready: true}}}}\n"))
            .collect();
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: backend}}
spec:
  clusterIP: {vip}
  ports:
  - {{name: http, port: 80, targetPort: {BACKEND_PORT}}}
  - {{name: dns, port: 53, protocol: UDP, targetPort: 5353}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: backend
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports:
  - {{name: http, protocol: TCP, port: {BACKEND_PORT}}}
  - {{name: dns, protocol: UDP, port: 5353}}
endpoints:
{endpoints}"
        )
    };
    format!("{}---\n{}", service("api", API_VIP, &[api, db]), service("other", OTHER_VIP, &[db]))
}

/// A TCP listener on `ip`:BACKEND_PORT in `netns` that accepts (and closes) whatever comes.
fn backend(netns: &str, ip: std::net::Ipv4Addr) {
    let listener = weir_host::netns::run_in(netns, || std::net::TcpListener::bind((ip, BACKEND_PORT)))
        .expect("netns")
        .expect("listen");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream)
        }
    });
}

/// Makes `count` TCP connects from inside pod `pod` (its cgroup, where the
/// socket load balancer judges them), a hundred at a time without blocking,
/// and counts the outcomes by errno name; a connect not done within 3 s
/// counts as "timeout" (a loaded machine connects a live backend well
/// within that).
fn connects_from(lab: &ChaosLab, pod: &str, to: SocketAddr, count: u32) -> BTreeMap<String, u64> {
    const SCRIPT: &str = "import socket, errno, sys, json, select, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
counts = {}
def tally(k):
    counts[k] = counts.get(k, 0) + 1
while n > 0:
    batch, pending = min(n, 100), {}
    n -= batch
    for _ in range(batch):
        s = socket.socket(socket.AF_INET)
        s.setblocking(False)
        rc = s.connect_ex((host, port))
        if rc == errno.EINPROGRESS:
            pending[s.fileno()] = s
        else:
            tally('ok' if rc == 0 else errno.errorcode.get(rc, str(rc)))
            s.close()
    deadline = time.monotonic() + 3
    while pending and time.monotonic() < deadline:
        _, ready, _ = select.select([], list(pending.values()), [], max(0, deadline - time.monotonic()))
        for s in ready:
            rc = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            tally('ok' if rc == 0 else errno.errorcode.get(rc, str(rc)))
            del pending[s.fileno()]
            s.close()
    for s in pending.values():
        tally('timeout')
        s.close()
print(json.dumps(counts))
";
    let (host, port, n) = (to.ip().to_string(), to.port().to_string(), count.to_string());
    let out = lab.exec(pod, &["python3", "-c", SCRIPT, &host, &port, &n]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("counts")
}

const REFUSE: &str = "apiVersion: chaos.weir.dev/v1alpha1
kind: ServiceChaos
metadata: {name: api-down, namespace: frontend}
spec:
  action: refuse
  service: {name: api, namespace: backend, port: 80}
  refuse: {errno: ECONNREFUSED, percent: \"30\"}
  mode: all
  selector: {labelSelectors: {app: web}}
  duration: 10m
";

fn share(counts: &BTreeMap<String, u64>, key: &str, n: u32) -> f64 {
    100.0 * counts.get(key).copied().unwrap_or(0) as f64 / f64::from(n)
}

#[test]
fn service_chaos_refuses_or_black_holes_its_share_of_a_services_connections() {
    let Some(lab) = lab("chsvc") else { return };
    let plan = lab.plan();
    let pod = |n: &str| plan.pod(n).expect("pod").clone();
    let (api, db) = (pod("backend/api"), pod("backend/db"));
    backend(&api.netns, api.ip);
    backend(&db.netns, db.ip);
    weir_ok(&["apply", "--lab", &lab.name, "-f", &write(&lab, "services", &services(&plan))]);
    let to_api: SocketAddr = format!("{API_VIP}:80").parse().expect("addr");
    let to_other: SocketAddr = format!("{OTHER_VIP}:80").parse().expect("addr");
    assert!(
        eventually(std::time::Duration::from_secs(20), || connects_from(&lab, "frontend/web", to_api, 20).get("ok")
            == Some(&20)),
        "the service does not answer before any chaos"
    );

    // Refused by path, or by the node for a Service it does not know: nothing applied.
    let bad = write(&lab, "bad", &REFUSE.replace("ECONNREFUSED", "EWHATEVER"));
    let out = weir(&["apply", "--lab", &lab.name, "-f", &bad]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("spec.refuse.errno"), "{out:?}");
    let unknown = write(&lab, "unknown", &REFUSE.replace("name: api,", "name: nope,"));
    let out = weir(&["apply", "--lab", &lab.name, "-f", &unknown]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("backend/nope"), "{out:?}");
    let no_port = write(&lab, "no-port", &REFUSE.replace("port: 80}", "port: 81}"));
    let out = weir(&["apply", "--lab", &lab.name, "-f", &no_port]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no such port"), "{out:?}");
    assert_eq!(running(&lab).0, Vec::<String>::new(), "a refusal applied something");

    // Refuse: 30% of web's connects to the service fail with ECONNREFUSED.
    let refuse = write(&lab, "refuse", REFUSE);
    weir_ok(&["apply", "--lab", &lab.name, "-f", &refuse]);
    let listed = weir_ok(&["chaos", "list", "--lab", &lab.name]);
    assert!(listed.contains("refuse errno 111 30%") && listed.contains("service backend/api:80"), "{listed}");
    const N: u32 = 400;
    let counts = connects_from(&lab, "frontend/web", to_api, N);
    eprintln!("refuse 30%: {counts:?}");
    let refused = counts.get("ECONNREFUSED").copied().unwrap_or(0);
    assert_eq!(refused + counts.get("ok").copied().unwrap_or(0), u64::from(N), "refusals and successes: {counts:?}");
    assert!((share(&counts, "ECONNREFUSED", N) - 30.0).abs() <= 8.0, "30% refused: {counts:?}");
    assert_eq!(affected(&lab, "frontend/api-down"), refused, "each refusal counted");
    // Another Service, and a client not selected, connect.
    assert_eq!(connects_from(&lab, "frontend/web", to_other, 50).get("ok"), Some(&50), "web -> other");
    assert_eq!(connects_from(&lab, "backend/db", to_api, 50).get("ok"), Some(&50), "db -> api");

    // Blackhole, every client: the hit connects time out, their SYNs dropped with the reason.
    let blackhole = REFUSE
        .replace("action: refuse", "action: blackhole")
        .replace("refuse: {errno: ECONNREFUSED, percent: \"30\"}", "blackhole: {percent: \"30\"}")
        .replace("  mode: all\n  selector: {labelSelectors: {app: web}}\n", "");
    weir_ok(&["apply", "--lab", &lab.name, "-f", &write(&lab, "blackhole", &blackhole)]);
    let counts = connects_from(&lab, "frontend/web", to_api, N);
    eprintln!("blackhole 30%: {counts:?}");
    let lost = counts.get("timeout").copied().unwrap_or(0);
    assert_eq!(lost + counts.get("ok").copied().unwrap_or(0), u64::from(N), "timeouts and successes: {counts:?}");
    assert!((share(&counts, "timeout", N) - 30.0).abs() <= 8.0, "30% black-holed: {counts:?}");
    assert_eq!(affected(&lab, "frontend/api-down"), lost, "each black-holed connect counted");
    let from_db = connects_from(&lab, "backend/db", to_api, 100);
    assert!(from_db.get("timeout").copied().unwrap_or(0) > 0, "every client is judged: {from_db:?}");
    assert_eq!(connects_from(&lab, "frontend/web", to_other, 50).get("ok"), Some(&50), "web -> other");
    let metrics = scrape_metrics(plan.node("node-a").expect("node-a"));
    assert!(
        metric_sum(&metrics, "weir_pod_drops_total{node=\"node-a\",reason=\"chaos_blackhole\"}") >= lost,
        "each black-holed SYN is a counted drop: {metrics}"
    );
    let recent = weir_ok(&["observe", "--lab", &lab.name, "--last", "500", "--verdict", "dropped", "-o", "weir-json"]);
    assert!(
        recent.lines().filter(|l| !l.trim().is_empty()).any(|l| {
            let flow: serde_json::Value = serde_json::from_str(l).expect("json");
            flow["dropReason"] == "chaos_blackhole" && flow["rule"] == "frontend/api-down"
        }),
        "no chaos_blackhole flow naming its experiment: {recent}"
    );

    // A restarted agent lists it and stops it: everything connects.
    for node in &plan.nodes {
        let pid = weir_lab::runtime::agent_pid(node).expect("agent running");
        weir_host::process::kill(pid, libc::SIGKILL);
        assert!(eventually(std::time::Duration::from_secs(5), || !weir_host::process::alive(pid)), "the agent died");
    }
    assert!(connects_from(&lab, "frontend/web", to_api, 100).contains_key("timeout"), "no agent: still black-holed");
    weir_ok(&["lab", "up", "-f", &lab.spec_path.to_string_lossy()]);
    assert_eq!(running(&lab).0, vec!["frontend/api-down".to_string()]);
    weir_ok(&["chaos", "stop", "--lab", &lab.name, "frontend/api-down"]);
    assert_eq!(running(&lab).0, Vec::<String>::new());
    assert_eq!(connects_from(&lab, "frontend/web", to_api, 200).get("ok"), Some(&200), "after stop");

    // Every port, every call: an unconnected UDP send is refused too, and another errno.
    let every_port =
        REFUSE.replace("port: 80}", "}").replace("errno: ECONNREFUSED, percent: \"30\"", "errno: ENETUNREACH");
    weir_ok(&["apply", "--lab", &lab.name, "-f", &write(&lab, "every-port", &every_port)]);
    assert_eq!(connects_from(&lab, "frontend/web", to_api, 20).get("ENETUNREACH"), Some(&20), "TCP");
    const SEND: &str = "import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b'x', (sys.argv[1], 53))
    print('sent')
except OSError as e:
    print(e.errno)
";
    let sent = lab.exec("frontend/web", &["python3", "-c", SEND, API_VIP]);
    assert_eq!(String::from_utf8_lossy(&sent.stdout).trim(), libc::ENETUNREACH.to_string(), "UDP: {sent:?}");
    weir_ok(&["chaos", "stop", "--lab", &lab.name, "frontend/api-down"]);
    let sent = lab.exec("frontend/web", &["python3", "-c", SEND, API_VIP]);
    assert_eq!(String::from_utf8_lossy(&sent.stdout).trim(), "sent", "UDP after stop: {sent:?}");

    // Its duration ends it in the kernel, with no agent call in between.
    let brief = every_port.replace("duration: 10m", "duration: 3s");
    weir_ok(&["apply", "--lab", &lab.name, "-f", &write(&lab, "brief", &brief)]);
    assert!(
        eventually(std::time::Duration::from_secs(30), || connects_from(&lab, "frontend/web", to_api, 20).get("ok")
            == Some(&20)),
        "still refused after its end"
    );
    let listed = weir_ok(&["chaos", "list", "--lab", &lab.name]);
    assert!(listed.contains("api-down") && listed.contains("ended"), "{listed}");
}
