//! Labels the runtimes keep for their containers, not passed to the CNI
//! plugin, selecting those containers in NetworkPolicies: containerd's
//! (read by the plugin during ADD). The runtimes are Debian's, as in
//! `cni_runtimes.rs`.

mod common;

use common::cni_host::*;
use common::runtimes::*;
use common::*;

const GUARDED: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: guarded, namespace: default}\nspec:\n  podSelector: {matchLabels: {role: guarded}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {role: client}}}]\n    ports: [{port: 8080}]\n";

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
        assert!(rt.fetch(&ctr(c), server_ip, 8080), "{c} reaches server before any policy");
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
