//! Weir's CNI plugin under Debian's real container runtimes (see
//! `common/runtimes.rs`): containers of both on Weir's network, published
//! ports, events and profiles, many at once. Labels: `cni_labels.rs`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cni_host::*;
use common::runtimes::*;
use common::*;

/// Whether a `weir-cni` process runs with `arg` in its CNI_ARGS.
fn plugin_waiting_for(arg: &str) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else { return false };
    procs.flatten().any(|p| {
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        argv0.ends_with(b"weir-cni")
            && std::fs::read(p.path().join("environ")).is_ok_and(|env| {
                env.split(|b| *b == 0).any(|v| {
                    v.strip_prefix(b"CNI_ARGS=").is_some_and(|a| a.split(|b| *b == b';').any(|kv| kv == arg.as_bytes()))
                })
            })
    })
}

fn veth_count(netns: &str) -> usize {
    let out = weir_host::iproute::ip(Some(netns), &["-o", "link", "show"]).unwrap_or_default();
    out.lines().filter(|l| l.contains(": wcni")).count()
}

#[test]
fn containerd_and_podman_containers_are_pods_on_weirs_network() {
    if !privileged("containerd_and_podman_containers_are_pods_on_weirs_network") {
        return;
    }
    assert!(
        rootfs().join("bin/busybox").exists()
            && Path::new("/usr/bin/podman").exists()
            && Path::new("/usr/bin/ctr").exists(),
        "the runtimes and {} are installed by scripts/setup.sh",
        rootfs().display()
    );
    let host = CniHost::new("cnirt", SUBNET);
    let mut agent = host.start_agent();
    let rt = Runtimes::new(host);
    let socket = rt.host.socket_text();
    let httpd = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/etc"];
    let sleep = ["/bin/busybox", "sleep", "600"];

    let _c1 = rt.ctr_run("c1", &httpd);
    let c2 = rt.ctr_run("c2", &sleep);
    rt.podman_run("p1", false, &[], &httpd);
    rt.podman_run("p2", false, &[], &sleep);
    rt.podman_run("p3", true, &[], &sleep);
    let containers = [
        Container::Ctr("c1".into(), rt.namespace.clone()),
        Container::Ctr("c2".into(), rt.namespace.clone()),
        Container::Podman("p1".into(), false),
        Container::Podman("p2".into(), false),
        Container::Podman("p3".into(), true),
    ];
    let endpoints = policy_endpoints(&socket);
    for c in &containers {
        assert!(endpoints.contains(&c.pod()), "{} is an endpoint: {endpoints:?}", c.pod());
    }
    let ip = |pod: &str| policy_endpoint_ip(&socket, pod);
    let (c1_ip, p1_ip, p3_ip) = (ip(&containers[0].pod()), ip("default/p1"), ip("default/p3"));
    for c in &containers {
        assert!(rt.fetch(c, c1_ip, 8080), "{} reaches containerd's c1", c.pod());
        assert!(rt.fetch(c, p1_ip, 8080), "{} reaches podman's p1", c.pod());
    }

    // A Service whose backends are c1 and p1: its ClusterIP is on no link
    // and no route, so only the socket load balancer gets a container there.
    let service = rt.host.dir.join("service.yaml");
    std::fs::write(
        &service,
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  clusterIP: 10.96.0.80\n  ports:\n  - {{name: http, port: 80, targetPort: 8080}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports:\n  - {{name: http, protocol: TCP, port: 8080}}\nendpoints:\n  - {{addresses: [\"{c1_ip}\"]}}\n  - {{addresses: [\"{p1_ip}\"]}}\n"
        ),
    )
    .expect("service");
    weir_ok(&["apply", "-f", &service.to_string_lossy(), "--socket", &socket]);
    let cluster_ip: std::net::Ipv4Addr = "10.96.0.80".parse().expect("ip");
    for c in [&containers[1], &containers[3]] {
        assert!(rt.fetch(c, cluster_ip, 80), "{} reaches the Service web through its ClusterIP", c.pod());
    }

    // A NetworkPolicy refusing one container: every pod of `default` takes
    // 8080 from the subnet except p3.
    let policy = rt.host.dir.join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: not-p3, namespace: default}}\nspec:\n  podSelector: {{}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: {SUBNET}, except: [{p3_ip}/32]}}}}]\n    ports: [{{port: 8080}}]\n"
        ),
    )
    .expect("policy");
    weir_ok(&["apply", "-f", &policy.to_string_lossy(), "--socket", &socket]);
    assert!(!rt.fetch(&containers[4], c1_ip, 8080), "p3 (crun) is refused");
    assert!(rt.fetch(&containers[3], c1_ip, 8080), "p2 still reaches c1");
    assert!(rt.fetch(&containers[1], p1_ip, 8080), "c2 still reaches p1");
    let dropped =
        weir_ok(&["observe", "--socket", &socket, "--last", "100", "--verdict", "dropped", "-o", "weir-json"]);
    assert!(
        dropped
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|f| f["source"]["pod"] == "p3" && f["destination"]["pod"] == format!("{}-c1", rt.namespace)),
        "weir observe shows p3 -> c1 dropped: {dropped}"
    );

    // The agent SIGKILLed: running containers keep talking; restarted, it
    // still has them, and a new container joins.
    agent.0.kill().expect("SIGKILL");
    let _ = agent.0.wait();
    assert!(rt.fetch(&containers[3], c1_ip, 8080), "p2 reaches c1 with the agent dead");
    let mut agent_again = rt.host.start_agent();
    let endpoints = policy_endpoints(&socket);
    assert!(containers.iter().all(|c| endpoints.contains(&c.pod())), "{endpoints:?}");
    rt.podman_run("p4", false, &[], &sleep);
    let p4 = Container::Podman("p4".into(), false);
    assert!(rt.fetch(&p4, c1_ip, 8080), "p4, started after the restart, reaches c1");
    // A container started while the agent is down waits in ADD for it, and
    // comes up once it is back.
    agent_again.0.kill().expect("SIGKILL");
    let _ = agent_again.0.wait();
    let rootfs_dir = rootfs();
    let mut args = vec!["run", "-d", "--network", "weirnet", "--name", "p5", "--runtime", "runc"];
    args.extend_from_slice(&LIMITS);
    args.extend_from_slice(&["--rootfs", rootfs_dir.to_str().expect("utf-8"), "/bin/busybox", "sleep", "600"]);
    let run = rt.podman_command(false, &args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("podman");
    // The agent returns only once the plugin's ADD for p5 is waiting for it.
    assert!(eventually(Duration::from_secs(30), || plugin_waiting_for("K8S_POD_NAME=p5")), "ADD of p5 runs");
    let _agent = rt.host.start_agent();
    let started = run.wait_with_output().expect("podman run");
    assert!(
        started.status.success(),
        "podman run p5 with the agent away: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    let p5 = Container::Podman("p5".into(), false);
    assert!(policy_endpoints(&socket).contains(&p5.pod()), "p5 is an endpoint");
    assert!(rt.fetch(&p5, c1_ip, 8080), "p5, started while the agent was down, reaches c1");
    assert!(!rt.fetch(&containers[4], c1_ip, 8080), "p3 is still refused");

    // Removed containers leave no veth, address or endpoint behind.
    let allocated = || -> Vec<String> {
        std::fs::read_dir(rt.host.dir.join("ipam/weirnet"))
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    let (p2_ip, c2_ip) = (ip("default/p2").to_string(), ip(&containers[1].pod()).to_string());
    assert!(allocated().contains(&p2_ip) && allocated().contains(&c2_ip), "{:?}", allocated());
    assert_eq!(veth_count(&rt.host.netns), 7, "one veth per container");
    let out = rt.podman(false, &["rm", "-f", "-t", "0", "p2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = rt.ctr(&["task", "kill", "-s", "KILL", "c2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        eventually(Duration::from_secs(30), || {
            let endpoints = policy_endpoints(&socket);
            !endpoints.contains(&"default/p2".to_string()) && !endpoints.contains(&containers[1].pod())
        }),
        "p2 and c2 are forgotten: {:?}",
        policy_endpoints(&socket)
    );
    assert!(eventually(Duration::from_secs(10), || veth_count(&rt.host.netns) == 5), "their veths are gone");
    assert!(
        !allocated().contains(&p2_ip) && !allocated().contains(&c2_ip),
        "their addresses are free: {:?}",
        allocated()
    );
    // No kernel table holds their addresses, and no identity is left that
    // no one has.
    for map in ["pod_endpoints", "ipcache", "policy_maps"] {
        let keys = pinned_map_keys(&rt.host.pins.join("maps").join(map));
        assert!(!keys.is_empty(), "{map} holds the other containers'");
        for gone in [&p2_ip, &c2_ip] {
            let octets = gone.parse::<std::net::Ipv4Addr>().expect("ip").octets();
            assert!(!keys.iter().any(|k| k.windows(4).any(|w| w == octets)), "{map} still holds {gone}: {keys:?}");
        }
    }
    let list: serde_json::Value =
        serde_json::from_str(&weir_ok(&["policy", "list", "--socket", &socket, "-o", "json"])).expect("json");
    let node = &list[0];
    let held: Vec<&serde_json::Value> = node["endpoints"]
        .as_array()
        .into_iter()
        .chain(node["ipcache"].as_array())
        .flatten()
        .map(|e| &e["identity"])
        .collect();
    for identity in node["identities"].as_array().into_iter().flatten() {
        assert!(held.contains(&&identity["id"]), "identity {identity} is no one's: {node}");
    }
    drop(c2);
}

/// A client on another machine: a network namespace and a cgroup of its
/// own, which the agent's socket load balancer is told to leave alone (on
/// one kernel, it would otherwise translate the client's connects as the
/// host's own).
struct Outside {
    netns: String,
    cgroup: weir_host::Cgroup,
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.cgroup.kill_all(Duration::from_secs(5));
        let _ = self.cgroup.destroy();
    }
}

impl Outside {
    /// `curl` to `ip:port`: the page, if any.
    fn curl(&self, ip: &str, port: u16) -> Option<String> {
        let url = format!("http://{ip}:{port}/hostname");
        let mut cmd = Command::new("curl");
        cmd.args(["-sf", "-m", "5", &url]);
        weir_host::netns::confine_command(
            &mut cmd,
            Some(weir_host::netns::open(&self.netns).expect("open netns")),
            Some(self.cgroup.procs_for_join().expect("cgroup")),
        );
        let out = cmd.output().ok()?;
        (out.status.success() && !out.stdout.is_empty()).then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The host-port frontends the agent on `socket` holds, as `address:port -> backend:port`.
fn host_port_frontends(socket: &str) -> Vec<String> {
    let list: serde_json::Value =
        serde_json::from_str(&weir_ok(&["service", "list", "--socket", socket, "-o", "json"])).expect("json");
    list.as_array()
        .into_iter()
        .flatten()
        .filter(|fe| fe["kind"] == "HostPort")
        .map(|fe| {
            let backend = &fe["backends"][0];
            format!(
                "{}:{} -> {}:{}",
                fe["address"].as_str().unwrap_or(""),
                fe["port"],
                backend["address"].as_str().unwrap_or(""),
                backend["port"]
            )
        })
        .collect()
}

#[test]
fn podman_run_p_publishes_a_host_port_reachable_from_another_namespace() {
    if !privileged("podman_run_p_publishes_a_host_port_reachable_from_another_namespace") {
        return;
    }
    assert!(
        rootfs().join("bin/busybox").exists() && Path::new("/usr/bin/podman").exists(),
        "podman and {} are installed by scripts/setup.sh",
        rootfs().display()
    );
    let host = CniHost::new("cnipm", SUBNET);
    // A client outside the host: the uplink's peer moved into a namespace
    // of its own, as the host's default gateway 192.0.2.1.
    let roots = weir_lab::runtime::Roots::discover().expect("roots");
    let client = Outside {
        netns: host.container_netns("cnipmc"),
        cgroup: weir_host::Cgroup::new(roots.cgroup2.join(unique_name("cnipmc"))),
    };
    client.cgroup.create().expect("client cgroup");
    weir_host::iproute::ip(Some(&host.netns), &["link", "set", "peer0", "netns", &client.netns]).expect("move peer0");
    weir_host::iproute::batch(
        Some(&client.netns),
        &["link set lo up".into(), "addr add 192.0.2.1/24 dev peer0".into(), "link set peer0 up".into()],
    )
    .expect("client network");
    // A host publishing ports forwards, as one running containers does
    // (translated packets are routed with bpf_fib_lookup, which needs it).
    let out = Command::new("ip")
        .args(["netns", "exec", &host.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .output()
        .expect("sysctl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let opt_out = client.cgroup.path().to_string_lossy().into_owned();
    let mut agent = host.start_agent_with(&["--socket-lb-opt-out", &opt_out]);
    let rt = Runtimes::new(host);
    let socket = rt.host.socket_text();
    let httpd = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/etc"];

    rt.podman_run("web", false, &["-p", "8082:8080", "--hostname", "web-hostname"], &httpd);
    let web_ip = policy_endpoint_ip(&socket, "default/web");
    assert_eq!(host_port_frontends(&socket), [format!("192.0.2.10:8082 -> {web_ip}:8080")]);
    let mut page = None;
    assert!(
        eventually(Duration::from_secs(20), || {
            page = client.curl("192.0.2.10", 8082);
            page.is_some()
        }),
        "192.0.2.10:8082 from the client reaches web's 8080"
    );
    assert_eq!(page.as_deref().map(str::trim), Some("web-hostname"));
    // From the host itself: the socket load balancer translates the connect.
    let on_host = Command::new("ip")
        .args(["netns", "exec", &rt.host.netns, "curl", "-sf", "-m", "5", "http://192.0.2.10:8082/hostname"])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&on_host.stdout).trim(), "web-hostname", "from the host");

    // The agent SIGKILLed and restarted: the mapping is still published.
    agent.0.kill().expect("SIGKILL");
    let _ = agent.0.wait();
    let _agent = rt.host.start_agent_with(&["--socket-lb-opt-out", &opt_out]);
    assert_eq!(host_port_frontends(&socket), [format!("192.0.2.10:8082 -> {web_ip}:8080")], "after a restart");
    assert!(client.curl("192.0.2.10", 8082).is_some_and(|p| p.trim() == "web-hostname"), "reached after a restart");

    // The port is taken: a second container asking for it is refused, by
    // name, and leaves nothing behind.
    let rootfs = rootfs();
    // `podman run` of web2 publishing `mapping`, expected to fail (podman
    // keeps the created container: it is removed after).
    let run_web2 = |mapping: &str| {
        let mut args = vec!["run", "-d", "--network", "weirnet", "--name", "web2", "--runtime", "runc"];
        args.extend_from_slice(&LIMITS);
        args.extend_from_slice(&["-p", mapping, "--rootfs", rootfs.to_str().expect("utf-8")]);
        args.extend_from_slice(&httpd);
        let out = rt.podman(false, &args);
        let _ = rt.podman(false, &["rm", "-f", "-t", "0", "web2"]);
        out
    };
    let out = run_web2("8082:8080");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "web2 must not start on a taken host port");
    assert!(stderr.contains("192.0.2.10:8082/TCP already belongs to default/container web on"), "{stderr}");
    assert!(!policy_endpoints(&socket).contains(&"default/web2".to_string()), "web2 is no endpoint");
    assert_eq!(veth_count(&rt.host.netns), 1, "web2's veth is gone");
    assert_eq!(host_port_frontends(&socket), [format!("192.0.2.10:8082 -> {web_ip}:8080")]);

    // Removed, the container's mapping goes with it: the port is free again.
    let out = rt.podman(false, &["rm", "-f", "-t", "0", "web"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(host_port_frontends(&socket).is_empty(), "{:?}", host_port_frontends(&socket));
    assert!(client.curl("192.0.2.10", 8082).is_none(), "nothing answers on 8082 any more");
    rt.podman_run("web3", false, &["-p", "8082:8080", "--hostname", "web3-hostname"], &httpd);
    assert!(
        eventually(Duration::from_secs(20), || client
            .curl("192.0.2.10", 8082)
            .is_some_and(|p| p.trim() == "web3-hostname")),
        "the freed port publishes web3"
    );

    // A Service's node port and a container's host port exclude each other,
    // whichever comes first; the refusal names the holder.
    let service = |name: &str, node_port: u16| {
        let file = rt.host.dir.join(format!("{name}.yaml"));
        std::fs::write(
            &file,
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.{}\n  ports:\n  - {{port: 80, targetPort: 8080, nodePort: {node_port}}}\n",
                node_port - 30000
            ),
        )
        .expect("service");
        weir(&["apply", "-f", &file.to_string_lossy(), "--socket", &socket])
    };
    assert!(service("held", 30080).status.success(), "a NodePort Service on 30080");
    let refused = run_web2("30080:8080");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("192.0.2.10:30080/TCP already belongs to default/held"),
        "{stderr}"
    );
    rt.podman_run("web5", false, &["-p", "30081:8080"], &httpd);
    let out = service("late", 30081);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("already belongs to default/container web5 on"), "{stderr}");
}

/// `weir events -o json` from the agent on `socket`, in the background.
struct Events {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Events {
    fn start(socket: &str) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["events", "--socket", socket, "--type", "exec", "-o", "json", "--timeout", "120s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("weir events");
        let lines: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Default::default();
        let sink = lines.clone();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    sink.lock().expect("events").push(v);
                }
            }
        });
        Self { child, lines }
    }

    /// The policies that matched `pod`'s exec events with `marker` as an argument.
    fn policies_of(&self, marker: &str, pod: &str) -> Vec<String> {
        self.lines
            .lock()
            .expect("events")
            .iter()
            .filter(|e| e["process"]["arguments"].as_array().is_some_and(|a| a.iter().any(|x| x == marker)))
            .filter(|e| {
                let p = &e["process"]["pod"];
                format!("{}/{}", p["namespace"].as_str().unwrap_or("-"), p["name"].as_str().unwrap_or("-")) == pod
            })
            .filter_map(|e| e["policy"]["name"].as_str().map(str::to_string))
            .collect()
    }

    /// The pods (NAMESPACE/NAME) of the exec events with `marker` as an argument.
    fn pods_of(&self, marker: &str) -> Vec<String> {
        self.lines
            .lock()
            .expect("events")
            .iter()
            .filter(|e| e["process"]["arguments"].as_array().is_some_and(|a| a.iter().any(|x| x == marker)))
            .map(|e| {
                let pod = &e["process"]["pod"];
                format!("{}/{}", pod["namespace"].as_str().unwrap_or("-"), pod["name"].as_str().unwrap_or("-"))
            })
            .collect()
    }
}

/// A profile of `pod` through the agent on `socket`: the pod frames of its
/// stacks with their counts.
fn profile_pod(socket: &str, pod: &str, dir: &Path) -> Vec<(String, u64)> {
    let out = dir.join(format!("{}.folded", pod.replace('/', ".")));
    weir_ok(&["profile", "--socket", socket, "--pod", pod, "--duration", "2s", "-o", &out.to_string_lossy()]);
    std::fs::read_to_string(&out)
        .expect("folded")
        .lines()
        .filter_map(|l| {
            let (stack, count) = l.rsplit_once(' ')?;
            Some((stack.split(';').nth(1)?.to_string(), count.parse().ok()?))
        })
        .collect()
}

#[test]
fn containers_are_named_in_events_and_profiles_and_checked_with_the_agent() {
    if !privileged("containers_are_named_in_events_and_profiles_and_checked_with_the_agent") {
        return;
    }
    assert!(rootfs().join("bin/busybox").exists(), "{} is built by scripts/setup.sh", rootfs().display());
    let host = CniHost::new("cniev", SUBNET);
    let _agent = host.start_agent_with(&["--runtime", "true"]);
    let rt = Runtimes::new(host);
    let socket = rt.host.socket_text();
    // A RuntimePolicy applied before the containers exist: it must cover
    // them once their cgroups are found.
    let audit = rt.host.dir.join("audit.yaml");
    std::fs::write(
        &audit,
        "apiVersion: weir.dev/v1alpha1\nkind: RuntimePolicy\nmetadata: {name: audit-default}\nspec:\n  selector: {namespaces: [default]}\n  rules:\n  - operations: [exec]\n    action: audit\n",
    )
    .expect("policy");
    weir_ok(&["apply", "-f", &audit.to_string_lossy(), "--socket", &socket]);
    // A busy loop: what the profile must find.
    let busy = ["/bin/busybox", "sh", "-c", "while :; do :; done"];
    let _c1 = rt.ctr_run("c1", &busy);
    rt.podman_run("p1", false, &[], &busy);
    let c1 = Container::Ctr("c1".into(), rt.namespace.clone());
    let p1 = Container::Podman("p1".into(), false);

    // Each container's cgroup is found once it runs: the agent says so.
    for c in [&c1, &p1] {
        let pod = c.pod();
        assert!(
            eventually(Duration::from_secs(30), || profile_pod_known(&socket, &pod)),
            "the agent found {pod}'s cgroup"
        );
    }

    // A command run in each container is an exec event of its pod.
    let events = Events::start(&socket);
    let marker = unique_name("mark");
    let exec = |c: &Container| match c {
        Container::Ctr(id, _) => {
            let exec_id = unique_name("x");
            rt.ctr(&["task", "exec", "--exec-id", &exec_id, id, "/bin/busybox", "echo", &marker])
        }
        Container::Podman(name, crun) => rt.podman(*crun, &["exec", name, "/bin/busybox", "echo", &marker]),
    };
    for c in [&c1, &p1] {
        let pod = c.pod();
        assert!(
            eventually(Duration::from_secs(20), || {
                let out = exec(c);
                assert!(out.status.success(), "exec in {pod}: {}", String::from_utf8_lossy(&out.stderr));
                events.pods_of(&marker).contains(&pod)
            }),
            "weir events names {pod} for a command run in it: {:?}",
            events.pods_of(&marker)
        );
        assert!(
            events.policies_of(&marker, &pod).contains(&"audit-default".to_string()),
            "the RuntimePolicy applied before {pod} existed audits it: {:?}",
            events.policies_of(&marker, &pod)
        );
    }

    // A profile of each container holds its busy loop, under its name.
    for c in [&c1, &p1] {
        let pod = c.pod();
        let stacks = profile_pod(&socket, &pod, &rt.host.dir);
        let samples: u64 = stacks.iter().filter(|(p, _)| *p == pod).map(|(_, n)| n).sum();
        assert!(samples > 0, "a profile of {pod} has its busy loop: {stacks:?}");
        assert!(stacks.iter().all(|(p, _)| *p == pod), "only {pod} is profiled: {stacks:?}");
    }
    let unknown = weir(&["profile", "--socket", &socket, "--pod", "default/nobody", "--duration", "100ms"]);
    assert!(!unknown.status.success(), "no such pod");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("default/nobody"), "the error names the pod");
}

/// Whether the agent on `socket` knows `pod`'s cgroup (a profile of it is accepted).
fn profile_pod_known(socket: &str, pod: &str) -> bool {
    weir(&["profile", "--socket", socket, "--pod", pod, "--duration", "10ms", "-o", "/dev/null", "--format", "folded"])
        .status
        .success()
}

/// Runs `commands` at once; each one's success and stderr, in order.
fn run_all(commands: Vec<Command>) -> Vec<(bool, String)> {
    let children: Vec<_> = commands
        .into_iter()
        .map(|mut c| c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn"))
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("wait");
            (out.status.success() && !out.stdout.is_empty(), String::from_utf8_lossy(&out.stderr).into_owned())
        })
        .collect()
}

#[test]
fn ten_containers_from_each_runtime_reach_each_other() {
    if !privileged("ten_containers_from_each_runtime_reach_each_other") {
        return;
    }
    assert!(rootfs().join("bin/busybox").exists(), "{} is built by scripts/setup.sh", rootfs().display());
    let host = CniHost::new("cniten", SUBNET);
    let _agent = host.start_agent();
    let rt = Runtimes::new(host);
    let socket = rt.host.socket_text();
    let httpd = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/etc"];
    const EACH: usize = 10;

    // Started at once: ten `ctr run` clients (kept: each removes its
    // container's network when its task ends) and ten `podman run -d`.
    let rootfs = rootfs();
    let ctr_ids: Vec<String> = (0..EACH).map(|i| format!("c{i}")).collect();
    let _ctr_clients: Vec<KillOnDrop> = ctr_ids
        .iter()
        .map(|id| {
            let mut args = vec!["run", "--rm", "--cni", "--rootfs", rootfs.to_str().expect("utf-8"), id.as_str()];
            args.extend_from_slice(&httpd);
            let log = std::fs::File::create(rt.host.dir.join(format!("ctr-{id}.log"))).expect("log");
            KillOnDrop(
                rt.ctr_command(&args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().expect("ctr"),
            )
        })
        .collect();
    let podman_names: Vec<String> = (0..EACH).map(|i| format!("p{i}")).collect();
    let started = run_all(podman_names.iter().map(|n| rt.podman_run_command(n, false, &[], &httpd)).collect());
    for (name, (ok, stderr)) in podman_names.iter().zip(&started) {
        // `podman run -d` succeeds printing the container's id.
        assert!(ok, "podman run {name}: {stderr}");
    }
    let containers: Vec<Container> = ctr_ids
        .iter()
        .map(|id| Container::Ctr(id.clone(), rt.namespace.clone()))
        .chain(podman_names.iter().map(|n| Container::Podman(n.clone(), false)))
        .collect();
    assert!(
        eventually(Duration::from_secs(60), || {
            let endpoints = policy_endpoints(&socket);
            containers.iter().all(|c| endpoints.contains(&c.pod()))
        }),
        "all {} containers are the agent's endpoints: {:?}",
        containers.len(),
        policy_endpoints(&socket)
    );
    assert_eq!(veth_count(&rt.host.netns), 2 * EACH, "one veth each");
    let ips: Vec<std::net::Ipv4Addr> = containers.iter().map(|c| policy_endpoint_ip(&socket, &c.pod())).collect();
    let mut distinct = ips.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), ips.len(), "one address each: {ips:?}");

    // Traffic: each container fetches from the next one (a ring through
    // both runtimes) and from its counterpart in the other runtime, all at
    // once; httpd may still be starting, so a failed fetch is tried again.
    let n = containers.len();
    let mut pairs: Vec<(usize, usize)> = (0..n).flat_map(|i| [(i, (i + 1) % n), (i, (i + EACH) % n)]).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = Vec::new();
    while !pairs.is_empty() && std::time::Instant::now() < deadline {
        let results = run_all(pairs.iter().map(|(a, b)| rt.fetch_command(&containers[*a], ips[*b], 8080)).collect());
        last = pairs.iter().zip(&results).filter(|(_, (ok, _))| !ok).map(|(p, (_, e))| (*p, e.clone())).collect();
        pairs = last.iter().map(|(p, _)| *p).collect();
    }
    let failed: Vec<String> =
        last.iter().map(|((a, b), e)| format!("{} -> {}: {e}", containers[*a].pod(), containers[*b].pod())).collect();
    assert!(pairs.is_empty(), "every container reaches its neighbours: {failed:?}");
}

/// The keys of the map pinned at `pin`, as `bpftool` dumps them.
fn pinned_map_keys(pin: &std::path::Path) -> Vec<Vec<u8>> {
    let out =
        std::process::Command::new("bpftool").args(["-j", "map", "dump", "pinned"]).arg(pin).output().expect("bpftool");
    assert!(out.status.success(), "bpftool map dump {}: {}", pin.display(), String::from_utf8_lossy(&out.stderr));
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool's json");
    let byte = |b: &serde_json::Value| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok();
    entries
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["key"].as_array().into_iter().flatten().filter_map(byte).collect())
        .collect()
}
