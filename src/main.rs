//! The `lbwnet` command: parse arguments, set up logging, hand over to the library.
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
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
