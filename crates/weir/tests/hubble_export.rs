//! Flow export to a file, as Hubble's exporter writes it: one
//! GetFlowsResponse per line in Hubble's JSON, through an allowlist and a
//! denylist, rotated by size with the newest backups kept.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn lines_of(dir: &std::path::Path) -> Vec<Value> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        all.extend(text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))));
    }
    all
}

#[test]
fn flows_are_exported_filtered_and_rotated() {
    if !privileged("hubble export") {
        return;
    }
    let name = unique_name("hexport");
    let lab = TestLab::up(&name, &two_node_spec(&name).replace("routing: kernel", "routing: weir"), true);
    let plan = lab.plan();
    let pod = |n: &str| plan.pod(n).expect("pod").clone();
    let (web, api, db) = (pod("frontend/web"), pod("backend/api"), pod("backend/db"));
    let node_b = plan.node("node-b").expect("node-b").clone();
    let dir = std::env::temp_dir().join(format!("{name}-export"));
    let _ = std::fs::remove_dir_all(&dir);

    // node-b's agent, restarted with the exporter on.
    let pid = weir_lab::runtime::agent_pid(&node_b).expect("node-b's agent");
    weir_host::process::kill(pid, libc::SIGKILL);
    assert!(eventually(Duration::from_secs(10), || !weir_host::process::alive(pid)), "the agent died");
    let path = dir.join("flows.log");
    let bad = weir(&[
        "lab",
        "up",
        "-f",
        &lab.spec_path.to_string_lossy(),
        &format!("--agent-arg=--hubble-export-file-path={}", path.display()),
        "--agent-arg=--hubble-export-allowlist={\"colour\":[\"red\"]}",
    ]);
    assert!(!bad.status.success() || weir_lab::runtime::agent_pid(&node_b).is_none(), "a bad allowlist is refused");
    let out = weir_ok(&[
        "lab",
        "up",
        "-f",
        &lab.spec_path.to_string_lossy(),
        &format!("--agent-arg=--hubble-export-file-path={}", path.display()),
        "--agent-arg=--hubble-export-file-max-size-mb=1",
        "--agent-arg=--hubble-export-file-max-backups=1",
        "--agent-arg=--hubble-export-allowlist={\"destination_pod\":[\"backend/\"]}",
        "--agent-arg=--hubble-export-denylist={\"destination_port\":[\"9999\"]}",
    ]);
    assert!(out.contains("agents started on: node-b"), "{out}");

    let _listeners: Vec<TcpListener> = [(&api, 8080), (&api, 9999), (&db, 7000)]
        .iter()
        .map(|(p, port)| {
            weir_host::netns::run_in(&p.netns, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, *port)))
                .expect("netns")
                .expect("listen")
        })
        .collect();
    let connect = |to: Ipv4Addr, port: u16| {
        weir_host::netns::run_in(&web.netns, || {
            TcpStream::connect_timeout(&SocketAddr::from((to, port)), Duration::from_secs(2)).is_ok()
        })
        .expect("netns")
    };
    let exported =
        |port: u64| lines_of(&dir).iter().any(|l| l["flow"]["l4"]["TCP"]["destination_port"].as_u64() == Some(port));
    assert!(
        eventually(Duration::from_secs(30), || {
            assert!(connect(api.ip, 8080) && connect(api.ip, 9999) && connect(db.ip, 7000));
            exported(8080) && exported(7000)
        }),
        "allowed flows reach the file: {:?}",
        lines_of(&dir)
    );
    assert!(!exported(9999), "the denylist keeps port 9999 out");
    for line in lines_of(&dir) {
        assert_eq!(line["node_name"], "node-b", "{line}");
        assert!(line["time"].is_string(), "{line}");
        assert_eq!(line["flow"]["destination"]["namespace"], "backend", "the allowlist: {line}");
    }

    // Past 1 MB: one backup is kept beside the file, each whole JSON lines.
    let flood = || {
        weir_host::netns::run_in(&web.netns, || {
            for _ in 0..500 {
                let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("udp");
                let _ = socket.send_to(b"x", (api.ip, 8081));
            }
        })
        .expect("netns")
    };
    let files = || std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
    assert!(
        eventually(Duration::from_secs(180), || {
            flood();
            files() == 2 && std::fs::metadata(&path).is_ok_and(|m| m.len() > 0)
        }),
        "the file rotated: {:?}",
        std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    for _ in 0..3 {
        flood();
    }
    assert_eq!(files(), 2, "max-backups 1: the file and one backup");
    for entry in std::fs::read_dir(&dir).expect("dir").flatten() {
        assert!(entry.metadata().expect("size").len() <= 1 << 20, "{:?} is within 1 MB", entry.file_name());
    }
    assert!(!lines_of(&dir).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
