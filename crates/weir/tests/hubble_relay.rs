//! `weir relay` over three nodes, as a Hubble client sees it: the agents'
//! Peer service lists the cluster; the relay answers GetFlows for every node
//! in time order, cut to `number` over all of them; a killed agent is a
//! NODE_UNAVAILABLE event to followers and an unavailable node in
//! ServerStatus, and when it returns its flows reach the follower again.
//! `weir observe`, a Hubble client, reads the same with hubble observe's flags.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::hubble_client::*;
use common::*;
use serde_json::{json, Value};

/// The relay, killed when the test ends however it ends.
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn three_node_spec(name: &str) -> String {
    two_node_spec(name)
        .replace("routing: kernel", "routing: weir")
        .replace(
            "    - name: node-b\n      podCIDR: 10.244.1.0/24\n",
            "    - name: node-b\n      podCIDR: 10.244.1.0/24\n    - name: node-c\n      podCIDR: 10.244.2.0/24\n",
        )
        .replace(
            "  externalHosts:\n",
            "    - name: cache\n      namespace: backend\n      node: node-c\n      labels: {app: cache}\n  externalHosts:\n",
        )
}

fn connect(netns: &str, to: Ipv4Addr, port: u16) -> bool {
    weir_host::netns::run_in(netns, || {
        TcpStream::connect_timeout(&SocketAddr::from((to, port)), Duration::from_millis(700)).is_ok()
    })
    .expect("netns")
}

fn time_of(response: &Value) -> String {
    response["time"].as_str().unwrap_or_default().to_string()
}

/// Waits for a line of `lines` that `wanted` accepts, up to `deadline`.
fn wait_line(lines: &mpsc::Receiver<Value>, deadline: Duration, wanted: impl Fn(&Value) -> bool) -> Option<Value> {
    let end = Instant::now() + deadline;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) if wanted(&line) => return Some(line),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

fn names(event: &Value) -> Vec<String> {
    let mut names: Vec<String> = event["node_status"]["node_names"]
        .as_array()
        .map(|a| a.iter().filter_map(|n| n.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn the_relay_merges_every_node_and_reports_a_killed_agent() {
    if !privileged("hubble relay") {
        return;
    }
    let name = unique_name("relay");
    let hubble_listen = "--agent-arg=--hubble-listen=0.0.0.0:4244";
    let lab = TestLab::up_with(&name, &three_node_spec(&name), true, &[hubble_listen]);
    let plan = lab.plan();
    let pod = |n: &str| plan.pod(n).expect("pod").clone();
    let (web, api, cache) = (pod("frontend/web"), pod("backend/api"), pod("backend/cache"));
    let node = |n: &str| plan.node(n).expect("node").clone();
    let (node_a, node_c) = (node("node-a"), node("node-c"));
    let dir = std::env::temp_dir().join(format!("{name}-client"));
    generate_client(&dir);
    let socket = format!("unix://{}", node_a.agent.socket.display());

    // The Peer service lists every node where it serves Hubble's API.
    let local = Client { dir: dir.clone(), netns: None };
    let peers = local.lines(&["peers", &socket, "3"]);
    let listed: Vec<(String, String, String)> = peers
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").into(),
                p["address"].as_str().unwrap_or("").into(),
                p["type"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String)> = ["node-a", "node-b", "node-c"]
        .iter()
        .map(|n| (n.to_string(), format!("{}:4244", node(n).address), "PEER_ADDED".to_string()))
        .collect();
    assert_eq!(listed, expected, "{peers:?}");

    // The relay, inside node-a, dialling the others over the fabric.
    let relay = Relay(
        Command::new("ip")
            .args(["netns", "exec", &node_a.netns, env!("CARGO_BIN_EXE_weir"), "relay"])
            .args(["--listen-address", "127.0.0.1:4245", "--peer-service", &socket])
            .args(["--retry-timeout", "300ms", "--dial-timeout", "2s", "--sort-buffer-drain-timeout", "200ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("weir relay"),
    );
    let client = Client { dir: dir.clone(), netns: Some(node_a.netns.clone()) };
    let target = "127.0.0.1:4245";
    let connected_nodes = |want: u64| {
        eventually(Duration::from_secs(30), || {
            let out = client.command(&["status", target]).output().expect("python3");
            let line = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").to_string();
            serde_json::from_str::<Value>(&line).is_ok_and(|s| s["status"]["num_connected_nodes"] == want)
        })
    };
    assert!(connected_nodes(3), "the relay reaches all three nodes");

    // Traffic seen on every node: web (a) -> api (b), api (b) -> cache (c), cache (c) -> web (a).
    let _listeners: Vec<TcpListener> = [(&api, 8080), (&cache, 9000), (&web, 7000)]
        .iter()
        .map(|(p, port)| {
            weir_host::netns::run_in(&p.netns, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, *port)))
                .expect("netns")
                .expect("listen")
        })
        .collect();
    assert!(connect(&web.netns, api.ip, 8080));
    assert!(connect(&api.netns, cache.ip, 9000));
    assert!(connect(&cache.netns, web.ip, 7000));

    // A finished request: every node, in time order.
    let all = client.flows(target, json!({}));
    let flows = flows_of(&all);
    let from: std::collections::BTreeSet<&str> = flows.iter().filter_map(|f| f["node_name"].as_str()).collect();
    assert_eq!(from.into_iter().collect::<Vec<_>>(), vec!["node-a", "node-b", "node-c"], "{all:?}");
    let times: Vec<String> = all.iter().filter(|r| r.get("flow").is_some()).map(time_of).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "flows in time order across nodes");
    // `number` counts over all nodes: the last five of everything.
    let last = client.flows(target, json!({"number": 5}));
    let last_times: Vec<String> = last.iter().filter(|r| r.get("flow").is_some()).map(time_of).collect();
    assert_eq!(last_times, times[times.len() - 5..].to_vec(), "{last:?}");
    // Filters reach every node.
    let to_cache = client.flows(target, json!({"whitelist": [{"destination_pod": ["backend/cache"]}]}));
    assert!(!flows_of(&to_cache).is_empty());
    assert!(flows_of(&to_cache).iter().all(|f| f["destination"]["pod_name"] == "cache"), "{to_cache:?}");
    let refused = client.flows(target, json!({"first": true, "follow": true}));
    assert_eq!(refused[0]["error"], "INVALID_ARGUMENT", "{refused:?}");

    // `weir observe` is a Hubble client with hubble observe's flags, over
    // every node of the lab (merged here) or a server such as the relay.
    let observe = |args: &[&str]| weir_ok(&[&["observe", "--lab", &name], args].concat());
    let compact = observe(&["--last", "100", "-o", "compact", "--from-pod", "frontend/web"]);
    assert!(!compact.trim().is_empty(), "web's flows");
    for line in compact.lines() {
        assert!(line.contains(": frontend/web:") && line.contains(" -> "), "{line}");
    }
    let not_web: Vec<Value> = observe(&["--last", "100", "-o", "jsonpb", "--not", "--from-pod", "frontend/web"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert!(!flows_of(&not_web).is_empty(), "the others' flows");
    assert!(flows_of(&not_web).iter().all(|f| f["source"]["pod_name"] != "web"), "{not_web:?}");
    let table = observe(&["--last", "100", "-o", "table", "--to-port", "9000", "--print-node-name"]);
    let mut rows = table.lines();
    assert!(rows.next().is_some_and(|h| h.starts_with("TIMESTAMP") && h.contains("NODE")), "{table}");
    let rows: Vec<&str> = rows.collect();
    assert!(!rows.is_empty() && rows.iter().all(|r| r.contains("backend/cache:9000")), "{table}");
    let since = times[1].clone();
    let window: Vec<Value> = observe(&["--since", &since, "--until", &times[times.len() - 1], "-o", "jsonpb"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(flows_of(&window).len(), times.len() - 1, "since the second flow, until the last: {window:?}");
    let through_relay = Command::new("ip")
        .args(["netns", "exec", &node_a.netns, env!("CARGO_BIN_EXE_weir"), "observe", "--server", target])
        .args(["--last", "3", "-o", "jsonpb"])
        .output()
        .expect("weir observe --server");
    assert!(through_relay.status.success(), "{}", String::from_utf8_lossy(&through_relay.stderr));
    let last3: Vec<Value> = String::from_utf8_lossy(&through_relay.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let last3_times: Vec<String> = last3.iter().filter(|r| r.get("flow").is_some()).map(time_of).collect();
    assert_eq!(last3_times, times[times.len() - 3..].to_vec(), "{last3:?}");
    for (args, says) in [
        (&["--not", "--last", "5"][..], "--not"),
        (&["--verdict", "maybe", "--last", "1"][..], "--verdict"),
        (&["--since", "yesterday"][..], "--since"),
        (&["--to-port", "http", "--last", "1"][..], "--to-port"),
    ] {
        let out = weir(&[&["observe", "--lab", &name], args].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{args:?}: {err}");
    }

    // A follower: told who is connected, then of node-c's agent dying and returning.
    let mut follower = client
        .command(&["flows", target, &json!({"follow": true, "number": 1}).to_string(), "180"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("follower");
    let (tx, lines) = mpsc::channel();
    let stdout = follower.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    let hello = wait_line(&lines, Duration::from_secs(30), |l| l.get("node_status").is_some()).expect("a node status");
    assert_eq!(hello["node_status"]["state_change"], "NODE_CONNECTED", "{hello}");
    assert_eq!(names(&hello), vec!["node-a", "node-b", "node-c"], "{hello}");
    // GetNamespaces: those of every node's flows, once each, in order.
    let status = client.status(target);
    assert_eq!(
        status["namespaces"]["namespaces"],
        json!([{"namespace": "backend"}, {"namespace": "frontend"}]),
        "{status}"
    );

    let pid = weir_lab::runtime::agent_pid(&node_c).expect("node-c's agent");
    weir_host::process::kill(pid, libc::SIGKILL);
    let gone = wait_line(&lines, Duration::from_secs(30), |l| l["node_status"]["state_change"] == "NODE_UNAVAILABLE")
        .expect("the follower is told node-c is unavailable");
    assert_eq!(names(&gone), vec!["node-c"], "{gone}");
    eprintln!("{} flows from three nodes; node-c gone: {gone}", flows.len());
    let status = client.status(target);
    assert_eq!(status["status"]["num_connected_nodes"], 2, "{status}");
    assert_eq!(status["status"]["num_unavailable_nodes"], 1, "{status}");
    assert_eq!(status["status"]["unavailable_nodes"], json!(["node-c"]), "{status}");
    let unavailable: Vec<&Value> = status["nodes"]["nodes"]
        .as_array()
        .map(|n| n.iter().filter(|n| n["state"] == "NODE_UNAVAILABLE").collect())
        .unwrap_or_default();
    assert_eq!(unavailable.len(), 1, "{status}");
    assert_eq!(unavailable[0]["name"], "node-c", "{status}");
    // The others still answer.
    assert!(connect(&web.netns, api.ip, 8080));
    assert!(
        wait_line(&lines, Duration::from_secs(30), |l| l["flow"]["node_name"] == "node-b").is_some(),
        "node-b's flows still reach the follower"
    );

    let out = weir_ok(&["lab", "up", "-f", &lab.spec_path.to_string_lossy(), hubble_listen]);
    assert!(out.contains("agents started on: node-c"), "{out}");
    let back = wait_line(&lines, Duration::from_secs(60), |l| l["node_status"]["state_change"] == "NODE_CONNECTED")
        .expect("the follower is told node-c is back");
    assert_eq!(names(&back), vec!["node-c"], "{back}");
    assert!(connect(&cache.netns, web.ip, 7000));
    let resumed = wait_line(&lines, Duration::from_secs(30), |l| {
        l["flow"]["node_name"] == "node-c" && l["flow"]["destination"]["pod_name"] == "web"
    });
    assert!(resumed.is_some(), "node-c's new flows reach the follower");
    eprintln!("node-c back: {back}; resumed with {resumed:?}");
    assert!(connected_nodes(3), "ServerStatus counts node-c again");

    let _ = follower.kill();
    let _ = follower.wait();
    let _ = reader.join();
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_relay_serves_every_cluster_of_a_mesh() {
    if !privileged("hubble relay mesh") {
        return;
    }
    let base = unique_name("rmesh");
    let (name, east, west) = (base.clone(), format!("{base}e"), format!("{base}w"));
    let yaml = common::mesh::two_clusters(&name, &east, &["client", "api"], &west, &["client", "api"])
        .replace("routing: kernel", "routing: weir");
    let file = std::env::temp_dir().join(format!("{name}.mesh.yaml"));
    std::fs::write(&file, yaml).expect("writing the mesh");
    let _mesh = common::mesh::Mesh(name.clone());
    let up = weir(&["lab", "up", "-f", &file.to_string_lossy(), "--agent-arg=--hubble-listen=0.0.0.0:4244"]);
    let _ = std::fs::remove_file(&file);
    assert!(up.status.success(), "{up:?}");
    let east_plan = weir_lab::runtime::load_plan(&east).expect("east");
    let west_plan = weir_lab::runtime::load_plan(&west).expect("west");
    let (east_a, west_a) = (east_plan.nodes[0].clone(), west_plan.nodes[0].clone());
    let dir = std::env::temp_dir().join(format!("{name}-client"));
    generate_client(&dir);
    let _dir = RemoveOnDrop(dir.clone());

    // East's Peer service lists its own node and, once it has read west's
    // etcd, west's: each as cluster/node.
    let socket = format!("unix://{}", east_a.agent.socket.display());
    let local = Client { dir: dir.clone(), netns: None };
    let west_peer = (format!("{west}/{}", west_a.name), format!("{}:4244", west_a.address));
    let mut listed = Vec::new();
    let found = eventually(Duration::from_secs(60), || {
        listed = local
            .lines(&["peers", &socket, "2"])
            .iter()
            .map(|p| (p["name"].as_str().unwrap_or("").to_string(), p["address"].as_str().unwrap_or("").to_string()))
            .collect();
        listed.contains(&west_peer)
    });
    assert!(found, "west's node among east's peers: {listed:?}");
    assert!(listed.iter().any(|(n, _)| *n == format!("{east}/{}", east_a.name)), "{listed:?}");

    let _relay = Relay(
        Command::new("ip")
            .args(["netns", "exec", &east_a.netns, env!("CARGO_BIN_EXE_weir"), "relay"])
            .args(["--listen-address", "127.0.0.1:4245", "--peer-service", &socket])
            .args(["--retry-timeout", "300ms", "--dial-timeout", "2s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("weir relay"),
    );
    let client = Client { dir: dir.clone(), netns: Some(east_a.netns.clone()) };
    let target = "127.0.0.1:4245";
    let mut status = Value::Null;
    let both = eventually(Duration::from_secs(30), || {
        let out = client.command(&["status", target]).output().expect("python3");
        let line = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").to_string();
        status = serde_json::from_str::<Value>(&line).unwrap_or(Value::Null);
        status["status"]["num_connected_nodes"] == 2
    });
    assert!(both, "the relay reaches both clusters' nodes: {status}");

    // Traffic in each cluster: its client to its api.
    for plan in [&east_plan, &west_plan] {
        let (client_pod, api) = (plan.pod("shop/client").expect("client"), plan.pod("shop/api").expect("api"));
        let _listener = weir_host::netns::run_in(&api.netns, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8080)))
            .expect("netns")
            .expect("listen");
        assert!(connect(&client_pod.netns, api.ip, 8080));
    }
    let mut nodes = std::collections::BTreeSet::new();
    let merged = eventually(Duration::from_secs(30), || {
        let all = client.flows(target, json!({}));
        nodes = flows_of(&all).iter().filter_map(|f| f["node_name"].as_str().map(str::to_string)).collect();
        nodes.contains(&format!("{east}/{}", east_a.name)) && nodes.contains(&format!("{west}/{}", west_a.name))
    });
    assert!(merged, "flows of both clusters through one relay: {nodes:?}");
    let namespaces = client.status(target)["namespaces"]["namespaces"].clone();
    assert_eq!(
        namespaces,
        json!([{"cluster": east, "namespace": "shop"}, {"cluster": west, "namespace": "shop"}]),
        "each cluster's namespace once, by cluster"
    );
}

/// A directory removed on drop.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
