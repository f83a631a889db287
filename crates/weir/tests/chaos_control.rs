//! Chaos beyond packets, in a lab whose pods take the pod path: Weir's
//! SocketChaos fails a share of connect() calls with the chosen errno, and
//! tcp-reset aborts the pairs' established connections (the peer gets a
//! RST); PodChaos pod-kill kills the selected pods' processes only; a
//! restarted agent lists, stops and delays what it had.

mod chaos_lab;
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use chaos_lab::*;
use common::*;

/// Tries `count` TCP connects from inside pod `pod` (its netns and cgroup,
/// where the connect hooks judge it) and counts the outcomes by errno name.
fn connects_from(lab: &ChaosLab, pod: &str, to: SocketAddr, count: u32) -> std::collections::BTreeMap<String, u64> {
    const SCRIPT: &str = "import socket, errno, sys, json
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
counts = {}
for _ in range(n):
    s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET)
    s.settimeout(3)
    try:
        s.connect((host, port))
        k = 'ok'
    except OSError as e:
        k = errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()
    counts[k] = counts.get(k, 0) + 1
print(json.dumps(counts))
";
    let (host, port, n) = (to.ip().to_string(), to.port().to_string(), count.to_string());
    let out = lab.exec(pod, &["python3", "-c", SCRIPT, &host, &port, &n]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("counts")
}

/// A TCP listener in `netns` that accepts (and closes) whatever comes.
fn listener(netns: &str, ip: std::net::Ipv4Addr) -> SocketAddr {
    let listener =
        weir_host::netns::run_in(netns, || std::net::TcpListener::bind((ip, 0))).expect("netns").expect("listen");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream)
        }
    });
    addr
}

#[test]
fn socket_chaos_fails_its_share_of_connects_with_the_chosen_errno() {
    let Some(lab) = lab("chsck") else { return };
    let plan = lab.plan();
    let pod = |n: &str| plan.pod(n).expect("pod").clone();
    let (api, db) = (pod("backend/api"), pod("backend/db"));
    let (to_api, to_db) = (listener(&api.netns, api.ip), listener(&db.netns, db.ip));
    let yaml = "apiVersion: chaos.weir.dev/v1alpha1
kind: SocketChaos
metadata: {name: web-api-refused, namespace: frontend}
spec:
  action: connect-error
  mode: all
  selector: {labelSelectors: {app: web}}
  target:
    mode: all
    selector: {namespaces: [backend], labelSelectors: {app: api}}
  connectError: {errno: ECONNREFUSED, percent: \"30\"}
  duration: 10m
";
    // Refused by path, nothing applied.
    let bad = write(&lab, "bad", &yaml.replace("ECONNREFUSED", "EWHATEVER"));
    let out = weir(&["apply", "--lab", &lab.name, "-f", &bad]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("spec.connectError.errno"),
        "{out:?}"
    );
    assert_eq!(connects_from(&lab, "frontend/web", to_api, 20).get("ok"), Some(&20), "no chaos yet");

    let file = write(&lab, "refused", yaml);
    weir_ok(&["apply", "--lab", &lab.name, "-f", &file]);
    let listed = weir_ok(&["chaos", "list", "--lab", &lab.name]);
    assert!(listed.contains("connect-error errno 111 30%"), "{listed}");
    const N: u32 = 400;
    let counts = connects_from(&lab, "frontend/web", to_api, N);
    let refused = counts.get("ECONNREFUSED").copied().unwrap_or(0);
    let share = 100.0 * refused as f64 / f64::from(N);
    eprintln!("connect-error 30%: {counts:?}");
    assert_eq!(
        refused + counts.get("ok").copied().unwrap_or(0),
        u64::from(N),
        "only refusals and successes: {counts:?}"
    );
    assert!((share - 30.0).abs() <= 8.0, "30% of connects refused, measured {share:.1}%");
    assert_eq!(affected(&lab, "frontend/web-api-refused"), refused, "each refusal counted");
    // Other destinations, and other pods to the target, connect.
    assert_eq!(connects_from(&lab, "frontend/web", to_db, 50).get("ok"), Some(&50), "web -> db");
    assert_eq!(connects_from(&lab, "backend/db", to_api, 50).get("ok"), Some(&50), "db -> api");

    // Every call, another errno.
    let unreachable = yaml.replace("errno: ECONNREFUSED, percent: \"30\"", "errno: EHOSTUNREACH");
    weir_ok(&["apply", "--lab", &lab.name, "-f", &write(&lab, "unreachable", &unreachable)]);
    assert_eq!(connects_from(&lab, "frontend/web", to_api, 30).get("EHOSTUNREACH"), Some(&30));

    weir_ok(&["delete", "--lab", &lab.name, "-f", &file]);
    assert_eq!(connects_from(&lab, "frontend/web", to_api, 50).get("ok"), Some(&50), "after delete");
}

/// An established TCP connection from `from` to a listener in `to`: the
/// client's and the server's ends.
fn connection(from: &str, to: &str, ip: std::net::Ipv4Addr) -> (std::net::TcpStream, std::net::TcpStream) {
    let listener =
        weir_host::netns::run_in(to, || std::net::TcpListener::bind((ip, 0))).expect("netns").expect("listen");
    let addr = listener.local_addr().expect("addr");
    let client =
        weir_host::netns::run_in(from, || std::net::TcpStream::connect(addr)).expect("netns").expect("connect");
    let (server, _) = listener.accept().expect("accept");
    for end in [&client, &server] {
        end.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    }
    (client, server)
}

#[test]
fn tcp_reset_aborts_the_pairs_established_connections_only() {
    use std::io::{Read, Write};
    let Some(lab) = lab("chrst") else { return };
    let plan = lab.plan();
    let pod = |n: &str| plan.pod(n).expect("pod").clone();
    let (web, api, db) = (pod("frontend/web"), pod("backend/api"), pod("backend/db"));
    let (mut client, mut server) = connection(&web.netns, &api.netns, api.ip);
    let (mut other_client, mut other_server) = connection(&web.netns, &db.netns, db.ip);
    let yaml = "apiVersion: chaos.weir.dev/v1alpha1
kind: SocketChaos
metadata: {name: web-api-reset, namespace: frontend}
spec:
  action: tcp-reset
  mode: all
  selector: {labelSelectors: {app: web}}
  target:
    mode: all
    selector: {namespaces: [backend], labelSelectors: {app: api}}
";
    weir_ok(&["apply", "--lab", &lab.name, "-f", &write(&lab, "reset", yaml)]);
    let listed = weir_ok(&["chaos", "list", "--lab", &lab.name]);
    assert!(listed.contains("tcp-reset (1 connections)"), "{listed}");
    // The server's end got the RST; web's own socket was aborted.
    let mut buf = [0u8; 16];
    let server_read = server.read(&mut buf);
    assert_eq!(
        server_read.as_ref().map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "api's end: {server_read:?}"
    );
    let client_read = client.read(&mut buf);
    assert_eq!(client_read.as_ref().map_err(|e| e.raw_os_error()), Err(Some(libc::ECONNABORTED)), "web's end");
    // The other connection carries on.
    other_client.write_all(b"still").expect("write");
    let mut got = [0u8; 5];
    other_server.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"still");
}

/// A process in pod `pod` that ignores SIGTERM, as `weir lab exec` starts it.
fn stubborn_process(lab: &ChaosLab, pod: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["lab", "exec", "--lab", &lab.name, pod, "--", "sh", "-c", "trap '' TERM; sleep 1000"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("weir lab exec")
}

#[test]
fn pod_kill_kills_the_selected_pods_processes_only() {
    let Some(lab) = lab("chkil") else { return };
    let plan = lab.plan();
    let roots = weir_lab::runtime::Roots::discover().expect("roots");
    let pids = |name: &str| {
        let pod = plan.pod(name).expect("pod");
        weir_host::Cgroup::new(roots.cgroup2.join(&pod.cgroup)).pids_recursive()
    };
    let mut in_web = stubborn_process(&lab, "frontend/web");
    let mut in_db = stubborn_process(&lab, "backend/db");
    assert!(eventually(Duration::from_secs(20), || !pids("frontend/web").is_empty() && !pids("backend/db").is_empty()));
    let yaml = "apiVersion: chaos-mesh.org/v1alpha1
kind: PodChaos
metadata: {name: kill-web, namespace: frontend}
spec:
  action: pod-kill
  mode: all
  selector: {labelSelectors: {app: web}}
  gracePeriod: 1
";
    let refused = write(&lab, "container", &yaml.replace("pod-kill", "container-kill"));
    let out = weir(&["apply", "--lab", &lab.name, "-f", &refused]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("spec.action"), "{out:?}");
    assert!(!pids("frontend/web").is_empty(), "nothing killed on a refusal");

    weir_ok(&["apply", "--lab", &lab.name, "-f", &write(&lab, "kill", yaml)]);
    // SIGTERM is ignored; SIGKILL follows the grace period.
    assert!(eventually(Duration::from_secs(30), || pids("frontend/web").is_empty()), "web's processes live on");
    assert!(eventually(Duration::from_secs(10), || in_web.try_wait().ok().flatten().is_some()), "weir lab exec ended");
    assert!(!pids("backend/db").is_empty(), "db was not selected");
    assert!(in_db.try_wait().expect("wait").is_none(), "db's process lives");
    let listed = weir_ok(&["chaos", "list", "--lab", &lab.name]);
    assert!(listed.contains("kill-web") && listed.contains("pod-kill ("), "{listed}");
    assert!(affected(&lab, "frontend/kill-web") >= 1, "the processes signalled are counted");
    let _ = in_db.kill();
}

#[test]
fn a_restarted_agent_lists_stops_and_delays_what_it_had() {
    let Some(lab) = lab("chrec") else { return };
    let plan = lab.plan();
    let pod = |n: &str| plan.pod(n).expect("pod").clone();
    let (web, api, db) = (pod("frontend/web"), pod("backend/api"), pod("backend/db"));
    let delay = write(&lab, "delay", &format!("{WEB_TO_API}  action: delay\n  delay: {{latency: 100ms}}\n"));
    let cut = PARTITION.replace("web-api-cut", "web-db-cut").replace("app: api", "app: db");
    let partition = write(&lab, "partition", &cut);
    weir_ok(&["apply", "--lab", &lab.name, "-f", &delay, "-f", &partition]);
    assert!(!udp_ok(&web.netns, &db.netns, db.ip), "partitioned");
    for node in &plan.nodes {
        let pid = weir_lab::runtime::agent_pid(node).expect("agent running");
        weir_host::process::kill(pid, libc::SIGKILL);
        assert!(eventually(Duration::from_secs(5), || !weir_host::process::alive(pid)), "the agent died");
    }
    weir_ok(&["lab", "up", "-f", &lab.spec_path.to_string_lossy()]);
    // The new agents know both, and the delay line runs again.
    assert_eq!(running(&lab).0, vec!["frontend/web-api".to_string(), "frontend/web-db-cut".to_string()]);
    assert!(
        eventually(Duration::from_secs(30), || {
            let rtts = round_trips(&web.netns, &api.netns, api.ip, 5);
            rtts.len() == 5 && rtts.iter().all(|rtt| *rtt >= Duration::from_millis(100))
        }),
        "web -> api is not delayed after the restart"
    );
    assert!(!udp_ok(&web.netns, &db.netns, db.ip), "still partitioned");
    weir_ok(&["chaos", "stop", "--lab", &lab.name, "frontend/web-db-cut"]);
    assert!(udp_ok(&web.netns, &db.netns, db.ip), "the partition the new agent stopped is healed");
    weir_ok(&["delete", "--lab", &lab.name, "-f", &delay]);
    assert!(median(round_trips(&web.netns, &api.netns, api.ip, 5)) < Duration::from_millis(50), "undelayed");
    assert_eq!(running(&lab).0, Vec::<String>::new());
    let shaper_gone = || {
        plan.nodes
            .iter()
            .all(|node| weir_host::iproute::ip(Some(&node.netns), &["link", "show", "dev", "weir-shaper"]).is_err())
    };
    assert!(shaper_gone(), "the delay line's veth outlived the experiment");

    // An experiment that ends while no agent runs: the restarted agents
    // find it ended and remove what it left (its veth pair).
    let brief = write(
        &lab,
        "brief",
        &format!("{WEB_TO_API}  action: delay\n  delay: {{latency: 100ms}}\n").replace("duration: 10m", "duration: 2s"),
    );
    weir_ok(&["apply", "--lab", &lab.name, "-f", &brief]);
    for node in &plan.nodes {
        let pid = weir_lab::runtime::agent_pid(node).expect("agent running");
        weir_host::process::kill(pid, libc::SIGKILL);
        assert!(eventually(Duration::from_secs(5), || !weir_host::process::alive(pid)), "the agent died");
    }
    assert!(
        eventually(Duration::from_secs(30), || median(round_trips(&web.netns, &api.netns, api.ip, 3))
            < Duration::from_millis(50)),
        "still delayed after its end"
    );
    assert!(!shaper_gone(), "the dead agents left the veth pair");
    weir_ok(&["lab", "up", "-f", &lab.spec_path.to_string_lossy()]);
    // Before anyone asks: a starting agent cleans up what ended.
    assert!(shaper_gone(), "the restarted agents left the ended experiment's veth pair");
    let listed = weir_ok(&["chaos", "list", "--lab", &lab.name]);
    assert!(listed.contains("web-api") && listed.contains("ended"), "{listed}");
}
