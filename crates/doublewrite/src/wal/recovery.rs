//! Recovery: reads every segment, repairs damaged records from the DWB, cuts a torn tail,
//! and refuses to open when acknowledged records are lost.
//!
//! # Decision table
//!
//! Records are read in order; at each position the next record must have the *expected*
//! LSN (previous + 1). When it does not (bad magic, version, length or CRC, cut short,
//! all zeros, or a valid record with another LSN), recovery decides with this table:
//!
//! ```text
//!                              | INTACT | SEG_END | REPAIR | TORN_TAIL | LOST
//! -----------------------------+--------+---------+--------+-----------+------
//! record at expected position  | valid  | damaged | damaged| damaged   | damaged
//! expected LSN starts next seg |   -    |   yes   |   no   |   no      |   no
//! DWB copy of expected LSN     |   -    |   -     | valid  | none      | none
//! later commit proven          |   -    |   -     |   -    | no        | yes
//! -----------------------------+--------+---------+--------+-----------+------
//! action                       | keep   | next    | write  | cut here, | ERR_WAL_
//!                              |        | segment | copy   | zero rest | CORRUPT
//!                              |        |         | back   |           |
//! ```
//!
//! Legend:
//! - *expected LSN starts next seg*: a later segment exists and its first LSN is the
//!   expected one, so this segment simply ends here (checked first: a DWB copy of that LSN
//!   belongs to the next segment, not here).
//! - *DWB copy*: the newest copy of the expected LSN whose frame prefix and record CRC
//!   verify. The DWB only ever holds copies of records whose commit was synced (the
//!   at-risk set of a later commit), so a copy proves the record was acknowledged.
//! - *later commit proven*: a later segment exists, or a valid record after the damage
//!   has a `commit_lsn` above the expected LSN. Commits are written one after another,
//!   each only after the previous one synced, so either proves the damaged record's
//!   commit was synced and acknowledged. Without such proof the damage belongs to the
//!   last commit, which was still in flight: its records were never acknowledged.
//!
//! Every combination maps to exactly one case; `classify` is that table, and
//! `decision_table_covers_every_combination` checks it.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::align::round_down;
use crate::dwb::DoubleWriteBuffer;
use crate::error::{Error, Result};
use crate::io::{self, OpenOptions, Vfs};
use crate::record::{check_encoded, HEADER_SIZE, RECORD_MAGIC};

use super::segment::{read_header, SegmentFile, SegmentHeader};
use super::Weakness;

/// What the table decides at a damaged position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The segment ends here; go on with the next one.
    SegmentEnd,
    /// Write the DWB copy back here and go on.
    Repair,
    /// The last commit was in flight: cut the log here.
    TornTail,
    /// Acknowledged records are gone: refuse to open.
    Lost,
}

/// The recovery decision table (see the module documentation).
pub fn classify(
    expected_starts_next_segment: bool,
    dwb_copy_valid: bool,
    later_commit_proven: bool,
) -> Decision {
    match (
        expected_starts_next_segment,
        dwb_copy_valid,
        later_commit_proven,
    ) {
        (true, _, _) => Decision::SegmentEnd,
        (false, true, _) => Decision::Repair,
        (false, false, false) => Decision::TornTail,
        (false, false, true) => Decision::Lost,
    }
}

/// A record the recovery accepted, for rebuilding the writer's tail state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSpan {
    pub offset: u64,
    pub len: u32,
    pub user: bool,
}

/// One segment after recovery.
#[derive(Debug, Clone)]
pub struct RecoveredSegment {
    pub file: SegmentFile,
    pub header: SegmentHeader,
    /// Offset just past the last valid record (or padding).
    pub end_offset: u64,
    pub records: u64,
}

/// What recovery found and did.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub segments: Vec<RecoveredSegment>,
    pub next_lsn: u64,
    pub records: u64,
    pub repaired_from_dwb: u64,
    pub torn_tail_bytes: u64,
    /// Bytes of the last segment from the first record overlapping the final partial
    /// block to the end, and those records: what the next commit puts at risk.
    pub tail_bytes: Vec<u8>,
    pub tail_records: Vec<RecordSpan>,
    /// Every record repaired from the DWB: (segment, offset, LSN).
    pub repaired: Vec<(std::path::PathBuf, u64, u64)>,
    /// Where the torn tail was cut: (segment, offset, first LSN cut).
    pub torn_tail_at: Option<(std::path::PathBuf, u64, u64)>,
}

/// Recovers `segments` (oldest first, at least one). Repairs and zeroing are written
/// and synced before this returns.
pub fn recover(
    vfs: &Arc<dyn Vfs>,
    segments: &[SegmentFile],
    dwb: Option<&DoubleWriteBuffer>,
    weakness: Option<Weakness>,
) -> Result<Recovered> {
    scan(vfs, segments, dwb, weakness, true, &mut |_, _| {})
}

/// The same decisions as [`recover`], taken on read-only handles and never written:
/// what a recovery would repair, cut or refuse.
pub fn dry_run(
    vfs: &Arc<dyn Vfs>,
    segments: &[SegmentFile],
    dwb: Option<&DoubleWriteBuffer>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Recovered> {
    scan(vfs, segments, dwb, None, false, progress)
}

fn scan(
    vfs: &Arc<dyn Vfs>,
    segments: &[SegmentFile],
    dwb: Option<&DoubleWriteBuffer>,
    weakness: Option<Weakness>,
    write: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Recovered> {
    assert!(!segments.is_empty(), "recovery needs a segment");
    let mut expected = segments[0].first_lsn;
    let mut out = Recovered {
        segments: Vec::with_capacity(segments.len()),
        next_lsn: 0,
        records: 0,
        repaired_from_dwb: 0,
        torn_tail_bytes: 0,
        tail_bytes: Vec::new(),
        tail_records: Vec::new(),
        repaired: Vec::new(),
        torn_tail_at: None,
    };
    let mut buf = Vec::new();
    for (index, segment) in segments.iter().enumerate() {
        let next_first_lsn = segments.get(index + 1).map(|s| s.first_lsn);
        if segment.first_lsn != expected {
            return Err(Error::WalCorrupt {
                path: segment.path.clone(),
                offset: 0,
                lsn: expected,
                detail: format!(
                    "segment starts at LSN {} but the previous one ends before LSN {expected}: records are missing",
                    segment.first_lsn
                ),
            });
        }
        let open_options = if write {
            OpenOptions::read_write()
        } else {
            OpenOptions::read_only()
        };
        let file = vfs
            .open(&segment.path, open_options)
            .map_err(|e| Error::io("open segment", &segment.path, e))?;
        let header = read_header(file.as_ref(), segment)?;
        let len = file
            .len()
            .map_err(|e| Error::io("measure segment", &segment.path, e))?;
        // Reused across segments; every byte is overwritten by the read, so only growth
        // needs initializing.
        if buf.len() < len as usize {
            buf.resize(len as usize, 0);
        } else {
            buf.truncate(len as usize);
        }
        io::read_exact_at(file.as_ref(), &mut buf, 0)
            .map_err(|e| Error::io("read segment", &segment.path, e))?;
        let mut scan = scan_segment(
            &mut buf,
            segment,
            &header,
            expected,
            next_first_lsn,
            dwb,
            weakness,
        )?;
        if next_first_lsn.is_none() {
            scan = recheck_last_commit(
                file.as_ref(),
                &mut buf,
                scan,
                segment,
                &header,
                expected,
                dwb,
                weakness,
            )?;
        }
        out.repaired.extend(
            scan.repaired_at
                .iter()
                .map(|&(offset, lsn)| (segment.path.clone(), offset, lsn)),
        );
        if next_first_lsn.is_none() && scan.torn_tail_bytes > 0 {
            out.torn_tail_at = Some((segment.path.clone(), scan.end_offset, scan.next_lsn));
        }
        for (offset, bytes) in &scan.repairs {
            if write && weakness != Some(Weakness::NoRepairWriteBack) {
                io::write_all_at(file.as_ref(), bytes, *offset)
                    .map_err(|e| Error::io("write repaired record", &segment.path, e))?;
            }
        }
        // The last segment is synced even when nothing changed: recovery may have read
        // bytes of a commit whose sync failed; what it returns must be durable.
        let mut dirty = write && (!scan.repairs.is_empty() || next_first_lsn.is_none());
        if let Some((from, to)) = scan.zero_range.filter(|_| write) {
            let zeros = vec![0u8; (to - from) as usize];
            io::write_all_at(file.as_ref(), &zeros, from)
                .map_err(|e| Error::io("erase torn tail", &segment.path, e))?;
            buf[from as usize..to as usize].fill(0);
            dirty = true;
        }
        if dirty {
            file.sync_data()
                .map_err(|e| Error::io("sync repaired segment", &segment.path, e))?;
        }
        out.repaired_from_dwb += scan.repaired_records;
        out.records += scan.records;
        expected = scan.next_lsn;
        if next_first_lsn.is_none() {
            out.torn_tail_bytes = scan.torn_tail_bytes;
            let tail_start = scan.tail.front().map_or(scan.end_offset, |r| r.offset);
            out.tail_bytes = buf[tail_start as usize..scan.end_offset as usize].to_vec();
            out.tail_records = scan.tail.into_iter().collect();
        }
        progress(index as u64 + 1, segments.len() as u64);
        out.segments.push(RecoveredSegment {
            file: segment.clone(),
            header,
            end_offset: scan.end_offset,
            records: scan.records,
        });
    }
    out.next_lsn = expected;
    Ok(out)
}

struct SegmentScan {
    next_lsn: u64,
    end_offset: u64,
    records: u64,
    /// Byte ranges to write back (only blocks that differ from the disk).
    repairs: Vec<(u64, Vec<u8>)>,
    repaired_records: u64,
    /// (offset, LSN) of each repaired record.
    repaired_at: Vec<(u64, u64)>,
    /// Offset of the first record of the last commit found.
    last_commit_start: u64,
    zero_range: Option<(u64, u64)>,
    torn_tail_bytes: u64,
    tail: VecDeque<RecordSpan>,
}

fn scan_segment(
    buf: &mut [u8],
    segment: &SegmentFile,
    header: &SegmentHeader,
    mut expected: u64,
    next_first_lsn: Option<u64>,
    dwb: Option<&DoubleWriteBuffer>,
    weakness: Option<Weakness>,
) -> Result<SegmentScan> {
    let block = u64::from(header.block_size_bytes);
    let len = buf.len() as u64;
    let mut pos = header.data_start();
    let mut records = 0;
    let mut repairs = Vec::new();
    let mut repaired_records = 0;
    let mut repaired_at = Vec::new();
    let mut last_commit_start = header.data_start();
    let mut tail: VecDeque<RecordSpan> = VecDeque::new();
    let accept = |tail: &mut VecDeque<RecordSpan>, span: RecordSpan| {
        let end = span.offset + u64::from(span.len);
        tail.push_back(span);
        let window_start = round_down(end, block);
        while tail
            .front()
            .is_some_and(|r| r.offset + u64::from(r.len) <= window_start)
        {
            tail.pop_front();
        }
    };
    loop {
        let here = &buf[pos.min(len) as usize..];
        let valid = check_encoded(here).ok().map(|(h, _)| h);
        match valid {
            Some(h) if h.is_internal() => {
                accept(
                    &mut tail,
                    RecordSpan {
                        offset: pos,
                        len: h.record_len() as u32,
                        user: false,
                    },
                );
                pos += h.record_len() as u64;
                continue;
            }
            Some(h) if h.lsn == expected => {
                if h.commit_lsn == h.lsn {
                    last_commit_start = pos;
                }
                accept(
                    &mut tail,
                    RecordSpan {
                        offset: pos,
                        len: h.record_len() as u32,
                        user: true,
                    },
                );
                records += 1;
                expected += 1;
                pos += h.record_len() as u64;
                continue;
            }
            _ => {}
        }
        // Damaged (or the end): consult the decision table.
        let starts_next = next_first_lsn == Some(expected);
        let copy = if starts_next {
            None
        } else {
            lookup_copy(dwb, here, expected, weakness)?
        };
        let copy = copy.filter(|c| pos + c.len() as u64 <= len);
        let later_commit_proven = match next_first_lsn {
            Some(next) if next > expected => true,
            _ => later_commit_after(buf, pos + 1, expected),
        };
        let (zero_range, torn_tail_bytes) = match classify(
            starts_next,
            copy.is_some(),
            later_commit_proven,
        ) {
            Decision::Repair => {
                let copy = copy.expect("repair has a copy");
                let at = pos as usize;
                // Write back only the blocks that differ. A block the crash did not touch
                // is intact, and rewriting it would put its other records at risk: only
                // the blocks that were in flight have their acknowledged bytes in the DWB.
                let mut block_start = round_down(pos, block);
                while block_start < pos + copy.len() as u64 {
                    let from = block_start.max(pos) as usize;
                    let to = (block_start + block).min(pos + copy.len() as u64) as usize;
                    if buf[from..to] != copy[from - at..to - at] {
                        repairs.push((from as u64, copy[from - at..to - at].to_vec()));
                    }
                    block_start += block;
                }
                buf[at..at + copy.len()].copy_from_slice(&copy);
                repaired_records += 1;
                repaired_at.push((pos, expected));
                // Loop again: the repaired bytes now verify as the expected record.
                continue;
            }
            Decision::SegmentEnd => {
                // Bytes after the end of a closed segment (an unsynced write that failed
                // before the roll) are never read: the next segment continues the log.
                (None, 0)
            }
            Decision::Lost => {
                let detail = match next_first_lsn {
                    Some(next) if next > expected => format!(
                        "the record is damaged, the DWB holds no valid copy, and the next segment starts at LSN {next}"
                    ),
                    _ => "the record is damaged, the DWB holds no valid copy, and records of a later commit follow it".to_string(),
                };
                return Err(Error::WalCorrupt {
                    path: segment.path.clone(),
                    offset: pos,
                    lsn: expected,
                    detail,
                });
            }
            Decision::TornTail => {
                let garbage_end = last_nonzero_end(buf, pos);
                let zero_range = (garbage_end > pos).then(|| {
                    let to = crate::align::round_up(garbage_end, block).min(len);
                    (pos, to)
                });
                (zero_range, garbage_end.saturating_sub(pos))
            }
        };
        return Ok(SegmentScan {
            next_lsn: expected,
            end_offset: pos,
            records,
            repairs,
            repaired_records,
            repaired_at,
            last_commit_start,
            zero_range,
            torn_tail_bytes,
            tail,
        });
    }
}

/// Reads the last commit of the log again from the device, past the kernel's cache, and
/// rescans if it differs. Only the last commit can be in doubt: a failed sync poisons the
/// writer. And after a failed writeback Linux keeps the unwritten bytes cached but
/// *clean*, so a reopen in the same boot would read — and build on — data the device never
/// got ("fsyncgate"); a later sync would not write it either.
#[allow(clippy::too_many_arguments)]
fn recheck_last_commit(
    file: &dyn crate::io::VfsFile,
    buf: &mut [u8],
    first: SegmentScan,
    segment: &SegmentFile,
    header: &SegmentHeader,
    expected: u64,
    dwb: Option<&DoubleWriteBuffer>,
    weakness: Option<Weakness>,
) -> Result<SegmentScan> {
    let block = u64::from(header.block_size_bytes);
    let len = buf.len() as u64;
    let from = round_down(first.last_commit_start, block);
    let to = crate::align::round_up(first.end_offset, block).min(len);
    if to <= from || file.drop_cache(from, to - from).is_err() {
        return Ok(first);
    }
    let mut device = vec![0u8; (to - from) as usize];
    io::read_exact_at(file, &mut device, from)
        .map_err(|e| Error::io("read segment", &segment.path, e))?;
    // The first scan applied its repairs to `buf`; those inside the range are redone by
    // the second scan if the device still needs them.
    let repaired_in_range = first
        .repairs
        .iter()
        .any(|(offset, bytes)| offset + bytes.len() as u64 > from);
    if !repaired_in_range && buf[from as usize..to as usize] == device[..] {
        return Ok(first);
    }
    buf[from as usize..to as usize].copy_from_slice(&device);
    let mut second = scan_segment(buf, segment, header, expected, None, dwb, weakness)?;
    // Repairs below the re-read range are already in `buf`: the second scan sees them
    // as valid, but they still have to be written back.
    let mut repairs: Vec<(u64, Vec<u8>)> = first
        .repairs
        .into_iter()
        .filter(|(offset, bytes)| offset + bytes.len() as u64 <= from)
        .collect();
    repairs.append(&mut second.repairs);
    let mut repaired_at: Vec<(u64, u64)> = first
        .repaired_at
        .into_iter()
        .filter(|(offset, _)| *offset < from)
        .collect();
    repaired_at.extend(second.repaired_at.iter().copied());
    repaired_at.sort_unstable();
    repaired_at.dedup();
    second.repaired_records = repaired_at.len() as u64;
    second.repairs = repairs;
    second.repaired_at = repaired_at;
    Ok(second)
}

/// The DWB copy recovery may use for the record expected at a damaged position.
fn lookup_copy(
    dwb: Option<&DoubleWriteBuffer>,
    damaged: &[u8],
    expected: u64,
    weakness: Option<Weakness>,
) -> Result<Option<Vec<u8>>> {
    let Some(dwb) = dwb else { return Ok(None) };
    let lsn = if weakness == Some(Weakness::LookupByDamagedHeader) {
        // The reference's behaviour: trust the LSN of a header that still parses; give
        // up when it does not.
        match crate::record::RecordHeader::parse(damaged) {
            Ok(h) => h.lsn,
            Err(_) => return Ok(None),
        }
    } else {
        expected
    };
    let copy = dwb.recover_encoded(lsn)?;
    Ok(copy.filter(|bytes| {
        check_encoded(bytes).is_ok_and(|(h, _)| h.lsn == expected && h.record_len() == bytes.len())
    }))
}

/// Whether a valid record (or padding) of a commit later than the one holding `expected`
/// lies in `buf[from..]`: its `commit_lsn` is above `expected`.
fn later_commit_after(buf: &[u8], from: u64, expected: u64) -> bool {
    let from = (from as usize).min(buf.len());
    let mut offset = from;
    while let Some(found) = find_magic(&buf[offset..]) {
        let at = offset + found;
        if let Ok((h, _)) = check_encoded(&buf[at..]) {
            if h.commit_lsn > expected {
                return true;
            }
        }
        offset = at + 1;
    }
    false
}

/// The first record magic in `bytes` with room for a header after it (SIMD search).
fn find_magic(bytes: &[u8]) -> Option<usize> {
    memchr::memmem::find(bytes, &RECORD_MAGIC).filter(|&at| bytes.len() - at >= HEADER_SIZE)
}

/// Offset just past the last non-zero byte at or after `from` (`from` if there is none).
/// Scans backwards a word at a time: the end of a segment is usually all zeros.
fn last_nonzero_end(buf: &[u8], from: u64) -> u64 {
    let from = (from as usize).min(buf.len());
    let region = &buf[from..];
    let words = region.len() / 8;
    let tail = &region[words * 8..];
    if let Some(i) = tail.iter().rposition(|&b| b != 0) {
        return (from + words * 8 + i + 1) as u64;
    }
    for w in (0..words).rev() {
        let chunk = &region[w * 8..w * 8 + 8];
        if u64::from_le_bytes(chunk.try_into().expect("8 bytes")) != 0 {
            let i = chunk
                .iter()
                .rposition(|&b| b != 0)
                .expect("a non-zero byte");
            return (from + w * 8 + i + 1) as u64;
        }
    }
    from as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every combination of the table's conditions maps to exactly one decision, and each
    /// decision is reachable (the labels match the module documentation).
    #[test]
    fn decision_table_covers_every_combination() {
        let mut seen = std::collections::BTreeMap::new();
        for starts_next in [false, true] {
            for copy in [false, true] {
                for later in [false, true] {
                    let d = classify(starts_next, copy, later);
                    let expected = if starts_next {
                        Decision::SegmentEnd
                    } else if copy {
                        Decision::Repair
                    } else if later {
                        Decision::Lost
                    } else {
                        Decision::TornTail
                    };
                    assert_eq!(d, expected, "({starts_next}, {copy}, {later})");
                    *seen.entry(format!("{d:?}")).or_insert(0) += 1;
                }
            }
        }
        assert_eq!(seen.len(), 4, "every decision is reachable: {seen:?}");
    }

    #[test]
    fn magic_search_finds_every_occurrence_and_ignores_cut_headers() {
        let mut buf = vec![0u8; 300];
        buf[10..14].copy_from_slice(&RECORD_MAGIC);
        buf[280..284].copy_from_slice(&RECORD_MAGIC); // too close to the end for a header
        assert_eq!(find_magic(&buf), Some(10));
        assert_eq!(find_magic(&buf[11..]), None);
    }

    #[test]
    fn last_nonzero() {
        let mut buf = vec![0u8; 100];
        assert_eq!(last_nonzero_end(&buf, 10), 10);
        buf[50] = 1;
        assert_eq!(last_nonzero_end(&buf, 10), 51);
        assert_eq!(last_nonzero_end(&buf, 60), 60);
    }
}
