//! The relay's service map in a browser: a two-node lab on the pod path,
//! `weir relay --ui-listen-address` in node-a, real traffic between pods —
//! a DNS query answered NXDOMAIN, HTTP requests to busybox httpd, and a
//! connection a NetworkPolicy denies — then Debian's headless Chromium
//! loads the page: its tables (the graph's nodes and edges in the DOM) show
//! the lab's pods, the edges the traffic made with their HTTP status, DNS
//! error and verdict, and a link to an edge opens its flows. Then a
//! ClusterIP Service with api as its backend: web's requests to its
//! address (translated by the socket load balancer) put the Service on the
//! map, web -> Service -> api. Screenshots are kept under the target dir's
//! `test-artifacts/hubble_ui/`.

mod common;
mod dns_server;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const UI: &str = "127.0.0.1:12000";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A directory removed when the test ends, however it ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether Chromium is here; under CI=true its absence fails the test.
fn chromium_present() -> bool {
    if Path::new(CHROMIUM).exists() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{CHROMIUM} is missing (Debian's chromium; scripts/setup.sh installs it), and CI=true forbids skipping"
    );
    eprintln!("SKIPPED hubble_ui: {CHROMIUM} is missing (scripts/setup.sh installs it)");
    false
}

/// Where this test's screenshots are kept: `$CARGO_TARGET_DIR/test-artifacts/hubble_ui/`
/// (the target dir found from the test binary when the variable is unset).
fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| {
        // target/debug/deps/hubble_ui-HASH
        let exe = std::env::current_exe().expect("test binary");
        exe.ancestors().nth(3).expect("the target dir").to_path_buf()
    });
    let dir = target.join("test-artifacts").join("hubble_ui");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// GET `target` from the map inside `netns`: status and body.
fn get(netns: &str, target: &str) -> (u16, String) {
    weir_host::netns::run_in(netns, || {
        let mut stream = TcpStream::connect(UI)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        stream.write_all(format!("GET {target} HTTP/1.1\r\nHost: map\r\n\r\n").as_bytes())?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        std::io::Result::Ok(answer)
    })
    .expect("netns")
    .map(|answer| {
        let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    })
    .unwrap_or((0, String::new()))
}

/// Runs headless Chromium in `netns` with `args` and the page at `url`;
/// its stdout (the DOM, with --dump-dom). Killed past a minute.
fn chromium(netns: &str, profile: &Path, args: &[&str], url: &str) -> String {
    let out = Command::new("timeout")
        .args(["-k", "5", "60", "ip", "netns", "exec", netns, CHROMIUM])
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--virtual-time-budget=6000"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("chromium");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `data-*` attributes of every `<tr>` in `table` of the dumped DOM.
fn rows(dom: &str, table: &str) -> Vec<BTreeMap<String, String>> {
    let Some(start) = dom.find(&format!("<table id=\"{table}\"")) else { return Vec::new() };
    let end = dom[start..].find("</table>").map_or(dom.len(), |e| start + e);
    let mut out = Vec::new();
    for tag in dom[start..end].split("<tr").skip(1) {
        let head = tag.split('>').next().unwrap_or_default();
        let mut attrs = BTreeMap::new();
        for part in head.split("\" ").map(str::trim) {
            if let Some((key, value)) = part.split_once("=\"") {
                if let Some(key) = key.trim().strip_prefix("data-") {
                    let value = value.trim_end_matches('"').replace("&amp;", "&").replace("&gt;", ">");
                    attrs.insert(key.to_string(), value);
                }
            }
        }
        if !attrs.is_empty() {
            out.push(attrs);
        }
    }
    out
}

fn edge<'a>(
    edges: &'a [BTreeMap<String, String>],
    from: &str,
    to: &str,
    port: &str,
    protocol: &str,
) -> Option<&'a BTreeMap<String, String>> {
    edges.iter().find(|e| {
        e.get("from").map(String::as_str) == Some(from)
            && e.get("to").map(String::as_str) == Some(to)
            && e.get("port").map(String::as_str) == Some(port)
            && e.get("protocol").map(String::as_str) == Some(protocol)
    })
}

fn count(row: Option<&BTreeMap<String, String>>, key: &str) -> u64 {
    row.and_then(|r| r.get(key)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// A DNS server on `ip`:53 in `netns` that answers every query NXDOMAIN,
/// until dropped.
struct NxDomain {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for NxDomain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn nxdomain_server(netns: &str, ip: Ipv4Addr) -> NxDomain {
    let socket = weir_host::netns::run_in(netns, || UdpSocket::bind((ip, 53))).expect("netns").expect("bind :53");
    socket.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while !stopped.load(Ordering::Relaxed) {
            let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
            if let Some(mut answer) = dns_server::answer(&buf[..n]) {
                // rcode 3 (NXDOMAIN), no answer record.
                answer[3] = 0x83;
                answer[7] = 0;
                let question_end = 12 + buf[12..n].iter().position(|b| *b == 0).unwrap_or(0) + 5;
                answer.truncate(question_end);
                let _ = socket.send_to(&answer, from);
            }
        }
    });
    NxDomain { stop, thread: Some(thread) }
}

#[test]
fn the_service_map_shows_the_labs_pods_and_the_traffics_edges_in_a_browser() {
    if !privileged("hubble ui") || !chromium_present() {
        return;
    }
    let name = unique_name("hui");
    let spec = two_node_spec(&name).replace("routing: kernel", "routing: weir");
    let lab = TestLab::up_with(&name, &spec, true, &["--agent-arg=--hubble-listen=0.0.0.0:4244"]);
    let dir = TempDir(std::env::temp_dir().join(format!("{name}-ui")));
    std::fs::create_dir_all(dir.0.join("site")).expect("dir");
    let plan = lab.plan();
    let pod = |n: &str| plan.pod(n).expect("pod").clone();
    let (web, api, db) = (pod("frontend/web"), pod("backend/api"), pod("backend/db"));
    let node_a = plan.node("node-a").expect("node-a").clone();
    let socket = format!("unix://{}", node_a.agent.socket.display());

    // DNS before the relay starts: web asks db, which answers NXDOMAIN; the
    // map reads it from the agents' rings.
    let nx = nxdomain_server(&db.netns, db.ip);
    let at = format!("@{}", db.ip);
    let out = lab.exec("frontend/web", &["dig", &at, "nowhere.shop.example", "A", "+tries=1", "+time=5"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("NXDOMAIN"), "{out:?}");
    drop(nx);

    // The relay with the map, inside node-a, dialling both nodes.
    let relay = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &node_a.netns, env!("CARGO_BIN_EXE_weir"), "relay"])
            .args(["--listen-address", "127.0.0.1:4245", "--peer-service", &socket, "--ui-listen-address", UI])
            .args(["--retry-timeout", "300ms", "--sort-buffer-drain-timeout", "200ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("weir relay"),
    );
    let connected = eventually(Duration::from_secs(30), || {
        let (status, body) = get(&node_a.netns, "/api/graph");
        let graph: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let nodes = graph["relay_nodes"].as_array().cloned().unwrap_or_default();
        status == 200 && nodes.len() == 2 && nodes.iter().all(|n| n["state"] == "NODE_CONNECTED")
    });
    assert!(connected, "the map's follower hears of both nodes: {:?}", get(&node_a.netns, "/api/graph"));

    // HTTP: web gets a page from api's busybox httpd.
    std::fs::write(dir.0.join("site/hello.html"), "hello\n").expect("page");
    let httpd = Command::new("ip")
        .args(["netns", "exec", &api.netns, "busybox", "httpd", "-f", "-p", "8080", "-h"])
        .arg(dir.0.join("site"))
        .spawn()
        .expect("httpd");
    let _httpd = KillOnDrop(httpd);
    let hello = format!("http://{}:8080/hello.html", api.ip);
    let served = eventually(Duration::from_secs(20), || {
        let out = lab.exec("frontend/web", &["busybox", "wget", "-q", "-O", "-", &hello]);
        out.status.success() && out.stdout == b"hello\n"
    });
    assert!(served, "httpd serves the page");
    // A NetworkPolicy: backend takes only web -> api:8080; web -> db:5432 is denied.
    let policy = dir.0.join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: backend}\nspec: {podSelector: {}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-to-api, namespace: backend}\nspec:\n  podSelector: {matchLabels: {app: api}}\n  ingress:\n  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 8080}]\n",
    )
    .expect("policy");
    weir_ok(&["apply", "--lab", &name, "-f", &policy.to_string_lossy()]);
    let _db_listener = weir_host::netns::run_in(&db.netns, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, 5432)))
        .expect("netns")
        .expect("listen");
    let denied = weir_host::netns::run_in(&web.netns, || {
        TcpStream::connect_timeout(&(db.ip, 5432).into(), Duration::from_millis(700)).is_err()
    })
    .expect("netns");
    assert!(denied, "the policy denies web -> db:5432");

    // The browser: polled until the map shows what the traffic made.
    let profile = dir.0.join("chromium");
    let page = format!("http://{UI}/");
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut dom, mut nodes, mut edges);
    loop {
        dom = chromium(&node_a.netns, &profile, &["--dump-dom"], &page);
        nodes = rows(&dom, "nodes");
        edges = rows(&dom, "edges");
        let http = edge(&edges, "frontend/web", "backend/api", "8080", "TCP");
        let dns = edge(&edges, "frontend/web", "backend/db", "53", "UDP");
        let refused = edge(&edges, "frontend/web", "backend/db", "5432", "TCP");
        let seen = count(http, "http2xx") >= 1
            && count(dns, "dns-errors") >= 1
            && refused.is_some_and(|d| d.get("verdict").map(String::as_str) == Some("dropped"));
        if seen || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let ids: Vec<&str> = nodes.iter().filter_map(|n| n.get("node-id").map(String::as_str)).collect();
    for pod in ["frontend/web", "backend/api", "backend/db"] {
        assert!(ids.contains(&pod), "{pod} is a node of the map: {nodes:?}\n{dom}");
    }
    let http = edge(&edges, "frontend/web", "backend/api", "8080", "TCP").unwrap_or_else(|| panic!("{edges:#?}"));
    assert_eq!(http["verdict"], "forwarded", "{http:?}");
    assert!(count(Some(http), "http2xx") >= 1 && count(Some(http), "requests") >= 1, "{http:?}");
    let dns = edge(&edges, "frontend/web", "backend/db", "53", "UDP").unwrap_or_else(|| panic!("{edges:#?}"));
    assert!(count(Some(dns), "dns-errors") >= 1, "the NXDOMAIN answer: {dns:?}");
    let refused = edge(&edges, "frontend/web", "backend/db", "5432", "TCP").unwrap_or_else(|| panic!("{edges:#?}"));
    assert_eq!(refused["verdict"], "dropped", "{refused:?}");
    assert!(count(Some(refused), "dropped") >= 1, "{refused:?}");
    assert!(dom.contains("policy_denied:"), "the drop reason is shown");
    let artifacts = artifacts_dir();
    let map_png = artifacts.join("map.png");
    chromium(
        &node_a.netns,
        &profile,
        &[&format!("--screenshot={}", map_png.display()), "--window-size=1280,900"],
        &page,
    );
    assert!(std::fs::metadata(&map_png).is_ok_and(|m| m.len() > 0), "{map_png:?}");

    // A link to an edge opens its flows: the HTTP request and response.
    let linked = format!("http://{UI}/?from=frontend%2Fweb&to=backend%2Fapi&port=8080&protocol=TCP");
    let dom = chromium(&node_a.netns, &profile, &["--dump-dom"], &linked);
    let flows_at = dom.find("<table id=\"flows\"").expect("the flows panel");
    let panel = &dom[flows_at..];
    let panel = &panel[..panel.find("</table>").unwrap_or(panel.len())];
    assert!(panel.contains("HTTP/1.1 GET ") && panel.contains("/hello.html"), "the request: {panel}");
    assert!(panel.contains("HTTP/1.1 200 GET "), "the response: {panel}");
    assert!(rows(&dom, "flows").iter().all(|r| r["verdict"] == "FORWARDED"), "{panel}");
    let flows_png = artifacts.join("flows.png");
    chromium(
        &node_a.netns,
        &profile,
        &[&format!("--screenshot={}", flows_png.display()), "--window-size=1280,900"],
        &linked,
    );
    assert!(std::fs::metadata(&flows_png).is_ok_and(|m| m.len() > 0), "{flows_png:?}");
    // The denied edge's flows say why.
    let (status, body) = get(&node_a.netns, "/api/flows?from=frontend%2Fweb&to=backend%2Fdb&port=5432");
    assert_eq!(status, 200, "{body}");
    let flows: Value = serde_json::from_str(&body).expect("json");
    let why: Vec<(&str, &str)> = flows["flows"]
        .as_array()
        .map(|f| {
            f.iter().map(|f| (f["verdict"].as_str().unwrap_or(""), f["drop_reason"].as_str().unwrap_or(""))).collect()
        })
        .unwrap_or_default();
    assert!(why.contains(&("DROPPED", "policy_denied")), "{body}");

    // The namespace filter, on the page (a namespace with no pod shows no
    // edge, and the filter offers the lab's namespaces) and in the API; bad
    // input refused by what is wrong.
    let dom = chromium(&node_a.netns, &profile, &["--dump-dom"], &format!("http://{UI}/?namespace=nowhere"));
    assert!(dom.contains("data-loaded=\"true\""), "{dom}");
    assert!(rows(&dom, "edges").is_empty() && rows(&dom, "nodes").is_empty(), "{dom}");
    assert!(dom.contains("<option value=\"backend\">") && dom.contains("<option value=\"frontend\">"), "{dom}");
    let (_, body) = get(&node_a.netns, "/api/graph?namespace=nowhere");
    let nowhere: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(nowhere["edges"], serde_json::json!([]), "{body}");
    let (_, body) = get(&node_a.netns, "/api/graph?namespace=frontend");
    let frontend: Value = serde_json::from_str(&body).expect("json");
    let from_web =
        frontend["edges"].as_array().is_some_and(|e| !e.is_empty() && e.iter().all(|e| e["from"] == "frontend/web"));
    assert!(from_web, "{body}");
    let (status, body) = get(&node_a.netns, "/api/graph?namespace=Front_End");
    assert!(status == 400 && body.contains("namespace \\\"Front_End\\\""), "{status} {body}");
    let (status, body) = get(&node_a.netns, "/api/flows?from=frontend%2Fweb&to=backend%2Fapi&port=http");
    assert!(status == 400 && body.contains("port"), "{status} {body}");

    // A ClusterIP Service whose backend is api: web's requests to its
    // address reach api (the socket load balancer translates them), and the
    // map draws them through the Service.
    let service = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: hello, namespace: backend}}\nspec:\n  type: ClusterIP\n  clusterIP: 10.96.0.79\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: hello-1\n  namespace: backend\n  labels: {{kubernetes.io/service-name: hello}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n  - {{addresses: [{}], nodeName: {}, conditions: {{ready: true}}}}\n",
        api.ip, api.node
    );
    let service_yaml = dir.0.join("hello.yaml");
    std::fs::write(&service_yaml, service).expect("service");
    weir_ok(&["apply", "--lab", &name, "-f", &service_yaml.to_string_lossy()]);
    let through_service = "http://10.96.0.79/hello.html";
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut dom, mut nodes, mut edges, mut answered, mut wget);
    loop {
        // A request each round: the first may precede the agents' word of
        // the Service.
        let out = lab.exec("frontend/web", &["timeout", "10", "busybox", "wget", "-q", "-O", "-", through_service]);
        answered = out.status.success() && out.stdout == b"hello\n";
        wget = out;
        dom = chromium(&node_a.netns, &profile, &["--dump-dom"], &page);
        nodes = rows(&dom, "nodes");
        edges = rows(&dom, "edges");
        let forwarded = |row: Option<&BTreeMap<String, String>>| {
            row.is_some_and(|r| r.get("verdict").map(String::as_str) == Some("forwarded"))
        };
        let to_service = edge(&edges, "frontend/web", "service:backend/hello", "8080", "TCP");
        let seen = answered
            && forwarded(to_service)
            && count(to_service, "http2xx") >= 1
            && forwarded(edge(&edges, "service:backend/hello", "backend/api", "8080", "TCP"));
        if seen || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let services = weir(&["service", "list", "--lab", &name, "--node", &web.node]);
    assert!(answered, "web's request through the Service: {wget:?}\n{services:?}");
    let hello = nodes
        .iter()
        .find(|n| n.get("node-id").map(String::as_str) == Some("service:backend/hello"))
        .unwrap_or_else(|| panic!("the Service is a node of the map: {nodes:#?}\n{dom}"));
    assert_eq!(
        (hello["kind"].as_str(), hello["name"].as_str(), hello["namespace"].as_str()),
        ("service", "hello", "backend")
    );
    let to_service = edge(&edges, "frontend/web", "service:backend/hello", "8080", "TCP")
        .unwrap_or_else(|| panic!("web -> the Service: {edges:#?}"));
    assert_eq!(
        (to_service["verdict"].as_str(), to_service["to-kind"].as_str()),
        ("forwarded", "service"),
        "{to_service:?}"
    );
    assert!(count(Some(to_service), "http2xx") >= 1 && count(Some(to_service), "requests") >= 1, "{to_service:?}");
    let to_api = edge(&edges, "service:backend/hello", "backend/api", "8080", "TCP")
        .unwrap_or_else(|| panic!("the Service -> api: {edges:#?}"));
    assert_eq!((to_api["verdict"].as_str(), to_api["from-kind"].as_str()), ("forwarded", "service"), "{to_api:?}");
    let service_png = artifacts.join("service-map.png");
    chromium(
        &node_a.netns,
        &profile,
        &[&format!("--screenshot={}", service_png.display()), "--window-size=1280,900"],
        &page,
    );
    assert!(std::fs::metadata(&service_png).is_ok_and(|m| m.len() > 0), "{service_png:?}");
    // The edge into the Service opens its flows: web's requests, api's
    // answers, each naming the Service.
    let linked = format!("http://{UI}/?from=frontend%2Fweb&to=service%3Abackend%2Fhello&port=8080&protocol=TCP");
    let dom = chromium(&node_a.netns, &profile, &["--dump-dom"], &linked);
    let flows = rows(&dom, "flows");
    assert!(!flows.is_empty() && flows.iter().all(|r| r["service"] == "service:backend/hello"), "{dom}");
    assert!(dom.contains("HTTP/1.1 200 GET ") && dom.contains("(service:backend/hello)"), "{dom}");
    let (status, body) = get(&node_a.netns, "/api/flows?from=service%3Abackend%2Fhello&to=backend%2Fapi&port=8080");
    let flows: Value = serde_json::from_str(&body).expect("json");
    let took = flows["flows"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f["destination"] == "backend/api" && f["verdict"] == "FORWARDED"));
    assert!(status == 200 && took, "{status} {body}");
    eprintln!("screenshots: {}, {} and {}", map_png.display(), flows_png.display(), service_png.display());
    drop(relay);
}
