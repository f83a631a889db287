//! `weir`: the one binary. The CLI is the edge where errors become anyhow
//! reports; every subcommand lives in `cmd/`.

mod cmd;
mod output;

fn main() -> std::process::ExitCode {
    // Runtimes run a CNI plugin by its type's name: a `weir-cni` link to this
    // binary is the plugin, with no command-line parsing at all.
    let invoked_as = std::env::args_os().next().map(std::path::PathBuf::from);
    if invoked_as.as_deref().and_then(|p| p.file_name()).is_some_and(|n| n == cmd::cni::PLUGIN_NAME) {
        return cmd::cni::run();
    }
    let cli = cmd::Cli::from_args();
    // Daemons set their allocator up before any thread exists. Other
    // commands die quietly on a closed pipe (`weir probe | head`) as
    // command-line tools do; never the agent, whose peers may hang up on it.
    if cli.is_daemon() {
        weir_agent::heap::tune_for_daemon();
    } else {
        // SAFETY: setting a signal disposition to its default before any thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match cmd::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
