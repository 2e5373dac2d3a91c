//! A write-ahead log protected by the double-write buffer.
//!
//! [`Wal`] runs a commit thread: appends from any thread (or from JavaScript) are queued,
//! and every append that arrives while a commit is in flight joins the next one — one
//! DWB sync (when anything is at risk) and one WAL sync for all of them. Each caller gets
//! its own LSN and its own outcome; a caller is told "durable" only after the WAL sync of
//! the commit holding its records returned success. See `writer.rs` for the commit and
//! `recovery.rs` for the recovery decision table.

mod payload;
mod poll;
pub mod recovery;
mod replay;
pub mod segment;
pub mod verify;
mod writer;

use std::collections::{BTreeSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::crypto::KeyRing;
use crate::dwb::{DoubleWriteBuffer, DwbMode, DwbOptions};
use crate::error::{Error, Result};
use crate::io::{DurableWrites, FileKind, OpenOptions, StdVfs, Vfs};
use crate::record::{check_record_type, RecordError, RecordType, MAX_PAYLOAD_BYTES};

pub use payload::{pooled_copy, Payload, SharedBytes};
use poll::Poller;
pub use replay::Replay;
pub use segment::SegmentFile;
use writer::{DurableCommit, Writer};

/// Name of the DWB file inside a WAL directory.
pub const DWB_FILE_NAME: &str = "wal.dwb";
/// Name of the lock file inside a WAL directory.
pub const LOCK_FILE_NAME: &str = "LOCK";
pub const DEFAULT_SEGMENT_SIZE_BYTES: u64 = 64 * 1024 * 1024;
/// Smallest segment accepted (tests use small ones to roll often).
pub const MIN_SEGMENT_SIZE_BYTES: u64 = 16 * 1024;
pub const DEFAULT_MAX_COMMIT_BYTES: u64 = 16 * 1024 * 1024;

/// What protects acknowledged records from the next commit's write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailProtection {
    /// Commits are packed; the acknowledged records in the partial last block get DWB
    /// copies (synced) before the next commit rewrites that block. Two syncs per commit
    /// when the log does not end on a block boundary; no wasted space.
    Mirror,
    /// Every commit ends on a block boundary with a padding record, so no block holding
    /// acknowledged bytes is ever written again: one sync per commit, up to a block of
    /// file space per commit.
    Pad,
}

impl TailProtection {
    pub fn as_str(self) -> &'static str {
        match self {
            TailProtection::Mirror => "mirror",
            TailProtection::Pad => "pad",
        }
    }
    pub fn parse(text: &str) -> Option<TailProtection> {
        match text {
            "mirror" => Some(TailProtection::Mirror),
            "pad" => Some(TailProtection::Pad),
            _ => None,
        }
    }
}

/// What to do when the DWB cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// Refuse the commit (`ERR_DWB_UNAVAILABLE`) before any WAL byte is written: an
    /// acknowledged record is never left unprotected.
    Strict,
    /// Acknowledge anyway, count the records that were at risk without a copy, and pad
    /// every later commit so nothing else is ever at risk.
    Degraded,
}

impl Protection {
    pub fn as_str(self) -> &'static str {
        match self {
            Protection::Strict => "strict",
            Protection::Degraded => "degraded",
        }
    }
    pub fn parse(text: &str) -> Option<Protection> {
        match text {
            "strict" => Some(Protection::Strict),
            "degraded" => Some(Protection::Degraded),
            _ => None,
        }
    }
}

/// How acknowledged records are protected right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtectionState {
    /// The DWB works and holds the at-risk records of every commit.
    Active,
    /// No DWB by choice (`DwbMode::Off`) or `TailProtection::Pad`: protected by padding.
    Padding,
    /// The DWB failed (degraded policy): protected by padding since; see the count of
    /// unprotected records for what was acknowledged without protection.
    Degraded,
}

impl ProtectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProtectionState::Active => "active",
            ProtectionState::Padding => "padding",
            ProtectionState::Degraded => "degraded",
        }
    }
}

/// Deliberately broken configurations, used only to show that the crash simulator's
/// checker finds the bugs the reference design had. Never use them for data.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weakness {
    /// No DWB copies and no padding: the at-risk records are unprotected.
    NoDwb,
    /// Recovery looks copies up by the LSN in the damaged header (and gives up when the
    /// header does not parse), instead of by the expected LSN.
    LookupByDamagedHeader,
    /// Recovery repairs in memory only; the damaged bytes stay in the WAL.
    NoRepairWriteBack,
    /// Mirror every record of each commit, none of the at-risk ones, and let a commit
    /// overwrite its own copies when it is larger than the ring.
    ReferenceMirroring,
    /// Overlap every commit's DWB sync with its WAL write and sync, even when its copies
    /// land on the last flush's frames — the copies that very write puts at risk.
    UnguardedOverlap,
}

/// Options of [`Wal::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    pub dwb_mode: DwbMode,
    /// Open segments with O_DIRECT.
    pub direct_io: bool,
    /// Without `direct_io`: open segments with O_DIRECT anyway where the directory's file
    /// system takes it (an O_DIRECT open there succeeds and reports its alignment, and the
    /// newest segment's block is a multiple of it), buffered elsewhere — never an error.
    /// [`Wal::direct_io`] tells which was chosen. The Node API sets it when `directIo` is
    /// not given: a commit writes whole blocks either way (the page cache writes whole
    /// pages), and with O_DIRECT an idle commit can go through the kernel's durable writes
    /// (`kernel_completion`; docs/PERFORMANCE.md §2).
    pub prefer_direct_io: bool,
    /// With `dwb_mode` [`DwbMode::Buffered`]: open the DWB with O_DIRECT
    /// ([`DwbMode::Direct`]) where the directory's file system takes it (as for
    /// `prefer_direct_io`), buffered elsewhere — never an error. [`Wal::options`] tells
    /// which was chosen. The Node API sets it for `'mirror'` when neither `dwbMode` nor
    /// `directIo` is given: a `'mirror'` commit's DWB write can then go to the kernel in
    /// one submission with its WAL write.
    pub prefer_direct_dwb: bool,
    /// Size of a new segment; a commit that does not fit starts the next one.
    pub segment_size_bytes: u64,
    /// DWB capacity (slots) when the DWB is created.
    pub dwb_capacity: Option<u32>,
    /// Largest record the DWB holds, when it is created.
    pub dwb_max_record_bytes: Option<u32>,
    pub protection: Protection,
    pub tail_protection: TailProtection,
    /// Group commit merges queued appends up to this many payload bytes.
    pub max_commit_bytes: u64,
    /// Prepare the next segment on a background thread, so a roll costs a header write
    /// instead of zero-filling a whole segment inside a commit. Off by default here (the
    /// simulator needs every I/O on one thread to replay a seed); the Node API turns it on.
    pub prepare_segments: bool,
    /// Offer [`Wal::submit_durable`]: a commit started on the caller's thread whose
    /// writes the kernel makes durable and completes on its own (Linux AIO with
    /// `RWF_DSYNC`; under `'mirror'` its DWB copies and its WAL write in one submission),
    /// signalling [`Wal::durable_ready_fd`]: the kernel wakes the caller's thread itself,
    /// without the commit thread's hand-offs (docs/PERFORMANCE.md §2). Needs `direct_io`
    /// (and under `'mirror'` a direct DWB); where the file system has no such channel the
    /// WAL opens without it.
    pub kernel_completion: bool,
    #[doc(hidden)]
    pub weakness: Option<Weakness>,
}

impl WalOptions {
    /// Whether a weakness changes the write path or recovery beyond the one check it
    /// removes (`UnguardedOverlap` removes only the overlap guard).
    pub(crate) fn weakened(&self) -> bool {
        self.weakness
            .is_some_and(|w| w != Weakness::UnguardedOverlap)
    }
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            dwb_mode: DwbMode::Buffered,
            direct_io: false,
            prefer_direct_io: false,
            prefer_direct_dwb: false,
            segment_size_bytes: DEFAULT_SEGMENT_SIZE_BYTES,
            dwb_capacity: None,
            dwb_max_record_bytes: None,
            protection: Protection::Strict,
            tail_protection: TailProtection::Mirror,
            max_commit_bytes: DEFAULT_MAX_COMMIT_BYTES,
            prepare_segments: false,
            kernel_completion: false,
            weakness: None,
        }
    }
}

/// One record to append.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordInput {
    pub record_type: u32,
    pub payload: Payload,
    pub tenant_id: u64,
    pub vshard_id: u32,
    pub database_id: u64,
}

impl RecordInput {
    pub fn new(record_type: u32, payload: impl Into<Payload>) -> RecordInput {
        RecordInput {
            record_type,
            payload: payload.into(),
            ..RecordInput::default()
        }
    }

    fn check(&self) -> std::result::Result<(), RecordError> {
        if self.payload.len() as u64 > u64::from(MAX_PAYLOAD_BYTES) {
            return Err(RecordError::PayloadTooLarge {
                size_bytes: self.payload.len() as u64,
                max_bytes: u64::from(MAX_PAYLOAD_BYTES),
            });
        }
        check_record_type(self.record_type)
    }
}

/// What the recovery at open found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// LSN of the oldest retained record (the next LSN when the log is empty).
    pub first_lsn: u64,
    /// LSN of the newest record, 0 when the log is empty.
    pub last_lsn: u64,
    pub records: u64,
    pub segments: u64,
    pub repaired_from_dwb: u64,
    pub torn_tail_bytes: u64,
    pub duration: Duration,
}

/// Counters of this open WAL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    pub commits: u64,
    pub records: u64,
    /// Bytes the writer wrote into segments for commits: records and padding, plus the
    /// zeros that erase a failed write's leftovers; with `direct_io` the whole aligned span
    /// (the rewritten start of the first block and the end of the last). Not counted: the
    /// zeros a buffered write carries to the end of its last page, which only keep the
    /// page cache from reading that page back (the device writes whole pages either way).
    pub wal_bytes_written: u64,
    pub dwb_bytes_written: u64,
    pub wal_syncs: u64,
    pub dwb_syncs: u64,
    /// DWB syncs that ran alongside their commit's WAL sync (see the writer's module
    /// documentation); the others ran before the WAL write.
    pub overlapped_syncs: u64,
    /// Commits whose write the kernel made durable and completed on its own
    /// ([`Wal::submit_durable`]); each also counts as a WAL sync.
    pub durable_commits: u64,
    pub padding_bytes: u64,
    pub segment_rolls: u64,
    /// Records acknowledged while at risk without a DWB copy. Zero unless the DWB failed
    /// under the degraded policy (or an existing log was reopened without a DWB).
    pub unprotected_records: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtectionStatus {
    pub policy: Protection,
    pub tail_protection: TailProtection,
    pub state: ProtectionState,
    pub unprotected_records: u64,
}

/// Called once with the first LSN of the records, or the error that rejected them.
pub type AppendCallback = Box<dyn FnOnce(Result<u64>) + Send>;
/// Called once when everything queued before it is durable, or with the error.
pub type SyncCallback = Box<dyn FnOnce(Result<()>) + Send>;
/// Called once with the number of segments removed.
pub type TruncateCallback = Box<dyn FnOnce(Result<u64>) + Send>;

enum Job {
    Append {
        records: Vec<RecordInput>,
        done: AppendCallback,
    },
    Sync {
        done: SyncCallback,
    },
    Truncate {
        lsn: u64,
        done: TruncateCallback,
    },
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    closing: bool,
    /// While set (tests only), the commit thread leaves queued jobs alone, so a test can
    /// queue several submissions and have them merged deterministically.
    held: bool,
    /// The commit thread is running a unit of work it took from `jobs`.
    committing: bool,
    /// A blocking caller is committing on its own thread (see [`Wal::append_batch`]), or
    /// a commit started there is in flight in the kernel (`durable_in_flight`); the
    /// commit thread waits until it is done.
    inline: bool,
    /// The inline claim is held by a commit in flight through [`DurableWrites`]: whoever
    /// needs the writer reaps it ([`reap_durable`]) instead of waiting for its caller.
    durable_in_flight: bool,
}

/// The channel of [`Wal::submit_durable`] and the commit in flight through it.
struct Durable {
    channel: Box<dyn DurableWrites>,
    in_flight: Option<InFlight>,
}

struct InFlight {
    commit: DurableCommit,
    jobs: Vec<(u64, AppendCallback)>,
}

/// What readers and status calls see; updated by the commit thread after every job.
#[derive(Debug, Clone)]
struct View {
    next_lsn: u64,
    segments: Vec<SegmentFile>,
    end: (u64, u64),
    stats: WalStats,
    protection: ProtectionStatus,
}

struct Shared {
    dir: PathBuf,
    vfs: Arc<dyn Vfs>,
    options: WalOptions,
    queue: Mutex<Queue>,
    wake: Condvar,
    view: Mutex<View>,
    /// The log's writer: used by the commit thread, or by a blocking caller that found
    /// nothing queued and nothing committing (`Queue::inline`). `None` once closed.
    writer: Mutex<Option<Writer>>,
    report: RecoveryReport,
    /// For readers; dropped at close so the keys are wiped once readers finish.
    keys: Mutex<Option<Arc<KeyRing>>>,
    /// Runs on the commit thread after the callbacks of each unit of work.
    completion_hook: Mutex<Option<CompletionHook>>,
    /// With `kernel_completion`, where the file system offers it. Locked before `writer`.
    durable: Option<Mutex<Durable>>,
    durable_ready_fd: Option<i32>,
}

impl Shared {
    /// Publishes the writer's state to readers. Called after every unit of work, before
    /// anyone is told its outcome: a caller that reads the log right after its append
    /// returns must see its own record.
    fn publish(&self, writer: &Writer) {
        *lock(&self.view) = view_of(writer, &self.options);
    }

    /// Runs the completion hook, if one is set (cloned out, so it runs unlocked).
    fn run_completion_hook(&self) {
        let hook = lock(&self.completion_hook).clone();
        if let Some(hook) = hook {
            hook();
        }
    }
}

/// See [`Wal::set_completion_hook`].
pub type CompletionHook = Arc<dyn Fn() + Send + Sync>;

/// An open write-ahead log. Dropping it closes it (waiting for queued commits).
pub struct Wal {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.shared.dir)
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The block that commits are protected in units of: at least a page, and at least the
/// direct-I/O alignment.
fn protection_block_bytes(direct_io_alignment: Option<usize>) -> u32 {
    let page = crate::align::PAGE_BYTES as usize;
    direct_io_alignment.unwrap_or(page).max(page) as u32
}

/// Whether O_DIRECT works for the directory of `probe` (an existing file there, opened
/// again with O_DIRECT) with blocks of `block` bytes: [`WalOptions::prefer_direct_io`].
fn direct_io_fits(vfs: &dyn Vfs, probe: &Path, block: Option<u32>) -> bool {
    let Ok(file) = vfs.open(probe, OpenOptions::read_write().with_direct(true)) else {
        return false;
    };
    match (file.direct_io_alignment(), block) {
        (Some(alignment), Some(block)) => (block as usize).is_multiple_of(alignment),
        _ => false,
    }
}

/// The DWB options `options` ask for.
fn dwb_options(options: &WalOptions) -> DwbOptions {
    DwbOptions {
        mode: options.dwb_mode,
        capacity: options.dwb_capacity,
        max_record_bytes: options.dwb_max_record_bytes,
    }
}

/// Opens the WAL's DWB at `path`. With [`WalOptions::prefer_direct_dwb`] and a buffered
/// mode asked for, O_DIRECT where it fits the directory (as `prefer_direct_io` decides;
/// `options.dwb_mode` then becomes [`DwbMode::Direct`]). Anything but a DWB that opened
/// or is damaged either way leaves it to the buffered open, which reports it as it would
/// without the preference.
fn open_dwb(
    vfs: &Arc<dyn Vfs>,
    path: &Path,
    lock_path: &Path,
    block: u32,
    options: &mut WalOptions,
) -> Result<DoubleWriteBuffer> {
    if options.prefer_direct_dwb
        && options.dwb_mode == DwbMode::Buffered
        && direct_io_fits(vfs.as_ref(), lock_path, Some(block))
    {
        let direct = DwbOptions {
            mode: DwbMode::Direct,
            ..dwb_options(options)
        };
        let opened = DoubleWriteBuffer::open_with(vfs.clone(), path, direct);
        if let Ok(_) | Err(Error::DwbCorrupt { .. }) = opened {
            options.dwb_mode = DwbMode::Direct;
            return opened;
        }
    }
    DoubleWriteBuffer::open_with(vfs.clone(), path, dwb_options(options))
}

fn check_options(options: &WalOptions) -> Result<()> {
    if options.segment_size_bytes < MIN_SEGMENT_SIZE_BYTES {
        return Err(Error::InvalidOptions {
            detail: format!(
                "segmentSize {} is below the minimum of {MIN_SEGMENT_SIZE_BYTES} bytes",
                options.segment_size_bytes
            ),
        });
    }
    if options.max_commit_bytes == 0 {
        return Err(Error::InvalidOptions {
            detail: "maxCommitBytes must be positive".into(),
        });
    }
    Ok(())
}

impl Wal {
    /// Opens (creating if needed) and recovers the WAL in `dir` on the real file system.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<Wal> {
        Wal::open_with(Arc::new(StdVfs), dir.as_ref(), options)
    }

    /// Opens and recovers the WAL in `dir` on `vfs`.
    ///
    /// # Errors
    /// [`Error::Locked`] when another handle has it open; [`Error::WalCorrupt`] when
    /// acknowledged records cannot be recovered (nothing is changed then);
    /// [`Error::DirectIoUnsupported`]; I/O errors.
    pub fn open_with(vfs: Arc<dyn Vfs>, dir: &Path, options: WalOptions) -> Result<Wal> {
        Wal::open_with_keys(vfs, dir, options, None)
    }

    /// Opens an encrypted WAL: new records are sealed with the ring's active key, and
    /// records written under any key of the ring can be read (see [`crate::crypto`]).
    /// The keys are wiped from memory when the WAL is closed and its readers are done.
    pub fn open_encrypted(
        dir: impl AsRef<Path>,
        options: WalOptions,
        keys: KeyRing,
    ) -> Result<Wal> {
        Wal::open_with_keys(Arc::new(StdVfs), dir.as_ref(), options, Some(keys))
    }

    /// [`Wal::open_with`] with optional encryption keys.
    pub fn open_with_keys(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        options: WalOptions,
        keys: Option<KeyRing>,
    ) -> Result<Wal> {
        let keys = keys.map(Arc::new);
        let started = Instant::now();
        check_options(&options)?;
        match vfs.kind(dir).map_err(|e| Error::io("inspect", dir, e))? {
            Some(FileKind::Directory) => {}
            Some(_) => {
                return Err(Error::WrongFileKind {
                    path: dir.to_path_buf(),
                    detail: "is a file; a WAL is a directory",
                })
            }
            None => {
                vfs.create_dir_all(dir)
                    .map_err(|e| Error::io("create WAL directory", dir, e))?;
                if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    vfs.sync_dir(parent)
                        .map_err(|e| Error::io("sync directory", parent, e))?;
                }
            }
        }
        let lock_path = dir.join(LOCK_FILE_NAME);
        let lock_file = vfs
            .open(
                &lock_path,
                OpenOptions {
                    write: true,
                    create: true,
                    ..OpenOptions::default()
                },
            )
            .map_err(|e| Error::io("open lock file", &lock_path, e))?;
        if !lock_file
            .try_lock_exclusive()
            .map_err(|e| Error::io("lock", &lock_path, e))?
        {
            return Err(Error::Locked {
                path: dir.to_path_buf(),
            });
        }
        let block = protection_block_bytes(lock_file.direct_io_alignment());
        segment::remove_temporaries(vfs.as_ref(), dir)?;
        let mut segments = segment::list_segments(vfs.as_ref(), dir)?;

        let dwb_path = dir.join(DWB_FILE_NAME);
        let mut options = options;
        let mut dwb_failed = false;
        let mut replace_dwb = false;
        let use_dwb = options.dwb_mode != DwbMode::Off && options.weakness != Some(Weakness::NoDwb);
        let mut dwb = if use_dwb {
            match open_dwb(&vfs, &dwb_path, &lock_path, block, &mut options) {
                Ok(dwb) => Some(dwb),
                Err(Error::DwbCorrupt { .. }) => {
                    // It holds only copies: recover without it, then replace it.
                    replace_dwb = true;
                    None
                }
                Err(
                    e @ (Error::DirectIoUnsupported { .. } | Error::DwbGeometryMismatch { .. }),
                ) => return Err(e),
                Err(e) if options.protection == Protection::Strict => return Err(e),
                Err(_) => {
                    dwb_failed = true;
                    None
                }
            }
        } else {
            None
        };

        if segments.is_empty() {
            let path = segment::create_segment(
                vfs.as_ref(),
                dir,
                1,
                block,
                options.segment_size_bytes,
                if keys.is_some() {
                    segment::CIPHER_AES_256_GCM
                } else {
                    0
                },
            )?;
            segments.push(SegmentFile { first_lsn: 1, path });
        }
        let recovered = recovery::recover(&vfs, &segments, dwb.as_ref(), options.weakness)?;
        if options.prefer_direct_io && !options.direct_io {
            let block = recovered.segments.last().map(|s| s.header.block_size_bytes);
            options.direct_io = direct_io_fits(vfs.as_ref(), &lock_path, block);
        }
        // The set of segments recovery accepted may include a name whose directory sync
        // failed before the last shutdown: make it durable before anything builds on it.
        vfs.sync_dir(dir)
            .map_err(|e| Error::io("sync WAL directory", dir, e))?;
        // Copies of records at or past the recovered end belong to a commit that never
        // completed; their LSNs will be reused, so they must never be found again.
        if let Some(dwb) = &dwb {
            if !options.weakened() {
                dwb.void_from(recovered.next_lsn)?;
            }
        }
        if replace_dwb {
            let aside = dir.join(format!("{DWB_FILE_NAME}.corrupt"));
            vfs.rename(&dwb_path, &aside)
                .map_err(|e| Error::io("move damaged DWB aside", &dwb_path, e))?;
            match DoubleWriteBuffer::open_with(vfs.clone(), &dwb_path, dwb_options(&options)) {
                Ok(fresh) => dwb = Some(fresh),
                Err(e) if options.protection == Protection::Strict => return Err(e),
                Err(_) => dwb_failed = true,
            }
        }
        let report = RecoveryReport {
            first_lsn: recovered.segments[0].file.first_lsn,
            last_lsn: recovered.next_lsn - 1,
            records: recovered.records,
            segments: recovered.segments.len() as u64,
            repaired_from_dwb: recovered.repaired_from_dwb,
            torn_tail_bytes: recovered.torn_tail_bytes,
            duration: started.elapsed(),
        };
        let writer = Writer::new(
            vfs.clone(),
            dir,
            options,
            dwb,
            dwb_failed,
            recovered,
            lock_file,
            keys.clone(),
        )?;
        // None where no commit could use it (`io` then reports none).
        let channel = if options.kernel_completion && writer.takes_durable_writes() {
            vfs.durable_writes()
        } else {
            None
        };
        let durable_ready_fd = channel.as_ref().and_then(|c| c.ready_fd());
        let durable = channel.map(|channel| {
            Mutex::new(Durable {
                channel,
                in_flight: None,
            })
        });
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            vfs,
            options,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            view: Mutex::new(view_of(&writer, &options)),
            writer: Mutex::new(Some(writer)),
            report,
            keys: Mutex::new(keys),
            completion_hook: Mutex::new(None),
            durable,
            durable_ready_fd,
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("doublewrite-commit".into())
                .spawn(move || commit_loop(shared))
                .map_err(|e| Error::io("start commit thread", dir, e))?
        };
        Ok(Wal {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The options in effect: with [`WalOptions::prefer_direct_io`], `direct_io` is what
    /// the open chose, and with [`WalOptions::prefer_direct_dwb`], `dwb_mode` (reopening
    /// elsewhere with these options asks for O_DIRECT outright).
    pub fn options(&self) -> &WalOptions {
        &self.shared.options
    }

    /// What recovery found when this WAL was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.shared.report
    }

    /// LSN the next record will get (once everything queued has committed).
    pub fn next_lsn(&self) -> u64 {
        lock(&self.shared.view).next_lsn
    }

    /// LSN of the newest durable record (0 when none).
    pub fn last_lsn(&self) -> u64 {
        lock(&self.shared.view).next_lsn - 1
    }

    pub fn stats(&self) -> WalStats {
        lock(&self.shared.view).stats
    }

    /// Whether the segments are written with O_DIRECT: [`WalOptions::direct_io`], or what
    /// [`WalOptions::prefer_direct_io`] chose at open.
    pub fn direct_io(&self) -> bool {
        self.shared.options.direct_io
    }

    pub fn protection(&self) -> ProtectionStatus {
        lock(&self.shared.view).protection
    }

    /// Segments retained, oldest first.
    pub fn segments(&self) -> Vec<SegmentFile> {
        lock(&self.shared.view).segments.clone()
    }

    fn enqueue(&self, job: Job) {
        let mut queue = lock(&self.shared.queue);
        if queue.closing {
            drop(queue);
            let closed = || Error::Closed { what: "WAL" };
            match job {
                Job::Append { done, .. } => done(Err(closed())),
                Job::Sync { done } => done(Err(closed())),
                Job::Truncate { done, .. } => done(Err(closed())),
            }
            return;
        }
        queue.jobs.push_back(job);
        drop(queue);
        self.shared.wake.notify_one();
    }

    /// Queues `records` for the next commit; `done` is called (on the commit thread) with
    /// the first LSN once they are durable, or with the error. Invalid records are
    /// rejected at once, without taking an LSN.
    pub fn submit_append(&self, records: Vec<RecordInput>, done: AppendCallback) {
        if let Some(e) = records.iter().find_map(|r| r.check().err()) {
            done(Err(e.into()));
            return;
        }
        self.enqueue(Job::Append { records, done });
    }

    /// [`Wal::submit_append`] for several callers at once: all are queued under one lock
    /// and the commit thread is woken once. Each job still gets its own LSNs and outcome.
    pub fn submit_many(&self, jobs: Vec<(Vec<RecordInput>, AppendCallback)>) {
        self.queue_valid(reject_invalid(jobs));
    }

    /// Queues jobs whose records were checked, under one lock and with one wake-up.
    fn queue_valid(&self, valid: Vec<(Vec<RecordInput>, AppendCallback)>) {
        if valid.is_empty() {
            return;
        }
        let mut queue = lock(&self.shared.queue);
        if queue.closing {
            drop(queue);
            for (_, done) in valid {
                done(Err(Error::wal_closed()));
            }
            return;
        }
        queue.jobs.extend(
            valid
                .into_iter()
                .map(|(records, done)| Job::Append { records, done }),
        );
        drop(queue);
        self.shared.wake.notify_one();
    }

    /// Appends `records` as one commit and returns the LSN of the first once durable.
    ///
    /// When nothing is queued and nothing is committing, the commit runs on the calling
    /// thread, as a blocking call to write and fdatasync would: no wake-up of the commit
    /// thread and back (two scheduler hand-offs, a fifth of a commit's time on a fast
    /// disk). Otherwise it queues behind the earlier work and waits, so LSNs still follow
    /// the order of the calls.
    pub fn append_batch(&self, records: Vec<RecordInput>) -> Result<u64> {
        if let Some(e) = records.iter().find_map(|r| r.check().err()) {
            return Err(e.into());
        }
        if let Some(result) = self.commit_inline(&records) {
            return result;
        }
        let (send, receive) = mpsc::channel();
        // Checked above: queued as is.
        self.enqueue(Job::Append {
            records,
            done: Box::new(move |result| {
                let _ = send.send(result);
            }),
        });
        receive.recv().unwrap_or(Err(Error::Closed { what: "WAL" }))
    }

    /// Commits `records` on this thread if the writer is idle: nothing queued, nothing
    /// committing, not closing. `None` when it is not (the caller queues instead).
    fn commit_inline(&self, records: &[RecordInput]) -> Option<Result<u64>> {
        let _claim = InlineClaim::take(&self.shared)?;
        let mut writer = lock(&self.shared.writer);
        let writer = writer.as_mut()?;
        let result = guarded(writer, |w| w.commit(&[records], false));
        self.shared.publish(writer);
        Some(result)
    }

    /// [`Wal::submit_many`], committed on this thread where it can be: when the WAL was
    /// opened with `kernel_completion` and has the channel, the writer is idle and the
    /// commit is a simple one (`Writer::start_durable_commit`), the jobs become one
    /// commit whose writes (each with its sync: the WAL write, and under `'mirror'` the
    /// DWB copies alongside) are handed to the kernel here, and this returns
    /// at once. The kernel then signals [`Wal::durable_ready_fd`]; [`Wal::reap_durable`]
    /// ends the commit and calls the callbacks and the completion hook — or the commit
    /// thread does, when other work queues behind it or the WAL closes. Anything else is
    /// queued as by [`Wal::submit_many`].
    pub fn submit_durable(&self, jobs: Vec<(Vec<RecordInput>, AppendCallback)>) {
        let Some(durable) = &self.shared.durable else {
            return self.submit_many(jobs);
        };
        let valid = reject_invalid(jobs);
        let bytes: u64 = valid
            .iter()
            .map(|(records, _)| payload_bytes(records))
            .sum();
        if valid.is_empty() || bytes > self.shared.options.max_commit_bytes {
            return self.queue_valid(valid);
        }
        let Some(claim) = InlineClaim::take(&self.shared) else {
            return self.queue_valid(valid);
        };
        let mut durable = lock(durable);
        let started = {
            let mut writer = lock(&self.shared.writer);
            match writer.as_mut() {
                Some(writer) => {
                    let refs: Vec<&[RecordInput]> =
                        valid.iter().map(|(r, _)| r.as_slice()).collect();
                    let channel = durable.channel.as_mut();
                    guarded(writer, |w| w.start_durable_commit(&refs, channel))
                }
                None => Ok(None),
            }
        };
        let Ok(Some(commit)) = started else {
            drop(durable);
            drop(claim);
            return self.queue_valid(valid);
        };
        let jobs = valid
            .into_iter()
            .map(|(records, done)| (records.len() as u64, done))
            .collect();
        durable.in_flight = Some(InFlight { commit, jobs });
        // Marked before the channel is released, so nobody can reap it (and free the
        // writer) before it is known to be in flight.
        claim.keep_for_durable();
        drop(durable);
    }

    /// Ends the commit [`Wal::submit_durable`] started, if its write has completed (with
    /// `wait`, once it has): acknowledges its records, calls their callbacks and the
    /// completion hook on this thread, and frees the writer. `false` when nothing was
    /// in flight, it is still running (without `wait`), or another thread is ending it.
    /// Call it when [`Wal::durable_ready_fd`] becomes readable.
    pub fn reap_durable(&self, wait: bool) -> bool {
        reap_durable(&self.shared, wait, true)
    }

    /// [`Wal::reap_durable`] without waiting and without the completion hook: for a
    /// binding that hands the outcomes to its caller itself, on the thread it reaps on.
    pub fn reap_durable_quietly(&self) -> bool {
        reap_durable(&self.shared, false, false)
    }

    /// The descriptor [`Wal::submit_durable`]'s commits signal when their write completes
    /// (an eventfd: watch it for readability); `None` when this WAL commits every append
    /// on its commit thread.
    pub fn durable_ready_fd(&self) -> Option<i32> {
        self.shared.durable_ready_fd
    }

    /// Whether [`Wal::submit_durable`] can commit on the caller's thread (the WAL was
    /// opened with `kernel_completion` and the file system has the channel).
    pub fn has_durable_writes(&self) -> bool {
        self.shared.durable.is_some()
    }

    /// Appends one record and returns its LSN once durable.
    pub fn append(&self, record: RecordInput) -> Result<u64> {
        self.append_batch(vec![record])
    }

    /// Calls `done` once everything queued before it is durable. Every commit is synced
    /// before it is acknowledged, so this is a barrier; it fails on a poisoned WAL.
    pub fn submit_sync(&self, done: SyncCallback) {
        self.enqueue(Job::Sync { done });
    }

    pub fn sync(&self) -> Result<()> {
        let (send, receive) = mpsc::channel();
        self.submit_sync(Box::new(move |result| {
            let _ = send.send(result);
        }));
        receive.recv().unwrap_or(Err(Error::Closed { what: "WAL" }))
    }

    /// Queues a checkpoint: removes whole segments holding only records below `lsn`.
    pub fn submit_truncate_before(&self, lsn: u64, done: TruncateCallback) {
        self.enqueue(Job::Truncate { lsn, done });
    }

    pub fn truncate_before(&self, lsn: u64) -> Result<u64> {
        let (send, receive) = mpsc::channel();
        self.submit_truncate_before(
            lsn,
            Box::new(move |result| {
                let _ = send.send(result);
            }),
        );
        receive.recv().unwrap_or(Err(Error::Closed { what: "WAL" }))
    }

    /// Durable records from `from_lsn` (0: from the oldest retained) to the newest
    /// acknowledged when this is called, in LSN order. Records of types not in
    /// `known_types` (default: [`RecordType::BUILT_IN`]) are skipped when optional and
    /// end the replay with an error when required.
    pub fn replay(&self, from_lsn: u64, known_types: Option<BTreeSet<u32>>) -> Result<Replay> {
        let view = lock(&self.shared.view).clone();
        let first = view.segments.first().map_or(view.next_lsn, |s| s.first_lsn);
        if from_lsn != 0 && from_lsn < first {
            return Err(Error::InvalidOptions {
                detail: format!(
                    "fromLsn {from_lsn} is below the oldest retained record (LSN {first}): earlier records were truncated"
                ),
            });
        }
        let known = known_types.unwrap_or_else(|| RecordType::BUILT_IN.into_iter().collect());
        Ok(Replay::new(
            self.shared.vfs.clone(),
            view.segments,
            view.end,
            view.next_lsn,
            from_lsn.max(first),
            known,
            lock(&self.shared.keys).clone(),
        ))
    }

    /// Waits for queued commits, stops the commit thread and releases the directory lock.
    /// Idempotent.
    pub fn close(&self) -> Result<()> {
        lock(&self.shared.queue).closing = true;
        self.shared.wake.notify_all();
        let handle = lock(&self.thread).take();
        lock(&self.shared.keys).take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                return Err(Error::WalPoisoned {
                    detail: "the commit thread panicked".into(),
                });
            }
        }
        Ok(())
    }

    /// Sets `hook` to run on the commit thread each time it has called the callbacks of
    /// one unit of work (a group commit: every append merged into it; or a sync or a
    /// truncation). A binding that batches outcomes uses it to hand over all the outcomes
    /// of a commit at once instead of waking its event loop at the first callback. It
    /// must not block; it does not run for callbacks called on the submitting thread
    /// (invalid records, a closed WAL).
    pub fn set_completion_hook(&self, hook: Option<CompletionHook>) {
        *lock(&self.shared.completion_hook) = hook;
    }

    /// Test hook: while `held`, queued appends wait; releasing lets the commit thread
    /// merge everything queued into as few commits as the size limit allows.
    #[doc(hidden)]
    pub fn hold_commits(&self, held: bool) {
        lock(&self.shared.queue).held = held;
        self.shared.wake.notify_all();
    }

    /// Test hook: whether the writer is idle (nothing queued, committing or claimed), so
    /// that the next append may commit on its caller's thread.
    #[doc(hidden)]
    pub fn is_idle(&self) -> bool {
        let queue = lock(&self.shared.queue);
        !queue.committing && !queue.inline && queue.jobs.is_empty()
    }

    pub fn is_closed(&self) -> bool {
        lock(&self.shared.queue).closing
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn view_of(writer: &Writer, options: &WalOptions) -> View {
    let mut stats = writer.stats;
    stats.dwb_bytes_written = writer.dwb().map_or(0, |d| d.bytes_written());
    View {
        next_lsn: writer.next_lsn(),
        segments: writer.segments.clone(),
        end: writer.end_position(),
        stats,
        protection: ProtectionStatus {
            policy: options.protection,
            tail_protection: options.tail_protection,
            state: writer.protection_state(),
            unprotected_records: stats.unprotected_records,
        },
    }
}

/// A blocking caller's claim on the writer (`Queue::inline`), released on drop, even by a
/// panic, so that the commit thread never waits for a claim nobody holds.
struct InlineClaim<'a> {
    shared: &'a Shared,
}

impl<'a> InlineClaim<'a> {
    /// Claims the writer if it is idle: nothing queued, nothing committing, not held, not
    /// closing. Decided under the queue's lock, like the commit thread's taking of work.
    fn take(shared: &'a Shared) -> Option<InlineClaim<'a>> {
        let mut queue = lock(&shared.queue);
        let idle = !queue.committing
            && !queue.inline
            && !queue.held
            && !queue.closing
            && queue.jobs.is_empty();
        if !idle {
            return None;
        }
        queue.inline = true;
        Some(InlineClaim { shared })
    }
}

impl InlineClaim<'_> {
    /// Keeps the claim for the commit in flight through [`DurableWrites`]: it is released
    /// when that commit is reaped ([`reap_durable`]). Work already queued behind it gets
    /// the commit thread, which then reaps it.
    fn keep_for_durable(self) {
        let mut queue = lock(&self.shared.queue);
        queue.durable_in_flight = true;
        let waiting = !queue.jobs.is_empty() || queue.closing;
        drop(queue);
        if waiting {
            self.shared.wake.notify_one();
        }
        std::mem::forget(self);
    }
}

impl Drop for InlineClaim<'_> {
    fn drop(&mut self) {
        release_inline(self.shared);
    }
}

/// Ends a blocking caller's claim or a durable commit's (`Queue::inline`).
fn release_inline(shared: &Shared) {
    let mut queue = lock(&shared.queue);
    queue.inline = false;
    queue.durable_in_flight = false;
    let waiting = !queue.jobs.is_empty() || queue.closing;
    drop(queue);
    if waiting {
        shared.wake.notify_one();
    }
}

/// See [`Wal::reap_durable`]; `hook`: run the completion hook after the callbacks.
fn reap_durable(shared: &Shared, wait: bool, hook: bool) -> bool {
    let Some(durable) = &shared.durable else {
        return false;
    };
    let mut durable = if wait {
        lock(durable)
    } else {
        match durable.try_lock() {
            Ok(durable) => durable,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        }
    };
    if durable.in_flight.is_none() {
        // A completion's signal can outlive its reaping (the kernel signals after it
        // queues the event, and the commit thread may have reaped it): clear it, or an
        // event loop watching the descriptor would find it readable turn after turn.
        let _ = durable.channel.finish(false);
        return false;
    }
    let Some(outcomes) = durable.channel.finish(wait) else {
        return false;
    };
    let InFlight { commit, jobs } = durable.in_flight.take().expect("checked above");
    let result = {
        let mut writer = lock(&shared.writer);
        let writer = writer
            .as_mut()
            .expect("the writer lives while a commit is in flight");
        let result = guarded(writer, |w| w.finish_durable_commit(commit, outcomes, true));
        shared.publish(writer);
        result
    };
    drop(durable);
    release_inline(shared);
    for_each_outcome(&result, jobs, |done, outcome| done(outcome));
    if hook {
        shared.run_completion_hook();
    }
    true
}

/// Each job's outcome of a commit whose first LSN (or error) is `result`: the job of
/// `count` records gets the LSN after the previous job's, in order.
fn for_each_outcome(
    result: &Result<u64>,
    jobs: impl IntoIterator<Item = (u64, AppendCallback)>,
    mut deliver: impl FnMut(AppendCallback, Result<u64>),
) {
    let mut lsn = result.as_ref().copied().unwrap_or(0);
    for (count, done) in jobs {
        let outcome = match result {
            Ok(_) => Ok(lsn),
            Err(e) => Err(e.clone()),
        };
        deliver(done, outcome);
        lsn += count;
    }
}

/// Calls `done` with its error for every job holding an invalid record; returns the rest.
/// An invalid record takes no LSN.
fn reject_invalid(
    jobs: Vec<(Vec<RecordInput>, AppendCallback)>,
) -> Vec<(Vec<RecordInput>, AppendCallback)> {
    let mut valid = Vec::with_capacity(jobs.len());
    for (records, done) in jobs {
        match records.iter().find_map(|r| r.check().err()) {
            Some(e) => done(Err(e.into())),
            None => valid.push((records, done)),
        }
    }
    valid
}

fn payload_bytes(records: &[RecordInput]) -> u64 {
    records.iter().map(|r| r.payload.len() as u64).sum()
}

/// Takes the next unit of work: consecutive appends up to the commit size limit, or one
/// other job. `None` once closing and drained. Called by the commit thread when its
/// previous unit is finished; waits while a blocking caller commits inline.
fn next_jobs(shared: &Shared, poller: &mut Poller) -> Option<Vec<Job>> {
    let waiting =
        |queue: &Queue| queue.inline || ((queue.jobs.is_empty() || queue.held) && !queue.closing);
    let mut queue = lock(&shared.queue);
    queue.committing = false;
    if waiting(&queue) && poller.may_poll() {
        drop(queue);
        poller.poll(|| !waiting(&lock(&shared.queue)));
        queue = lock(&shared.queue);
    }
    while waiting(&queue) {
        if queue.durable_in_flight && (!queue.jobs.is_empty() || queue.closing) {
            // Work waits behind a commit in flight in the kernel: end it here rather
            // than wait for its caller (who may be blocked on that very work).
            drop(queue);
            reap_durable(shared, true, true);
            queue = lock(&shared.queue);
            continue;
        }
        queue = shared
            .wake
            .wait(queue)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
    }
    let first = queue.jobs.pop_front()?;
    queue.committing = true;
    let mut jobs = vec![first];
    if let Job::Append { records, .. } = &jobs[0] {
        let mut bytes = payload_bytes(records);
        while let Some(Job::Append { records, .. }) = queue.jobs.front() {
            let more = payload_bytes(records);
            if bytes + more > shared.options.max_commit_bytes {
                break;
            }
            bytes += more;
            jobs.push(queue.jobs.pop_front().expect("front exists"));
        }
    }
    Some(jobs)
}

fn commit_loop(shared: Arc<Shared>) {
    let mut poller = Poller::new();
    while let Some(jobs) = next_jobs(&shared, &mut poller) {
        let completions = {
            let mut writer = lock(&shared.writer);
            let writer = writer
                .as_mut()
                .expect("the writer lives until the commit thread ends");
            let completions = run_jobs(writer, jobs);
            shared.publish(writer);
            completions
        };
        for complete in completions {
            complete();
        }
        // Free once every outcome of the unit is delivered (so a commit started on a
        // caller's thread reports after them) and before the hook tells anyone: a caller
        // that commits again as soon as it hears finds the writer idle, not this thread
        // still between two units of work.
        lock(&shared.queue).committing = false;
        shared.run_completion_hook();
    }
    // Closed and drained: release the segments, the DWB and the directory lock now, so
    // that `close` returning means they are released.
    drop(lock(&shared.writer).take());
}

type Completion = Box<dyn FnOnce() + Send>;

/// Runs one unit of work and returns the callbacks to invoke once the view is updated.
fn run_jobs(writer: &mut Writer, jobs: Vec<Job>) -> Vec<Completion> {
    let mut completions: Vec<Completion> = Vec::with_capacity(jobs.len());
    if matches!(jobs[0], Job::Append { .. }) {
        let mut batch = Vec::with_capacity(jobs.len());
        for job in jobs {
            if let Job::Append { records, done } = job {
                batch.push((records, done));
            }
        }
        let result = {
            let refs: Vec<&[RecordInput]> = batch.iter().map(|(r, _)| r.as_slice()).collect();
            guarded(writer, |w| w.commit(&refs, false))
        };
        let jobs = batch
            .into_iter()
            .map(|(records, done)| (records.len() as u64, done));
        for_each_outcome(&result, jobs, |done, outcome| {
            completions.push(Box::new(move || done(outcome)));
        });
        return completions;
    }
    for job in jobs {
        match job {
            Job::Sync { done } => {
                let outcome = match writer.is_poisoned() {
                    Some(detail) => Err(Error::WalPoisoned {
                        detail: detail.to_string(),
                    }),
                    None => Ok(()),
                };
                completions.push(Box::new(move || done(outcome)));
            }
            Job::Truncate { lsn, done } => {
                let outcome = guarded(writer, |w| w.truncate_before(lsn));
                completions.push(Box::new(move || done(outcome)));
            }
            Job::Append { .. } => unreachable!("appends are batched above"),
        }
    }
    completions
}

/// Runs `f`; a panic inside (a bug) poisons nothing silently: it becomes an error for the
/// callers, and the writer refuses further work.
fn guarded<T>(writer: &mut Writer, f: impl FnOnce(&mut Writer) -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(|| f(writer))) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            let detail = format!("internal error in the commit thread: {message}");
            writer.poison(detail.clone());
            Err(Error::WalPoisoned { detail })
        }
    }
}

#[cfg(test)]
mod tests;
