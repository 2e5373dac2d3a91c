//! `doublewrite-node`: the napi-rs binding of the `doublewrite` core crate.
//!
//! A thin layer only: conversions, classes, `AsyncTask`s and one error-conversion path.
//! Each file mirrors a section of `index.ts`:
//!
//! - [`error`]: `[ERR_CODE] message` errors (the TS layer turns them into coded errors).
//! - [`record`]: `NativeWalRecord` and the record-type constants.
//! - [`dwb`]: `NativeDoubleWriteBuffer`, `dwbBytesWrittenTotal`.
//! - [`wal`]: `NativeWal` (group commit through one threadsafe function) and `NativeReplay`.
//!
//! **Invariant:** no logic beyond conversion lives here; every decision is the core's.
//! **Invariant:** no JS value is backed by Rust-owned memory (Electron forbids it).

#![expect(
    missing_debug_implementations,
    reason = "napi classes, option objects and tasks hold JS handles or core handles; they are never printed"
)]

mod bench;
pub mod dwb;
pub mod error;
pub mod record;
pub mod tools;
#[cfg(target_os = "linux")]
mod uv;
#[cfg(not(target_os = "linux"))]
#[path = "uv_none.rs"]
mod uv;
pub mod wal;
