use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = prodguard::cli::Cli::parse();
    prodguard::commands::run(cli)
}
