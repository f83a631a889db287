//! Hubble's Observer API, as a Hubble client sees it: a Python gRPC client
//! generated at test time from proto/hubble/ (Debian's python3-grpc-tools)
//! calls every agent method over the agent's unix socket and over
//! `--hubble-listen`'s TCP port, on a lab whose traffic includes policy drops.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Stdio;
use std::time::Duration;

use common::hubble_client::*;
use common::*;
use serde_json::{json, Value};

fn connect(netns: &str, to: Ipv4Addr, port: u16) -> bool {
    weir_host::netns::run_in(netns, || {
        TcpStream::connect_timeout(&SocketAddr::from((to, port)), Duration::from_millis(700)).is_ok()
    })
    .expect("netns")
}

fn udp_burst(netns: &str, to: Ipv4Addr, port: u16, count: usize) {
    weir_host::netns::run_in(netns, || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("udp");
        for _ in 0..count {
            let _ = socket.send_to(b"flood", (to, port));
        }
    })
    .expect("netns");
}

#[test]
fn a_hubble_client_reads_flows_status_and_nodes_from_the_agent() {
    if !privileged("hubble observer") {
        return;
    }
    let name = unique_name("hubble");
    // web is a Deployment's pod, as `kubectl get pod -o yaml` shows one:
    // Hubble names its workload from its ReplicaSet.
    let owned = "labels: {app: web, tier: frontend, pod-template-hash: 5d8f7c9b4}\n      generateName: web-5d8f7c9b4-\n      ownerReferences:\n      - {apiVersion: apps/v1, kind: ReplicaSet, name: web-5d8f7c9b4, uid: 0b5c3e51-8a4c-4a53-9a8e-2f1f0c6f3d11, controller: true, blockOwnerDeletion: true}";
    let spec = two_node_spec(&name)
        .replace("routing: kernel", "routing: weir")
        .replace("labels: {app: web, tier: frontend}", owned);
    let lab = TestLab::up_with(&name, &spec, true, &["--agent-arg=--hubble-listen=127.0.0.1:4244"]);
    let plan = lab.plan();
    let pod = |n: &str| plan.pod(n).expect("pod").clone();
    let (web, api, db) = (pod("frontend/web"), pod("backend/api"), pod("backend/db"));
    let node_b = plan.node("node-b").expect("node-b").clone();
    let dir = std::env::temp_dir().join(format!("{name}-client"));
    generate_client(&dir);
    let client = Client { dir: dir.clone(), netns: None };
    let socket = format!("unix:{}", node_b.agent.socket.display());

    let policy = std::env::temp_dir().join(format!("{name}-policy.yaml"));
    std::fs::write(
        &policy,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: backend}\nspec: {podSelector: {}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-to-api, namespace: backend}\nspec:\n  podSelector: {matchLabels: {app: api}}\n  ingress:\n  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 8080}]\n",
    )
    .expect("policy");
    weir_ok(&["apply", "--lab", &name, "-f", &policy.to_string_lossy()]);
    let _listener = weir_host::netns::run_in(&api.netns, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8080)))
        .expect("netns")
        .expect("listen");
    assert!(!connect(&web.netns, api.ip, 80), "port 80 is not allowed");
    assert!(connect(&web.netns, api.ip, 8080), "web reaches api on 8080");
    assert!(!connect(&web.netns, api.ip, 8081), "port 8081 is not allowed");

    // A follower: the ring's last flow to 8081 first (proof it is subscribed),
    // then the live ones.
    let follow = json!({"number": 1, "follow": true, "whitelist": [{"destination_port": ["8081"]}]});
    let mut follower = client
        .command(&["flows", &socket, &follow.to_string(), "60"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("follower");
    let mut followed = BufReader::new(follower.stdout.take().expect("stdout")).lines();
    let first: Value = serde_json::from_str(&followed.next().expect("a line").expect("read")).expect("json");
    assert_eq!(first["flow"]["source"]["pod_name"], "web", "{first}");
    assert!(!connect(&db.netns, api.ip, 8081));
    let live = followed
        .by_ref()
        .map(|l| serde_json::from_str::<Value>(&l.expect("read")).expect("json"))
        .find(|r| r["flow"]["source"]["pod_name"] == "db")
        .expect("the follower sees db's new flow");
    assert_eq!(live["flow"]["l4"]["TCP"]["destination_port"], 8081, "{live}");
    assert_eq!(live["node_name"], "node-b");
    let _ = follower.kill();
    let _ = follower.wait();

    // The drop to port 80: Hubble's fields.
    let dropped = client.flows(
        &socket,
        json!({"number": 100, "whitelist": [{"verdict": ["DROPPED"], "destination_pod": ["backend/api"], "destination_port": ["80"]}]}),
    );
    let f = flows_of(&dropped).into_iter().find(|f| f["source"]["pod_name"] == "web").cloned();
    let f = f.unwrap_or_else(|| panic!("no drop from web to api:80 in {dropped:?}"));
    assert_eq!(f["verdict"], "DROPPED", "{f}");
    assert_eq!(f["drop_reason_desc"], "POLICY_DENIED", "{f}");
    assert_eq!(f["drop_reason"], 133, "{f}");
    assert_eq!(f["Type"], "L3_L4", "{f}");
    assert_eq!(f["node_name"], "node-b", "{f}");
    assert_eq!(f["traffic_direction"], "INGRESS", "{f}");
    assert_eq!(f["is_reply"], false, "{f}");
    assert_eq!(f["IP"]["source"], web.ip.to_string(), "{f}");
    assert_eq!(f["IP"]["destination"], api.ip.to_string(), "{f}");
    assert_eq!(f["IP"]["ipVersion"], "IPv4", "{f}");
    assert_eq!(f["l4"]["TCP"]["flags"]["SYN"], true, "{f}");
    assert_eq!(f["source"]["namespace"], "frontend", "{f}");
    let labels = f["destination"]["labels"].as_array().cloned().unwrap_or_default();
    assert!(labels.contains(&json!("k8s:app=api")), "{f}");
    assert!(labels.contains(&json!("k8s:io.kubernetes.pod.namespace=backend")), "{f}");
    assert!(f["source"]["identity"].as_u64().unwrap_or(0) >= 256, "{f}");
    assert!(f.get("ingress_denied_by").is_none(), "a default deny names no policy: {f}");
    assert_eq!(f["source"]["workloads"], json!([{"name": "web", "kind": "Deployment"}]), "{f}");
    assert!(f["destination"].get("workloads").is_none(), "api has no owner: {f}");
    assert!(flows_of(&dropped).iter().all(|f| f["verdict"] == "DROPPED" && f["destination"]["pod_name"] == "api"));
    // `weir observe -o jsonpb` prints that flow exactly as the Hubble client decoded it.
    let python = dropped.iter().find(|r| r["flow"] == f).cloned().expect("the response");
    let printed = weir_ok(&["observe", "--lab", &name, "--last", "100", "--verdict", "dropped", "-o", "jsonpb"]);
    let printed: Vec<Value> = printed.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    let same = printed.iter().find(|r| r["flow"]["time"] == f["time"] && r["node_name"] == "node-b");
    assert_eq!(same, Some(&python), "{printed:?}");

    // The allowed flow names the policy that allowed it.
    let allowed = client
        .flows(&socket, json!({"number": 10, "whitelist": [{"verdict": ["FORWARDED"], "destination_port": ["8080"]}]}));
    let f = flows_of(&allowed).first().copied().cloned().unwrap_or_else(|| panic!("no forwarded flow in {allowed:?}"));
    assert_eq!(
        f["ingress_allowed_by"],
        json!([{"name": "web-to-api", "namespace": "backend", "kind": "NetworkPolicy"}]),
        "{f}"
    );
    assert_eq!(f["verdict"], "FORWARDED");

    // Cilium's event types: policy's verdict on an allowed new flow, a drop
    // with its reason as sub-type; `weir observe --type` selects them as
    // Hubble's CLI does, repeated meaning any of them.
    assert_eq!(f["event_type"]["type"], 5, "a policy verdict: {f}");
    let observed = |types: &[&str]| -> Vec<Value> {
        let mut args = vec!["observe", "--lab", name.as_str(), "--last", "1000", "-o", "jsonpb"];
        types.iter().for_each(|t| args.extend(["--type", t]));
        let printed = weir_ok(&args);
        printed.lines().map(|l| serde_json::from_str::<Value>(l).expect("json")["flow"].clone()).collect()
    };
    let drops = observed(&["drop"]);
    assert!(drops.iter().any(|f| f["event_type"]["sub_type"] == 133), "a policy drop: {drops:?}");
    assert!(drops.iter().all(|f| f["verdict"] == "DROPPED" && f["event_type"]["type"] == 1), "{drops:?}");
    let verdicts = observed(&["policy-verdict"]);
    assert!(!verdicts.is_empty(), "the allowed flows");
    assert!(verdicts.iter().all(|f| f["verdict"] == "FORWARDED" && f["event_type"]["type"] == 5), "{verdicts:?}");
    let either = observed(&["drop", "policy-verdict"]);
    assert!(either.iter().any(|f| f["verdict"] == "DROPPED") && either.iter().any(|f| f["verdict"] == "FORWARDED"));
    assert_eq!(observed(&["trace"]), Vec::<Value>::new(), "without chaos no packet is a trace");
    let denied = client
        .flows(&socket, json!({"whitelist": [{"event_type": [{"type": 1, "match_sub_type": true, "sub_type": 133}]}]}));
    assert!(!flows_of(&denied).is_empty(), "{denied:?}");
    assert!(flows_of(&denied).iter().all(|f| f["drop_reason_desc"] == "POLICY_DENIED"), "{denied:?}");
    // Workload filters, over the API and as `weir observe`'s flags.
    let from_web = client.flows(&socket, json!({"whitelist": [{"source_workload": [{"kind": "Deployment"}]}]}));
    assert!(!flows_of(&from_web).is_empty(), "{from_web:?}");
    assert!(flows_of(&from_web).iter().all(|f| f["source"]["pod_name"] == "web"), "{from_web:?}");
    let to_web = client.flows(&socket, json!({"whitelist": [{"destination_workload": [{"name": "web"}]}]}));
    assert!(flows_of(&to_web).iter().all(|f| f["destination"]["pod_name"] == "web"), "{to_web:?}");
    let args =
        ["observe", "--lab", name.as_str(), "--last", "1000", "-o", "jsonpb", "--from-workload", "Deployment/web"];
    let printed = weir_ok(&args);
    let flows: Vec<Value> =
        printed.lines().map(|l| serde_json::from_str::<Value>(l).expect("json")["flow"].clone()).collect();
    assert!(!flows.is_empty() && flows.iter().all(|f| f["source"]["pod_name"] == "web"), "{printed}");
    let all_drops = observed(&["drop"]);
    let args =
        ["observe", "--lab", name.as_str(), "--last", "1000", "-o", "jsonpb", "--drop-reason-desc", "POLICY_DENIED"];
    let printed = weir_ok(&args);
    let by_reason: Vec<Value> =
        printed.lines().map(|l| serde_json::from_str::<Value>(l).expect("json")["flow"].clone()).collect();
    let policy_denied: Vec<&Value> = all_drops.iter().filter(|f| f["drop_reason_desc"] == "POLICY_DENIED").collect();
    assert!(!by_reason.is_empty() && by_reason.iter().all(|f| f["drop_reason_desc"] == "POLICY_DENIED"), "{printed}");
    assert!(policy_denied.len() <= by_reason.len(), "no policy drop left out: {by_reason:?}");
    let unknown = weir(&["observe", "--lab", &name, "--last", "1", "--type", "drops"]);
    let said = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success() && said.contains("--type") && said.contains("\"drops\""), "{said}");

    // OR across filters, AND within one; the blacklist excludes.
    let either = client.flows(
        &socket,
        json!({"whitelist": [{"source_ip": [format!("{}/32", web.ip)]}, {"source_label": ["k8s:app=db"], "protocol": ["tcp"]}]}),
    );
    let sources: Vec<&Value> = flows_of(&either).iter().map(|f| &f["source"]["pod_name"]).collect();
    assert!(sources.contains(&&json!("web")) && sources.contains(&&json!("db")), "{sources:?}");
    assert!(sources.iter().all(|s| *s == "web" || *s == "db"), "{sources:?}");
    let not_web = client.flows(&socket, json!({"blacklist": [{"source_pod": ["frontend/"]}]}));
    assert!(flows_of(&not_web).iter().all(|f| f["source"]["pod_name"] != "web"), "{not_web:?}");
    assert!(flows_of(&not_web).iter().any(|f| f["source"]["pod_name"] == "db"), "{not_web:?}");

    // since/until select by time; first takes the earliest.
    let at = f["time"].as_str().expect("time").to_string();
    let window = client.flows(&socket, json!({"since": at, "until": at}));
    assert!(!flows_of(&window).is_empty() && flows_of(&window).iter().all(|g| g["time"] == at), "{window:?}");
    let all = flows_of(&client.flows(&socket, json!({}))).into_iter().cloned().collect::<Vec<_>>();
    let earliest = client.flows(&socket, json!({"number": 1, "first": true}));
    assert_eq!(flows_of(&earliest), vec![&all[0]], "first: the ring's oldest");
    let latest = client.flows(&socket, json!({"number": 2}));
    assert_eq!(flows_of(&latest).len(), 2);

    // A deny rule names the policy that denied the flow.
    let deny = std::env::temp_dir().join(format!("{name}-deny.yaml"));
    std::fs::write(
        &deny,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: no-frontend, namespace: backend}\nspec:\n  endpointSelector: {matchLabels: {app: api}}\n  ingressDeny:\n  - fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: frontend}}]\n",
    )
    .expect("deny");
    weir_ok(&["apply", "--lab", &name, "-f", &deny.to_string_lossy()]);
    assert!(!connect(&web.netns, api.ip, 8080), "the deny wins");
    let denied = client.flows(
        &socket,
        json!({"number": 1, "whitelist": [{"verdict": ["DROPPED"], "destination_port": ["8080"], "source_pod": ["frontend/web"]}]}),
    );
    let f = flows_of(&denied).first().copied().cloned().unwrap_or_else(|| panic!("no denied flow in {denied:?}"));
    assert_eq!(f["drop_reason_desc"], "POLICY_DENY", "{f}");
    assert_eq!(
        f["ingress_denied_by"],
        json!([{"name": "no-frontend", "namespace": "backend", "kind": "CiliumNetworkPolicy"}]),
        "{f}"
    );
    let _ = std::fs::remove_file(&deny);

    // Refusals name what is wrong.
    let refused = client.flows(&socket, json!({"whitelist": [{"source_fqdn": ["*.example.com"]}]}));
    assert_eq!(refused[0]["error"], "INVALID_ARGUMENT", "{refused:?}");
    assert!(refused[0]["details"].as_str().unwrap_or("").contains("whitelist[0].source_fqdn"), "{refused:?}");
    let refused = client.flows(&socket, json!({"whitelist": [{"http_path": ["(unclosed"]}]}));
    assert!(refused[0]["details"].as_str().unwrap_or("").contains("whitelist[0].http_path"), "{refused:?}");
    let refused = client.flows(&socket, json!({"first": true, "follow": true}));
    assert_eq!(refused[0]["error"], "INVALID_ARGUMENT", "{refused:?}");

    // ServerStatus and GetNodes, over the socket and over --hubble-listen.
    let over_tcp = Client { dir: dir.clone(), netns: Some(node_b.netns.clone()) };
    for (client, target) in [(&client, socket.as_str()), (&over_tcp, "127.0.0.1:4244")] {
        let s = client.status(target);
        assert_eq!(s["status"]["max_flows"], "8192", "{s}");
        assert!(s["status"]["seen_flows"].as_str().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0) >= 4, "{s}");
        assert_eq!(s["status"]["num_connected_nodes"], 1, "{s}");
        assert_eq!(s["nodes"]["nodes"][0]["name"], "node-b", "{s}");
        assert_eq!(s["nodes"]["nodes"][0]["state"], "NODE_CONNECTED", "{s}");
    }
    let s = over_tcp.status("127.0.0.1:4244");
    assert_eq!(s["nodes"]["nodes"][0]["address"], "127.0.0.1:4244", "{s}");
    let namespaces = s["namespaces"]["namespaces"].as_array().cloned().unwrap_or_default();
    assert!(namespaces.contains(&json!({"namespace": "backend"})), "the namespaces of node-b's flows: {s}");
    assert!(namespaces.windows(2).all(|w| w[0]["namespace"].as_str() < w[1]["namespace"].as_str()), "{s}");

    // Past the ring's capacity: the answer begins with what was overwritten.
    // A follower connected through the flood is told of every event the
    // kernel's ring lost meanwhile (as many as the agent's metric counts).
    let metrics = || scrape_metrics(&node_b);
    let seen = || metric_sum(&metrics(), "weir_flows_total{node=\"node-b\"");
    let kernel_lost = || metric_sum(&metrics(), "weir_flow_events_lost_total{node=\"node-b\",cause=\"ring_full\"}");
    let lost_before = kernel_lost();
    let mut watcher = client
        .command(&["flows", &socket, &follow.to_string(), "300"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("watcher");
    let mut watched = BufReader::new(watcher.stdout.take().expect("stdout")).lines();
    assert!(watched.next().is_some(), "the watcher is connected");
    let told = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = std::thread::spawn({
        let told = told.clone();
        move || {
            for line in watched.map_while(Result::ok) {
                let r: Value = serde_json::from_str(&line).expect("json");
                if r["lost_events"]["source"] == "PERF_EVENT_RING_BUFFER" {
                    let n = r["lost_events"]["num_events_lost"].as_str().and_then(|n| n.parse::<u64>().ok());
                    told.fetch_add(n.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    });
    assert!(
        eventually(Duration::from_secs(120), || {
            udp_burst(&db.netns, api.ip, 80, 2000);
            seen() > 9000
        }),
        "the flood produced flow events"
    );
    let lost_in_kernel = || kernel_lost() - lost_before;
    assert!(
        eventually(Duration::from_secs(20), || told.load(std::sync::atomic::Ordering::Relaxed) == lost_in_kernel()),
        "the follower was told of {} kernel losses, the agent counted {}",
        told.load(std::sync::atomic::Ordering::Relaxed),
        lost_in_kernel()
    );
    let _ = watcher.kill();
    let _ = watcher.wait();
    let _ = reader.join();
    let everything = client.flows(&socket, json!({}));
    let lost = &everything[0]["lost_events"];
    assert_eq!(lost["source"], "HUBBLE_RING_BUFFER", "{}", everything[0]);
    let lost_count = lost["num_events_lost"].as_str().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    assert!(lost_count >= 1, "{lost}");
    assert_eq!(flows_of(&everything).len(), 8192, "the whole ring after the notice");
    let s = client.status(&socket);
    let seen_flows = s["status"]["seen_flows"].as_str().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    assert!(seen_flows >= 8192 + lost_count, "{s} {lost}");
    assert_eq!(s["status"]["num_flows"], "8192", "{s}");
    // Asking for fewer than the ring holds loses nothing.
    let some = client.flows(&socket, json!({"number": 5}));
    assert!(some.iter().all(|r| r.get("lost_events").is_none()) && flows_of(&some).len() == 5, "{some:?}");

    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&policy);
}
