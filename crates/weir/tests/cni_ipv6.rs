//! Dual-stack containers through the CNI plugin: `weir cni` run as a
//! runtime runs it, in a namespace standing in for the host, for containers
//! (network namespaces) the test makes; alone (`"agent": false`) and with a
//! `weir agent` on the pod path.

mod common;

use std::collections::HashSet;
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use common::cni_host::*;
use common::*;
use serde_json::{json, Value};

fn attach(id: &str, ns: &str) -> Vec<(&'static str, String)> {
    vec![("CNI_CONTAINERID", id.to_string()), ("CNI_NETNS", format!("/run/netns/{ns}")), ("CNI_IFNAME", "eth0".into())]
}

fn run(host: &CniHost, command: &str, env: &[(&'static str, String)], conf: &Value) -> (bool, Value, String) {
    run_in(&host.netns, command, env, conf)
}

fn run_in(netns: &str, command: &str, env: &[(&'static str, String)], conf: &Value) -> (bool, Value, String) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_plugin(netns, std::path::Path::new("/usr/lib/cni"), command, &env, conf)
}

/// ADD of a fresh container `id`: its namespace and the result.
fn add(host: &CniHost, id: &str, conf: &Value) -> (String, Value) {
    let ns = host.container_netns("cni6c");
    let (ok, result, stderr) = run(host, "ADD", &attach(id, &ns), conf);
    assert!(ok, "ADD {id}: {result} {stderr}");
    (ns, result)
}

fn del(host: &CniHost, id: &str, ns: &str, conf: &Value) {
    let (ok, out, stderr) = run(host, "DEL", &attach(id, ns), conf);
    assert!(ok, "DEL {id}: {out} {stderr}");
}

/// The address (no prefix) of the result's `index`th ip.
fn address(result: &Value, index: usize) -> IpAddr {
    let text = result["ips"][index]["address"].as_str().unwrap_or_else(|| panic!("no ips[{index}]: {result}"));
    text.split('/').next().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("{text}"))
}

/// `ip ARGS` in `netns`, its output (empty when it failed).
fn ip_in(netns: &str, args: &[&str]) -> String {
    weir_host::iproute::ip(Some(netns), args).unwrap_or_default()
}

/// The addresses Weir's IPAM has on record in `dir` for `network`.
fn ipam_records(dir: &std::path::Path, network: &str) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = std::fs::read_dir(dir.join(network))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    out.sort();
    out
}

fn pings(netns: &str, target: IpAddr) -> bool {
    Command::new("ip")
        .args(["netns", "exec", netns, "ping", "-c", "1", "-W", "1", &target.to_string()])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn weir_conf(host: &CniHost, version: &str, subnet6: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "weir6",
        "type": "weir-cni",
        "subnet": host.subnet,
        "subnet6": subnet6,
        "dataDir": host.dir.join("ipam"),
        "agent": false,
    })
}

#[test]
fn cni_dual_stack_results_check_and_del() {
    if !privileged("cni_dual_stack_results_check_and_del") {
        return;
    }
    let host = CniHost::new("cni6h", "10.78.0.0/24");
    host.add_ipv6_uplink();
    let conf = weir_conf(&host, "1.1.0", "fd00:78::/64");
    let (a_ns, a) = add(&host, "a", &conf);
    assert_eq!(a["cniVersion"], "1.1.0");
    let host_veth = a["interfaces"][0]["name"].as_str().expect("host veth").to_string();
    assert_eq!(a["interfaces"][1]["name"], "eth0", "{a}");
    assert_eq!(a["interfaces"][1]["sandbox"], format!("/run/netns/{a_ns}"), "{a}");
    assert_eq!(
        a["ips"],
        json!([
            {"address": "10.78.0.2/32", "gateway": "10.78.0.1", "interface": 1},
            {"address": "fd00:78::2/128", "gateway": "fd00:78::1", "interface": 1},
        ]),
        "one address of each family, both on the container's interface"
    );
    assert_eq!(
        a["routes"],
        json!([
            {"dst": "10.78.0.1/32"},
            {"dst": "0.0.0.0/0", "gw": "10.78.0.1"},
            {"dst": "fd00:78::1/128"},
            {"dst": "::/0", "gw": "fd00:78::1"},
        ])
    );
    // The address is usable once ADD returned: a tentative one (DAD) could not be bound.
    let a6: IpAddr = "fd00:78::2".parse().expect("valid");
    let listener = listen(&a_ns, a6);
    let container = ip_in(&a_ns, &["-6", "route", "show", "default"]);
    assert!(container.contains("via fd00:78::1 dev eth0"), "container's default route: {container}");
    let routed = ip_in(&host.netns, &["-6", "route", "show", "fd00:78::2/128"]);
    assert!(routed.contains(&format!("dev {host_veth}")), "host routes a's /128 to its veth: {routed}");
    let gateway = ip_in(&host.netns, &["-6", "addr", "show", "dev", &host_veth]);
    assert!(gateway.contains("fd00:78::1/128"), "the gateway sits on the host side: {gateway}");

    // The 0.4.0 result names each address's version.
    let old = weir_conf(&host, "0.4.0", "fd00:78::/64");
    let (b_ns, b) = add(&host, "b", &old);
    assert_eq!(
        b["ips"],
        json!([
            {"version": "4", "address": "10.78.0.3/32", "gateway": "10.78.0.1", "interface": 1},
            {"version": "6", "address": "fd00:78::3/128", "gateway": "fd00:78::1", "interface": 1},
        ])
    );
    // Containers reach each other over IPv6 through the host's routing.
    // The first connection: the host reaches a container at once (its
    // link-local address, the source of its neighbour solicitation, is usable).
    assert!(reaches(&b_ns, a6, &listener).is_some(), "b reaches a over IPv6");
    assert!(eventually(Duration::from_secs(20), || pings(&a_ns, address(&b, 1))), "a pings b over IPv6");

    // CHECK agrees with both families, and names the IPv6 address once it is gone.
    let mut check = conf.clone();
    check["prevResult"] = a.clone();
    let (ok, out, stderr) = run(&host, "CHECK", &attach("a", &a_ns), &check);
    assert!(ok, "CHECK: {out} {stderr}");
    weir_host::iproute::ip(Some(&a_ns), &["addr", "del", "fd00:78::2/128", "dev", "eth0"]).expect("ip addr del");
    let (ok, err, _) = run(&host, "CHECK", &attach("a", &a_ns), &check);
    assert!(!ok && err["code"] == 100, "{err}");
    assert!(err["msg"].as_str().unwrap_or_default().contains("fd00:78::2/128"), "{err}");
    // A prevResult with no IPv6 address does not match a dual-stack attachment.
    check["prevResult"]["ips"] = json!([a["ips"][0]]);
    let (ok, err, _) = run(&host, "CHECK", &attach("a", &a_ns), &check);
    assert!(!ok && err["code"] == 100, "{err}");
    assert!(err["msg"].as_str().unwrap_or_default().contains("IPAM holds IPv6 fd00:78::2"), "{err}");

    // DEL leaves no address, route or record behind; a second DEL succeeds.
    let records = ipam_records(&host.dir.join("ipam"), "weir6");
    assert_eq!(records.len(), 4, "two addresses each: {records:?}");
    del(&host, "a", &a_ns, &conf);
    del(&host, "b", &b_ns, &old);
    del(&host, "a", &a_ns, &conf);
    assert_eq!(ipam_records(&host.dir.join("ipam"), "weir6"), Vec::<IpAddr>::new());
    let routes = ip_in(&host.netns, &["-6", "route", "show"]);
    assert!(!routes.contains("fd00:78::"), "no container route is left: {routes}");
    assert!(ip_in(&host.netns, &["link", "show", &host_veth]).is_empty(), "{host_veth} is gone");
}

#[test]
fn cni_dual_stack_concurrent_adds_and_failed_adds_give_both_addresses_back() {
    if !privileged("cni_dual_stack_concurrent_adds_and_failed_adds_give_both_addresses_back") {
        return;
    }
    let host = CniHost::new("cni6p", "10.79.0.0/24");
    let conf = weir_conf(&host, "1.0.0", "fd00:79::/120");
    let namespaces: Vec<String> = (0..24).map(|_| host.container_netns("cni6c")).collect();
    let results: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = namespaces
            .iter()
            .map(|ns| {
                let (netns, conf) = (&host.netns, &conf);
                scope.spawn(move || {
                    let (ok, result, stderr) = run_in(netns, "ADD", &attach(ns, ns), conf);
                    assert!(ok, "ADD {ns}: {result} {stderr}");
                    result
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("ADD thread")).collect()
    });
    let v6: HashSet<IpAddr> = results.iter().map(|r| address(r, 1)).collect();
    assert_eq!(v6.len(), 24, "no IPv6 address handed out twice: {v6:?}");
    assert!(v6.iter().all(|a| a.is_ipv6()), "{v6:?}");
    let records = ipam_records(&host.dir.join("ipam"), "weir6");
    assert_eq!(records.iter().filter(|a| a.is_ipv6()).count(), 24, "{records:?}");
    // GC keeps the first twelve attachments' addresses, of both families, and releases the rest.
    let (kept, stale) = namespaces.split_at(12);
    let mut gc = conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] =
        kept.iter().map(|ns| json!({"containerID": ns, "ifname": "eth0"})).collect::<Value>();
    let (ok, out, stderr) = run(&host, "GC", &[], &gc);
    assert!(ok, "GC: {out} {stderr}");
    let records = ipam_records(&host.dir.join("ipam"), "weir6");
    let kept_addresses: HashSet<IpAddr> = results[..12].iter().flat_map(|r| [address(r, 0), address(r, 1)]).collect();
    assert_eq!(records.iter().copied().collect::<HashSet<_>>(), kept_addresses, "GC released both families");
    for ns in stale {
        let veth = weir_cni::plugin::host_veth_name("weir6", ns, "eth0");
        assert!(ip_in(&host.netns, &["link", "show", &veth]).is_empty(), "GC deleted {veth}");
    }
    for ns in kept {
        del(&host, ns, ns, &conf);
    }
    assert_eq!(ipam_records(&host.dir.join("ipam"), "weir6"), Vec::<IpAddr>::new());

    // An ADD that fails after the IPAM gave it both addresses gives both back:
    // here the container already has an eth0, so the veth cannot be made.
    let taken = host.container_netns("cni6c");
    weir_host::iproute::ip(Some(&taken), &["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"])
        .expect("an eth0 in the way");
    let (ok, err, _) = run(&host, "ADD", &attach("taken", &taken), &conf);
    assert!(!ok && err["code"] == 101, "{err}");
    assert_eq!(ipam_records(&host.dir.join("ipam"), "weir6"), Vec::<IpAddr>::new(), "both addresses given back");

    // A full IPv6 pool refuses the container, and takes no IPv4 address either.
    let small = json!({"subnet6": "fd00:79:1::/126", "name": "weir6small"});
    let mut small_conf = conf.clone();
    for (k, v) in small.as_object().expect("object") {
        small_conf[k] = v.clone();
    }
    let (one, _) = add(&host, "one", &small_conf);
    let (two, _) = add(&host, "two", &small_conf);
    let (ok, status, _) = run(&host, "STATUS", &[], &small_conf);
    assert!(!ok && status["code"] == 50, "no free IPv6 address: {status}");
    let three = host.container_netns("cni6c");
    let (ok, err, _) = run(&host, "ADD", &attach("three", &three), &small_conf);
    assert!(!ok && err["code"] == 102, "{err}");
    assert!(err["msg"].as_str().unwrap_or_default().contains("fd00:79:1::/126"), "{err}");
    assert_eq!(ipam_records(&host.dir.join("ipam"), "weir6small").len(), 4, "one's and two's, nothing of three's");
    del(&host, "one", &one, &small_conf);
    del(&host, "two", &two, &small_conf);
    assert_eq!(ipam_records(&host.dir.join("ipam"), "weir6small"), Vec::<IpAddr>::new());
}

#[test]
fn cni_dual_stack_from_host_local_ranges_of_both_families() {
    if !privileged("cni_dual_stack_from_host_local_ranges_of_both_families") {
        return;
    }
    let host = CniHost::new("cni6l", "10.80.0.0/24");
    let ipam_dir = host.dir.join("host-local");
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "weir6hl",
        "type": "weir-cni",
        "agent": false,
        "ipam": {"type": "host-local", "dataDir": ipam_dir, "ranges": [
            [{"subnet": "10.80.0.0/24", "gateway": "10.80.0.1"}],
            [{"subnet": "fd00:80::/64", "gateway": "fd00:80::1"}],
        ]},
    });
    let (ns, result) = add(&host, "hl", &conf);
    let ips = result["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 2, "{result}");
    assert_eq!(ips[1]["gateway"], "fd00:80::1");
    assert_eq!(ips[1]["interface"], 1);
    let v6 = address(&result, 1);
    assert!(ips[1]["address"].as_str().expect("address").ends_with("/128"), "{result}");
    assert!(ipam_dir.join("weir6hl").join(v6.to_string()).exists(), "host-local recorded {v6}");
    let listener = listen(&ns, v6);
    assert!(reaches(&host.netns, v6, &listener).is_some(), "the host reaches the container over IPv6");
    let mut check = conf.clone();
    check["prevResult"] = result.clone();
    let (ok, out, stderr) = run(&host, "CHECK", &attach("hl", &ns), &check);
    assert!(ok, "CHECK: {out} {stderr}");
    del(&host, "hl", &ns, &conf);
    assert!(!ipam_dir.join("weir6hl").join(v6.to_string()).exists(), "host-local released {v6}");
}

/// The IPv6 address the agent recorded for the endpoint on `veth` (its
/// `cni-endpoints` record); None when it has no record or no IPv6 address.
fn recorded_ipv6(host: &CniHost, veth: &str) -> Option<IpAddr> {
    let text = std::fs::read(host.dir.join("state/cni-endpoints").join(format!("{veth}.json"))).ok()?;
    let record: Value = serde_json::from_slice(&text).expect("record");
    record["ipv6"].as_str()?.parse().ok()
}

#[test]
fn dual_stack_containers_are_the_agents_pods_under_ipv6_network_policy() {
    if !privileged("dual_stack_containers_are_the_agents_pods_under_ipv6_network_policy") {
        return;
    }
    let host = CniHost::new("cni6a", "10.81.0.0/24");
    host.add_ipv6_uplink();
    let outside = host.outside();
    let node = format!("host-1=192.0.2.10,{HOST_IPV6}");
    let mut agent = host.start_agent_with(&["--cluster-node", &node]);
    let socket = host.socket_text();
    let conf = |app: &str| {
        json!({
            "cniVersion": "1.1.0",
            "name": "weir6",
            "type": "weir-cni",
            "subnet": host.subnet,
            "subnet6": "fd00:81::/64",
            "dataDir": host.dir.join("ipam"),
            "agentSocket": host.socket,
            "args": {"cni": {"labels": [{"key": "app", "value": app}]}},
        })
    };
    let add_pod = |pod: &str| {
        let ns = host.container_netns("cni6c");
        let mut env = attach(pod, &ns);
        env.push(("CNI_ARGS", format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}")));
        let (ok, result, stderr) = run(&host, "ADD", &env, &conf(pod));
        assert!(ok, "ADD {pod}: {result} {stderr}");
        (ns, address(&result, 0), address(&result, 1))
    };
    let (web, _, web6) = add_pod("web");
    let (db, db4, db6) = add_pod("db");
    let (other, _, other6) = add_pod("other");
    let web_veth = weir_cni::plugin::host_veth_name("weir6", "web", "eth0");
    assert_eq!(recorded_ipv6(&host, &web_veth), Some(web6), "the agent has web's IPv6 address");

    // An endpoint whose IPv6 address is already a pod's is refused, naming the pod.
    let refused = tokio::runtime::Runtime::new().expect("runtime").block_on(async {
        let mut client: weir_proto::agent::v1::endpoints_client::EndpointsClient<_> =
            weir_agent::client::connect(host.socket.clone()).await.expect("connect");
        client
            .endpoint_add(weir_proto::agent::v1::EndpointAddRequest {
                host_interface: "uplink0".into(),
                namespace: "default".into(),
                name: "impostor".into(),
                ip: "10.81.0.200".into(),
                ipv6: db6.to_string(),
                container_mac: "02:00:00:00:00:01".into(),
                ..Default::default()
            })
            .await
            .expect_err("refused")
    });
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    assert!(refused.message().contains(&format!("ipv6 {db6}: already the address of pod default/db")), "{refused}");
    assert_eq!(policy_endpoints(&socket).len(), 3, "nothing of the impostor's is kept");

    let db_listener6 = listen(&db, db6);
    let db_listener4 = listen(&db, db4);
    assert_eq!(reaches(&web, db6, &db_listener6), Some(web6), "web reaches db over IPv6, unmasqueraded");
    assert!(reaches(&other, db6, &db_listener6).is_some(), "no policy yet: other reaches db");

    // A policy on db admitting app=web: other is refused over IPv6 (and IPv4).
    let policy = host.dir.join("db-in.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: db-in, namespace: default}}\nspec:\n  podSelector: {{matchLabels: {{app: db}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: web}}}}}}]\n    ports: [{{port: {PORT}}}]\n"
        ),
    )
    .expect("policy");
    weir_ok(&["apply", "-f", &policy.to_string_lossy(), "--socket", &socket]);
    assert!(reaches(&web, db6, &db_listener6).is_some(), "app=web still reaches db over IPv6");
    assert!(reaches(&other, db6, &db_listener6).is_none(), "app=other is refused over IPv6");
    assert!(reaches(&other, db4, &db_listener4).is_none(), "and over IPv4");

    // An ipBlock of other's IPv6 /128 admits it over IPv6 only.
    let block = host.dir.join("db-block.yaml");
    std::fs::write(
        &block,
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: db-block, namespace: default}}\nspec:\n  podSelector: {{matchLabels: {{app: db}}}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: \"{other6}/128\"}}}}]\n"
        ),
    )
    .expect("policy");
    weir_ok(&["apply", "-f", &block.to_string_lossy(), "--socket", &socket]);
    assert!(
        eventually(Duration::from_secs(10), || reaches(&other, db6, &db_listener6).is_some()),
        "the ipBlock admits other over IPv6"
    );
    assert!(reaches(&other, db4, &db_listener4).is_none(), "other is still refused over IPv4");

    // To the outside, a container's IPv6 flow leaves as the node's IPv6 address.
    let outside6: IpAddr = OUTSIDE_IPV6.parse().expect("valid");
    let out_listener = listen(&outside, outside6);
    let seen = reaches(&web, outside6, &out_listener);
    assert_eq!(seen, Some(HOST_IPV6.parse().expect("valid")), "masqueraded as the node");

    // Restarted after a SIGKILL, the agent serves the containers' IPv6
    // addresses again from its records: the pod selector admits web's, the
    // ipBlock other's, over IPv6 only.
    agent.0.kill().expect("SIGKILL");
    let _ = agent.0.wait();
    let _agent = host.start_agent_with(&["--cluster-node", &node]);
    for file in [&policy, &block] {
        weir_ok(&["apply", "-f", &file.to_string_lossy(), "--socket", &socket]);
    }
    assert!(
        eventually(Duration::from_secs(10), || reaches(&web, db6, &db_listener6).is_some()),
        "web reaches db over IPv6 after the restart"
    );
    assert!(reaches(&other, db6, &db_listener6).is_some(), "the ipBlock still admits other over IPv6");
    assert!(reaches(&other, db4, &db_listener4).is_none(), "other is still refused over IPv4");

    // DEL: no endpoint, address or route of web's is left.
    let (ok, out, stderr) = run(&host, "DEL", &attach("web", &web), &conf("web"));
    assert!(ok, "DEL: {out} {stderr}");
    assert!(!policy_endpoints(&socket).iter().any(|e| e == "default/web"), "web is forgotten");
    assert_eq!(recorded_ipv6(&host, &web_veth), None);
    let routes = ip_in(&host.netns, &["-6", "route", "show"]);
    assert!(!routes.contains(&web6.to_string()), "no route to web's /128 is left: {routes}");
    assert!(ip_in(&host.netns, &["link", "show", &web_veth]).is_empty(), "{web_veth} is gone");
    let records = ipam_records(&host.dir.join("ipam"), "weir6");
    assert!(!records.contains(&web6), "web's IPv6 address is released: {records:?}");
    assert!(records.contains(&other6) && records.contains(&db6), "{records:?}");
    assert_eq!(std::fs::read_dir(host.dir.join("state/cni-endpoints")).expect("records").count(), 2);
}
