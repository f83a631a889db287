//! The CNI plugin driven exactly as a runtime drives it: `weir-cni` (a link
//! to the binary) run with the CNI_* environment and the network config on
//! stdin, against network namespaces the tests make.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// One test's world: a plugin directory holding the `weir-cni` link, an
/// IPAM data dir, its own pod subnet, and the namespaces it made; all
/// removed on drop, also when the test panics.
struct CniLab {
    dir: PathBuf,
    network: String,
    subnet_base: [u8; 3],
    namespaces: Vec<String>,
    /// A namespace standing in for the node: the plugin runs inside it.
    node: Option<String>,
}

impl CniLab {
    fn new(test: &str) -> CniLab {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let network = unique_name("cni");
        let dir = std::env::temp_dir().join(format!("weir-{network}"));
        std::fs::create_dir_all(dir.join("bin")).expect("plugin dir");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_weir"), dir.join("bin/weir-cni")).expect("weir-cni link");
        // 100.64.0.0/10 is nobody's on a test host; the process and the
        // test's ordinal keep concurrent tests' subnets apart.
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let subnet_base = [100, 64 + (std::process::id() % 60) as u8, (n * 16 + test.len() as u32 % 16) as u8];
        CniLab { dir, network, subnet_base, namespaces: Vec::new(), node: None }
    }

    fn subnet(&self, prefix: u8) -> String {
        let [a, b, c] = self.subnet_base;
        format!("{a}.{b}.{c}.0/{prefix}")
    }

    fn addr(&self, host: u8) -> String {
        let [a, b, c] = self.subnet_base;
        format!("{a}.{b}.{c}.{host}")
    }

    fn config(&self, version: &str, extra: Value) -> Value {
        let mut conf = json!({
            "cniVersion": version,
            "name": self.network,
            "type": "weir-cni",
            "subnet": self.subnet(24),
            "dataDir": self.dir.join("ipam"),
            // These tests drive the plugin alone (tests/cni_agent.rs: with an agent).
            "agent": false,
        });
        for (k, v) in extra.as_object().expect("object") {
            if v.is_null() {
                conf.as_object_mut().expect("object").remove(k);
            } else {
                conf[k] = v.clone();
            }
        }
        conf
    }

    fn netns(&mut self) -> (String, String) {
        let name = unique_name("cnic");
        let out = Command::new("ip").args(["netns", "add", &name]).output().expect("ip netns add");
        assert!(out.status.success(), "ip netns add {name}: {}", String::from_utf8_lossy(&out.stderr));
        self.namespaces.push(name.clone());
        let path = format!("/run/netns/{name}");
        (name, path)
    }

    fn ipam_records(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.join("ipam").join(&self.network))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
            .collect();
        names.sort();
        names
    }
}

impl Drop for CniLab {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What one plugin run printed and how it exited.
#[derive(Debug)]
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    fn success(self) -> Run {
        assert!(self.ok, "plugin failed: {}\nstderr: {}", self.stdout, self.stderr);
        self
    }

    /// The error object's code, checking it is a spec-shaped error.
    fn error_code(&self) -> u64 {
        assert!(!self.ok, "expected an error: {self:?}");
        let err = self.json();
        assert!(err["cniVersion"].is_string() && err["msg"].is_string(), "error object: {err}");
        err["code"].as_u64().unwrap_or_else(|| panic!("no code: {err}"))
    }
}

fn cni(lab: &CniLab, command: &str, env: &[(&str, &str)], conf: &Value) -> Run {
    cni_raw(lab, command, env, conf.to_string().as_bytes(), "/usr/lib/cni")
}

fn cni_raw(lab: &CniLab, command: &str, env: &[(&str, &str)], stdin: &[u8], extra_path: &str) -> Run {
    let bin = lab.dir.join("bin");
    let mut cmd = match &lab.node {
        Some(node) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", node]).arg(bin.join("weir-cni"));
            c
        }
        None => Command::new(bin.join("weir-cni")),
    };
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", format!("{}:{extra_path}", bin.display()))
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("running weir-cni");
    child.stdin.take().expect("stdin").write_all(stdin).expect("writing config");
    let out = child.wait_with_output().expect("weir-cni");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn attach_env<'a>(id: &'a str, netns: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![("CNI_CONTAINERID", id), ("CNI_NETNS", netns), ("CNI_IFNAME", "eth0")]
}

fn pings(netns: Option<&str>, target: &str) -> bool {
    let mut ping = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "ping"]);
            c
        }
        None => Command::new("ping"),
    };
    ping.args(["-c", "1", "-W", "1", target]).output().map(|o| o.status.success()).unwrap_or(false)
}

fn link_exists_on_host(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

#[test]
fn cni_add_check_del_as_a_runtime_drives_it() {
    if !privileged("cni_add_check_del_as_a_runtime_drives_it") {
        return;
    }
    let mut lab = CniLab::new("add_check_del");
    let (ns, ns_path) = lab.netns();
    let id = format!("ctr-{ns}");
    let conf = lab.config("1.1.0", json!({"dns": {"nameservers": ["10.96.0.10"]}}));
    let mut env = attach_env(&id, &ns_path);
    env.push(("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"));

    let result = cni(&lab, "ADD", &env, &conf).success().json();
    let gateway = lab.addr(1);
    assert_eq!(result["cniVersion"], "1.1.0");
    let interfaces = result["interfaces"].as_array().expect("interfaces");
    assert_eq!(interfaces.len(), 2, "{result}");
    let host_veth = interfaces[0]["name"].as_str().expect("host name").to_string();
    assert!(interfaces[0].get("sandbox").is_none(), "host side has no sandbox: {result}");
    assert_eq!(interfaces[1]["name"], "eth0");
    assert_eq!(interfaces[1]["sandbox"], ns_path.as_str());
    for i in interfaces {
        let mac = i["mac"].as_str().expect("mac");
        assert_eq!(mac.len(), 17, "mac {mac}");
    }
    let ips = result["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 1);
    assert_eq!(ips[0]["interface"], 1, "ips point at the container interface");
    assert_eq!(ips[0]["gateway"], gateway.as_str());
    assert!(ips[0].get("version").is_none(), "1.x results have no ip version");
    let address = ips[0]["address"].as_str().expect("address");
    let ip = address.strip_suffix("/32").unwrap_or_else(|| panic!("a /32: {address}"));
    assert!(ip.starts_with(&lab.addr(0)[..lab.addr(0).len() - 1]), "{ip} in {}", lab.subnet(24));
    assert!(result["routes"].as_array().expect("routes").contains(&json!({"dst": "0.0.0.0/0", "gw": gateway})));
    assert_eq!(result["dns"], json!({"nameservers": ["10.96.0.10"]}));
    assert!(link_exists_on_host(&host_veth), "host veth {host_veth}");

    // The container reaches its gateway (the host side), and the host the container.
    assert!(eventually(Duration::from_secs(20), || pings(Some(&ns), &gateway)), "container pings gateway {gateway}");
    assert!(eventually(Duration::from_secs(20), || pings(None, ip)), "host pings container {ip}");

    // A repeated ADD of a live attachment fails and takes nothing away.
    assert!(cni(&lab, "ADD", &env, &conf).error_code() >= 100);
    // CHECK agrees with what ADD made ...
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = result.clone();
    cni(&lab, "CHECK", &env, &check_conf).success();
    // ... and not once the address is gone.
    let del = Command::new("ip")
        .args(["netns", "exec", &ns, "ip", "addr", "del", address, "dev", "eth0"])
        .output()
        .expect("ip");
    assert!(del.status.success(), "{}", String::from_utf8_lossy(&del.stderr));
    let failed = cni(&lab, "CHECK", &env, &check_conf);
    assert_eq!(failed.error_code(), 100, "{failed:?}");
    assert!(failed.json()["msg"].as_str().expect("msg").contains(ip), "{failed:?}");

    // DEL removes both sides and the address; a second DEL succeeds too.
    assert_eq!(lab.ipam_records(), vec![ip.to_string()]);
    cni(&lab, "DEL", &env, &conf).success();
    assert!(!link_exists_on_host(&host_veth), "host veth removed");
    assert!(lab.ipam_records().is_empty(), "address released: {:?}", lab.ipam_records());
    let second = cni(&lab, "DEL", &env, &conf).success();
    assert!(second.stdout.trim().is_empty(), "DEL prints nothing: {second:?}");
}

#[test]
fn cni_del_of_unknown_container_or_missing_netns_succeeds() {
    if !privileged("cni_del_of_unknown_container_or_missing_netns_succeeds") {
        return;
    }
    let mut lab = CniLab::new("del_unknown");
    let conf = lab.config("1.0.0", json!({}));
    cni(&lab, "DEL", &[("CNI_CONTAINERID", "never-added"), ("CNI_IFNAME", "eth0")], &conf).success();
    // A container whose namespace went away (a reboot, a crashed runtime).
    let (ns, ns_path) = lab.netns();
    let id = format!("gone-{ns}");
    cni(&lab, "ADD", &attach_env(&id, &ns_path), &conf).success();
    assert_eq!(lab.ipam_records().len(), 1);
    let out = Command::new("ip").args(["netns", "del", &ns]).output().expect("ip netns del");
    assert!(out.status.success());
    cni(&lab, "DEL", &attach_env(&id, &ns_path), &conf).success();
    assert!(lab.ipam_records().is_empty());
}

#[test]
fn cni_version_status_and_errors_follow_the_spec() {
    if !privileged("cni_version_status_and_errors_follow_the_spec") {
        return;
    }
    let mut lab = CniLab::new("version_errors");
    let version = cni_raw(&lab, "VERSION", &[], br#"{"cniVersion":"1.1.0"}"#, "").success().json();
    assert_eq!(version, json!({"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}));

    // `weir cni` is the same plugin as the `weir-cni` name.
    let mut direct = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("cni")
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("weir cni");
    direct.stdin.take().expect("stdin").write_all(br#"{"cniVersion":"1.0.0"}"#).expect("write");
    let out = direct.wait_with_output().expect("weir cni");
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["cniVersion"], "1.0.0");

    let (_, ns_path) = lab.netns();
    let env = attach_env("errs", &ns_path);
    let code = |conf: &[u8], env: &[(&str, &str)]| cni_raw(&lab, "ADD", env, conf, "").error_code();
    assert_eq!(code(br#"{"cniVersion":"0.2.0","name":"n","type":"weir-cni","subnet":"10.0.0.0/24"}"#, &env), 1);
    assert_eq!(code(b"{not json", &env), 6);
    assert_eq!(
        code(br#"{"cniVersion":"1.1.0","name":"n","type":"weir-cni","subnet":"10.0.0.0/24","subnett":1}"#, &env),
        2
    );
    assert_eq!(code(br#"{"cniVersion":"1.1.0","name":"n","type":"weir-cni","subnet":"10.0.0.7/24"}"#, &env), 7);
    let conf = lab.config("1.1.0", json!({}));
    let good = conf.to_string();
    assert_eq!(code(good.as_bytes(), &[("CNI_NETNS", &ns_path), ("CNI_IFNAME", "eth0")]), 4);
    assert_eq!(code(good.as_bytes(), &[("CNI_CONTAINERID", "x"), ("CNI_IFNAME", "eth0")]), 4);
    assert_eq!(code(good.as_bytes(), &attach_env("x", "/run/netns/no-such-namespace-weir")), 3);
    let unknown = cni_raw(&lab, "FROB", &env, good.as_bytes(), "");
    assert_eq!(unknown.error_code(), 4);
    assert!(lab.ipam_records().is_empty(), "failed ADDs allocate nothing: {:?}", lab.ipam_records());

    // STATUS: ready while an address is free; a /30 has one besides the gateway.
    let small = lab.config("1.1.0", json!({"subnet": lab.subnet(30)}));
    cni(&lab, "STATUS", &[], &small).success();
    cni(&lab, "ADD", &attach_env("only", &ns_path), &small).success();
    assert_eq!(cni(&lab, "STATUS", &[], &small).error_code(), 50);
    let (_, ns2) = lab.netns();
    assert_eq!(cni(&lab, "ADD", &attach_env("second", &ns2), &small).error_code(), 102);
    cni(&lab, "DEL", &attach_env("only", &ns_path), &small).success();
    cni(&lab, "STATUS", &[], &small).success();
}

#[test]
fn cni_gc_releases_only_stale_attachments() {
    if !privileged("cni_gc_releases_only_stale_attachments") {
        return;
    }
    let mut lab = CniLab::new("gc");
    let conf = lab.config("1.1.0", json!({}));
    let (_, keep_ns) = lab.netns();
    let (_, stale_ns) = lab.netns();
    let keep = cni(&lab, "ADD", &attach_env("keep", &keep_ns), &conf).success().json();
    let stale = cni(&lab, "ADD", &attach_env("stale", &stale_ns), &conf).success().json();
    let ip_of = |r: &Value| r["ips"][0]["address"].as_str().expect("address").trim_end_matches("/32").to_string();
    assert_eq!(lab.ipam_records().len(), 2);

    let mut gc = conf.clone();
    assert_eq!(cni(&lab, "GC", &[], &gc).error_code(), 7, "GC needs cni.dev/valid-attachments");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let veth = |r: &Value| r["interfaces"][0]["name"].as_str().expect("host veth").to_string();
    assert!(link_exists_on_host(&veth(&stale)));
    cni(&lab, "GC", &[], &gc).success();
    assert_eq!(lab.ipam_records(), vec![ip_of(&keep)], "stale {} released", ip_of(&stale));
    assert!(!link_exists_on_host(&veth(&stale)), "the stale attachment's veth is removed");
    assert!(link_exists_on_host(&veth(&keep)), "the valid attachment's veth stays");
}

#[test]
fn cni_concurrent_adds_get_distinct_addresses() {
    if !privileged("cni_concurrent_adds_get_distinct_addresses") {
        return;
    }
    let mut lab = CniLab::new("concurrent");
    let conf = lab.config("1.0.0", json!({}));
    let namespaces: Vec<(String, String)> = (0..50).map(|_| lab.netns()).collect();
    let results: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = namespaces
            .iter()
            .map(|(ns, path)| {
                let (lab, conf) = (&lab, &conf);
                scope.spawn(move || cni(lab, "ADD", &attach_env(ns, path), conf).success().json())
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("ADD thread")).collect()
    });
    let addresses: HashSet<String> =
        results.iter().map(|r| r["ips"][0]["address"].as_str().expect("address").to_string()).collect();
    assert_eq!(addresses.len(), 50, "distinct addresses: {addresses:?}");
    assert_eq!(lab.ipam_records().len(), 50);
    // Every container is really attached: each reaches the gateway.
    let gateway = lab.addr(1);
    for (ns, _) in &namespaces {
        assert!(eventually(Duration::from_secs(20), || pings(Some(ns), &gateway)), "{ns} pings {gateway}");
    }
    for (ns, path) in &namespaces {
        cni(&lab, "DEL", &attach_env(ns, path), &conf).success();
    }
    assert!(lab.ipam_records().is_empty());
}

#[test]
fn cni_delegates_ipam_to_host_local() {
    if !privileged("cni_delegates_ipam_to_host_local") {
        return;
    }
    let host_local = Path::new("/usr/lib/cni/host-local");
    assert!(host_local.exists(), "{} (Debian's containernetworking-plugins, scripts/setup.sh)", host_local.display());
    let mut lab = CniLab::new("host_local");
    let ipam_dir = lab.dir.join("host-local");
    let conf = lab.config(
        "1.0.0",
        json!({
            "subnet": null,
            "dataDir": null,
            "ipam": {"type": "host-local", "dataDir": ipam_dir, "ranges": [[{"subnet": lab.subnet(24), "gateway": lab.addr(1)}]]},
        }),
    );
    let (ns, ns_path) = lab.netns();
    let id = format!("hl-{ns}");
    let env = attach_env(&id, &ns_path);
    let result = cni(&lab, "ADD", &env, &conf).success().json();
    let ip = result["ips"][0]["address"].as_str().expect("address").trim_end_matches("/32").to_string();
    assert_eq!(result["ips"][0]["gateway"], lab.addr(1).as_str());
    let record = ipam_dir.join(&lab.network).join(&ip);
    assert!(record.exists(), "host-local recorded {}", record.display());
    assert!(eventually(Duration::from_secs(20), || pings(Some(&ns), &lab.addr(1))), "container pings its gateway");
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = result;
    cni(&lab, "CHECK", &env, &check_conf).success();
    cni(&lab, "DEL", &env, &conf).success();
    assert!(!record.exists(), "host-local released {ip}");
    cni(&lab, "DEL", &env, &conf).success();
}

#[test]
fn cni_setup_installs_a_plugin_and_conflist_runtimes_can_use() {
    if !privileged("cni_setup_installs_a_plugin_and_conflist_runtimes_can_use") {
        return;
    }
    let mut lab = CniLab::new("setup");
    let root = lab.dir.join("root");
    let root_arg = root.display().to_string();
    let data_dir = lab.dir.join("ipam").display().to_string();
    let subnet = lab.subnet(24);
    let setup = |extra: &[&str]| {
        // No agent here: the plugin alone (tests/cni_agent.rs: with one).
        let mut args =
            vec!["setup", "cni", "--prefix", &root_arg, "--name", &lab.network, "--data-dir", &data_dir, "--no-agent"];
        args.extend_from_slice(extra);
        weir(&args)
    };

    // A config the plugin would refuse is refused before anything is written.
    let bad = setup(&["--subnet", "10.0.0.7/24"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("host bits"), "{}", String::from_utf8_lossy(&bad.stderr));
    let dry = setup(&["--subnet", &subnet, "--dry-run"]);
    assert!(dry.status.success(), "{}", String::from_utf8_lossy(&dry.stderr));
    assert!(String::from_utf8_lossy(&dry.stdout).contains("would write"));
    assert!(!root.exists(), "a dry run and a refused config write nothing");

    let out = setup(&["--subnet", &subnet, "--cni-version", "1.1.0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for dir in ["opt/cni/bin", "usr/lib/cni"] {
        let plugin = root.join(dir).join("weir-cni");
        let mode = std::fs::metadata(&plugin).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
        assert_eq!(mode.ok().map(|m| m & 0o777), Some(0o755), "{}", plugin.display());
    }
    let conflist_path = root.join("etc/cni/net.d").join(format!("10-{}.conflist", lab.network));
    let conflist: Value =
        serde_json::from_str(&std::fs::read_to_string(&conflist_path).expect("conflist")).expect("JSON");
    assert_eq!(conflist["cniVersion"], "1.1.0");
    assert_eq!(conflist["name"], lab.network.as_str());
    let plugins = conflist["plugins"].as_array().expect("plugins");
    assert_eq!(plugins.len(), 1);
    assert_eq!(plugins[0]["agent"], false, "--no-agent");

    // Run the installed plugin as libcni does: the list's entry with the
    // list's name and version added.
    let mut conf = plugins[0].clone();
    conf["name"] = conflist["name"].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    let installed = root.join("opt/cni/bin");
    let (ns, ns_path) = lab.netns();
    let id = format!("setup-{ns}");
    let run = |command: &str, env: &[(&str, &str)]| {
        let mut child = Command::new(installed.join("weir-cni"))
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", &installed)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("installed weir-cni");
        child.stdin.take().expect("stdin").write_all(conf.to_string().as_bytes()).expect("write");
        let out = child.wait_with_output().expect("weir-cni");
        assert!(out.status.success(), "{command}: {}", String::from_utf8_lossy(&out.stdout));
        out.stdout
    };
    run("STATUS", &[]);
    let result: Value = serde_json::from_slice(&run("ADD", &attach_env(&id, &ns_path))).expect("result");
    assert_eq!(result["ips"][0]["gateway"], lab.addr(1).as_str());
    assert!(eventually(Duration::from_secs(20), || pings(Some(&ns), &lab.addr(1))), "container pings its gateway");
    run("DEL", &attach_env(&id, &ns_path));
    assert!(lab.ipam_records().is_empty());
}

#[test]
fn cni_results_in_0_4_0_and_after_a_previous_plugin() {
    if !privileged("cni_results_in_0_4_0_and_after_a_previous_plugin") {
        return;
    }
    let mut lab = CniLab::new("result_versions");
    let (_, ns_old) = lab.netns();
    let old = lab.config("0.4.0", json!({}));
    let result = cni(&lab, "ADD", &attach_env("old", &ns_old), &old).success().json();
    assert_eq!(result["cniVersion"], "0.4.0");
    assert_eq!(result["ips"][0]["version"], "4", "0.4.0 results carry the ip version: {result}");
    assert_eq!(result["ips"][0]["interface"], 1);

    // After a plugin that reported its own interface and address, ours follow
    // and the index points at our interface.
    let (_, ns_chain) = lab.netns();
    let prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "dummy0", "sandbox": ns_chain}],
        "ips": [{"address": "192.0.2.9/24", "interface": 0}],
        "dns": {"nameservers": ["192.0.2.53"]},
    });
    let chained = lab.config("1.0.0", json!({"prevResult": prev}));
    let result = cni(&lab, "ADD", &attach_env("chain", &ns_chain), &chained).success().json();
    let interfaces = result["interfaces"].as_array().expect("interfaces");
    assert_eq!(interfaces.len(), 3, "{result}");
    assert_eq!(interfaces[0]["name"], "dummy0");
    assert_eq!(interfaces[2]["name"], "eth0");
    let ips = result["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 2);
    assert_eq!(ips[0], json!({"address": "192.0.2.9/24", "interface": 0}));
    assert_eq!(ips[1]["interface"], 2);
    assert_eq!(result["dns"], json!({"nameservers": ["192.0.2.53"]}));
    cni(&lab, "DEL", &attach_env("old", &ns_old), &old).success();
    cni(&lab, "DEL", &attach_env("chain", &ns_chain), &chained).success();
    assert!(lab.ipam_records().is_empty());
}

#[test]
fn cni_containers_reach_each_other_through_a_forwarding_node() {
    if !privileged("cni_containers_reach_each_other_through_a_forwarding_node") {
        return;
    }
    let mut lab = CniLab::new("forwarding");
    // The node is a namespace of its own, so forwarding is switched on there
    // and not on the machine running the tests.
    let (node, _) = lab.netns();
    let sysctl = Command::new("ip")
        .args(["netns", "exec", &node, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .output()
        .expect("sysctl");
    assert!(sysctl.status.success(), "{}", String::from_utf8_lossy(&sysctl.stderr));
    lab.node = Some(node.clone());
    let conf = lab.config("1.1.0", json!({}));
    let (a_ns, a_path) = lab.netns();
    let (b_ns, b_path) = lab.netns();
    let a = cni(&lab, "ADD", &attach_env("a", &a_path), &conf).success().json();
    let b = cni(&lab, "ADD", &attach_env("b", &b_path), &conf).success().json();
    let ip = |r: &Value| r["ips"][0]["address"].as_str().expect("address").trim_end_matches("/32").to_string();
    let host_veth = a["interfaces"][0]["name"].as_str().expect("host veth").to_string();
    assert!(!link_exists_on_host(&host_veth), "the host side is in the node namespace, not the test host's");
    assert!(eventually(Duration::from_secs(20), || pings(Some(&a_ns), &ip(&b))), "a reaches b");
    assert!(eventually(Duration::from_secs(20), || pings(Some(&b_ns), &ip(&a))), "b reaches a");
    cni(&lab, "DEL", &attach_env("a", &a_path), &conf).success();
    assert!(!pings(Some(&b_ns), &ip(&a)), "a is gone");
    cni(&lab, "DEL", &attach_env("b", &b_path), &conf).success();
    assert!(lab.ipam_records().is_empty());
}

/// The root qdisc of `dev` (in `netns`, else here), as `tc -j` shows it.
fn root_qdisc(netns: Option<&str>, dev: &str) -> Value {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "tc"]);
            c
        }
        None => Command::new("tc"),
    };
    let out = cmd.args(["-j", "qdisc", "show", "dev", dev, "root"]).output().expect("tc");
    let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    list.as_array().and_then(|l| l.first()).cloned().unwrap_or(Value::Null)
}

#[test]
fn cni_bandwidth_shapes_both_sides_of_the_veth() {
    if !privileged("cni_bandwidth_shapes_both_sides_of_the_veth") {
        return;
    }
    let mut lab = CniLab::new("bandwidth");
    let (ns, ns_path) = lab.netns();
    let id = format!("ctr-{ns}");
    // 8 Mbit/s in with a 80 kbit burst; 16 Mbit/s out with 160 kbit.
    let bandwidth =
        json!({"ingressRate": 8_000_000, "ingressBurst": 80_000, "egressRate": 16_000_000, "egressBurst": 160_000});
    let conf = lab.config("1.1.0", json!({"runtimeConfig": {"bandwidth": bandwidth}}));
    let env = attach_env(&id, &ns_path);
    let result = cni(&lab, "ADD", &env, &conf).success().json();
    let host_veth = result["interfaces"][0]["name"].as_str().expect("host name").to_string();
    let to_container = root_qdisc(None, &host_veth);
    assert_eq!(to_container["kind"], "tbf", "{to_container}");
    assert_eq!(to_container["options"]["rate"], 1_000_000, "bytes/s: {to_container}");
    assert_eq!(to_container["options"]["burst"], 10_000, "{to_container}");
    let from_container = root_qdisc(Some(&ns), "eth0");
    assert_eq!(from_container["kind"], "tbf", "{from_container}");
    assert_eq!(from_container["options"]["rate"], 2_000_000, "{from_container}");
    assert_eq!(from_container["options"]["burst"], 20_000, "{from_container}");
    // The container still reaches its gateway through the buckets.
    assert!(eventually(Duration::from_secs(20), || pings(Some(&ns), &lab.addr(1))), "shaped, still connected");
    cni(&lab, "DEL", &env, &conf).success();

    // A rate without its burst is error 7, and nothing is made.
    let bad = lab.config("1.1.0", json!({"runtimeConfig": {"bandwidth": {"ingressRate": 8000}}}));
    let refused = cni(&lab, "ADD", &env, &bad);
    assert_eq!(refused.error_code(), 7, "{refused:?}");
    assert!(refused.json()["msg"].as_str().expect("msg").contains("ingressBurst"), "{refused:?}");
    assert!(!link_exists_on_host(&host_veth) && lab.ipam_records().is_empty(), "nothing made");
}
