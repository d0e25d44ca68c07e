//! Waiting for a condition: the one polling helper of the tests and the benchmark.

use std::fmt;
use std::time::{Duration, Instant};

/// How long [`eventually`] waits before it fails. Generous on purpose: the suite runs on a
/// shared two-core machine, and a test asserts what happens, not how fast (a test that is about
/// speed measures and asserts the elapsed time itself).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Between two probes.
const POLL: Duration = Duration::from_millis(20);

/// What a probe returns: `true`, or `Some(value)`, once the condition holds.
pub trait Settled {
    type Value;
    fn settled(self) -> Option<Self::Value>;
}

impl Settled for bool {
    type Value = ();
    fn settled(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Settled for Option<T> {
    type Value = T;
    fn settled(self) -> Option<T> {
        self
    }
}

/// Calls `probe` every 20 ms until it holds and returns its value (`()` for a `bool` probe).
///
/// Panics with "timed out after 60s waiting for {what}" once [`PATIENCE`] has passed; a probe
/// may panic itself to fail sooner (e.g. when the process it waits on has exited). `what` is
/// formatted only then, so a [`lazy`] description can read a log at that moment.
#[track_caller]
pub fn eventually<S: Settled>(what: impl fmt::Display, mut probe: impl FnMut() -> S) -> S::Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe().settled() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {PATIENCE:?} waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// A description computed when it is displayed (see [`eventually`]).
pub struct Lazy<F>(F);

/// Wraps `describe` so that it runs only if the description is shown.
pub fn lazy<F: Fn() -> String>(describe: F) -> Lazy<F> {
    Lazy(describe)
}

impl<F: Fn() -> String> fmt::Display for Lazy<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&(self.0)())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn returns_the_value_of_the_first_probe_that_holds() {
        let calls = Cell::new(0);
        let value = eventually("the third call", || {
            calls.set(calls.get() + 1);
            (calls.get() == 3).then_some(calls.get() * 10)
        });
        assert_eq!((value, calls.get()), (30, 3));
    }

    #[test]
    fn a_lazy_description_is_computed_only_when_shown() {
        let shown = Cell::new(false);
        let what = lazy(|| {
            shown.set(true);
            "the log".to_string()
        });
        eventually(&what, || true);
        assert!(!shown.get());
        assert_eq!(what.to_string(), "the log");
        assert!(shown.get());
    }
}
