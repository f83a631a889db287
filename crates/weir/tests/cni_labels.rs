//! Labels the runtimes keep for their containers, not passed to the CNI
//! plugin, selecting those containers in NetworkPolicies: containerd's
//! (read by the plugin during ADD) and podman's (read by the agent once
//! the container runs). The runtimes are Debian's, as in `cni_runtimes.rs`.

mod common;

use std::time::Duration;

use common::cni_host::*;
use common::runtimes::*;
use common::*;

const GUARDED: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: guarded, namespace: default}\nspec:\n  podSelector: {matchLabels: {role: guarded}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {role: client}}}]\n    ports: [{port: 8080}]\n";

/// The labels of the identity the agent on `socket` gives `pod` (as
/// `weir policy list` writes them), and
/// whether its ingress is enforced (a policy selects it).
fn endpoint_labels(socket: &str, pod: &str) -> (String, bool) {
    let list: serde_json::Value =
        serde_json::from_str(&weir_ok(&["policy", "list", "--socket", socket, "-o", "json"])).expect("json");
    let nodes = list.as_array().cloned().unwrap_or_default();
    let endpoint = nodes
        .iter()
        .flat_map(|n| n["endpoints"].as_array().cloned().unwrap_or_default())
        .find(|e| e["pod"] == pod)
        .unwrap_or_default();
    let labels = nodes
        .iter()
        .flat_map(|n| n["identities"].as_array().cloned().unwrap_or_default())
        .find(|i| i["id"] == endpoint["identity"])
        .and_then(|i| i["labels"].as_str().map(str::to_string))
        .unwrap_or_default();
    (labels, endpoint["ingressEnforced"] == true)
}

#[test]
fn ctr_run_labels_select_containers_for_network_policy() {
    if !privileged("ctr_run_labels_select_containers_for_network_policy") {
        return;
    }
    assert!(rootfs().join("bin/busybox").exists(), "{} is built by scripts/setup.sh", rootfs().display());
    let host = CniHost::new("cnilb", SUBNET);
    let _agent = host.start_agent();
    let rt = Runtimes::new(host);
    let socket = rt.host.socket_text();
    let httpd = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/etc"];
    let sleep = ["/bin/busybox", "sleep", "600"];
    // Labels only containerd's metadata holds: ctr passes none to the plugin.
    let _server = rt.ctr_run_with("server", &["--label", "role=guarded"], &httpd);
    let _client = rt.ctr_run_with("client", &["--label", "role=client", "--label", "tier=a"], &sleep);
    let _other = rt.ctr_run("other", &sleep);
    let ctr = |id: &str| Container::Ctr(id.into(), rt.namespace.clone());
    let server_ip = policy_endpoint_ip(&socket, &ctr("server").pod());
    for c in ["client", "other"] {
        // httpd may still be starting.
        assert!(
            eventually(Duration::from_secs(30), || rt.fetch(&ctr(c), server_ip, 8080)),
            "{c} reaches server before any policy"
        );
    }
    let policy = rt.host.dir.join("guarded.yaml");
    std::fs::write(&policy, GUARDED).expect("policy");
    weir_ok(&["apply", "-f", &policy.to_string_lossy(), "--socket", &socket]);
    assert!(rt.fetch(&ctr("client"), server_ip, 8080), "role=client reaches role=guarded");
    let (refused, _) = rt.fetch_saying(&ctr("other"), server_ip, 8080);
    assert!(!refused, "a container without the label is refused");
    let dropped =
        weir_ok(&["observe", "--socket", &socket, "--last", "100", "--verdict", "dropped", "-o", "weir-json"]);
    let flow = dropped
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|f| f["destination"]["pod"] == format!("{}-server", rt.namespace))
        .unwrap_or_default();
    assert_eq!(flow["destination"]["labels"]["role"], "guarded", "weir observe shows the label: {dropped}");
}

#[test]
fn podman_run_labels_select_containers_for_network_policy() {
    if !privileged("podman_run_labels_select_containers_for_network_policy") {
        return;
    }
    assert!(rootfs().join("bin/busybox").exists(), "{} is built by scripts/setup.sh", rootfs().display());
    let host = CniHost::new("cnipl", SUBNET);
    let mut agent = host.start_agent();
    let rt = Runtimes::new(host);
    let socket = rt.host.socket_text();
    let httpd = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/etc"];
    let sleep = ["/bin/busybox", "sleep", "600"];
    // Labels only podman's database holds: podman passes the plugin none.
    rt.podman_run("server", false, &["--label", "role=guarded"], &httpd);
    rt.podman_run("client", false, &["--label", "role=client", "--label", "bad label=x"], &sleep);
    rt.podman_run("other", false, &[], &sleep);
    // With crun here, the container has no cgroup of its own (see common/runtimes.rs).
    rt.podman_run("crun-client", true, &["--label", "role=client"], &sleep);
    let podman = |name: &str| Container::Podman(name.into(), false);
    let server_ip = policy_endpoint_ip(&socket, "default/server");
    assert!(
        eventually(Duration::from_secs(30), || rt.fetch(&podman("other"), server_ip, 8080)),
        "other reaches server before any policy (httpd may still be starting)"
    );
    let policy = rt.host.dir.join("guarded.yaml");
    std::fs::write(&policy, GUARDED).expect("policy");
    weir_ok(&["apply", "-f", &policy.to_string_lossy(), "--socket", &socket]);

    // The labels arrive once the containers run: the policy then selects
    // the server, and the client's identity carries role=client.
    let labelled = |pod: &str, label: &str| endpoint_labels(&socket, pod).0.contains(label);
    assert!(
        eventually(Duration::from_secs(30), || endpoint_labels(&socket, "default/server").1),
        "the policy selects the server once podman's role=guarded is learned: {:?}",
        endpoint_labels(&socket, "default/server")
    );
    assert!(
        eventually(Duration::from_secs(30), || labelled("default/client", "role=client")),
        "the client's identity carries podman's role=client: {:?}",
        endpoint_labels(&socket, "default/client")
    );
    assert!(!labelled("default/client", "label=x"), "a label Kubernetes would refuse is left out");
    assert!(
        eventually(Duration::from_secs(30), || labelled("default/crun-client", "role=client")),
        "crun's container's identity carries podman's role=client: {:?}",
        endpoint_labels(&socket, "default/crun-client")
    );
    assert!(!labelled("default/other", "role=client"), "the container without labels has none");
    assert!(rt.fetch(&podman("client"), server_ip, 8080), "role=client reaches role=guarded");
    let crun_client = Container::Podman("crun-client".into(), true);
    assert!(rt.fetch(&crun_client, server_ip, 8080), "role=client under crun reaches role=guarded");
    let (reached, _) = rt.fetch_saying(&podman("other"), server_ip, 8080);
    assert!(!reached, "a container without the label is refused");

    // Restarted, the agent keeps the labels it learned (the endpoints
    // record them, and that podman's were read): those identities stay.
    // The client's record is put back as an agent SIGKILLed before it read
    // podman's labels leaves it: the restarted agent reads them then.
    let identities = |pods: &[&str]| -> Vec<String> { pods.iter().map(|p| endpoint_labels(&socket, p).0).collect() };
    let kept = ["default/server", "default/crun-client", "default/other"];
    let before = identities(&kept);
    let records: Vec<(std::path::PathBuf, serde_json::Value)> =
        std::fs::read_dir(rt.host.dir.join("state/cni-endpoints"))
            .expect("the agent's endpoint records")
            .flatten()
            .filter_map(|e| Some((e.path(), serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?)))
            .collect();
    let record = |name: &str| records.iter().find(|(_, r)| r["name"] == name).cloned().expect("a record");
    let (_, server) = record("server");
    assert_eq!(server["labels"]["role"], "guarded", "the record keeps podman's labels: {server}");
    assert_eq!(server["cniAttachment"]["podman_labels_read"], true, "and that they were read: {server}");
    agent.0.kill().expect("SIGKILL");
    let _ = agent.0.wait();
    let (path, mut client) = record("client");
    client["labels"] = serde_json::json!({});
    client["cniAttachment"].as_object_mut().expect("an attachment").remove("podman_labels_read");
    std::fs::write(&path, client.to_string()).expect("the client's record");
    // In the first agent's place: it outlives the containers, answering their DELs.
    agent = rt.host.start_agent();
    assert_eq!(identities(&kept), before, "the same labels, read from the records");
    assert!(
        eventually(Duration::from_secs(30), || labelled("default/client", "role=client")),
        "the restarted agent reads the client's labels from podman: {:?}",
        endpoint_labels(&socket, "default/client")
    );
    assert!(rt.fetch(&podman("client"), server_ip, 8080), "role=client still reaches role=guarded");
    let (reached, _) = rt.fetch_saying(&podman("other"), server_ip, 8080);
    assert!(!reached, "the container without the label is still refused");
    drop(rt);
    drop(agent);
}
