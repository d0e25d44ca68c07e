//! Logging set-up: the journal (with structured fields such as `MIGRATION` and `SQLSTATE`) when
//! running under systemd, readable text on stderr otherwise.

use std::io::{self, IsTerminal};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::LogTarget;

/// Installs the global subscriber once. `JOURNAL_STREAM` is set by systemd when stderr is
/// connected to the journal; that is what `auto` follows.
pub fn init(target: LogTarget, level: &str) {
    let filter =
        EnvFilter::try_from_env("VAMSA_MIGRATE_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let journald = match target {
        LogTarget::Stderr => None,
        LogTarget::Journald => journald_layer(),
        LogTarget::Auto if std::env::var_os("JOURNAL_STREAM").is_some() => journald_layer(),
        LogTarget::Auto => None,
    };
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match journald {
        Some(layer) => registry.with(layer).try_init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(io::stderr().is_terminal())
                    .with_writer(io::stderr),
            )
            .try_init(),
    };
}

fn journald_layer() -> Option<tracing_journald::Layer> {
    match tracing_journald::layer() {
        Ok(layer) => Some(
            layer
                .with_syslog_identifier("vamsa-migrate".into())
                // Our field names are already journal-style: MIGRATION, SQLSTATE, ...
                .with_field_prefix(None),
        ),
        Err(e) => {
            eprintln!("vamsa-migrate: the journal is not reachable ({e}); logging to stderr");
            None
        }
    }
}
