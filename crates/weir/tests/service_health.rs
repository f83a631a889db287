//! Backend health on a cluster with a store: each node probes its own
//! backends (its host reaches its own pods whatever their policy says) and
//! shares its verdicts through etcd, so a default-deny NetworkPolicy, which
//! rightly drops another node's probes, takes no backend out of service.
//! A dead agent's verdicts lapse with its etcd lease. A real lab on the pod
//! path (so with etcd), real backend processes, a real client in a pod.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::server_process::ServerProcess;
use common::*;

const VIP: &str = "10.96.0.30";

/// The two-node lab on the pod path, with a second api pod on node-a so the
/// service has a backend on each node.
fn spec(name: &str) -> String {
    two_node_spec(name).replace("routing: kernel", "routing: weir").replace(
        "  externalHosts:",
        "    - name: api-a\n      namespace: backend\n      node: node-a\n      labels: {app: api, tier: backend}\n  externalHosts:",
    )
}

/// backend/shop: port 80 to 8080 on api (node-b) and api-a (node-a), and
/// on web (node-a), where nothing listens: once node-a quarantines it,
/// node-a has settled a round of probes.
fn shop(plan: &weir_lab::LabPlan) -> String {
    let ip = |pod: &str| plan.pod(pod).expect("pod").ip;
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: shop, namespace: backend}}\nspec:\n  clusterIP: {VIP}\n  ports: [{{port: 80, targetPort: 8080}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: shop-1\n  namespace: backend\n  labels: {{kubernetes.io/service-name: shop}}\naddressType: IPv4\nports: [{{protocol: TCP, port: 8080}}]\nendpoints:\n  - {{addresses: [{}], nodeName: node-b}}\n  - {{addresses: [{}], nodeName: node-a}}\n  - {{addresses: [{}], nodeName: node-a}}\n",
        ip("backend/api"),
        ip("backend/api-a"),
        ip("frontend/web"),
    )
}

fn apply(lab: &TestLab, yaml: &str) {
    let path = std::env::temp_dir().join(unique_name("svchealth-")).with_extension("yaml");
    std::fs::write(&path, yaml).expect("write");
    let out = weir(&["apply", "--lab", &lab.name, "-f", &path.to_string_lossy()]);
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
}

/// (state, judgedBy) of backend `ip` of backend/shop as `node` holds it.
fn backend(lab: &TestLab, node: &str, ip: std::net::Ipv4Addr) -> (String, String) {
    let out = weir_ok(&["service", "get", "backend/shop", "--lab", &lab.name, "--node", node, "-o", "json"]);
    let frontends: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json");
    frontends
        .iter()
        .flat_map(|f| f["backends"].as_array().cloned().unwrap_or_default())
        .find(|b| b["address"] == ip.to_string())
        .map(|b| {
            let text = |field: &str| b[field].as_str().unwrap_or_default().to_string();
            (text("state"), text("judgedBy"))
        })
        .unwrap_or_default()
}

/// The backends (by name) that `n` connections from web through the service reached.
fn reached(lab: &TestLab, client: &std::path::Path, n: usize) -> std::collections::BTreeMap<String, usize> {
    let out = lab.exec("frontend/web", &[client.to_str().expect("path"), "tcp", VIP, "80", &n.to_string()]);
    assert!(out.status.success(), "client: {}", String::from_utf8_lossy(&out.stderr));
    let mut tally = std::collections::BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line
            .strip_prefix(&format!("peer={VIP}:80 backend="))
            .unwrap_or_else(|| panic!("an answer through the service, got {line:?}"));
        *tally.entry(name.to_string()).or_insert(0) += 1;
    }
    tally
}

#[test]
fn under_a_default_deny_policy_each_node_judges_its_own_backends_and_every_node_applies_the_verdict() {
    if !privileged("shared backend health") {
        return;
    }
    let name = unique_name("svchl");
    let lab = TestLab::up(&name, &spec(&name), true);
    let plan = lab.plan();
    let ip = |pod: &str| plan.pod(pod).expect("pod").ip;
    let (api, api_a, web) = (ip("backend/api"), ip("backend/api-a"), ip("frontend/web"));
    let server = compile_fixture("svc_server.c", &["-O1"]);
    let client = compile_fixture("svc_client.c", &["-O1"]);
    let mut api_server = Some(ServerProcess::start(&lab, &server, "backend/api", "tcp", 8080, "api"));
    let _api_a_server = ServerProcess::start(&lab, &server, "backend/api-a", "tcp", 8080, "api-a");

    // Kubernetes' default deny in backend, and an allow from web on 8080.
    apply(&lab, include_str!("../../../examples/network-policy.yaml"));
    apply(&lab, &shop(&plan));
    // The policy drops what node-a's host sends to api on node-b: a probe
    // from node-a could only fail; node-b's host reaches its own pod.
    let host_connects = |node: &str| {
        let netns = plan.node(node).expect("node").netns.clone();
        weir_host::netns::run_in(&netns, || {
            TcpStream::connect_timeout(&SocketAddr::from((api, 8080)), Duration::from_millis(300)).is_ok()
        })
        .expect("netns")
    };
    assert!(
        eventually(Duration::from_secs(10), || !host_connects("node-a")),
        "node-a's host is refused by api's policy"
    );
    assert!(host_connects("node-b"), "node-b's host reaches its own pod api whatever its policy");

    // node-a has probed what it judges with the policy in place: web,
    // where nothing listens, is quarantined, on node-b too.
    for node in ["node-a", "node-b"] {
        assert!(
            eventually(Duration::from_secs(20), || backend(&lab, node, web) == ("quarantined".into(), "node-a".into())),
            "{node}: web quarantined by node-a's probe: {:?}",
            backend(&lab, node, web)
        );
    }
    // Each backend is judged by its own node, whose host the policy lets
    // in, and both nodes apply that verdict: active everywhere.
    for node in ["node-a", "node-b"] {
        for (ip, judge) in [(api, "node-b"), (api_a, "node-a")] {
            assert!(
                eventually(Duration::from_secs(20), || backend(&lab, node, ip) == ("active".into(), judge.into())),
                "{node}: {ip} active, judged by {judge}: {:?}",
                backend(&lab, node, ip)
            );
        }
    }
    let both = reached(&lab, &client, 60);
    assert!(both.contains_key("api") && both.contains_key("api-a"), "web reaches both backends: {both:?}");
    assert_eq!(both.values().sum::<usize>(), 60, "{both:?}");

    // api's server dies: node-b's probe fails, and node-a applies that verdict too.
    drop(api_server.take());
    for node in ["node-a", "node-b"] {
        assert!(
            eventually(Duration::from_secs(20), || backend(&lab, node, api) == ("quarantined".into(), "node-b".into())),
            "{node}: api quarantined by node-b's probe: {:?}",
            backend(&lab, node, api)
        );
    }
    let table = weir_ok(&["service", "get", "backend/shop", "--lab", &lab.name, "--node", "node-a"]);
    assert!(table.contains("quarantined by node-b's probe (shared)"), "{table}");
    let only = reached(&lab, &client, 30);
    assert_eq!(only.get("api-a"), Some(&30), "every connection goes to api-a: {only:?}");

    // Back again.
    api_server = Some(ServerProcess::start(&lab, &server, "backend/api", "tcp", 8080, "api"));
    for node in ["node-a", "node-b"] {
        assert!(
            eventually(Duration::from_secs(20), || backend(&lab, node, api) == ("active".into(), "node-b".into())),
            "{node}: api active again: {:?}",
            backend(&lab, node, api)
        );
    }
    let again = reached(&lab, &client, 60);
    assert!(again.contains_key("api") && again.contains_key("api-a"), "{again:?}");
    drop(api_server);
    let _ = std::fs::remove_file(server);
    let _ = std::fs::remove_file(client);
}

#[test]
fn a_dead_agents_verdicts_lapse_with_its_lease_and_its_restart_judges_again() {
    if !privileged("lapsed backend health") {
        return;
    }
    let name = unique_name("svchd");
    let lab = TestLab::up(&name, &spec(&name), true);
    let plan = lab.plan();
    let api = plan.pod("backend/api").expect("api").ip;
    let server = compile_fixture("svc_server.c", &["-O1"]);
    let _api_a_server = ServerProcess::start(&lab, &server, "backend/api-a", "tcp", 8080, "api-a");
    apply(&lab, include_str!("../../../examples/network-policy.yaml"));
    apply(&lab, &shop(&plan));
    // api has no server: node-b's probe fails, and both nodes quarantine it.
    for node in ["node-a", "node-b"] {
        assert!(
            eventually(Duration::from_secs(20), || backend(&lab, node, api) == ("quarantined".into(), "node-b".into())),
            "{node}: api quarantined by node-b's probe: {:?}",
            backend(&lab, node, api)
        );
    }

    // node-b's agent dies: its verdicts lapse with its lease (15 s), and
    // node-a, with nothing saying otherwise, takes api as passing.
    let pid = weir_lab::runtime::agent_pid(plan.node("node-b").expect("node-b")).expect("agent runs");
    weir_host::process::kill(pid, libc::SIGKILL);
    assert!(eventually(Duration::from_secs(10), || !weir_host::process::alive(pid)), "node-b's agent died");
    assert!(
        eventually(Duration::from_secs(60), || backend(&lab, "node-a", api) == ("active".into(), String::new())),
        "node-a: no verdict on api, taken as passing: {:?}",
        backend(&lab, "node-a", api)
    );

    // Restarted, node-b's agent judges api again, for both nodes.
    weir_ok(&["lab", "up", "-f", &lab.spec_path.to_string_lossy()]);
    for node in ["node-a", "node-b"] {
        assert!(
            eventually(Duration::from_secs(30), || backend(&lab, node, api) == ("quarantined".into(), "node-b".into())),
            "{node}: api quarantined by node-b's probe again: {:?}",
            backend(&lab, node, api)
        );
    }
    let _ = std::fs::remove_file(server);
}
