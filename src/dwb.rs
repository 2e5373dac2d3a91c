//! The double-write buffer (mirrors the `dwb` section of `index.ts`).
//!
//! Every blocking call has an `AsyncTask` twin that runs on the libuv pool; the `*Sync`
//! methods run on the JS thread because the caller asked for it.

use std::sync::{Arc, Mutex, MutexGuard};

use doublewrite::{DoubleWriteBuffer, DwbMirror, DwbMode, DwbOptions, SkipReason, WalRecord};
use napi::bindgen_prelude::{AsyncTask, BigInt};
use napi::{Env, Result, Task};
use napi_derive::napi;

use crate::error::{coded, u64_from_bigint, IntoNapi, ERR_INVALID_ARG_VALUE};
use crate::record::NativeWalRecord;

/// Options of `NativeDoubleWriteBuffer.open`.
#[napi(object)]
pub struct DwbOpenOptions {
    /// `'buffered'` or `'direct'` (`'off'` is refused by the core with `ERR_DWB_OFF`).
    pub mode: String,
    /// Slots in the ring, when the file is created.
    pub capacity: Option<u32>,
    /// Largest encoded record (header + payload) a slot holds, when the file is created.
    pub max_record_size: Option<u32>,
}

/// What staging a copy did.
#[napi(object)]
pub struct MirrorOutcome {
    pub mirrored: bool,
    /// `'too-large'` when not mirrored.
    pub reason: Option<String>,
    /// Encoded size of the refused record, in bytes.
    pub size: Option<f64>,
    /// Largest encoded record the buffer holds, in bytes.
    pub max: Option<f64>,
}

impl From<DwbMirror> for MirrorOutcome {
    fn from(mirror: DwbMirror) -> MirrorOutcome {
        match mirror {
            DwbMirror::Mirrored => MirrorOutcome {
                mirrored: true,
                reason: None,
                size: None,
                max: None,
            },
            DwbMirror::Skipped(SkipReason::TooLarge {
                size_bytes,
                max_bytes,
            }) => MirrorOutcome {
                mirrored: false,
                reason: Some("too-large".into()),
                size: Some(size_bytes as f64),
                max: Some(max_bytes as f64),
            },
        }
    }
}

pub(crate) fn parse_mode(mode: &str) -> Result<DwbMode> {
    DwbMode::parse(mode).ok_or_else(|| {
        coded(
            ERR_INVALID_ARG_VALUE,
            format!("unknown DWB mode {mode:?}: use 'off', 'buffered' or 'direct'"),
        )
    })
}

fn dwb_options(options: &DwbOpenOptions) -> Result<DwbOptions> {
    Ok(DwbOptions {
        mode: parse_mode(&options.mode)?,
        capacity: options.capacity,
        max_record_bytes: options.max_record_size,
    })
}

/// The mode that matches a parent WAL: `'direct'` if it uses direct I/O, else `'buffered'`.
#[napi]
pub fn dwb_mode_default_for_parent(parent_uses_direct_io: bool) -> String {
    DwbMode::default_for_parent(parent_uses_direct_io)
        .as_str()
        .to_string()
}

/// Bytes written to DWB files by this process, all buffers and all worker threads.
#[napi]
pub fn dwb_bytes_written_total() -> u64 {
    doublewrite::dwb_bytes_written_total()
}

/// Every method takes `&self`: napi-rs keeps a method's borrow of the object until an
/// `AsyncTask` it returned settles, so a `&mut self` `close()` would collide with a flush
/// in flight. The handle lives behind a mutex instead and each call clones the `Arc`.
#[napi]
pub struct NativeDoubleWriteBuffer {
    inner: Mutex<Option<Arc<DoubleWriteBuffer>>>,
}

impl NativeDoubleWriteBuffer {
    fn new(dwb: DoubleWriteBuffer) -> NativeDoubleWriteBuffer {
        NativeDoubleWriteBuffer {
            inner: Mutex::new(Some(Arc::new(dwb))),
        }
    }

    fn slot(&self) -> MutexGuard<'_, Option<Arc<DoubleWriteBuffer>>> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn inner(&self) -> Result<Arc<DoubleWriteBuffer>> {
        self.slot().clone().ok_or_else(|| {
            crate::error::to_napi_error(doublewrite::Error::Closed {
                what: "double-write buffer",
            })
        })
    }
}

#[napi]
impl NativeDoubleWriteBuffer {
    /// Opens or creates the buffer on the JS thread.
    #[napi(factory)]
    pub fn open_sync(path: String, options: DwbOpenOptions) -> Result<NativeDoubleWriteBuffer> {
        let dwb = DoubleWriteBuffer::open(path, dwb_options(&options)?).into_napi()?;
        Ok(NativeDoubleWriteBuffer::new(dwb))
    }

    /// Opens or creates the buffer on the libuv pool.
    #[napi(ts_return_type = "Promise<NativeDoubleWriteBuffer>")]
    pub fn open(path: String, options: DwbOpenOptions) -> Result<AsyncTask<OpenDwb>> {
        Ok(AsyncTask::new(OpenDwb {
            path,
            options: dwb_options(&options)?,
        }))
    }

    #[napi]
    pub fn write_record_deferred(&self, record: &NativeWalRecord) -> Result<MirrorOutcome> {
        let mirror = self
            .inner()?
            .write_record_deferred(&record.inner)
            .into_napi()?;
        Ok(mirror.into())
    }

    /// Stages and flushes one copy on the libuv pool.
    #[napi(ts_return_type = "Promise<MirrorOutcome>")]
    pub fn write_record(&self, record: &NativeWalRecord) -> Result<AsyncTask<WriteRecord>> {
        Ok(AsyncTask::new(WriteRecord {
            dwb: self.inner()?,
            record: record.inner.clone(),
        }))
    }

    #[napi]
    pub fn write_record_sync(&self, record: &NativeWalRecord) -> Result<MirrorOutcome> {
        let mirror = self.inner()?.write_record(&record.inner).into_napi()?;
        Ok(mirror.into())
    }

    /// Writes the staged copies and syncs them, on the libuv pool.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn flush(&self) -> Result<AsyncTask<Flush>> {
        Ok(AsyncTask::new(Flush { dwb: self.inner()? }))
    }

    #[napi]
    pub fn flush_sync(&self) -> Result<()> {
        self.inner()?.flush().into_napi()
    }

    /// The newest valid copy of `lsn` (or null), read on the libuv pool.
    #[napi(ts_return_type = "Promise<NativeWalRecord | null>")]
    pub fn recover_record(&self, lsn: BigInt) -> Result<AsyncTask<RecoverRecord>> {
        Ok(AsyncTask::new(RecoverRecord {
            dwb: self.inner()?,
            lsn: u64_from_bigint("lsn", &lsn)?,
        }))
    }

    #[napi]
    pub fn recover_record_sync(&self, lsn: BigInt) -> Result<Option<NativeWalRecord>> {
        let lsn = u64_from_bigint("lsn", &lsn)?;
        let record = self.inner()?.recover_record(lsn).into_napi()?;
        Ok(record.map(NativeWalRecord::new))
    }

    #[napi(getter)]
    pub fn mode(&self) -> Result<String> {
        Ok(self.inner()?.mode().as_str().to_string())
    }

    #[napi(getter)]
    pub fn path(&self) -> Result<String> {
        Ok(self.inner()?.path().to_string_lossy().into_owned())
    }

    #[napi(getter)]
    pub fn capacity(&self) -> Result<u32> {
        Ok(self.inner()?.capacity())
    }

    #[napi(getter)]
    pub fn slot_stride(&self) -> Result<u32> {
        Ok(self.inner()?.slot_stride())
    }

    #[napi(getter)]
    pub fn max_record_size(&self) -> Result<u32> {
        Ok(self.inner()?.max_record_bytes())
    }

    #[napi(getter)]
    pub fn skipped_records(&self) -> Result<u64> {
        Ok(self.inner()?.skipped_records())
    }

    #[napi(getter)]
    pub fn bytes_written(&self) -> Result<u64> {
        Ok(self.inner()?.bytes_written())
    }

    #[napi(getter)]
    pub fn pending_records(&self) -> Result<u32> {
        Ok(self.inner()?.pending_records() as u32)
    }

    /// Releases the handle. Operations already running on the pool finish first (they
    /// hold their own reference); every later call fails with `ERR_DWB_CLOSED`.
    #[napi]
    pub fn close(&self) {
        self.slot().take();
    }

    #[napi]
    pub fn is_open(&self) -> bool {
        self.slot().is_some()
    }
}

pub struct OpenDwb {
    path: String,
    options: DwbOptions,
}

impl Task for OpenDwb {
    type Output = DoubleWriteBuffer;
    type JsValue = NativeDoubleWriteBuffer;

    fn compute(&mut self) -> Result<DoubleWriteBuffer> {
        DoubleWriteBuffer::open(&self.path, self.options).into_napi()
    }

    fn resolve(&mut self, _env: Env, dwb: DoubleWriteBuffer) -> Result<NativeDoubleWriteBuffer> {
        Ok(NativeDoubleWriteBuffer::new(dwb))
    }
}

pub struct WriteRecord {
    dwb: Arc<DoubleWriteBuffer>,
    record: WalRecord,
}

impl Task for WriteRecord {
    type Output = DwbMirror;
    type JsValue = MirrorOutcome;

    fn compute(&mut self) -> Result<DwbMirror> {
        self.dwb.write_record(&self.record).into_napi()
    }

    fn resolve(&mut self, _env: Env, mirror: DwbMirror) -> Result<MirrorOutcome> {
        Ok(mirror.into())
    }
}

pub struct Flush {
    dwb: Arc<DoubleWriteBuffer>,
}

impl Task for Flush {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> Result<()> {
        self.dwb.flush().into_napi()
    }

    fn resolve(&mut self, _env: Env, _output: ()) -> Result<()> {
        Ok(())
    }
}

pub struct RecoverRecord {
    dwb: Arc<DoubleWriteBuffer>,
    lsn: u64,
}

impl Task for RecoverRecord {
    type Output = Option<WalRecord>;
    type JsValue = Option<NativeWalRecord>;

    fn compute(&mut self) -> Result<Option<WalRecord>> {
        self.dwb.recover_record(self.lsn).into_napi()
    }

    fn resolve(&mut self, _env: Env, record: Option<WalRecord>) -> Result<Option<NativeWalRecord>> {
        Ok(record.map(NativeWalRecord::new))
    }
}
