//! Weir chained after the real `bridge` plugin (Debian's
//! containernetworking-plugins, with `host-local` IPAM): a conflist
//! `[bridge, weir-cni "chaining": "generic-veth"]` driven as libcni drives
//! it (each plugin's config on stdin with the list's `cniVersion` and
//! `name`, the previous plugin's result as `prevResult`; DEL in reverse
//! order with the cached result), in a namespace standing in for the host,
//! against a real `weir agent` with the pod path.

mod common;

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cni_host::*;
use common::*;
use serde_json::{json, Value};

const SUBNET: &str = "10.78.0.0/24";
const BRIDGE: &str = "wchainbr0";
/// Where Debian installs the reference plugins.
const PLUGINS: &str = "/usr/lib/cni";

/// Runs one plugin of the list in the host's namespace: `exe` with `args`,
/// `conf` on stdin, the `CNI_*` environment. (success, stdout, stderr)
fn run_plugin(host: &CniHost, exe: &str, args: &[&str], env: &[(&str, &str)], conf: &Value) -> (bool, Value, String) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &host.netns, exe])
        .args(args)
        .env_clear()
        .env("CNI_PATH", PLUGINS)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("plugin");
    child.stdin.take().expect("stdin").write_all(conf.to_string().as_bytes()).expect("config");
    let out = child.wait_with_output().expect("plugin");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = if stdout.trim().is_empty() { Value::Null } else { serde_json::from_str(&stdout).expect("json") };
    (out.status.success(), value, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The network list: a reference plugin with host-local, then Weir chained.
struct Chain<'a> {
    host: &'a CniHost,
    /// The first plugin's entry.
    first: Value,
}

impl<'a> Chain<'a> {
    fn ipam(host: &CniHost) -> Value {
        json!({"type": "host-local", "ranges": [[{"subnet": SUBNET}]], "dataDir": host.dir.join("host-local")})
    }

    /// After the bridge plugin: containers on one Linux bridge.
    fn bridge(host: &'a CniHost) -> Self {
        let first = json!({"type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipam": Self::ipam(host)});
        Chain { host, first }
    }

    /// After the ptp plugin: each container's veth routed by the host.
    fn ptp(host: &'a CniHost) -> Self {
        Chain { host, first: json!({"type": "ptp", "ipMasq": false, "ipam": Self::ipam(host)}) }
    }

    fn weir(&self, app: &str) -> Value {
        json!({
            "type": "weir-cni",
            "chaining": "generic-veth",
            "agentSocket": self.host.socket,
            "args": {"cni": {"labels": [{"key": "app", "value": app}]}},
        })
    }

    /// One plugin's config as libcni builds it from its list entry.
    fn conf(entry: &Value, prev: Option<&Value>) -> Value {
        let mut conf = entry.clone();
        conf["cniVersion"] = json!("1.0.0");
        conf["name"] = json!("chainnet");
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    fn env(pod: &str, netns: &str) -> Vec<(&'static str, String)> {
        vec![
            ("CNI_CONTAINERID", pod.to_string()),
            ("CNI_NETNS", format!("/run/netns/{netns}")),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}")),
        ]
    }

    fn first_run(&self, command: &str, pod: &str, netns: &str, prev: Option<&Value>) -> (bool, Value, String) {
        let env = Self::env(pod, netns);
        let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.push(("CNI_COMMAND", command));
        let exe = format!("{PLUGINS}/{}", self.first["type"].as_str().expect("type"));
        run_plugin(self.host, &exe, &[], &env, &Self::conf(&self.first, prev))
    }

    fn weir_run(&self, command: &str, pod: &str, netns: &str, conf: &Value) -> (bool, Value, String) {
        let env = Self::env(pod, netns);
        let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        env.push(("CNI_COMMAND", command));
        run_plugin(self.host, env!("CARGO_BIN_EXE_weir"), &["cni"], &env, conf)
    }

    /// ADD of the whole list; the list's result (Weir's, which must be the
    /// bridge's unchanged) and the container's address.
    fn add(&self, pod: &str, netns: &str) -> (Value, Ipv4Addr) {
        let (ok, bridged, stderr) = self.first_run("ADD", pod, netns, None);
        assert!(ok, "{} ADD {pod}: {bridged} {stderr}", self.first["type"]);
        let (ok, result, stderr) = self.weir_run("ADD", pod, netns, &Self::conf(&self.weir(pod), Some(&bridged)));
        assert!(ok, "weir-cni ADD {pod}: {result} {stderr}");
        assert_eq!(result, bridged, "a chained Weir returns prevResult unchanged");
        let address = result["ips"][0]["address"].as_str().expect("address");
        let ip = address.split('/').next().and_then(|a| a.parse().ok()).expect("ip");
        (result, ip)
    }

    /// DEL of the list: Weir first, then the bridge, both with the result.
    fn del(&self, pod: &str, netns: &str, result: &Value) {
        let (ok, out, stderr) = self.weir_run("DEL", pod, netns, &Self::conf(&self.weir(pod), Some(result)));
        assert!(ok, "weir-cni DEL {pod}: {out} {stderr}");
        let (ok, out, stderr) = self.first_run("DEL", pod, netns, Some(result));
        assert!(ok, "{} DEL {pod}: {out} {stderr}", self.first["type"]);
    }
}

/// The pod path's counters by name (the agent's pinned `pod_paths`).
fn pod_paths(pins: &Path) -> Vec<(&'static str, u64)> {
    weir_bpf::pods::PodEndpoints::open(&weir_bpf::datapath::PinLayout::new(pins))
        .and_then(|p| p.paths())
        .expect("pod path counters")
}

fn path(paths: &[(&str, u64)], name: &str) -> u64 {
    paths.iter().find(|(n, _)| *n == name).map_or(0, |(_, n)| *n)
}

/// The flow `weir observe` has from `source` to `destination` with `verdict`.
fn observed(socket: &str, source: &str, destination: &str, verdict: &str) -> Value {
    let mut seen = Value::Null;
    let found = eventually(Duration::from_secs(10), || {
        let out = weir_ok(&["observe", "--socket", socket, "--last", "1000", "-o", "weir-json"]);
        seen = out
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|f| f["source"]["pod"] == source && f["destination"]["pod"] == destination && f["verdict"] == verdict)
            .unwrap_or(Value::Null);
        !seen.is_null()
    });
    assert!(found, "weir observe shows {source} -> {destination} {verdict}");
    seen
}

fn link_exists(netns: &str, name: &str) -> bool {
    weir_host::iproute::ip(Some(netns), &["link", "show", name]).is_ok()
}

/// A NetworkPolicy: app=db takes connections from app=web only.
fn apply_db_takes_only_web(host: &CniHost, socket: &str) {
    let policy = host.dir.join("db-in.yaml");
    std::fs::write(
        &policy,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db-in, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]\n",
    )
    .expect("policy");
    weir_ok(&["apply", "-f", &policy.to_string_lossy(), "--socket", socket]);
}

#[test]
fn weir_chained_after_the_bridge_plugin_adds_policy_and_visibility_only() {
    if !privileged("weir_chained_after_the_bridge_plugin_adds_policy_and_visibility_only") {
        return;
    }
    assert!(Path::new(PLUGINS).join("bridge").exists(), "containernetworking-plugins is installed (scripts/setup.sh)");
    let host = CniHost::new("cnichain", SUBNET);
    let _agent = host.start_agent();
    let socket = host.socket_text();
    let chain = Chain::bridge(&host);

    let (web, db, other) = (host.container_netns("chweb"), host.container_netns("chdb"), host.container_netns("choth"));
    let (web_result, web_ip) = chain.add("web", &web);
    let (_, db_ip) = chain.add("db", &db);
    let (other_result, other_ip) = chain.add("other", &other);
    let endpoints = policy_endpoints(&socket);
    for pod in ["default/web", "default/db", "default/other"] {
        assert!(endpoints.iter().any(|e| e == pod), "{pod} is the agent's endpoint once ADD returned: {endpoints:?}");
    }
    assert_eq!(policy_endpoint_ip(&socket, "default/db"), db_ip);

    // On the bridge, under Weir's policy: db takes only app=web.
    apply_db_takes_only_web(&host, &socket);
    assert_eq!(tcp_exchange(&web, &db, db_ip, b"hello").expect("web -> db"), b"hello", "app=web reaches app=db");
    assert!(tcp_exchange(&other, &db, db_ip, b"hello").is_err(), "app=other is refused by db's policy");
    assert_eq!(tcp_exchange(&other, &web, web_ip, b"hi").expect("other -> web"), b"hi", "other still reaches web");
    assert_eq!(tcp_exchange(&db, &other, other_ip, b"hi").expect("db -> other"), b"hi", "db reaches other");

    // Seen, with the pods' names: the allowed flow and the drop.
    let allowed = observed(&socket, "web", "db", "forwarded");
    assert_eq!(allowed["destination"]["labels"]["app"], "db", "{allowed}");
    let dropped = observed(&socket, "other", "db", "dropped");
    assert_eq!(
        (&dropped["source"]["namespace"], &dropped["source"]["labels"]["app"]),
        (&json!("default"), &json!("other")),
        "{dropped}"
    );

    // The bridge forwarded every packet: none was redirected into a pod.
    let paths = pod_paths(&host.pins);
    assert!(path(&paths, "chained") > 0, "packets took the chained path: {paths:?}");
    assert_eq!(path(&paths, "delivered"), 0, "none was redirected past the bridge: {paths:?}");
    let ports = weir_host::iproute::ip(Some(&host.netns), &["-o", "link", "show", "master", BRIDGE]).expect("ports");
    assert_eq!(ports.lines().count(), 3, "the three containers' veths are the bridge's ports: {ports}");

    // Weir's CHECK: the veth is there and its endpoint is the agent's.
    let check = |pod: &str, netns: &str, result: &Value| {
        chain.weir_run("CHECK", pod, netns, &Chain::conf(&chain.weir(pod), Some(result)))
    };
    let (ok, out, stderr) = check("other", &other, &other_result);
    assert!(ok, "CHECK other: {out} {stderr}");

    // DEL of Weir alone forgets the endpoint and leaves the interface to
    // the bridge plugin; CHECK then says what differs.
    let (ok, out, stderr) =
        chain.weir_run("DEL", "other", &other, &Chain::conf(&chain.weir("other"), Some(&other_result)));
    assert!(ok, "weir-cni DEL other: {out} {stderr}");
    assert!(!policy_endpoints(&socket).iter().any(|e| e == "default/other"), "other is forgotten");
    assert!(link_exists(&other, "eth0"), "the bridge plugin's interface stays");
    let (ok, out, _) = check("other", &other, &other_result);
    assert!(!ok && out["code"] == 100, "CHECK after Weir's DEL: {out}");
    assert!(out["msg"].as_str().unwrap_or_default().contains("default/other"), "{out}");
    // The rest of the list's DEL (Weir's again is a no-op), then the bridge.
    chain.del("other", &other, &other_result);
    assert!(!link_exists(&other, "eth0"), "the bridge plugin removed its interface");
    let endpoints = policy_endpoints(&socket);
    assert_eq!(endpoints.len(), 2, "web and db stay: {endpoints:?}");
    assert_eq!(tcp_exchange(&web, &db, db_ip, b"again").expect("web -> db"), b"again", "the bridge still works");
    assert!(tcp_exchange(&db, &web, web_ip, b"x").is_ok(), "db still reaches web");

    // A container whose namespace went first (its veth with it): DEL
    // forgets the endpoint by the host-side names prevResult gives.
    weir_host::iproute::ip(None, &["netns", "del", &web]).expect("web's netns gone");
    chain.del("web", &web, &web_result);
    let endpoints = policy_endpoints(&socket);
    assert_eq!(endpoints, ["default/db"], "web is forgotten too");
    assert_eq!(std::fs::read_dir(host.dir.join("state/cni-endpoints")).expect("records").count(), 1, "db's");
}

#[test]
fn a_chained_config_without_the_interface_it_chains_to_is_refused_with_its_code() {
    if !privileged("a_chained_config_without_the_interface_it_chains_to_is_refused_with_its_code") {
        return;
    }
    let host = CniHost::new("cnichainerr", SUBNET);
    let chain = Chain::bridge(&host);
    // No agent: every refusal comes before the agent would be asked.
    let netns = host.container_netns("cherr");
    weir_host::iproute::batch(Some(&netns), &["link add eth0 type bridge".into(), "link set eth0 up".into()])
        .expect("a bridge as eth0");
    let sandbox = format!("/run/netns/{netns}");
    let prev = |ifname: &str, sandbox: &str| {
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": ifname, "sandbox": sandbox}],
            "ips": [{"address": "10.78.0.9/24", "interface": 0}],
        })
    };
    let weir = chain.weir("x");
    for (what, conf, code, named) in [
        ("no prevResult", Chain::conf(&weir, None), 7, "prevResult"),
        ("no such interface in prevResult", Chain::conf(&weir, Some(&prev("eth1", &sandbox))), 7, "no interface eth0"),
        ("another sandbox", Chain::conf(&weir, Some(&prev("eth0", "/run/netns/elsewhere"))), 7, "no interface eth0"),
        ("not a veth", Chain::conf(&weir, Some(&prev("eth0", &sandbox))), 7, "not a veth"),
        (
            "subnet too",
            {
                let mut c = Chain::conf(&weir, Some(&prev("eth0", &sandbox)));
                c["subnet"] = json!(SUBNET);
                c
            },
            7,
            "subnet",
        ),
        (
            "ipam too",
            {
                let mut c = Chain::conf(&weir, Some(&prev("eth0", &sandbox)));
                c["ipam"] = json!({"type": "host-local"});
                c
            },
            7,
            "ipam",
        ),
        (
            "another mode",
            {
                let mut c = Chain::conf(&weir, None);
                c["chaining"] = json!("portmap");
                c
            },
            7,
            "chaining",
        ),
    ] {
        let (ok, out, _) = chain.weir_run("ADD", "x", &netns, &conf);
        assert!(!ok, "{what}: refused");
        assert_eq!(out["code"], code, "{what}: {out}");
        assert!(out["msg"].as_str().unwrap_or_default().contains(named), "{what}: {out}");
    }
    assert!(link_exists(&netns, "eth0"), "a refused ADD touches no interface");
}

#[test]
fn weir_chained_after_the_ptp_plugin_leaves_routing_to_the_host() {
    if !privileged("weir_chained_after_the_ptp_plugin_leaves_routing_to_the_host") {
        return;
    }
    let host = CniHost::new("cnichptp", SUBNET);
    let _agent = host.start_agent();
    let socket = host.socket_text();
    let chain = Chain::ptp(&host);
    let (web, db, other) = (host.container_netns("ptweb"), host.container_netns("ptdb"), host.container_netns("ptoth"));
    let (_, web_ip) = chain.add("web", &web);
    let (_, db_ip) = chain.add("db", &db);
    let (other_result, _) = chain.add("other", &other);
    apply_db_takes_only_web(&host, &socket);
    // Through the host's routes (ptp gives each container a /32 route).
    assert_eq!(tcp_exchange(&web, &db, db_ip, b"hello").expect("web -> db"), b"hello", "app=web reaches app=db");
    assert!(tcp_exchange(&other, &db, db_ip, b"hello").is_err(), "app=other is refused by db's policy");
    assert_eq!(tcp_exchange(&other, &web, web_ip, b"hi").expect("other -> web"), b"hi", "other still reaches web");
    observed(&socket, "other", "db", "dropped");
    let paths = pod_paths(&host.pins);
    assert!(path(&paths, "chained") > 0, "packets took the chained path: {paths:?}");
    assert_eq!(
        (path(&paths, "delivered"), path(&paths, "forwarded")),
        (0, 0),
        "the host routed every packet: {paths:?}"
    );
    chain.del("other", &other, &other_result);
    assert!(!policy_endpoints(&socket).iter().any(|e| e == "default/other"), "other is forgotten");
    assert_eq!(tcp_exchange(&web, &db, db_ip, b"again").expect("web -> db"), b"again", "routing still works");
}
