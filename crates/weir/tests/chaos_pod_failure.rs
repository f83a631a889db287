//! Chaos Mesh PodChaos `pod-failure` in a lab: the selected pods' processes
//! make no progress while frozen (a counter each pod's process writes stops;
//! other pods' counters go on), resume on `weir chaos stop`; one with a
//! short duration thaws on its own with every agent SIGKILLed, and a
//! restarted agent lists (and stops) one still running.

mod chaos_lab;
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chaos_lab::*;
use common::*;

const FREEZE_WEB: &str = "apiVersion: chaos-mesh.org/v1alpha1
kind: PodChaos
metadata: {name: freeze-web, namespace: frontend}
spec:
  action: pod-failure
  mode: all
  selector: {labelSelectors: {app: web}}
  duration: 10m
";

/// A process in `pod` counting into `file` (rewritten whole every 20 ms)
/// while `running` exists.
struct Counter {
    exec: Child,
    file: PathBuf,
    running: PathBuf,
}

impl Counter {
    fn start(lab: &ChaosLab, pod: &str) -> Self {
        let file = lab.dir.join(format!("{}.count", pod.replace('/', ".")));
        let running = lab.dir.join(format!("{}.running", pod.replace('/', ".")));
        std::fs::write(&running, "").expect("running marker");
        let script = format!(
            "i=0; while [ -e {1} ]; do i=$((i+1)); echo $i > {0}.tmp && mv {0}.tmp {0}; sleep 0.02; done",
            file.display(),
            running.display()
        );
        let exec = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["lab", "exec", "--lab", &lab.name, pod, "--", "sh", "-c", &script])
            .stdout(Stdio::null())
            .spawn()
            .expect("weir lab exec");
        let counter = Self { exec, file, running };
        assert!(eventually(Duration::from_secs(20), || counter.count() > 2), "{pod}'s counter never started");
        counter
    }

    fn count(&self) -> u64 {
        std::fs::read_to_string(&self.file).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0)
    }

    /// Whether it counts on: it moves past where it is within `deadline`.
    fn moves(&self, deadline: Duration) -> bool {
        let now = self.count();
        eventually(deadline, || self.count() > now)
    }
}

impl Drop for Counter {
    /// Ends the loop, so it writes nothing into the test's directory once
    /// that is removed (a frozen one is left to the lab's teardown).
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.running);
        if !eventually(Duration::from_secs(5), || self.exec.try_wait().ok().flatten().is_some()) {
            let _ = self.exec.kill();
        }
        let _ = self.exec.wait();
    }
}

fn cgroup_frozen(cgroup: &Path) -> bool {
    weir_host::Cgroup::new(cgroup).is_frozen()
}

/// Each pod's cgroup directory on this machine.
fn pod_cgroup(lab: &ChaosLab, pod: &str) -> PathBuf {
    let roots = weir_lab::runtime::Roots::discover().expect("roots");
    roots.cgroup2.join(&lab.plan().pod(pod).expect("pod").cgroup)
}

/// The pods frozen now by `name`, over every node, as `weir chaos list -o json` says.
fn frozen_by(lab: &ChaosLab, name: &str) -> Vec<String> {
    experiment_on_nodes(lab, name)
        .iter()
        .flat_map(|e| e["frozen"].as_array().cloned().unwrap_or_default())
        .map(|p| p.as_str().expect("pod").to_string())
        .collect()
}

fn kill_agents(lab: &ChaosLab) {
    for node in &lab.plan().nodes {
        let pid = weir_lab::runtime::agent_pid(node).expect("agent running");
        weir_host::process::kill(pid, libc::SIGKILL);
        assert!(eventually(Duration::from_secs(5), || !weir_host::process::alive(pid)), "the agent died");
    }
}

#[test]
fn pod_failure_freezes_the_selected_pods_until_stopped() {
    let Some(lab) = lab("chfrz") else { return };
    let (web, db) = (Counter::start(&lab, "frontend/web"), Counter::start(&lab, "backend/db"));
    let web_cgroup = pod_cgroup(&lab, "frontend/web");

    // Refused by path, nothing frozen.
    for (bad, field) in [
        (FREEZE_WEB.replace("pod-failure", "container-kill"), "spec.action"),
        (FREEZE_WEB.replace("duration: 10m", "gracePeriod: 0"), "spec.gracePeriod"),
        (FREEZE_WEB.replace("duration: 10m", "containerNames: [app]"), "spec.containerNames"),
    ] {
        let out = weir(&["apply", "--lab", &lab.name, "-f", &write(&lab, "bad", &bad)]);
        assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains(field), "{out:?}");
    }
    assert!(web.moves(Duration::from_secs(10)) && !cgroup_frozen(&web_cgroup), "frozen by a refused document");

    weir_ok(&["apply", "--lab", &lab.name, "-f", &write(&lab, "freeze", FREEZE_WEB)]);
    assert!(cgroup_frozen(&web_cgroup), "web's cgroup is frozen once the apply returns");
    // While db's process counts on, web's makes no progress.
    let (web_then, db_then) = (web.count(), db.count());
    assert!(eventually(Duration::from_secs(30), || db.count() >= db_then + 25), "db's process stalled");
    assert_eq!(web.count(), web_then, "web's process counted while frozen");
    assert!(!cgroup_frozen(&pod_cgroup(&lab, "backend/db")), "db was not selected");

    let listed = weir_ok(&["chaos", "list", "--lab", &lab.name]);
    assert!(listed.contains("pod-failure (frozen: frontend/web)"), "{listed}");
    assert!(!listed.contains("until stopped") && !listed.contains("ended"), "time left: {listed}");
    assert_eq!(frozen_by(&lab, "frontend/freeze-web"), vec!["frontend/web".to_string()]);
    assert!(affected(&lab, "frontend/freeze-web") >= 1, "the processes frozen are counted");
    // One freeze per pod at a time.
    let again = FREEZE_WEB.replace("freeze-web", "freeze-web-too");
    let out = weir(&["apply", "--lab", &lab.name, "-f", &write(&lab, "again", &again)]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("already frozen"), "{out:?}");

    weir_ok(&["chaos", "stop", "--lab", &lab.name, "frontend/freeze-web"]);
    assert!(!cgroup_frozen(&web_cgroup), "web is still frozen after stop");
    assert!(web.moves(Duration::from_secs(10)), "web's process did not resume");
    assert_eq!(running(&lab).0, Vec::<String>::new());
}

#[test]
fn pod_failure_thaws_on_time_without_agents_and_a_restarted_agent_keeps_the_rest() {
    let Some(lab) = lab("chfrk") else { return };
    let (web, api, db) =
        (Counter::start(&lab, "frontend/web"), Counter::start(&lab, "backend/api"), Counter::start(&lab, "backend/db"));
    let (web_cgroup, api_cgroup) = (pod_cgroup(&lab, "frontend/web"), pod_cgroup(&lab, "backend/api"));
    let brief = FREEZE_WEB.replace("duration: 10m", "duration: 4s");
    let long = FREEZE_WEB.replace("freeze-web", "freeze-api").replace("frontend}", "backend}").replace("web}", "api}");
    let applied = Instant::now();
    weir_ok(&["apply", "--lab", &lab.name, "-f", &write(&lab, "brief", &brief), "-f", &write(&lab, "long", &long)]);
    assert!(cgroup_frozen(&web_cgroup) && cgroup_frozen(&api_cgroup), "both frozen once the apply returns");
    kill_agents(&lab);
    // Not thawed early (checked only while surely before the end) ...
    if applied.elapsed() < Duration::from_secs(3) {
        assert!(cgroup_frozen(&web_cgroup), "web thawed before its end");
    }
    // ... and thawed within a few seconds of it, with no agent running.
    assert!(
        eventually(Duration::from_secs(15), || !cgroup_frozen(&web_cgroup)),
        "web stayed frozen past its end with the agents dead"
    );
    assert!(applied.elapsed() >= Duration::from_secs(3), "web thawed long before its 4s end");
    assert!(web.moves(Duration::from_secs(10)), "web's process did not resume");
    let api_then = api.count();
    assert!(db.moves(Duration::from_secs(10)), "db's process stalled");
    assert!(cgroup_frozen(&api_cgroup) && api.count() == api_then, "api's 10m freeze ended early");

    // The restarted agents list what runs and what ended, and stop it.
    weir_ok(&["lab", "up", "-f", &lab.spec_path.to_string_lossy()]);
    let listed = weir_ok(&["chaos", "list", "--lab", &lab.name]);
    assert!(listed.contains("pod-failure (frozen: backend/api)"), "{listed}");
    assert!(listed.contains("freeze-web") && listed.contains("ended"), "{listed}");
    // The ended one's pod is free for another; stopping the ended one
    // leaves the new freeze alone.
    let anew = FREEZE_WEB.replace("freeze-web", "freeze-web-anew");
    weir_ok(&["apply", "--lab", &lab.name, "-f", &write(&lab, "anew", &anew)]);
    assert!(cgroup_frozen(&web_cgroup), "web frozen anew");
    weir_ok(&["chaos", "stop", "--lab", &lab.name, "frontend/freeze-web"]);
    assert!(cgroup_frozen(&web_cgroup), "stopping the ended experiment thawed another's freeze");
    weir_ok(&["chaos", "stop", "--lab", &lab.name, "--all"]);
    assert!(!cgroup_frozen(&web_cgroup), "web is still frozen after stop --all");
    assert!(!cgroup_frozen(&api_cgroup), "api is still frozen after stop --all");
    assert!(api.moves(Duration::from_secs(10)), "api's process did not resume");
    assert_eq!(running(&lab).0, Vec::<String>::new());
}
