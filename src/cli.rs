//! The command line (the contract's): run, check a config, or upgrade a running instance.

use crate::config::Config;
use clap::Parser;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "keygate", version, about = "An API-key edge gateway on Pingora")]
pub struct Args {
    /// The YAML config file.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: PathBuf,
    /// Check the config file and exit: 0 when valid, 1 with every problem on stderr.
    #[arg(short = 't', long = "test")]
    pub test: bool,
    /// Take over the listening sockets of the running instance (graceful upgrade).
    #[arg(short = 'u', long = "upgrade")]
    pub upgrade: bool,
}

/// Runs what `args` asks for; the process's exit code.
pub fn run(args: Args) -> i32 {
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return 1;
        }
    };
    if args.test {
        eprintln!("{}: ok", args.config.display());
        return 0;
    }
    match crate::server::run(config, Some(args.config.clone()), args.upgrade) {
        Ok(()) => 0,
        Err(e) => {
            log::error!("keygate could not start: {e:#}");
            1
        }
    }
}
