//! Placing the trigger socket's file at `socket_path` when the daemon binds it itself (without
//! systemd's socket activation), so that no other local user can squat, redirect or widen it.
//!
//! - The directory is opened once and checked on its descriptor: owned by root or this user,
//!   and writable by neither group nor others (sticky or not: in a sticky directory others may
//!   still take the name before us). Every later name is resolved relative to it.
//! - What is already at the name is replaced only when it is a socket that refuses
//!   connections (a stale socket from a crash); anything else stops the start.
//! - The socket is bound in a private directory (mode 0700) made for it; its mode and group are
//!   set there, then it is renamed into place with `RENAME_NOREPLACE` (Linux renameat2(2)), so
//!   the name never shows a socket with other permissions and no `chmod`/`chown` follows a link.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use tokio::net::UnixListener;

/// The socket file's mode: owner and group may connect (unix(7): connecting needs write
/// permission on the socket).
const SOCKET_MODE: u32 = 0o660;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SocketFileError {
    #[error("another vamsa-migrate daemon is already listening on {0}")]
    InUse(PathBuf),
    #[error("{path} exists and is {what}, not a stale socket; vamsa-migrate replaces only a socket that refuses connections: remove it or choose another socket_path")]
    NotASocket { path: PathBuf, what: &'static str },
    #[error("socket directory {dir} is {problem}: other users could take or replace the socket there; fix: {fix}")]
    UnsafeDir {
        dir: PathBuf,
        problem: String,
        fix: String,
    },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Binds a listening socket at `path` (mode 0660, group `gid` when given) as described in the
/// module's documentation.
pub(crate) fn bind(path: &Path, gid: Option<u32>) -> Result<UnixListener, SocketFileError> {
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source: io::Error| SocketFileError::Io { path: p, source }
    };
    let (dir_path, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) if !d.as_os_str().is_empty() => (d, n),
        _ => {
            let source = io::Error::new(io::ErrorKind::InvalidInput, "not an absolute file path");
            return Err(io_err(path)(source));
        }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir_path)
        .map_err(io_err(dir_path))?;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let dir =
        rustix::fs::open(dir_path, flags, Mode::empty()).map_err(|e| io_err(dir_path)(e.into()))?;
    check_dir(dir_path, &dir)?;
    replace_stale(&dir, path, name)?;
    let private = tempfile::Builder::new()
        .prefix(".vamsa-migrate-")
        .tempdir_in(dir_path)
        .map_err(io_err(dir_path))?;
    let private_dir = open_private(private.path()).map_err(io_err(private.path()))?;
    // Bound through the descriptor's /proc link: the short path fits sun_path (108 bytes)
    // whatever the directory's length, and it cannot be redirected.
    let inside = PathBuf::from(format!("/proc/self/fd/{}", private_dir.as_raw_fd())).join(name);
    let std_listener =
        std::os::unix::net::UnixListener::bind(&inside).map_err(io_err(private.path()))?;
    let set_up = || -> rustix::io::Result<()> {
        rustix::fs::chmodat(
            &private_dir,
            name,
            Mode::from_raw_mode(SOCKET_MODE),
            AtFlags::empty(),
        )?;
        if let Some(gid) = gid {
            let gid = Some(rustix::fs::Gid::from_raw(gid));
            rustix::fs::chownat(&private_dir, name, None, gid, AtFlags::SYMLINK_NOFOLLOW)?;
        }
        rustix::fs::renameat_with(&private_dir, name, &dir, name, RenameFlags::NOREPLACE)
    };
    match set_up() {
        Ok(()) => {}
        Err(rustix::io::Errno::EXIST) => return Err(SocketFileError::InUse(path.to_path_buf())),
        Err(e) => return Err(io_err(path)(e.into())),
    }
    std_listener.set_nonblocking(true).map_err(io_err(path))?;
    UnixListener::from_std(std_listener).map_err(io_err(path))
}

/// Refuses a directory owned by a user other than this one or root, or one that group or
/// others may write to.
fn check_dir(path: &Path, dir: &OwnedFd) -> Result<(), SocketFileError> {
    let stat = rustix::fs::fstat(dir).map_err(|e| SocketFileError::Io {
        path: path.to_path_buf(),
        source: e.into(),
    })?;
    let me = rustix::process::geteuid().as_raw();
    let shown = path.display();
    let refuse = |problem: String, fix: String| SocketFileError::UnsafeDir {
        dir: path.to_path_buf(),
        problem,
        fix,
    };
    if stat.st_uid != me && stat.st_uid != 0 {
        return Err(refuse(
            format!("owned by uid {}, neither this user (uid {me}) nor root", stat.st_uid),
            format!("`chown {me} {shown}` and `chmod 755 {shown}`, or a socket_path in a directory of this user"),
        ));
    }
    if stat.st_mode & 0o022 != 0 {
        return Err(refuse(
            format!("writable by other users (mode {:o})", stat.st_mode & 0o7777),
            format!("`chmod go-w {shown}`, or a socket_path in a directory only this user may write (such as /run/vamsa-migrate)"),
        ));
    }
    Ok(())
}

/// Removes what is at `name` when it is a stale socket; errors for a live one or anything
/// else.
fn replace_stale(
    dir: &OwnedFd,
    path: &Path,
    name: &std::ffi::OsStr,
) -> Result<(), SocketFileError> {
    let io_err = |source: io::Error| SocketFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(io_err(e.into())),
    };
    let what = match FileType::from_raw_mode(stat.st_mode) {
        FileType::Socket => None,
        FileType::RegularFile => Some("a regular file"),
        FileType::Directory => Some("a directory"),
        FileType::Symlink => Some("a symbolic link"),
        FileType::Fifo => Some("a FIFO"),
        _ => Some("a device or other special file"),
    };
    if let Some(what) = what {
        return Err(SocketFileError::NotASocket {
            path: path.to_path_buf(),
            what,
        });
    }
    // A live daemon answers; a stale socket from a crash refuses and can go. The directory is
    // ours alone (checked above), so the name still holds the socket just examined.
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(SocketFileError::InUse(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(|e| io_err(e.into()))
        }
        Err(e) => Err(io_err(e)),
    }
}

/// Opens the private directory `tempfile` just made (mode 0700), refusing a link put in its
/// place.
fn open_private(path: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::open(path, flags, Mode::empty())?)
}
