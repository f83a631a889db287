//! `weir`: the one binary. The CLI is the edge where errors become anyhow
//! reports; every subcommand lives in `cmd/`.

mod cmd;
mod output;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cmd::Cli::parse();
    match cmd::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
