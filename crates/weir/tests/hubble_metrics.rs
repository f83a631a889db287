//! Hubble's metric families on the agent's metrics page (`--hubble-metrics`),
//! counted from real allowed and denied traffic between lab pods, and the
//! series of a deleted pod gone after `--hubble-metrics-ttl`.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::*;

fn connect(netns: &str, to: Ipv4Addr, port: u16) -> bool {
    weir_host::netns::run_in(netns, || {
        TcpStream::connect_timeout(&SocketAddr::from((to, port)), Duration::from_millis(700)).is_ok()
    })
    .expect("netns")
}

/// The value of the series written exactly as `series` (name and labels).
fn value(page: &str, series: &str) -> Option<u64> {
    page.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn hubble_metrics_count_real_flows_and_deleted_pods_series_expire() {
    if !privileged("hubble metrics") {
        return;
    }
    let name = unique_name("hmetr");
    let spec = two_node_spec(&name).replace("routing: kernel", "routing: weir");
    let with_web2 = spec.replace(
        "  externalHosts:",
        "    - {name: web2, namespace: frontend, node: node-a, labels: {app: web}}\n  externalHosts:",
    );
    let lab = TestLab::up_with(
        &name,
        &with_web2,
        true,
        &[
            "--agent-arg=--hubble-metrics=drop:sourceContext=pod;destinationContext=pod",
            "--agent-arg=--hubble-metrics=flow tcp port-distribution icmp",
            "--agent-arg=--hubble-metrics=policy:sourceContext=app|pod;labelsContext=source_namespace,source_pod",
            "--agent-arg=--hubble-metrics-ttl=2s",
        ],
    );
    let plan = lab.plan();
    let pod = |n: &str| plan.pod(n).expect("pod").clone();
    let (web, web2, api) = (pod("frontend/web"), pod("frontend/web2"), pod("backend/api"));
    let node_b = plan.node("node-b").expect("node-b").clone();

    let policy = std::env::temp_dir().join(format!("{name}-policy.yaml"));
    std::fs::write(
        &policy,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: backend}\nspec: {podSelector: {}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-to-api, namespace: backend}\nspec:\n  podSelector: {matchLabels: {app: api}}\n  ingress:\n  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 8080}]\n",
    )
    .expect("policy");
    weir_ok(&["apply", "--lab", &name, "-f", &policy.to_string_lossy()]);
    let _ = std::fs::remove_file(&policy);
    let _listener = weir_host::netns::run_in(&api.netns, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8080)))
        .expect("netns")
        .expect("listen");

    // Three allowed connections and two denied ones from web; one denied from web2.
    for _ in 0..3 {
        assert!(connect(&web.netns, api.ip, 8080), "web reaches api on 8080");
    }
    for _ in 0..2 {
        assert!(!connect(&web.netns, api.ip, 80), "port 80 is not allowed");
    }
    assert!(!connect(&web2.netns, api.ip, 80), "nor for web2");

    let expected = [
        ("hubble_drop_total{destination=\"backend/api\",protocol=\"TCP\",reason=\"POLICY_DENIED\",source=\"frontend/web\"}", 2),
        ("hubble_drop_total{destination=\"backend/api\",protocol=\"TCP\",reason=\"POLICY_DENIED\",source=\"frontend/web2\"}", 1),
        ("hubble_flows_processed_total{protocol=\"TCP\",subtype=\"\",type=\"PolicyVerdict\",verdict=\"FORWARDED\"}", 3),
        ("hubble_flows_processed_total{protocol=\"TCP\",subtype=\"\",type=\"Drop\",verdict=\"DROPPED\"}", 3),
        ("hubble_tcp_flags_total{family=\"IPv4\",flag=\"SYN\"}", 3),
        ("hubble_port_distribution_total{port=\"8080\",protocol=\"TCP\"}", 3),
        ("hubble_policy_verdicts_total{action=\"forwarded\",direction=\"ingress\",match=\"l3-l4\",source=\"web\",source_namespace=\"frontend\",source_pod=\"web\"}", 3),
        ("hubble_policy_verdicts_total{action=\"dropped\",direction=\"ingress\",match=\"none\",source=\"web\",source_namespace=\"frontend\",source_pod=\"web\"}", 2),
        ("hubble_policy_verdicts_total{action=\"dropped\",direction=\"ingress\",match=\"none\",source=\"web\",source_namespace=\"frontend\",source_pod=\"web2\"}", 1),
    ];
    let mut page = String::new();
    let counted = eventually(Duration::from_secs(20), || {
        page = scrape_metrics(&node_b);
        expected.iter().all(|(series, at_least)| value(&page, series).is_some_and(|n| n >= *at_least))
    });
    let missing: Vec<_> =
        expected.iter().filter(|(s, n)| value(&page, s).is_none_or(|v| v < *n)).map(|(s, _)| *s).collect();
    assert!(counted, "series missing or short: {missing:#?}\nin:\n{page}");
    for family in ["hubble_drop_total", "hubble_flows_processed_total", "hubble_policy_verdicts_total"] {
        assert!(page.contains(&format!("# TYPE {family} counter\n")), "{family} is a counter: {page}");
    }
    assert!(value(&page, "hubble_lost_events_total{source=\"perf_event_ring_buffer\"}").is_some(), "{page}");
    assert!(value(&page, "hubble_lost_events_total{source=\"hubble_ring_buffer\"}").is_some(), "{page}");

    // web2 is deleted: its series (by pod) go after the TTL; web's stay.
    let without_web2 = std::env::temp_dir().join(format!("{name}-without-web2.yaml"));
    std::fs::write(&without_web2, &spec).expect("spec");
    let out = weir_ok(&["lab", "up", "-f", &without_web2.to_string_lossy()]);
    let _ = std::fs::remove_file(&without_web2);
    assert!(out.contains("pods deleted: frontend/web2"), "{out}");
    let gone = eventually(Duration::from_secs(30), || {
        page = scrape_metrics(&node_b);
        !page.contains("web2")
    });
    assert!(gone, "web2's series are still there:\n{page}");
    let (drop_web, _) = expected[0];
    assert!(value(&page, drop_web).is_some_and(|n| n >= 2), "web's series stay:\n{page}");
}
