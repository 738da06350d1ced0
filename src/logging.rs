//! Logging to stderr, with `RUST_LOG` for our own modules, and a hard cap for everyone else.
//!
//! Pingora's debug logs print whole request headers, and so the key in them; no `RUST_LOG`
//! setting may bring a key into a log line (guarantee 7), so other crates never log below
//! `info`, whatever the filter asks.

use log::{LevelFilter, Log, Metadata, Record};

/// The most verbose level any crate but keygate itself may log at.
const OTHERS_MAX: LevelFilter = LevelFilter::Info;

struct Capped {
    inner: env_logger::Logger,
}

fn is_ours(target: &str) -> bool {
    target == "keygate" || target.starts_with("keygate::")
}

impl Log for Capped {
    fn enabled(&self, metadata: &Metadata) -> bool {
        (is_ours(metadata.target()) || metadata.level() <= OTHERS_MAX) && self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Installs the logger: `RUST_LOG` (default `info`) with the cap above.
pub fn init() {
    let inner = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    log::set_max_level(inner.filter());
    let _ = log::set_boxed_logger(Box::new(Capped { inner }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_own_modules_log_below_info() {
        let inner = env_logger::Builder::new().filter_level(LevelFilter::Trace).build();
        let logger = Capped { inner };
        let at =
            |target: &str, level| logger.enabled(&Metadata::builder().target(target).level(level).build());
        assert!(at("keygate::lookup", log::Level::Debug));
        assert!(!at("pingora_proxy::proxy_h1", log::Level::Debug));
        assert!(at("pingora_proxy::proxy_h1", log::Level::Info));
        assert!(!at("keygatex", log::Level::Debug));
    }
}
