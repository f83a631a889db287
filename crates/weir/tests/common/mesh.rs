//! A two-cluster ClusterMesh lab for the global-service tests: the mesh
//! document, the global Service `shop/api`, backends that answer with their
//! name, and what an agent says of the other cluster.

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};

use super::{weir, weir_ok};

pub const VIP: &str = "10.96.0.50";
pub const BACKEND_PORT: u16 = 8080;

/// Two clusters of one node each; east has a client and an api pod, west an api pod.
pub fn mesh_yaml(mesh: &str, east: &str, west: &str) -> String {
    format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: ClusterMesh
metadata:
  name: {mesh}
spec:
  clusters:
    - name: {east}
      id: 1
      spec:
        routing: kernel
        nodes:
          - {{name: {east}-a, podCIDR: 10.244.0.0/24}}
        namespaces: [{{name: shop}}]
        pods:
          - {{name: client, namespace: shop, node: {east}-a}}
          - {{name: api, namespace: shop, node: {east}-a}}
    - name: {west}
      id: 2
      spec:
        routing: kernel
        nodes:
          - {{name: {west}-a, podCIDR: 10.245.0.0/24}}
        namespaces: [{{name: shop}}]
        pods:
          - {{name: api, namespace: shop, node: {west}-a}}
"#
    )
}

/// The global Service `shop/api` and its slice: `backend` its one ready
/// endpoint, or none.
pub fn global_service(affinity: Option<&str>, backend: Option<(Ipv4Addr, &str)>) -> String {
    let affinity = affinity.map(|a| format!("\n    service.cilium.io/affinity: {a}")).unwrap_or_default();
    let endpoints = match backend {
        Some((ip, node)) => format!("\n  - {{addresses: [{ip}], nodeName: {node}, conditions: {{ready: true}}}}"),
        None => " []".to_string(),
    };
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: shop
  annotations:
    service.cilium.io/global: "true"{affinity}
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

/// `weir apply --lab cluster` of `yaml`.
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
