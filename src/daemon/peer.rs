//! Who is on the other end of the trigger socket (SO_PEERCRED) and whether they may apply.
//! Every function here reads the user database or /proc: blocking work, which the daemon runs
//! off its runtime thread (`tokio::task::spawn_blocking`).

use tokio::net::unix::UCred;

use crate::config::DaemonSettings;

/// Root, the user the daemon runs as, and configured users and groups may send `apply`.
/// `cred` is the peer's SO_PEERCRED (Linux unix(7)): uid, gid and pid at connect time.
pub(crate) fn may_apply(cred: &UCred, settings: &DaemonSettings) -> bool {
    let me = nix::unistd::geteuid().as_raw();
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

/// A user name (or a numeric uid) to its uid; `None` when there is no such user or the user
/// database cannot be read (getpwnam_r(3), through `nix`).
pub(crate) fn user_id(name: &str) -> Option<u32> {
    if let Ok(uid) = name.parse() {
        return Some(uid);
    }
    let user = nix::unistd::User::from_name(name).ok().flatten()?;
    Some(user.uid.as_raw())
}

/// A group name (or a numeric gid) to its gid; `None` when there is no such group or the
/// group database cannot be read (getgrnam_r(3), through `nix`).
pub(crate) fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse() {
        return Some(gid);
    }
    let group = nix::unistd::Group::from_name(name).ok().flatten()?;
    Some(group.gid.as_raw())
}

/// The peer as the run history records it: uid and pid, the uid's user name, and the systemd
/// unit its process runs in: the last `.service` or `.scope` component of its cgroup v2 path
/// in `/proc/<pid>/cgroup` (`0::/system.slice/deploy.service`), when there is one.
pub(crate) fn trigger_peer(cred: &UCred) -> crate::protocol::TriggerPeer {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(cred.uid()))
        .ok()
        .flatten()
        .map(|u| u.name);
    let unit = cred.pid().and_then(|pid| {
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
        path.rsplit('/')
            .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
            .map(str::to_string)
    });
    crate::protocol::TriggerPeer {
        uid: cred.uid(),
        user,
        pid: cred.pid(),
        unit,
    }
}
