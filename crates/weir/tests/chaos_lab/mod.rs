//! What the chaos lab tests share: a lab with the pod path, its documents,
//! the experiments' listing, and traffic probes.
#![allow(dead_code, reason = "each chaos test binary uses a different part")]

use std::net::{IpAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::common::*;

/// A lab with the pod path and a directory for the test's documents.
pub type ChaosLab = DocsLab;

pub fn lab(prefix: &str) -> Option<ChaosLab> {
    DocsLab::pod_path(prefix)
}

pub fn write(lab: &ChaosLab, tag: &str, yaml: &str) -> String {
    lab.write(&format!("{tag}.yaml"), yaml)
}

pub fn list(lab: &ChaosLab) -> serde_json::Value {
    serde_json::from_str(&weir_ok(&["chaos", "list", "--lab", &lab.name, "-o", "json"])).expect("json")
}

/// Experiments running on every node, and packets they dropped in all.
pub fn running(lab: &ChaosLab) -> (Vec<String>, u64) {
    let nodes = list(lab);
    let mut names = std::collections::BTreeSet::new();
    let mut dropped = 0;
    for node in nodes.as_array().expect("nodes") {
        assert_eq!(node["problem"], "", "{node}");
        for e in node["experiments"].as_array().expect("experiments") {
            names.insert(e["name"].as_str().expect("name").to_string());
            dropped += e["packetsAffected"].as_u64().expect("dropped");
        }
    }
    (names.into_iter().collect(), dropped)
}

pub fn tcp_ok(from: &str, to: &str, ip: impl Into<IpAddr>) -> bool {
    tcp_exchange(from, to, ip, b"hello").map(|got| got == b"hello").unwrap_or(false)
}

pub fn udp_ok(from: &str, to: &str, ip: impl Into<IpAddr>) -> bool {
    udp_exchange(from, to, ip, b"ping").is_some()
}

pub const PARTITION: &str = "apiVersion: chaos-mesh.org/v1alpha1
kind: NetworkChaos
metadata:
  name: web-api-cut
  namespace: frontend
spec:
  action: partition
  mode: all
  selector:
    labelSelectors:
      app: web
  direction: both
  target:
    mode: all
    selector:
      namespaces: [backend]
      labelSelectors:
        app: api
";

/// The experiment `name` as each node lists it (`weir chaos list -o json`).
pub fn experiment_on_nodes(lab: &ChaosLab, name: &str) -> Vec<serde_json::Value> {
    list(lab)
        .as_array()
        .expect("nodes")
        .iter()
        .flat_map(|node| node["experiments"].as_array().expect("experiments").clone())
        .filter(|e| e["name"] == name)
        .collect()
}

/// Packets the experiment `name` affected, over all nodes.
pub fn affected(lab: &ChaosLab, name: &str) -> u64 {
    experiment_on_nodes(lab, name).iter().map(|e| e["packetsAffected"].as_u64().expect("affected")).sum()
}

pub const WEB_TO_API: &str = "apiVersion: chaos-mesh.org/v1alpha1
kind: NetworkChaos
metadata: {name: web-api, namespace: frontend}
spec:
  mode: all
  selector: {labelSelectors: {app: web}}
  direction: to
  target:
    mode: all
    selector: {namespaces: [backend], labelSelectors: {app: api}}
  duration: 10m
";

/// Round trips of `count` UDP probes, one at a time, from `from` to an echo
/// in `to`; probes lost are left out.
pub fn round_trips(from: &str, to: &str, ip: std::net::Ipv4Addr, count: u32) -> Vec<Duration> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let echo = weir_host::netns::run_in(to, || UdpSocket::bind((ip, 0))).expect("netns").expect("bind");
    let addr = echo.local_addr().expect("addr");
    echo.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let echoing = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !stopped.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..n], peer);
            }
        }
    });
    let client = weir_host::netns::run_in(from, || UdpSocket::bind(("0.0.0.0", 0))).expect("netns").expect("bind");
    client.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let mut rtts = Vec::new();
    let mut buf = [0u8; 64];
    for seq in 0..count {
        let sent = Instant::now();
        client.send_to(&seq.to_be_bytes(), addr).expect("send");
        while let Ok(n) = client.recv(&mut buf) {
            if buf[..n] == seq.to_be_bytes() {
                rtts.push(sent.elapsed());
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    echoing.join().expect("echo");
    rtts
}

pub fn median(mut samples: Vec<Duration>) -> Duration {
    assert!(!samples.is_empty(), "no round trip came back");
    samples.sort();
    samples[samples.len() / 2]
}
