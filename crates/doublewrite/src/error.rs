//! Errors. Every variant has a stable [`Error::code`] (the JS `error.code`) and a message
//! that says what failed, where, and what to do.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::record::RecordError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A record could not be built or decoded.
    Record(RecordError),
    /// An I/O call failed. `action` says what the core was doing.
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The device is full. Nothing partial was acknowledged; the WAL stays usable.
    NoSpace { action: &'static str, path: PathBuf },
    /// Direct I/O was asked for where the platform or file system cannot do it.
    DirectIoUnsupported { path: PathBuf, detail: String },
    /// A double-write buffer was opened with mode `Off`.
    DwbOff,
    /// The DWB file header is damaged or the file is not a DWB.
    DwbCorrupt { path: PathBuf, detail: String },
    /// Options conflict with the geometry stored in an existing DWB file.
    DwbGeometryMismatch { path: PathBuf, detail: String },
    /// An option is out of range or options contradict each other.
    InvalidOptions { detail: String },
    /// The path names a directory where a file was expected (or the reverse).
    WrongFileKind { path: PathBuf, detail: &'static str },
    /// Acknowledged records cannot be recovered: damage the DWB cannot repair is
    /// followed by records of later commits, or a segment is missing.
    WalCorrupt {
        path: PathBuf,
        offset: u64,
        lsn: u64,
        detail: String,
    },
    /// A sync failed earlier; nothing is acknowledged until the WAL is reopened.
    WalPoisoned { detail: String },
    /// Another handle (this process or another) holds the WAL directory's lock.
    Locked { path: PathBuf },
    /// The handle was closed.
    Closed { what: &'static str },
    /// Replay met a required record type the reader does not know.
    UnknownRequiredRecordType { record_type: u32, lsn: u64 },
    /// A record is encrypted with a key the key ring does not hold.
    KeyMissing { key_id: u16, lsn: u64 },
    /// An encrypted record's tag does not verify under the key with its id.
    DecryptFailed { key_id: u16, lsn: u64 },
    /// Strict protection: the DWB could not make the at-risk records durable, so the
    /// commit was refused before any WAL byte was written.
    DwbUnavailable { path: PathBuf, detail: String },
}

impl Error {
    /// The stable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Record(e) => e.code(),
            Error::Io { .. } => "ERR_IO",
            Error::NoSpace { .. } => "ERR_NO_SPACE",
            Error::DirectIoUnsupported { .. } => "ERR_DIRECT_IO_UNSUPPORTED",
            Error::DwbOff => "ERR_DWB_OFF",
            Error::DwbCorrupt { .. } => "ERR_DWB_CORRUPT",
            Error::DwbGeometryMismatch { .. } => "ERR_DWB_GEOMETRY",
            Error::InvalidOptions { .. } => "ERR_INVALID_OPTIONS",
            Error::WrongFileKind { .. } => "ERR_PATH_IS_DIRECTORY",
            Error::WalCorrupt { .. } => "ERR_WAL_CORRUPT",
            Error::WalPoisoned { .. } => "ERR_WAL_POISONED",
            Error::Locked { .. } => "ERR_LOCKED",
            Error::Closed {
                what: "double-write buffer",
            } => "ERR_DWB_CLOSED",
            Error::Closed { .. } => "ERR_WAL_CLOSED",
            Error::UnknownRequiredRecordType { .. } => "ERR_WAL_UNKNOWN_RECORD_TYPE",
            Error::DwbUnavailable { .. } => "ERR_DWB_UNAVAILABLE",
            Error::KeyMissing { .. } => "ERR_WAL_KEY_MISSING",
            Error::DecryptFailed { .. } => "ERR_WAL_DECRYPT",
        }
    }

    /// The error of any call on a double-write buffer handle after `close()`.
    pub fn dwb_closed() -> Error {
        Error::Closed {
            what: "double-write buffer",
        }
    }

    /// The error of any call on a WAL handle after `close()`.
    pub fn wal_closed() -> Error {
        Error::Closed { what: "WAL" }
    }

    /// Wraps an I/O error, recognising the cases that have their own variant.
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        let path = path.into();
        if crate::io::is_no_space(&source) {
            return Error::NoSpace { action, path };
        }
        if source.kind() == io::ErrorKind::IsADirectory {
            return Error::WrongFileKind {
                path,
                detail: "is a directory, not a file",
            };
        }
        Error::Io {
            action,
            path,
            source,
        }
    }
}

impl Clone for Error {
    /// One failed commit rejects every caller in it, each with its own copy of the error.
    /// An I/O error is copied as its kind and message.
    fn clone(&self) -> Error {
        match self {
            Error::Record(e) => Error::Record(e.clone()),
            Error::Io {
                action,
                path,
                source,
            } => Error::Io {
                action,
                path: path.clone(),
                source: match source.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(source.kind(), source.to_string()),
                },
            },
            Error::NoSpace { action, path } => Error::NoSpace {
                action,
                path: path.clone(),
            },
            Error::DirectIoUnsupported { path, detail } => Error::DirectIoUnsupported {
                path: path.clone(),
                detail: detail.clone(),
            },
            Error::DwbOff => Error::DwbOff,
            Error::DwbCorrupt { path, detail } => Error::DwbCorrupt {
                path: path.clone(),
                detail: detail.clone(),
            },
            Error::DwbGeometryMismatch { path, detail } => Error::DwbGeometryMismatch {
                path: path.clone(),
                detail: detail.clone(),
            },
            Error::InvalidOptions { detail } => Error::InvalidOptions {
                detail: detail.clone(),
            },
            Error::WrongFileKind { path, detail } => Error::WrongFileKind {
                path: path.clone(),
                detail,
            },
            Error::WalCorrupt {
                path,
                offset,
                lsn,
                detail,
            } => Error::WalCorrupt {
                path: path.clone(),
                offset: *offset,
                lsn: *lsn,
                detail: detail.clone(),
            },
            Error::WalPoisoned { detail } => Error::WalPoisoned {
                detail: detail.clone(),
            },
            Error::Locked { path } => Error::Locked { path: path.clone() },
            Error::Closed { what } => Error::Closed { what },
            Error::UnknownRequiredRecordType { record_type, lsn } => {
                Error::UnknownRequiredRecordType {
                    record_type: *record_type,
                    lsn: *lsn,
                }
            }
            Error::DwbUnavailable { path, detail } => Error::DwbUnavailable {
                path: path.clone(),
                detail: detail.clone(),
            },
            Error::KeyMissing { key_id, lsn } => Error::KeyMissing {
                key_id: *key_id,
                lsn: *lsn,
            },
            Error::DecryptFailed { key_id, lsn } => Error::DecryptFailed {
                key_id: *key_id,
                lsn: *lsn,
            },
        }
    }
}

impl From<RecordError> for Error {
    fn from(e: RecordError) -> Error {
        Error::Record(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Record(e) => e.fmt(f),
            Error::Io {
                action,
                path,
                source,
            } => write!(f, "{action} {} failed: {source}", path.display()),
            Error::NoSpace { action, path } => write!(
                f,
                "no space left on the device while trying to {action} {}: nothing was acknowledged; free space and retry",
                path.display()
            ),
            Error::DirectIoUnsupported { path, detail } => write!(
                f,
                "direct I/O is not available for {}: {detail}; open it in buffered mode instead",
                path.display()
            ),
            Error::DwbOff => write!(
                f,
                "a double-write buffer cannot be opened in mode 'off': use 'buffered' or 'direct', or do not open one"
            ),
            Error::DwbCorrupt { path, detail } => write!(
                f,
                "{} is not a usable double-write buffer: {detail}; move it aside (it holds only copies) and open again",
                path.display()
            ),
            Error::DwbGeometryMismatch { path, detail } => write!(
                f,
                "{} was created with a different geometry: {detail}; omit the option to use the file's own",
                path.display()
            ),
            Error::InvalidOptions { detail } => write!(f, "invalid options: {detail}"),
            Error::WrongFileKind { path, detail } => write!(f, "{} {detail}", path.display()),
            Error::WalCorrupt {
                path,
                offset,
                lsn,
                detail,
            } => write!(
                f,
                "WAL is corrupt at {} offset {offset} (record LSN {lsn}): {detail}; acknowledged records would be lost, so recovery stopped without changing anything",
                path.display()
            ),
            Error::WalPoisoned { detail } => write!(
                f,
                "the WAL refuses writes after a failed sync ({detail}); close and reopen it so recovery can decide what survived"
            ),
            Error::Locked { path } => write!(
                f,
                "{} is locked by another open WAL (in this or another process or worker); close that one first",
                path.display()
            ),
            Error::Closed { what } => write!(f, "the {what} is closed"),
            Error::UnknownRequiredRecordType { record_type, lsn } => write!(
                f,
                "record LSN {lsn} has required type {record_type:#x} that this reader does not know; add it to knownTypes or upgrade the reader"
            ),
            Error::KeyMissing { key_id, lsn } => write!(
                f,
                "record LSN {lsn} is encrypted with key id {key_id}, which is not among the keys given; add it to encryption.keys"
            ),
            Error::DecryptFailed { key_id, lsn } => write!(
                f,
                "record LSN {lsn} does not decrypt under key id {key_id}: the key is not the one it was written with, or the record was altered"
            ),
            Error::DwbUnavailable { path, detail } => write!(
                f,
                "the double-write buffer {} could not protect this commit ({detail}); nothing was written to the WAL. Strict protection refuses to acknowledge unprotected records; use protection 'degraded' to accept them",
                path.display()
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Record(e) => Some(e),
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
