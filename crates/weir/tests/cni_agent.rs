//! The CNI plugin handing containers to a host agent: a `weir agent` with
//! the pod path in a network namespace standing in for the host, and
//! `weir-cni` run in it as a runtime runs it, for containers (network
//! namespaces) the test makes.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use common::cni_host::*;
use common::*;
use serde_json::{json, Value};

const SUBNET: &str = "10.77.0.0/24";

#[test]
fn containers_added_through_the_plugin_are_the_agents_pods_under_network_policy() {
    if !privileged("containers_added_through_the_plugin_are_the_agents_pods_under_network_policy") {
        return;
    }
    let host_setup = CniHost::new("cnihost", SUBNET);
    let (name, dir, socket) = (host_setup.netns.clone(), host_setup.dir.clone(), host_setup.socket.clone());
    let socket_text = socket.to_string_lossy().into_owned();
    let start_agent = || host_setup.start_agent();
    let mut agent = start_agent();

    let conf = |app: &str| {
        json!({
            "cniVersion": "1.1.0",
            "name": "weirnet",
            "type": "weir-cni",
            "subnet": SUBNET,
            "dataDir": dir.join("ipam"),
            "agentSocket": socket,
            "args": {"cni": {"labels": [{"key": "app", "value": app}]}},
        })
    };
    let add = |pod: &str| -> (String, Ipv4Addr, Value) {
        let ns = host_setup.container_netns("cnipod");
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}");
        let env = [
            ("CNI_CONTAINERID", pod),
            ("CNI_NETNS", &format!("/run/netns/{ns}")),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", &args),
        ]
        .map(|(k, v)| (k, v.to_string()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (ok, result, stderr) = run_plugin(&host_setup.netns, &dir, "ADD", &env, &conf(pod));
        assert!(ok, "ADD {pod}: {result} {stderr}");
        let address = result["ips"][0]["address"].as_str().expect("address");
        (ns, address.trim_end_matches("/32").parse().expect("ip"), result)
    };
    let (web, _, web_result) = add("web");
    let (db, db_ip, _) = add("db");
    let (other, _, other_result) = add("other");
    let endpoints = policy_endpoints(&socket_text);
    for pod in ["default/web", "default/db", "default/other"] {
        assert!(endpoints.iter().any(|e| e == pod), "{pod} is an endpoint once ADD returned: {endpoints:?}");
    }
    // An address already a pod's is refused, naming the pod; nothing
    // changes, not even the host port it asked for.
    let web_ip = policy_endpoint_ip(&socket_text, "default/web");
    let endpoint_add = |ip: Ipv4Addr, host_ip: &str| {
        tokio::runtime::Runtime::new().expect("runtime").block_on(async {
            let mut client: weir_proto::agent::v1::endpoints_client::EndpointsClient<_> =
                weir_agent::client::connect(socket.clone()).await.expect("connect");
            client
                .endpoint_add(weir_proto::agent::v1::EndpointAddRequest {
                    host_interface: "uplink0".into(),
                    namespace: "default".into(),
                    name: "impostor".into(),
                    ip: ip.to_string(),
                    container_mac: "02:00:00:00:00:01".into(),
                    port_mappings: vec![weir_proto::agent::v1::PortMapping {
                        host_port: 8082,
                        container_port: 80,
                        protocol: "tcp".into(),
                        host_ip: host_ip.into(),
                    }],
                    ..Default::default()
                })
                .await
                .expect_err("refused")
        })
    };
    let host_ports = || {
        let list: Value =
            serde_json::from_str(&weir_ok(&["service", "list", "--socket", &socket_text, "-o", "json"])).expect("json");
        list.as_array().into_iter().flatten().filter(|fe| fe["kind"] == "HostPort").count()
    };
    let refused = endpoint_add(web_ip, "");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    assert!(refused.message().contains("default/web"), "{refused}");
    assert_eq!(policy_endpoints(&socket_text).len(), 3);
    assert_eq!(host_ports(), 0, "the refused endpoint's host port was taken down again");
    // A host port on an address that is not the node's is refused, named.
    let refused = endpoint_add(Ipv4Addr::new(10, 77, 0, 200), "203.0.113.1");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    assert!(refused.message().contains("hostIP 203.0.113.1 is not an address of this node"), "{refused}");
    assert_eq!((policy_endpoints(&socket_text).len(), host_ports()), (3, 0));

    let policy = dir.join("db-in.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: db-in, namespace: default}}\nspec:\n  podSelector: {{matchLabels: {{app: db}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: web}}}}}}]\n    ports: [{{port: {PORT}}}]\n"
        ),
    )
    .expect("policy");
    weir_ok(&["apply", "-f", &policy.to_string_lossy(), "--socket", &socket_text]);
    let listener = listen(&db, db_ip);
    assert!(reaches(&web, db_ip, &listener).is_some(), "app=web reaches app=db");
    assert!(reaches(&other, db_ip, &listener).is_none(), "app=other is refused");
    let mut drop_seen = Value::Null;
    assert!(
        eventually(Duration::from_secs(10), || {
            let out = weir_ok(&[
                "observe",
                "--socket",
                &socket_text,
                "--last",
                "100",
                "--verdict",
                "dropped",
                "-o",
                "weir-json",
            ]);
            drop_seen = out
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|f| f["source"]["pod"] == "other" && f["destination"]["pod"] == "db")
                .unwrap_or(Value::Null);
            !drop_seen.is_null()
        }),
        "weir observe shows other -> db dropped"
    );
    assert_eq!(drop_seen["destination"]["namespace"], "default", "{drop_seen}");
    assert_eq!(drop_seen["destination"]["labels"]["app"], "db", "{drop_seen}");
    assert_eq!(drop_seen["destinationPort"], PORT, "{drop_seen}");

    // A container whose namespace went without a DEL (its veth with it) and
    // is added again under the same id gets a veth of the same name: the
    // datapath runs on the new one, not on the index that died.
    let host_veth = |result: &Value| -> String {
        let interfaces = result["interfaces"].as_array().into_iter().flatten();
        let host_side = interfaces.clone().find(|i| i.get("sandbox").is_none());
        host_side.and_then(|i| i["name"].as_str()).expect("the host side's interface").to_string()
    };
    let veth = host_veth(&other_result);
    weir_host::iproute::ip(None, &["netns", "del", &other]).expect("the namespace goes");
    let (other, _, again) = add("other");
    assert_eq!(host_veth(&again), veth, "the same id, the same veth");
    let link: Value =
        serde_json::from_str(&weir_host::iproute::ip(Some(&name), &["-j", "link", "show", &veth]).expect("veth"))
            .expect("json");
    let index = link[0]["ifindex"].as_u64().expect("ifindex");
    let status: Value =
        serde_json::from_str(&weir_ok(&["status", "--socket", &socket_text, "-o", "json"])).expect("json");
    let on_veth: Vec<&Value> =
        status["attachments"].as_array().into_iter().flatten().filter(|a| a["interface"] == veth.as_str()).collect();
    assert_eq!(on_veth.len(), 2, "tc ingress and egress on {veth}: {on_veth:?}");
    for a in on_veth {
        assert_eq!((a["ifindex"].as_u64(), a["attached"].as_bool()), (Some(index), Some(true)), "{a}");
    }
    assert!(reaches(&other, db_ip, &listener).is_none(), "app=other is still refused");

    // DEL: the agent forgets the endpoint, and a second DEL succeeds.
    let db_env = [("CNI_CONTAINERID", "db"), ("CNI_NETNS", ""), ("CNI_IFNAME", "eth0")];
    for round in ["first", "second"] {
        let (ok, out, stderr) = run_plugin(&host_setup.netns, &dir, "DEL", &db_env, &conf("db"));
        assert!(ok, "{round} DEL: {out} {stderr}");
    }
    let endpoints = policy_endpoints(&socket_text);
    assert!(!endpoints.iter().any(|e| e == "default/db"), "db is forgotten: {endpoints:?}");
    assert_eq!(std::fs::read_dir(dir.join("state/cni-endpoints")).expect("records").count(), 2, "web's and other's");

    // The agent away: ADD waits, then answers 11 naming the socket, and
    // leaves no veth behind.
    agent.0.kill().expect("SIGKILL");
    let _ = agent.0.wait();
    let late = host_setup.container_netns("cnipod");
    let late_path = format!("/run/netns/{late}");
    let late_env = [("CNI_CONTAINERID", "late"), ("CNI_NETNS", late_path.as_str()), ("CNI_IFNAME", "eth0")];
    let (ok, err, _) = run_plugin(&host_setup.netns, &dir, "ADD", &late_env, &conf("late"));
    assert!(!ok, "ADD without an agent fails");
    assert_eq!(err["code"], 11, "{err}");
    assert!(err["msg"].as_str().unwrap_or_default().contains(&socket_text), "{err}");
    let veth = weir_cni::plugin::host_veth_name("weirnet", "late", "eth0");
    assert!(weir_host::iproute::ip(Some(&name), &["link", "show", &veth]).is_err(), "{veth} was removed");

    // Restarted, the agent still has the containers it was given.
    let _agent = start_agent();
    let endpoints = policy_endpoints(&socket_text);
    assert!(
        endpoints.iter().any(|e| e == "default/web") && endpoints.iter().any(|e| e == "default/other"),
        "{endpoints:?}"
    );
    let other_ip = policy_endpoint_ip(&socket_text, "default/other");
    let listener = listen(&other, other_ip);
    assert!(reaches(&web, other_ip, &listener).is_some(), "web still reaches other after the restart");

    // GC: an attachment no longer valid is forgotten by the agent too.
    let mut gc = conf("any");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "web", "ifname": "eth0"}]);
    let (ok, out, stderr) = run_plugin(&host_setup.netns, &dir, "GC", &[], &gc);
    assert!(ok, "GC: {out} {stderr}");
    let endpoints = policy_endpoints(&socket_text);
    assert!(!endpoints.iter().any(|e| e == "default/other"), "other is collected: {endpoints:?}");
    assert!(endpoints.iter().any(|e| e == "default/web"), "web stays: {endpoints:?}");
    assert_eq!(std::fs::read_dir(dir.join("state/cni-endpoints")).expect("records").count(), 1, "web's");

    // CHECK asks the agent: web is there; once the agent has lost it (its
    // record gone, the agent restarted), CHECK is error 100 naming the veth.
    let mut check = conf("web");
    check["prevResult"] = web_result;
    let web_path = format!("/run/netns/{web}");
    let web_env = [("CNI_CONTAINERID", "web"), ("CNI_NETNS", web_path.as_str()), ("CNI_IFNAME", "eth0")];
    let (ok, out, stderr) = run_plugin(&host_setup.netns, &dir, "CHECK", &web_env, &check);
    assert!(ok, "CHECK web: {out} {stderr}");
    drop(_agent);
    let web_veth = weir_cni::plugin::host_veth_name("weirnet", "web", "eth0");
    std::fs::remove_file(dir.join(format!("state/cni-endpoints/{web_veth}.json"))).expect("web's record");
    let _agent = start_agent();
    let (ok, err, _) = run_plugin(&host_setup.netns, &dir, "CHECK", &web_env, &check);
    assert!(!ok, "CHECK of an endpoint the agent lost fails");
    assert_eq!(err["code"], 100, "{err}");
    let msg = err["msg"].as_str().unwrap_or_default();
    assert!(msg.contains(&format!("has no endpoint on {web_veth}")) && msg.contains(&socket_text), "{err}");
}

#[test]
fn gc_with_delegated_ipam_has_the_agent_forget_only_this_networks_stale_endpoints() {
    if !privileged("gc_with_delegated_ipam_has_the_agent_forget_only_this_networks_stale_endpoints") {
        return;
    }
    let host = CniHost::new("cnigc", "10.76.0.0/24");
    let _agent = host.start_agent();
    let socket = host.socket_text();
    // host-local keeps its own records: only the agent can say which
    // endpoints a network has.
    let cni_path = Path::new("/usr/lib/cni");
    let conf = |network: &str, subnet: &str| {
        json!({
            "cniVersion": "1.0.0", "name": network, "type": "weir-cni", "agentSocket": host.socket,
            "ipam": {"type": "host-local", "dataDir": host.dir.join("host-local"), "ranges": [[{"subnet": subnet}]]},
        })
    };
    let (net1, net2) = (conf("gcnet", "10.76.0.0/25"), conf("othernet", "10.76.0.128/25"));
    let run = |command: &str, id: &str, ns: &str, conf: &Value| {
        let netns = format!("/run/netns/{ns}");
        let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={id}");
        let env = [("CNI_CONTAINERID", id), ("CNI_NETNS", &netns), ("CNI_IFNAME", "eth0"), ("CNI_ARGS", &args)];
        let (ok, result, stderr) = run_plugin(&host.netns, cni_path, command, &env, conf);
        assert!(ok, "{command} {id}: {result} {stderr}");
    };
    let mut namespaces = Vec::new();
    for (id, conf) in [("a", &net1), ("b", &net1), ("c", &net2)] {
        let ns = host.container_netns("cnigc");
        run("ADD", id, &ns, conf);
        namespaces.push(ns);
    }
    let wcni = || {
        let links = weir_host::iproute::ip(Some(&host.netns), &["-o", "link", "show"]).unwrap_or_default();
        links.lines().filter(|l| l.contains(": wcni")).count()
    };
    assert_eq!(wcni(), 3, "a veth each");
    // GC is CNI 1.1's (Debian's host-local speaks up to 1.0.0, so it is
    // not passed on: the addresses stay with it).
    let mut gc = net1.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
    let (ok, result, stderr) = run_plugin(&host.netns, cni_path, "GC", &[], &gc);
    assert!(ok, "GC: {result} {stderr}");
    let endpoints = policy_endpoints(&socket);
    assert!(endpoints.contains(&"default/a".to_string()), "a is valid: {endpoints:?}");
    assert!(!endpoints.contains(&"default/b".to_string()), "b is stale: forgotten: {endpoints:?}");
    assert!(endpoints.contains(&"default/c".to_string()), "c is another network's: kept: {endpoints:?}");
    assert_eq!(wcni(), 2, "b's veth is gone");
    run("DEL", "a", &namespaces[0], &net1);
    run("DEL", "c", &namespaces[2], &net2);
    assert!(policy_endpoints(&socket).is_empty(), "nothing left");
}
