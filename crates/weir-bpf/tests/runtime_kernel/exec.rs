//! Exec rules against the ways around a path: another link to the same
//! file, a program run from memory, a multi-call binary's applets.

use std::ffi::CString;

use super::*;

fn busybox() -> PathBuf {
    ["/usr/bin/busybox", "/bin/busybox"].iter().map(PathBuf::from).find(|p| p.exists()).expect("busybox")
}

#[test]
fn a_binary_named_by_path_is_killed_through_a_hardlink_too() {
    if !testing::privileged("runtime hardlinks") {
        return;
    }
    let scope = scope("weir-rt-link");
    let (sensors, events) = sensors(&scope);
    let (forbidden, invoke) = toucher(&scope.dir, "forbidden");
    let forbidden_path = forbidden.canonicalize().expect("canonical").display().to_string();
    // Another name for a file. Busybox (the toucher on the qemu kernels)
    // runs the applet its argv[0] names, so there the name is a directory's.
    let renamed = |name: &str| {
        if forbidden.file_name().is_some_and(|n| n == "busybox") {
            let dir = scope.dir.join(name);
            std::fs::create_dir_all(&dir).expect("dir");
            dir.join("busybox")
        } else {
            forbidden.with_file_name(name)
        }
    };
    let link = renamed("innocent");
    std::fs::hard_link(&forbidden, &link).expect("hardlink");
    let link_path = link.canonicalize().expect("canonical").display().to_string();
    install(
        &sensors,
        &policy("no-forbidden", &format!("  selector: {{binaries: [{{exact: '{forbidden_path}'}}]}}\n  rules: [{{operations: [exec], action: kill}}]\n")),
        false,
    );
    let through_link = invoke.replacen(&forbidden.display().to_string(), &link.display().to_string(), 1);
    let (_, status) = run_in_scope(&scope, &format!("{through_link} marker; echo $? > rc"));
    assert!(status.success());
    assert!(!scope.dir.join("marker").exists(), "the hardlinked binary never ran an instruction");
    assert_eq!(std::fs::read_to_string(scope.dir.join("rc")).expect("rc").trim(), "137");
    wait_for(&events, "the kill of the hardlink", |evs| {
        evs.iter().any(|e| exec_path(e) == Some(&link_path) && e.action == Some(Action::Kill))
    });
    // A copy is another file: only its path could name it.
    let copy = renamed("copy");
    std::fs::copy(&forbidden, &copy).expect("copy");
    let through_copy = invoke.replacen(&forbidden.display().to_string(), &copy.display().to_string(), 1);
    let (_, status) = run_in_scope(&scope, &format!("{through_copy} copied"));
    assert!(status.success() && scope.dir.join("copied").exists(), "a copy is not the same file");
}

#[test]
fn fileless_programs_are_named_as_such_and_policies_select_them() {
    if !testing::privileged("runtime fileless exec") {
        return;
    }
    let scope = scope("weir-rt-memfd");
    let (sensors, events) = sensors(&scope);
    let (tool, invoke) = toucher(&scope.dir, "tool");
    let image = std::fs::read(&tool).expect("program image");
    // argv as the file-backed run has it, with the program's own name first.
    let mut words: Vec<String> = invoke.split_whitespace().map(str::to_string).collect();
    words[0] = tool.file_name().expect("name").to_string_lossy().into_owned();
    let marker = scope.dir.join("from-memory");
    words.push(marker.display().to_string());
    let argv: Vec<CString> = words.iter().map(|w| CString::new(w.as_str()).expect("arg")).collect();
    let name = CString::new("sneaky").expect("name");
    let run_from_memory = || {
        let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let envp: [*const libc::c_char; 1] = [std::ptr::null()];
        let (name, image) = (&name, &image);
        move || {
            // SAFETY: memfd_create, write and fexecve on memory prepared
            // before the fork; the child execs or returns the errno.
            unsafe {
                let fd = libc::memfd_create(name.as_ptr(), 0);
                if fd < 0 || libc::write(fd, image.as_ptr().cast(), image.len()) != image.len() as isize {
                    return 251;
                }
                libc::fexecve(fd, argv_ptrs.as_ptr(), envp.as_ptr());
                *libc::__errno_location()
            }
        }
    };
    // Without a policy: reported by its memfd name, marked fileless.
    let (pid, code) = in_scope_child(&scope, None, run_from_memory());
    assert_eq!(code, 0, "the program ran from memory");
    assert!(marker.exists());
    std::fs::remove_file(&marker).expect("remove marker");
    wait_for(&events, "the fileless exec", |evs| {
        evs.iter().any(|e| e.pid == pid && exec_path(e) == Some("memfd:sneaky") && e.flags & runtime::F_FILELESS != 0)
    });
    // A policy on fileless programs kills it, and leaves programs on files alone.
    install(
        &sensors,
        &policy("no-fileless", "  selector: {fileless: true}\n  rules: [{operations: [exec], action: kill}]\n"),
        false,
    );
    let (pid, code) = in_scope_child(&scope, None, run_from_memory());
    assert_eq!(code, 137, "the fileless program was killed");
    assert!(!marker.exists(), "it never ran an instruction");
    wait_for(&events, "the fileless kill", |evs| {
        evs.iter().any(|e| e.pid == pid && e.flags & runtime::F_FILELESS != 0 && e.action == Some(Action::Kill))
    });
    let (_, status) = run_in_scope(&scope, &format!("{invoke} from-a-file"));
    assert!(status.success() && scope.dir.join("from-a-file").exists(), "the same program from a file runs");
    assert!(
        !events
            .lock()
            .expect("events")
            .iter()
            .any(|e| exec_path(e).is_some_and(|p| p.starts_with("memfd:")) && e.flags & runtime::F_FILELESS == 0),
        "every memfd exec is marked fileless"
    );
}

#[test]
fn a_multi_call_binarys_applets_are_selected_by_the_name_they_run_as() {
    if !testing::privileged("runtime applets") {
        return;
    }
    let scope = scope("weir-rt-applet");
    let (sensors, events) = sensors(&scope);
    let dir = scope.dir.join("bb");
    std::fs::create_dir_all(&dir).expect("dir");
    let copy = dir.join("busybox");
    std::fs::copy(busybox(), &copy).expect("copy busybox");
    std::os::unix::fs::symlink("busybox", dir.join("touch")).expect("applet link");
    let copy_path = copy.canonicalize().expect("canonical").display().to_string();
    install(
        &sensors,
        &policy(
            "no-touch-applet",
            &format!("  selector: {{binaries: [{{exact: '{copy_path}'}}], applets: [{{exact: touch}}]}}\n  rules: [{{operations: [exec], action: kill}}]\n"),
        ),
        false,
    );
    let (_, status) = run_in_scope(
        &scope,
        "bb/busybox touch by-name; echo $? > rc1; bb/touch by-link; echo $? > rc2; bb/busybox mkdir other-applet",
    );
    assert!(status.success());
    let rc = |f: &str| std::fs::read_to_string(scope.dir.join(f)).expect("rc").trim().to_string();
    assert_eq!(
        (rc("rc1"), rc("rc2")),
        ("137".to_string(), "137".to_string()),
        "`busybox touch` and a touch link are killed"
    );
    assert!(!scope.dir.join("by-name").exists() && !scope.dir.join("by-link").exists());
    assert!(scope.dir.join("other-applet").is_dir(), "another applet of the same binary runs");
    wait_for(&events, "both kills", |evs| {
        evs.iter().filter(|e| exec_path(e) == Some(&copy_path) && e.action == Some(Action::Kill)).count() >= 2
    });
}

#[test]
fn a_program_run_by_the_dynamic_loader_is_judged_as_itself() {
    if !testing::privileged("runtime dynamic loader") {
        return;
    }
    let scope = scope("weir-rt-ldso");
    let (sensors, events) = sensors(&scope);
    let loader = sensors.report.loaders.first().cloned().expect("this host has a dynamic loader");
    assert!(
        !sensors.report.missing.iter().any(|(p, _)| p == "weir_rt_mmap_file"),
        "the loader hook attached: {:?}",
        sensors.report.missing
    );
    // This test binary is dynamically linked; `--list` prints its tests.
    let this = std::env::current_exe().expect("test binary");
    let forbidden = scope.dir.join("forbidden");
    let allowed = scope.dir.join("allowed");
    std::fs::copy(&this, &forbidden).expect("copy");
    std::fs::copy(&this, &allowed).expect("copy");
    let forbidden_path = forbidden.canonicalize().expect("canonical").display().to_string();
    let allowed_path = allowed.canonicalize().expect("canonical").display().to_string();
    install(
        &sensors,
        &policy("no-forbidden", &format!("  selector: {{binaries: [{{exact: '{forbidden_path}'}}]}}\n  rules: [{{operations: [exec], action: kill}}]\n")),
        false,
    );
    let (_, status) = run_in_scope(
        &scope,
        &format!("{loader} {forbidden_path} --list > out1; echo $? > rc1; {loader} {allowed_path} --list > out2"),
    );
    assert!(status.success());
    let read = |f: &str| std::fs::read_to_string(scope.dir.join(f)).expect("file");
    assert_eq!(read("rc1").trim(), "137", "the forbidden program was killed under the loader");
    assert_eq!(read("out1"), "", "it printed nothing: it never ran");
    assert!(read("out2").contains("tests"), "another program runs under the loader: {}", read("out2"));
    wait_for(&events, "the loader's programs reported as themselves", |evs| {
        let loaded = |path: &str| evs.iter().find(|e| exec_path(e) == Some(path) && e.flags & runtime::F_LOADER != 0);
        loaded(&forbidden_path).is_some_and(|e| e.action == Some(Action::Kill))
            && loaded(&allowed_path).is_some_and(|e| e.action.is_none())
    });
}
