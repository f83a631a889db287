//! The cluster's store: a lab of two nodes on the pod path keeps its state in
//! its etcd (a real etcd-server process). A mixed file is committed in one
//! transaction and reaches every node, with real traffic through the
//! Service and the policy; a file with one bad document changes nothing
//! anywhere; an agent killed during an apply converges after its restart to
//! exactly what the store holds; an agent restarted while etcd is stopped
//! still enforces, and follows the store again once etcd returns.

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::*;

/// A lab with the pod path (so with etcd), and a directory for the test's
/// documents, both removed on drop.
/// A lab whose documents go through its store.
struct StoreLab(DocsLab);

impl std::ops::Deref for StoreLab {
    type Target = DocsLab;
    fn deref(&self) -> &DocsLab {
        &self.0
    }
}

fn lab(prefix: &str) -> Option<StoreLab> {
    DocsLab::pod_path(prefix).map(StoreLab)
}

impl StoreLab {
    fn etcd_pid(&self) -> i32 {
        let file = weir_host::paths::lab_dir(&self.name).join("etcd.pid");
        std::fs::read_to_string(&file).expect("etcd pid").trim().parse().expect("pid")
    }

    fn agent_pid(&self, node: &str) -> i32 {
        let plan = self.plan();
        weir_lab::runtime::agent_pid(plan.node(node).expect("node")).expect("agent running")
    }

    fn kill_agent(&self, node: &str) {
        let pid = self.agent_pid(node);
        weir_host::process::kill(pid, libc::SIGKILL);
        assert!(eventually(Duration::from_secs(10), || !weir_host::process::alive(pid)), "the agent died");
    }

    /// What `node` enforces from the store, as its agent reports it: Services
    /// with their backends, network policies and RuntimePolicies.
    fn held(&self, node: &str) -> BTreeSet<String> {
        let json = |args: &[&str]| -> serde_json::Value {
            let mut all = args.to_vec();
            all.extend(["--lab", &self.name, "--node", node, "-o", "json"]);
            serde_json::from_str(&weir_ok(&all)).expect("json")
        };
        let mut held = BTreeSet::new();
        for frontend in json(&["service", "list"]).as_array().expect("frontends") {
            let service = frontend["service"].as_str().expect("service");
            let service = service.split(':').next().expect("name");
            let backends = frontend["backends"].as_array().map_or(0, Vec::len);
            held.insert(format!("Service {service} ({backends} backends)"));
        }
        for policy in json(&["policy", "list"])[0]["policies"].as_array().expect("policies") {
            held.insert(policy["name"].as_str().expect("name").to_string());
        }
        for policy in json(&["runtime", "list"])[0]["policies"].as_array().expect("runtime policies") {
            held.insert(format!("RuntimePolicy {}", policy.as_str().expect("name")));
        }
        held
    }

    /// What the store holds, read back with `weir get`, in the form of [`StoreLab::held`].
    fn stored(&self) -> BTreeSet<String> {
        let get = |kind: &str| {
            let out = weir_ok(&["get", kind, "-A", "--lab", &self.name]);
            weir_spec::split_documents(&out).expect("weir get prints YAML documents")
        };
        let slices = get("endpointslices");
        let backends = |service: &str, namespace: &str| -> usize {
            slices
                .iter()
                .filter(|s| s.namespace.as_deref() == Some(namespace) && s.text.contains(service))
                .map(|s| s.text.matches("- addresses:").count())
                .sum()
        };
        let mut stored = BTreeSet::new();
        for doc in get("services") {
            let namespace = doc.namespace.clone().unwrap_or_else(|| "default".into());
            let n = backends(&format!("kubernetes.io/service-name: {}", doc.name), &namespace);
            stored.insert(format!("Service {namespace}/{} ({n} backends)", doc.name));
        }
        for kind in ["networkpolicies", "ciliumnetworkpolicies"] {
            for doc in get(kind) {
                let namespace = doc.namespace.clone().unwrap_or_else(|| "default".into());
                stored.insert(format!("{} {namespace}/{}", doc.kind, doc.name));
            }
        }
        for doc in get("runtimepolicies") {
            stored.insert(format!("RuntimePolicy {}", doc.name));
        }
        stored
    }
}

/// The store's state as node `node`'s agent reports it (`StoreSync.Status`).
fn sync_status(lab: &TestLab, node: &str) -> weir_proto::store::v1::StatusResponse {
    let socket = lab.plan().node(node).expect("node").agent.socket.clone();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut client: weir_proto::store::v1::store_sync_client::StoreSyncClient<_> =
            weir_agent::client::connect(socket).await.expect("agent socket");
        client.status(weir_proto::store::v1::StatusRequest {}).await.expect("status").into_inner()
    })
}

/// Compacts the lab's etcd up to its current revision: older revisions can
/// no longer be watched from.
fn compact_etcd(lab: &TestLab) -> i64 {
    let (netns, url) = weir_lab::runtime::etcd_endpoint(&lab.plan()).expect("the lab has etcd");
    weir_host::netns::run_in(&netns, || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let mut client = etcd_client::Client::connect([url.as_str()], None).await.expect("etcd");
            let revision = client.get("weir/", None).await.expect("get").header().expect("header").revision();
            client.compact(revision, None).await.expect("compact");
            revision
        })
    })
    .expect("netns")
}

/// Resumes a stopped etcd when dropped, so a failing test never leaves it frozen.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        weir_host::process::kill(self.0, libc::SIGCONT);
    }
}

/// api's Service on port 80 (api listens on 8080), its EndpointSlice, a
/// default deny for backend with api open to web only, and a RuntimePolicy.
const MIXED: &str = "apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: backend
  # The policy below lets only web in: the nodes' probes would be refused.
  annotations: {weir.dev/health-check: none}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: api-1
  namespace: backend
  labels: {kubernetes.io/service-name: api}
addressType: IPv4
ports: [{name: http, protocol: TCP, port: 8080}]
endpoints:
- addresses: [10.244.1.2]
  nodeName: node-b
  conditions: {ready: true}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: backend}
spec:
  podSelector: {}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-from-web, namespace: backend}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 8080}]
---
apiVersion: weir.dev/v1alpha1
kind: RuntimePolicy
metadata: {name: web-no-ssh-out}
spec:
  selector:
    namespaces: [frontend]
  rules:
  - operations: [connect]
    cidrs: [0.0.0.0/0]
    ports: [{port: 22}]
    action: deny
";

/// Whether a TCP handshake from namespace `netns` to `addr` completes.
fn connects(netns: &str, addr: SocketAddr, timeout: Duration) -> bool {
    weir_host::netns::run_in(netns, || TcpStream::connect_timeout(&addr, timeout).is_ok()).expect("netns")
}

/// api listening on 8080 (the kernel completes handshakes; nobody accepts).
fn api_listener(lab: &TestLab) -> TcpListener {
    let api = lab.plan().pod("backend/api").expect("api").clone();
    weir_host::netns::run_in(&api.netns, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8080)))
        .expect("netns")
        .expect("listen")
}

#[test]
fn a_mixed_file_is_one_transaction_that_reaches_every_node_and_a_bad_one_changes_nothing() {
    let Some(lab) = lab("stmix") else { return };
    let plan = lab.plan();
    let pod = |n: &str| plan.pod(n).expect("pod").clone();
    let (web, api, db) = (pod("frontend/web"), pod("backend/api"), pod("backend/db"));
    let _listener = api_listener(&lab);

    let mixed = lab.write("mixed.yaml", MIXED);
    let out = weir_ok(&["apply", "--lab", &lab.name, "-f", &mixed]);
    assert!(out.contains("one transaction: revision"), "{out}");
    assert!(out.contains("node-a: holds revision") && out.contains("node-b: holds revision"), "{out}");
    let expected: BTreeSet<String> = [
        "Service backend/api (1 backends)",
        "NetworkPolicy backend/default-deny",
        "NetworkPolicy backend/api-from-web",
        "RuntimePolicy web-no-ssh-out",
    ]
    .map(String::from)
    .into();
    assert_eq!(lab.stored(), expected, "the store holds the file");
    for node in ["node-a", "node-b"] {
        assert_eq!(lab.held(node), expected, "{node} holds what the store holds");
    }
    // Real traffic: web (node-a) reaches api (node-b) through the Service,
    // translated by node-a's socket load balancer and let in by node-b's
    // policy; db (node-b) is refused by the default deny.
    // (The socket load balancer translates in web's cgroup: connect from a process in it.)
    let through_service = lab.exec("frontend/web", &["timeout", "3", "bash", "-c", "exec 3<>/dev/tcp/10.96.0.20/80"]);
    assert!(through_service.status.success(), "web reaches api through the Service: {through_service:?}");
    assert!(connects(&web.netns, SocketAddr::from((api.ip, 8080)), Duration::from_secs(3)), "web reaches api");
    assert!(!connects(&db.netns, SocketAddr::from((api.ip, 8080)), Duration::from_millis(500)), "db is refused");
    // `weir get` gives a document back as applied.
    let got = weir_ok(&["get", "netpol", "api-from-web", "-n", "backend", "--lab", &lab.name]);
    assert!(got.contains("kind: NetworkPolicy") && got.contains("app: web"), "{got}");

    // The pods and nodes the agents publish are in the store too.
    let pods = weir_spec::split_documents(&weir_ok(&["get", "pods", "-A", "--lab", &lab.name])).expect("yaml");
    let names: BTreeSet<String> =
        pods.iter().map(|p| format!("{}/{}", p.namespace.clone().unwrap_or_default(), p.name)).collect();
    assert_eq!(names, ["backend/api", "backend/db", "frontend/web"].map(String::from).into());
    let got = weir_ok(&["get", "pod", "web", "-n", "frontend", "--lab", &lab.name]);
    assert!(got.contains("nodeName: node-a") && got.contains(&format!("podIP: {}", web.ip)), "{got}");
    let nodes = weir_spec::split_documents(&weir_ok(&["get", "nodes", "--lab", &lab.name])).expect("yaml");
    assert_eq!(nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["node-a", "node-b"]);

    // One bad document in a file: nothing of it anywhere.
    let bad = lab.write(
        "bad.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: backend}\nspec:\n  clusterIP: 10.96.0.21\n  ports: [{port: 80}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: backend}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 90, endPort: 80}]}]\n",
    );
    let out = weir(&["apply", "--lab", &lab.name, "-f", &bad]);
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("document 1 (NetworkPolicy bad): spec.ingress[0].ports[0].endPort"), "{stderr}");
    // A cluster IP the store's Service holds already is refused before the commit.
    let taken = lab.write(
        "taken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: thief, namespace: frontend}\nspec:\n  clusterIP: 10.96.0.20\n  ports: [{port: 80}]\n",
    );
    let out = weir(&["apply", "--lab", &lab.name, "-f", &taken]);
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("10.96.0.20"), "{out:?}");
    // What only the agents judge (a node port outside their range): the
    // nodes refuse it after the commit, and the whole file is taken back.
    let node_port = lab.write(
        "nodeport.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: extra, namespace: frontend}\nspec:\n  podSelector: {}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: low, namespace: frontend}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.22\n  ports: [{port: 80, nodePort: 20000}]\n",
    );
    let out = weir(&["apply", "--lab", &lab.name, "-f", &node_port]);
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused weir/state/v1/services/frontend/low") && stderr.contains("rolled back"),
        "{stderr}"
    );
    let missing = weir(&["get", "svc", "other", "-n", "backend", "--lab", &lab.name]);
    assert!(!missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("NotFound"));
    assert_eq!(lab.stored(), expected, "the store is unchanged");
    for node in ["node-a", "node-b"] {
        assert_eq!(lab.held(node), expected, "{node} is unchanged");
    }

    // A delete naming one object the store lacks deletes nothing.
    let partly = lab.write(
        "partly.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: default-deny, namespace: backend}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: never-applied, namespace: backend}\n",
    );
    let out = weir(&["delete", "--lab", &lab.name, "-f", &partly]);
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"never-applied\" not found"), "{out:?}");
    assert_eq!(lab.stored(), expected, "nothing deleted");

    // The whole file deleted in one transaction: gone from every node.
    let out = weir_ok(&["delete", "--lab", &lab.name, "-f", &mixed]);
    assert!(out.contains("one transaction"), "{out}");
    assert_eq!(lab.stored(), BTreeSet::new());
    for node in ["node-a", "node-b"] {
        assert_eq!(lab.held(node), BTreeSet::new(), "{node} holds nothing");
    }
    assert!(connects(&db.netns, SocketAddr::from((api.ip, 8080)), Duration::from_secs(3)), "no policy: db reaches api");

    // Two applies at once: each commits whole (the loser of a race reads
    // the store again and commits after), and both reach both nodes.
    let service = |name: &str, ip: &str| {
        format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: frontend}}\nspec:\n  clusterIP: {ip}\n  ports: [{{port: 80}}]\n")
    };
    let one = lab.write("one.yaml", &service("race-one", "10.96.3.1"));
    let two = lab.write("two.yaml", &(service("race-two-a", "10.96.3.2") + &service("race-two-b", "10.96.3.3")));
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(|| weir(&["apply", "--lab", &lab.name, "-f", &one]));
        let second = scope.spawn(|| weir(&["apply", "--lab", &lab.name, "-f", &two]));
        (first.join().expect("first"), second.join().expect("second"))
    });
    assert!(first.status.success() && second.status.success(), "{first:?}\n{second:?}");
    let raced: BTreeSet<String> =
        ["race-one", "race-two-a", "race-two-b"].map(|n| format!("Service frontend/{n} (0 backends)")).into();
    assert_eq!(lab.stored(), raced);
    for node in ["node-a", "node-b"] {
        assert_eq!(lab.held(node), raced, "{node}");
    }
    weir_ok(&["delete", "--lab", &lab.name, "-f", &one]);
    weir_ok(&["delete", "--lab", &lab.name, "-f", &two]);

    // A FilterPolicy through the store: its rules on both nodes' uplinks, and gone again.
    let filter = lab.write(
        "filter.yaml",
        "apiVersion: weir.dev/v1alpha1\nkind: FilterPolicy\nmetadata: {name: patches}\nspec:\n  rules:\n  - name: udp-7-death\n    match: {protocol: udp, destinationPort: 7}\n    action: drop\n",
    );
    let filter_rules = |node: &str| -> Vec<String> {
        let list: serde_json::Value =
            serde_json::from_str(&weir_ok(&["filter", "list", "--lab", &lab.name, "--node", node, "-o", "json"]))
                .expect("json");
        let rules = list.as_array().and_then(|a| a.first()).map(|n| n["rules"].clone()).unwrap_or_default();
        rules.as_array().into_iter().flatten().map(|r| format!("{} {}", r["origin"], r["name"])).collect()
    };
    weir_ok(&["apply", "--lab", &lab.name, "-f", &filter]);
    for node in ["node-a", "node-b"] {
        assert_eq!(filter_rules(node), ["\"FilterPolicy/patches\" \"udp-7-death\""], "{node}");
    }
    weir_ok(&["delete", "--lab", &lab.name, "-f", &filter]);
    for node in ["node-a", "node-b"] {
        assert_eq!(filter_rules(node), Vec::<String>::new(), "{node}");
    }
}

/// Many Services in one file, so a node's change takes a while.
fn many_services(count: usize) -> String {
    (0..count)
        .map(|i| {
            format!(
                "---\napiVersion: v1\nkind: Service\nmetadata: {{name: bulk-{i}, namespace: frontend}}\nspec:\n  clusterIP: 10.96.{}.{}\n  ports: [{{port: 80}}]\n",
                2 + i / 200,
                1 + i % 200
            )
        })
        .collect()
}

#[test]
fn an_agent_killed_during_an_apply_converges_after_restart_to_exactly_what_the_store_holds() {
    let Some(lab) = lab("stkil") else { return };
    let mixed = lab.write("mixed.yaml", MIXED);
    weir_ok(&["apply", "--lab", &lab.name, "-f", &mixed]);
    let record = lab.plan().node("node-b").expect("node-b").agent.socket.with_file_name("state").join("store.json");
    assert!(record.exists(), "node-b keeps what it applied in {}", record.display());

    // node-b's agent is killed while it applies a large change: as soon as
    // its record names the change under way, or else as the apply returns.
    let bulk = lab.write("bulk.yaml", &many_services(300));
    let caught_mid_change = std::thread::scope(|scope| {
        let apply = scope.spawn(|| weir(&["apply", "--lab", &lab.name, "-f", &bulk]));
        let mid = eventually(Duration::from_secs(20), || {
            apply.is_finished()
                || std::fs::read_to_string(&record).is_ok_and(|t| t.contains("bulk-") && !t.contains("\"pending\":[]"))
        }) && !apply.is_finished();
        lab.kill_agent("node-b");
        let _ = apply.join();
        mid
    });
    eprintln!("node-b killed {}", if caught_mid_change { "mid-change" } else { "after its change" });

    // While it is dead the store moves on: a policy and a Service leave, one comes.
    let gone = lab.write(
        "gone.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: default-deny, namespace: backend}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: bulk-7, namespace: frontend}\n",
    );
    let out = weir(&["delete", "--lab", &lab.name, "-f", &gone]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("node-a: holds revision"), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("node-b"), "node-b is named as behind: {out:?}");
    let late = lab.write(
        "late.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: late, namespace: backend}\nspec:\n  clusterIP: 10.96.9.9\n  ports: [{port: 80}]\n",
    );
    weir(&["apply", "--lab", &lab.name, "-f", &late]);

    let out = weir_ok(&["lab", "up", "-f", &lab.spec_path.to_string_lossy()]);
    assert!(out.contains("agents started on: node-b"), "{out}");
    let stored = lab.stored();
    assert_eq!(stored.len(), 4 + 300 - 2 + 1, "{stored:?}");
    assert!(
        !stored.contains("NetworkPolicy backend/default-deny") && stored.contains("Service backend/late (0 backends)")
    );
    let mut last = BTreeSet::new();
    let converged = eventually(Duration::from_secs(30), || {
        last = lab.held("node-b");
        last == stored
    });
    assert!(
        converged,
        "node-b holds exactly the store: missing {:?}, extra {:?}",
        stored.difference(&last).collect::<Vec<_>>(),
        last.difference(&stored).collect::<Vec<_>>()
    );
    assert_eq!(lab.held("node-a"), stored, "node-a too");
    assert_eq!(
        sync_status(&lab, "node-b").relists,
        0,
        "node-b resumed from its revision, without reading the store whole"
    );

    // Killed again; the store moves on and etcd forgets the history node-b
    // would resume from: node-b reads the store whole.
    lab.kill_agent("node-b");
    let out = weir(&["delete", "--lab", &lab.name, "-f", &late]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("node-a: holds revision"), "{out:?}");
    let compacted = compact_etcd(&lab);
    let out = weir_ok(&["lab", "up", "-f", &lab.spec_path.to_string_lossy()]);
    assert!(out.contains("agents started on: node-b"), "{out}");
    let stored = lab.stored();
    assert!(!stored.contains("Service backend/late (0 backends)"));
    let converged = eventually(Duration::from_secs(30), || {
        last = lab.held("node-b");
        last == stored
    });
    assert!(
        converged,
        "node-b holds exactly the store after a relist: {:?}",
        stored.symmetric_difference(&last).collect::<Vec<_>>()
    );
    let status = sync_status(&lab, "node-b");
    assert_eq!(status.relists, 1, "{status:?}");
    assert!(status.revision >= compacted, "{status:?}");
    let metrics = scrape_metrics(lab.plan().node("node-b").expect("node-b"));
    assert!(metrics.contains("weir_store_relists_total{node=\"node-b\"} 1\n"), "{metrics}");
    assert!(metrics.contains(&format!("weir_store_revision{{node=\"node-b\"}} {}\n", status.revision)), "{metrics}");

    // A record ahead of the store (a state dir kept from another etcd):
    // node-b reads the store whole rather than wait for that revision.
    lab.kill_agent("node-b");
    let mut kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record).expect("record")).expect("json");
    kept["applied"]["revision"] = 1_000_000.into();
    std::fs::write(&record, kept.to_string()).expect("rewrite record");
    let out = weir(&["delete", "--ignore-not-found", "--lab", &lab.name, "-f", &mixed]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("node-a: holds revision"), "{out:?}");
    weir_ok(&["lab", "up", "-f", &lab.spec_path.to_string_lossy()]);
    let stored = lab.stored();
    assert!(!stored.contains("NetworkPolicy backend/api-from-web"));
    let converged = eventually(Duration::from_secs(20), || {
        last = lab.held("node-b");
        last == stored
    });
    assert!(converged, "node-b holds the store: {:?}", stored.symmetric_difference(&last).collect::<Vec<_>>());
    assert_eq!(sync_status(&lab, "node-b").relists, 1);
}

#[test]
fn an_agent_restarted_while_etcd_is_stopped_still_enforces_and_follows_the_store_when_it_returns() {
    let Some(lab) = lab("stetc") else { return };
    let plan = lab.plan();
    let pod = |n: &str| plan.pod(n).expect("pod").clone();
    let (web, api, db) = (pod("frontend/web"), pod("backend/api"), pod("backend/db"));
    let _listener = api_listener(&lab);
    let direct = SocketAddr::from((api.ip, 8080));
    weir_ok(&["apply", "--lab", &lab.name, "-f", &lab.write("mixed.yaml", MIXED)]);
    assert!(connects(&web.netns, direct, Duration::from_secs(3)), "web reaches api");
    assert!(!connects(&db.netns, direct, Duration::from_millis(500)), "db is refused");

    let etcd = lab.etcd_pid();
    weir_host::process::kill(etcd, libc::SIGSTOP);
    let _resume = Resume(etcd);
    lab.kill_agent("node-b");
    let out = weir_ok(&["lab", "up", "-f", &lab.spec_path.to_string_lossy()]);
    assert!(out.contains("agents started on: node-b"), "node-b's agent starts with etcd stopped: {out}");
    let list: serde_json::Value =
        serde_json::from_str(&weir_ok(&["policy", "list", "--lab", &lab.name, "--node", "node-b", "-o", "json"]))
            .expect("json");
    assert!(list[0]["allocator"].as_str().is_some_and(|a| a.contains("away")), "{list}");
    assert_eq!(list[0]["policies"].as_array().map(Vec::len), Some(2), "{list}");
    assert!(connects(&web.netns, direct, Duration::from_secs(3)), "web still reaches api");
    assert!(!connects(&db.netns, direct, Duration::from_millis(500)), "db is still refused");
    // Runtime security restored its policy from the state dir too.
    assert!(lab.held("node-b").contains("RuntimePolicy web-no-ssh-out"));

    // etcd back: a change reaches node-b again (its follower reconnects).
    weir_host::process::kill(etcd, libc::SIGCONT);
    let open = lab.write(
        "open.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: default-deny, namespace: backend}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: api-from-web, namespace: backend}\n",
    );
    let out = weir_ok(&["delete", "--lab", &lab.name, "-f", &open]);
    assert!(out.contains("node-b: holds revision"), "{out}");
    assert!(connects(&db.netns, direct, Duration::from_secs(3)), "db reaches api once the policies are gone");
}

/// A cluster of one node has no etcd: `weir apply` hands documents to its
/// agent as before, and `weir get` says there is no store.
#[test]
fn a_cluster_of_one_node_keeps_working_without_etcd() {
    if !privileged("a cluster of one node") {
        return;
    }
    let name = unique_name("stone");
    let spec = two_node_spec(&name)
        .replace("routing: kernel", "routing: weir")
        .replace("    - name: node-b\n      podCIDR: 10.244.1.0/24\n", "")
        .replace("node: node-b", "node: node-a");
    let lab = TestLab::up(&name, &spec, true);
    assert!(weir_lab::runtime::etcd_endpoint(&lab.plan()).is_none(), "one node: no etcd");
    let file = std::env::temp_dir().join(format!("{name}-mixed.yaml"));
    std::fs::write(&file, MIXED.replace("nodeName: node-b", "nodeName: node-a")).expect("write");
    let out = weir_ok(&["apply", "--lab", &name, "-f", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
    assert!(!out.contains("transaction") && out.contains("node-a: "), "{out}");
    let policies: serde_json::Value =
        serde_json::from_str(&weir_ok(&["policy", "list", "--lab", &name, "-o", "json"])).expect("json");
    assert_eq!(policies[0]["policies"].as_array().map(Vec::len), Some(2), "{policies}");
    let got = weir(&["get", "svc", "--lab", &name]);
    assert!(!got.status.success() && String::from_utf8_lossy(&got.stderr).contains("no cluster store"), "{got:?}");
}

/// An echo server on api's 8080, until dropped.
struct Echo {
    fd: std::os::fd::RawFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    fn start(netns: &str) -> Echo {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let listener = weir_host::netns::run_in(netns, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8080)))
            .expect("netns")
            .expect("listen");
        let fd = listener.as_raw_fd();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while let Ok(n @ 1..) = stream.read(&mut buf) {
                        if stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Echo { fd, thread: Some(thread) }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            // SAFETY: shutdown(2) of the listener the thread owns; accept then fails and it closes it.
            unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
            let _ = thread.join();
        }
    }
}

/// Whether `stream` echoes a byte back.
fn echoes(stream: &mut TcpStream) -> bool {
    use std::io::{Read, Write};
    let mut back = [0u8; 1];
    stream.write_all(b"x").is_ok() && stream.read_exact(&mut back).is_ok() && &back == b"x"
}

/// Whether a new connection from web's pod (its netns and cgroup) through
/// the Service's address is answered by the echo server.
fn service_answers(lab: &TestLab) -> bool {
    const SCRIPT: &str = "import socket
s = socket.create_connection(('10.96.0.20', 80), timeout=3)
s.sendall(b'y')
assert s.recv(1) == b'y'
";
    weir(&["lab", "exec", "--lab", &lab.name, "frontend/web", "--", "python3", "-c", SCRIPT]).status.success()
}

/// How etcd goes away in [`etcd_away_for_30_s`].
#[derive(Clone, Copy, PartialEq)]
enum EtcdAway {
    Stopped,
    Killed,
}

/// The local etcd stopped (SIGSTOP) or killed (SIGKILL) for 30 s: an
/// established connection, new connections (direct and through the
/// Service) and the policy's refusals all hold, since nothing in the
/// datapath depends on etcd; changes resume once it is back (resumed, or
/// started again by `weir lab up` with its data kept).
fn etcd_away_for_30_s(prefix: &str, how: EtcdAway) {
    let Some(lab) = lab(prefix) else { return };
    let plan = lab.plan();
    let pod = |n: &str| plan.pod(n).expect("pod").clone();
    let (web, api, db) = (pod("frontend/web"), pod("backend/api"), pod("backend/db"));
    let _echo = Echo::start(&api.netns);
    let direct = SocketAddr::from((api.ip, 8080));
    weir_ok(&["apply", "--lab", &lab.name, "-f", &lab.write("mixed.yaml", MIXED)]);
    assert!(eventually(Duration::from_secs(10), || service_answers(&lab)), "web reaches api through its Service");
    let mut established =
        weir_host::netns::run_in(&web.netns, || TcpStream::connect_timeout(&direct, Duration::from_secs(3)))
            .expect("netns")
            .expect("web -> api");
    established.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    assert!(echoes(&mut established));
    assert!(!connects(&db.netns, direct, Duration::from_millis(500)), "db is refused");

    let etcd = lab.etcd_pid();
    let resume = Resume(etcd);
    match how {
        EtcdAway::Stopped => weir_host::process::kill(etcd, libc::SIGSTOP),
        EtcdAway::Killed => {
            weir_host::process::kill(etcd, libc::SIGKILL);
            assert!(eventually(Duration::from_secs(10), || !weir_host::process::alive(etcd)), "etcd outlived SIGKILL");
        }
    }
    // Every second for 30 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        assert!(echoes(&mut established), "the established connection broke with etcd away");
        assert!(connects(&web.netns, direct, Duration::from_secs(3)), "a new connection failed with etcd away");
        assert!(service_answers(&lab), "the Service did not answer with etcd away");
        assert!(!connects(&db.netns, direct, Duration::from_millis(300)), "db got in with etcd away");
        std::thread::sleep(Duration::from_secs(1));
    }
    drop(resume);
    if how == EtcdAway::Killed {
        // `weir lab up` starts etcd again (its data kept); agents reconnect and follow.
        weir_ok(&["lab", "up", "-f", &lab.spec_path.to_string_lossy()]);
    }
    let open = lab.write(
        "open.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: default-deny, namespace: backend}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: api-from-web, namespace: backend}\n",
    );
    let out = weir_ok(&["delete", "--lab", &lab.name, "-f", &open]);
    assert!(out.contains("holds revision"), "{out}");
    assert!(
        eventually(Duration::from_secs(10), || connects(&db.netns, direct, Duration::from_secs(1))),
        "changes did not resume once etcd was back"
    );
    assert!(echoes(&mut established), "the established connection outlived it all");
}

#[test]
fn the_local_etcd_stopped_for_30_s_changes_nothing_in_the_datapath_and_changes_resume_when_it_returns() {
    etcd_away_for_30_s("stdws", EtcdAway::Stopped);
}

#[test]
fn the_local_etcd_killed_for_30_s_changes_nothing_in_the_datapath_and_changes_resume_when_it_is_started_again() {
    etcd_away_for_30_s("stdwk", EtcdAway::Killed);
}
