//! DNSChaos in a lab whose pods take the pod path, with real packets: a DNS
//! server in backend/db answers A records; `dig` from the selected pod
//! sees NXDOMAIN (or SERVFAIL) for the selected names only, other names get
//! the server's answer, another pod is untouched, and after stop every name
//! answers again; a share of the queries is answered, and delayed answers
//! take at least the latency.

mod chaos_lab;
mod common;
mod dns_server;

use std::net::Ipv4Addr;

use chaos_lab::*;
use common::*;
use dns_server::*;

/// `dig` in `pod` for `name` (type A) at `server`: its status and the
/// addresses answered.
fn dig(lab: &ChaosLab, pod: &str, server: Ipv4Addr, name: &str) -> (String, Vec<String>) {
    let at = format!("@{server}");
    let out = lab.exec(pod, &["dig", &at, name, "A", "+tries=1", "+time=5", "+noall", "+comments", "+answer"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "dig {name} from {pod}: {out:?}");
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no status in dig's output: {text}"))
        .to_string();
    let addresses = text
        .lines()
        .filter(|l| !l.starts_with(';') && l.contains("\tA\t"))
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect();
    (status, addresses)
}

/// `count` queries for `name` one at a time from `pod` (Python's stdlib):
/// the responses by status, and the fastest response in milliseconds.
fn ask(
    lab: &ChaosLab,
    pod: &str,
    server: Ipv4Addr,
    name: &str,
    count: u32,
) -> (std::collections::BTreeMap<String, u64>, f64) {
    const SCRIPT: &str = "import socket, struct, sys, json, time, random
server, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
question = b''.join(bytes([len(l)]) + l.encode() for l in name.split('.')) + b'\\0' + struct.pack('>HH', 1, 1)
names = {0: 'NOERROR', 2: 'SERVFAIL', 3: 'NXDOMAIN'}
counts, fastest = {}, None
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
for _ in range(n):
    qid = random.randrange(65536)
    start = time.monotonic()
    s.sendto(struct.pack('>HHHHHH', qid, 0x0100, 1, 0, 0, 0) + question, (server, 53))
    k = 'timeout'
    try:
        while True:
            data = s.recv(1500)
            if struct.unpack('>H', data[:2])[0] == qid:
                k = names.get(data[3] & 15, str(data[3] & 15))
                took = (time.monotonic() - start) * 1000
                fastest = took if fastest is None else min(fastest, took)
                break
    except socket.timeout:
        pass
    counts[k] = counts.get(k, 0) + 1
print(json.dumps({'counts': counts, 'fastest': fastest}))
";
    let (server, n) = (server.to_string(), count.to_string());
    let out = lab.exec(pod, &["python3", "-c", SCRIPT, &server, name, &n]);
    assert!(out.status.success(), "{out:?}");
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let counts = serde_json::from_value(result["counts"].clone()).expect("counts");
    (counts, result["fastest"].as_f64().unwrap_or(f64::INFINITY))
}

const NXDOMAIN: &str = "apiVersion: chaos.weir.dev/v1alpha1
kind: DNSChaos
metadata: {name: api-gone, namespace: frontend}
spec:
  action: nxdomain
  patterns: [api.shop.example]
  mode: all
  selector: {labelSelectors: {app: web}}
  duration: 10m
";

const CHAOS_MESH_ERROR: &str = "apiVersion: chaos-mesh.org/v1alpha1
kind: DNSChaos
metadata:
  name: api-servfail
  namespace: frontend
spec:
  action: error
  patterns:
    - \"api.*\"
  mode: all
  selector:
    labelSelectors:
      app: web
  duration: 10m
";

#[test]
fn dns_chaos_answers_nxdomain_or_servfail_for_the_selected_names_only() {
    let Some(lab) = lab("chdns") else { return };
    let plan = lab.plan();
    let db = plan.pod("backend/db").expect("pod").clone();
    let _server = dns_server(&db.netns, db.ip);
    let real = (String::from("NOERROR"), vec![ANSWER.to_string()]);
    assert_eq!(dig(&lab, "frontend/web", db.ip, "api.shop.example"), real, "the server answers");

    // Refused by path, nothing applied.
    let bad = write(&lab, "bad", &CHAOS_MESH_ERROR.replace("action: error", "action: random"));
    let out = weir(&["apply", "--lab", &lab.name, "-f", &bad]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("spec.action"), "{out:?}");
    let wildcard_inside = write(&lab, "bad-pattern", &CHAOS_MESH_ERROR.replace("\"api.*\"", "\"*.shop.example\""));
    let out = weir(&["apply", "--lab", &lab.name, "-f", &wildcard_inside]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("spec.patterns[0]"), "{out:?}");
    assert_eq!(running(&lab).0, Vec::<String>::new(), "nothing applied");
    assert_eq!(dig(&lab, "frontend/web", db.ip, "api.shop.example"), real);

    let file = write(&lab, "nxdomain", NXDOMAIN);
    weir_ok(&["apply", "--lab", &lab.name, "-f", &file]);
    assert_eq!(dig(&lab, "frontend/web", db.ip, "api.shop.example"), ("NXDOMAIN".into(), vec![]), "the selected name");
    assert_eq!(dig(&lab, "frontend/web", db.ip, "API.shop.example."), ("NXDOMAIN".into(), vec![]), "in any case");
    assert_eq!(dig(&lab, "frontend/web", db.ip, "www.shop.example"), real, "another name");
    assert_eq!(dig(&lab, "frontend/web", db.ip, "api.shop.example.org"), real, "an exact name is exact");
    assert_eq!(dig(&lab, "backend/api", db.ip, "api.shop.example"), real, "another pod");
    let listed = weir_ok(&["chaos", "list", "--lab", &lab.name]);
    assert!(listed.contains("dns-nxdomain 100% api.shop.example"), "{listed}");
    assert_eq!(affected(&lab, "frontend/api-gone"), 2, "each answered query counted");
    // The flows show each answered query, naming its experiment.
    let recent = weir_ok(&["observe", "--lab", &lab.name, "--last", "500", "--verdict", "dropped", "-o", "weir-json"]);
    let answered: Vec<serde_json::Value> = recent
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .filter(|f| f["dropReason"] == "chaos_dns_answered")
        .collect();
    assert_eq!(answered.len(), 2, "{recent}");
    assert!(answered.iter().all(|f| f["rule"] == "frontend/api-gone" && f["match"] == "chaos"), "{answered:?}");

    // A pod's queries are under one DNSChaos at a time.
    let error = write(&lab, "error", CHAOS_MESH_ERROR);
    let out = weir(&["apply", "--lab", &lab.name, "-f", &error]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("is already under experiment"),
        "{out:?}"
    );
    assert_eq!(running(&lab).0, vec!["frontend/api-gone".to_string()], "nothing more applied");

    // Chaos Mesh's own document: error answers SERVFAIL, "api.*" a prefix.
    weir_ok(&["delete", "--lab", &lab.name, "-f", &file]);
    weir_ok(&["apply", "--lab", &lab.name, "-f", &error]);
    assert_eq!(dig(&lab, "frontend/web", db.ip, "api.shop.example"), ("SERVFAIL".into(), vec![]));
    assert_eq!(dig(&lab, "frontend/web", db.ip, "api.other.example"), ("SERVFAIL".into(), vec![]));
    assert_eq!(dig(&lab, "frontend/web", db.ip, "www.shop.example"), real);
    assert_eq!(dig(&lab, "backend/api", db.ip, "api.shop.example"), real, "another pod");

    weir_ok(&["chaos", "stop", "--lab", &lab.name, "frontend/api-servfail"]);
    assert_eq!(running(&lab).0, Vec::<String>::new());
    for name in ["api.shop.example", "api.other.example", "www.shop.example"] {
        assert_eq!(dig(&lab, "frontend/web", db.ip, name), real, "{name} after stop");
    }
}

#[test]
fn dns_chaos_answers_its_share_and_delays_by_the_latency() {
    let Some(lab) = lab("chdn2") else { return };
    let plan = lab.plan();
    let db = plan.pod("backend/db").expect("pod").clone();
    let _server = dns_server(&db.netns, db.ip);

    let half = NXDOMAIN.replace("  mode: all", "  percent: \"50\"\n  mode: all");
    let file = write(&lab, "half", &half);
    weir_ok(&["apply", "--lab", &lab.name, "-f", &file]);
    const N: u32 = 200;
    let (counts, _) = ask(&lab, "frontend/web", db.ip, "api.shop.example", N);
    eprintln!("nxdomain 50%: {counts:?}");
    let nx = counts.get("NXDOMAIN").copied().unwrap_or(0);
    assert_eq!(nx + counts.get("NOERROR").copied().unwrap_or(0), u64::from(N), "only both answers: {counts:?}");
    assert!((60..=140).contains(&nx), "about half of {N} answered NXDOMAIN: {nx}");
    assert_eq!(affected(&lab, "frontend/api-gone"), nx, "each answered query counted");
    weir_ok(&["delete", "--lab", &lab.name, "-f", &file]);

    let delay = "apiVersion: chaos.weir.dev/v1alpha1
kind: DNSChaos
metadata: {name: api-slow, namespace: frontend}
spec:
  action: delay
  delay: {latency: 400ms}
  patterns: [api.shop.example]
  mode: all
  selector: {labelSelectors: {app: web}}
";
    weir_ok(&["apply", "--lab", &lab.name, "-f", &write(&lab, "delay", delay)]);
    let (counts, fastest) = ask(&lab, "frontend/web", db.ip, "api.shop.example", 5);
    assert_eq!(counts.get("NOERROR"), Some(&5), "the server's own answers, late: {counts:?}");
    assert!(fastest >= 400.0, "each answer waited at least the latency: fastest {fastest} ms");
    let (counts, _) = ask(&lab, "frontend/web", db.ip, "www.shop.example", 5);
    assert_eq!(counts.get("NOERROR"), Some(&5), "{counts:?}");
    assert_eq!(affected(&lab, "frontend/api-slow"), 5, "only the selected name's queries were held");
    weir_ok(&["chaos", "stop", "--lab", &lab.name, "--all"]);
}
