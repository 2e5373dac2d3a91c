//! The double-write buffer: a fixed-size file holding checksummed copies of WAL records.
//!
//! ```text
//! file   = header block | ring
//! header = one block (block_size bytes), written once at creation:
//!   offset size field
//!        0    4 magic              b"DBLW"
//!        4    2 format_version     1
//!        6    2 reserved           0
//!        8    4 block_size_bytes   direct-I/O alignment detected at creation (>= 512)
//!       12    4 slot_stride_bytes  round_up(FRAME_PREFIX_SIZE + max_record_bytes, block)
//!       16    4 capacity           slots: the ring holds at least this many max-size records
//!       20    4 max_record_bytes   largest record (header + payload) a slot holds
//!       24    8 salt               random at creation; mixed into every frame's CRC
//!       32    4 crc32c             CRC-32C of bytes 0..32
//!       36    …  zeros to the end of the block
//! ring   = capacity × slot_stride bytes of frames. A flush writes its frames back to back
//!          starting on a block boundary (wrapping to the ring start when they do not fit
//!          before its end); the next flush starts on the next block boundary.
//! frame  = prefix | record (byte-exact copy of the WAL record)
//!   offset size field
//!        0    4 magic              b"DWFR"
//!        4    4 record_len         bytes of the record that follows
//!        8    8 seq                grows by one with every frame written, across reopens
//!       16    4 reserved           0
//!       20    4 crc32c             CRC-32C of the salt (8 bytes LE) followed by bytes 0..20
//! ```
//!
//! A copy is returned only if its prefix CRC and its record CRC both verify; among valid
//! copies of one LSN the highest `seq` wins. Opening reads the ring once, sequentially,
//! and indexes the frames by ring position (what a flush replaces); the first lookup by
//! LSN after a change builds an LSN index from it, so lookups read one frame.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::align::{round_down, round_up, AlignedBuf, DEFAULT_ALIGNMENT};
use crate::error::{Error, Result};
use crate::io::{self, FileKind, OpenOptions, StdVfs, Vfs, VfsFile};
use crate::record::{self, check_encoded, read_u32, read_u64, WalRecord, HEADER_SIZE};

/// `b"DBLW"`: first bytes of a DWB file.
pub const DWB_MAGIC: [u8; 4] = *b"DBLW";
/// `b"DWFR"`: first bytes of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"DWFR";
pub const DWB_FORMAT_VERSION: u16 = 1;
/// Size of the checksummed prefix in front of every record copy.
pub const FRAME_PREFIX_SIZE: usize = 24;
/// Bytes of the file header that carry fields (the rest of its block is zeros).
const HEADER_FIELDS_SIZE: usize = 36;
pub const DEFAULT_CAPACITY: u32 = 64;
pub const DEFAULT_MAX_RECORD_BYTES: u32 = 64 * 1024;
/// Largest capacity accepted, so a typo cannot ask for a terabyte file.
pub const MAX_CAPACITY: u32 = 1 << 16;
/// Largest block size accepted in a header.
pub const MAX_BLOCK_BYTES: u32 = 64 * 1024;
/// Size of the reads that scan the ring at open.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

const _: () = assert!(FRAME_PREFIX_SIZE.is_multiple_of(8));
const _: () = assert!(
    HEADER_FIELDS_SIZE <= 512,
    "the DWB header must fit in one sector"
);

static DWB_BYTES_WRITTEN_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Bytes written to DWB files by this process (all buffers, all threads): what the device
/// was asked to write, padding included in direct mode, header and preallocation included.
pub fn dwb_bytes_written_total() -> u64 {
    DWB_BYTES_WRITTEN_TOTAL.load(Ordering::Relaxed)
}

fn count_written(bytes: usize) {
    DWB_BYTES_WRITTEN_TOTAL.fetch_add(bytes as u64, Ordering::Relaxed);
}

/// How the DWB file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DwbMode {
    /// No double-write buffer. Opening one in this mode is an error.
    Off,
    /// Through the page cache, made durable with fdatasync.
    Buffered,
    /// Bypassing the page cache (O_DIRECT on Linux, F_NOCACHE on macOS); aligned writes
    /// of the blocks that hold data, zero-padded. Elsewhere: an error, never a fallback.
    Direct,
}

impl DwbMode {
    /// The mode that matches a parent WAL: direct if it uses direct I/O, else buffered.
    pub fn default_for_parent(parent_uses_direct_io: bool) -> DwbMode {
        if parent_uses_direct_io {
            DwbMode::Direct
        } else {
            DwbMode::Buffered
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DwbMode::Off => "off",
            DwbMode::Buffered => "buffered",
            DwbMode::Direct => "direct",
        }
    }

    pub fn parse(text: &str) -> Option<DwbMode> {
        match text {
            "off" => Some(DwbMode::Off),
            "buffered" => Some(DwbMode::Buffered),
            "direct" => Some(DwbMode::Direct),
            _ => None,
        }
    }
}

/// Options for [`DoubleWriteBuffer::open`]. Capacity and record size apply when the file
/// is created; on an existing file they must match its geometry or be `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DwbOptions {
    pub mode: DwbMode,
    pub capacity: Option<u32>,
    pub max_record_bytes: Option<u32>,
}

impl DwbOptions {
    pub fn new(mode: DwbMode) -> DwbOptions {
        DwbOptions {
            mode,
            capacity: None,
            max_record_bytes: None,
        }
    }
}

/// The outcome of staging a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a skipped record is not protected"]
pub enum DwbMirror {
    /// The copy is staged and will be durable after the next flush.
    Mirrored,
    /// The record is larger than a slot; it has no copy (and is counted).
    Skipped(SkipReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    TooLarge { size_bytes: u64, max_bytes: u64 },
}

/// The fixed layout of a DWB file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub block_size_bytes: u32,
    pub slot_stride_bytes: u32,
    pub capacity: u32,
    pub max_record_bytes: u32,
    /// Random per file, mixed into every frame's CRC: bytes that merely look like a frame
    /// (a record payload that embeds one, copied into the ring) never verify.
    pub salt: u64,
}

impl Geometry {
    fn new(block_size_bytes: u32, capacity: u32, max_record_bytes: u32, salt: u64) -> Geometry {
        let stride = round_up(
            (FRAME_PREFIX_SIZE as u64) + u64::from(max_record_bytes),
            u64::from(block_size_bytes),
        );
        Geometry {
            block_size_bytes,
            slot_stride_bytes: stride as u32,
            capacity,
            max_record_bytes,
            salt,
        }
    }
    /// Offset of the ring: the header takes the first block.
    pub fn ring_offset_bytes(&self) -> u64 {
        u64::from(self.block_size_bytes)
    }
    pub fn ring_bytes(&self) -> u64 {
        u64::from(self.capacity) * u64::from(self.slot_stride_bytes)
    }
    pub fn file_bytes(&self) -> u64 {
        self.ring_offset_bytes() + self.ring_bytes()
    }
    /// Offset of slot `index`: where a max-size record written alone would start.
    pub fn slot_offset_bytes(&self, index: u32) -> u64 {
        self.ring_offset_bytes()
            + u64::from(index % self.capacity) * u64::from(self.slot_stride_bytes)
    }

    fn encode(&self) -> [u8; HEADER_FIELDS_SIZE] {
        let mut out = [0u8; HEADER_FIELDS_SIZE];
        out[0..4].copy_from_slice(&DWB_MAGIC);
        out[4..6].copy_from_slice(&DWB_FORMAT_VERSION.to_le_bytes());
        out[8..12].copy_from_slice(&self.block_size_bytes.to_le_bytes());
        out[12..16].copy_from_slice(&self.slot_stride_bytes.to_le_bytes());
        out[16..20].copy_from_slice(&self.capacity.to_le_bytes());
        out[20..24].copy_from_slice(&self.max_record_bytes.to_le_bytes());
        out[24..32].copy_from_slice(&self.salt.to_le_bytes());
        let crc = crc32c::crc32c(&out[..32]);
        out[32..36].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> std::result::Result<Geometry, String> {
        if bytes.len() < HEADER_FIELDS_SIZE {
            return Err(format!(
                "file is {} bytes, shorter than a header",
                bytes.len()
            ));
        }
        if bytes[0..4] != DWB_MAGIC {
            return Err(format!(
                "magic is {:02x?}, expected {DWB_MAGIC:02x?} (\"DBLW\"): not a double-write buffer",
                &bytes[0..4]
            ));
        }
        let stored_crc = read_u32(bytes, 32);
        let actual_crc = crc32c::crc32c(&bytes[..32]);
        if stored_crc != actual_crc {
            return Err(format!(
                "header checksum mismatch (stored {stored_crc:#010x}, computed {actual_crc:#010x})"
            ));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != DWB_FORMAT_VERSION {
            return Err(format!(
                "format version {version} is not supported (this build reads {DWB_FORMAT_VERSION})"
            ));
        }
        let geometry = Geometry {
            block_size_bytes: read_u32(bytes, 8),
            slot_stride_bytes: read_u32(bytes, 12),
            capacity: read_u32(bytes, 16),
            max_record_bytes: read_u32(bytes, 20),
            salt: read_u64(bytes, 24),
        };
        // Ranges first: the expected geometry is computed only from sane values.
        let sane = geometry.block_size_bytes.is_power_of_two()
            && (512..=MAX_BLOCK_BYTES).contains(&geometry.block_size_bytes)
            && (1..=MAX_CAPACITY).contains(&geometry.capacity)
            && (HEADER_SIZE as u32..=record::MAX_PAYLOAD_BYTES)
                .contains(&geometry.max_record_bytes)
            && Geometry::new(
                geometry.block_size_bytes,
                geometry.capacity,
                geometry.max_record_bytes,
                geometry.salt,
            ) == geometry;
        if !sane {
            return Err(format!("header holds an impossible geometry {geometry:?}"));
        }
        Ok(geometry)
    }
}

/// One DWB frame as found on disk, and whether it still verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCheck {
    pub lsn: u64,
    pub seq: u64,
    pub ring_offset: u64,
    pub record_len: u32,
    pub valid: bool,
}

/// One indexed copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameRef {
    lsn: u64,
    seq: u64,
    ring_pos: u64,
    record_len: u32,
}

impl FrameRef {
    /// Ring position just past the frame.
    fn end(&self) -> u64 {
        self.ring_pos + FRAME_PREFIX_SIZE as u64 + u64::from(self.record_len)
    }
}

/// Where a flush starts in the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// At the next block boundary after the last flush (back at 0 when it does not fit
    /// before the end).
    Next,
    /// At the next page boundary of the file, so that writing it rewrites no page holding
    /// an earlier flush's bytes (back at the first page when it does not fit).
    OwnPage,
}

/// A staged copy: (LSN, offset of its frame in `Staging::frames`, record length).
type StagedEntry = (u64, usize, u32);

/// Copies staged since the last flush, laid out as frames with blank prefixes.
#[derive(Debug)]
struct Staging {
    frames: AlignedBuf,
    entries: Vec<StagedEntry>,
    /// The buffers of a flush that ended, kept for the next one: a flush then allocates
    /// (and zeroes) nothing. See [`DoubleWriteBuffer::reuse`].
    spare_frames: Option<AlignedBuf>,
    spare_entries: Vec<StagedEntry>,
}

/// Largest flush buffer kept for reuse: a rare large flush's memory is given back.
const SPARE_MAX_BYTES: usize = 1 << 20;

/// A flush whose write is in the caller's hands ([`DoubleWriteBuffer::prepare_flush`]):
/// its ring span and the copies it holds.
#[derive(Debug)]
pub struct PreparedFlush {
    start: u64,
    end: u64,
    first_seq: u64,
    entries: Vec<StagedEntry>,
}

impl PreparedFlush {
    /// Bytes of its write (whole blocks).
    pub fn write_len(&self) -> u64 {
        self.end - self.start
    }
}

/// Everything that touches the file, behind one lock.
struct Ring {
    file: Arc<dyn VfsFile>,
    /// Ring-relative offset where the next flush starts (block-aligned).
    write_pos: u64,
    next_seq: u64,
    /// Every indexed copy by ring position: a flush adds its frames and drops the ones its
    /// span overwrites (a range of this map), with no allocation per frame.
    frames: BTreeMap<u64, FrameRef>,
    /// LSN → ring positions of its copies: built by the first lookup by LSN (recovery)
    /// and dropped by any change to `frames`, so flushes, which never look up by LSN, do
    /// not pay for it.
    by_lsn: Option<HashMap<u64, Vec<u64>>>,
    /// A span whose frames must be zeroed by the next flush, before that flush's sync:
    /// copies from a failed flush, or a retracted one (see `retract_last_flush`).
    erase: Option<(u64, u64)>,
    /// Ring span of the last successful flush.
    last_flush: Option<(u64, u64)>,
    /// Largest frame indexed: how far back an overlapping frame can start.
    largest_frame_bytes: u64,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("write_pos", &self.write_pos)
            .field("next_seq", &self.next_seq)
            .field("indexed_frames", &self.frames.len())
            .finish()
    }
}

/// A double-write buffer. All methods take `&self`: staging a copy never waits for a
/// flush in progress on another thread, and flushes and lookups are serialized.
#[derive(Debug)]
pub struct DoubleWriteBuffer {
    path: PathBuf,
    mode: DwbMode,
    geometry: Geometry,
    staging: Mutex<Staging>,
    ring: Mutex<Ring>,
    skipped_records: AtomicU64,
    bytes_written: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl DoubleWriteBuffer {
    /// Opens or creates the DWB at `path` on the real file system.
    pub fn open(path: impl AsRef<Path>, options: DwbOptions) -> Result<DoubleWriteBuffer> {
        DoubleWriteBuffer::open_with(Arc::new(StdVfs), path.as_ref(), options)
    }

    /// Opens or creates the DWB at `path` on `vfs`.
    ///
    /// # Errors
    /// [`Error::DwbOff`] for mode `Off`; [`Error::DwbCorrupt`] when the file is not a DWB
    /// or its header is damaged (damaged *frames* are not an error: they are empty slots);
    /// [`Error::DwbGeometryMismatch`] when options contradict the file;
    /// [`Error::DirectIoUnsupported`]; [`Error::WrongFileKind`] for a directory.
    pub fn open_with(
        vfs: Arc<dyn Vfs>,
        path: &Path,
        options: DwbOptions,
    ) -> Result<DoubleWriteBuffer> {
        if options.mode == DwbMode::Off {
            return Err(Error::DwbOff);
        }
        check_options(&options)?;
        let kind = vfs.kind(path).map_err(|e| Error::io("inspect", path, e))?;
        match kind {
            Some(FileKind::Directory) | Some(FileKind::Other) => {
                return Err(Error::WrongFileKind {
                    path: path.to_path_buf(),
                    detail: "is a directory (or not a regular file); give the path of a .dwb file",
                })
            }
            None => create_file(vfs.as_ref(), path, &options)?,
            Some(FileKind::File) => {}
        }
        let direct = options.mode == DwbMode::Direct;
        let file = vfs
            .open(path, OpenOptions::read_write().with_direct(direct))
            .map_err(|e| open_error(path, e))?;
        let geometry = read_geometry(file.as_ref(), path, direct)?;
        check_geometry_matches(path, &geometry, &options)?;
        if direct {
            let alignment = file.direct_io_alignment().unwrap_or(DEFAULT_ALIGNMENT);
            if !(geometry.block_size_bytes as usize).is_multiple_of(alignment) {
                return Err(Error::DirectIoUnsupported {
                    path: path.to_path_buf(),
                    detail: format!(
                        "the file uses {}-byte blocks but direct I/O here needs {alignment}-byte alignment",
                        geometry.block_size_bytes
                    ),
                });
            }
        }
        DoubleWriteBuffer::from_file(file, path, geometry, options.mode)
    }

    /// Opens an existing DWB for reading only: nothing is created or written (for
    /// verification tools). Flushing it fails.
    pub fn open_read_only(vfs: Arc<dyn Vfs>, path: &Path) -> Result<DoubleWriteBuffer> {
        let file = vfs
            .open(path, OpenOptions::read_only())
            .map_err(|e| Error::io("open double-write buffer", path, e))?;
        let geometry = read_geometry(file.as_ref(), path, false)?;
        DoubleWriteBuffer::from_file(file, path, geometry, DwbMode::Buffered)
    }

    /// Checks the file is as long as its geometry says and indexes its ring.
    fn from_file(
        file: Box<dyn VfsFile>,
        path: &Path,
        geometry: Geometry,
        mode: DwbMode,
    ) -> Result<DoubleWriteBuffer> {
        let len = file.len().map_err(|e| Error::io("measure", path, e))?;
        if len < geometry.file_bytes() {
            return Err(Error::DwbCorrupt {
                path: path.to_path_buf(),
                detail: format!(
                    "file is {len} bytes but its geometry needs {}",
                    geometry.file_bytes()
                ),
            });
        }
        let ring = scan_ring(file, path, &geometry, mode == DwbMode::Direct)?;
        let block = geometry.block_size_bytes as usize;
        Ok(DoubleWriteBuffer {
            path: path.to_path_buf(),
            mode,
            geometry,
            staging: Mutex::new(Staging {
                frames: AlignedBuf::new(block * 4, block),
                entries: Vec::new(),
                spare_frames: None,
                spare_entries: Vec::new(),
            }),
            ring: Mutex::new(ring),
            skipped_records: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
        })
    }

    /// Reads every indexed frame back and checks its prefix and record CRC.
    pub fn check_frames(&self) -> Result<Vec<FrameCheck>> {
        let ring = lock(&self.ring);
        let mut out = Vec::new();
        for frame in ring.frames.values() {
            let lsn = frame.lsn;
            let valid = match self.read_frame(ring.file.as_ref(), *frame)? {
                Some(record) => check_encoded(&record)
                    .is_ok_and(|(h, _)| h.lsn == lsn && h.record_len() == record.len()),
                None => false,
            };
            out.push(FrameCheck {
                lsn,
                seq: frame.seq,
                ring_offset: frame.ring_pos,
                record_len: frame.record_len,
                valid,
            });
        }
        out.sort_by_key(|f| f.seq);
        Ok(out)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn mode(&self) -> DwbMode {
        self.mode
    }
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }
    pub fn capacity(&self) -> u32 {
        self.geometry.capacity
    }
    pub fn max_record_bytes(&self) -> u32 {
        self.geometry.max_record_bytes
    }
    pub fn slot_stride(&self) -> u32 {
        self.geometry.slot_stride_bytes
    }
    /// Records refused because they are larger than a slot.
    pub fn skipped_records(&self) -> u64 {
        self.skipped_records.load(Ordering::Relaxed)
    }
    /// Bytes this buffer's flushes wrote (padding included in direct mode).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }
    /// Drops the copies staged and not yet flushed.
    pub fn discard_pending(&self) {
        let mut staging = lock(&self.staging);
        staging.frames.clear();
        staging.entries.clear();
    }
    /// Number of copies staged and not yet flushed.
    pub fn pending_records(&self) -> usize {
        lock(&self.staging).entries.len()
    }

    /// Stages a copy of `record`; it is durable after the next [`flush`](Self::flush).
    pub fn write_record_deferred(&self, record: &WalRecord) -> Result<DwbMirror> {
        record.verify_checksum()?;
        let mut encoded = Vec::with_capacity(record.encoded_len());
        record.encode_into(&mut encoded);
        self.stage(&encoded, record.lsn())
    }

    /// Stages a copy of an encoded record after verifying it (a copy of garbage would
    /// protect nothing).
    pub fn write_encoded_deferred(&self, encoded: &[u8]) -> Result<DwbMirror> {
        let (header, _) = check_encoded(encoded)?;
        if header.record_len() != encoded.len() {
            return Err(record::RecordError::TrailingBytes {
                extra_bytes: (encoded.len() - header.record_len()) as u64,
            }
            .into());
        }
        self.stage(encoded, header.lsn)
    }

    fn stage(&self, encoded: &[u8], lsn: u64) -> Result<DwbMirror> {
        let max = self.geometry.max_record_bytes as usize;
        if encoded.len() > max {
            self.skipped_records.fetch_add(1, Ordering::Relaxed);
            return Ok(DwbMirror::Skipped(SkipReason::TooLarge {
                size_bytes: encoded.len() as u64,
                max_bytes: max as u64,
            }));
        }
        let frame_len = FRAME_PREFIX_SIZE + encoded.len();
        let mut staging = lock(&self.staging);
        if (staging.frames.len() + frame_len) as u64 > self.geometry.ring_bytes() {
            // The staged frames would not fit in the ring: make the earlier ones durable
            // first rather than let this flush overwrite its own copies.
            drop(staging);
            self.flush()?;
            staging = lock(&self.staging);
        }
        let at = staging.frames.len();
        staging.frames.resize_zeroed(at + FRAME_PREFIX_SIZE);
        staging.frames.extend_from_slice(encoded);
        staging.entries.push((lsn, at, encoded.len() as u32));
        Ok(DwbMirror::Mirrored)
    }

    /// Stages and flushes one copy.
    pub fn write_record(&self, record: &WalRecord) -> Result<DwbMirror> {
        let outcome = self.write_record_deferred(record)?;
        self.flush()?;
        Ok(outcome)
    }

    /// Writes every staged copy in one write and makes it durable with one fdatasync.
    /// Does nothing when nothing is staged (and nothing is waiting to be erased). On
    /// failure the copies stay staged, so a retry writes them again, and whatever this
    /// attempt wrote is zeroed by the next flush.
    pub fn flush(&self) -> Result<()> {
        let mut ring = lock(&self.ring);
        let Some((mut frames, entries)) = self.take_staged(&ring) else {
            return Ok(());
        };
        match self.flush_frames(&mut ring, &mut frames, &entries, Placement::Next, |file| {
            file.sync_data()
        }) {
            Ok(()) => {
                self.reuse(Some(frames), entries);
                Ok(())
            }
            Err(e) => {
                // Put the copies back in front of anything staged meanwhile.
                let mut staging = lock(&self.staging);
                let later_frames = std::mem::replace(&mut staging.frames, frames);
                let offset = staging.frames.len();
                staging.frames.extend_from_slice(later_frames.as_slice());
                let later_entries = std::mem::replace(&mut staging.entries, entries);
                staging.entries.extend(
                    later_entries
                        .into_iter()
                        .map(|(lsn, at, len)| (lsn, at + offset, len)),
                );
                Err(e)
            }
        }
    }

    /// Voids the copies of the last flush: its span is zeroed by the next flush and the
    /// ring rewinds to reuse it. The WAL calls this after a commit failed *after* its DWB
    /// flush: the commit's LSNs will be reused, and a copy of a record that was refused
    /// must never be mistaken later for the record that reuses its LSN. The caller must
    /// have nothing in flight that the voided copies protect.
    pub fn retract_last_flush(&self) {
        let mut ring = lock(&self.ring);
        let Some((start, end)) = ring.last_flush.take() else {
            return;
        };
        add_erase(&mut ring, start, end);
        evict(&mut ring, start, end);
        ring.write_pos = start;
    }

    /// Zeroes (durably) every copy of an LSN at or above `lsn` and returns how many there
    /// were. Recovery calls this once the log is repaired and synced and ends before
    /// `lsn`: those copies belong to a commit that never completed, and the LSNs will be
    /// reused. Other copies in the zeroed span are lost too, which is harmless then.
    pub fn void_from(&self, lsn: u64) -> Result<usize> {
        let block = u64::from(self.geometry.block_size_bytes);
        let mut ring = lock(&self.ring);
        let stale: Vec<FrameRef> = ring
            .frames
            .values()
            .filter(|f| f.lsn >= lsn)
            .copied()
            .collect();
        for frame in &stale {
            let start = round_down(frame.ring_pos, block);
            let end = round_up(
                frame.ring_pos + FRAME_PREFIX_SIZE as u64 + u64::from(frame.record_len),
                block,
            );
            add_erase(&mut ring, start, end);
        }
        if let Some((start, end)) = ring.erase {
            evict(&mut ring, start, end);
        }
        drop(ring);
        if !stale.is_empty() {
            self.flush()?;
        }
        Ok(stale.len())
    }

    /// Takes the staged copies for a flush: `None` when nothing is staged and nothing is
    /// waiting to be erased.
    fn take_staged(&self, ring: &Ring) -> Option<(AlignedBuf, Vec<StagedEntry>)> {
        let mut staging = lock(&self.staging);
        if staging.entries.is_empty() && ring.erase.is_none() {
            return None;
        }
        let block = self.geometry.block_size_bytes as usize;
        let fresh =
            (staging.spare_frames.take()).unwrap_or_else(|| AlignedBuf::new(block * 4, block));
        let taken = std::mem::replace(&mut staging.frames, fresh);
        let fresh_entries = std::mem::take(&mut staging.spare_entries);
        Some((
            taken,
            std::mem::replace(&mut staging.entries, fresh_entries),
        ))
    }

    /// Keeps the buffers of a flush that ended for the next one (emptied; a buffer of
    /// another alignment or over [`SPARE_MAX_BYTES`] is dropped instead).
    fn reuse(&self, frames: Option<AlignedBuf>, mut entries: Vec<StagedEntry>) {
        let block = self.geometry.block_size_bytes as usize;
        let mut staging = lock(&self.staging);
        if let Some(mut frames) = frames {
            if frames.alignment() == block && frames.capacity() <= SPARE_MAX_BYTES {
                frames.clear();
                staging.spare_frames = Some(frames);
            }
        }
        if entries.capacity() * std::mem::size_of::<StagedEntry>() <= SPARE_MAX_BYTES {
            entries.clear();
            staging.spare_entries = entries;
        }
    }

    /// The unit the page cache writes back, as a multiple of this file's blocks.
    fn page_bytes(&self) -> u64 {
        u64::from(self.geometry.block_size_bytes).max(crate::align::PAGE_BYTES)
    }

    /// Whether flushing the copies staged now would leave every frame of the last flush
    /// intact (and erase nothing). The WAL then needs no DWB sync before its write: the
    /// last flush already holds the copies that write puts at risk. Such a flush starts on
    /// a page of its own (see [`Placement::OwnPage`]), and must share no page with the
    /// last flush: writeback rewrites whole pages, and a page being written when power
    /// fails may tear in any sector, also in bytes the write did not change.
    pub fn next_flush_spares_last(&self) -> bool {
        let ring = lock(&self.ring);
        let staging = lock(&self.staging);
        let Some((last_start, last_end)) = ring.last_flush else {
            return false;
        };
        if ring.erase.is_some() {
            return false;
        }
        let len = staging.frames.len() as u64;
        if len == 0 {
            return true;
        }
        let Some(start) = self.flush_start(&ring, len, Placement::OwnPage) else {
            return false;
        };
        let block = u64::from(self.geometry.block_size_bytes);
        let page = self.page_bytes();
        let offset = self.geometry.ring_offset_bytes();
        let (last_first, last_past) = (
            round_down(offset + last_start, page),
            round_up(offset + last_end, page),
        );
        let (first, past) = (
            round_down(offset + start, page),
            round_up(offset + start + round_up(len, block), page),
        );
        past <= last_first || first >= last_past
    }

    /// Flushes the staged copies like [`flush`](Self::flush), on a page of their own,
    /// their fdatasync overlapped with `other`'s (through `vfs`; see
    /// [`Vfs::sync_data_pair`]). Returns the flush's outcome — `Ok(false)` when there was
    /// nothing to flush — and `other`'s sync outcome; `other` is synced whatever happens
    /// to the flush. On failure the staged copies are dropped (not kept for a retry) and
    /// whatever reached the file is zeroed by the next flush.
    pub fn flush_alongside(
        &self,
        vfs: &dyn Vfs,
        other: &Arc<dyn VfsFile>,
    ) -> (Result<bool>, std::io::Result<()>) {
        let mut ring = lock(&self.ring);
        let Some((mut frames, entries)) = self.take_staged(&ring) else {
            return (Ok(false), other.sync_data());
        };
        let mut other_result = None;
        let result = self.flush_frames(
            &mut ring,
            &mut frames,
            &entries,
            Placement::OwnPage,
            |file| {
                let (mine, theirs) = vfs.sync_data_pair(file, other);
                other_result = Some(theirs);
                mine
            },
        );
        // (On failure too: the copies are dropped, not kept for a retry.)
        self.reuse(Some(frames), entries);
        let other_result = other_result.unwrap_or_else(|| other.sync_data());
        (result.map(|()| true), other_result)
    }

    /// The staged copies as one write for the caller to submit (through
    /// [`crate::io::DurableWrites`], alongside the WAL write they will protect the next
    /// commit for): the file, the frames zero-padded to whole blocks, and the file offset.
    /// Only when the flush would spare the last one ([`Self::next_flush_spares_last`]:
    /// on a page of its own, nothing to erase) and something is staged; `None` otherwise,
    /// with the copies still staged. Until [`Self::end_prepared_flush`] the span is in
    /// nobody's index and no other flush may run.
    pub fn prepare_flush(&self) -> Option<(PreparedFlush, Arc<dyn VfsFile>, AlignedBuf, u64)> {
        // (It holds the DWB's only writer: nothing changes between the check and the take.)
        if !self.next_flush_spares_last() {
            return None;
        }
        let mut ring = lock(&self.ring);
        let len = {
            let staging = lock(&self.staging);
            if staging.entries.is_empty() {
                return None;
            }
            staging.frames.len() as u64
        };
        let start = self.flush_start(&ring, len, Placement::OwnPage)?;
        let block = u64::from(self.geometry.block_size_bytes);
        let (mut frames, entries) = self.take_staged(&ring)?;
        let first_seq = self.stamp_prefixes(&mut ring, &mut frames, &entries);
        let end = start + round_up(len, block);
        frames.resize_zeroed((end - start) as usize);
        // Whatever was indexed there is about to be overwritten.
        evict(&mut ring, start, end);
        count_written(frames.len());
        self.bytes_written
            .fetch_add(frames.len() as u64, Ordering::Relaxed);
        let offset = self.geometry.ring_offset_bytes() + start;
        let prepared = PreparedFlush {
            start,
            end,
            first_seq,
            entries,
        };
        Some((prepared, Arc::clone(&ring.file), frames, offset))
    }

    /// Ends a flush from [`Self::prepare_flush`]: with `durable` (its write completed,
    /// synced) its copies are indexed and it becomes the last flush; otherwise whatever
    /// reached the file is zeroed by the next flush, as after a failed [`Self::flush`].
    /// `frames`: the write's buffer, back from the kernel, for the next flush to reuse.
    pub fn end_prepared_flush(
        &self,
        prepared: PreparedFlush,
        frames: Option<AlignedBuf>,
        durable: bool,
    ) {
        let mut ring = lock(&self.ring);
        let PreparedFlush {
            start,
            end,
            first_seq,
            entries,
        } = prepared;
        if durable {
            index_frames(&mut ring, start, first_seq, &entries);
        }
        self.reuse(frames, entries);
        if !durable {
            add_erase(&mut ring, start, end);
            return;
        }
        ring.last_flush = Some((start, end));
        ring.write_pos = if end >= self.geometry.ring_bytes() {
            0
        } else {
            end
        };
    }

    /// Writes each staged frame's prefix (length, sequence number, CRC) into `frames`,
    /// taking the next sequence numbers; returns the first.
    fn stamp_prefixes(
        &self,
        ring: &mut Ring,
        frames: &mut AlignedBuf,
        entries: &[StagedEntry],
    ) -> u64 {
        let first_seq = ring.next_seq;
        for (i, &(_, at, record_len)) in entries.iter().enumerate() {
            let prefix = encode_frame_prefix(record_len, first_seq + i as u64, self.geometry.salt);
            frames.as_mut_slice()[at..at + FRAME_PREFIX_SIZE].copy_from_slice(&prefix);
        }
        ring.next_seq += entries.len() as u64;
        first_seq
    }

    /// Where a flush of `len` bytes starts (see [`Placement`]), or `None` when it cannot
    /// start on a page of its own anywhere in the ring. No flush starts on the header's
    /// page (blocks smaller than a page: a file created for direct I/O, opened buffered),
    /// unless the ring is too small to hold it anywhere else.
    fn flush_start(&self, ring: &Ring, len: u64, placement: Placement) -> Option<u64> {
        let ring_bytes = self.geometry.ring_bytes();
        let page = self.page_bytes();
        let unit = match placement {
            Placement::Next => u64::from(self.geometry.block_size_bytes),
            Placement::OwnPage => page,
        };
        // Pages are of the file: the ring starts after the header block.
        let offset = self.geometry.ring_offset_bytes();
        let floor = round_up(offset, page) - offset;
        let at = round_up(offset + ring.write_pos.max(floor), unit) - offset;
        if at + len <= ring_bytes {
            return Some(at);
        }
        let first = round_up(offset + floor, unit) - offset;
        if first + len <= ring_bytes {
            return Some(first);
        }
        match placement {
            Placement::Next if ring.write_pos + len <= ring_bytes => Some(ring.write_pos),
            Placement::Next => Some(0),
            Placement::OwnPage => None,
        }
    }

    fn flush_frames(
        &self,
        ring: &mut Ring,
        frames: &mut AlignedBuf,
        entries: &[StagedEntry],
        placement: Placement,
        sync: impl FnOnce(&Arc<dyn VfsFile>) -> std::io::Result<()>,
    ) -> Result<()> {
        let block = u64::from(self.geometry.block_size_bytes);
        let ring_bytes = self.geometry.ring_bytes();
        let len = frames.len() as u64;
        debug_assert!(len <= ring_bytes, "staging keeps a flush within the ring");
        let start = self
            .flush_start(ring, len, placement)
            .or_else(|| self.flush_start(ring, len, Placement::Next))
            .expect("a flush within the ring always has a next position");
        let first_seq = self.stamp_prefixes(ring, frames, entries);
        let end = start + round_up(len, block);
        let erase = ring.erase;
        let result = (|| {
            // Zeros over a span waiting to be erased, written before the frames (which may
            // land inside it), in bounded chunks, and synced by the same fdatasync.
            if let Some((erase_start, erase_end)) = erase {
                let chunk_len = (erase_end - erase_start).min(SCAN_CHUNK_BYTES as u64) as usize;
                let mut zeros = AlignedBuf::new(chunk_len, block as usize);
                zeros.resize_zeroed(chunk_len);
                let mut at = erase_start;
                while at < erase_end {
                    let n = chunk_len.min((erase_end - at) as usize);
                    self.write_ring(ring, &zeros.as_slice()[..n], at)?;
                    at += n as u64;
                }
            }
            // Zero-padded to the block end in both modes: a chain of frames can then
            // only ever continue into a frame that starts on a block boundary — which
            // every scan indexes (and recovery voids when stale) — never into an old
            // remnant this flush happens to end next to.
            let span: &[u8] = frames.padded_slice();
            if !span.is_empty() {
                self.write_ring(ring, span, start)?;
            }
            sync(&ring.file).map_err(|e| Error::io("sync double-write buffer", &self.path, e))
        })();
        if let Err(e) = result {
            // Whatever reached the file may hold copies of records about to be refused.
            add_erase(ring, start, start + round_up(frames.len() as u64, block));
            return Err(e);
        }
        if let Some((erase_start, erase_end)) = ring.erase.take() {
            evict(ring, erase_start, erase_end);
        }
        // The written span replaced whatever frames were there.
        evict(ring, start, end);
        index_frames(ring, start, first_seq, entries);
        ring.last_flush = (len > 0).then_some((start, end));
        ring.write_pos = if end >= ring_bytes { 0 } else { end };
        Ok(())
    }

    fn write_ring(&self, ring: &Ring, bytes: &[u8], ring_pos: u64) -> Result<()> {
        let offset = self.geometry.ring_offset_bytes() + ring_pos;
        io::write_all_at(ring.file.as_ref(), bytes, offset)
            .map_err(|e| Error::io("write double-write buffer", &self.path, e))?;
        count_written(bytes.len());
        self.bytes_written
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The newest valid copy of `lsn`, or `None`. The first lookup after a flush rebuilds
    /// the LSN index (one pass over the indexed frames); later ones are hash lookups.
    pub fn recover_record(&self, lsn: u64) -> Result<Option<WalRecord>> {
        Ok(self
            .recover_encoded(lsn)?
            .map(|bytes| WalRecord::decode(&bytes).expect("verified by recover_encoded")))
    }

    /// The bytes of the newest valid copy of `lsn`, verified, or `None`.
    pub fn recover_encoded(&self, lsn: u64) -> Result<Option<Vec<u8>>> {
        let mut ring = lock(&self.ring);
        let mut candidates = copies_of(&mut ring, lsn);
        candidates.sort_by_key(|f| std::cmp::Reverse(f.seq));
        for frame in candidates {
            let bytes = self.read_frame(ring.file.as_ref(), frame)?;
            if let Some(record) = bytes {
                if let Ok((header, _)) = check_encoded(&record) {
                    if header.lsn == lsn && header.record_len() == record.len() {
                        return Ok(Some(record));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Reads a frame and returns its record bytes if the prefix still matches.
    fn read_frame(&self, file: &dyn VfsFile, frame: FrameRef) -> Result<Option<Vec<u8>>> {
        let frame_len = FRAME_PREFIX_SIZE as u64 + u64::from(frame.record_len);
        let at = self.geometry.ring_offset_bytes() + frame.ring_pos;
        let bytes = read_span(
            file,
            &self.path,
            at,
            frame_len as usize,
            self.mode == DwbMode::Direct,
            self.geometry.block_size_bytes as usize,
        )?;
        match parse_frame_prefix(&bytes, &self.geometry) {
            Some((record_len, seq)) if seq == frame.seq && record_len == frame.record_len => {
                Ok(Some(bytes[FRAME_PREFIX_SIZE..].to_vec()))
            }
            _ => Ok(None),
        }
    }

    /// The LSNs that have an indexed copy (valid prefix when last seen).
    pub fn indexed_lsns(&self) -> Vec<u64> {
        let mut lsns: Vec<u64> = lock(&self.ring).frames.values().map(|f| f.lsn).collect();
        lsns.sort_unstable();
        lsns.dedup();
        lsns
    }

    /// Every frame found in the ring, newest last: (LSN, seq, ring offset, record length).
    pub fn frames(&self) -> Vec<(u64, u64, u64, u32)> {
        let ring = lock(&self.ring);
        let mut out: Vec<(u64, u64, u64, u32)> = ring
            .frames
            .values()
            .map(|f| (f.lsn, f.seq, f.ring_pos, f.record_len))
            .collect();
        out.sort_by_key(|f| f.1);
        out
    }
}

fn check_options(options: &DwbOptions) -> Result<()> {
    if let Some(capacity) = options.capacity {
        if !(1..=MAX_CAPACITY).contains(&capacity) {
            return Err(Error::InvalidOptions {
                detail: format!("capacity {capacity} is outside 1..={MAX_CAPACITY}"),
            });
        }
    }
    if let Some(max) = options.max_record_bytes {
        if !(HEADER_SIZE as u32..=record::MAX_PAYLOAD_BYTES).contains(&max) {
            return Err(Error::InvalidOptions {
                detail: format!(
                    "maxRecordSize {max} is outside {HEADER_SIZE}..={} bytes",
                    record::MAX_PAYLOAD_BYTES
                ),
            });
        }
    }
    Ok(())
}

fn open_error(path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::Unsupported {
        return Error::DirectIoUnsupported {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
    }
    Error::io("open double-write buffer", path, e)
}

/// Creates the file under a temporary name, fills it completely (so later flushes only
/// overwrite allocated blocks and fdatasync has no metadata to commit), makes it durable
/// and renames it into place, then syncs the directory: the DWB exists whole or not at all.
fn create_file(vfs: &dyn Vfs, path: &Path, options: &DwbOptions) -> Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    if vfs.kind(&tmp).ok().flatten().is_some() {
        vfs.remove_file(&tmp)
            .map_err(|e| Error::io("remove stale", &tmp, e))?;
    }
    let file = vfs
        .open(&tmp, OpenOptions::create_new())
        .map_err(|e| Error::io("create double-write buffer", &tmp, e))?;
    let alignment = file.direct_io_alignment().unwrap_or(DEFAULT_ALIGNMENT);
    // Through the page cache every write rewrites whole pages: blocks of at least a page
    // keep the header on a page of its own, which no flush rewrites (a torn or failed
    // writeback of a shared page could destroy the geometry, and every copy with it).
    // Direct I/O writes only the blocks it is given.
    let page = match options.mode {
        DwbMode::Direct => 512,
        _ => crate::align::PAGE_BYTES as usize,
    };
    let block = alignment.max(512).max(page) as u32;
    let geometry = Geometry::new(
        block,
        options.capacity.unwrap_or(DEFAULT_CAPACITY),
        options.max_record_bytes.unwrap_or(DEFAULT_MAX_RECORD_BYTES),
        crate::wal::segment::random_u64(),
    );
    let total = geometry.file_bytes();
    let chunk_len = (SCAN_CHUNK_BYTES as u64).min(total) as usize;
    let mut chunk = vec![0u8; chunk_len];
    chunk[..HEADER_FIELDS_SIZE].copy_from_slice(&geometry.encode());
    let mut offset = 0u64;
    while offset < total {
        let n = chunk_len.min((total - offset) as usize);
        io::write_all_at(file.as_ref(), &chunk[..n], offset)
            .map_err(|e| Error::io("preallocate double-write buffer", &tmp, e))?;
        count_written(n);
        if offset == 0 {
            chunk[..HEADER_FIELDS_SIZE].fill(0);
        }
        offset += n as u64;
    }
    file.sync_all()
        .map_err(|e| Error::io("sync new double-write buffer", &tmp, e))?;
    drop(file);
    vfs.rename(&tmp, path)
        .map_err(|e| Error::io("rename new double-write buffer", path, e))?;
    let dir = parent_dir(path);
    vfs.sync_dir(&dir)
        .map_err(|e| Error::io("sync directory", &dir, e))?;
    Ok(())
}

fn read_geometry(file: &dyn VfsFile, path: &Path, direct: bool) -> Result<Geometry> {
    let alignment = file
        .direct_io_alignment()
        .unwrap_or(DEFAULT_ALIGNMENT)
        .max(512);
    let want = if direct {
        alignment
    } else {
        HEADER_FIELDS_SIZE
    };
    let mut buf = AlignedBuf::new(alignment, alignment);
    buf.resize_zeroed(want);
    let got = io::read_up_to_at(file, buf.as_mut_slice(), 0)
        .map_err(|e| Error::io("read double-write buffer header", path, e))?;
    Geometry::decode(&buf.as_slice()[..got.min(want)]).map_err(|detail| Error::DwbCorrupt {
        path: path.to_path_buf(),
        detail,
    })
}

fn check_geometry_matches(path: &Path, geometry: &Geometry, options: &DwbOptions) -> Result<()> {
    if let Some(capacity) = options.capacity {
        if capacity != geometry.capacity {
            return Err(Error::DwbGeometryMismatch {
                path: path.to_path_buf(),
                detail: format!(
                    "capacity {capacity} asked, the file has {}",
                    geometry.capacity
                ),
            });
        }
    }
    if let Some(max) = options.max_record_bytes {
        if max != geometry.max_record_bytes {
            return Err(Error::DwbGeometryMismatch {
                path: path.to_path_buf(),
                detail: format!(
                    "maxRecordSize {max} asked, the file has {}",
                    geometry.max_record_bytes
                ),
            });
        }
    }
    Ok(())
}

fn frame_crc(salt: u64, prefix: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&salt.to_le_bytes()), &prefix[..20])
}

fn encode_frame_prefix(record_len: u32, seq: u64, salt: u64) -> [u8; FRAME_PREFIX_SIZE] {
    let mut out = [0u8; FRAME_PREFIX_SIZE];
    out[0..4].copy_from_slice(&FRAME_MAGIC);
    out[4..8].copy_from_slice(&record_len.to_le_bytes());
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    let crc = frame_crc(salt, &out);
    out[20..24].copy_from_slice(&crc.to_le_bytes());
    out
}

/// `(record_len, seq)` of a valid prefix at the start of `bytes`.
fn parse_frame_prefix(bytes: &[u8], geometry: &Geometry) -> Option<(u32, u64)> {
    let max_record_bytes = geometry.max_record_bytes;
    let prefix = bytes.get(..FRAME_PREFIX_SIZE)?;
    if prefix[0..4] != FRAME_MAGIC {
        return None;
    }
    if frame_crc(geometry.salt, prefix) != read_u32(prefix, 20) {
        return None;
    }
    if read_u32(prefix, 16) != 0 {
        return None;
    }
    // No flush ever reaches this sequence number; a frame claiming it is forged.
    if read_u64(prefix, 8) == u64::MAX {
        return None;
    }
    let record_len = read_u32(prefix, 4);
    if record_len < HEADER_SIZE as u32 || record_len > max_record_bytes {
        return None;
    }
    Some((record_len, read_u64(prefix, 8)))
}

/// Reads `len` bytes at `offset`; in direct mode through an aligned span.
fn read_span(
    file: &dyn VfsFile,
    path: &Path,
    offset: u64,
    len: usize,
    direct: bool,
    block: usize,
) -> Result<Vec<u8>> {
    if !direct {
        let mut out = vec![0u8; len];
        io::read_exact_at(file, &mut out, offset)
            .map_err(|e| Error::io("read double-write buffer", path, e))?;
        return Ok(out);
    }
    let start = round_down(offset, block as u64);
    let end = round_up(offset + len as u64, block as u64);
    let mut buf = AlignedBuf::new((end - start) as usize, block);
    buf.resize_zeroed((end - start) as usize);
    io::read_exact_at(file, buf.as_mut_slice(), start)
        .map_err(|e| Error::io("read double-write buffer", path, e))?;
    let from = (offset - start) as usize;
    Ok(buf.as_slice()[from..from + len].to_vec())
}

/// Adds `[start, end)` to the span the next flush must zero.
fn add_erase(ring: &mut Ring, start: u64, end: u64) {
    if end <= start {
        return;
    }
    ring.erase = Some(match ring.erase {
        Some((a, b)) => (a.min(start), b.max(end)),
        None => (start, end),
    });
}

/// Indexes the frames of a flush that starts at `start` and is now durable.
fn index_frames(ring: &mut Ring, start: u64, first_seq: u64, entries: &[StagedEntry]) {
    if entries.is_empty() {
        return;
    }
    ring.by_lsn = None;
    for (i, &(lsn, at, record_len)) in entries.iter().enumerate() {
        let frame = FrameRef {
            lsn,
            seq: first_seq + i as u64,
            ring_pos: start + at as u64,
            record_len,
        };
        ring.frames.insert(frame.ring_pos, frame);
        ring.largest_frame_bytes = ring
            .largest_frame_bytes
            .max(FRAME_PREFIX_SIZE as u64 + u64::from(record_len));
    }
}

/// Drops index entries of frames overlapping `[start, end)` of the ring.
fn evict(ring: &mut Ring, start: u64, end: u64) {
    // A frame overlapping the span starts at most one frame's length before it.
    let mut from = start.saturating_sub(ring.largest_frame_bytes);
    while let Some(pos) = ring
        .frames
        .range(from..end)
        .find(|(_, f)| f.end() > start)
        .map(|(&pos, _)| pos)
    {
        ring.frames.remove(&pos);
        ring.by_lsn = None;
        from = pos + 1;
    }
}

/// The indexed copies of `lsn`, through the LSN index (built here if a change dropped it).
fn copies_of(ring: &mut Ring, lsn: u64) -> Vec<FrameRef> {
    let Ring { frames, by_lsn, .. } = ring;
    let index = by_lsn.get_or_insert_with(|| {
        let mut index: HashMap<u64, Vec<u64>> = HashMap::new();
        for frame in frames.values() {
            index.entry(frame.lsn).or_default().push(frame.ring_pos);
        }
        index
    });
    index
        .get(&lsn)
        .map(|positions| positions.iter().map(|pos| frames[pos]).collect())
        .unwrap_or_default()
}

/// Reads the ring once, in large sequential chunks, and indexes every frame whose prefix
/// and record header are valid. Frames are found by following chains from every block
/// boundary (a flush starts on one); where two frames overlap, the older one was partly
/// overwritten by a later flush and is dropped. Remnants no chain reaches are ignored.
fn scan_ring(
    file: Box<dyn VfsFile>,
    path: &Path,
    geometry: &Geometry,
    direct: bool,
) -> Result<Ring> {
    let block = u64::from(geometry.block_size_bytes);
    let ring_bytes = geometry.ring_bytes();
    let mut reader = RingReader::new(file.as_ref(), path, geometry, direct);
    // (position, record length, seq, LSN) of every frame found.
    let mut found: BTreeMap<u64, (u32, u64, u64)> = BTreeMap::new();
    let head_len = FRAME_PREFIX_SIZE + HEADER_SIZE;
    let mut block_pos = 0u64;
    while block_pos < ring_bytes {
        let mut pos = block_pos;
        while pos + head_len as u64 <= ring_bytes && !found.contains_key(&pos) {
            let head = reader.bytes_at(pos, head_len)?;
            let Some((record_len, seq)) = parse_frame_prefix(head, geometry) else {
                break;
            };
            let frame_end = pos + (FRAME_PREFIX_SIZE as u64) + u64::from(record_len);
            if frame_end > ring_bytes {
                break;
            }
            let Ok(header) = record::RecordHeader::parse(&head[FRAME_PREFIX_SIZE..]) else {
                break;
            };
            if header.record_len() != record_len as usize {
                break;
            }
            found.insert(pos, (record_len, seq, header.lsn));
            pos = frame_end;
        }
        block_pos += block;
    }
    // Drop frames a newer flush overlapped: sweep in position order, keeping a stack of
    // non-overlapping frames and letting the higher sequence win each overlap.
    let mut kept: Vec<(u64, u32, u64, u64)> = Vec::with_capacity(found.len());
    for (pos, (record_len, seq, lsn)) in found {
        let mut candidate = Some((pos, record_len, seq, lsn));
        while let (Some(c), Some(&last)) = (candidate, kept.last()) {
            let last_end = last.0 + FRAME_PREFIX_SIZE as u64 + u64::from(last.1);
            if last_end <= c.0 {
                break;
            }
            if last.2 > c.2 {
                candidate = None;
            } else {
                kept.pop();
            }
        }
        if let Some(c) = candidate {
            kept.push(c);
        }
    }
    let mut frames = BTreeMap::new();
    let mut newest: Option<(u64, u64)> = None; // (seq, end of that frame)
    let largest_frame_bytes = kept
        .iter()
        .map(|f| FRAME_PREFIX_SIZE as u64 + u64::from(f.1))
        .max()
        .unwrap_or(0);
    for (ring_pos, record_len, seq, lsn) in kept {
        frames.insert(
            ring_pos,
            FrameRef {
                lsn,
                seq,
                ring_pos,
                record_len,
            },
        );
        let end = ring_pos + FRAME_PREFIX_SIZE as u64 + u64::from(record_len);
        if newest.is_none_or(|(s, _)| seq > s) {
            newest = Some((seq, end));
        }
    }
    let (write_pos, next_seq) = match newest {
        Some((seq, end)) => {
            let pos = round_up(end, block);
            (if pos >= ring_bytes { 0 } else { pos }, seq + 1)
        }
        None => (0, 1),
    };
    Ok(Ring {
        file: Arc::from(file),
        write_pos,
        next_seq,
        frames,
        by_lsn: None,
        erase: None,
        last_flush: None,
        largest_frame_bytes,
    })
}

/// Sequential chunked reader over the ring used by the open-time scan.
struct RingReader<'a> {
    file: &'a dyn VfsFile,
    path: &'a Path,
    ring_offset: u64,
    ring_bytes: u64,
    block: u64,
    direct: bool,
    chunk: AlignedBuf,
    /// Ring position of `chunk`'s first byte.
    chunk_pos: u64,
}

impl<'a> RingReader<'a> {
    fn new(
        file: &'a dyn VfsFile,
        path: &'a Path,
        geometry: &Geometry,
        direct: bool,
    ) -> RingReader<'a> {
        let block = u64::from(geometry.block_size_bytes);
        RingReader {
            file,
            path,
            ring_offset: geometry.ring_offset_bytes(),
            ring_bytes: geometry.ring_bytes(),
            block,
            direct,
            chunk: AlignedBuf::new(SCAN_CHUNK_BYTES, block as usize),
            chunk_pos: 0,
        }
    }

    fn bytes_at(&mut self, pos: u64, len: usize) -> Result<&[u8]> {
        let loaded_end = self.chunk_pos + self.chunk.len() as u64;
        if self.chunk.is_empty() || pos < self.chunk_pos || pos + len as u64 > loaded_end {
            let start = round_down(pos, self.block);
            let want = (SCAN_CHUNK_BYTES as u64).min(self.ring_bytes - start);
            let want = round_up(want.max(len as u64 + (pos - start)), self.block) as usize;
            self.chunk.clear();
            self.chunk.resize_zeroed(want);
            let got = io::read_up_to_at(
                self.file,
                self.chunk.as_mut_slice(),
                self.ring_offset + start,
            )
            .map_err(|e| Error::io("scan double-write buffer", self.path, e))?;
            let _ = self.direct;
            self.chunk.resize_zeroed(got);
            self.chunk_pos = start;
        }
        let from = (pos - self.chunk_pos) as usize;
        let available = self.chunk.len().saturating_sub(from);
        Ok(&self.chunk.as_slice()[from..from + len.min(available)])
    }
}

#[cfg(test)]
mod tests;
