//! A service backend as a real process in a lab pod
//! (tests/fixtures/svc_server.c): it answers each line with its name, and
//! can be killed or stopped; killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use super::TestLab;

pub struct ServerProcess {
    child: std::process::Child,
    pub pid: i32,
}

impl ServerProcess {
    /// Starts `server` in `pod` on its address, `proto` (tcp or udp) `port`,
    /// answering with `name`; returns once it listens.
    pub fn start(lab: &TestLab, server: &std::path::Path, pod: &str, proto: &str, port: u16, name: &str) -> Self {
        let ip = lab.plan().pod(pod).expect("pod").ip.to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["lab", "exec", "--lab", &lab.name, pod, "--"])
            .arg(server)
            .args([proto, &ip, &port.to_string(), name])
            .stdout(Stdio::piped())
            .spawn()
            .expect("server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("server starts");
        let pid = line.trim().strip_prefix("ready pid=").and_then(|p| p.parse().ok()).expect("ready pid=PID");
        Self { child, pid }
    }

    pub fn signal(&self, signal: i32) {
        weir_host::process::kill(self.pid, signal);
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
