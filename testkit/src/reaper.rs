//! A watcher that cleans up a cluster after this process, however it ends.

use std::process::{Command, Stdio};

use crate::cluster::{ClusterError, TempCluster};

/// Starts a detached watcher (`setsid sh`) that, once this process is gone (even after SIGKILL
/// or a failed test that never drops the cluster, e.g. one held in a `static`), stops the
/// server (`pg_ctl stop -m immediate`) and removes the cluster's directory.
///
/// Errors: [`ClusterError::Io`] when `setsid` cannot be started (util-linux).
pub fn reap_after_exit(cluster: &TempCluster) -> Result<(), ClusterError> {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.3; done; \
         {ctl} -D {data} -m immediate stop >/dev/null 2>&1 || runuser -u postgres -- {ctl} -D {data} -m immediate stop >/dev/null 2>&1; \
         rm -rf {dir}",
        pid = std::process::id(),
        ctl = cluster.program("pg_ctl").display(),
        data = cluster.data_dir().display(),
        dir = cluster.dir().display(),
    );
    // Never waited for on purpose: the reaper's job starts when this process is gone.
    #[allow(clippy::zombie_processes)]
    Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| ClusterError::Io {
            what: "starting the cluster reaper (setsid)".into(),
            source,
        })?;
    Ok(())
}
