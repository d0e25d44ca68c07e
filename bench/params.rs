//! The bench parameters, from the environment (`BENCH_QUICK`, `BENCH_REPS`, `BENCH_ONLY`).

use std::time::Duration;

pub(crate) struct Params {
    pub(crate) quick: bool,
    pub(crate) reps: usize,
    /// Workload 1: applied to an empty database.
    pub(crate) apply_ns: [usize; 2],
    /// Workload 2 and the daemon: this many already applied.
    pub(crate) uptodate_n: usize,
    /// Workload 3 and `new`: small and large folder (plus N = 1 as the fixed-cost baseline).
    pub(crate) scan_ns: [usize; 2],
    /// `parse`: statements in one migration file (small and large).
    pub(crate) parse_ns: [usize; 2],
    /// `memory`: the size of the big data migration, in MiB.
    pub(crate) big_mib: usize,
    /// `drift`: Vamsa's schema, then this many times its objects (the first is 1).
    pub(crate) drift_scales: [usize; 3],
    pub(crate) idle: Duration,
    pub(crate) settle: Duration,
    /// `BENCH_PEERS=0`: workloads 1 and 2 without the peers (nothing installed).
    pub(crate) peers: bool,
    /// `BENCH_ONLY`: the workloads to run (comma-separated names); all when unset.
    only: Option<Vec<String>>,
}

impl Params {
    /// Whether the workload `name` runs (see `BENCH_ONLY`).
    pub(crate) fn runs(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| o == name))
    }

    pub(crate) fn from_env() -> Params {
        let only = std::env::var("BENCH_ONLY")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.split(',').map(|w| w.trim().to_string()).collect());
        let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let peers = std::env::var("BENCH_PEERS").map_or(true, |v| v != "0");
        let reps = std::env::var("BENCH_REPS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|r| *r > 0)
            .unwrap_or(if quick { 3 } else { 5 });
        if quick {
            Params {
                quick,
                reps,
                apply_ns: [100, 500],
                uptodate_n: 500,
                scan_ns: [100, 1_000],
                parse_ns: [20_000, 200_000],
                big_mib: 50,
                drift_scales: [1, 3, 10],
                idle: Duration::from_secs(3),
                settle: Duration::from_millis(500),
                peers,
                only,
            }
        } else {
            Params {
                quick,
                reps,
                apply_ns: [200, 2_000],
                uptodate_n: 2_000,
                scan_ns: [1_000, 10_000],
                parse_ns: [20_000, 200_000],
                big_mib: 200,
                drift_scales: [1, 10, 100],
                idle: Duration::from_secs(10),
                settle: Duration::from_millis(500),
                peers,
                only,
            }
        }
    }
}
