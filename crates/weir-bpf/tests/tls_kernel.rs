//! The OpenSSL probes on a real kernel: a Python HTTPS server (OpenSSL's
//! SSL_read_ex/SSL_write_ex) and curl (SSL_read/SSL_write) in a scope
//! cgroup on the host's loopback, with a certificate made at test time.
//! Each side's plaintext HTTP heads are reported with its pid, program and
//! socket; a curl outside the scope is not.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_bpf::clock;
use weir_bpf::tls::{self, TlsEvent, TlsOptions};
use weir_host::{mounts, netns, testing, Cgroup};

/// A scope cgroup, a scratch directory and the server, removed even when the test panics.
struct Scope {
    cgroup: Cgroup,
    dir: PathBuf,
    server: Option<Child>,
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some(server) = &mut self.server {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = self.cgroup.kill_all(Duration::from_secs(2));
        let _ = self.cgroup.destroy();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const SERVER: &str = r#"
import http.server, os, ssl
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain("cert.pem", "key.pem")
server.socket = context.wrap_socket(server.socket, server_side=True)
with open("port.tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename("port.tmp", "port")
server.serve_forever()
"#;

fn command_in(scope: &Scope, program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(&scope.dir).stdin(Stdio::null());
    netns::confine_command(&mut cmd, None, Some(scope.cgroup.procs_for_join().expect("cgroup.procs")));
    cmd
}

fn make_cert(dir: &Path) {
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=weir-test"])
        .args(["-keyout", "key.pem", "-out", "cert.pem"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl req");
    assert!(status.success(), "openssl req made no certificate");
}

fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn curl(cmd: &mut Command) -> u32 {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("curl runs");
    let pid = child.id();
    let out = child.wait_with_output().expect("curl");
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "curl's status");
    pid
}

type Events = Arc<Mutex<Vec<TlsEvent>>>;

/// A scope with a certificate and a page, the probes on it, and a Python
/// HTTPS server in it: (scope, probes, events, the server's port and pid).
fn serving() -> (Scope, tls::TlsProbes, Events, u16, u32) {
    let cgroup2 = mounts::ensure_cgroup2().expect("cgroup2");
    let name = testing::unique_name("tls");
    let mut scope =
        Scope { cgroup: Cgroup::new(cgroup2.join(&name)), dir: std::env::temp_dir().join(&name), server: None };
    scope.cgroup.create().expect("cgroup");
    std::fs::create_dir_all(&scope.dir).expect("scratch dir");
    make_cert(&scope.dir);
    std::fs::write(scope.dir.join("hello.txt"), "hello over TLS\n").expect("file");

    let libraries = tls::find_libssl();
    assert!(!libraries.is_empty(), "this host has a libssl (scripts/setup.sh installs OpenSSL)");
    let events: Events = Arc::default();
    let sink = events.clone();
    let probes = tls::start(
        TlsOptions { scope_cgroup: scope.cgroup.path().to_path_buf(), libraries },
        move |e| sink.lock().expect("events").push(e),
        || {},
    )
    .expect("the probes load and attach");
    assert!(
        probes.report.attached.iter().any(|(_, functions)| functions.len() == 6),
        "all six functions probed: {:?}",
        probes.report
    );

    let server = command_in(&scope, "/usr/bin/python3", &["-c", SERVER]).spawn().expect("python3 runs");
    let server_pid = server.id();
    scope.server = Some(server);
    let port: u16 = wait_for("the server's port", Duration::from_secs(30), || {
        std::fs::read_to_string(scope.dir.join("port")).ok()?.trim().parse().ok()
    });
    (scope, probes, events, port, server_pid)
}

#[test]
fn openssl_reads_and_writes_are_seen_with_process_and_socket() {
    let (scope, probes, events, port, server_pid) = serving();
    let url = format!("https://127.0.0.1:{port}/hello.txt");
    let curl_args = ["-ksS", "-o", "/dev/null", "-w", "%{http_code}", url.as_str()];

    // Outside the scope first: its messages would come before the others'.
    let outside = curl(Command::new("curl").args(curl_args));
    let (boot_before, unix_before) = (clock::boot_now_ns(), clock::unix_now_ns());
    let inside = curl(&mut command_in(&scope, "curl", &curl_args));

    let starts = |e: &TlsEvent, text: &str| e.data.starts_with(text.as_bytes());
    let seen = wait_for("both sides' requests and responses", Duration::from_secs(30), || {
        let events = events.lock().expect("events").clone();
        let find = |pid: u32, write: bool, text: &str, peer: Option<std::net::SocketAddr>| {
            events
                .iter()
                .find(|e| e.pid == pid && e.write == write && starts(e, text) && peer.is_none_or(|p| e.remote == p))
                .cloned()
        };
        let request = find(inside, true, "GET /hello.txt HTTP/1.1", None)?;
        // The server also served the curl outside the scope: this one's.
        let peer = Some(request.local);
        Some([
            find(server_pid, false, "GET /hello.txt HTTP/1.1", peer)?,
            find(server_pid, true, "HTTP/1.0 200", peer)?,
            find(inside, false, "HTTP/1.0 200", None)?,
            request,
        ])
    });
    let (boot_after, unix_after) = (clock::boot_now_ns(), clock::unix_now_ns());
    let [served, response, received, request] = &seen;
    // Stamped on the flows' clock (CLOCK_BOOTTIME), and read as wall time
    // between the wall clock around the exchange.
    for e in &seen {
        assert!((boot_before..=boot_after).contains(&e.time_ns), "{boot_before} {boot_after}: {e:?}");
        let at = clock::unix_of(e.time_ns, boot_after, unix_after);
        assert!((unix_before..=unix_after).contains(&at), "{unix_before} <= {at} <= {unix_after}: {e:?}");
    }
    for e in [request, received] {
        assert_eq!(e.exe, "curl", "{e:?}");
        assert_eq!(e.remote.port(), port, "curl's socket's peer is the server: {e:?}");
        assert_eq!(e.remote.ip().to_string(), "127.0.0.1");
    }
    for e in [served, response] {
        assert!(e.exe.starts_with("python3"), "{e:?}");
        assert_eq!(e.local.port(), port, "the server's socket: {e:?}");
    }
    assert_eq!(request.ssl, received.ssl, "one connection, one SSL object");
    assert!(request.time_ns < received.time_ns);
    assert!(String::from_utf8_lossy(&request.data).contains("\r\nHost: 127.0.0.1"), "{request:?}");
    let events = events.lock().expect("events").clone();
    assert!(!events.iter().any(|e| e.pid == outside), "a process outside the scope was reported");
    let outcomes = probes.outcomes().expect("outcomes");
    let reported = outcomes.iter().find(|(n, _)| *n == "reported").map_or(0, |(_, n)| *n);
    assert!(reported >= 4, "{outcomes:?}");
}

/// A client killed while blocked in SSL_read never returns from it: its
/// thread's entry goes at its exit, and the table empties.
#[test]
fn a_thread_killed_inside_an_openssl_call_is_forgotten() {
    let (scope, probes, _events, port, _server_pid) = serving();
    let client = format!(
        "import socket, ssl\n\
         c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE\n\
         s = c.wrap_socket(socket.create_connection(('127.0.0.1', {port})))\n\
         s.recv(100)\n"
    );
    let mut child = command_in(&scope, "/usr/bin/python3", &["-c", &client]).spawn().expect("client runs");
    // The client waits in SSL_read, the server in its own for a request.
    wait_for("both ends inside SSL_read", Duration::from_secs(30), || (probes.calls_in_progress() >= 2).then_some(()));
    child.kill().expect("kill the client");
    child.wait().expect("reaped");
    // The server's read returns (end of stream); the client's never will.
    wait_for("no call left in progress", Duration::from_secs(30), || (probes.calls_in_progress() == 0).then_some(()));
}

/// An SSL object's socket is known from SSL_set_fd, before any read or
/// write, and forgotten when SSL_free frees the object: its address, when
/// reused for another connection, names no old socket.
#[test]
fn an_ssl_objects_socket_comes_with_ssl_set_fd_and_goes_with_ssl_free() {
    let (scope, probes, _events, port, _server_pid) = serving();
    let client = format!(
        "import gc, socket, ssl, sys\n\
         c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE\n\
         s = c.wrap_socket(socket.create_connection(('127.0.0.1', {port})))\n\
         print('connected', s.fileno(), flush=True)\n\
         sys.stdin.readline()\n\
         s.close(); del s; gc.collect()\n\
         print('freed', flush=True)\n\
         sys.stdin.readline()\n"
    );
    let mut child = command_in(&scope, "/usr/bin/python3", &["-c", &client])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("client runs");
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut line = || lines.next().and_then(Result::ok).unwrap_or_default();
    let connected = line();
    let fd: i32 = connected.strip_prefix("connected ").and_then(|n| n.parse().ok()).expect("connected FD");
    // The uprobes ran inside the calls the client made before it printed.
    assert_eq!(probes.remembered_sockets(pid), [fd], "SSL_set_fd names the socket before any read or write");
    writeln!(stdin).expect("tell the client to close");
    assert_eq!(line(), "freed");
    assert_eq!(probes.remembered_sockets(pid), [0i32; 0], "SSL_free forgets the object's socket");
    drop(stdin);
    child.wait().expect("the client ends");
}
