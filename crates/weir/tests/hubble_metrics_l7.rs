//! Hubble's `dns`, `http` and `flow` metric families on the agent's metrics
//! page, counted from real L7 messages on the pod path: `dig` from
//! frontend/web to a DNS server in backend/db (an answer and an NXDOMAIN),
//! busybox wget to busybox httpd in backend/api (200 twice, 404 once).

mod common;
mod dns_server;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use dns_server::*;

/// The value of the series written exactly as `series` (name and labels).
fn value(page: &str, series: &str) -> Option<u64> {
    page.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn listening(netns: &str, ip: Ipv4Addr, port: u16) -> bool {
    weir_host::netns::run_in(netns, || {
        TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_millis(500)).is_ok()
    })
    .expect("netns")
}

#[test]
fn dns_and_http_metrics_count_real_l7_messages_by_hubbles_names_and_labels() {
    if !privileged("hubble l7 metrics") {
        return;
    }
    let name = unique_name("hml7");
    let lab = TestLab::up_with(
        &name,
        &two_node_spec(&name).replace("routing: kernel", "routing: weir"),
        true,
        &[
            "--agent-arg=--hubble-metrics=dns:query;sourceContext=pod flow",
            "--agent-arg=--hubble-metrics=http:sourceContext=pod",
        ],
    );
    let plan = lab.plan();
    let db = plan.pod("backend/db").expect("db").clone();
    let api = plan.pod("backend/api").expect("api").clone();
    let node_a = plan.node("node-a").expect("node-a").clone();

    // DNS: one name that exists, one that does not.
    let _server = dns_server(&db.netns, db.ip);
    let at = format!("@{}", db.ip);
    let dig = |name: &str| lab.exec("frontend/web", &["dig", &at, name, "A", "+tries=1", "+time=5", "+short"]);
    let out = dig("api.shop.example");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), ANSWER.to_string());
    let missing_name = format!("{NXDOMAIN_LABEL}.shop.example");
    assert!(dig(&missing_name).status.success(), "dig reports NXDOMAIN as an answer");

    // HTTP: the server listening first (a bare connection is no message).
    let site = std::env::temp_dir().join(format!("{name}-site"));
    std::fs::create_dir_all(&site).expect("site");
    std::fs::write(site.join("hello.html"), "hello\n").expect("page");
    let httpd = std::process::Command::new("ip")
        .args(["netns", "exec", &api.netns, "busybox", "httpd", "-f", "-p", "8080", "-h"])
        .arg(&site)
        .spawn()
        .expect("httpd");
    let _httpd = KillOnDrop(httpd);
    assert!(eventually(Duration::from_secs(20), || listening(&api.netns, api.ip, 8080)), "httpd listens");
    let get = |path: &str| {
        let url = format!("http://{}:8080{path}", api.ip);
        lab.exec("frontend/web", &["busybox", "wget", "-q", "-O", "-", &url])
    };
    for _ in 0..2 {
        let out = get("/hello.html");
        assert!(out.status.success() && out.stdout == b"hello\n", "{out:?}");
    }
    assert!(!get("/missing").status.success(), "404");
    let _ = std::fs::remove_dir_all(&site);

    let query = "query=\"api.shop.example.\"";
    let nx = format!("query=\"{missing_name}.\"");
    let expected: Vec<(String, u64)> = vec![
        (format!("hubble_dns_queries_total{{ips_returned=\"0\",qtypes=\"A\",{query},rcode=\"\",source=\"frontend/web\"}}"), 1),
        (format!("hubble_dns_responses_total{{ips_returned=\"1\",qtypes=\"A\",{query},rcode=\"No Error\",source=\"backend/db\"}}"), 1),
        (format!("hubble_dns_response_types_total{{qtypes=\"A\",{query},source=\"backend/db\",type=\"A\"}}"), 1),
        (format!("hubble_dns_queries_total{{ips_returned=\"0\",qtypes=\"A\",{nx},rcode=\"\",source=\"frontend/web\"}}"), 1),
        (
            format!("hubble_dns_responses_total{{ips_returned=\"0\",qtypes=\"A\",{nx},rcode=\"Non-Existent Domain\",source=\"backend/db\"}}"),
            1,
        ),
        ("hubble_flows_processed_total{protocol=\"DNS\",subtype=\"DNS\",type=\"L7\",verdict=\"FORWARDED\"}".into(), 4),
        ("hubble_flows_processed_total{protocol=\"HTTP\",subtype=\"HTTP\",type=\"L7\",verdict=\"FORWARDED\"}".into(), 6),
        (
            "hubble_http_requests_total{method=\"GET\",protocol=\"HTTP/1.1\",reporter=\"client\",source=\"frontend/web\"}"
                .into(),
            3,
        ),
        (
            "hubble_http_responses_total{method=\"GET\",protocol=\"HTTP/1.1\",reporter=\"client\",source=\"backend/api\",status=\"200\"}"
                .into(),
            2,
        ),
        (
            "hubble_http_responses_total{method=\"GET\",protocol=\"HTTP/1.1\",reporter=\"client\",source=\"backend/api\",status=\"404\"}"
                .into(),
            1,
        ),
        (
            "hubble_http_request_duration_seconds_count{method=\"GET\",reporter=\"client\",source=\"backend/api\"}".into(),
            3,
        ),
        (
            "hubble_http_request_duration_seconds_bucket{method=\"GET\",reporter=\"client\",source=\"backend/api\",le=\"+Inf\"}"
                .into(),
            3,
        ),
    ];
    let mut page = String::new();
    let counted = eventually(Duration::from_secs(30), || {
        page = scrape_metrics(&node_a);
        expected.iter().all(|(series, n)| value(&page, series).is_some_and(|v| v >= *n))
    });
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(s, n)| value(&page, s) != Some(*n))
        .map(|(s, n)| format!("{s}: {:?}, expected {n}", value(&page, s)))
        .collect();
    assert!(counted && wrong.is_empty(), "series missing or miscounted: {wrong:#?}\nin:\n{page}");
    for (family, kind) in [
        ("hubble_dns_queries_total", "counter"),
        ("hubble_dns_responses_total", "counter"),
        ("hubble_dns_response_types_total", "counter"),
        ("hubble_http_requests_total", "counter"),
        ("hubble_http_responses_total", "counter"),
        ("hubble_http_request_duration_seconds", "histogram"),
    ] {
        assert!(page.contains(&format!("# TYPE {family} {kind}\n")), "{family} is a {kind}: {page}");
    }
    // The histogram's buckets are Hubble's and cumulative: none holds more
    // than the +Inf bucket.
    let buckets: Vec<(String, u64)> = page
        .lines()
        .filter(|l| l.starts_with("hubble_http_request_duration_seconds_bucket{"))
        .filter_map(|l| l.rsplit_once(' ').map(|(s, v)| (s.to_string(), v.parse().unwrap_or(u64::MAX))))
        .collect();
    let bounds: Vec<&str> = buckets.iter().filter_map(|(s, _)| s.split("le=\"").nth(1)?.strip_suffix("\"}")).collect();
    assert_eq!(
        bounds,
        ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"],
        "{page}"
    );
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative: {buckets:?}");
    let sum = page
        .lines()
        .find_map(|l| l.strip_prefix("hubble_http_request_duration_seconds_sum{")?.rsplit_once(' '))
        .and_then(|(_, v)| v.parse::<f64>().ok());
    assert!(sum.is_some_and(|s| s > 0.0), "latencies summed: {page}");
}
