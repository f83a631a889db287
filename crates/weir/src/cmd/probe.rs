//! `weir probe`: what this kernel allows, and what that means for each capability.

use std::process::ExitCode;

use clap::Args;
use weir_bpf::probe::{self, Verdict};

use crate::output::{self, Format};

/// Find out which eBPF features this kernel really has, by loading and
/// attaching tiny programs, and say how far each Weir capability can run.
///
/// Needs root. Mounts bpffs, tracefs and securityfs where they are missing.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    #[arg(short, long, value_enum, default_value_t)]
    output: Format,
}

pub fn run(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    let report = probe::run();
    match args.output {
        Format::Json => output::json(&report)?,
        Format::Table => {
            println!(
                "kernel {}  lockdown {}\n",
                report.kernel,
                report.lockdown.as_deref().unwrap_or("none (no lockdown LSM)")
            );
            let rows: Vec<Vec<String>> = report
                .features
                .iter()
                .map(|f| {
                    vec![
                        f.group.to_string(),
                        f.name.to_string(),
                        if f.available { "yes" } else { "NO" }.to_string(),
                        f.detail.clone(),
                    ]
                })
                .collect();
            print!("{}", output::table(&["GROUP", "FEATURE", "AVAILABLE", "DETAIL"], &rows));
            println!();
            let rows: Vec<Vec<String>> = report
                .capabilities
                .iter()
                .map(|c| {
                    let verdict = match c.verdict {
                        Verdict::Full => "runs fully",
                        Verdict::Fallback => "runs with a fallback",
                        Verdict::Unavailable => "cannot run",
                    };
                    vec![c.capability.to_string(), verdict.to_string(), c.detail.clone()]
                })
                .collect();
            print!("{}", output::table(&["CAPABILITY", "VERDICT", "DETAIL"], &rows));
        }
    }
    Ok(ExitCode::SUCCESS)
}
