//! `weir`: the one binary. The CLI is the edge where errors become anyhow
//! reports; every subcommand lives in `cmd/`.

mod cmd;
mod output;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Die quietly on a closed pipe (`weir probe | head`) as command-line tools do.
    // SAFETY: setting a signal disposition to its default before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = cmd::Cli::parse();
    match cmd::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
