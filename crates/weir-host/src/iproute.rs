//! Runs iproute2's `ip`, in batch mode so that building a lab node costs one
//! process rather than one per link and address, and its `tc`.

use std::io::{self, Write};
use std::process::{Command, Stdio};

/// An `ip` invocation that failed.
#[derive(Debug, thiserror::Error)]
pub enum IpError {
    #[error("running `ip` (is iproute2 installed?)")]
    Spawn(#[source] io::Error),
    #[error("`ip {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
    #[error("running `tc` (is iproute2 installed?)")]
    TcSpawn(#[source] io::Error),
    #[error("`tc {args}` failed: {stderr}")]
    TcFailed { args: String, stderr: String },
}

/// Runs `ip [-n NETNS] ARGS...`.
pub fn ip(netns: Option<&str>, args: &[&str]) -> Result<String, IpError> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let out = cmd.args(args).output().map_err(IpError::Spawn)?;
    if !out.status.success() {
        return Err(IpError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs every line of `commands` through one `ip [-n NETNS] -batch -`; stops at the first failure.
pub fn batch(netns: Option<&str>, commands: &[String]) -> Result<(), IpError> {
    if commands.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(IpError::Spawn)?;
    let script = commands.join("\n") + "\n";
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(IpError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(IpError::Spawn)?;
    if !out.status.success() {
        let target = netns.map(|n| format!("-n {n} ")).unwrap_or_default();
        return Err(IpError::Failed {
            args: format!("{target}-batch:\n{script}"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Runs `tc ARGS...` in the caller's network namespace; its standard output.
pub fn tc(args: &[&str]) -> Result<String, IpError> {
    let out = Command::new("tc").args(args).output().map_err(IpError::TcSpawn)?;
    if !out.status.success() {
        return Err(IpError::TcFailed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
