//! The writer: owns the active segment and the DWB, and runs one commit at a time.
//!
//! A commit is laid out in memory, then:
//!
//! 1. **DWB write + sync** of the *at-risk set*: the acknowledged records that overlap the
//!    partial block at the end of the log. The commit's first write rewrites that block
//!    (the page cache writes whole pages; direct I/O writes whole blocks), so while it is
//!    in flight those records could tear. Nothing else acknowledged is ever rewritten.
//!    The same flush copies the commit's own records that will end in its partial last
//!    block: the next commit's at-risk set.
//! 2. **WAL write** of the commit's bytes (in direct mode, of whole blocks).
//! 3. **WAL sync** (fdatasync). Only now are the commit's records acknowledged.
//!
//! So the last flush normally holds a copy of every record of the tail (`tail_copied`).
//! When it does, and this commit's flush can go on pages holding none of the last flush's
//! bytes, step 1's sync is not needed before the WAL write — the copies that write puts
//! at risk are already durable and stay intact — and the commit instead writes its copies
//! and its records, then runs the two fdatasyncs at once (the device can work on both
//! together: 1.29 × the serial two-file cycle on the development VM). The records are
//! acknowledged when both are done. Otherwise the steps run in order: a recovered partial
//! tail (the session's first commit), the commit after a failure or after one whose
//! copies were cut by the half-ring budget, a flush that would wrap onto the last one's
//! pages.
//!
//! A commit whose last block would hold a record too large for a DWB slot, a commit whose
//! padding would be at most a quarter of its bytes (`CHEAP_PAD_RATIO`), every commit under
//! `TailProtection::Pad`, and every commit while the DWB is off or failed ends with a
//! padding record on a block boundary instead: the next commit then starts on a fresh
//! block and puts nothing acknowledged at risk. Such a commit copies nothing of its own;
//! when the last flush still holds its at-risk copies (nothing failed, retracted or waiting
//! to be erased since), it writes no DWB at all — one sync. Direct I/O changes none of
//! this: under `'mirror'` it rewrites the partial last block whole, from the tail kept in
//! memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::align::{round_down, round_up, AlignedBuf, PAGE_BYTES};
use crate::crypto::{KeyRing, SegmentCipher, TAG_BYTES};
use crate::dwb::DoubleWriteBuffer;
use crate::error::{Error, Result};
use crate::io::{self, DurableWrites, OpenOptions, Vfs, VfsFile};
use crate::record::{encode_padding_into, RecordHeader, ENCRYPTED_FLAG, HEADER_SIZE};

use super::recovery::{RecordSpan, Recovered};
use super::segment::{self, SegmentFile};
use super::{ProtectionState, RecordInput, TailProtection, WalOptions, WalStats, Weakness};

/// The outcome of protecting a commit's at-risk records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protected {
    /// Nothing copied: nothing is at risk, or there is no DWB to copy to.
    Done,
    /// The copies are durable. `covers_tail`: they include every record the commit
    /// leaves in its partial last block.
    Flushed { covers_tail: bool },
    /// The copies are staged; the at-risk ones are durable from the last flush, which
    /// this one spares: flush alongside the WAL sync.
    Deferred { covers_tail: bool },
    /// They cannot be protected where the commit would go: start a new segment.
    NeedsFreshSegment,
}

/// Synced pages are handed back to the kernel in steps of at least this many bytes.
const RELEASE_STEP: u64 = 256 * 1024;

/// Under `'mirror'` a commit pads to the end of its last block instead of copying that
/// block's records to the DWB when the padding is at most 1/`CHEAP_PAD_RATIO` of its bytes:
/// the next commit then rewrites nothing acknowledged, and this one needs no second sync.
/// Small commits (one short record: the padding would outweigh it) keep mirroring.
const CHEAP_PAD_RATIO: u64 = 4;

/// The segment being appended to.
#[derive(Debug)]
struct Active {
    file: Arc<dyn VfsFile>,
    path: PathBuf,
    first_lsn: u64,
    /// Protection block: the unit the device or page cache rewrites; also direct-I/O
    /// alignment. Records start at this offset.
    block: u64,
    size: u64,
    /// End of the last acknowledged record.
    end: u64,
    /// Bytes up to here may hold unsynced leftovers of a failed write; the next commit
    /// overwrites them with zeros.
    dirty_end: u64,
    /// The page cache was told to drop this segment's pages below here.
    released: u64,
}

/// Acknowledged records overlapping the partial block at the end of the log.
#[derive(Debug, Default)]
struct Tail {
    /// Offset of `bytes[0]` in the active segment.
    start: u64,
    bytes: Vec<u8>,
    records: Vec<RecordSpan>,
}

/// A commit whose writes are in flight through [`DurableWrites`]
/// ([`Writer::start_durable_commit`]); nothing of it is acknowledged yet.
#[derive(Debug)]
pub(crate) struct DurableCommit {
    first_lsn: u64,
    record_count: u64,
    base: u64,
    /// End of the commit (with its padding record, if any).
    end: u64,
    padding: u64,
    /// Where the WAL write starts: `base`, or the start of its block when the commit
    /// rewrites the partial block at the end of the log (`'mirror'`).
    write_start: u64,
    /// Bytes the WAL write covers from `write_start`: whole blocks.
    span: u64,
    /// The commit's bytes and records, for the tail it leaves.
    body: Vec<u8>,
    spans: Vec<RecordSpan>,
    /// `'mirror'`: the DWB flush submitted with the WAL write (the copies of the records
    /// the commit leaves in its partial last block).
    copies: Option<crate::dwb::PreparedFlush>,
    /// Whether those copies cover every record of the commit's partial last block.
    covers_tail: bool,
}

#[derive(Debug)]
pub(crate) struct Writer {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    options: WalOptions,
    dwb: Option<DoubleWriteBuffer>,
    /// The DWB failed under the degraded policy: commits are padded from now on.
    dwb_failed: bool,
    pub(crate) segments: Vec<SegmentFile>,
    active: Active,
    next_lsn: u64,
    tail: Tail,
    poisoned: Option<String>,
    /// A new segment's directory entry is not yet known durable.
    dir_sync_pending: bool,
    /// The DWB's last flush holds a copy of every record of `tail`.
    tail_copied: bool,
    pub(crate) stats: WalStats,
    buf: AlignedBuf,
    /// The buffer of commits written through [`DurableWrites`]; away while one is in
    /// flight (the channel holds it).
    durable_buf: Option<AlignedBuf>,
    /// With direct I/O, this writer's own channel: a simple commit on the commit thread
    /// (or a blocking caller's) goes through it too and waits for it, so a `'mirror'`
    /// commit's two writes, each with its flush, run at once instead of one `O_DIRECT`
    /// write after the other.
    own_channel: Option<Box<dyn DurableWrites>>,
    /// A channel refused a submission: this session commits the usual way from now on
    /// (a refusal costs a prepared DWB flush that the next flush must erase).
    durable_refused: bool,
    /// The next segment, being prepared on a background thread.
    spare: Option<SpareJob>,
    /// Encryption keys; `cipher` is the active key's cipher for the active segment.
    keys: Option<Arc<KeyRing>>,
    cipher: Option<SegmentCipher>,
    /// With encryption, an LSN is never reused within a segment: after a failed commit
    /// (whose LSNs come back) the next commit starts a new segment, with a new epoch.
    fresh_segment_needed: bool,
    /// Held for the writer's lifetime: the directory lock.
    _lock: Box<dyn VfsFile>,
}

/// The next segment (see `WalOptions::prepare_segments`): ready on disk, or being
/// prepared on a background thread.
#[derive(Debug)]
enum SpareJob {
    Ready {
        size: u64,
        path: PathBuf,
    },
    Preparing {
        size: u64,
        cancel: Arc<std::sync::atomic::AtomicBool>,
        handle: std::thread::JoinHandle<Result<PathBuf>>,
    },
}

impl SpareJob {
    fn size(&self) -> u64 {
        match self {
            SpareJob::Ready { size, .. } | SpareJob::Preparing { size, .. } => *size,
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // A spare still being written is abandoned (and removed); a finished one stays
        // for the next session.
        if let Some(SpareJob::Preparing { cancel, handle, .. }) = self.spare.take() {
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = handle.join();
        }
    }
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        options: WalOptions,
        dwb: Option<DoubleWriteBuffer>,
        dwb_failed: bool,
        recovered: Recovered,
        lock: Box<dyn VfsFile>,
        keys: Option<Arc<KeyRing>>,
    ) -> Result<Writer> {
        let last = recovered.segments.last().expect("recovery keeps a segment");
        let block = u64::from(last.header.block_size_bytes);
        let file = vfs
            .open(
                &last.file.path,
                OpenOptions::read_write().with_direct(options.direct_io),
            )
            .map_err(|e| open_segment_error(&last.file.path, e))?;
        if options.direct_io {
            let alignment = file.direct_io_alignment().unwrap_or(4096) as u64;
            if block % alignment != 0 {
                return Err(Error::DirectIoUnsupported {
                    path: last.file.path.clone(),
                    detail: format!(
                        "the segment uses {block}-byte blocks but direct I/O here needs {alignment}-byte alignment"
                    ),
                });
            }
        }
        let size = file
            .len()
            .map_err(|e| Error::io("measure segment", &last.file.path, e))?;
        let tail_start = recovered
            .tail_records
            .first()
            .map_or(last.end_offset, |r| r.offset);
        let active = Active {
            file: Arc::from(file),
            path: last.file.path.clone(),
            first_lsn: last.file.first_lsn,
            block,
            size,
            end: last.end_offset,
            dirty_end: last.end_offset,
            released: 0,
        };
        let block_bytes = block as usize;
        let own_channel = if options.direct_io && !options.weakened() {
            vfs.durable_writes()
        } else {
            None
        };
        let mut writer = Writer {
            vfs,
            dir: dir.to_path_buf(),
            segments: recovered.segments.iter().map(|s| s.file.clone()).collect(),
            active,
            next_lsn: recovered.next_lsn,
            tail: Tail {
                start: tail_start,
                bytes: recovered.tail_bytes,
                records: recovered.tail_records,
            },
            poisoned: None,
            dir_sync_pending: false,
            tail_copied: false,
            stats: WalStats::default(),
            buf: AlignedBuf::new(block_bytes, block_bytes),
            durable_buf: Some(AlignedBuf::new(block_bytes, block_bytes)),
            own_channel,
            durable_refused: false,
            options,
            dwb,
            dwb_failed,
            spare: None,
            cipher: None,
            fresh_segment_needed: false,
            keys,
            _lock: lock,
        };
        // A recovered log whose end shares a block with records the next commit could not
        // protect (one too large for a DWB slot, or no usable DWB) continues in a new
        // segment, which rewrites nothing; so does a segment direct I/O cannot grow.
        let end = writer.active.end;
        if writer.options.direct_io && !writer.active.size.is_multiple_of(block) {
            // A segment cut short: direct I/O could not grow it from its unaligned end.
            let next = writer.next_lsn;
            writer.roll(next, 0)?;
        } else if !end.is_multiple_of(block) {
            let at_risk = writer.at_risk(end);
            let unprotectable = match &writer.dwb {
                Some(dwb) if !writer.dwb_failed => {
                    at_risk.iter().any(|r| r.len > dwb.max_record_bytes())
                }
                _ => !at_risk.is_empty(),
            };
            if unprotectable {
                let next = writer.next_lsn;
                writer.roll(next, 0)?;
            }
        }
        // An encrypted WAL starts every session in a new segment (a new random epoch):
        // LSNs a torn tail gave back, or a directory restored from a backup, can then
        // never meet a nonce their key already used.
        if writer.keys.is_some() {
            let next = writer.next_lsn;
            writer.roll(next, 0)?;
        }
        writer.start_spare();
        Ok(writer)
    }

    pub(crate) fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// Refuses all further commits (after an internal error).
    pub(crate) fn poison(&mut self, detail: String) {
        self.poisoned = Some(detail);
    }

    pub(crate) fn is_poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// The end of the log: (active segment first LSN, offset of its end).
    pub(crate) fn end_position(&self) -> (u64, u64) {
        (self.active.first_lsn, self.active.end)
    }

    pub(crate) fn protection_state(&self) -> ProtectionState {
        if self.dwb_failed || (self.dwb.is_none() && self.options.dwb_mode != crate::DwbMode::Off) {
            ProtectionState::Degraded
        } else if self.always_pad() {
            ProtectionState::Padding
        } else {
            ProtectionState::Active
        }
    }

    /// Whether commits must end on a block boundary (see the module documentation).
    fn always_pad(&self) -> bool {
        let padded = self.options.tail_protection == TailProtection::Pad
            || self.dwb.is_none()
            || self.dwb_failed;
        padded && !self.options.weakened()
    }

    /// Commits the records of `requests` as one commit and returns the first LSN.
    /// `force_pad` ends the commit on a block boundary even with no records.
    pub(crate) fn commit(&mut self, requests: &[&[RecordInput]], force_pad: bool) -> Result<u64> {
        if let Some(detail) = &self.poisoned {
            return Err(Error::WalPoisoned {
                detail: detail.clone(),
            });
        }
        let first_lsn = self.next_lsn;
        let record_count: u64 = requests.iter().map(|r| r.len() as u64).sum();
        if record_count
            > crate::record::MAX_LSN
                .saturating_sub(first_lsn)
                .saturating_add(1)
        {
            return Err(Error::InvalidOptions {
                detail: format!(
                    "the LSN space is exhausted: {record_count} records from LSN {first_lsn} would pass u64::MAX - 1"
                ),
            });
        }
        if record_count == 0 && !force_pad {
            return Ok(first_lsn);
        }
        if self.fresh_segment_needed {
            self.roll(first_lsn, 0)?;
            self.fresh_segment_needed = false;
        }
        let result = self.commit_records(first_lsn, record_count, requests, force_pad);
        if result.is_err() && self.keys.is_some() {
            self.fresh_segment_needed = true;
        }
        result
    }

    /// Encodes (and with encryption, seals for the active segment) every record of the
    /// commit, back to back from offset 0.
    fn encode(&self, first_lsn: u64, requests: &[&[RecordInput]]) -> (Vec<u8>, Vec<RecordSpan>) {
        let tag = if self.cipher.is_some() { TAG_BYTES } else { 0 };
        let mut body = Vec::with_capacity(
            requests
                .iter()
                .flat_map(|r| r.iter())
                .map(|r| HEADER_SIZE + r.payload.len() + tag)
                .sum(),
        );
        let mut spans = Vec::new();
        for (lsn, record) in (first_lsn..).zip(requests.iter().flat_map(|r| r.iter())) {
            let mut header = RecordHeader {
                record_type: record.record_type,
                key_id: 0,
                lsn,
                commit_lsn: first_lsn,
                tenant_id: record.tenant_id,
                vshard_id: record.vshard_id,
                database_id: record.database_id,
                payload_len: record.payload.len() as u32,
                crc: 0,
            };
            let at = body.len();
            match &self.cipher {
                Some(cipher) => {
                    header.record_type |= ENCRYPTED_FLAG;
                    header.key_id = cipher.key_id();
                    cipher.seal_record_into(&mut body, header, &record.payload);
                }
                None => crate::record::encode_record_into(&mut body, header, &record.payload),
            }
            spans.push(RecordSpan {
                offset: at as u64,
                len: (body.len() - at) as u32,
                user: true,
            });
        }
        (body, spans)
    }

    fn commit_records(
        &mut self,
        first_lsn: u64,
        record_count: u64,
        requests: &[&[RecordInput]],
        force_pad: bool,
    ) -> Result<u64> {
        if !force_pad {
            if let Some(result) = self.commit_through_own_channel(requests) {
                return result;
            }
        }
        let (mut body, mut spans) = self.encode(first_lsn, requests);
        let rolls_before = self.stats.segment_rolls;
        let mut base = self.place(first_lsn, &body, &spans, force_pad)?;
        if self.keys.is_some() && self.stats.segment_rolls != rolls_before {
            // Sealed for the segment the commit now goes to (same sizes, new epoch).
            (body, spans) = self.encode(first_lsn, requests);
        }
        let pads = self.padding_for(base, &body, &spans, force_pad) > 0;
        let mut protected = self.protect(base, &body, &spans, pads)?;
        if protected == Protected::NeedsFreshSegment {
            // The at-risk records cannot be protected here: a new segment rewrites nothing
            // acknowledged, and the commit goes there (its directory sync is done below).
            // If no new segment could be made, the at-risk records are counted.
            if self
                .adopt_new_segment(first_lsn, body.len() as u64 + self.active.block)
                .is_ok()
            {
                if self.keys.is_some() {
                    (body, spans) = self.encode(first_lsn, requests);
                }
                base = self.place(first_lsn, &body, &spans, force_pad)?;
                protected = Protected::Done;
            } else {
                let at_risk = self.at_risk(base).len() as u64;
                self.stats.unprotected_records += at_risk;
            }
        }
        if let Err(e) = self.sync_dir_if_pending() {
            // The commit is refused and its LSNs will be reused: no copy of its records
            // may stay behind.
            self.abandon_copies(protected);
            return Err(e);
        }
        let pad_len = self.padding_for(base, &body, &spans, force_pad);
        append_padding(&mut body, &mut spans, pad_len, first_lsn);
        self.stats.padding_bytes += pad_len;
        let end = base + body.len() as u64;
        let deferred = matches!(protected, Protected::Deferred { .. });
        if let Err(e) = self.write_wal(base, &body) {
            return Err(self.undo_failed_write(e, protected));
        }
        let (synced, copies_durable) = if deferred {
            self.flush_alongside_wal_sync()
        } else {
            (self.active.file.sync_data(), true)
        };
        if let Err(e) = synced {
            let detail = format!("fdatasync of {} failed: {e}", self.active.path.display());
            self.poisoned = Some(detail.clone());
            return Err(Error::WalPoisoned { detail });
        }
        self.stats.wal_syncs += 1;
        self.tail_copied = match protected {
            Protected::Flushed { covers_tail } => covers_tail,
            Protected::Deferred { covers_tail } => covers_tail && copies_durable,
            Protected::Done | Protected::NeedsFreshSegment => false,
        };
        self.stats.commits += 1;
        self.stats.records += record_count;
        self.active.end = end;
        self.next_lsn = first_lsn + record_count;
        self.update_tail(base, &body, &spans);
        self.release_synced_pages();
        Ok(first_lsn)
    }

    /// A simple commit (see [`Self::start_durable_commit`]) through this writer's own
    /// channel, waited for here: `None` when it is not one, with nothing done.
    fn commit_through_own_channel(&mut self, requests: &[&[RecordInput]]) -> Option<Result<u64>> {
        let mut channel = self.own_channel.take()?;
        let result = match self.start_durable_commit(requests, channel.as_mut()) {
            Ok(Some(commit)) => {
                let outcomes = channel.finish(true).unwrap_or_default();
                Some(self.finish_durable_commit(commit, outcomes, false))
            }
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        };
        self.own_channel = Some(channel);
        result
    }

    /// Starts the records of `requests` as one commit whose writes (each with its sync)
    /// the kernel completes on its own, through `channel`: the commit thread is not
    /// involved, and the caller learns of the completion from the channel
    /// (docs/PERFORMANCE.md §2).
    ///
    /// Only the simple cases go this way, with direct I/O and the commit fitting in the
    /// active segment, nothing outstanding (a directory sync, a fresh segment owed to a
    /// failed encrypted commit):
    /// - the log ends on a block boundary (always, under `'pad'`): one WAL write of whole
    ///   fresh blocks, nothing acknowledged at risk;
    /// - `'mirror'` with a direct-I/O DWB whose last flush holds the at-risk copies and
    ///   which the new copies spare (the overlapped case of [`Writer::commit`]): the DWB
    ///   write and the WAL write, which rewrites the partial block at the end of the log,
    ///   go as one submission and run at once — two flushes the device overlaps, with no
    ///   thread of ours.
    ///
    /// `Ok(None)` otherwise, with nothing changed and nothing written: the caller commits
    /// the usual way. Until [`Writer::finish_durable_commit`] the writer must not be used
    /// for anything else.
    pub(crate) fn start_durable_commit(
        &mut self,
        requests: &[&[RecordInput]],
        channel: &mut dyn DurableWrites,
    ) -> Result<Option<DurableCommit>> {
        if let Some(detail) = &self.poisoned {
            return Err(Error::WalPoisoned {
                detail: detail.clone(),
            });
        }
        let record_count: u64 = requests.iter().map(|r| r.len() as u64).sum();
        let first_lsn = self.next_lsn;
        let lsn_space_left = crate::record::MAX_LSN
            .saturating_sub(first_lsn)
            .saturating_add(1);
        let simple = self.takes_durable_writes()
            && !self.durable_refused
            && self.durable_buf.is_some()
            && !self.fresh_segment_needed
            && !self.dir_sync_pending
            && record_count > 0
            && record_count <= lsn_space_left;
        if !simple {
            return Ok(None);
        }
        let base = self.active.end;
        let at_risk = self.at_risk(base);
        // `'mirror'` with a working DWB copies every commit's last-block records (its DWB is
        // direct: `takes_durable_writes`).
        let mirror_dwb = match &self.dwb {
            Some(dwb)
                if self.options.tail_protection == TailProtection::Mirror && !self.dwb_failed =>
            {
                if dwb.pending_records() > 0 {
                    return Ok(None);
                }
                Some(dwb)
            }
            _ => None,
        };
        if !at_risk.is_empty() && (mirror_dwb.is_none() || !self.tail_copied) {
            return Ok(None);
        }
        let (mut body, mut spans) = self.encode(first_lsn, requests);
        let padding = self.padding_for(base, &body, &spans, false);
        if base + body.len() as u64 + padding > self.active.size {
            // A roll or a grown segment: synchronous work for the usual path.
            return Ok(None);
        }
        append_padding(&mut body, &mut spans, padding, first_lsn);
        let end = base + body.len() as u64;
        // The copies, submitted with the WAL write: only where the last flush holds the
        // at-risk ones and this flush spares it.
        let mut copies = None;
        let mut covers_tail = false;
        if let Some(dwb) = mirror_dwb {
            if !self.copies_fit(dwb, &at_risk) {
                return Ok(None);
            }
            // A padded commit leaves no partial block: nothing of its own to copy, and
            // the at-risk copies of the last flush, where it stands, stay untouched.
            let padded =
                padding > 0 && self.options.weakness.is_none() && self.last_flush_holds_tail(dwb);
            let restaged: &[RecordSpan] = if padded { &[] } else { &at_risk };
            match self.stage_copies(dwb, restaged, base, &body, &spans, true) {
                Ok(covers) => covers_tail = covers,
                Err(_) => {
                    dwb.discard_pending();
                    return Ok(None);
                }
            }
            if dwb.pending_records() > 0 {
                let Some(prepared) = dwb.prepare_flush() else {
                    dwb.discard_pending();
                    return Ok(None);
                };
                copies = Some(prepared);
            }
        }
        // Present: checked with the other conditions above.
        let block = self.active.block as usize;
        let mut buf = (self.durable_buf.take()).unwrap_or_else(|| AlignedBuf::new(block, block));
        let write_start = lay_out_write(&mut buf, &self.tail, &self.active, base, &body, true);
        let span = round_up(buf.len() as u64, self.active.block);
        buf.resize_zeroed(span as usize);
        let mut writes = Vec::with_capacity(2);
        let mut copies_meta = None;
        if let Some((prepared, file, frames, offset)) = copies {
            copies_meta = Some(prepared);
            writes.push(io::DurableWrite {
                file,
                buf: frames,
                offset,
            });
        }
        writes.push(io::DurableWrite {
            file: Arc::clone(&self.active.file),
            buf,
            offset: write_start,
        });
        if let Err((_, mut buffers)) = channel.start(writes) {
            // Not started: the WAL is untouched and the usual path will commit these (and,
            // as the kernel refused once, every later commit of this session).
            self.durable_refused = true;
            // The copies' span may have been written (a submission taken in part): the
            // next flush zeroes it.
            let wal_buf = buffers.pop();
            if let (Some(dwb), Some(prepared)) = (&self.dwb, copies_meta) {
                dwb.end_prepared_flush(prepared, buffers.pop(), false);
            }
            self.keep_durable_buf(wal_buf);
            return Ok(None);
        }
        self.stats.wal_bytes_written += span;
        Ok(Some(DurableCommit {
            first_lsn,
            record_count,
            base,
            end,
            padding,
            write_start,
            span,
            body,
            spans,
            copies: copies_meta,
            covers_tail,
        }))
    }

    /// Takes back the WAL write's buffer from a channel; a fresh one when the channel
    /// could not give it back (a broken AIO context keeps its buffers).
    fn keep_durable_buf(&mut self, buf: Option<AlignedBuf>) {
        let block = self.active.block as usize;
        let buf = buf.filter(|b| b.capacity() > 0);
        self.durable_buf = Some(buf.unwrap_or_else(|| AlignedBuf::new(block, block)));
    }

    /// Ends a commit started by [`Writer::start_durable_commit`] with the channel's
    /// outcomes (one per write, in the order submitted) and gives back the WAL write's
    /// buffer: on success the records are acknowledged, as after step 3 of
    /// [`Writer::commit`]; a WAL write refused for lack of space is undone as the usual
    /// path undoes a failed write (nothing of it was synced); any other failure of it, or
    /// a short write, poisons the writer, as a failed fdatasync does (the range is in an
    /// unknown state: the error may be the flush's). A failed DWB write fails nothing, as
    /// in the usual overlapped case: the last flush protected this commit.
    /// `for_caller`: the commit was started on the caller's thread (it counts in
    /// [`WalStats::durable_commits`]), not by this writer for itself.
    pub(crate) fn finish_durable_commit(
        &mut self,
        commit: DurableCommit,
        mut outcomes: Vec<(std::io::Result<usize>, AlignedBuf)>,
        for_caller: bool,
    ) -> Result<u64> {
        let DurableCommit {
            first_lsn,
            record_count,
            base,
            end,
            padding,
            write_start,
            span,
            body,
            spans,
            copies,
            covers_tail,
        } = commit;
        let (outcome, buf) = match outcomes.pop() {
            Some((outcome, buf)) => (outcome, Some(buf)),
            None => (
                Err(std::io::Error::other("the channel reported no outcome")),
                None,
            ),
        };
        self.keep_durable_buf(buf);
        let had_copies = copies.is_some();
        let mut copies_durable = false;
        if let (Some(prepared), Some(dwb)) = (copies, &self.dwb) {
            let len = prepared.write_len();
            let (copied, frames) = match outcomes.pop() {
                Some((outcome, frames)) => {
                    (matches!(outcome, Ok(n) if n as u64 == len), Some(frames))
                }
                None => (false, None),
            };
            dwb.end_prepared_flush(prepared, frames, copied);
            copies_durable = self.note_overlapped_flush(copied, true);
        }
        let failure = match outcome {
            Ok(written) if written as u64 == span => None,
            Ok(written) => Some(format!("wrote {written} of {span} bytes")),
            // The DWB write failed too: it may have left valid copies of these records,
            // which no flush of this session may get to erase (a failed DWB under the
            // degraded policy is never written again) while their LSNs would be reused. So
            // the writer is poisoned: recovery voids every copy at or past the log's end.
            Err(e) if io::is_no_space(&e) && had_copies && !copies_durable => {
                Some(format!("{e}, and its DWB copies also failed"))
            }
            Err(e) if io::is_no_space(&e) => {
                // No space: the write itself failed, before anything of it was synced —
                // as a failed write of the usual path: its leftovers are zeroed and synced,
                // and its LSNs come back (under encryption, with a fresh segment next);
                // copies of its records are voided.
                self.active.dirty_end = self.active.dirty_end.max(write_start + span);
                if self.keys.is_some() {
                    self.fresh_segment_needed = true;
                }
                let error = Error::io("write WAL segment", &self.active.path, e);
                let protected = if copies_durable {
                    Protected::Flushed { covers_tail }
                } else {
                    Protected::Done
                };
                return Err(self.undo_failed_write(error, protected));
            }
            Err(e) => Some(e.to_string()),
        };
        if let Some(failure) = failure {
            self.active.dirty_end = self.active.dirty_end.max(write_start + span);
            let detail = format!(
                "the durable write (RWF_DSYNC) of {} at offset {write_start} failed: {failure}",
                self.active.path.display()
            );
            self.poisoned = Some(detail.clone());
            return Err(Error::WalPoisoned { detail });
        }
        self.stats.wal_syncs += 1;
        self.stats.durable_commits += u64::from(for_caller);
        self.stats.padding_bytes += padding;
        self.stats.commits += 1;
        self.stats.records += record_count;
        self.tail_copied = covers_tail && copies_durable;
        self.active.end = end;
        self.active.dirty_end = end;
        self.next_lsn = first_lsn + record_count;
        self.update_tail(base, &body, &spans);
        Ok(first_lsn)
    }

    /// Where the commit goes: the end of the log, or the start of a new segment when it
    /// does not fit (an empty segment grows instead).
    fn place(
        &mut self,
        first_lsn: u64,
        body: &[u8],
        spans: &[RecordSpan],
        force_pad: bool,
    ) -> Result<u64> {
        let base = self.active.end;
        let total = body.len() as u64 + self.padding_for(base, body, spans, force_pad);
        if base + total <= self.active.size {
            return Ok(base);
        }
        if base > self.active.block {
            // At the new segment's first block the padding may differ (by up to a block
            // and a header): room for it, which only a commit larger than a segment needs.
            self.roll(first_lsn, total + self.active.block + HEADER_SIZE as u64)?;
        } else {
            self.grow_active(round_up(base + total, self.active.block))?;
        }
        Ok(self.active.end)
    }

    /// The acknowledged records a write at `base` puts at risk.
    fn at_risk(&self, base: u64) -> Vec<RecordSpan> {
        if base.is_multiple_of(self.active.block) {
            return Vec::new();
        }
        self.tail
            .records
            .iter()
            .copied()
            .filter(|r| r.user)
            .collect()
    }

    /// Whether the records a commit ending at `end` leaves in its partial last block (its
    /// own, and older ones of the tail) would need more than half the DWB ring as copies.
    /// The next commit must flush them all at once: a second flush within one commit
    /// could land on the first one's frames (the ring restarts at 0) and destroy copies
    /// it still needs. Such a commit ends with padding instead, leaving nothing at risk.
    fn at_risk_would_overflow(&self, base: u64, end: u64, spans: &[RecordSpan]) -> bool {
        let Some(dwb) = &self.dwb else { return false };
        let window_start = round_down(end, self.active.block);
        if window_start == end {
            return false;
        }
        let older =
            frame_bytes(self.tail.records.iter().filter(|r| {
                r.user && r.offset < base && r.offset + u64::from(r.len) > window_start
            }));
        let own = frame_bytes(
            spans
                .iter()
                .filter(|s| s.user && base + s.offset + u64::from(s.len) > window_start),
        );
        older + own > dwb.geometry().ring_bytes() / 2
    }

    /// How many padding bytes end a commit of `body` placed at `base`.
    fn padding_for(&self, base: u64, body: &[u8], spans: &[RecordSpan], force_pad: bool) -> u64 {
        let block = self.active.block;
        let end = base + body.len() as u64;
        let window_start = round_down(end, block);
        let unmirrorable = match &self.dwb {
            Some(dwb) => spans.iter().any(|s| {
                base + s.offset + u64::from(s.len) > window_start && s.len > dwb.max_record_bytes()
            }),
            None => false,
        };
        let reference_like = self.options.weakened();
        let mut gap = round_up(end, block) - end;
        if gap > 0 && gap < HEADER_SIZE as u64 {
            gap += block;
        }
        let cheap = self.options.weakness.is_none() && gap * CHEAP_PAD_RATIO <= body.len() as u64;
        let pad = force_pad
            || self.always_pad()
            || ((cheap || unmirrorable || self.at_risk_would_overflow(base, end, spans))
                && !reference_like);
        if pad {
            gap
        } else {
            0
        }
    }

    /// Step 1 of a commit: copy the at-risk set to the DWB, together with the commit's own
    /// records that will end in its partial last block (those that fit in a slot, up to
    /// half the ring): the at-risk set is required before the WAL write; the others are
    /// the next commit's at-risk set (and give the newest records a copy: an interrupted
    /// commit is rescued, damage at rest to the tail repaired). The copies are flushed and
    /// synced here, or — when the last flush already holds the at-risk set and this one
    /// spares it — staged for a flush overlapped with the WAL sync (`Deferred`).
    /// Records in the commit's full blocks are not copied: no later write touches them,
    /// and copying them cost a batch of 64 small records 30-40 % of its throughput.
    /// A commit that `pads` to a block boundary leaves no partial last block: it copies
    /// nothing of its own, and none of the at-risk set when the last flush holds it (no
    /// flush of this commit can land on those copies, and no later write touches the
    /// block they protect).
    fn protect(
        &mut self,
        base: u64,
        body: &[u8],
        spans: &[RecordSpan],
        pads: bool,
    ) -> Result<Protected> {
        let weakness = self.options.weakness;
        if weakness == Some(Weakness::ReferenceMirroring) {
            self.mirror_like_reference(body, spans)?;
            return Ok(Protected::Done);
        }
        let at_risk = self.at_risk(base);
        if weakness == Some(Weakness::NoDwb) {
            return Ok(Protected::Done);
        }
        // The weakened configurations of the crash simulator's controls copy as before.
        let pads = pads && self.options.weakness.is_none();
        let mirror_own = self.options.tail_protection == TailProtection::Mirror && !pads;
        let usable = match &self.dwb {
            Some(dwb) if !self.dwb_failed => Some(dwb),
            _ => None,
        };
        let Some(dwb) = usable else {
            // Without a DWB every commit ends on a block boundary, and a log whose end
            // is not on one gets a fresh segment at open. Only the commit whose
            // overlapped flush found the DWB broken can have left records at risk: the
            // next one goes to a fresh segment.
            return Ok(if at_risk.is_empty() {
                Protected::Done
            } else {
                Protected::NeedsFreshSegment
            });
        };
        let copies_held = at_risk.is_empty() || (pads && self.last_flush_holds_tail(dwb));
        if !mirror_own && copies_held {
            return Ok(Protected::Done);
        }
        if !self.copies_fit(dwb, &at_risk) {
            return Ok(Protected::NeedsFreshSegment);
        }
        let staged = self.stage_copies(dwb, &at_risk, base, body, spans, mirror_own);
        let result = staged.and_then(|covers_tail| {
            let spared = at_risk.is_empty()
                || (self.tail_copied && dwb.next_flush_spares_last())
                || weakness == Some(Weakness::UnguardedOverlap);
            if spared && !self.options.weakened() {
                return Ok(Protected::Deferred { covers_tail });
            }
            dwb.flush()?;
            Ok(Protected::Flushed { covers_tail })
        });
        match result {
            Ok(protected) => {
                if let Protected::Flushed { .. } = protected {
                    self.stats.dwb_syncs += 1;
                }
                Ok(protected)
            }
            Err(e) => {
                dwb.discard_pending();
                // What the failed flush wrote may have reached the last flush's pages.
                self.tail_copied = false;
                if self.options.protection == super::Protection::Strict {
                    Err(Error::DwbUnavailable {
                        path: dwb.path().to_path_buf(),
                        detail: e.to_string(),
                    })
                } else {
                    self.dwb_failed = true;
                    Ok(if at_risk.is_empty() {
                        Protected::Done
                    } else {
                        Protected::NeedsFreshSegment
                    })
                }
            }
        }
    }

    /// Whether a commit can ever go through a [`DurableWrites`] channel: `O_DIRECT`
    /// segments, no weakened control, and under `'mirror'` an `O_DIRECT` DWB (a buffered
    /// DWB's copies cannot join the submission). [`Wal::open`](super::Wal::open) opens a
    /// channel only where this holds.
    pub(crate) fn takes_durable_writes(&self) -> bool {
        let buffered_mirror = self.options.tail_protection == TailProtection::Mirror
            && (self.dwb.as_ref()).is_some_and(|d| d.mode() != crate::DwbMode::Direct);
        self.options.direct_io && !self.options.weakened() && !buffered_mirror
    }

    /// Whether the last flush stands with a copy of every tail record: durable and intact
    /// (no flush failed or was retracted since, nothing waits to be erased) and nothing
    /// staged to go over it. A commit that writes no DWB can then rewrite the tail block.
    fn last_flush_holds_tail(&self, dwb: &DoubleWriteBuffer) -> bool {
        self.tail_copied && dwb.pending_records() == 0 && dwb.next_flush_spares_last()
    }

    /// Whether one flush can hold copies of the at-risk records. Only a tail recovered from
    /// an earlier session can fail this (commits that would leave one are padded): one
    /// larger than half the ring, or holding a record too large for a DWB slot (the
    /// writer rolls past those at open).
    fn copies_fit(&self, dwb: &DoubleWriteBuffer, at_risk: &[RecordSpan]) -> bool {
        let ring_half = dwb.geometry().ring_bytes() / 2;
        (self.options.weakened() || frame_bytes(at_risk.iter()) <= ring_half)
            && at_risk.iter().all(|r| r.len <= dwb.max_record_bytes())
    }

    /// Stages the copies of a commit at `base` (see [`Self::protect`]): the at-risk set,
    /// then with `mirror_own` the commit's own records that will end in its partial last
    /// block, up to half the ring. Returns whether those cover every one of them.
    fn stage_copies(
        &self,
        dwb: &DoubleWriteBuffer,
        at_risk: &[RecordSpan],
        base: u64,
        body: &[u8],
        spans: &[RecordSpan],
        mirror_own: bool,
    ) -> Result<bool> {
        for span in at_risk {
            let from = (span.offset - self.tail.start) as usize;
            let bytes = &self.tail.bytes[from..from + span.len as usize];
            let _ = dwb.write_encoded_deferred(bytes)?;
        }
        if !mirror_own {
            return Ok(true);
        }
        let budget = dwb.geometry().ring_bytes() / 2;
        let mut used = frame_bytes(at_risk.iter());
        let last_block = round_down(base + body.len() as u64, self.active.block);
        for span in spans.iter().filter(|s| {
            s.user
                && s.len <= dwb.max_record_bytes()
                && base + s.offset + u64::from(s.len) > last_block
        }) {
            used += frame_bytes(std::iter::once(span));
            if used > budget {
                return Ok(false);
            }
            let from = span.offset as usize;
            let _ = dwb.write_encoded_deferred(&body[from..from + span.len as usize])?;
        }
        Ok(true)
    }

    /// Steps 1 and 3 overlapped (see the module documentation): the staged copies are
    /// written and their fdatasync runs alongside the WAL's. Returns the WAL sync's
    /// outcome and whether the copies are durable. A failed flush fails nothing: this
    /// commit's at-risk records were protected by the last flush; the next commit flushes
    /// before its WAL write (and under the strict policy reports a DWB that still fails),
    /// or under the degraded policy rewrites nothing acknowledged.
    fn flush_alongside_wal_sync(&mut self) -> (std::io::Result<()>, bool) {
        let Some(dwb) = &self.dwb else {
            return (self.active.file.sync_data(), false);
        };
        let (copies, wal) = dwb.flush_alongside(self.vfs.as_ref(), &self.active.file);
        let copied = self.note_overlapped_flush(copies.is_ok(), copies.unwrap_or(false));
        (wal, copied)
    }

    /// Counts a DWB flush that ran alongside a WAL sync (`flushed`: it wrote something)
    /// or, when it failed (`!ok`), marks the DWB failed under the degraded policy (under
    /// the strict one the next commit's own flush reports a DWB that still fails).
    /// Returns `ok`: whether the copies are durable.
    fn note_overlapped_flush(&mut self, ok: bool, flushed: bool) -> bool {
        if ok && flushed {
            self.stats.dwb_syncs += 1;
            self.stats.overlapped_syncs += 1;
        } else if !ok && self.options.protection != super::Protection::Strict {
            self.dwb_failed = true;
        }
        ok
    }

    /// The reference design (a weakened configuration for the crash simulator): mirror
    /// every record of the commit, whatever the ring can hold, and none of the at-risk ones.
    fn mirror_like_reference(&mut self, body: &[u8], spans: &[RecordSpan]) -> Result<()> {
        let Some(dwb) = &self.dwb else { return Ok(()) };
        for span in spans.iter().filter(|s| s.user) {
            let from = span.offset as usize;
            let _ = dwb.write_encoded_deferred(&body[from..from + span.len as usize])?;
        }
        dwb.flush()?;
        self.stats.dwb_syncs += 1;
        Ok(())
    }

    /// Hands the kernel back the page-cache pages of synced bytes this writer will not
    /// touch again: every whole page before the one holding the end of the log (the next
    /// commit writes into that one, see [`Self::write_wal`]; the kernel keeps any page the
    /// range covers only in part). Nothing reads an open WAL but a replay, which then
    /// reads the device; in exchange the next commits copy into memory the kernel has just
    /// freed instead of fresh pages, and a log that only grows does not fill the cache
    /// (PostgreSQL drops closed WAL segments the same way when nothing else reads them).
    /// Advice only: a refusal changes nothing on disk, so it is ignored.
    fn release_synced_pages(&mut self) {
        if self.options.direct_io {
            return;
        }
        let below = round_down(self.active.end, PAGE_BYTES);
        let from = self.active.released;
        if below < from + RELEASE_STEP {
            return;
        }
        let _ = self.active.file.drop_cache(from, below - from);
        self.active.released = below;
    }

    /// Step 2: write the commit's bytes at `base`.
    fn write_wal(&mut self, base: u64, body: &[u8]) -> Result<()> {
        let end = base + body.len() as u64;
        let direct = self.options.direct_io;
        let write_start =
            lay_out_write(&mut self.buf, &self.tail, &self.active, base, body, direct);
        let asked = self.buf.len() as u64;
        let span: &[u8] = if self.options.direct_io {
            self.buf.padded_slice()
        } else {
            // To the end of the last page, with the zeros already there: the page cache
            // then need not read that page back from the device to complete the write
            // (a segment's zeros are written past the cache, `segment::ZeroFill`). The
            // first page was this writer's last one, normally still cached.
            let page_end = round_up(write_start + asked, PAGE_BYTES).min(self.active.size);
            self.buf
                .resize_zeroed(asked.max(page_end - write_start) as usize);
            self.buf.as_slice()
        };
        let attempted_end = write_start + span.len() as u64;
        let result = io::write_all_at(self.active.file.as_ref(), span, write_start);
        self.stats.wal_bytes_written += if self.options.direct_io {
            span.len() as u64
        } else {
            asked
        };
        if let Err(e) = result {
            self.active.dirty_end = self.active.dirty_end.max(attempted_end);
            return Err(Error::io("write WAL segment", &self.active.path, e));
        }
        // Everything past `end` that this write covered is zeros now.
        self.active.dirty_end = end;
        Ok(())
    }

    /// Keeps the records overlapping the new partial last block (and their bytes).
    fn update_tail(&mut self, base: u64, body: &[u8], spans: &[RecordSpan]) {
        let end = base + body.len() as u64;
        let window_start = round_down(end, self.active.block);
        let mut records: Vec<RecordSpan> = self
            .tail
            .records
            .iter()
            .copied()
            .filter(|r| r.offset < base)
            .chain(spans.iter().map(|s| RecordSpan {
                offset: base + s.offset,
                ..*s
            }))
            .filter(|r| r.offset + u64::from(r.len) > window_start)
            .collect();
        if end.is_multiple_of(self.active.block) {
            records.clear();
        }
        let start = records.first().map_or(end, |r| r.offset);
        let mut bytes = Vec::with_capacity((end - start) as usize);
        if start < base {
            let from = (start - self.tail.start) as usize;
            bytes.extend_from_slice(&self.tail.bytes[from..]);
            bytes.extend_from_slice(body);
        } else {
            bytes.extend_from_slice(&body[(start - base) as usize..]);
        }
        self.tail = Tail {
            start,
            bytes,
            records,
        };
    }

    /// After a failed WAL write (the LSNs will be reused): erase its leftovers and sync
    /// while this commit's DWB copies still protect the tail block, then void those copies
    /// so a refused record's copy can never stand in for the record that reuses its LSN.
    /// If the clean-up itself fails, nothing can be promised: the writer poisons itself.
    fn undo_failed_write(&mut self, error: Error, protected: Protected) -> Error {
        if let Err(cleanup) = self.clean_active() {
            let detail = format!("a failed write ({error}) could not be undone: {cleanup}");
            self.poisoned = Some(detail.clone());
            return Error::WalPoisoned { detail };
        }
        self.abandon_copies(protected);
        error
    }

    /// A commit is refused after `protect`: its copies must never stand in for the records
    /// that will reuse its LSNs. Staged ones (an overlapped flush not yet written) are
    /// dropped; a flush of its own is voided (the last flush, which protected its write
    /// when it was to be overlapped, or nothing, is left alone).
    fn abandon_copies(&mut self, protected: Protected) {
        let Some(dwb) = &self.dwb else { return };
        match protected {
            Protected::Deferred { .. } => dwb.discard_pending(),
            Protected::Flushed { .. } if !self.options.weakened() => {
                dwb.retract_last_flush();
                self.tail_copied = false;
            }
            _ => {}
        }
    }

    /// Extends the empty active segment with zeros to `size` bytes, durably.
    fn grow_active(&mut self, size: u64) -> Result<()> {
        let mut zeros = AlignedBuf::new(
            (size - self.active.size) as usize,
            self.active.block as usize,
        );
        zeros.resize_zeroed((size - self.active.size) as usize);
        io::write_all_at(
            self.active.file.as_ref(),
            zeros.as_slice(),
            self.active.size,
        )
        .and_then(|()| self.active.file.sync_all())
        .map_err(|e| Error::io("extend segment", &self.active.path, e))?;
        self.active.size = size;
        Ok(())
    }

    /// Erases the leftovers of a failed write past the end of the log and syncs, while
    /// the DWB still holds the at-risk copies from that commit's flush. Needed before the
    /// log leaves this segment: no later commit would rewrite (and so protect) the sector
    /// those leftovers share with acknowledged bytes.
    fn clean_active(&mut self) -> Result<()> {
        if self.active.dirty_end <= self.active.end {
            return Ok(());
        }
        let end = self.active.end;
        self.write_wal(end, &[])?;
        if let Err(e) = self.active.file.sync_data() {
            let detail = format!("fdatasync of {} failed: {e}", self.active.path.display());
            self.poisoned = Some(detail.clone());
            return Err(Error::WalPoisoned { detail });
        }
        self.stats.wal_syncs += 1;
        Ok(())
    }

    /// Starts a new segment for a commit whose first record is `first_lsn`, and syncs the
    /// directory (see [`adopt_new_segment`](Self::adopt_new_segment)).
    fn roll(&mut self, first_lsn: u64, commit_bytes: u64) -> Result<()> {
        self.adopt_new_segment(first_lsn, commit_bytes)?;
        self.sync_dir_if_pending()
    }

    /// Creates (or takes the spare as) the segment for a commit whose first record is
    /// `first_lsn`, and moves the writer to it. Its name is not durable yet: the
    /// directory sync is pending, and done before any record is written into it, so no
    /// half-adopted segment is ever left behind for recovery to trip over.
    fn adopt_new_segment(&mut self, first_lsn: u64, commit_bytes: u64) -> Result<()> {
        self.clean_active()?;
        let block = self.active.block;
        let size = self
            .options
            .segment_size_bytes
            .max(round_up(block + commit_bytes, block));
        let cipher_kind = if self.keys.is_some() {
            segment::CIPHER_AES_256_GCM
        } else {
            0
        };
        let (path, header) = match self.take_spare(size) {
            Some(spare) => segment::adopt_spare(
                self.vfs.as_ref(),
                &self.dir,
                &spare,
                first_lsn,
                block as u32,
                cipher_kind,
            )?,
            None => segment::create_segment_file(
                self.vfs.as_ref(),
                &self.dir,
                first_lsn,
                block as u32,
                size,
                cipher_kind,
                segment::ZeroFill::PastCache,
            )?,
        };
        let cipher = match &self.keys {
            Some(keys) => Some(keys.segment_cipher(keys.active_id(), &header, first_lsn)?),
            None => None,
        };
        let file = self
            .vfs
            .open(
                &path,
                OpenOptions::read_write().with_direct(self.options.direct_io),
            )
            .map_err(|e| open_segment_error(&path, e))?;
        // Only now does the writer move to the new segment (and its cipher).
        self.cipher = cipher;
        // An empty active segment with the same first LSN was replaced by the rename.
        if self
            .segments
            .last()
            .is_some_and(|s| s.first_lsn == first_lsn)
        {
            self.segments.pop();
        }
        self.segments.push(SegmentFile {
            first_lsn,
            path: path.clone(),
        });
        self.active = Active {
            file: Arc::from(file),
            path,
            first_lsn,
            block,
            size,
            end: block,
            dirty_end: block,
            released: 0,
        };
        self.tail = Tail {
            start: block,
            ..Tail::default()
        };
        self.stats.segment_rolls += 1;
        self.dir_sync_pending = true;
        self.start_spare();
        Ok(())
    }

    /// Starts preparing the next segment in the background, if enabled and not running.
    fn start_spare(&mut self) {
        if !self.options.prepare_segments || self.spare.is_some() {
            return;
        }
        let size = self.options.segment_size_bytes;
        if let Some(path) = segment::existing_spare(self.vfs.as_ref(), &self.dir, size) {
            self.spare = Some(SpareJob::Ready { size, path });
            return;
        }
        let (vfs, dir) = (self.vfs.clone(), self.dir.clone());
        let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = cancel.clone();
        let spawned = std::thread::Builder::new()
            .name("doublewrite-spare".into())
            .spawn(move || segment::prepare_spare(vfs.as_ref(), &dir, size, &flag));
        if let Ok(handle) = spawned {
            self.spare = Some(SpareJob::Preparing {
                size,
                cancel,
                handle,
            });
        }
    }

    /// The prepared spare if it is at least `size` bytes (waiting for it to finish);
    /// `None` when there is none or it failed — the caller then creates a segment itself.
    fn take_spare(&mut self, size: u64) -> Option<PathBuf> {
        if self.spare.as_ref().is_none_or(|job| job.size() < size) {
            return None;
        }
        match self.spare.take()? {
            SpareJob::Ready { path, .. } => Some(path),
            SpareJob::Preparing { handle, .. } => handle.join().ok()?.ok(),
        }
    }

    /// Makes the newest segment's name durable, if that is still outstanding.
    fn sync_dir_if_pending(&mut self) -> Result<()> {
        if self.dir_sync_pending {
            self.vfs
                .sync_dir(&self.dir)
                .map_err(|e| Error::io("sync WAL directory", &self.dir, e))?;
            self.dir_sync_pending = false;
        }
        Ok(())
    }

    /// Removes whole segments whose records all precede `lsn`, oldest first, syncing the
    /// directory after each removal so a crash leaves a contiguous run of segments.
    pub(crate) fn truncate_before(&mut self, lsn: u64) -> Result<u64> {
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[1].first_lsn <= lsn {
            let oldest = self.segments[0].clone();
            self.vfs
                .remove_file(&oldest.path)
                .map_err(|e| Error::io("remove segment", &oldest.path, e))?;
            self.segments.remove(0);
            self.vfs
                .sync_dir(&self.dir)
                .map_err(|e| Error::io("sync WAL directory", &self.dir, e))?;
            removed += 1;
        }
        Ok(removed)
    }

    pub(crate) fn dwb(&self) -> Option<&DoubleWriteBuffer> {
        self.dwb.as_ref()
    }
}

/// Ends a commit's bytes with a padding record of `len` bytes (none when `len` is 0).
fn append_padding(body: &mut Vec<u8>, spans: &mut Vec<RecordSpan>, len: u64, first_lsn: u64) {
    if len == 0 {
        return;
    }
    let at = body.len();
    encode_padding_into(body, len as usize, first_lsn);
    spans.push(RecordSpan {
        offset: at as u64,
        len: len as u32,
        user: false,
    });
}

fn open_segment_error(path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::Unsupported {
        return Error::DirectIoUnsupported {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
    }
    Error::io("open segment", path, e)
}

/// Bodies at least this long are copied into a direct-I/O write's buffer with streaming
/// stores ([`io::copy_streaming`]): the device has just read that buffer, and a plain copy
/// into it ran at a third of the speed (docs/PERFORMANCE.md §6, "Streaming copies").
const STREAMING_COPY_MIN: usize = 4096;

/// Lays out the WAL write of a commit of `body` at `base` in `buf`: with `direct`, from the
/// start of its block (the partial block at the end of the log rewritten whole, from the
/// tail kept in memory); then the body, and zeros over the leftovers of an earlier failed
/// write beyond its end. Returns where the write starts.
fn lay_out_write(
    buf: &mut AlignedBuf,
    tail: &Tail,
    active: &Active,
    base: u64,
    body: &[u8],
    direct: bool,
) -> u64 {
    buf.clear();
    let write_start = if direct {
        round_down(base, active.block)
    } else {
        base
    };
    if write_start < base {
        let from = (write_start - tail.start) as usize;
        let to = (base - tail.start) as usize;
        buf.extend_from_slice(&tail.bytes[from..to]);
    }
    if direct && body.len() >= STREAMING_COPY_MIN {
        buf.extend_from_slice_with(body, io::copy_streaming);
    } else {
        buf.extend_from_slice(body);
    }
    let end = base + body.len() as u64;
    if active.dirty_end > end {
        let len = buf.len() + (active.dirty_end - end) as usize;
        buf.resize_zeroed(len);
    }
    write_start
}

/// Bytes the DWB frames of these records take in the ring (prefix + record each).
fn frame_bytes<'a>(records: impl Iterator<Item = &'a RecordSpan>) -> u64 {
    records
        .map(|r| u64::from(r.len) + crate::dwb::FRAME_PREFIX_SIZE as u64)
        .sum()
}
