//! Reading the small files a configuration names (the config file, `database_password_file`,
//! libpq's password, service and TLS files): a regular file of at most [`LIMIT`] bytes. A FIFO
//! would block the read forever (also past SIGTERM: the signal waits on the runtime this read
//! blocks) and `/dev/zero` never ends, so neither is read at all.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The most a configuration's file may hold: 1 MiB.
pub(crate) const LIMIT: u64 = 1 << 20;

/// Why a file the configuration names is not read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SmallFileError {
    /// After following symlinks, the path is a FIFO, socket, device or directory.
    #[error("it is a {kind}, not a regular file")]
    NotRegular { kind: &'static str },
    #[error("it holds more than {LIMIT} bytes (1 MiB), too much for a configuration file")]
    TooLarge,
}

/// The bytes of the regular file at `path` (symlinks followed, as the user gave it). Errors:
/// the open/read error, or an `io::Error` of kind `InvalidInput` wrapping [`SmallFileError`].
pub(crate) fn read(path: &Path) -> io::Result<Vec<u8>> {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer (open(2)).
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        let kind = if kind.is_dir() {
            "directory"
        } else if kind.is_fifo() {
            "FIFO (named pipe)"
        } else if kind.is_socket() {
            "socket"
        } else if kind.is_char_device() {
            "character device"
        } else if kind.is_block_device() {
            "block device"
        } else {
            "special file"
        };
        return Err(refused(SmallFileError::NotRegular { kind }));
    }
    let mut bytes = Vec::new();
    file.take(LIMIT + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > LIMIT {
        return Err(refused(SmallFileError::TooLarge));
    }
    Ok(bytes)
}

/// [`read`] as UTF-8 text.
pub(crate) fn read_to_string(path: &Path) -> io::Result<String> {
    String::from_utf8(read(path)?).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn refused(e: SmallFileError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}
