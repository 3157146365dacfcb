//! The `lbwnet` command: parse arguments, set up logging, hand over to the library.
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Like other command-line tools, end quietly when a reader such as `head` closes our
    // stdout, instead of failing (panicking) on the next print.
    #[cfg(unix)]
    // SAFETY: restores the default action of one signal before any other thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    lbwnet::malloc_policy::keep_freed_memory();
    let cli = lbwnet::cli::Cli::parse();
    lbwnet::cli::init_logging(cli.quiet);
    match lbwnet::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
