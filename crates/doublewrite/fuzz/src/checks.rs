//! What every fuzz input must satisfy, shared by the fuzz targets (`fuzz_targets/*.rs`)
//! and the stable regression test `crates/doublewrite/tests/fuzz_regressions.rs`, which
//! includes this file with `#[path]` (so it may use only `doublewrite` and `std`, and
//! reaches the allocation meter as `crate::alloc_meter`).
//!
//! Each check decodes attacker-controlled bytes through the public API and panics when:
//! the core panics; an error is not a typed `ERR_*` error (or is an I/O error, which a
//! fault-free simulated disk never produces, or a caught internal panic); a successful
//! decode is inconsistent (re-encoding differs, a recovered copy is not the newest valid
//! one, a recovered WAL does not reopen to the same records, an acknowledged append does
//! not survive a reopen); or the largest single allocation exceeds [`alloc_bound`].
//! `docs/FUZZING.md` explains the input layouts and the bounds.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use doublewrite::io::sim::SimVfs;
use doublewrite::io::{self, OpenOptions, Vfs};
use doublewrite::record::{
    check_encoded, RecordHeader, ENCRYPTED_FLAG, HEADER_SIZE, MAX_PAYLOAD_BYTES,
};
use doublewrite::wal::segment::segment_name;
use doublewrite::wal::verify;
use doublewrite::{
    DoubleWriteBuffer, DwbMode, DwbOptions, Error, RecordError, RecordInput, RecordType,
    TailProtection, Wal, WalOptions, WalRecord,
};

/// The three fuzz targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One WAL record.
    Record,
    /// A double-write buffer file.
    DwbFile,
    /// A WAL directory: one or two segments and optionally `wal.dwb`.
    WalSegment,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Record, Target::DwbFile, Target::WalSegment];

    /// The cargo-fuzz target name (also the corpus directory name).
    pub fn name(self) -> &'static str {
        match self {
            Target::Record => "record",
            Target::DwbFile => "dwb_file",
            Target::WalSegment => "wal_segment",
        }
    }
}

const MIB: usize = 1024 * 1024;

/// The largest single allocation allowed while checking an input of `input_len` bytes.
///
/// - `record`: the payload copy of `decode` and the buffer of `encode` are each at most
///   the input; error messages are a few hundred bytes.
/// - `dwb_file`: the simulated file holds the input (its buffer is sized exactly); a
///   frame read for a lookup is at most the ring, so at most the input; the staging
///   buffer is 5 blocks and the header claims at most half the file as a block (the file
///   must hold the header block and at least one slot); the open-time scan reads the
///   ring in 1 MiB chunks (`SCAN_CHUNK_BYTES`) plus one block. So 3 × input + 1 MiB; the
///   bound is 4 × input + 2 MiB.
/// - `wal_segment`: every segment is read whole (at most the input), the DWB as above.
///   A DWB the target does not supply, or that is corrupt, is (re)created at most 1 MiB
///   large (see `dwb_sizes`) unless the input itself is larger; the simulated disk grows
///   a file's buffer by doubling as it is written, so at most 2 × its size. The writer's
///   commit buffer is 17 blocks of the last segment's block size, a header field that
///   must fit in the segment (≤ input) for recovery to succeed; the protection block is
///   a page or the direct-I/O alignment, so 17 × 64 KiB stays within the fixed part.
///   So 8 × input + 2 MiB (1 MiB scan chunk, 1 MiB for the small files the WAL creates).
///   Nothing here may come near the 64 MiB payload limit that a header field can claim.
pub fn alloc_bound(target: Target, input_len: usize) -> usize {
    match target {
        Target::Record => input_len + 64 * 1024,
        Target::DwbFile => 4 * input_len + 2 * MIB,
        Target::WalSegment => 8 * input_len + 2 * MIB,
    }
}

/// Runs the check of `target` on `data` under the allocation meter and asserts the bound.
pub fn run(target: Target, data: &[u8]) {
    crate::alloc_meter::reset();
    match target {
        Target::Record => record(data),
        Target::DwbFile => dwb_file(data),
        Target::WalSegment => wal_dir(data),
    }
    let usage = crate::alloc_meter::usage();
    let bound = alloc_bound(target, data.len());
    assert!(
        usage.largest <= bound,
        "{}: a {}-byte input made a single allocation of {} bytes, above the bound of {bound} \
         (peak live heap {} bytes)",
        target.name(),
        data.len(),
        usage.largest,
        usage.peak_live,
    );
}

// ---------------------------------------------------------------------------------------
// Known findings

/// Findings reported and not yet fixed in the core. The fuzz targets tolerate them (so
/// fuzzing goes on past them, see `fuzz_targets/*.rs`) unless `DOUBLEWRITE_FUZZ_STRICT=1`;
/// the stable regression test does not, and has a failing test for each
/// (`tests/fuzz_regressions.rs`, `finding_*`).
static TOLERATE_KNOWN_FINDINGS: AtomicBool = AtomicBool::new(false);

/// Whether the checks let the known findings pass.
pub fn tolerate_known_findings(on: bool) {
    TOLERATE_KNOWN_FINDINGS.store(on, Ordering::Relaxed);
}

#[allow(dead_code)] // called by the predicates of known findings, when there are any
fn tolerated() -> bool {
    TOLERATE_KNOWN_FINDINGS.load(Ordering::Relaxed)
}

// None at the moment: findings 1-9 (docs/FUZZING.md) are fixed in the core. To let runs
// go on past a newly reported finding until it is fixed, add a predicate here that
// recognises its inputs (or its error) and returns `tolerated() && …`, call it where the
// check would fail, and give the finding a failing `finding_*` test in
// `tests/fuzz_regressions.rs`.

// ---------------------------------------------------------------------------------------
// Errors

fn typed_record_error(context: &str, e: &RecordError) {
    assert!(
        e.code().starts_with("ERR_"),
        "{context}: untyped record error {e:?}"
    );
    assert!(!e.to_string().is_empty(), "{context}: empty message");
}

fn typed_error(context: &str, e: &Error) {
    let code = e.code();
    let message = e.to_string();
    assert!(code.starts_with("ERR_"), "{context}: untyped error {e:?}");
    assert!(!message.is_empty(), "{context}: empty message");
    assert_ne!(
        code, "ERR_IO",
        "{context}: an I/O error on a fault-free simulated disk means the core read or \
         wrote out of bounds: {message}"
    );
    assert!(
        !message.contains("internal error"),
        "{context}: a panic was caught inside the core: {message}"
    );
}

// ---------------------------------------------------------------------------------------
// record

/// `RecordHeader::parse`, `check_encoded`, `WalRecord::decode` and `decode_prefix` on
/// `data`: no panic, typed errors, mutually consistent verdicts, and whatever decodes
/// re-encodes to exactly the input bytes.
pub fn record(data: &[u8]) {
    let parsed = RecordHeader::parse(data);
    match &parsed {
        Ok(h) => {
            assert!(data.len() >= HEADER_SIZE);
            assert!(h.payload_len <= MAX_PAYLOAD_BYTES);
            assert_eq!(h.record_len(), HEADER_SIZE + h.payload_len as usize);
            // Every header byte is a field: the header re-encodes to the input.
            assert_eq!(
                &h.encode()[..],
                &data[..HEADER_SIZE],
                "header re-encodes differently"
            );
        }
        Err(e) => typed_record_error("RecordHeader::parse", e),
    }

    let checked = check_encoded(data);
    match (&checked, &parsed) {
        (Ok((h, payload)), Ok(p)) => {
            assert_eq!(h, p, "check_encoded and parse disagree");
            assert_eq!(payload.len(), h.payload_len as usize);
            assert_eq!(*payload, &data[HEADER_SIZE..h.record_len()]);
            assert_eq!(h.compute_crc(payload), h.crc);
        }
        (Ok(_), Err(e)) => panic!("check_encoded accepted what parse refused: {e:?}"),
        (Err(e), Ok(h)) => {
            typed_record_error("check_encoded", e);
            match e {
                RecordError::Truncated { needed_bytes, .. } => {
                    assert!(data.len() < h.record_len());
                    assert_eq!(*needed_bytes, h.record_len() as u64);
                }
                RecordError::ChecksumMismatch { .. } => assert!(data.len() >= h.record_len()),
                other => panic!("header parsed but check_encoded said {other:?}"),
            }
        }
        (Err(e), Err(p)) => assert_eq!(e, p, "check_encoded and parse refuse differently"),
    }

    match WalRecord::decode(data) {
        Ok(r) => {
            let Ok((h, payload)) = &checked else {
                panic!("decode accepted what check_encoded refused")
            };
            assert_eq!(h.record_len(), data.len());
            assert_eq!(r.header(), h);
            assert_eq!(r.payload(), *payload);
            assert_eq!(r.encoded_len(), data.len());
            r.verify_checksum().expect("a decoded record verifies");
            assert_eq!(r.encode(), data, "decode then encode changed the bytes");
            // A plain user record is also what the public constructor builds from its
            // fields. (The decoder accepts commit LSN 0 on a user record; the constructor
            // refuses it, so those are compared only through encode above.)
            if !h.is_internal() && h.record_type & ENCRYPTED_FLAG == 0 && h.commit_lsn >= 1 {
                let rebuilt = WalRecord::with_commit_lsn(
                    h.record_type,
                    h.lsn,
                    h.commit_lsn,
                    h.tenant_id,
                    h.vshard_id,
                    h.database_id,
                    payload.to_vec(),
                )
                .expect("the fields of a decoded user record are valid");
                assert_eq!(rebuilt.encode(), data, "constructor encodes differently");
            }
        }
        Err(e) => {
            typed_record_error("WalRecord::decode", &e);
            match &checked {
                Ok((h, _)) => assert_eq!(
                    e,
                    RecordError::TrailingBytes {
                        extra_bytes: (data.len() - h.record_len()) as u64
                    }
                ),
                Err(c) => assert_eq!(&e, c),
            }
        }
    }

    match WalRecord::decode_prefix(data) {
        Ok((r, used)) => {
            let Ok((h, _)) = &checked else {
                panic!("decode_prefix accepted what check_encoded refused")
            };
            assert_eq!(used, h.record_len());
            assert_eq!(r.encode(), &data[..used]);
        }
        Err(e) => {
            typed_record_error("WalRecord::decode_prefix", &e);
            assert!(checked.is_err());
        }
    }
}

// ---------------------------------------------------------------------------------------
// dwb_file

/// What one open of a DWB file found: its geometry, its frames, and the copy returned
/// for each probed LSN.
#[derive(Debug, PartialEq, Eq)]
struct DwbProbe {
    geometry: doublewrite::Geometry,
    lsns: Vec<u64>,
    frames: Vec<(u64, u64, u64, u32)>,
    copies: Vec<(u64, Option<Vec<u8>>)>,
}

/// Writes `data` as a DWB file on a simulated disk, opens it in buffered and in direct
/// mode, lists its frames and looks up every indexed LSN and a few derived from the input.
/// Both modes must see the same thing, every returned copy must be the newest valid copy
/// of its LSN, and the file must be left byte-for-byte unchanged.
///
/// The input is checked as given and, when fixing its checksums changes it (see
/// [`fix_dwb_crcs`]), once more with valid checksums, so mutations reach the logic
/// behind the CRC checks.
pub fn dwb_file(data: &[u8]) {
    dwb_file_once(data);
    let mut fixed = data.to_vec();
    fix_dwb_crcs(&mut fixed);
    if fixed != data {
        dwb_file_once(&fixed);
    }
}

fn dwb_file_once(data: &[u8]) {
    let sim = SimVfs::new();
    let dir = Path::new("/fuzz");
    sim.create_dir_all(dir).expect("create dir");
    let path = dir.join("wal.dwb");
    let file = sim
        .open(&path, OpenOptions::create_new())
        .expect("create file");
    io::write_all_at(file.as_ref(), data, 0).expect("write input");
    file.sync_all().expect("sync input");
    drop(file);

    // The simulated disk demands 4096-byte alignment for direct I/O by default; a file
    // with 512-byte blocks opens in direct mode only where 512 is enough.
    let buffered = probe_dwb(&sim, &path, DwbMode::Buffered, data);
    let direct_4096 = probe_dwb(&sim, &path, DwbMode::Direct, data);
    sim.set_direct_io_alignment(512);
    let direct_512 = probe_dwb(&sim, &path, DwbMode::Direct, data);
    for (name, other) in [
        ("direct (4096)", &direct_4096),
        ("direct (512)", &direct_512),
    ] {
        if let (Some(b), Some(o)) = (&buffered, other) {
            assert_eq!(
                b, o,
                "buffered and {name} mode read the same file differently"
            );
        }
    }
    assert!(
        direct_4096.is_none() || direct_512.is_some(),
        "opens in direct mode with 4096-byte alignment but not with 512"
    );
    assert!(
        sim.read_file(&path).expect("file still there") == data,
        "opening and reading a DWB modified the file"
    );
}

fn probe_dwb(sim: &SimVfs, path: &Path, mode: DwbMode, data: &[u8]) -> Option<DwbProbe> {
    let context = format!("DoubleWriteBuffer::open_with({mode:?})");
    let dwb = match DoubleWriteBuffer::open_with(Arc::new(sim.clone()), path, DwbOptions::new(mode))
    {
        Ok(dwb) => dwb,
        Err(e) => {
            typed_error(&context, &e);
            assert!(
                matches!(e.code(), "ERR_DWB_CORRUPT" | "ERR_DIRECT_IO_UNSUPPORTED"),
                "{context}: unexpected error {e}"
            );
            return None;
        }
    };
    let geometry = dwb.geometry();
    assert!(
        geometry.file_bytes() <= data.len() as u64,
        "opened a DWB whose geometry needs more than the file"
    );
    let lsns = dwb.indexed_lsns();
    let frames = dwb.frames();
    assert!(
        lsns.windows(2).all(|w| w[0] < w[1]),
        "indexed LSNs not sorted"
    );
    assert!(
        frames.windows(2).all(|w| w[0].1 <= w[1].1),
        "frames not by seq"
    );
    let framed: BTreeSet<u64> = frames.iter().map(|f| f.0).collect();
    assert_eq!(
        framed,
        lsns.iter().copied().collect::<BTreeSet<u64>>(),
        "indexed LSNs and frames disagree"
    );
    for &(_, _, ring_pos, record_len) in &frames {
        assert!(record_len as usize >= HEADER_SIZE && record_len <= geometry.max_record_bytes);
        assert!(ring_pos + 24 + u64::from(record_len) <= geometry.ring_bytes());
    }

    let mut probes: Vec<u64> = lsns.iter().copied().take(256).collect();
    probes.extend([0, 1, u64::MAX]);
    if let Some(last) = lsns.last() {
        probes.push(last.wrapping_add(1));
    }
    if data.len() >= 8 {
        let tail: [u8; 8] = data[data.len() - 8..].try_into().expect("8 bytes");
        probes.push(u64::from_le_bytes(tail));
    }

    let ring_offset = geometry.ring_offset_bytes() as usize;
    let mut copies = Vec::new();
    for lsn in probes {
        let context = format!("{mode:?} recover_record({lsn})");
        let record = match dwb.recover_record(lsn) {
            Ok(record) => record,
            Err(e) => panic!("{context}: lookups on a fault-free disk cannot fail: {e}"),
        };
        let encoded = dwb
            .recover_encoded(lsn)
            .unwrap_or_else(|e| panic!("{context}: {e}"));
        // Reference: among this LSN's frames whose record verifies, the highest seq wins.
        let mut valid: Vec<(u64, &[u8])> = Vec::new();
        for &(_, seq, ring_pos, record_len) in frames.iter().filter(|f| f.0 == lsn) {
            let at = ring_offset + ring_pos as usize + 24;
            let bytes = &data[at..at + record_len as usize];
            if check_encoded(bytes)
                .is_ok_and(|(h, _)| h.lsn == lsn && h.record_len() == bytes.len())
            {
                valid.push((seq, bytes));
            }
        }
        let newest = valid.iter().map(|v| v.0).max();
        match (&record, &encoded) {
            (Some(r), Some(bytes)) => {
                assert_eq!(r.lsn(), lsn, "{context}: copy of another LSN");
                r.verify_checksum().expect("a returned copy verifies");
                assert_eq!(&r.encode(), bytes, "{context}: record and bytes differ");
                assert!(
                    valid
                        .iter()
                        .any(|(seq, b)| Some(*seq) == newest && b == bytes),
                    "{context}: the returned copy is not the newest valid one"
                );
            }
            (None, None) => assert!(valid.is_empty(), "{context}: a valid copy was missed"),
            _ => panic!("{context}: recover_record and recover_encoded disagree"),
        }
        copies.push((lsn, encoded));
    }
    // Frames with equal seqs (only in forged files) come in hash-map order.
    let mut frames = frames;
    frames.sort_unstable_by_key(|&(lsn, seq, pos, _)| (seq, pos, lsn));
    Some(DwbProbe {
        geometry,
        lsns,
        frames,
        copies,
    })
}

// ---------------------------------------------------------------------------------------
// wal_segment

/// Flag bits of the first input byte of the `wal_segment` target.
pub mod flags {
    /// Name the first segment after the `first_lsn` in its header (else LSN 1).
    pub const NAME_FROM_HEADER: u8 = 0x01;
    /// A second segment follows the first.
    pub const SECOND_SEGMENT: u8 = 0x02;
    /// A `wal.dwb` follows the segments.
    pub const DWB: u8 = 0x04;
    /// Open with `dwb_mode: Off`.
    pub const DWB_OFF: u8 = 0x08;
    /// Open with `tail_protection: Pad`.
    pub const PAD: u8 = 0x10;
    /// After recovery, append a record; it must be replayed and survive a reopen.
    pub const APPEND: u8 = 0x20;
    /// Open with `direct_io: true`.
    pub const DIRECT_IO: u8 = 0x40;
    /// Recompute every checksum a parser can find (segment headers, records, the DWB
    /// header, frame prefixes) before writing the files: see [`super::fix_segment_crcs`].
    pub const FIX_CRCS: u8 = 0x80;
}

/// The parts of a `wal_segment` input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalInput<'a> {
    pub flags: u8,
    pub first: &'a [u8],
    pub second: Option<&'a [u8]>,
    pub dwb: Option<&'a [u8]>,
}

impl<'a> WalInput<'a> {
    /// Layout: `flags`, then one little-endian u32 length for every present part but the
    /// last, then the parts: first segment, [second segment], [DWB]. Lengths are clamped
    /// to the bytes that remain, so every input means something.
    pub fn parse(data: &'a [u8]) -> WalInput<'a> {
        let Some((&flags, mut rest)) = data.split_first() else {
            return WalInput {
                flags: 0,
                first: &[],
                second: None,
                dwb: None,
            };
        };
        let has_second = flags & flags::SECOND_SEGMENT != 0;
        let has_dwb = flags & flags::DWB != 0;
        let parts = 1 + usize::from(has_second) + usize::from(has_dwb);
        let mut lengths = Vec::with_capacity(parts);
        for _ in 1..parts {
            let (len, after) = match rest.split_first_chunk::<4>() {
                Some((len, after)) => (u32::from_le_bytes(*len) as usize, after),
                None => (0, &[][..]),
            };
            lengths.push(len);
            rest = after;
        }
        let mut take = |i: usize| -> &'a [u8] {
            let n = lengths
                .get(i)
                .copied()
                .unwrap_or(rest.len())
                .min(rest.len());
            let (part, after) = rest.split_at(n);
            rest = after;
            part
        };
        let first = take(0);
        let second = has_second.then(|| take(1));
        let dwb = has_dwb.then(|| take(parts - 1));
        WalInput {
            flags,
            first,
            second,
            dwb,
        }
    }

    /// The inverse of [`WalInput::parse`] (for the seed generator).
    pub fn encode(&self) -> Vec<u8> {
        let mut flags = self.flags & !(flags::SECOND_SEGMENT | flags::DWB);
        let mut parts = vec![self.first];
        if let Some(second) = self.second {
            flags |= flags::SECOND_SEGMENT;
            parts.push(second);
        }
        if let Some(dwb) = self.dwb {
            flags |= flags::DWB;
            parts.push(dwb);
        }
        let mut out = vec![flags];
        for part in &parts[..parts.len() - 1] {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
        }
        for part in parts {
            out.extend_from_slice(part);
        }
        out
    }
}

fn header_first_lsn(segment: &[u8]) -> Option<u64> {
    segment
        .get(16..24)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// DWB options for the `wal_segment` target. A DWB whose header fails to open is moved
/// aside and replaced by a fresh one created with these options, so they are chosen to
/// keep that fresh file small while never contradicting a valid input DWB:
/// - no input DWB: a small DWB (4 slots of 4,072 bytes);
/// - the header's capacity and record size, when they are in range and describe a file
///   of at most 1 MiB: equal to the file's own geometry if the header is valid, and a
///   small replacement if it is not;
/// - `None` (the file's own geometry) when the header describes a larger file and the
///   input is at least that long (a corrupt one is then replaced by the default
///   4.25 MiB geometry, but the input is larger than 1 MiB itself);
/// - else the file cannot be valid: a small replacement.
fn dwb_sizes(dwb: Option<&[u8]>) -> (Option<u32>, Option<u32>) {
    const SMALL: (Option<u32>, Option<u32>) = (Some(4), Some(4096 - 24));
    let Some(dwb) = dwb else {
        return SMALL;
    };
    let field = |at: usize| {
        dwb.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let (Some(block), Some(capacity), Some(max)) = (field(8), field(16), field(20)) else {
        return SMALL;
    };
    if !(1..=1u32 << 16).contains(&capacity)
        || !(HEADER_SIZE as u32..=MAX_PAYLOAD_BYTES).contains(&max)
    {
        return SMALL;
    }
    let file_bytes = |block: u64| {
        let stride = (24 + u64::from(max)).div_ceil(block) * block;
        block + u64::from(capacity) * stride
    };
    let own = if block.is_power_of_two() && block >= 512 {
        file_bytes(u64::from(block))
    } else {
        u64::MAX
    };
    if own.max(file_bytes(4096)) <= MIB as u64 {
        (Some(capacity), Some(max))
    } else if own <= dwb.len() as u64 {
        (None, None)
    } else {
        SMALL
    }
}

/// The options the `wal_segment` target opens with.
pub fn wal_options(input: &WalInput<'_>) -> WalOptions {
    let (dwb_capacity, dwb_max_record_bytes) = dwb_sizes(input.dwb);
    WalOptions {
        segment_size_bytes: 64 * 1024,
        dwb_mode: if input.flags & flags::DWB_OFF != 0 {
            DwbMode::Off
        } else {
            DwbMode::Buffered
        },
        tail_protection: if input.flags & flags::PAD != 0 {
            TailProtection::Pad
        } else {
            TailProtection::Mirror
        },
        direct_io: input.flags & flags::DIRECT_IO != 0,
        dwb_capacity,
        dwb_max_record_bytes,
        ..WalOptions::default()
    }
}

/// The segments of `input` as (first LSN in the file name, bytes).
pub fn wal_segments<'a>(input: &WalInput<'a>) -> Vec<(u64, &'a [u8])> {
    let first_lsn = if input.flags & flags::NAME_FROM_HEADER != 0 {
        header_first_lsn(input.first).unwrap_or(1)
    } else {
        1
    };
    let mut segments = vec![(first_lsn, input.first)];
    if let Some(second) = input.second {
        let lsn = header_first_lsn(second)
            .filter(|&l| l != first_lsn)
            .unwrap_or(first_lsn.wrapping_add(1));
        segments.push((lsn, second));
    }
    segments
}

/// Puts the files of `input` in `dir` on a fresh simulated disk.
pub fn wal_disk(input: &WalInput<'_>, dir: &Path) -> SimVfs {
    let sim = SimVfs::new();
    sim.create_dir_all(dir).expect("create dir");
    let mut files: Vec<(PathBuf, &[u8])> = wal_segments(input)
        .into_iter()
        .map(|(lsn, bytes)| (dir.join(segment_name(lsn)), bytes))
        .collect();
    if let Some(dwb) = input.dwb {
        files.push((dir.join(doublewrite::wal::DWB_FILE_NAME), dwb));
    }
    for (path, bytes) in files {
        let file = sim
            .open(&path, OpenOptions::create_new())
            .expect("create file");
        io::write_all_at(file.as_ref(), bytes, 0).expect("write input");
        file.sync_all().expect("sync input");
    }
    sim.sync_dir(dir).expect("sync dir");
    sim
}

/// Every file of `dir`: (name, bytes), sorted.
fn directory(sim: &SimVfs, dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = sim.list_dir(dir).expect("list dir");
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let bytes = sim.read_file(&dir.join(&name)).unwrap_or_default();
            (name, bytes)
        })
        .collect()
}

/// Every record a replay from the start returns, as (LSN, encoded bytes), and whether the
/// replay stopped early at a record a reader without type list or keys cannot interpret
/// (an unknown required type, a missing key): records after it are not returned.
fn replay_all(wal: &Wal, context: &str) -> (Vec<(u64, Vec<u8>)>, bool) {
    let report = wal.recovery().clone();
    let replay = match wal.replay(0, None) {
        Ok(replay) => replay,
        Err(e) => panic!("{context}: replay refused to start: {e}"),
    };
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    for item in replay {
        match item {
            Ok(record) => {
                record.verify_checksum().expect("replayed records verify");
                let lsn = record.lsn();
                assert!(
                    out.last().is_none_or(|(prev, _)| *prev < lsn),
                    "{context}: replay went back from LSN {:?} to {lsn}",
                    out.last().map(|r| r.0)
                );
                assert!(
                    lsn >= report.first_lsn && lsn < wal.next_lsn(),
                    "{context}: replayed LSN {lsn} outside {}..{}",
                    report.first_lsn,
                    wal.next_lsn()
                );
                out.push((lsn, record.encode()));
            }
            Err(e) => {
                typed_error(context, &e);
                // What a reader without the right type list or keys cannot interpret;
                // anything else means the log changed after it was recovered.
                assert!(
                    matches!(
                        e.code(),
                        "ERR_WAL_UNKNOWN_RECORD_TYPE" | "ERR_WAL_KEY_MISSING" | "ERR_WAL_DECRYPT"
                    ),
                    "{context}: replay of a just-recovered log failed: {e}"
                );
                return (out, true);
            }
        }
    }
    (out, false)
}

/// Verifies the WAL directory described by `data` on a simulated disk (read-only: it must
/// change nothing and predict the recovery's outcome), then opens it. A refusal must be a
/// typed error. A successful recovery must report consistent numbers, replay in LSN
/// order, and reopen to the same records without repairing or cutting anything again;
/// with [`flags::APPEND`], an acknowledged append must be replayed and survive a reopen.
pub fn wal_dir(data: &[u8]) {
    let parsed = WalInput::parse(data);
    let fixed: Vec<Vec<u8>>;
    let input = if parsed.flags & flags::FIX_CRCS != 0 {
        let mut first = parsed.first.to_vec();
        fix_segment_crcs(&mut first);
        let mut second = parsed.second.map(<[u8]>::to_vec);
        if let Some(second) = &mut second {
            fix_segment_crcs(second);
        }
        let mut dwb = parsed.dwb.map(<[u8]>::to_vec);
        if let Some(dwb) = &mut dwb {
            fix_dwb_crcs(dwb);
        }
        fixed = [Some(first), second, dwb].into_iter().flatten().collect();
        let mut parts = fixed.iter().map(|v| &v[..]);
        WalInput {
            flags: parsed.flags,
            first: parts.next().expect("first segment"),
            second: parsed.second.and_then(|_| parts.next()),
            dwb: parsed.dwb.and_then(|_| parts.next()),
        }
    } else {
        parsed
    };
    let dir = Path::new("/fuzz/wal");
    let sim = wal_disk(&input, dir);
    let options = wal_options(&input);
    let vfs: Arc<dyn Vfs> = Arc::new(sim.clone());

    // The read-only dry run first: it must change nothing, and predict the recovery.
    let before = directory(&sim, dir);
    let verified = verify::verify(vfs.clone(), dir);
    assert!(
        directory(&sim, dir) == before,
        "verify changed the directory"
    );
    if let Err(e) = &verified {
        typed_error("verify", e);
    }
    // `verify` always reads the DWB; the open ignores it with `dwb_mode: Off`.
    let verified = verified.ok().filter(|_| input.flags & flags::DWB_OFF == 0);

    let wal = match Wal::open_with(vfs.clone(), dir, options) {
        Ok(wal) => wal,
        Err(e) => {
            typed_error("Wal::open_with", &e);
            if let Some(v) = &verified {
                if e.code() == "ERR_WAL_CORRUPT" {
                    assert_eq!(
                        v.verdict(),
                        verify::Verdict::Lost,
                        "recovery refused ({e}) what verify did not: {v:?}"
                    );
                }
            }
            return;
        }
    };
    let report = wal.recovery().clone();
    if let Some(v) = &verified {
        let predicted = (
            v.verdict() == verify::Verdict::Lost,
            v.last_lsn,
            v.records,
            v.repairable.len() as u64,
            v.torn_tail_bytes,
        );
        let done = (
            false,
            report.last_lsn,
            report.records,
            report.repaired_from_dwb,
            report.torn_tail_bytes,
        );
        assert_eq!(
            predicted, done,
            "verify (lost, last LSN, records, repairable, torn bytes) vs recovery: {v:?} vs {report:?}"
        );
    }
    let next = wal.next_lsn();
    assert_eq!(
        report.last_lsn.wrapping_add(1),
        next,
        "last LSN and next LSN"
    );
    assert_eq!(
        Some(report.records),
        next.checked_sub(report.first_lsn),
        "records counted vs LSN range: {report:?}, next LSN {next}"
    );
    let (mut records, stopped) = replay_all(&wal, "replay after recovery");
    let mut last_lsn = report.last_lsn;

    if input.flags & flags::APPEND != 0 {
        let payload: Vec<u8> = data.iter().rev().take(300).copied().collect();
        let appended = RecordInput {
            record_type: RecordType::PUT,
            payload: payload.clone().into(),
            tenant_id: data.len() as u64,
            vshard_id: 7,
            database_id: 9,
        };
        match wal.append(appended) {
            Ok(lsn) => {
                assert_eq!(lsn, next, "the append did not get the next LSN");
                last_lsn = lsn;
                // Read from its own LSN, the append is there whatever lies before it.
                let own = wal
                    .replay(lsn, None)
                    .expect("replay from the appended LSN")
                    .next()
                    .expect("the append is replayed")
                    .expect("the append is readable");
                assert_eq!((own.lsn(), own.payload()), (lsn, &payload[..]));
                let (after, stopped_after) = replay_all(&wal, "replay after append");
                if stopped {
                    // The replay from the start still stops where it stopped before.
                    assert!(
                        stopped_after,
                        "an append made an unreadable record readable"
                    );
                    assert_eq!(after, records, "an append changed earlier records");
                } else {
                    assert_eq!(after.last().map(|r| r.0), Some(lsn));
                    assert_eq!(
                        &after[..after.len() - 1],
                        &records[..],
                        "an append changed earlier records"
                    );
                    records = after;
                }
            }
            Err(e) => typed_error("append after recovery", &e),
        }
    }
    wal.close().expect("close");
    drop(wal);

    // A recovered log is clean: reopening finds exactly the same records and has nothing
    // left to repair or cut.
    let wal = match Wal::open_with(vfs, dir, options) {
        Ok(wal) => wal,
        Err(e) => panic!("a log that recovered once failed to reopen: {e}"),
    };
    let again = wal.recovery().clone();
    assert_eq!(again.first_lsn, report.first_lsn, "reopen: first LSN");
    assert_eq!(again.last_lsn, last_lsn, "reopen: last LSN");
    assert_eq!(
        again.repaired_from_dwb, 0,
        "reopen repaired again: {again:?}"
    );
    assert_eq!(again.torn_tail_bytes, 0, "reopen cut again: {again:?}");
    let (reread, _) = replay_all(&wal, "replay after reopen");
    assert_eq!(reread, records, "reopen replays different records");
    wal.close().expect("close");
}

// ---------------------------------------------------------------------------------------
// Checksum fix-ups: let mutations of fields reach the logic behind the CRC checks.

/// CRC-32C (Castagnoli), bit by bit: the inputs are small and this file uses only `std`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
}

fn put_crc(bytes: &mut [u8], at: usize, crc: u32) {
    bytes[at..at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Recomputes the CRC of each record of the chain starting at `pos` whose header parses
/// and whose payload is in `bytes`; returns where the chain ends.
fn fix_record_chain(bytes: &mut [u8], mut pos: usize) -> usize {
    while let Some(rest) = bytes.get(pos..) {
        let Ok(h) = RecordHeader::parse(rest) else {
            break;
        };
        let end = pos + h.record_len();
        if end > bytes.len() {
            break;
        }
        let crc = h.compute_crc(&bytes[pos + HEADER_SIZE..end]);
        put_crc(bytes, pos + 52, crc);
        pos = end;
    }
    pos
}

/// Fixes a segment's header CRC (bytes 40..44) and the CRCs of the records from the
/// block size in its header on.
pub fn fix_segment_crcs(bytes: &mut [u8]) {
    if bytes.len() < 44 {
        return;
    }
    let crc = crc32c(&bytes[..40]);
    put_crc(bytes, 40, crc);
    let block = le_u32(bytes, 8).unwrap_or(0) as usize;
    if block.is_power_of_two() && block >= 512 {
        fix_record_chain(bytes, block);
    }
}

/// Fixes a DWB's header CRC (bytes 24..28) and, from every block boundary of the ring,
/// the chain of frames there: each frame prefix CRC (bytes 20..24) and record CRC.
pub fn fix_dwb_crcs(bytes: &mut [u8]) {
    if bytes.len() < 36 {
        return;
    }
    let crc = crc32c(&bytes[..32]);
    put_crc(bytes, 32, crc);
    let salt = u64::from_le_bytes(bytes[24..32].try_into().expect("8 bytes"));
    let block = le_u32(bytes, 8).unwrap_or(0) as usize;
    if !block.is_power_of_two() || block < 512 {
        return;
    }
    let mut start = block;
    while start < bytes.len() {
        let mut pos = start;
        while pos + 24 <= bytes.len() && bytes[pos..pos + 4] == *b"DWFR" {
            let mut salted = salt.to_le_bytes().to_vec();
            salted.extend_from_slice(&bytes[pos..pos + 20]);
            let crc = crc32c(&salted);
            put_crc(bytes, pos + 20, crc);
            let len = le_u32(bytes, pos + 4).unwrap_or(0) as usize;
            let record = pos + 24;
            if len < HEADER_SIZE || record + len > bytes.len() {
                break;
            }
            if fix_record_chain(&mut bytes[..record + len], record) != record + len {
                break;
            }
            pos = record + len;
        }
        start = (pos.max(start + 1)).div_ceil(block) * block;
    }
}
