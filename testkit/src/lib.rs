//! vamsa-testkit: throwaway PostgreSQL clusters, and with the `test-support` feature the kit
//! that vamsa-migrate's integration tests and benchmark share.
//!
//! Without features it holds only [`cluster`], which `vamsa-migrate demo` needs. The
//! `test-support` feature adds the test-only parts: cluster pre-start hooks and replicas, the
//! [`reaper`], the [`pooler`] (PgBouncer), the [`cli`] builder, the [`daemon`] driver, the [`folder`] writer and
//! [`wait::eventually`]. This crate does not depend on `vamsa-migrate`: the binary under test
//! is passed in by path.

#[cfg(feature = "test-support")]
pub mod cli;
pub mod cluster;
#[cfg(feature = "test-support")]
pub mod daemon;
#[cfg(feature = "test-support")]
pub mod folder;
#[cfg(feature = "test-support")]
pub mod pooler;
#[cfg(feature = "test-support")]
pub mod reaper;
#[cfg(feature = "test-support")]
pub mod wait;

pub use cluster::{ClusterError, ClusterOptions, StopMode, TempCluster};

#[cfg(feature = "test-support")]
pub use nix::sys::signal::Signal;

/// Whether this process runs as root (effective uid 0).
#[cfg(feature = "test-support")]
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// For a test that needs root: true when root; otherwise prints why the test is skipped and
/// returns false (the test then returns at once). CI runs as root.
#[cfg(feature = "test-support")]
pub fn root_or_skip(needs_root_to: &str) -> bool {
    if is_root() {
        return true;
    }
    // Straight to the stream: libtest captures eprintln! (and shows it only on failure), so
    // the reason of a skip that counts as "ok" would never be seen.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "skipped: not root, and this test needs root to {needs_root_to}"
    );
    false
}
