//! `weir profile` against real processes in lab pods.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// Compiles the burn fixture, with or without frame pointers.
fn build_burn(frame_pointers: bool) -> PathBuf {
    let flags: &[&str] = if frame_pointers {
        &["-O1", "-fno-omit-frame-pointer", "-mno-omit-leaf-frame-pointer"]
    } else {
        &["-O2", "-fomit-frame-pointer"]
    };
    compile_fixture("burn.c", flags)
}

/// Compiles the acc fixture with gcc and frame pointers: gcc keeps no frame in
/// the leaf acc_z (it has no -mno-omit-leaf-frame-pointer); the vDSO's time()
/// it calls keeps none either.
fn build_acc_with_gcc() -> PathBuf {
    let out = std::env::temp_dir().join(unique_name("acc-gcc-"));
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/acc.c");
    let status = Command::new("gcc")
        .args(["-O1", "-fno-omit-frame-pointer"])
        .arg(&source)
        .arg("-o")
        .arg(&out)
        .status()
        .expect("gcc (installed by scripts/setup.sh)");
    assert!(status.success(), "compiling {}", source.display());
    out
}

/// `weir profile` of pod frontend/web for `duration`, every function kept,
/// written to `out`; returns what the command printed.
fn profile_web(lab: &TestLab, duration: &str, out: &Path) -> String {
    weir_ok(&[
        "profile",
        "--lab",
        &lab.name,
        "--pod",
        "frontend/web",
        "--duration",
        duration,
        "--top",
        "0",
        "-o",
        &out.to_string_lossy(),
    ])
}

/// A process running in a lab pod, killed when dropped.
struct PodProcess(Child);

impl PodProcess {
    fn start(lab: &TestLab, pod: &str, argv: &[&str]) -> Self {
        let mut args = vec!["lab", "exec", "--lab", lab.name.as_str(), pod, "--"];
        args.extend_from_slice(argv);
        let child = Command::new(env!("CARGO_BIN_EXE_weir")).args(&args).stdout(Stdio::null()).spawn().expect("spawn");
        let cgroup = weir_lab::runtime::Roots::discover()
            .expect("roots")
            .cgroup2
            .join(&lab.plan().pod(pod).expect("pod").cgroup);
        let name = Path::new(argv[0]).file_name().expect("name").to_string_lossy().into_owned();
        // Running once the pod's cgroup holds a process that has exec'd the program.
        assert!(
            eventually(Duration::from_secs(5), || weir_host::Cgroup::new(&cgroup)
                .pids_recursive()
                .iter()
                .any(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| name.starts_with(c.trim())))),
            "{argv:?} did not start in {pod}"
        );
        Self(child)
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn folded(path: &Path) -> Vec<(Vec<String>, u64)> {
    std::fs::read_to_string(path)
        .expect("folded output")
        .lines()
        .map(|line| {
            let (stack, count) = line.rsplit_once(' ').expect("stack count");
            (stack.split(';').map(str::to_string).collect(), count.parse().expect("count"))
        })
        .collect()
}

fn samples_with(stacks: &[(Vec<String>, u64)], frame: &str) -> u64 {
    stacks.iter().filter(|(s, _)| s.iter().any(|f| f == frame)).map(|(_, n)| n).sum()
}

#[test]
fn a_pod_profile_shows_the_hot_call_chain_and_excludes_other_pods() {
    let Some(lab) = TestLab::for_test("a_pod_profile_shows_the_hot_call_chain_and_excludes_other_pods", true) else {
        return;
    };
    let burn = build_burn(true);
    let burn = burn.to_string_lossy();
    let _hot = PodProcess::start(&lab, "frontend/web", &[&burn, "30", "hot"]);
    let _other = PodProcess::start(&lab, "backend/api", &[&burn, "30", "other"]);
    let out = std::env::temp_dir().join(format!("{}.folded", lab.name));
    let report = weir_ok(&[
        "profile",
        "--lab",
        &lab.name,
        "--pod",
        "frontend/web",
        "--duration",
        "2s",
        "-o",
        &out.to_string_lossy(),
    ]);
    let stacks = folded(&out);
    let total: u64 = stacks.iter().map(|(_, n)| n).sum();
    // 99 Hz for 2 s of one busy thread, less whatever CPU the parallel tests
    // take: on a loaded machine that can be a few dozen samples, or fewer.
    assert!(total > 0, "the pod's busy thread is sampled: {total}\n{report}");
    let leaf = samples_with(&stacks, "weir_burn_leaf");
    assert!(leaf * 10 >= total * 8, "the hot function dominates: {leaf} of {total}\n{report}");
    let right_chain: u64 = stacks
        .iter()
        .filter(|(s, _)| s.ends_with(&["main".into(), "weir_burn_middle".into(), "weir_burn_leaf".into()]))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(right_chain, leaf, "every hot sample has main -> weir_burn_middle -> weir_burn_leaf beneath it");
    assert!(
        stacks.iter().all(|(s, _)| s[0] == "node-a" && s[1] == "frontend/web"),
        "rooted at node-a and the pod only"
    );
    assert_eq!(samples_with(&stacks, "weir_other_spin"), 0, "another pod's busy loop is excluded");
    assert!(report.contains("weir_burn_leaf"), "the top table names the hot function:\n{report}");
    let _ = std::fs::remove_file(out);
}

#[test]
fn a_cluster_profile_merges_every_node_under_node_and_pod_roots_and_reads_in_go_pprof() {
    let Some(lab) =
        TestLab::for_test("a_cluster_profile_merges_every_node_under_node_and_pod_roots_and_reads_in_go_pprof", true)
    else {
        return;
    };
    let burn = build_burn(true);
    let burn = burn.to_string_lossy();
    let _hot = PodProcess::start(&lab, "frontend/web", &[&burn, "30", "hot"]);
    let _other = PodProcess::start(&lab, "backend/db", &[&burn, "30", "other"]);
    let base = std::env::temp_dir().join(&lab.name);
    let folded_path = base.with_extension("folded");
    weir_ok(&[
        "profile",
        "--lab",
        &lab.name,
        "--binary",
        &burn,
        "--duration",
        "2s",
        "-o",
        &folded_path.to_string_lossy(),
        "--top",
        "0",
    ]);
    let stacks = folded(&folded_path);
    let hot = stacks
        .iter()
        .filter(|(s, _)| {
            s.starts_with(&["node-a".into(), "frontend/web".into()]) && s.last().is_some_and(|f| f == "weir_burn_leaf")
        })
        .count();
    let other = stacks
        .iter()
        .filter(|(s, _)| {
            s.starts_with(&["node-b".into(), "backend/db".into()]) && s.last().is_some_and(|f| f == "weir_other_spin")
        })
        .count();
    assert!(hot > 0 && other > 0, "both nodes' pods appear under their node and pod: {stacks:?}");
    assert!(
        stacks.iter().all(|(s, _)| s[2].starts_with("burn-")),
        "--binary keeps only the burn processes: {stacks:?}"
    );

    // pprof: checked with an independent reader of profile.proto.
    let pprof_path = base.with_extension("pb.gz");
    weir_ok(&[
        "profile",
        "--lab",
        &lab.name,
        "--pod",
        "frontend/web",
        "--duration",
        "1s",
        "-o",
        &pprof_path.to_string_lossy(),
        "--top",
        "0",
    ]);
    let go = Command::new("go")
        .args(["tool", "pprof", "-traces"])
        .arg(&pprof_path)
        .env("HOME", std::env::temp_dir())
        .output();
    match go {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "go tool pprof failed: {}", String::from_utf8_lossy(&out.stderr));
            let chain: Vec<&str> =
                text.lines().map(str::trim).filter(|l| l.starts_with("weir_burn") || *l == "main").collect();
            assert!(
                chain.starts_with(&["weir_burn_leaf", "weir_burn_middle", "main"]) || text.contains("weir_burn_leaf\n"),
                "pprof sees the call chain leaf-first:\n{text}"
            );
            assert!(text.contains("Type: cpu"), "{text}");
        }
        Err(e) => assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "go (golang-go, installed by scripts/setup.sh) is needed to check pprof output: {e}"
        ),
    }

    let svg_path = base.with_extension("svg");
    weir_ok(&["profile", "--lab", &lab.name, "--duration", "1s", "-o", &svg_path.to_string_lossy(), "--top", "0"]);
    let svg = std::fs::read_to_string(&svg_path).expect("svg");
    assert!(
        svg.contains("<svg") && svg.contains("weir_burn_leaf") && svg.contains("node-b"),
        "an interactive flamegraph of the whole lab"
    );
    for p in [folded_path, pprof_path, svg_path] {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn a_process_that_exits_before_the_profile_ends_still_resolves() {
    let Some(lab) = TestLab::for_test("a_process_that_exits_before_the_profile_ends_still_resolves", true) else {
        return;
    };
    let burn = build_burn(true);
    let burn = burn.to_string_lossy();
    let out = std::env::temp_dir().join(format!("{}.folded", lab.name));
    let mut profile = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "profile",
            "--lab",
            &lab.name,
            "--pod",
            "frontend/web",
            "--duration",
            "6s",
            "--top",
            "0",
            "-o",
            &out.to_string_lossy(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn profile");
    // The process starts once the client has asked the agents (its first
    // line), and runs about two seconds, inside the six-second profile
    // even when the agents take a while to start sampling on a loaded
    // machine (a one-second run in a three-second profile once got 6
    // samples there).
    let mut stderr = std::io::BufReader::new(profile.stderr.take().expect("stderr"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut first).expect("the profile's first line");
    assert!(first.starts_with("profiling"), "{first}");
    let rest = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        rest
    });
    let ran = lab.exec("frontend/web", &[&burn, "2", "hot"]);
    assert!(ran.status.success());
    let done = profile.wait_with_output().expect("profile");
    let report = String::from_utf8_lossy(&done.stdout);
    let errors = rest.join().unwrap_or_default();
    assert!(done.status.success(), "{report}{errors}");
    assert!(!report.contains("exited before"), "its maps were captured while it ran: {report}");
    let stacks = folded(&out);
    // About 99 samples a second while it ran; a loaded CI machine gives it less CPU.
    assert!(samples_with(&stacks, "weir_burn_leaf") >= 10, "the exited process's frames resolve: {stacks:?}");
    let _ = std::fs::remove_file(out);
}

/// The only function that really calls `callee` in the fixture, if known.
fn true_caller(callee: &str) -> Option<&'static str> {
    match callee {
        "weir_burn_leaf" => Some("weir_burn_middle"),
        "weir_burn_middle" => Some("main"),
        _ => None,
    }
}

#[test]
fn code_without_frame_pointers_is_marked_never_given_wrong_callers() {
    let Some(lab) = TestLab::for_test("code_without_frame_pointers_is_marked_never_given_wrong_callers", true) else {
        return;
    };
    let burn = build_burn(false);
    let burn = burn.to_string_lossy();
    let _hot = PodProcess::start(&lab, "frontend/web", &[&burn, "30", "hot"]);
    let out = std::env::temp_dir().join(format!("{}.folded", lab.name));
    let report = profile_web(&lab, "2s", &out);
    let stacks = folded(&out);
    assert!(samples_with(&stacks, "weir_burn_leaf") > 0, "the sampled function itself is exact: {stacks:?}");
    let marked: u64 =
        stacks.iter().filter(|(s, _)| s.get(3).is_some_and(|f| f.starts_with("[unwind stopped"))).map(|(_, n)| n).sum();
    assert!(marked > 0, "cut-short stacks are reported as such: {stacks:?}");
    assert!(report.contains("with unwinding cut short"), "and counted: {report}");
    for (stack, _) in &stacks {
        let functions = &stack[3..];
        let honest = functions.first().is_some_and(|f| f.starts_with("[unwind stopped"))
            || functions.len() <= 1
            || functions.windows(2).all(|w| true_caller(&w[1]).is_none_or(|caller| w[0] == caller));
        assert!(honest, "a stack claims callers it cannot know: {stack:?}");
    }
    let _ = std::fs::remove_file(out);
}

#[test]
fn label_namespace_and_pid_scopes_select_their_processes_and_a_full_map_is_counted() {
    let Some(lab) =
        TestLab::for_test("label_namespace_and_pid_scopes_select_their_processes_and_a_full_map_is_counted", true)
    else {
        return;
    };
    let burn = build_burn(true);
    let burn = burn.to_string_lossy();
    let _web = PodProcess::start(&lab, "frontend/web", &[&burn, "30", "hot"]);
    let _db = PodProcess::start(&lab, "backend/db", &[&burn, "30", "other"]);
    let out = std::env::temp_dir().join(format!("{}.folded", lab.name));
    let out_arg = out.to_string_lossy().into_owned();
    let profile = |scope: &[&str]| {
        let mut args =
            vec!["profile", "--lab", lab.name.as_str(), "--duration", "1s", "--top", "0", "-o", out_arg.as_str()];
        args.extend_from_slice(scope);
        let report = weir_ok(&args);
        (folded(&out), report)
    };
    let pods = |stacks: &[(Vec<String>, u64)]| {
        let mut pods: Vec<String> = stacks.iter().map(|(s, _)| s[1].clone()).collect();
        pods.sort();
        pods.dedup();
        pods
    };

    let (stacks, _) = profile(&["-l", "app=db"]);
    assert_eq!(pods(&stacks), ["backend/db"], "a label selector keeps its pods only");
    let (stacks, _) = profile(&["-n", "frontend"]);
    assert_eq!(pods(&stacks), ["frontend/web"], "a namespace keeps its pods only");

    let web_cgroup = weir_lab::runtime::Roots::discover()
        .expect("roots")
        .cgroup2
        .join(&lab.plan().pod("frontend/web").expect("web").cgroup);
    let pid = weir_host::Cgroup::new(web_cgroup)
        .pids_recursive()
        .into_iter()
        .find(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.starts_with("burn")))
        .expect("burn pid");
    let (stacks, _) = profile(&["--pid", &pid.to_string()]);
    // Every sample is that process's; most are in its hot loop (a few land
    // in the clock reads between rounds of work).
    let hottest = stacks.iter().max_by_key(|(_, count)| *count);
    assert!(
        stacks.iter().all(|(s, _)| s[1] == "frontend/web" && s[2].starts_with("burn"))
            && hottest.is_some_and(|(s, _)| s.last().is_some_and(|f| f == "weir_burn_leaf")),
        "--pid keeps that process only: {stacks:?}"
    );

    let (_, report) = profile(&["--max-stacks", "1"]);
    assert!(report.contains("lost:"), "samples that do not fit a one-stack map are counted: {report}");
    let _ = std::fs::remove_file(out);
}

#[test]
fn a_gcc_leaf_without_a_frame_is_shown_under_its_true_caller() {
    let Some(lab) = TestLab::for_test("a_gcc_leaf_without_a_frame_is_shown_under_its_true_caller", true) else {
        return;
    };
    let acc = build_acc_with_gcc();
    let acc_arg = acc.to_string_lossy();
    let _hot = PodProcess::start(&lab, "frontend/web", &[&acc_arg, "30"]);
    let out = std::env::temp_dir().join(format!("{}.folded", lab.name));
    let report = profile_web(&lab, "2s", &out);
    let stacks = folded(&out);
    let leaf = samples_with(&stacks, "acc_z");
    assert!(leaf > 0, "the leaf is sampled: {stacks:?}\n{report}");
    for (stack, _) in &stacks {
        let functions = &stack[3..];
        assert!(
            functions.windows(2).all(|w| !(w[0] == "acc_x" && w[1] == "acc_z")),
            "acc_z shown called from acc_x, skipping acc_y: {stack:?}"
        );
    }
    // Fixed, not merely marked: the leaf's samples carry the whole chain.
    let whole: u64 = stacks
        .iter()
        .filter(|(s, _)| s.ends_with(&["main".into(), "acc_x".into(), "acc_y".into(), "acc_z".into()]))
        .map(|(_, n)| n)
        .sum();
    assert!(whole * 10 >= leaf * 9, "{whole} of {leaf} leaf samples show main -> acc_x -> acc_y -> acc_z: {stacks:?}");
    let _ = std::fs::remove_file(out);
    let _ = std::fs::remove_file(acc);
}

#[test]
fn a_pid_that_is_not_there_is_an_error_and_the_flamegraph_title_names_what_was_profiled() {
    let Some(lab) =
        TestLab::for_test("a_pid_that_is_not_there_is_an_error_and_the_flamegraph_title_names_what_was_profiled", true)
    else {
        return;
    };
    let out = std::env::temp_dir().join(format!("{}.svg", lab.name));
    let out_arg = out.to_string_lossy().into_owned();
    let refused = |args: &[&str], expected: &str| {
        let run = weir(args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success() && stderr.contains(expected), "weir {args:?}: wants {expected:?}: {stderr}");
        assert!(!out.exists(), "no profile is written");
    };
    let mut exited = Command::new("true").spawn().expect("spawn true");
    let gone = exited.id().to_string();
    exited.wait().expect("wait");
    let profile = |pid: &str| -> Vec<String> {
        ["profile", "--lab", &lab.name, "--pid", pid, "--duration", "1s", "-o", &out_arg].map(str::to_string).to_vec()
    };
    let args = profile(&gone);
    refused(&args.iter().map(String::as_str).collect::<Vec<_>>(), &format!("there is no process {gone}"));
    // This test runs outside the lab.
    let me = std::process::id().to_string();
    let args = profile(&me);
    refused(&args.iter().map(String::as_str).collect::<Vec<_>>(), &format!("process {me} is not in lab {}", lab.name));
    // The agent refuses a process off its node as well.
    let socket = lab.plan().nodes[0].agent.socket.to_string_lossy().into_owned();
    refused(
        &["profile", "--socket", &socket, "--pid", &me, "--duration", "1s", "-o", &out_arg],
        &format!("process {me} is not on node node-a"),
    );

    let burn = build_burn(true);
    let _hot = PodProcess::start(&lab, "frontend/web", &[&burn.to_string_lossy(), "30", "hot"]);
    profile_web(&lab, "1s", Path::new(&out_arg));
    let svg = std::fs::read_to_string(&out).expect("svg");
    let title = format!("weir profile: lab {}, node node-a; pod frontend/web; 1s at 99 Hz", lab.name);
    assert!(svg.contains(&title), "the title says where, what, how long and how often: {title:?} in\n{}", &svg[..2000]);
    let _ = std::fs::remove_file(out);
}

/// A field of `/proc/PID/status` in KiB, e.g. "VmHWM" (the peak resident set).
fn status_kib(pid: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix(" kB")?.parse().ok())
        .expect("field")
}

/// A node profile resolves the agent's own frames too: its binary's symbol
/// and unwind tables (200,000 symbols and 6 MiB of `.eh_frame` in a debug
/// build) and, with `--kernel`, kallsyms' 120,000 lines.
#[test]
fn a_profile_raises_the_agents_peak_memory_by_a_few_mib_only() {
    let Some(lab) = TestLab::for_test("a_profile_raises_the_agents_peak_memory_by_a_few_mib_only", true) else {
        return;
    };
    let burn = build_burn(true);
    let _hot = PodProcess::start(&lab, "frontend/web", &[&burn.to_string_lossy(), "30", "hot"]);
    let agent = std::fs::read_to_string(&lab.plan().nodes[0].agent.pid_file).expect("agent pid");
    let agent = agent.trim();
    // The peak from here on, not since the agent started.
    std::fs::write(format!("/proc/{agent}/clear_refs"), "5").expect("reset the agent's peak RSS");
    let before = status_kib(agent, "VmHWM");
    let report =
        weir_ok(&["profile", "--lab", &lab.name, "--node", "node-a", "--kernel", "--duration", "2s", "--top", "50"]);
    assert!(report.contains("weir_burn_leaf"), "the profile resolved its frames: {report}");
    let after = status_kib(agent, "VmHWM");
    // Holding those tables whole cost 15 MiB; reading libc's DWARF once 15 more.
    assert!(
        after.saturating_sub(before) < 6 * 1024,
        "the agent's peak RSS rose from {before} KiB to {after} KiB for one profile"
    );
}

#[test]
fn a_frameless_vdso_function_is_shown_under_its_true_caller() {
    let Some(lab) = TestLab::for_test("a_frameless_vdso_function_is_shown_under_its_true_caller", true) else {
        return;
    };
    let acc = build_acc_with_gcc();
    let _hot = PodProcess::start(&lab, "frontend/web", &[&acc.to_string_lossy(), "30", "time"]);
    let out = std::env::temp_dir().join(format!("{}.folded", lab.name));
    let report = profile_web(&lab, "2s", &out);
    let stacks = folded(&out);
    let in_vdso = samples_with(&stacks, "[vdso]");
    assert!(in_vdso > 0, "time() in the vDSO is sampled: {stacks:?}\n{report}");
    let under_ask_time: u64 = stacks
        .iter()
        .filter(|(s, _)| s.ends_with(&["main".into(), "ask_time".into(), "[vdso]".into()]))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(under_ask_time, in_vdso, "every vDSO sample is under main -> ask_time: {stacks:?}");
    // time@plt, between them, is a PLT stub: named as one, never after the
    // function before it (_init), and under its true caller too.
    assert_eq!(samples_with(&stacks, "_init"), 0, "a PLT stub is not _init: {stacks:?}");
    let in_plt = samples_with(&stacks, "[plt]");
    let plt_under_ask_time: u64 = stacks
        .iter()
        .filter(|(s, _)| s.ends_with(&["main".into(), "ask_time".into(), "[plt]".into()]))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(plt_under_ask_time, in_plt, "every PLT sample is under main -> ask_time: {stacks:?}");
    let _ = std::fs::remove_file(out);
    let _ = std::fs::remove_file(acc);
}
