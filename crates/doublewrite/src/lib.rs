//! # doublewrite
//!
//! Torn-write protection for write-ahead logs: a double-write buffer (DWB) and the WAL
//! write and crash-recovery path around it. See `ARCHITECTURE.md` for the map and
//! `docs/FORMAT.md` for every on-disk byte and the fault model.
//!
//! - [`record`]: the WAL record format.
//! - [`dwb`]: the double-write buffer.
//! - [`wal`]: the write-ahead log around it: group commit, recovery, replay.
//! - [`io`]: the only place that touches files; [`io::sim`] is the simulated disk.
#![deny(unsafe_code)]

pub mod align;
pub mod crypto;
pub mod dwb;
mod error;
pub mod io;
pub mod record;
pub mod wal;

pub use crypto::{EncryptionKey, KeyRing};
pub use dwb::{
    dwb_bytes_written_total, DoubleWriteBuffer, DwbMirror, DwbMode, DwbOptions, Geometry,
    SkipReason,
};
pub use error::{Error, Result};
pub use record::{RecordError, RecordHeader, RecordType, WalRecord};
pub use wal::{
    Payload, Protection, ProtectionState, ProtectionStatus, RecordInput, RecoveryReport, Replay,
    TailProtection, Wal, WalOptions, WalStats,
};
