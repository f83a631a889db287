//! L7 flows without a proxy, in a lab on the pod path with real packets: a
//! DNS server in backend/db and `dig` from frontend/web (on another node):
//! the query and its answer are L7 flows with the query name, the answer's
//! address and TTL, and a latency, printed as Hubble prints DNS; busybox
//! httpd in backend/api and busybox wget from frontend/web: requests
//! (GET /path) and responses (200, 404) with a latency; Hubble's L7
//! filters select them and exclude everything else.

mod common;
mod dns_server;

use common::hubble_client::*;

use std::time::Duration;

use common::*;
use dns_server::*;
use serde_json::Value;

/// The flows `weir observe` prints as Hubble's JSON for these filter flags.
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

/// The first flow observed for `filters` that `test` accepts, waiting for
/// the agents to read it.
fn wait_for(lab: &DocsLab, filters: &[&str], test: impl Fn(&Value) -> bool) -> Value {
    let mut found = None;
    let seen = eventually(Duration::from_secs(30), || {
        found = observed(lab, filters).into_iter().find(|f| test(f));
        found.is_some()
    });
    assert!(seen, "no flow for {filters:?}; seen: {:#?}", observed(lab, filters));
    found.expect("found")
}

fn l7_type(f: &Value) -> &str {
    f["l7"]["type"].as_str().unwrap_or("")
}

fn latency_ns(f: &Value) -> u64 {
    f["l7"]["latency_ns"].as_str().and_then(|t| t.parse().ok()).unwrap_or(0)
}

#[test]
fn dns_and_http_messages_are_l7_flows_that_l7_filters_select() {
    let Some(lab) = DocsLab::pod_path("hl7") else { return };
    let plan = lab.plan();
    let db = plan.pod("backend/db").expect("db").clone();
    let api = plan.pod("backend/api").expect("api").clone();

    // DNS: a query and its answer.
    let _server = dns_server(&db.netns, db.ip);
    let at = format!("@{}", db.ip);
    let out = lab.exec("frontend/web", &["dig", &at, "API.shop.example", "A", "+tries=1", "+time=5", "+short"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), ANSWER.to_string());
    let name = ["--dns-query", "^api\\.shop\\.example\\.$"];
    let query = wait_for(&lab, &name, |f| l7_type(f) == "REQUEST");
    assert_eq!(query["Type"], "L7", "{query}");
    assert_eq!(query["event_type"]["type"], 129, "{query}");
    assert_eq!(query["source"]["pod_name"], "web", "{query}");
    assert_eq!(query["destination"]["pod_name"], "db", "{query}");
    assert_eq!(query["l7"]["dns"]["query"], "api.shop.example.", "lower case, with the root's dot: {query}");
    assert_eq!(query["l7"]["dns"]["qtypes"], serde_json::json!(["A"]), "{query}");
    let answer = wait_for(&lab, &name, |f| l7_type(f) == "RESPONSE");
    assert_eq!(answer["l7"]["dns"]["ips"], serde_json::json!([ANSWER.to_string()]), "{answer}");
    assert_eq!(answer["l7"]["dns"]["ttl"], TTL, "{answer}");
    assert_eq!(answer["l7"]["dns"]["rcode"].as_u64().unwrap_or(0), 0, "NOERROR (left out at 0): {answer}");
    assert_eq!(answer["is_reply"], true, "{answer}");
    assert_eq!(
        (answer["source"]["pod_name"].clone(), answer["destination"]["pod_name"].clone()),
        ("db".into(), "web".into())
    );
    assert!(latency_ns(&answer) > 0, "matched with its query: {answer}");
    // The server's identity, which the agent finds for L7 flows
    // (bpf/api/l7.h): the one the datapath gave its L3/L4 flow.
    let l4 = wait_for(&lab, &["--to-pod", "backend/db"], |f| f["Type"] == "L3_L4");
    let db_identity = &l4["destination"]["identity"];
    assert!(db_identity.as_u64().unwrap_or(0) >= 256, "a pod's identity: {l4}");
    assert_eq!(&query["destination"]["identity"], db_identity, "{query}");
    assert_eq!(&answer["source"]["identity"], db_identity, "{answer}");
    // Hubble's compact lines.
    let mut args = vec!["observe", "--lab", lab.name.as_str(), "--last", "2000", "-o", "compact"];
    args.extend_from_slice(&name);
    let compact = weir_ok(&args);
    assert!(compact.contains("dns-request proxy FORWARDED (DNS Query api.shop.example. A)"), "{compact}");
    let answered =
        format!("dns-response proxy FORWARDED (DNS Answer \"{ANSWER}\" TTL: {TTL} (Query api.shop.example. A))");
    assert!(compact.contains(&answered), "{compact}");
    assert!(compact.lines().all(|l| l.contains(" dns-")), "only L7 flows: {compact}");
    assert!(observed(&lab, &["--dns-query", "^www\\."]).is_empty(), "another name selects nothing");
    // A Hubble client (protobuf, generated from Hubble's field numbers)
    // asks node-a's agent with Hubble's own L7 filters.
    let node_a = plan.node("node-a").expect("node-a").clone();
    let dir = lab.dir.join("client");
    generate_client(&dir);
    let client = Client { dir, netns: None };
    let socket = format!("unix:{}", node_a.agent.socket.display());
    let request = serde_json::json!({"number": 100, "whitelist": [{"dns_query": ["shop\\.example\\.$"], "event_type": [{"type": 129}]}]});
    let read = client.flows(&socket, request);
    let flows = flows_of(&read);
    assert!(flows.iter().all(|f| f["Type"] == "L7"), "{flows:#?}");
    let decoded = flows.iter().find(|f| f["l7"]["type"] == "RESPONSE").unwrap_or_else(|| panic!("{read:?}"));
    assert_eq!(decoded["l7"]["dns"]["query"], "api.shop.example.", "{decoded}");
    assert_eq!(decoded["l7"]["dns"]["ips"], serde_json::json!([ANSWER.to_string()]), "{decoded}");
    assert_eq!(decoded["event_type"]["type"], 129, "{decoded}");

    // HTTP/1.x: busybox httpd in backend/api, busybox wget from frontend/web.
    let site = lab.dir.join("site");
    std::fs::create_dir_all(&site).expect("site");
    std::fs::write(site.join("hello.html"), "hello\n").expect("page");
    let httpd = std::process::Command::new("ip")
        .args(["netns", "exec", &api.netns, "busybox", "httpd", "-f", "-p", "8080", "-h"])
        .arg(&site)
        .spawn()
        .expect("httpd");
    let _httpd = KillOnDrop(httpd);
    let url = |path: &str| format!("http://{}:8080{path}", api.ip);
    let hello = url("/hello.html");
    let served = eventually(Duration::from_secs(20), || {
        let out = lab.exec("frontend/web", &["busybox", "wget", "-q", "-O", "-", &hello]);
        out.status.success() && out.stdout == b"hello\n"
    });
    assert!(served, "httpd serves the page");
    let missing = url("/missing");
    let out = lab.exec("frontend/web", &["busybox", "wget", "-q", "-O", "-", &missing]);
    assert!(!out.status.success(), "404: {out:?}");

    let request =
        wait_for(&lab, &["--http-method", "GET", "--http-path", "^/hello\\.html$"], |f| l7_type(f) == "REQUEST");
    assert_eq!(request["l7"]["http"]["url"], hello, "{request}");
    assert_eq!(request["l7"]["http"]["protocol"], "HTTP/1.1", "{request}");
    assert_eq!(request["source"]["pod_name"], "web", "{request}");
    // The process behind the request: busybox's wget, named from its
    // connection's first packet.
    let wget = &request["weir"]["source_process"];
    assert!(wget["binary"].as_str().is_some_and(|b| b.ends_with("busybox")), "{request}");
    assert!(wget["pid"].as_u64().is_some_and(|p| p > 0), "{request}");
    wait_for(&lab, &["--http-path", "^/missing$"], |f| l7_type(f) == "REQUEST");
    let not_found = wait_for(&lab, &["--http-status", "404"], |f| l7_type(f) == "RESPONSE");
    assert_eq!(not_found["l7"]["http"]["code"], 404, "{not_found}");
    assert_eq!(not_found["l7"]["http"]["method"], "GET", "the request it answers: {not_found}");
    assert_eq!(not_found["l7"]["http"]["url"], missing, "{not_found}");
    assert_eq!(not_found["source"]["pod_name"], "api", "{not_found}");
    assert!(latency_ns(&not_found) > 0, "matched with its request: {not_found}");
    let ok = wait_for(&lab, &["--http-status", "2+"], |f| l7_type(f) == "RESPONSE");
    assert_eq!(ok["l7"]["http"]["code"], 200, "{ok}");
    assert!(latency_ns(&ok) > 0, "{ok}");
    let statuses: Vec<u64> =
        observed(&lab, &["--http-status", "4+"]).iter().filter_map(|f| f["l7"]["http"]["code"].as_u64()).collect();
    assert!(!statuses.is_empty() && statuses.iter().all(|c| (400..500).contains(c)), "{statuses:?}");
    assert!(observed(&lab, &["--http-method", "POST"]).is_empty(), "no POST was sent");
    let compact = weir_ok(&["observe", "--lab", &lab.name, "--last", "2000", "-o", "compact", "--http-status", "404"]);
    let line = compact.lines().next().unwrap_or_default();
    assert!(line.contains("http-response proxy FORWARDED (HTTP/1."), "{compact}");
    assert!(line.contains(" 404 ") && line.ends_with(&format!("ms (GET {missing}))")), "{compact}");
    // The kernel's and the agent's counts: messages reported, none lost.
    let metrics = scrape_metrics(&node_a);
    assert!(metric_sum(&metrics, "weir_l7_messages_total{node=\"node-a\",outcome=\"reported\"}") >= 6, "{metrics}");
    assert_eq!(metric_sum(&metrics, "weir_l7_messages_total{node=\"node-a\",outcome=\"lost\"}"), 0, "{metrics}");
    // A bad filter is refused by its field.
    let out = weir(&["observe", "--lab", &lab.name, "--last", "10", "--http-status", "2x"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("http_status_code"), "{out:?}");
}
