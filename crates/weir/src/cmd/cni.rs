//! `weir cni` (also `weir` run under the name `weir-cni`): the CNI plugin.
//! It speaks only the CNI protocol: environment and stdin in, a result or
//! an error object on stdout, nonzero exit on error.

use std::io::{Read, Write};
use std::process::ExitCode;

use weir_cni::config;
use weir_cni::plugin::LATEST_VERSION;
use weir_cni::{CniError, Env};

/// The name runtimes call the plugin by (the config's `type`).
pub const PLUGIN_NAME: &str = config::PLUGIN_TYPE;

/// Runs one CNI invocation from this process's environment and stdin.
pub fn run() -> ExitCode {
    let mut stdin = Vec::new();
    let result = std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|e| {
            CniError::new(weir_cni::error::IO_FAILURE, "reading the network config from stdin").with_details(e)
        })
        .and_then(|_| weir_cni::run(&Env::from_process(), &stdin));
    let mut out = std::io::stdout().lock();
    match result {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(value)) => {
            // A runtime that hung up cannot be told anything more.
            let _ = writeln!(out, "{value}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            let version = config::version_of(&stdin)
                .filter(|v| config::supports(v))
                .unwrap_or_else(|| LATEST_VERSION.to_string());
            let _ = writeln!(out, "{}", err.to_json(&version));
            eprintln!("weir-cni: {err}");
            ExitCode::FAILURE
        }
    }
}
