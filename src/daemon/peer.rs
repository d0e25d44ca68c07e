//! Who is on the other end of the trigger socket (SO_PEERCRED) and whether they may apply.

use std::ffi::CString;

use tokio::net::unix::UCred;

use crate::config::DaemonSettings;

/// Root, the user the daemon runs as, and configured users and groups may send `apply`.
pub fn may_apply(cred: &UCred, settings: &DaemonSettings) -> bool {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if cred.uid() == 0 || cred.uid() == me {
        return true;
    }
    if settings
        .allowed_users
        .iter()
        .any(|u| user_id(u) == Some(cred.uid()))
    {
        return true;
    }
    let groups = peer_groups(cred);
    settings
        .allowed_groups
        .iter()
        .filter_map(|g| group_id(g))
        .any(|gid| groups.contains(&gid))
}

/// The peer's primary group and, from /proc, its supplementary groups.
fn peer_groups(cred: &UCred) -> Vec<u32> {
    let mut groups = vec![cred.gid()];
    if let Some(pid) = cred.pid() {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(line) = status.lines().find(|l| l.starts_with("Groups:")) {
                groups.extend(
                    line["Groups:".len()..]
                        .split_whitespace()
                        .filter_map(|g| g.parse::<u32>().ok()),
                );
            }
        }
    }
    groups
}

/// A user name (or a numeric uid) to its uid.
pub fn user_id(name: &str) -> Option<u32> {
    if let Ok(uid) = name.parse() {
        return Some(uid);
    }
    let c = CString::new(name).ok()?;
    // SAFETY: getpwnam returns null or a pointer to static storage that we read at once; the
    // daemon calls it from its single runtime thread only.
    unsafe {
        let pw = libc::getpwnam(c.as_ptr());
        (!pw.is_null()).then(|| (*pw).pw_uid)
    }
}

/// A group name (or a numeric gid) to its gid.
pub fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse() {
        return Some(gid);
    }
    let c = CString::new(name).ok()?;
    // SAFETY: as in `user_id`.
    unsafe {
        let gr = libc::getgrnam(c.as_ptr());
        (!gr.is_null()).then(|| (*gr).gr_gid)
    }
}
