//! The write-ahead log (mirrors the `wal` section of `index.ts`).
//!
//! Appends never block the JS thread and never hold a libuv pool thread. The TS layer
//! packs the appends of one tick into typed arrays (see [`unpack`]) and hands them over
//! in ONE `submitPacked` call, which copies the payloads once, together, into a buffer
//! the core's [`RecordInput`]s share, and queues every caller's job for the commit thread.
//!
//! Outcomes come back in batches: the commit thread puts each one into the WAL's outbox,
//! and once all the outcomes of a commit are in (the core's completion hook) schedules a
//! call of ONE weak threadsafe function created at open (no arguments), unless one is
//! already scheduled. JS then takes everything waiting by then with
//! one `takeCompletions` call, as typed arrays copied into JS-owned memory (no external
//! buffers: Electron forbids them). So the JS thread runs once per batch of outcomes, not
//! once per append, and the appenders it resumes re-append in one tick, i.e. one
//! `submitPacked`. The TS layer maps tickets back to promises and keeps the event loop
//! alive while any are outstanding (the threadsafe function itself never does).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use std::path::Path;

use doublewrite::crypto::KEY_BYTES;
use doublewrite::io::StdVfs;
use doublewrite::record::MAX_PAYLOAD_BYTES;
use doublewrite::wal::{pooled_copy, AppendCallback};
use doublewrite::{
    DwbMode, KeyRing, Payload, Protection, RecordError, RecordInput, Replay, TailProtection, Wal,
    WalOptions, WalRecord,
};
use napi::bindgen_prelude::{
    AsyncTask, BigInt, BigUint64ArraySlice, Function, Uint32ArraySlice, Uint8Array, Uint8ArraySlice,
};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, Result, Status, Task};
use napi_derive::napi;

use crate::dwb::parse_mode;
use crate::error::{
    coded, to_napi_error, u64_from_bigint, IntoNapi, ERR_INVALID_ARG_VALUE, ERR_OUT_OF_RANGE,
};
use crate::record::NativeWalRecord;
use crate::uv::ReadyWatch;

/// Options of `NativeWal.open`; absent fields take the core's defaults.
#[napi(object)]
pub struct WalOpenOptions {
    /// `'off'`, `'buffered'` or `'direct'`; default: `'direct'` with `directIo: true`;
    /// without `directIo`, `'direct'` under `'mirror'` where the file system takes O_DIRECT;
    /// else `'buffered'`.
    pub dwb_mode: Option<String>,
    /// Open segments with O_DIRECT. Default: where the directory's file system takes it
    /// (and reports its alignment), either tail protection; buffered elsewhere.
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
    /// Commit an awaited append on the JS thread through the kernel's durable writes
    /// where it can (only with O_DIRECT segments; Linux AIO with `RWF_DSYNC`, completion
    /// watched by the event loop). Default `true`: it takes effect wherever the segments
    /// are written with O_DIRECT.
    pub kernel_completion: Option<bool>,
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
        let id = u16::try_from(entry.id)
            .ok()
            .filter(|id| *id != 0)
            .ok_or_else(|| {
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
    pub overlapped_syncs: BigInt,
    pub durable_commits: BigInt,
    pub padding_bytes: BigInt,
    pub segment_rolls: BigInt,
    pub unprotected_records: BigInt,
}

/// How commits reach the disk, as decided at open.
#[napi(object)]
pub struct NativeIoStatus {
    /// Segments are written with O_DIRECT.
    pub direct_io: bool,
    /// Idle awaited appends commit on the JS thread through the kernel's durable writes.
    pub kernel_completion: bool,
    /// The DWB's mode as opened: `'off'`, `'buffered'` or `'direct'`.
    pub dwb_mode: String,
}

#[napi(object)]
pub struct NativeProtectionStatus {
    pub policy: String,
    pub tail_protection: String,
    pub state: String,
    pub unprotected_records: BigInt,
}

/// Bit 31 of a ticket handed back by `takeCompletions`: the job failed. Tickets themselves
/// stay below it.
const TICKET_FAILED: u32 = 1 << 31;

/// Outcomes the commit thread reported and JS has not taken yet, in report order.
#[derive(Default)]
struct Outbox {
    /// Tickets, with [`TICKET_FAILED`] set on failures.
    tickets: Vec<u32>,
    /// First LSN of each ticket (0 for a failure).
    lsns: Vec<u64>,
    /// The `[ERR_CODE] message` of each failure, in order.
    errors: Vec<String>,
    /// A call of the JS callback is scheduled and has not taken the outbox yet.
    notified: bool,
}

/// What `takeCompletions` hands JS: `[tickets, lsns, errors]`.
type TakenCompletions<'env> = (
    Uint32ArraySlice<'env>,
    BigUint64ArraySlice<'env>,
    Option<Vec<String>>,
);

fn lock_outbox(outbox: &Mutex<Outbox>) -> MutexGuard<'_, Outbox> {
    outbox
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The threadsafe function that tells JS to take the outbox, and the outbox.
pub struct CompletionFn {
    notify: ThreadsafeFunction<(), (), (), Status, false, true>,
    outbox: Arc<Mutex<Outbox>>,
}

/// Puts one job's outcome into the outbox; [`notify`] tells JS later.
fn deliver(completions: &CompletionFn, ticket: u32, outcome: std::result::Result<u64, String>) {
    let mut outbox = lock_outbox(&completions.outbox);
    match outcome {
        Ok(lsn) => {
            outbox.tickets.push(ticket);
            outbox.lsns.push(lsn);
        }
        Err(message) => {
            outbox.tickets.push(ticket | TICKET_FAILED);
            outbox.lsns.push(0);
            outbox.errors.push(message);
        }
    }
}

/// Schedules ONE call of the JS callback when outcomes wait and none is scheduled yet.
/// Runs once per commit (the core's completion hook) and once per `submitPacked`, so
/// every outcome of a commit reaches JS together: its appenders resume in one tick and
/// re-append as one submission, which keeps them in one group commit instead of
/// splitting into groups that alternate. JS takes everything queued by the time it
/// runs; the flag is reset with the taken outbox.
fn notify(completions: &CompletionFn) {
    {
        let mut outbox = lock_outbox(&completions.outbox);
        if outbox.notified || outbox.tickets.is_empty() {
            return;
        }
        outbox.notified = true;
    }
    // Non-blocking on an unbounded queue never waits. It fails only when the JS
    // environment is shutting down, and then nobody is left to tell.
    let _ = completions
        .notify
        .call((), ThreadsafeFunctionCallMode::NonBlocking);
}

/// The callback of one job: reports its outcome under `ticket`.
fn job_callback(completions: &Arc<CompletionFn>, ticket: u32) -> AppendCallback {
    let completions = completions.clone();
    Box::new(move |result| {
        let outcome = result.map_err(|e| to_napi_error(e).reason);
        deliver(&completions, ticket, outcome);
    })
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
    // The DWB's mode follows an explicit `directIo`. Without one, the segments' O_DIRECT
    // is decided at open, by the file system, and so is a `'mirror'` WAL's DWB's (which
    // it writes every commit; `'pad'` does not).
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
    let prefer_direct_io = options.direct_io.is_none();
    let prefer_direct_dwb =
        prefer_direct_io && options.dwb_mode.is_none() && tail_protection == TailProtection::Mirror;
    let options = WalOptions {
        dwb_mode,
        direct_io,
        prefer_direct_io,
        prefer_direct_dwb,
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
        kernel_completion: options.kernel_completion.unwrap_or(true),
        ..defaults
    };
    Ok((options, keys))
}

/// Words of a job header in the packed metadata: ticket, record count.
const JOB_WORDS: usize = 2;
/// Words of a record in the packed metadata: record type, payload length, vshard id, flags.
const RECORD_WORDS: usize = 4;
/// Record flag: the record's tenant and database ids are `ids[2 * i]` and `ids[2 * i + 1]`
/// (`i`: the record's index among all the records of the call); without it both are 0.
const FLAG_IDS: u32 = 1;
/// Record flag: the payload is larger than a record can be and its bytes were not packed;
/// the length word holds its size (capped at `u32::MAX`).
const FLAG_OVERSIZE: u32 = 2;

/// The records of one caller, or the error that rejects them before they are queued.
struct PackedJob {
    ticket: u32,
    records: doublewrite::Result<Vec<RecordInput>>,
}

fn malformed(what: &str) -> napi::Error {
    coded(
        ERR_INVALID_ARG_VALUE,
        format!("malformed packed appends: {what}"),
    )
}

/// Unpacks the appends the TS layer packed for one native call (`Staging` in `index.ts`):
/// `meta` holds, per job, `[ticket, recordCount]` then `[recordType, payloadLength,
/// vshardId, flags]` per record; the payloads follow each other in `payloads`, in
/// record order; `ids` holds two ids per record (see [`FLAG_IDS`]) when any is set.
/// The payloads are copied once, together, into one buffer that the records share
/// (pooled from 16 KiB: [`pooled_copy`]). Fails (and nothing is queued) on metadata that does not add up.
fn unpack(meta: &[u32], payloads: &[u8], ids: Option<&[u64]>) -> Result<Vec<PackedJob>> {
    let mut jobs = Vec::new();
    let mut shared = None;
    let mut word = 0;
    let mut offset = 0;
    let mut index = 0;
    while word < meta.len() {
        let Some(&[ticket, count]) = meta.get(word..word + JOB_WORDS) else {
            return Err(malformed("a job header is cut short"));
        };
        word += JOB_WORDS;
        let count = count as usize;
        if count > (meta.len() - word) / RECORD_WORDS {
            return Err(malformed("a job has more records than the metadata holds"));
        }
        let mut records = Vec::with_capacity(count);
        let mut oversize = None;
        for _ in 0..count {
            let Some(&[record_type, length, vshard_id, flags]) =
                meta.get(word..word + RECORD_WORDS)
            else {
                return Err(malformed("a record is cut short"));
            };
            word += RECORD_WORDS;
            let (tenant_id, database_id) = if flags & FLAG_IDS != 0 {
                match ids.and_then(|ids| ids.get(2 * index..2 * index + 2)) {
                    Some(&[tenant, database]) => (tenant, database),
                    _ => return Err(malformed("the ids of a record are missing")),
                }
            } else {
                (0, 0)
            };
            index += 1;
            if flags & FLAG_OVERSIZE != 0 {
                oversize.get_or_insert(u64::from(length));
                continue;
            }
            let end = offset + length as usize;
            if end > payloads.len() {
                return Err(malformed("a payload runs past the packed bytes"));
            }
            let payload = if length == 0 {
                Payload::default()
            } else {
                let buffer = shared.get_or_insert_with(|| pooled_copy(payloads));
                Payload::shared(buffer.clone(), offset..end)
            };
            offset = end;
            records.push(RecordInput {
                record_type,
                payload,
                tenant_id,
                vshard_id,
                database_id,
            });
        }
        let records = match oversize {
            // What the core says of such a record; its bytes were never packed.
            Some(size_bytes) => Err(RecordError::PayloadTooLarge {
                size_bytes,
                max_bytes: u64::from(MAX_PAYLOAD_BYTES),
            }
            .into()),
            None => Ok(records),
        };
        jobs.push(PackedJob { ticket, records });
    }
    Ok(jobs)
}

/// The packed metadata in use: the first `used` words of `meta`.
fn used_words(meta: &[u32], used: u32) -> Result<&[u32]> {
    meta.get(..used as usize)
        .ok_or_else(|| malformed("more words in use than the metadata holds"))
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
    /// With `kernelCompletion`: the event loop's watch of the WAL's completion eventfd;
    /// while it exists, appends commit on this thread where they can. Declared first, so
    /// dropped first: libuv stops polling the descriptor before the WAL can close it.
    watch: Option<ReadyWatch>,
    wal: Arc<Wal>,
    completions: Arc<CompletionFn>,
}

/// Every method takes `&self`: napi-rs keeps a method's borrow of the object until an
/// `AsyncTask` it returned settles, so a `&mut self` `close()` would collide with a sync
/// or replay in flight. The handle lives behind a mutex instead; calls clone the `Arc`.
#[napi]
pub struct NativeWal {
    state: Mutex<Option<OpenState>>,
    /// Outlives `state`: the outcomes of the last commits are taken after `close()`.
    outbox: Arc<Mutex<Outbox>>,
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
        let completions = Arc::new(completions);
        let hook = completions.clone();
        wal.set_completion_hook(Some(Arc::new(move || notify(&hook))));
        let wal = Arc::new(wal);
        NativeWal {
            outbox: completions.outbox.clone(),
            state: Mutex::new(Some(OpenState {
                watch: None,
                wal,
                completions,
            })),
        }
    }
}

fn completion_fn(on_complete: Function<'_, (), ()>) -> Result<CompletionFn> {
    let notify = on_complete
        .build_threadsafe_function::<()>()
        .weak::<true>()
        .callee_handled::<false>()
        .build()?;
    Ok(CompletionFn {
        notify,
        outbox: Arc::default(),
    })
}

#[napi]
impl NativeWal {
    /// Opens and recovers the WAL on the JS thread. `onComplete()` is called when outcomes
    /// of `submitPacked` jobs wait in the outbox (see `takeCompletions`).
    #[napi(factory)]
    pub fn open_sync(
        dir: String,
        options: WalOpenOptions,
        #[napi(ts_arg_type = "() => void")] on_complete: Function<'_, (), ()>,
    ) -> Result<NativeWal> {
        let (options, keys) = wal_options(&options)?;
        let completions = completion_fn(on_complete)?;
        let wal =
            Wal::open_with_keys(Arc::new(StdVfs), Path::new(&dir), options, keys).into_napi()?;
        Ok(NativeWal::from_wal(wal, completions))
    }

    /// Opens and recovers the WAL on the libuv pool.
    #[napi(ts_return_type = "Promise<NativeWal>")]
    pub fn open(
        dir: String,
        options: WalOpenOptions,
        #[napi(ts_arg_type = "() => void")] on_complete: Function<'_, (), ()>,
    ) -> Result<AsyncTask<OpenWal>> {
        let (options, keys) = wal_options(&options)?;
        Ok(AsyncTask::new(OpenWal {
            dir,
            options,
            keys,
            completions: Some(completion_fn(on_complete)?),
        }))
    }

    /// With `kernelCompletion`: watches the WAL's completion descriptor on this thread's
    /// event loop, so that from now on an append that finds the writer idle commits here
    /// through the kernel, and its completion calls `onComplete` (the function given at
    /// open) straight from the loop. `false`, changing nothing, where the WAL has no such
    /// channel or libuv's poll handle is unavailable. Call once, right after open.
    #[napi]
    pub fn watch_kernel_completions(
        &self,
        env: Env,
        #[napi(ts_arg_type = "() => void")] on_complete: Function<'_, (), ()>,
    ) -> Result<bool> {
        let mut slot = self.slot();
        let Some(state) = slot.as_mut() else {
            return Err(closed());
        };
        if state.watch.is_some() {
            return Ok(true);
        }
        let Some(fd) = state.wal.durable_ready_fd() else {
            return Ok(false);
        };
        let weak = Arc::downgrade(&state.wal);
        let outbox = state.completions.outbox.clone();
        let on_ready = Box::new(move || {
            let reaped = weak.upgrade().is_some_and(|wal| wal.reap_durable_quietly());
            // Outcomes wait (this commit's, maybe others'): JS takes them now.
            reaped && !lock_outbox(&outbox).tickets.is_empty()
        });
        state.watch = ReadyWatch::start(&env, fd, on_ready, napi::JsValue::raw(&on_complete));
        Ok(state.watch.is_some())
    }

    /// Queues the jobs packed in the first `metaUsed` words of `meta`, in `payloads` and
    /// in `ids` (see [`unpack`]) for the commit thread, after copying them: the arrays can
    /// be reused as soon as this returns. Each job's outcome arrives in the outbox, also
    /// when its records are invalid or the WAL is closed meanwhile; tickets must be below
    /// 2^31. Throws, queuing nothing, when the WAL is closed or the metadata is malformed.
    #[napi]
    pub fn submit_packed(
        &self,
        meta: Uint32ArraySlice,
        meta_used: u32,
        payloads: Uint8ArraySlice,
        ids: Option<BigUint64ArraySlice>,
    ) -> Result<()> {
        let (wal, completions, watched) = match self.slot().as_ref() {
            Some(state) => (
                state.wal.clone(),
                state.completions.clone(),
                state.watch.is_some(),
            ),
            None => return Err(closed()),
        };
        let jobs = unpack(
            used_words(&meta, meta_used)?,
            &payloads,
            ids.as_ref().map(|ids| &ids[..]),
        )?;
        let mut queued = Vec::with_capacity(jobs.len());
        for PackedJob { ticket, records } in jobs {
            match records {
                Ok(records) => queued.push((records, job_callback(&completions, ticket))),
                Err(e) => deliver(&completions, ticket, Err(to_napi_error(e).reason)),
            }
        }
        // One commit started here whose completion wakes this thread (the watch), or one
        // lock and one wake-up of the commit thread for the whole tick.
        if watched {
            wal.submit_durable(queued);
        } else {
            wal.submit_many(queued);
        }
        // Outcomes reported on this thread (invalid records, a WAL closed meanwhile).
        notify(&completions);
        Ok(())
    }

    /// Appends the records of the ONE job packed as for `submitPacked`, as one commit on
    /// the JS thread; returns the first LSN once they are durable.
    #[napi]
    pub fn append_packed_sync(
        &self,
        meta: Uint32ArraySlice,
        meta_used: u32,
        payloads: Uint8ArraySlice,
        ids: Option<BigUint64ArraySlice>,
    ) -> Result<u64> {
        let wal = self.inner()?;
        let mut jobs = unpack(
            used_words(&meta, meta_used)?,
            &payloads,
            ids.as_ref().map(|ids| &ids[..]),
        )?;
        let (Some(job), None) = (jobs.pop(), jobs.pop()) else {
            return Err(malformed("a synchronous append is exactly one job"));
        };
        wal.append_batch(job.records.into_napi()?).into_napi()
    }

    /// Takes every outcome waiting in the outbox, in report order, as
    /// `[tickets, lsns, errors]` (`null` when none waits): `lsns[i]` is the first LSN of
    /// job `tickets[i]`; when bit 31 of `tickets[i]` is set the job failed instead, with
    /// the next message of `errors` (`null` when none failed). The arrays are copies in
    /// JS-owned memory. Works after `close`.
    #[napi(ts_return_type = "[Uint32Array, BigUint64Array, string[] | null] | null")]
    pub fn take_completions<'env>(&self, env: &'env Env) -> Result<Option<TakenCompletions<'env>>> {
        let Outbox {
            tickets,
            lsns,
            errors,
            ..
        } = std::mem::take(&mut *lock_outbox(&self.outbox));
        if tickets.is_empty() {
            return Ok(None);
        }
        Ok(Some((
            Uint32ArraySlice::copy_from(env, tickets)?,
            BigUint64ArraySlice::copy_from(env, lsns)?,
            (!errors.is_empty()).then_some(errors),
        )))
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
            overlapped_syncs: stats.overlapped_syncs.into(),
            durable_commits: stats.durable_commits.into(),
            padding_bytes: stats.padding_bytes.into(),
            segment_rolls: stats.segment_rolls.into(),
            unprotected_records: stats.unprotected_records.into(),
        })
    }

    #[napi(getter)]
    pub fn io(&self) -> Result<NativeIoStatus> {
        match self.slot().as_ref() {
            Some(state) => Ok(NativeIoStatus {
                direct_io: state.wal.direct_io(),
                kernel_completion: state.watch.is_some(),
                dwb_mode: state.wal.options().dwb_mode.as_str().into(),
            }),
            None => Err(closed()),
        }
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
