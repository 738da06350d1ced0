//! The command line, as the README's "Command line" documents it: run, check a config, upgrade
//! a running instance, or manage keys.

use crate::config::{Config, StoreBackend};
use crate::keys::{self, KeyCommand};
use crate::store::file::read_keys;
use crate::store::KeyRecord;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "keygate", version, about = "An API-key edge gateway on Pingora")]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The YAML config file.
    #[arg(short = 'c', long = "config", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Check the config file and exit: 0 when valid, 1 with every problem on stderr.
    #[arg(short = 't', long = "test")]
    pub test: bool,
    /// Take over the listening sockets of the running instance (graceful upgrade).
    #[arg(short = 'u', long = "upgrade")]
    pub upgrade: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage keys in the configured store.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Write the key's record (replacing any) and announce it.
    Add {
        key: String,
        /// The tenant the key belongs to.
        #[arg(long)]
        app: String,
        /// Requests per second for this key (default: the config's).
        #[arg(long)]
        rate: Option<f64>,
        /// Burst for this key (default: the config's).
        #[arg(long)]
        burst: Option<u32>,
        /// Unix seconds from which the key is disabled.
        #[arg(long, value_name = "UNIX_SECONDS")]
        expires: Option<u64>,
    },
    /// Mark the key revoked and announce it.
    Revoke { key: String },
    /// Print the key's record (its id, never the key).
    Show { key: String },
}

/// Runs what `args` asks for; the process's exit code.
pub fn run(args: Args) -> i32 {
    let Some(path) = args.config else {
        eprintln!("keygate: a config file is required: -c FILE");
        return 2;
    };
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return 1;
        }
    };
    if let Some(Command::Keys { action }) = args.command {
        let (key, command) = match action {
            KeysAction::Add { key, app, rate, burst, expires } => {
                let record = KeyRecord { rate, burst, expires, ..KeyRecord::active(&app) };
                (key, KeyCommand::Add(record))
            }
            KeysAction::Revoke { key } => (key, KeyCommand::Revoke),
            KeysAction::Show { key } => (key, KeyCommand::Show),
        };
        return match keys::run(&config, &key, command) {
            Ok(message) => {
                println!("{message}");
                0
            }
            Err(e) => {
                eprintln!("keygate keys: {e:#}");
                1
            }
        };
    }
    if args.test {
        // The key file is part of what a start would read: a broken one fails the check too.
        if let StoreBackend::File(keys) = &config.store.backend {
            if let Err(problems) = read_keys(keys) {
                // `:#` prints the cause too (the I/O or YAML error), as a start would log it.
                eprintln!("store.file: {:#}", anyhow::Error::new(problems));
                return 1;
            }
        }
        eprintln!("{}: ok", path.display());
        return 0;
    }
    match crate::server::run(config, Some(path), args.upgrade) {
        Ok(()) => 0,
        Err(e) => {
            log::error!("keygate could not start: {e:#}");
            1
        }
    }
}
