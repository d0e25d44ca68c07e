//! Who is on the other end of the trigger socket (SO_PEERCRED, SO_PEERGROUPS) and whether they
//! may apply. `may_apply` reads the user and group databases: blocking work, which the daemon runs
//! off its runtime thread (`tokio::task::spawn_blocking`).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use crate::config::DaemonSettings;

/// Who connected, as the kernel recorded it when the connection was made: SO_PEERCRED's uid,
/// gid and pid, and SO_PEERGROUPS's supplementary groups (Linux 4.13, socket(7)). Never read
/// again from /proc: the pid may have been reused by another process since.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) pid: Option<i32>,
    pub(crate) groups: Vec<u32>,
}

impl Peer {
    /// The credentials of the process at the other end of `stream` when it connected.
    pub(crate) fn of(stream: &tokio::net::UnixStream) -> std::io::Result<Peer> {
        let cred = stream.peer_cred()?;
        Ok(Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
            groups: peer_groups(stream.as_fd())?,
        })
    }
}

/// Root, the user the daemon runs as, and configured users and groups may send `apply`.
pub(crate) fn may_apply(peer: &Peer, settings: &DaemonSettings) -> bool {
    let me = nix::unistd::geteuid().as_raw();
    if peer.uid == 0 || peer.uid == me {
        return true;
    }
    if settings
        .allowed_users
        .iter()
        .any(|u| user_id(u) == Some(peer.uid))
    {
        return true;
    }
    settings
        .allowed_groups
        .iter()
        .filter_map(|g| group_id(g))
        .any(|gid| gid == peer.gid || peer.groups.contains(&gid))
}

/// `SO_PEERGROUPS` in asm-generic/socket.h (x86, arm, riscv...; Linux 4.13); neither `nix` nor
/// `rustix` offers the option yet.
const SO_PEERGROUPS: libc::c_int = 59;

/// The supplementary groups the peer had when it connected (getsockopt(2) SO_PEERGROUPS: an
/// array of gid_t; ERANGE with the needed length when the buffer is short).
fn peer_groups(fd: BorrowedFd<'_>) -> std::io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * size_of::<libc::gid_t>())
            .map_err(std::io::Error::other)?;
        // SAFETY: `groups` is valid for writes of `len` bytes, and `len` is a valid socklen_t
        // the kernel updates to the bytes written (or needed).
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ERANGE) || count <= groups.len() {
            return Err(error);
        }
        groups.resize(count, 0);
    }
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
pub(crate) fn trigger_peer(peer: &Peer) -> crate::protocol::TriggerPeer {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(peer.uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    let unit = peer.pid.and_then(|pid| {
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
        path.rsplit('/')
            .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
            .map(str::to_string)
    });
    crate::protocol::TriggerPeer {
        uid: peer.uid,
        user,
        pid: peer.pid,
        unit,
    }
}
