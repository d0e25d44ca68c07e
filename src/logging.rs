//! Logging set-up: the journal (with structured fields such as `MIGRATION` and `SQLSTATE`) when
//! running under systemd, readable text on stderr otherwise.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::LogTarget;

/// Whether [`init`] sent logs to the journal's native protocol.
static TO_JOURNAL: AtomicBool = AtomicBool::new(false);

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
    TO_JOURNAL.store(journald.is_some(), Ordering::Relaxed);
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

/// The commands' logging, on stderr at `level` (`VAMSA_MIGRATE_LOG` takes a full filter): on a
/// terminal tracing's own coloured lines; into a file or pipe plain `warning: ...` lines, as
/// the folder's warnings are written, without colour codes, time or module.
pub(crate) fn init_cli(level: &str) {
    let filter =
        EnvFilter::try_from_env("VAMSA_MIGRATE_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    let _ = if io::stderr().is_terminal() {
        builder.try_init()
    } else {
        builder.with_ansi(false).event_format(Plain).try_init()
    };
}

/// `<level>: <message> <field>=<value>...`, one line per event.
struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let label = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        write!(writer, "{label}: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
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

/// Logs the error the process exits on (at error priority).
///
/// journald attributes a native-protocol message to its unit by reading the sender's
/// `/proc/<pid>/cgroup` when the datagram is processed; a process that exits right after
/// sending is often gone by then (systemd 252, Debian 12; more so on a loaded machine), and
/// `journalctl -u vamsa-migrate` would miss the very line that says why the unit failed.
/// Under the journal this line therefore goes to stderr, the stream systemd connected to the
/// journal (attributed when it was opened), with the `<3>` priority prefix that journald
/// reads (`SyslogLevelPrefix=yes`, the default); elsewhere it is an ordinary error event.
pub(crate) fn fatal(message: &str) {
    if TO_JOURNAL.load(Ordering::Relaxed) {
        let mut err = io::stderr().lock();
        for line in message.lines() {
            let _ = writeln!(err, "<3>{line}");
        }
    } else {
        tracing::error!("{message}");
    }
}
