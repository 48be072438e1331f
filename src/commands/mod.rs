//! The commands: each a thin use of the modules above. Errors become messages and exit codes
//! here, and nowhere else.

pub mod audit;
pub mod certs;
pub mod check;
pub mod serve;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::str::FromStr;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

use crate::cli::{Cli, Command, LogFormat, ModeArg};
use crate::config::{ConfigError, GlobalMode};
use crate::policies::Config;

/// Exit status for bad input or configuration.
pub const EXIT_BAD_INPUT: u8 = 2;

pub fn run(cli: Cli) -> ExitCode {
    if let Err(e) = init_logging(&cli.log, cli.log_format) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Check(args) => check::run(args),
        Command::Certs(args) => certs::run(args),
        Command::Audit(args) => audit::run(args),
    }
}

fn init_logging(filter: &str, format: LogFormat) -> Result<(), String> {
    let targets = Targets::from_str(filter).map_err(|e| {
        format!("--log {filter:?} is not a log filter ({e}); use a level such as `info` or `prodguard=debug,info`")
    })?;
    let registry = tracing_subscriber::registry().with(targets);
    let result = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // Already initialised (tests calling commands twice) is fine.
    let _ = result;
    Ok(())
}

/// The configuration from `path` (or the embedded default), with the command-line mode.
pub fn load_config(path: Option<&Path>, mode: Option<ModeArg>) -> Result<Config, ConfigError> {
    let mut config = match path {
        Some(path) => Config::load(path)?,
        None => Config::embedded_default()?,
    };
    if let Some(mode) = mode {
        config.mode = match mode {
            ModeArg::Enforce => GlobalMode::Enforce,
            ModeArg::Audit => GlobalMode::Audit,
        };
    }
    Ok(config)
}
