//! The write-ahead log (mirrors the `wal` section of `index.ts`).
//!
//! Appends never block the JS thread and never hold a libuv pool thread: `submit` hands
//! each caller's records to the core's commit thread (`Wal::submit_append`), and the
//! commit thread reports every outcome through ONE weak threadsafe function created at
//! open, as `(ticket, firstLsn, null)` or `(ticket, null, "[ERR_CODE] message")`. The
//! TS layer maps tickets back to promises and keeps the event loop alive while any are
//! outstanding (the threadsafe function itself never does).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use std::path::Path;

use doublewrite::crypto::KEY_BYTES;
use doublewrite::io::StdVfs;
use doublewrite::{
    DwbMode, KeyRing, Protection, RecordInput, Replay, TailProtection, Wal, WalOptions, WalRecord,
};
use napi::bindgen_prelude::{AsyncTask, BigInt, FnArgs, Function, Uint8Array};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, Result, Status, Task};
use napi_derive::napi;

use crate::dwb::parse_mode;
use crate::error::{
    coded, optional_u64, to_napi_error, u64_from_bigint, IntoNapi, ERR_INVALID_ARG_VALUE,
    ERR_OUT_OF_RANGE,
};
use crate::record::NativeWalRecord;

/// Options of `NativeWal.open`; absent fields take the core's defaults.
#[napi(object)]
pub struct WalOpenOptions {
    /// `'off'`, `'buffered'` or `'direct'`; default: `'direct'` with `directIo`, else `'buffered'`.
    pub dwb_mode: Option<String>,
    /// Open segments with O_DIRECT.
    pub direct_io: Option<bool>,
    /// Size of a new segment in bytes.
    pub segment_size: Option<f64>,
    /// DWB capacity (slots) when the DWB is created.
    pub dwb_capacity: Option<u32>,
    /// Largest encoded record the DWB holds, when it is created.
    pub dwb_max_record_size: Option<u32>,
    /// `'strict'` or `'degraded'`.
    pub protection: Option<String>,
    /// `'mirror'` or `'pad'`.
    pub tail_protection: Option<String>,
    /// Group commit merges queued appends up to this many payload bytes.
    pub max_commit_bytes: Option<f64>,
    /// Prepare the next segment in the background (default `true`).
    pub prepare_segments: Option<bool>,
    /// Encrypt records at rest.
    pub encryption: Option<NativeEncryption>,
}

/// One AES-256 key of the key ring.
#[napi(object)]
pub struct NativeEncryptionKey {
    /// 1 to 65535.
    pub id: u32,
    /// Exactly 32 bytes.
    pub key: Uint8Array,
}

/// The key ring: records are written with `activeKeyId` and read with any key.
#[napi(object)]
pub struct NativeEncryption {
    pub keys: Vec<NativeEncryptionKey>,
    pub active_key_id: u32,
}

/// Copies the keys out of the JS arrays into a ring whose memory is wiped on drop.
fn key_ring(encryption: &Option<NativeEncryption>) -> Result<Option<KeyRing>> {
    let Some(encryption) = encryption else {
        return Ok(None);
    };
    let mut keys = Vec::with_capacity(encryption.keys.len());
    for entry in &encryption.keys {
        let id = u16::try_from(entry.id).ok().filter(|id| *id != 0).ok_or_else(|| {
            coded(
                ERR_OUT_OF_RANGE,
                format!("key id {} is outside 1..=65535", entry.id),
            )
        })?;
        let bytes: [u8; KEY_BYTES] = entry.key.as_ref().try_into().map_err(|_| {
            coded(
                ERR_INVALID_ARG_VALUE,
                format!(
                    "key {id} is {} bytes; an AES-256 key is exactly {KEY_BYTES}",
                    entry.key.len()
                ),
            )
        })?;
        keys.push((id, bytes));
    }
    let active = u16::try_from(encryption.active_key_id).unwrap_or(0);
    KeyRing::new(keys, active).map(Some).into_napi()
}

/// One record to append.
#[napi(object)]
pub struct NativeRecordInput {
    pub record_type: u32,
    pub payload: Uint8Array,
    pub tenant_id: Option<BigInt>,
    pub vshard_id: Option<u32>,
    pub database_id: Option<BigInt>,
}

/// The records of one caller: they get consecutive LSNs in one commit and one outcome.
#[napi(object)]
pub struct NativeAppendJob {
    pub ticket: u32,
    pub records: Vec<NativeRecordInput>,
}

#[napi(object)]
pub struct NativeRecoveryReport {
    pub first_lsn: BigInt,
    pub last_lsn: BigInt,
    pub records: f64,
    pub segments: f64,
    pub repaired_from_dwb: f64,
    pub torn_tail_bytes: f64,
    pub duration_ms: f64,
}

#[napi(object)]
pub struct NativeWalStats {
    pub commits: BigInt,
    pub records: BigInt,
    pub wal_bytes_written: BigInt,
    pub dwb_bytes_written: BigInt,
    pub wal_syncs: BigInt,
    pub dwb_syncs: BigInt,
    pub padding_bytes: BigInt,
    pub segment_rolls: BigInt,
    pub unprotected_records: BigInt,
}

#[napi(object)]
pub struct NativeProtectionStatus {
    pub policy: String,
    pub tail_protection: String,
    pub state: String,
    pub unprotected_records: BigInt,
}

/// What the commit thread reports for one ticket: the first LSN or an encoded error.
pub struct Completion {
    ticket: u32,
    outcome: std::result::Result<u64, String>,
}

type CompletionArgs = FnArgs<(u32, Option<u64>, Option<String>)>;
type CompletionFn = ThreadsafeFunction<Completion, (), CompletionArgs, Status, false, true>;

fn deliver(completions: &CompletionFn, ticket: u32, outcome: std::result::Result<u64, String>) {
    // Non-blocking on an unbounded queue never waits. It fails only when the JS
    // environment is shutting down, and then nobody is left to tell.
    let _ = completions.call(
        Completion { ticket, outcome },
        ThreadsafeFunctionCallMode::NonBlocking,
    );
}

fn size_option(name: &str, value: Option<f64>) -> Result<Option<u64>> {
    match value {
        None => Ok(None),
        Some(v) if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= 2f64.powi(53) => {
            Ok(Some(v as u64))
        }
        Some(v) => Err(coded(
            ERR_OUT_OF_RANGE,
            format!("\"{name}\" must be a non-negative safe integer, got {v}"),
        )),
    }
}

fn wal_options(options: &WalOpenOptions) -> Result<(WalOptions, Option<KeyRing>)> {
    let defaults = WalOptions::default();
    let direct_io = options.direct_io.unwrap_or(false);
    let dwb_mode = match &options.dwb_mode {
        Some(mode) => parse_mode(mode)?,
        None => DwbMode::default_for_parent(direct_io),
    };
    let protection = match &options.protection {
        Some(text) => Protection::parse(text).ok_or_else(|| {
            coded(
                ERR_INVALID_ARG_VALUE,
                format!("unknown protection {text:?}: use 'strict' or 'degraded'"),
            )
        })?,
        None => defaults.protection,
    };
    let tail_protection = match &options.tail_protection {
        Some(text) => TailProtection::parse(text).ok_or_else(|| {
            coded(
                ERR_INVALID_ARG_VALUE,
                format!("unknown tailProtection {text:?}: use 'mirror' or 'pad'"),
            )
        })?,
        None => defaults.tail_protection,
    };
    let keys = key_ring(&options.encryption)?;
    let options = WalOptions {
        dwb_mode,
        direct_io,
        segment_size_bytes: size_option("segmentSize", options.segment_size)?
            .unwrap_or(defaults.segment_size_bytes),
        dwb_capacity: options.dwb_capacity,
        dwb_max_record_bytes: options.dwb_max_record_size,
        protection,
        tail_protection,
        max_commit_bytes: size_option("maxCommitBytes", options.max_commit_bytes)?
            .unwrap_or(defaults.max_commit_bytes),
        // Rolls should not stall a commit behind a segment's preallocation.
        prepare_segments: options.prepare_segments.unwrap_or(true),
        ..defaults
    };
    Ok((options, keys))
}

fn record_inputs(records: Vec<NativeRecordInput>) -> Result<Vec<RecordInput>> {
    records
        .into_iter()
        .map(|r| {
            Ok(RecordInput {
                record_type: r.record_type,
                payload: r.payload.to_vec(),
                tenant_id: optional_u64("tenantId", &r.tenant_id)?,
                vshard_id: r.vshard_id.unwrap_or(0),
                database_id: optional_u64("databaseId", &r.database_id)?,
            })
        })
        .collect()
}

fn known_types(extra: Option<Vec<u32>>) -> Option<BTreeSet<u32>> {
    extra.map(|extra| {
        doublewrite::RecordType::BUILT_IN
            .into_iter()
            .chain(extra)
            .collect()
    })
}

struct OpenState {
    wal: Arc<Wal>,
    completions: Arc<CompletionFn>,
}

/// Every method takes `&self`: napi-rs keeps a method's borrow of the object until an
/// `AsyncTask` it returned settles, so a `&mut self` `close()` would collide with a sync
/// or replay in flight. The handle lives behind a mutex instead; calls clone the `Arc`.
#[napi]
pub struct NativeWal {
    state: Mutex<Option<OpenState>>,
}

fn closed() -> napi::Error {
    to_napi_error(doublewrite::Error::Closed { what: "WAL" })
}

impl NativeWal {
    fn slot(&self) -> MutexGuard<'_, Option<OpenState>> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn inner(&self) -> Result<Arc<Wal>> {
        self.slot()
            .as_ref()
            .map(|state| state.wal.clone())
            .ok_or_else(closed)
    }

    fn from_wal(wal: Wal, completions: CompletionFn) -> NativeWal {
        NativeWal {
            state: Mutex::new(Some(OpenState {
                wal: Arc::new(wal),
                completions: Arc::new(completions),
            })),
        }
    }
}

fn completion_fn(on_complete: Function<'_, CompletionArgs, ()>) -> Result<CompletionFn> {
    on_complete
        .build_threadsafe_function::<Completion>()
        .weak::<true>()
        .callee_handled::<false>()
        .build_callback(|ctx| {
            let Completion { ticket, outcome } = ctx.value;
            Ok(match outcome {
                Ok(lsn) => FnArgs::from((ticket, Some(lsn), None)),
                Err(message) => FnArgs::from((ticket, None, Some(message))),
            })
        })
}

#[napi]
impl NativeWal {
    /// Opens and recovers the WAL on the JS thread. `onComplete(ticket, firstLsn, error)`
    /// receives the outcome of every `submit`ted job.
    #[napi(factory)]
    pub fn open_sync(
        dir: String,
        options: WalOpenOptions,
        #[napi(
            ts_arg_type = "(ticket: number, firstLsn: bigint | null, error: string | null) => void"
        )]
        on_complete: Function<'_, CompletionArgs, ()>,
    ) -> Result<NativeWal> {
        let (options, keys) = wal_options(&options)?;
        let completions = completion_fn(on_complete)?;
        let wal = Wal::open_with_keys(Arc::new(StdVfs), Path::new(&dir), options, keys).into_napi()?;
        Ok(NativeWal::from_wal(wal, completions))
    }

    /// Opens and recovers the WAL on the libuv pool.
    #[napi(ts_return_type = "Promise<NativeWal>")]
    pub fn open(
        dir: String,
        options: WalOpenOptions,
        #[napi(
            ts_arg_type = "(ticket: number, firstLsn: bigint | null, error: string | null) => void"
        )]
        on_complete: Function<'_, CompletionArgs, ()>,
    ) -> Result<AsyncTask<OpenWal>> {
        let (options, keys) = wal_options(&options)?;
        Ok(AsyncTask::new(OpenWal {
            dir,
            options,
            keys,
            completions: Some(completion_fn(on_complete)?),
        }))
    }

    /// Queues every job for the commit thread; each job's outcome arrives through
    /// `onComplete`, also when its records are invalid or the WAL is closed meanwhile.
    #[napi]
    pub fn submit(&self, jobs: Vec<NativeAppendJob>) -> Result<()> {
        let (wal, completions) = match self.slot().as_ref() {
            Some(state) => (state.wal.clone(), state.completions.clone()),
            None => return Err(closed()),
        };
        for job in jobs {
            let ticket = job.ticket;
            match record_inputs(job.records) {
                Ok(records) => {
                    let completions = completions.clone();
                    wal.submit_append(
                        records,
                        Box::new(move |result| {
                            let outcome = result.map_err(|e| to_napi_error(e).reason);
                            deliver(&completions, ticket, outcome);
                        }),
                    );
                }
                Err(e) => deliver(&completions, ticket, Err(e.reason)),
            }
        }
        Ok(())
    }

    /// Appends the records as one commit on the JS thread; returns the first LSN.
    #[napi]
    pub fn append_batch_sync(&self, records: Vec<NativeRecordInput>) -> Result<u64> {
        let records = record_inputs(records)?;
        self.inner()?.append_batch(records).into_napi()
    }

    /// Resolves once everything queued before it is durable (fails on a poisoned WAL).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn sync(&self) -> Result<AsyncTask<SyncWal>> {
        Ok(AsyncTask::new(SyncWal { wal: self.inner()? }))
    }

    #[napi]
    pub fn sync_sync(&self) -> Result<()> {
        self.inner()?.sync().into_napi()
    }

    /// Removes whole segments holding only records below `lsn`; resolves to their count.
    #[napi(ts_return_type = "Promise<number>")]
    pub fn truncate_before(&self, lsn: BigInt) -> Result<AsyncTask<TruncateWal>> {
        Ok(AsyncTask::new(TruncateWal {
            wal: self.inner()?,
            lsn: u64_from_bigint("lsn", &lsn)?,
        }))
    }

    #[napi]
    pub fn truncate_before_sync(&self, lsn: BigInt) -> Result<f64> {
        let lsn = u64_from_bigint("lsn", &lsn)?;
        Ok(self.inner()?.truncate_before(lsn).into_napi()? as f64)
    }

    /// A reader of the records acknowledged when this is called, from `fromLsn`
    /// (0: the oldest retained). `knownTypes` adds to the built-in record types.
    #[napi]
    pub fn replay(
        &self,
        from_lsn: BigInt,
        known_types_extra: Option<Vec<u32>>,
    ) -> Result<NativeReplay> {
        let from_lsn = u64_from_bigint("fromLsn", &from_lsn)?;
        let replay = self
            .inner()?
            .replay(from_lsn, known_types(known_types_extra))
            .into_napi()?;
        Ok(NativeReplay {
            state: Arc::new(Mutex::new(ReplayState {
                replay: Some(replay),
                failed: None,
            })),
        })
    }

    #[napi(getter)]
    pub fn recovery(&self) -> Result<NativeRecoveryReport> {
        let wal = self.inner()?;
        let report = wal.recovery();
        Ok(NativeRecoveryReport {
            first_lsn: report.first_lsn.into(),
            last_lsn: report.last_lsn.into(),
            records: report.records as f64,
            segments: report.segments as f64,
            repaired_from_dwb: report.repaired_from_dwb as f64,
            torn_tail_bytes: report.torn_tail_bytes as f64,
            duration_ms: report.duration.as_secs_f64() * 1000.0,
        })
    }

    #[napi(getter)]
    pub fn stats(&self) -> Result<NativeWalStats> {
        let stats = self.inner()?.stats();
        Ok(NativeWalStats {
            commits: stats.commits.into(),
            records: stats.records.into(),
            wal_bytes_written: stats.wal_bytes_written.into(),
            dwb_bytes_written: stats.dwb_bytes_written.into(),
            wal_syncs: stats.wal_syncs.into(),
            dwb_syncs: stats.dwb_syncs.into(),
            padding_bytes: stats.padding_bytes.into(),
            segment_rolls: stats.segment_rolls.into(),
            unprotected_records: stats.unprotected_records.into(),
        })
    }

    #[napi(getter)]
    pub fn protection(&self) -> Result<NativeProtectionStatus> {
        let status = self.inner()?.protection();
        Ok(NativeProtectionStatus {
            policy: status.policy.as_str().into(),
            tail_protection: status.tail_protection.as_str().into(),
            state: status.state.as_str().into(),
            unprotected_records: status.unprotected_records.into(),
        })
    }

    /// LSN of the newest durable record (0n when none).
    #[napi(getter)]
    pub fn last_lsn(&self) -> Result<u64> {
        Ok(self.inner()?.last_lsn())
    }

    /// LSN the next record will get once everything queued has committed.
    #[napi(getter)]
    pub fn next_lsn(&self) -> Result<u64> {
        Ok(self.inner()?.next_lsn())
    }

    #[napi(getter)]
    pub fn dir(&self) -> Result<String> {
        Ok(self.inner()?.dir().to_string_lossy().into_owned())
    }

    #[napi]
    pub fn is_open(&self) -> bool {
        self.slot().is_some()
    }

    /// Closes on the libuv pool: queued commits complete (their outcomes still arrive
    /// through `onComplete`), then the commit thread stops and the lock is released.
    /// Every later call fails with `ERR_WAL_CLOSED`. Idempotent.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close(&self) -> AsyncTask<CloseWal> {
        AsyncTask::new(CloseWal {
            wal: self.slot().take().map(|state| state.wal),
        })
    }

    #[napi]
    pub fn close_sync(&self) -> Result<()> {
        match self.slot().take() {
            Some(state) => state.wal.close().into_napi(),
            None => Ok(()),
        }
    }
}

pub struct OpenWal {
    dir: String,
    options: WalOptions,
    /// Taken by `compute`: the keys move into the WAL (and are wiped when it closes).
    keys: Option<KeyRing>,
    completions: Option<CompletionFn>,
}

impl Task for OpenWal {
    type Output = Wal;
    type JsValue = NativeWal;

    fn compute(&mut self) -> Result<Wal> {
        Wal::open_with_keys(
            Arc::new(StdVfs),
            Path::new(&self.dir),
            self.options,
            self.keys.take(),
        )
        .into_napi()
    }

    fn resolve(&mut self, _env: Env, wal: Wal) -> Result<NativeWal> {
        let completions = self
            .completions
            .take()
            .expect("resolve runs once, after compute");
        Ok(NativeWal::from_wal(wal, completions))
    }
}

pub struct SyncWal {
    wal: Arc<Wal>,
}

impl Task for SyncWal {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> Result<()> {
        self.wal.sync().into_napi()
    }

    fn resolve(&mut self, _env: Env, _output: ()) -> Result<()> {
        Ok(())
    }
}

pub struct TruncateWal {
    wal: Arc<Wal>,
    lsn: u64,
}

impl Task for TruncateWal {
    type Output = u64;
    type JsValue = f64;

    fn compute(&mut self) -> Result<u64> {
        self.wal.truncate_before(self.lsn).into_napi()
    }

    fn resolve(&mut self, _env: Env, removed: u64) -> Result<f64> {
        Ok(removed as f64)
    }
}

pub struct CloseWal {
    wal: Option<Arc<Wal>>,
}

impl Task for CloseWal {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> Result<()> {
        match self.wal.take() {
            Some(wal) => wal.close().into_napi(),
            None => Ok(()),
        }
    }

    fn resolve(&mut self, _env: Env, _output: ()) -> Result<()> {
        Ok(())
    }
}

struct ReplayState {
    /// `None` once the replay ended (or was closed).
    replay: Option<Replay>,
    /// An error met after some records of a batch: reported by the next batch.
    failed: Option<doublewrite::Error>,
}

fn lock(state: &Mutex<ReplayState>) -> MutexGuard<'_, ReplayState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads the next records, up to `max_records` or about `max_bytes` of payload (at
/// least one record). An empty batch means the end.
fn next_batch(
    state: &Mutex<ReplayState>,
    max_records: u32,
    max_bytes: u32,
) -> Result<Vec<WalRecord>> {
    let mut state = lock(state);
    if let Some(error) = state.failed.take() {
        return Err(to_napi_error(error));
    }
    let mut out = Vec::new();
    let mut bytes: u64 = 0;
    while out.len() < max_records.max(1) as usize && bytes < u64::from(max_bytes.max(1)) {
        let Some(replay) = state.replay.as_mut() else {
            break;
        };
        match replay.next() {
            Some(Ok(record)) => {
                bytes += record.encoded_len() as u64;
                out.push(record);
            }
            Some(Err(error)) => {
                state.replay = None;
                if out.is_empty() {
                    return Err(to_napi_error(error));
                }
                state.failed = Some(error);
                break;
            }
            None => {
                state.replay = None;
                break;
            }
        }
    }
    Ok(out)
}

/// A replay in progress. Each batch is read on the libuv pool (`nextBatch`) or on the JS
/// thread (`nextBatchSync`).
#[napi]
pub struct NativeReplay {
    state: Arc<Mutex<ReplayState>>,
}

#[napi]
impl NativeReplay {
    #[napi(ts_return_type = "Promise<Array<NativeWalRecord>>")]
    pub fn next_batch(&self, max_records: u32, max_bytes: u32) -> AsyncTask<ReplayBatch> {
        AsyncTask::new(ReplayBatch {
            state: self.state.clone(),
            max_records,
            max_bytes,
        })
    }

    #[napi]
    pub fn next_batch_sync(
        &self,
        max_records: u32,
        max_bytes: u32,
    ) -> Result<Vec<NativeWalRecord>> {
        let records = next_batch(&self.state, max_records, max_bytes)?;
        Ok(records.into_iter().map(NativeWalRecord::new).collect())
    }

    /// Ends the replay early and releases its buffers.
    #[napi]
    pub fn close(&self) {
        let mut state = lock(&self.state);
        state.replay = None;
        state.failed = None;
    }
}

pub struct ReplayBatch {
    state: Arc<Mutex<ReplayState>>,
    max_records: u32,
    max_bytes: u32,
}

impl Task for ReplayBatch {
    type Output = Vec<WalRecord>;
    type JsValue = Vec<NativeWalRecord>;

    fn compute(&mut self) -> Result<Vec<WalRecord>> {
        next_batch(&self.state, self.max_records, self.max_bytes)
    }

    fn resolve(&mut self, _env: Env, records: Vec<WalRecord>) -> Result<Vec<NativeWalRecord>> {
        Ok(records.into_iter().map(NativeWalRecord::new).collect())
    }
}
