//! Read-only tools behind the `doublewrite` command line (mirrors `cli/inspect.ts` and
//! `cli/verify.ts`): inspect a DWB file, verify a WAL directory.
//!
//! Both only read. `verifyWal` is the core's dry-run of recovery (`wal::verify`): it takes
//! the WAL's lock without creating anything and refuses with `ERR_LOCKED` while the WAL is
//! open. Progress is polled: the task counts segments into a [`NativeProgress`] the caller
//! created, and the caller reads it on its own timer (no threadsafe function, nothing that
//! could keep the event loop alive or call into a worker that is going away).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use doublewrite::io::{StdVfs, Vfs};
use doublewrite::wal::verify::{verify_with_progress, FrameCheck, VerifyReport};
use doublewrite::{DoubleWriteBuffer, Error};
use napi::bindgen_prelude::AsyncTask;
use napi::{Env, Result, Task};
use napi_derive::napi;

use crate::error::IntoNapi;

/// One copy found in a DWB ring.
#[napi(object, object_from_js = false)]
pub struct NativeFrameCheck {
    /// LSN of the record the copy holds (read from its header).
    pub lsn: u64,
    /// Frame sequence number: higher is newer.
    pub seq: u64,
    /// Offset of the frame in the ring (the ring starts one block into the file).
    pub ring_offset: f64,
    /// Bytes of the record copy (header + payload).
    pub record_len: u32,
    /// Whether the copy's record checksum verifies (its prefix always does).
    pub valid: bool,
}

impl From<&FrameCheck> for NativeFrameCheck {
    fn from(frame: &FrameCheck) -> NativeFrameCheck {
        NativeFrameCheck {
            lsn: frame.lsn,
            seq: frame.seq,
            ring_offset: frame.ring_offset as f64,
            record_len: frame.record_len,
            valid: frame.valid,
        }
    }
}

/// The fixed layout stored in a DWB file's header.
#[napi(object, object_from_js = false)]
pub struct NativeDwbGeometry {
    pub block_size: u32,
    pub slot_stride: u32,
    pub capacity: u32,
    pub max_record_size: u32,
    /// Offset of the ring in the file: one block.
    pub ring_offset: f64,
    /// Bytes the geometry needs: header block + ring.
    pub file_size: f64,
}

/// What `inspectDwb` read.
#[napi(object, object_from_js = false)]
pub struct NativeDwbInspection {
    pub path: String,
    pub geometry: NativeDwbGeometry,
    /// Every copy the open-time scan indexes, oldest first.
    pub frames: Vec<NativeFrameCheck>,
}

/// An error reported as data (inside a report) rather than thrown.
#[napi(object, object_from_js = false)]
pub struct NativeCodedError {
    pub code: String,
    pub message: String,
    /// Where the damage is, when the error says (`ERR_WAL_CORRUPT`).
    pub segment: Option<String>,
    pub offset: Option<f64>,
    pub lsn: Option<u64>,
}

impl From<&Error> for NativeCodedError {
    fn from(error: &Error) -> NativeCodedError {
        let napi_error = crate::error::to_napi_error(error.clone());
        // `to_napi_error` prefixes `[CODE] `; the code travels in its own field here.
        let message = napi_error
            .reason
            .strip_prefix(&format!("[{}] ", error.code()))
            .map_or_else(|| napi_error.reason.clone(), str::to_string);
        let (segment, offset, lsn) = match error {
            Error::WalCorrupt {
                path, offset, lsn, ..
            } => (Some(display(path)), Some(*offset as f64), Some(*lsn)),
            _ => (None, None, None),
        };
        NativeCodedError {
            code: error.code().to_string(),
            message,
            segment,
            offset,
            lsn,
        }
    }
}

/// A damaged record the DWB holds a valid copy of.
#[napi(object, object_from_js = false)]
pub struct NativeRepairable {
    pub segment: String,
    pub offset: f64,
    pub lsn: u64,
}

/// An interrupted commit at the end of the log, which recovery cuts off.
#[napi(object, object_from_js = false)]
pub struct NativeTornTail {
    pub segment: String,
    pub offset: f64,
    pub bytes: f64,
}

/// The DWB of a WAL directory: its copies, or why it could not be read.
#[napi(object, object_from_js = false)]
pub struct NativeDwbCheck {
    pub frames: Option<Vec<NativeFrameCheck>>,
    pub error: Option<NativeCodedError>,
}

/// What `verifyWal` found (see `doublewrite::wal::verify::VerifyReport`).
#[napi(object, object_from_js = false)]
pub struct NativeVerifyReport {
    pub dir: String,
    pub segments: Vec<String>,
    pub first_lsn: u64,
    /// Last LSN a recovery would keep (`0n` when none).
    pub last_lsn: u64,
    pub records: f64,
    pub repairable: Vec<NativeRepairable>,
    pub torn_tail: Option<NativeTornTail>,
    /// Why acknowledged records are lost: the error a recovery would fail with.
    pub lost: Option<NativeCodedError>,
    /// Absent when the directory has no DWB.
    pub dwb: Option<NativeDwbCheck>,
    /// `'clean'`, `'repairable'`, `'torn-tail'` or `'lost'`.
    pub verdict: String,
}

fn display(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

impl From<VerifyReport> for NativeVerifyReport {
    fn from(report: VerifyReport) -> NativeVerifyReport {
        let verdict = report.verdict().as_str().to_string();
        NativeVerifyReport {
            dir: display(&report.dir),
            segments: report.segments.iter().map(|s| display(s)).collect(),
            first_lsn: report.first_lsn,
            last_lsn: report.last_lsn,
            records: report.records as f64,
            repairable: report
                .repairable
                .iter()
                .map(|(segment, offset, lsn)| NativeRepairable {
                    segment: display(segment),
                    offset: *offset as f64,
                    lsn: *lsn,
                })
                .collect(),
            torn_tail: report
                .torn_tail
                .as_ref()
                .map(|(segment, offset, bytes)| NativeTornTail {
                    segment: display(segment),
                    offset: *offset as f64,
                    bytes: *bytes as f64,
                }),
            lost: report.lost.as_ref().map(NativeCodedError::from),
            dwb: report.dwb.as_ref().map(|dwb| match dwb {
                Ok(frames) => NativeDwbCheck {
                    frames: Some(frames.iter().map(NativeFrameCheck::from).collect()),
                    error: None,
                },
                Err(error) => NativeDwbCheck {
                    frames: None,
                    error: Some(error.into()),
                },
            }),
            verdict,
        }
    }
}

/// Progress of a verification: segments checked out of the total. The task writes it;
/// JavaScript polls the getters.
#[napi]
pub struct NativeProgress {
    counts: Arc<Counts>,
}

impl Default for NativeProgress {
    fn default() -> NativeProgress {
        NativeProgress::new()
    }
}

#[derive(Default)]
struct Counts {
    done: AtomicU64,
    total: AtomicU64,
}

#[napi]
impl NativeProgress {
    #[napi(constructor)]
    pub fn new() -> NativeProgress {
        NativeProgress {
            counts: Arc::new(Counts::default()),
        }
    }

    /// Segments checked so far.
    #[napi(getter)]
    pub fn done(&self) -> f64 {
        self.counts.done.load(Ordering::Relaxed) as f64
    }

    /// Segments to check (0 until the directory has been listed).
    #[napi(getter)]
    pub fn total(&self) -> f64 {
        self.counts.total.load(Ordering::Relaxed) as f64
    }
}

fn std_vfs() -> Arc<dyn Vfs> {
    Arc::new(StdVfs)
}

fn verify(dir: &Path, counts: Option<&Counts>) -> Result<NativeVerifyReport> {
    let report = verify_with_progress(std_vfs(), dir, &mut |done, total| {
        if let Some(counts) = counts {
            counts.total.store(total, Ordering::Relaxed);
            counts.done.store(done, Ordering::Relaxed);
        }
    })
    .into_napi()?;
    Ok(report.into())
}

fn inspect(path: &Path) -> Result<NativeDwbInspection> {
    let dwb = DoubleWriteBuffer::open_read_only(std_vfs(), path).into_napi()?;
    let geometry = dwb.geometry();
    let frames = dwb.check_frames().into_napi()?;
    Ok(NativeDwbInspection {
        path: display(path),
        geometry: NativeDwbGeometry {
            block_size: geometry.block_size_bytes,
            slot_stride: geometry.slot_stride_bytes,
            capacity: geometry.capacity,
            max_record_size: geometry.max_record_bytes,
            ring_offset: geometry.ring_offset_bytes() as f64,
            file_size: geometry.file_bytes() as f64,
        },
        frames: frames.iter().map(NativeFrameCheck::from).collect(),
    })
}

/// Verifies the WAL in `dir` without writing, on the libuv pool; `progress` (optional)
/// counts the segments checked.
#[napi(ts_return_type = "Promise<NativeVerifyReport>")]
pub fn verify_wal(dir: String, progress: Option<&NativeProgress>) -> AsyncTask<VerifyWal> {
    AsyncTask::new(VerifyWal {
        dir: PathBuf::from(dir),
        counts: progress.map(|p| p.counts.clone()),
    })
}

/// [`verify_wal`] on the JS thread.
#[napi]
pub fn verify_wal_sync(dir: String) -> Result<NativeVerifyReport> {
    verify(Path::new(&dir), None)
}

/// Reads a DWB file's geometry and checks every copy in it, read-only, on the libuv pool.
#[napi(ts_return_type = "Promise<NativeDwbInspection>")]
pub fn inspect_dwb(path: String) -> AsyncTask<InspectDwb> {
    AsyncTask::new(InspectDwb {
        path: PathBuf::from(path),
    })
}

/// [`inspect_dwb`] on the JS thread.
#[napi]
pub fn inspect_dwb_sync(path: String) -> Result<NativeDwbInspection> {
    inspect(Path::new(&path))
}

pub struct VerifyWal {
    dir: PathBuf,
    counts: Option<Arc<Counts>>,
}

impl Task for VerifyWal {
    type Output = NativeVerifyReport;
    type JsValue = NativeVerifyReport;

    fn compute(&mut self) -> Result<NativeVerifyReport> {
        verify(&self.dir, self.counts.as_deref())
    }

    fn resolve(&mut self, _env: Env, report: NativeVerifyReport) -> Result<NativeVerifyReport> {
        Ok(report)
    }
}

pub struct InspectDwb {
    path: PathBuf,
}

impl Task for InspectDwb {
    type Output = NativeDwbInspection;
    type JsValue = NativeDwbInspection;

    fn compute(&mut self) -> Result<NativeDwbInspection> {
        inspect(&self.path)
    }

    fn resolve(
        &mut self,
        _env: Env,
        inspection: NativeDwbInspection,
    ) -> Result<NativeDwbInspection> {
        Ok(inspection)
    }
}
