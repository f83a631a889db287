//! Global services in a ClusterMesh lab: the mesh taken down on drop, the
//! Service and its slice as a user applies them, backends that answer with
//! their name, and a client pod's connections (from its cgroup, where the
//! socket load balancer judges them) tallied by who answered.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};

use super::{weir, weir_ok};

pub const VIP: &str = "10.96.0.50";
pub const BACKEND_PORT: u16 = 8080;

/// Two clusters of one node each (`routing: kernel`), with `east_pods` and
/// `west_pods` in namespace shop.
pub fn two_clusters(mesh: &str, east: &str, east_pods: &[&str], west: &str, west_pods: &[&str]) -> String {
    let cluster = |name: &str, id: u8, cidr: &str, pods: &[&str]| {
        let pods: String =
            pods.iter().map(|pod| format!("          - {{name: {pod}, namespace: shop, node: {name}-a}}\n")).collect();
        format!(
            "    - name: {name}\n      id: {id}\n      spec:\n        routing: kernel\n        nodes:\n          - {{name: {name}-a, podCIDR: {cidr}}}\n        namespaces: [{{name: shop}}]\n        pods:\n{pods}"
        )
    };
    format!(
        "apiVersion: weir.dev/v1alpha1\nkind: ClusterMesh\nmetadata:\n  name: {mesh}\nspec:\n  clusters:\n{}{}",
        cluster(east, 1, "10.244.0.0/24", east_pods),
        cluster(west, 2, "10.245.0.0/24", west_pods)
    )
}

/// Two clusters of one node each; east has a client and an api pod, west an api pod.
pub fn mesh_yaml(mesh: &str, east: &str, west: &str) -> String {
    two_clusters(mesh, east, &["client", "api"], west, &["api"])
}

/// What `cluster`'s (first) agent says of cluster `remote` (`weir clustermesh status -o json`).
pub fn remote_state(cluster: &str, remote: &str) -> Option<serde_json::Value> {
    let out = weir(&["clustermesh", "status", "--lab", cluster, "-o", "json"]);
    let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    nodes[0]["remotes"].as_array()?.iter().find(|r| r["name"] == remote).cloned()
}

/// The mesh, taken down on drop, panic or not.
pub struct Mesh(pub String);

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = weir(&["lab", "down", &self.0]);
    }
}

/// Brings up the mesh `yaml` names `name`, taken down when the value drops.
pub fn mesh_up(name: &str, yaml: &str) -> Mesh {
    let file = std::env::temp_dir().join(format!("{name}.mesh.yaml"));
    std::fs::write(&file, yaml).expect("writing the mesh");
    let mesh = Mesh(name.to_string());
    let up = weir(&["lab", "up", "-f", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
    assert!(up.status.success(), "{up:?}");
    mesh
}

/// The global Service `shop/api` with `annotations` beside
/// `service.cilium.io/global: "true"`, and its slice: `backends` (address,
/// node) its ready endpoints.
pub fn global_service(annotations: &[(&str, &str)], backends: &[(Ipv4Addr, &str)]) -> String {
    let annotations: String =
        annotations.iter().map(|(key, value)| format!("\n    service.cilium.io/{key}: \"{value}\"")).collect();
    let endpoints: String = if backends.is_empty() {
        " []".to_string()
    } else {
        backends
            .iter()
            .map(|(ip, node)| format!("\n  - {{addresses: [{ip}], nodeName: {node}, conditions: {{ready: true}}}}"))
            .collect()
    };
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: shop
  annotations:
    service.cilium.io/global: "true"{annotations}
spec:
  clusterIP: {VIP}
  ports:
  - {{port: 80, targetPort: {BACKEND_PORT}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: api-1
  namespace: shop
  labels: {{kubernetes.io/service-name: api}}
addressType: IPv4
ports:
  - {{protocol: TCP, port: {BACKEND_PORT}}}
endpoints:{endpoints}
"#
    )
}

/// `weir apply --lab <cluster>` of `yaml`.
pub fn apply(cluster: &str, yaml: &str) {
    let file = std::env::temp_dir().join(format!("{cluster}.global.yaml"));
    std::fs::write(&file, yaml).expect("writing the service");
    weir_ok(&["apply", "--lab", cluster, "-f", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
}

/// A backend in `netns` that answers every connection with `name`, until stopped.
pub struct Backend {
    fd: std::os::fd::RawFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub fn backend(netns: &str, ip: Ipv4Addr, name: &str) -> Backend {
    use std::os::fd::AsRawFd;
    let listener =
        weir_host::netns::run_in(netns, || TcpListener::bind((ip, BACKEND_PORT))).expect("netns").expect("listen");
    let fd = listener.as_raw_fd();
    let name = name.to_string();
    let thread = std::thread::spawn(move || {
        for stream in listener.incoming() {
            // Shut down (below): accept fails and the listener closes.
            let Ok(mut stream) = stream else { break };
            let _ = stream.write_all(name.as_bytes());
        }
    });
    Backend { fd, thread: Some(thread) }
}

impl Backend {
    /// The server dies: its port refuses connections (and health probes) from now on.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            // SAFETY: shutdown(2) of the listener the thread still owns; it
            // closes it only after accept fails, which this causes.
            unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
            thread.join().expect("backend thread");
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `count` connections from pod `shop/client` of `cluster` (its cgroup, where
/// the socket load balancer judges them) to the service, tallied by what
/// answered (a backend's name, or the error).
pub fn answers(cluster: &str, count: u32) -> BTreeMap<String, u64> {
    const SCRIPT: &str = "import socket, sys, json
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
counts = {}
for _ in range(n):
    try:
        s = socket.create_connection((host, port), timeout=3)
        k = s.recv(64).decode() or 'empty'
        s.close()
    except OSError as e:
        k = type(e).__name__
    counts[k] = counts.get(k, 0) + 1
print(json.dumps(counts))
";
    let out = weir(&[
        "lab",
        "exec",
        "--lab",
        cluster,
        "shop/client",
        "--",
        "python3",
        "-c",
        SCRIPT,
        VIP,
        "80",
        &count.to_string(),
    ]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("counts")
}

/// Whether every connection tallied went to `name`.
pub fn only(counts: &BTreeMap<String, u64>, name: &str) -> bool {
    counts.len() == 1 && counts.contains_key(name)
}

/// The keys under `weir/clustermesh/v1/services/` in a cluster's etcd now,
/// read from inside the cluster's first node.
pub fn shared_keys(cluster: &str) -> Vec<String> {
    let plan = weir_lab::runtime::load_plan(cluster).expect("cluster record");
    let (netns, url) = weir_lab::runtime::etcd_endpoint(&plan).expect("a mesh's cluster has etcd");
    weir_host::netns::run_in(&netns, || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let mut client = etcd_client::Client::connect([url.as_str()], None).await.expect("etcd");
            let options = etcd_client::GetOptions::new().with_prefix().with_keys_only();
            let reply = client.get("weir/clustermesh/v1/services/", Some(options)).await.expect("get");
            reply.kvs().iter().map(|kv| kv.key_str().expect("utf-8 key").to_string()).collect()
        })
    })
    .expect("netns")
}

/// Whether pod `pod` of `cluster` gets an answer to one ping of `to`.
pub fn ping(cluster: &str, pod: &str, to: Ipv4Addr) -> bool {
    weir(&["lab", "exec", "--lab", cluster, pod, "--", "ping", "-c1", "-W1", &to.to_string()]).status.success()
}

/// A TCP exchange from `client`'s namespace to a listener in `server`'s;
/// the address the server saw the client at, or why it failed (a policy
/// drop is a connect timeout).
pub fn tcp_peer(client: &str, server: &str, server_ip: Ipv4Addr) -> std::io::Result<std::net::IpAddr> {
    use std::io::Read;
    use std::time::Duration;
    let listener = weir_host::netns::run_in(server, || TcpListener::bind((server_ip, 0))).expect("server netns")?;
    let addr = listener.local_addr()?;
    let mut stream =
        weir_host::netns::run_in(client, || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
            .expect("client netns")?;
    stream.write_all(b"across the mesh")?;
    drop(stream);
    let (mut accepted, peer) = listener.accept()?;
    accepted.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut got = Vec::new();
    accepted.read_to_end(&mut got)?;
    assert_eq!(got, b"across the mesh");
    Ok(peer.ip())
}
