//! A podman container's labels, learned after ADD. podman passes the CNI
//! plugin only `K8S_POD_NAME`: its `--label`s are in its own database, and
//! asking podman during ADD would deadlock (ADD runs under the container's
//! lock, which `podman inspect` takes too). Once the container has a
//! process, the agent finds podman's `conmon` among the process's
//! ancestors: conmon's arguments name the container (`-c ID`) and carry
//! the `podman` command and global flags (`--root`, `--runroot`, …) podman
//! gave it to clean the container up with. The same podman, with the same
//! flags, then runs `container inspect` for the labels.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long `podman container inspect` may take (it waits for the
/// container's lock while podman is still starting it).
pub const INSPECT_FOR: Duration = Duration::from_secs(10);

/// How many parents up from a container's process conmon may be: conmon
/// is the container's init's parent (its subreaper) once the OCI runtime
/// that made it has exited; before, runc's init stages and `runc create`
/// stand between them.
const ANCESTORS: usize = 5;

/// podman's global flags that take a value and say where and how podman
/// keeps its containers: kept for `inspect`. (`--log-level` is left out:
/// the agent reads the output, not podman's logging.)
const KEPT: &[&str] = &[
    "--root",
    "--runroot",
    "--tmpdir",
    "--cgroup-manager",
    "--storage-driver",
    "--network-config-dir",
    "--network-backend",
    "--cni-config-dir",
    "--volumepath",
    "--db-backend",
    "--imagestore",
    "--events-backend",
];

/// podman's global flags that take a value and are left out: `inspect`
/// reads podman's database and needs none of them, and those naming
/// programs (`--runtime`, `--conmon`, `--hooks-dir`, …) must not be
/// taken from a process's arguments into a command the agent runs.
const SKIPPED: &[&str] = &[
    "--log-level",
    "--module",
    "--runtime-flag",
    "--network-cmd-path",
    "--runtime",
    "--conmon",
    "--hooks-dir",
    "--storage-opt",
];

/// podman's global switches kept: a transient store keeps its database
/// under `--runroot`.
const KEPT_SWITCHES: &[&str] = &["--transient-store"];

/// What conmon's arguments say of the container it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodmanContainer {
    /// The container's id (`-c`).
    pub id: String,
    /// The podman that started it (conmon's `--exit-command`).
    pub podman: PathBuf,
    /// podman's global flags, each with its value (`--root`, `/var/lib/...`).
    pub globals: Vec<String>,
}

/// The container a podman `conmon` runs, from conmon's `argv`: its `-c`
/// id and its `--exit-command` (podman) with the global flags before the
/// subcommand of its `--exit-command-arg`s. None when the arguments have
/// no id, or their exit command is not podman (CRI-O's conmon, say).
pub fn conmon_container(argv: &[String]) -> Option<PodmanContainer> {
    let (mut id, mut podman, mut exit_args) = (None, None, Vec::new());
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value.to_string())),
            _ => (arg.as_str(), None),
        };
        let slot = match name {
            "-c" | "--cid" => &mut id,
            "--exit-command" => &mut podman,
            "--exit-command-arg" => {
                exit_args.push(inline.or_else(|| args.next().cloned())?);
                continue;
            }
            _ => continue,
        };
        *slot = Some(inline.or_else(|| args.next().cloned())?);
    }
    let podman = PathBuf::from(podman?);
    if podman.file_name().is_none_or(|n| n != "podman") {
        return None;
    }
    Some(PodmanContainer { id: id.filter(|i| !i.is_empty())?, podman, globals: podman_globals(&exit_args) })
}

/// The global flags kept (see [`KEPT`]) from podman's arguments, up to the
/// first that is not a global flag (the subcommand, or a flag whose form
/// is unknown: what follows it cannot be read).
fn podman_globals(args: &[String]) -> Vec<String> {
    let mut globals = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (arg.as_str(), None),
        };
        if KEPT_SWITCHES.contains(&name) {
            globals.push(arg.clone());
        } else if KEPT.contains(&name) || SKIPPED.contains(&name) {
            let Some(value) = inline.map(str::to_string).or_else(|| args.next().cloned()) else { break };
            if KEPT.contains(&name) {
                globals.extend([name.to_string(), value]);
            }
        } else {
            break;
        }
    }
    globals
}

/// Whether `pid` is in the agent's own network and PID namespaces, as
/// podman's conmon is (podman runs on the node, beside the agent) and no
/// process of a container is, runs as the agent's user (real and
/// effective) and runs a root-owned binary no one else may change: a
/// container's process naming itself `conmon`, or another user's process,
/// is never asked what to run.
fn beside_the_agent(pid: i32) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let agent_uid = unsafe { libc::geteuid() };
    let same_user =
        weir_host::process::uids_of(pid).is_some_and(|(real, effective)| real == agent_uid && effective == agent_uid);
    let trusted_exe = std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| trusted_binary(&exe));
    same_user
        && trusted_exe
        && ["net", "pid"].iter().all(|ns| {
            let of = |who: &str| std::fs::read_link(format!("/proc/{who}/ns/{ns}")).ok();
            of(&pid.to_string()).is_some_and(|theirs| of("self") == Some(theirs))
        })
}

/// Whether `path` is absolute and it and every directory above it belong
/// to root and are writable by no one else: the agent runs it as root.
fn trusted_binary(path: &Path) -> bool {
    path.is_absolute()
        && path.ancestors().all(|p| std::fs::metadata(p).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0))
}

/// The podman container `container_id` on the network namespace `netns`:
/// the conmon among the namespace's processes' nearest ancestors whose
/// `-c` is that id. None while the container has no process, or when no
/// conmon runs it (not a podman container).
pub fn find(netns: &str, container_id: &str) -> Option<PodmanContainer> {
    use weir_host::process::{cmdline_of, comm_of, parent_of};
    let inode = std::fs::metadata(netns).ok()?.ino();
    weir_host::process::pids_in_netns(inode).into_iter().find_map(|pid| {
        let mut child = pid;
        for _ in 0..ANCESTORS {
            let parent = parent_of(child)?;
            if comm_of(parent).as_deref() == Some("conmon") && beside_the_agent(parent) {
                let container = cmdline_of(parent).and_then(|argv| conmon_container(&argv));
                // Read after its arguments: still the parent, so `parent`
                // was not a reused pid.
                let still_parent = parent_of(child) == Some(parent);
                if let Some(c) = container.filter(|c| still_parent && c.id == container_id) {
                    return trusted_binary(&c.podman).then_some(c);
                }
            }
            child = parent;
        }
        None
    })
}

#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    #[error("running {podman}: {source}")]
    Run {
        podman: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{podman} container inspect did not answer within {INSPECT_FOR:?}")]
    Timeout { podman: String },
    #[error("{podman} container inspect failed: {stderr}")]
    Failed { podman: String, stderr: String },
    #[error("podman's labels {text:?}: {source}")]
    Decode {
        text: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The labels podman has for `container` (`container inspect --format
/// '{{json .Config.Labels}}'`), with the flags podman itself used.
pub async fn labels(container: &PodmanContainer) -> Result<BTreeMap<String, String>, PodmanError> {
    let podman = container.podman.display().to_string();
    let mut command = tokio::process::Command::new(&container.podman);
    command
        .args(&container.globals)
        .args(["container", "inspect", "--format", "{{json .Config.Labels}}", &container.id])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let run = command.output();
    let out = match tokio::time::timeout(INSPECT_FOR, run).await {
        Err(_) => return Err(PodmanError::Timeout { podman }),
        Ok(Err(source)) => return Err(PodmanError::Run { podman, source }),
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(PodmanError::Failed { podman, stderr });
    }
    parse_labels(&String::from_utf8_lossy(&out.stdout))
}

/// podman's labels as `{{json .Config.Labels}}` prints them: a map, or
/// `null` for none.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, PodmanError> {
    let labels: Option<BTreeMap<String, String>> = serde_json::from_str(text.trim())
        .map_err(|source| PodmanError::Decode { text: text.trim().to_string(), source })?;
    Ok(labels.unwrap_or_default())
}

/// The endpoint's labels with podman's added: `cni` (from the CNI
/// arguments) win over podman's, and podman's that could not be
/// Kubernetes labels are left out; those are returned too.
pub fn merge(
    cni: &BTreeMap<String, String>,
    podman: BTreeMap<String, String>,
) -> (BTreeMap<String, String>, Vec<(String, String)>) {
    let (mut merged, mut skipped) = (BTreeMap::new(), Vec::new());
    for (key, value) in podman {
        if weir_spec::kubernetes_label(&key, &value) {
            merged.insert(key, value);
        } else {
            skipped.push((key, value));
        }
    }
    merged.extend(cni.iter().map(|(k, v)| (k.clone(), v.clone())));
    (merged, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "5f6d552ba82477c2184253c298e582797782af6e4f471730e4c17fb6cb862cd9";

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    /// conmon's arguments as podman 4.3 (Debian 12) gave them, shortened.
    fn conmon_argv(exit_args: &[&str]) -> Vec<String> {
        let mut argv = vec!["/usr/bin/conmon", "--api-version", "1", "-c", ID, "-u", ID, "-r", "/usr/bin/runc"];
        argv.extend(["-n", "web", "--exit-dir", "/tmp/p/tmp/exits", "--full-attach", "--log-level", "warning"]);
        argv.extend(["--runtime-arg", "--log-format=json", "--exit-command", "/usr/bin/podman"]);
        for arg in exit_args {
            argv.extend(["--exit-command-arg", arg]);
        }
        strings(&argv)
    }

    #[test]
    fn conmon_names_the_container_and_podmans_global_flags() {
        let argv = conmon_argv(&[
            "--root",
            "/tmp/p/root",
            "--runroot",
            "/tmp/p/run",
            "--log-level",
            "warning",
            "--cgroup-manager",
            "cgroupfs",
            "--tmpdir",
            "/tmp/p/tmp",
            "--network-config-dir",
            "",
            "--network-backend",
            "cni",
            "--volumepath",
            "/tmp/p/root/volumes",
            "--runtime",
            "runc",
            "--storage-driver=overlay",
            "--transient-store",
            "--events-backend",
            "file",
            "container",
            "cleanup",
            "--rm",
            ID,
        ]);
        let container = conmon_container(&argv).expect("podman's conmon");
        assert_eq!(container.id, ID);
        assert_eq!(container.podman, PathBuf::from("/usr/bin/podman"));
        assert_eq!(
            container.globals,
            strings(&[
                "--root",
                "/tmp/p/root",
                "--runroot",
                "/tmp/p/run",
                "--cgroup-manager",
                "cgroupfs",
                "--tmpdir",
                "/tmp/p/tmp",
                "--network-config-dir",
                "",
                "--network-backend",
                "cni",
                "--volumepath",
                "/tmp/p/root/volumes",
                "--storage-driver",
                "overlay",
                "--transient-store",
                "--events-backend",
                "file",
            ]),
            "the global flags with their values; not --log-level, nor --runtime (a program podman would run), nor the cleanup command"
        );
    }

    #[test]
    fn an_unknown_flag_ends_the_globals_and_a_missing_value_keeps_what_came_before() {
        let unknown = conmon_argv(&["--root", "/r", "--newflag", "x", "--runroot", "/run", "container", "cleanup", ID]);
        assert_eq!(conmon_container(&unknown).expect("podman's").globals, strings(&["--root", "/r"]));
        let cut = conmon_argv(&["--root", "/r", "--runroot"]);
        assert_eq!(conmon_container(&cut).expect("podman's").globals, strings(&["--root", "/r"]));
        let none = conmon_argv(&[]);
        assert_eq!(conmon_container(&none).expect("podman's").globals, Vec::<String>::new());
    }

    #[test]
    fn only_a_podman_conmon_with_an_id_names_a_container() {
        let mut cri_o = conmon_argv(&["--root", "/r"]);
        let at = cri_o.iter().position(|a| a == "/usr/bin/podman").expect("exit command");
        cri_o[at] = "/usr/bin/crio".into();
        assert_eq!(conmon_container(&cri_o), None, "not podman's conmon");
        let no_id: Vec<String> = conmon_argv(&[]).into_iter().filter(|a| a != "-c" && a != ID).collect();
        assert_eq!(conmon_container(&no_id), None, "no -c");
        assert_eq!(conmon_container(&strings(&["/usr/bin/conmon", "-c"])), None, "-c without its value");
        let inline =
            strings(&["conmon", "--cid=abc", "--exit-command=/usr/local/bin/podman", "--exit-command-arg=--root=/r"]);
        let container = conmon_container(&inline).expect("the = forms");
        assert_eq!((container.id.as_str(), container.globals), ("abc", strings(&["--root", "/r"])));
        assert_eq!(conmon_container(&[]), None);
    }

    #[test]
    fn only_processes_in_the_agents_namespaces_are_beside_it() {
        let me = std::process::id() as i32;
        let exe = std::fs::read_link("/proc/self/exe").expect("own exe");
        // This test's own binary is trusted only where the checkout is root's alone.
        assert_eq!(beside_the_agent(me), trusted_binary(&exe));
        assert!(!beside_the_agent(i32::MAX), "no such process");
    }

    #[test]
    fn only_root_owned_binaries_out_of_everyones_reach_are_run() {
        let dir = std::env::temp_dir().join(format!("weir-podman-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let podman = dir.join("podman");
        std::fs::write(&podman, "").expect("file");
        let trusted = |p: &Path| trusted_binary(p);
        assert!(!trusted(Path::new("podman")), "a relative path");
        assert!(!trusted(Path::new("/no/such/podman")), "no such file");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            let in_tmp = trusted(&podman);
            std::fs::set_permissions(&podman, std::fs::Permissions::from_mode(0o777)).expect("chmod");
            assert!(!trusted(&podman), "a file anyone may change");
            // /tmp is writable by everyone: nothing below it is trusted.
            assert!(!in_tmp || !std::env::temp_dir().starts_with("/tmp"), "a file under /tmp");
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert!(trusted(Path::new("/")), "root's own directory");
    }

    #[test]
    fn podmans_labels_are_a_map_or_null() {
        assert_eq!(
            parse_labels("{\"bad key\":\"x\",\"role\":\"web\"}\n").expect("valid"),
            BTreeMap::from([("bad key".into(), "x".into()), ("role".into(), "web".into())])
        );
        assert!(parse_labels("null\n").expect("valid").is_empty());
        let err = parse_labels("[1]").expect_err("not a map").to_string();
        assert!(err.starts_with("podman's labels \"[1]\""), "{err}");
    }

    #[test]
    fn the_cni_arguments_labels_win_and_invalid_ones_are_skipped() {
        let cni = BTreeMap::from([("role".to_string(), "db".to_string())]);
        let podman = BTreeMap::from([
            ("role".to_string(), "web".to_string()),
            ("tier".to_string(), "a".to_string()),
            ("bad key".to_string(), "x".to_string()),
            ("long".to_string(), "x".repeat(64)),
        ]);
        let (merged, skipped) = merge(&cni, podman);
        assert_eq!(merged, BTreeMap::from([("role".into(), "db".into()), ("tier".into(), "a".into())]));
        assert_eq!(skipped.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["bad key", "long"]);
    }
}
