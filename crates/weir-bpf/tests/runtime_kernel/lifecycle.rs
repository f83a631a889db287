//! What lifecycle events say exactly: every argument (empty ones too), one
//! exit per process however many threads end at once, deleted files marked.

use super::*;

#[test]
fn empty_arguments_are_kept_in_exec_events() {
    if !testing::privileged("runtime empty arguments") {
        return;
    }
    let scope = scope("weir-rt-args");
    let (_sensors, events) = sensors(&scope);
    let printf = ["/usr/bin/printf", "/bin/printf"].into_iter().find(|p| Path::new(p).exists());
    // busybox's printf where coreutils' is missing (the vmtest initramfs).
    let (program, argv0) = printf.map_or(("/bin/busybox printf", "busybox"), |p| (p, "printf"));
    let (_, status) = run_in_scope(&scope, &format!("{program} '[%s]' '' mid '' > out"));
    assert!(status.success());
    assert_eq!(std::fs::read_to_string(scope.dir.join("out")).expect("out"), "[][mid][]");
    let expected: Vec<String> = if argv0 == "busybox" {
        vec!["/bin/busybox".into(), "printf".into(), "[%s]".into(), String::new(), "mid".into(), String::new()]
    } else {
        vec![program.into(), "[%s]".into(), String::new(), "mid".into(), String::new()]
    };
    wait_for(&events, "printf's exec with its empty arguments", |evs| {
        evs.iter().any(|e| matches!(&e.detail, EventDetail::Exec { args, .. } if *args == expected))
    });
}

#[test]
fn long_paths_and_arguments_arrive_whole_in_packed_exec_events() {
    if !testing::privileged("runtime long exec strings") {
        return;
    }
    let scope = scope("weir-rt-long");
    let (sensors, events) = sensors(&scope);
    // A working directory and a binary some 200 bytes deep (paths are cut
    // past 256), and arguments past the kernel's 1 KiB: the ring's record
    // packs the three back to back, so each must come out where the next begins.
    let mut deep = scope.dir.clone();
    for i in 0..5 {
        deep.push(format!("{i}-{}", "d".repeat(36)));
    }
    std::fs::create_dir_all(&deep).expect("deep dir");
    let (tool, invoke) = toucher(&deep, "long-named-tool");
    let args: Vec<String> = (0..30).map(|i| format!("{i:02}{}", "a".repeat(48))).collect();
    let (_, status) = run_in_scope(&scope, &format!("cd {} && {invoke} {}", deep.display(), args.join(" ")));
    assert!(status.success());
    let tool_path = tool.canonicalize().expect("canonical").display().to_string();
    let cwd_path = deep.canonicalize().expect("canonical").display().to_string();
    assert!(tool_path.len() > 200 && cwd_path.len() > 200, "{} {}", tool_path.len(), cwd_path.len());
    wait_for(&events, "the deep tool's exec", |evs| evs.iter().any(|e| exec_path(e) == Some(&tool_path)));
    let evs = events.lock().expect("events").clone();
    let exec = evs.iter().find(|e| exec_path(e) == Some(&tool_path)).expect("exec");
    let EventDetail::Exec { cwd, args: got, .. } = &exec.detail else { unreachable!() };
    assert_eq!(cwd, &cwd_path);
    assert_ne!(exec.flags & runtime::F_ARGS_TRUNCATED, 0, "arguments past 1 KiB are marked cut");
    // argv[0] (and busybox's applet) first; the last one is cut where the buffer ends.
    let first_arg = got.iter().position(|a| *a == args[0]).expect("the first argument, whole");
    let whole = got.len() - 1 - first_arg;
    assert!(whole >= 10, "{got:?}");
    assert_eq!(&got[first_arg..got.len() - 1], &args[..whole], "every whole argument in order");
    assert!(args[whole].starts_with(&got[got.len() - 1]), "the cut one is a prefix of the next");
    let lost = sensors.maps.counters().expect("counters");
    assert_eq!(lost.iter().find(|(n, _)| *n == "ring_full").map(|c| c.1), Some(0));
}

#[test]
fn a_multithreaded_process_exits_once() {
    if !testing::privileged("runtime one exit per process") {
        return;
    }
    let scope = scope("weir-rt-exit");
    let (_sensors, events) = sensors(&scope);
    // Processes whose threads all spin on their CPUs when the process ends
    // (for the moment it takes them to start):
    // exit_group makes every thread go through exit at the same time.
    let mut pids = Vec::new();
    for _ in 0..100 {
        let (pid, code) = in_scope_child(&scope, None, || {
            let started = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            for _ in 0..4 {
                let started = started.clone();
                std::thread::spawn(move || {
                    started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    loop {
                        std::hint::spin_loop();
                    }
                });
            }
            while started.load(std::sync::atomic::Ordering::SeqCst) < 4 {
                std::hint::spin_loop();
            }
            7
        });
        assert_eq!(code, 7);
        pids.push(pid);
    }
    wait_for(&events, "every process's exit", |evs| {
        pids.iter().all(|pid| evs.iter().any(|e| e.kind == EventKind::Exit && e.pid == *pid))
    });
    let evs = events.lock().expect("events").clone();
    for pid in &pids {
        let exits: Vec<&KernelEvent> = evs.iter().filter(|e| e.kind == EventKind::Exit && e.pid == *pid).collect();
        assert_eq!(exits.len(), 1, "one exit for process {pid}: {exits:#?}");
        assert_eq!(exits[0].exit_code, 7 << 8, "its exit status");
    }
}

#[test]
fn deleted_binaries_and_working_directories_are_marked() {
    if !testing::privileged("runtime deleted files") {
        return;
    }
    let scope = scope("weir-rt-del");
    let (_sensors, events) = sensors(&scope);
    // A copy of this (dynamically linked) test binary: `--list` prints its tests.
    let tool = scope.dir.join("doomed");
    std::fs::copy(std::env::current_exe().expect("test binary"), &tool).expect("copy");
    let tool_path = tool.canonicalize().expect("canonical").display().to_string();
    let gone = scope.dir.join("gone");
    // The program's file is deleted while open, then exec'd through its
    // descriptor; the second run is in a directory that was removed.
    let script = format!(
        "exec 3< {tool_path}; rm {tool_path}; /proc/self/fd/3 --list > deleted-ran; mkdir {gone}; cd {gone}; rmdir {gone}; /proc/self/fd/3 --list > {dir}/cwd-ran",
        gone = gone.display(),
        dir = scope.dir.display(),
    );
    let (_, status) = run_in_scope(&scope, &script);
    assert!(status.success());
    for ran in ["deleted-ran", "cwd-ran"] {
        let out = std::fs::read_to_string(scope.dir.join(ran)).expect("output");
        assert!(out.contains("tests"), "the deleted program ran: {out}");
    }
    wait_for(&events, "both execs, marked", |evs| {
        let execs: Vec<&KernelEvent> = evs.iter().filter(|e| exec_path(e) == Some(&tool_path)).collect();
        execs.iter().any(|e| e.flags & runtime::F_DELETED != 0 && e.flags & runtime::F_CWD_DELETED == 0)
            && execs.iter().any(|e| e.flags & runtime::F_DELETED != 0 && e.flags & runtime::F_CWD_DELETED != 0)
    });
    assert!(
        events
            .lock()
            .expect("events")
            .iter()
            .all(|e| exec_path(e) != Some(&tool_path) || e.flags & runtime::F_DELETED != 0),
        "no exec of the deleted file goes unmarked"
    );
}
