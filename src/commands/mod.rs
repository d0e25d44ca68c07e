//! The bodies of the CLI's commands. Each shows its own output and returns an
//! [`Outcome`](crate::exit::Outcome); [`crate::cli`] parses the arguments, calls one of them and
//! turns the outcome into the exit code. `demo` runs `migrate` and `status` from here, never
//! through the CLI.

pub(crate) mod backup;
pub(crate) mod convert;
pub(crate) mod demo;
pub(crate) mod history;
pub(crate) mod manpage;
pub(crate) mod migrate;
pub(crate) mod new;
pub(crate) mod restore;
pub(crate) mod status;
pub(crate) mod trigger;
pub(crate) mod verify;

use std::io;

use crate::engine::EngineError;
use crate::exit::Outcome;
use crate::protocol::Event;
use crate::report::{self, Format};

/// Shows an error that happened before the engine reported anything: the error block on
/// stderr, or, in JSON, the `done` event it would have sent.
pub(crate) fn show_error(e: &EngineError, format: Format) -> Outcome {
    let error = crate::diagnosis::report(e);
    match format {
        Format::Human => eprint!("{}", report::render_error(&error)),
        Format::Json => {
            let _ = report::write_json_line(&mut io::stdout(), &Event::done_failed(error, false));
        }
    }
    Outcome::Failed(e.kind())
}
