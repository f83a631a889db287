//! Runtime security end to end: a real lab with agents, real processes in
//! pods, `weir events` as a user runs it, policies applied with `weir apply`.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// `weir events -o json` running in the background; killed on drop.
struct EventStream {
    child: Child,
    events: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl EventStream {
    fn start(lab: &TestLab, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["events", "--lab", &lab.name, "-o", "json", "--timeout", "60s"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("weir events");
        let events: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let sink = events.clone();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    sink.lock().expect("events").push(v);
                }
            }
        });
        Self { child, events }
    }

    fn snapshot(&self) -> Vec<serde_json::Value> {
        self.events.lock().expect("events").clone()
    }

    /// Runs `true` in `pod` until its exec shows up: the stream is connected.
    fn wait_connected(&self, lab: &TestLab, pod: &str) {
        let ok = eventually(Duration::from_secs(10), || {
            lab.exec(pod, &["true"]);
            self.snapshot().iter().any(|e| e["type"] == "exec" && e["process"]["binary"] == "/usr/bin/true")
        });
        assert!(ok, "weir events delivered nothing");
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write_policy(lab: &TestLab, name: &str, spec: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}-{name}.yaml", lab.name));
    std::fs::write(
        &path,
        format!("apiVersion: weir.dev/v1alpha1\nkind: RuntimePolicy\nmetadata: {{name: {name}}}\nspec:\n{spec}"),
    )
    .expect("policy file");
    path
}

fn runtime_list(lab: &TestLab) -> serde_json::Value {
    serde_json::from_str(&weir_ok(&["runtime", "list", "--lab", &lab.name, "-o", "json"])).expect("json")
}

#[test]
fn a_shell_pipeline_in_a_pod_gives_exec_fork_and_exit_with_ancestry_and_pod() {
    let Some(lab) = TestLab::for_test("rt_pipeline", true) else { return };
    let stream = EventStream::start(&lab, &["--pod", "frontend/web"]);
    stream.wait_connected(&lab, "frontend/web");
    let out = lab.exec("frontend/web", &["sh", "-c", "echo hello | cat > /dev/null; exit 2"]);
    assert_eq!(out.status.code(), Some(2));
    let shell_exit = |evs: &[serde_json::Value]| {
        evs.iter().any(|e| e["type"] == "exit" && e["process"]["binary"] == "/usr/bin/dash" && e["exit"]["status"] == 2)
    };
    assert!(eventually(Duration::from_secs(10), || shell_exit(&stream.snapshot())), "{:#?}", stream.snapshot());
    let evs = stream.snapshot();
    let sh = evs
        .iter()
        .find(|e| {
            e["type"] == "exec"
                && e["process"]["binary"] == "/usr/bin/dash"
                && e["process"]["arguments"][2].as_str().is_some_and(|a| a.contains("hello"))
        })
        .expect("the shell's exec");
    let cat = evs.iter().find(|e| e["type"] == "exec" && e["process"]["binary"] == "/usr/bin/cat").expect("cat's exec");
    assert_eq!(cat["process"]["parentExecId"], sh["process"]["execId"], "cat's parent is the shell");
    assert_eq!(cat["parent"]["binary"], "/usr/bin/dash");
    assert_eq!(cat["process"]["pod"]["namespace"], "frontend");
    assert_eq!(cat["process"]["pod"]["name"], "web");
    assert_eq!(cat["process"]["pod"]["labels"]["app"], "web");
    let here = std::env::current_dir().expect("cwd").display().to_string();
    assert_eq!(cat["process"]["cwd"], here.as_str(), "weir lab exec keeps the caller's directory");
    assert!(cat["process"]["execId"].as_str().is_some_and(|id| id.starts_with("node-a:")), "{cat}");
    let cat_pid = cat["process"]["pid"].clone();
    assert!(
        evs.iter().any(|e| e["type"] == "fork" && e["process"]["pid"] == cat_pid),
        "the shell forked cat's process"
    );
    assert!(evs.iter().any(|e| e["type"] == "exit" && e["process"]["pid"] == cat_pid && e["exit"]["status"] == 0));
    assert!(evs.iter().all(|e| e["process"]["pod"]["name"] == "web"), "only the pod asked for");

    // A bad policy is refused naming the field, and nothing changes.
    let before = runtime_list(&lab);
    let bad = write_policy(&lab, "bad", "  rules: [{operations: [exec], actoin: kill}]\n");
    let out = weir(&["apply", "--lab", &lab.name, "-f", &bad.display().to_string()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.rules[0].actoin"), "{err}");
    let bad = write_policy(&lab, "bad2", "  rules: [{operations: [listen], action: deny}]\n");
    let out = weir(&["apply", "--lab", &lab.name, "-f", &bad.display().to_string()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.rules[0].operations[0]"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(runtime_list(&lab), before, "nothing changed");
}

#[test]
fn a_kill_policy_stops_a_binary_in_the_selected_pods_before_it_runs() {
    let Some(lab) = TestLab::for_test("rt_kill", true) else { return };
    let dir = std::env::temp_dir().join(unique_name("weir-rt-kill-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let forbidden = dir.join("forbidden");
    std::fs::copy("/usr/bin/touch", &forbidden).expect("copy touch");
    let forbidden = forbidden.display().to_string();
    let policy = write_policy(
        &lab,
        "no-forbidden",
        &format!("  selector:\n    binaries: [{{exact: '{forbidden}'}}]\n    podSelector: {{matchLabels: {{app: api}}}}\n  rules: [{{operations: [exec], action: kill}}]\n"),
    );
    let applied = weir_ok(&["apply", "--lab", &lab.name, "-f", &policy.display().to_string()]);
    assert!(applied.contains("created RuntimePolicy no-forbidden"), "{applied}");
    let marker = |name: &str| dir.join(name).display().to_string();
    let out = lab.exec(
        "backend/api",
        &["sh", "-c", &format!("{forbidden} {}; echo $?; touch {}", marker("api"), marker("api-other"))],
    );
    assert_eq!(stdout(&out).trim(), "137", "killed by SIGKILL");
    assert!(!dir.join("api").exists(), "the killed binary never ran an instruction");
    assert!(dir.join("api-other").exists(), "other binaries in the same pod run");
    for pod in ["backend/db", "frontend/web"] {
        let name = pod.replace('/', "-");
        let out = lab.exec(pod, &[&forbidden, &marker(&name)]);
        assert!(out.status.success(), "{pod} is not selected");
        assert!(dir.join(&name).exists(), "{pod} ran it");
    }
    let plan = lab.plan();
    let node_b = plan.node("node-b").expect("node-b");
    assert!(eventually(Duration::from_secs(5), || metric_sum(
        &scrape_metrics(node_b),
        "weir_runtime_policy_actions_total{node=\"node-b\",policy=\"no-forbidden\",action=\"kill\"}"
    ) == 1));
    let list = runtime_list(&lab);
    assert_eq!(list[0]["rules"][0]["enforcement"], "kill at exec");
    assert_eq!(list[1]["rules"][0]["pods"], 1, "node-b has one pod with app=api");
    assert_eq!(list[0]["rules"][0]["pods"], 0, "node-a has none");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_deny_connect_policy_fails_the_call_with_its_errno_and_no_syn_leaves() {
    let Some(lab) = TestLab::for_test("rt_connect", true) else { return };
    let plan = lab.plan();
    let api = plan.pod("backend/api").expect("api");
    let api_ns = api.netns.clone();
    let _listener = weir_host::netns::run_in(&api_ns, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8080)))
        .expect("netns")
        .expect("listen");
    nft_counter(&api_ns, "input", "tcp dport 8080 tcp flags syn");
    let policy = write_policy(
        &lab,
        "no-api",
        &format!("  selector: {{namespaces: [frontend]}}\n  rules:\n  - {{operations: [connect], action: deny, errno: ECONNREFUSED, cidrs: ['{}/32'], ports: [{{port: 8080}}]}}\n", api.ip),
    );
    weir_ok(&["apply", "--lab", &lab.name, "-f", &policy.display().to_string()]);
    let connect = format!("exec 3<>/dev/tcp/{}/8080 && echo connected", api.ip);
    let out = lab.exec("frontend/web", &["bash", "-c", &connect]);
    let said = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && said.contains("Connection refused"), "refused with ECONNREFUSED: {said}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(nft_counted(&api_ns), 0, "no SYN reached the destination");
    // The counter counts: a pod the policy does not select gets through.
    let out = lab.exec("backend/db", &["bash", "-c", &connect]);
    assert!(stdout(&out).contains("connected"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(nft_counted(&api_ns) >= 1);
    let node_a = plan.node("node-a").expect("node-a");
    assert!(eventually(Duration::from_secs(5), || metric_sum(
        &scrape_metrics(node_a),
        "weir_runtime_policy_actions_total{node=\"node-a\",policy=\"no-api\",action=\"deny\"}"
    ) >= 1));
}

#[test]
fn a_burst_of_six_thousand_execs_loses_no_event() {
    let Some(lab) = TestLab::for_test("rt_rate", true) else { return };
    let spawner = compile_fixture("spawn_loop.c", &["-O2"]);
    let plan = lab.plan();
    let node_a = plan.node("node-a").expect("node-a");
    let execs_before = metric_sum(&scrape_metrics(node_a), "weir_runtime_events_total{node=\"node-a\",type=\"exec\"}");
    let out = lab.exec("frontend/web", &[&spawner.display().to_string(), "6000", "2000", "4", "/usr/bin/true"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = stdout(&out);
    let rate: f64 =
        report.split(": ").nth(1).and_then(|t| t.split_whitespace().next()).and_then(|r| r.parse().ok()).expect("rate");
    // The rate is whatever a loaded machine allows; the figure for an idle
    // one is a benchmark's job (scripts/bench/runtime-exec.sh), not a test's.
    assert!(rate > 0.0, "the spawner reports its rate: {report}");
    eprintln!("exec burst: {report}");
    let wanted = execs_before + 6001; // the spawner's own exec too
    let mut text = String::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            text = scrape_metrics(node_a);
            metric_sum(&text, "weir_runtime_events_total{node=\"node-a\",type=\"exec\"}") >= wanted
        }),
        "every exec was read: {text}"
    );
    assert_eq!(metric_sum(&text, "weir_runtime_events_lost_total{node=\"node-a\""), 0, "{text}");
    let _ = std::fs::remove_file(spawner);
}

#[test]
fn an_overflowed_ring_is_told_to_every_stream_and_counted_on_the_metrics_page() {
    if !privileged("runtime ring overflow in a lab") {
        return;
    }
    let name = unique_name("rt-ovf");
    // A one-page ring; the agent reads it every 20 ms.
    let lab = TestLab::up_with(&name, &two_node_spec(&name), true, &["--agent-arg=--runtime-ring-bytes=4096"]);
    let spawner = compile_fixture("spawn_loop.c", &["-O2"]);
    // Two readers as users run them, filtered to exec: JSON, and text.
    let stream = EventStream::start(&lab, &["--type", "exec"]);
    stream.wait_connected(&lab, "frontend/web");
    let mut text_stream = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["events", "--lab", &lab.name, "--type", "exec", "--timeout", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("weir events");
    let text_lines: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let sink = text_lines.clone();
        let stdout = text_stream.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
    }
    assert!(
        eventually(Duration::from_secs(10), || {
            lab.exec("frontend/web", &["true"]);
            text_lines.lock().expect("lines").iter().any(|l| l.contains("/usr/bin/true"))
        }),
        "the text stream is connected"
    );
    // Each exec carries a 1000-byte argument, so the ring holds three of
    // them at most (events are packed: short ones would fit by the dozen).
    let long_argument = "x".repeat(1000);
    // Execs read before the burst (the streams' connection checks ran some).
    let plan = lab.plan();
    let node_a = plan.node("node-a").expect("node-a");
    let exec_metric = "weir_runtime_events_total{node=\"node-a\",type=\"exec\"}";
    let read_before = metric_sum(&scrape_metrics(node_a), exec_metric);
    let out =
        lab.exec("frontend/web", &[&spawner.display().to_string(), "500", "0", "2", "/usr/bin/true", &long_argument]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lost_in_stream = |evs: &[serde_json::Value]| -> u64 {
        evs.iter()
            .filter(|e| {
                e["type"] == "lost_events" && e["lostEvents"]["source"] == "kernel_ring" && e["node"] == "node-a"
            })
            .filter_map(|e| e["lostEvents"]["count"].as_u64())
            .sum()
    };
    assert!(
        eventually(Duration::from_secs(10), || lost_in_stream(&stream.snapshot()) > 0),
        "the JSON stream was told of the loss: {:#?}",
        stream.snapshot().iter().filter(|e| e["type"] != "exec").collect::<Vec<_>>()
    );
    assert!(
        eventually(Duration::from_secs(10), || text_lines
            .lock()
            .expect("lines")
            .iter()
            .any(|l| l.contains("LOST") && l.contains("kernel_ring"))),
        "the text stream was told of the loss"
    );
    let _ = text_stream.kill();
    let _ = text_stream.wait();
    let mut text = String::new();
    let counted = eventually(Duration::from_secs(5), || {
        text = scrape_metrics(node_a);
        metric_sum(&text, "weir_runtime_events_lost_total{node=\"node-a\",cause=\"ring_full\"}") > 0
    });
    assert!(counted, "the overflow is counted: {text}");
    // The burst made 501 execs (the spawner and its 500 children).
    let read = metric_sum(&text, exec_metric).saturating_sub(read_before);
    assert!(read < 501, "not every exec fit: {read} of the burst's read");
    let _ = std::fs::remove_file(spawner);
}
