//! The fuzz targets' checks on stable `cargo test` (see `docs/FUZZING.md`).
//!
//! Every committed seed (`crates/doublewrite/fuzz/seeds/<target>/`) and every kept fuzz
//! case (`tests/fuzz_cases/<target>/`: crashers and hand-made inputs for findings) goes
//! through exactly the checks libFuzzer runs, allocation bound included: the checks and
//! the counting allocator are the fuzz crate's own files, included with `#[path]`.
//!
//! `cargo test -p doublewrite --test fuzz_regressions -- --ignored generate_seed_corpus`
//! rewrites the seed corpus from real files the library produces.

#[path = "../fuzz/src/alloc_meter.rs"]
mod alloc_meter;
#[path = "../fuzz/src/checks.rs"]
#[allow(dead_code)]
mod checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use checks::{flags, Target, WalInput};
use doublewrite::io::sim::{Fault, FaultPlan, FaultPoint, Op, SimRng, SimVfs, TearPolicy};
use doublewrite::io::Vfs;
use doublewrite::record::{encode_padding_into, RecordHeader, ENCRYPTED_FLAG};
use doublewrite::{
    DoubleWriteBuffer, DwbMode, DwbOptions, RecordInput, RecordType, TailProtection, Wal,
    WalOptions, WalRecord,
};

/// One test at a time: the allocation meter is process-wide, so a test allocating on
/// another thread would be counted against the input being measured. Every test holds
/// this for its whole body.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn seeds_dir(target: Target) -> PathBuf {
    crate_dir().join("fuzz/seeds").join(target.name())
}

fn cases_dir(target: Target) -> PathBuf {
    crate_dir().join("tests/fuzz_cases").join(target.name())
}

/// The files of `dir`, sorted by name (none when it does not exist).
fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("read input"))
        })
        .filter(|(name, _)| !name.starts_with('.') && !name.ends_with(".md"))
        .collect();
    out.sort();
    out
}

/// Runs the target's check on one input; `Err` with the panic message when it fails.
/// Known findings fail it (see `checks::tolerate_known_findings`).
fn check(target: Target, data: &[u8]) -> Result<(), String> {
    check_with(target, data, false)
}

fn check_with(target: Target, data: &[u8], tolerate_known: bool) -> Result<(), String> {
    checks::tolerate_known_findings(tolerate_known);
    catch_unwind(AssertUnwindSafe(|| checks::run(target, data))).map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".into())
    })
}

/// Runs every file of `dir` and fails naming each input that fails.
fn check_all(target: Target, dir: &Path, must_exist: bool) {
    let files = inputs(dir);
    if must_exist {
        assert!(!files.is_empty(), "no inputs in {}", dir.display());
    }
    let failures: Vec<String> = files
        .iter()
        .filter_map(|(name, data)| {
            check(target, data)
                .err()
                .map(|e| format!("{}/{name}: {e}", dir.display()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} inputs failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn the_allocation_meter_counts() {
    let _serial = serial();
    alloc_meter::reset();
    let big = std::hint::black_box(vec![1u8; 3 << 20]);
    let usage = alloc_meter::usage();
    drop(big);
    assert!(usage.largest >= 3 << 20, "{usage:?}");
    assert!(usage.peak_live >= 3 << 20, "{usage:?}");
}

#[test]
fn record_seeds() {
    let _serial = serial();
    check_all(Target::Record, &seeds_dir(Target::Record), true);
}

#[test]
fn dwb_file_seeds() {
    let _serial = serial();
    check_all(Target::DwbFile, &seeds_dir(Target::DwbFile), true);
}

#[test]
fn wal_segment_seeds() {
    let _serial = serial();
    check_all(Target::WalSegment, &seeds_dir(Target::WalSegment), true);
}

#[test]
fn record_cases() {
    let _serial = serial();
    check_all(Target::Record, &cases_dir(Target::Record), false);
}

#[test]
fn dwb_file_cases() {
    let _serial = serial();
    check_all(Target::DwbFile, &cases_dir(Target::DwbFile), false);
}

#[test]
fn wal_segment_cases() {
    let _serial = serial();
    check_all(Target::WalSegment, &cases_dir(Target::WalSegment), false);
}

/// Degenerate inputs every target must take: empty, one byte, all zeros, all ones.
/// (Known findings are tolerated here; each has its own `finding_*` test.)
#[test]
fn degenerate_inputs() {
    let _serial = serial();
    for target in Target::ALL {
        for data in [
            vec![],
            vec![0xFF],
            vec![0; 4096],
            vec![0xFF; 4096],
            vec![0x7F; 9000],
        ] {
            if let Err(e) = check_with(target, &data, true) {
                panic!("{}: {} bytes: {e}", target.name(), data.len());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The seed corpus: real files the library writes.

/// Named seed files of one target.
type Seeds = Vec<(&'static str, Vec<u8>)>;

/// Writes `fuzz/seeds/<target>/*` from scratch.
#[test]
#[ignore = "rewrites the committed seed corpus; run explicitly"]
fn generate_seed_corpus() {
    let _serial = serial();
    let seeds: Vec<(Target, Seeds)> = vec![
        (Target::Record, record_seeds_gen()),
        (Target::DwbFile, dwb_seeds_gen()),
        (Target::WalSegment, wal_seeds_gen()),
    ];
    for (target, files) in seeds {
        let dir = seeds_dir(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in files {
            check(target, &bytes).unwrap_or_else(|e| panic!("seed {name} fails: {e}"));
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

fn payload(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed as usize).wrapping_mul(31).wrapping_add(i * 7) as u8)
        .collect()
}

fn record_seeds_gen() -> Vec<(&'static str, Vec<u8>)> {
    let user = |t, lsn, commit, len| {
        WalRecord::with_commit_lsn(t, lsn, commit, 7, 3, 9, payload(lsn, len))
            .unwrap()
            .encode()
    };
    let mut padding = Vec::new();
    encode_padding_into(&mut padding, 200, 17);
    let mut encrypted = RecordHeader {
        record_type: RecordType::PUT | ENCRYPTED_FLAG,
        key_id: 3,
        lsn: 12,
        commit_lsn: 11,
        tenant_id: 1,
        vshard_id: 2,
        database_id: 3,
        payload_len: 40,
        crc: 0,
    };
    let body = payload(12, 40);
    encrypted.crc = encrypted.compute_crc(&body);
    let mut encrypted_bytes = encrypted.encode().to_vec();
    encrypted_bytes.extend_from_slice(&body);
    vec![
        ("put_empty", user(RecordType::PUT, 1, 1, 0)),
        ("put_small", user(RecordType::PUT, 42, 42, 5)),
        (
            "transaction_in_commit",
            user(RecordType::TRANSACTION, 10, 8, 100),
        ),
        ("metadata_optional", user(RecordType::METADATA, 3, 3, 17)),
        ("unknown_required_type", user(0x8010, 99, 90, 33)),
        ("put_1000", user(RecordType::PUT, u64::MAX - 1, 5, 1000)),
        ("padding", padding),
        ("encrypted", encrypted_bytes),
    ]
}

/// A simulated disk whose direct-I/O alignment (and so the DWB block) is 512 bytes:
/// the smallest files the library makes.
fn small_disk() -> SimVfs {
    let sim = SimVfs::new();
    sim.set_direct_io_alignment(512);
    sim.create_dir_all(Path::new("/seed")).unwrap();
    sim
}

fn dwb_seeds_gen() -> Vec<(&'static str, Vec<u8>)> {
    let path = Path::new("/seed/x.dwb");
    let open = |sim: &SimVfs, mode, capacity, max| {
        DoubleWriteBuffer::open_with(
            Arc::new(sim.clone()),
            path,
            DwbOptions {
                mode,
                capacity: Some(capacity),
                max_record_bytes: Some(max),
            },
        )
        .unwrap()
    };
    let rec = |lsn: u64, len: usize| {
        WalRecord::new(RecordType::PUT, lsn, 1, 2, 3, payload(lsn, len), None, None).unwrap()
    };
    let mut out = Vec::new();

    let sim = small_disk();
    drop(open(&sim, DwbMode::Buffered, 8, 488));
    out.push(("fresh_empty", sim.read_file(path).unwrap()));

    // Single flushes and one batch.
    let sim = small_disk();
    let dwb = open(&sim, DwbMode::Buffered, 8, 488);
    for lsn in 1..=3 {
        let _ = dwb.write_record(&rec(lsn, 20 * lsn as usize)).unwrap();
    }
    for lsn in 4..=6 {
        let _ = dwb.write_record_deferred(&rec(lsn, 50)).unwrap();
    }
    dwb.flush().unwrap();
    drop(dwb);
    let flushed = sim.read_file(path).unwrap();
    out.push(("flushes_and_batch", flushed.clone()));

    // A damaged frame: the record CRC of LSN 2's copy.
    let mut damaged = flushed.clone();
    damaged[512 + 512 + 24 + 60] ^= 0x40;
    out.push(("damaged_copy", damaged));

    // A ring that wrapped: stale copies from the earlier lap, two copies of one LSN.
    let sim = small_disk();
    let dwb = open(&sim, DwbMode::Buffered, 8, 488);
    for lsn in 1..=19 {
        let _ = dwb
            .write_record(&rec(lsn, 30 + 40 * (lsn as usize % 4)))
            .unwrap();
    }
    let _ = dwb.write_record(&rec(18, 99)).unwrap();
    drop(dwb);
    out.push(("wrapped_with_duplicate", sim.read_file(path).unwrap()));

    // Direct mode (whole padded blocks), reopened and written again (seq continues).
    let sim = small_disk();
    let dwb = open(&sim, DwbMode::Direct, 4, 1000);
    let _ = dwb.write_record(&rec(1, 300)).unwrap();
    drop(dwb);
    let dwb = open(&sim, DwbMode::Direct, 4, 1000);
    for lsn in 2..=4 {
        let _ = dwb.write_record_deferred(&rec(lsn, 200)).unwrap();
    }
    dwb.flush().unwrap();
    drop(dwb);
    out.push(("direct_reopened", sim.read_file(path).unwrap()));

    // 4096-byte blocks (the default alignment of the simulated disk), one slot.
    let sim = SimVfs::new();
    sim.create_dir_all(Path::new("/seed")).unwrap();
    let dwb = open(&sim, DwbMode::Buffered, 1, 1000);
    for lsn in 1..=5 {
        let _ = dwb.write_record_deferred(&rec(lsn, 100)).unwrap();
    }
    dwb.flush().unwrap();
    drop(dwb);
    out.push(("block_4096", sim.read_file(path).unwrap()));
    out
}

/// The segments (by name) and DWB of a WAL directory on a simulated disk.
fn snapshot(sim: &SimVfs, dir: &Path) -> (Vec<Vec<u8>>, Option<Vec<u8>>) {
    let mut names = sim.list_dir(dir).unwrap();
    names.sort();
    let segments = names
        .iter()
        .filter(|n| n.ends_with(".seg"))
        .map(|n| trim(sim.read_file(&dir.join(n)).unwrap()))
        .collect();
    (segments, sim.read_file(&dir.join("wal.dwb")))
}

/// Cuts the zeros at the end of a segment, in whole sectors, but never into its header
/// block or a valid record (padding included): recovery treats a short file like zeros,
/// and the seeds stay a few KB.
fn trim(mut bytes: Vec<u8>) -> Vec<u8> {
    let block = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let mut chain_end = block;
    while let Ok((h, _)) = doublewrite::record::check_encoded(&bytes[chain_end.min(bytes.len())..])
    {
        chain_end += h.record_len();
    }
    let nonzero_end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let keep = nonzero_end.max(chain_end).div_ceil(512) * 512;
    bytes.truncate(keep.min(bytes.len()));
    bytes
}

fn seed_options() -> WalOptions {
    WalOptions {
        segment_size_bytes: 16 * 1024,
        dwb_capacity: Some(4),
        dwb_max_record_bytes: Some(488),
        ..WalOptions::default()
    }
}

fn put(lsn: u64, len: usize) -> RecordInput {
    RecordInput::new(RecordType::PUT, payload(lsn, len))
}

fn wal_input(flag_bits: u8, segments: &[Vec<u8>], dwb: Option<&Vec<u8>>, first: usize) -> Vec<u8> {
    WalInput {
        flags: flag_bits,
        first: &segments[first],
        second: segments.get(first + 1).map(|s| &s[..]),
        dwb: dwb.map(|d| &d[..]),
    }
    .encode()
}

fn wal_seeds_gen() -> Vec<(&'static str, Vec<u8>)> {
    let dir = Path::new("/seed/wal");
    let new_wal = |options: WalOptions| {
        let sim = small_disk();
        let wal = Wal::open_with(Arc::new(sim.clone()), dir, options).unwrap();
        (sim, wal)
    };
    let mut out = Vec::new();

    let (sim, wal) = new_wal(seed_options());
    wal.close().unwrap();
    let (segs, dwb) = snapshot(&sim, dir);
    out.push(("empty_log", wal_input(0, &segs, dwb.as_ref(), 0)));

    // Five single-record commits: the DWB holds the at-risk copies.
    let (sim, wal) = new_wal(seed_options());
    for lsn in 1..=5 {
        wal.append(put(lsn, 40 + 30 * lsn as usize)).unwrap();
    }
    wal.close().unwrap();
    let (segs, dwb) = snapshot(&sim, dir);
    out.push(("five_commits", wal_input(0, &segs, dwb.as_ref(), 0)));
    out.push((
        "five_commits_then_append",
        wal_input(flags::APPEND, &segs, dwb.as_ref(), 0),
    ));
    out.push(("five_commits_no_dwb", wal_input(0, &segs, None, 0)));
    out.push((
        "five_commits_fix_crcs",
        wal_input(flags::FIX_CRCS, &segs, dwb.as_ref(), 0),
    ));
    out.push((
        "five_commits_dwb_off",
        wal_input(flags::DWB_OFF | flags::APPEND, &segs, None, 0),
    ));

    // Damage at rest: LSN 4 (at risk for the last commit, so the DWB has a copy) rots and
    // is repaired; the last record rots and is cut as a torn tail (no copy, no later
    // commit) ...
    let path = dir.join("wal-00000000000000000001.seg");
    let records = locate(&segs[0]);
    sim.poke(&path, records[3].0 as u64 + 70, b"rot!");
    let (segs_rot, dwb_rot) = snapshot(&sim, dir);
    out.push(("rot_repaired", wal_input(0, &segs_rot, dwb_rot.as_ref(), 0)));
    let mut tail_rot = segs[0].clone();
    tail_rot[records[4].0 + 70] ^= 0x55;
    out.push(("rot_torn_tail", wal_input(0, &[tail_rot], None, 0)));
    // ... and in the middle without a copy is ERR_WAL_CORRUPT.
    let mut middle = segs[0].clone();
    let second = locate(&middle)[1];
    middle[second.0 + 60] ^= 1;
    out.push(("rot_middle_lost", wal_input(0, &[middle], None, 0)));

    // A batch commit plus tail-protection Pad (padding records), with appends after.
    let (sim, wal) = new_wal(WalOptions {
        tail_protection: TailProtection::Pad,
        ..seed_options()
    });
    wal.append_batch((1..=6).map(|i| put(i, 25 * i as usize)).collect())
        .unwrap();
    wal.append(put(7, 300)).unwrap();
    wal.close().unwrap();
    let (segs, dwb) = snapshot(&sim, dir);
    out.push((
        "padded_commits",
        wal_input(flags::PAD | flags::APPEND, &segs, dwb.as_ref(), 0),
    ));

    // Two segments (a roll), and the second alone after truncation, named by its header.
    let (sim, wal) = new_wal(seed_options());
    wal.append(put(1, 9000)).unwrap();
    wal.append(put(2, 100)).unwrap();
    wal.append(put(3, 4000)).unwrap();
    wal.append(put(4, 120)).unwrap();
    let (segs, dwb) = snapshot(&sim, dir);
    assert!(segs.len() >= 2, "the workload rolls");
    out.push(("two_segments", wal_input(0, &segs, dwb.as_ref(), 0)));
    wal.truncate_before(4).unwrap();
    wal.close().unwrap();
    let (segs, dwb) = snapshot(&sim, dir);
    out.push((
        "truncated_named_by_header",
        wal_input(
            flags::NAME_FROM_HEADER | flags::APPEND,
            &segs,
            dwb.as_ref(),
            0,
        ),
    ));

    // Record types: an optional unknown one (skipped) and a required unknown one (error).
    let (sim, wal) = new_wal(seed_options());
    wal.append(RecordInput::new(0x0010, payload(1, 10)))
        .unwrap();
    wal.append(put(2, 10)).unwrap();
    wal.append(RecordInput::new(0x8010, payload(3, 10)))
        .unwrap();
    wal.close().unwrap();
    let (segs, dwb) = snapshot(&sim, dir);
    out.push(("unknown_types", wal_input(0, &segs, dwb.as_ref(), 0)));

    // Direct I/O.
    let (sim, wal) = new_wal(WalOptions {
        direct_io: true,
        ..seed_options()
    });
    for lsn in 1..=3 {
        wal.append(put(lsn, 70)).unwrap();
    }
    wal.close().unwrap();
    let (segs, dwb) = snapshot(&sim, dir);
    out.push((
        "direct_io",
        wal_input(flags::DIRECT_IO, &segs, dwb.as_ref(), 0),
    ));

    // Power lost during a commit's WAL write, sectors torn at random: a DWB copy exists
    // for the at-risk records and the commit's own.
    for (name, seed) in [("crash_torn_a", 1u64), ("crash_torn_b", 2)] {
        let (sim, wal) = new_wal(seed_options());
        for lsn in 1..=3 {
            wal.append(put(lsn, 150)).unwrap();
        }
        sim.set_plan(FaultPlan {
            at_point: Some(FaultPoint::new(Op::Write, ".seg", 1, Fault::PowerLoss)),
            ..FaultPlan::default()
        });
        let _ = wal.append_batch(vec![put(4, 200), put(5, 90)]);
        drop(wal);
        sim.crash(&mut SimRng::new(seed), TearPolicy::Random);
        let (segs, dwb) = snapshot(&sim, dir);
        out.push((name, wal_input(flags::APPEND, &segs, dwb.as_ref(), 0)));
    }
    out
}

/// (offset, length) of each user record of a segment.
fn locate(segment: &[u8]) -> Vec<(usize, usize)> {
    let block = u32::from_le_bytes(segment[8..12].try_into().unwrap()) as usize;
    let mut pos = block;
    let mut out = Vec::new();
    while let Ok((h, _)) = doublewrite::record::check_encoded(&segment[pos.min(segment.len())..]) {
        if !h.is_internal() {
            out.push((pos, h.record_len()));
        }
        pos += h.record_len();
    }
    out
}

#[test]
fn the_checksum_fixups_match_the_library() {
    let _serial = serial();
    assert_eq!(checks::crc32c(b"123456789"), 0xE306_9283);
    // Zeroing every CRC of real files and fixing them gives the files back.
    let dwb = std::fs::read(seeds_dir(Target::DwbFile).join("wrapped_with_duplicate")).unwrap();
    let mut damaged = dwb.clone();
    damaged[32..36].fill(0);
    checks::fix_dwb_crcs(&mut damaged);
    assert_eq!(damaged[..36], dwb[..36]);
    let mut same = dwb.clone();
    checks::fix_dwb_crcs(&mut same);
    assert!(same == dwb, "fixing a valid DWB changes it");
    let input = std::fs::read(seeds_dir(Target::WalSegment).join("five_commits")).unwrap();
    let parsed = WalInput::parse(&input);
    let mut segment = parsed.first.to_vec();
    checks::fix_segment_crcs(&mut segment);
    assert!(segment == parsed.first, "fixing a valid segment changes it");
    for (at, _) in locate(parsed.first) {
        segment[at + 52..at + 56].fill(0);
    }
    segment[40..44].fill(0);
    checks::fix_segment_crcs(&mut segment);
    assert!(
        segment == parsed.first,
        "fixing zeroed CRCs does not restore them"
    );
}

// ---------------------------------------------------------------------------------------
// Findings (docs/FUZZING.md, "Findings"): each test failed until the core was fixed
// (commits 6252719 and 1b957b3); they stay as regression tests.

fn sim_file(sim: &SimVfs, path: &Path, bytes: &[u8]) {
    let file = sim
        .open(path, doublewrite::io::OpenOptions::create_new())
        .unwrap();
    doublewrite::io::write_all_at(file.as_ref(), bytes, 0).unwrap();
    file.sync_all().unwrap();
}

/// Finding 1 (`dwb.rs`, `read_geometry`): a DWB file shorter than the direct-I/O alignment
/// opened in direct mode fails with `ERR_IO` (EINVAL): after the short read at the end
/// of the file, `io::read_up_to_at` reads again at an unaligned offset into an unaligned
/// buffer. Garbage must be `ERR_DWB_CORRUPT` (as in buffered mode), and a valid DWB with
/// 512-byte blocks on a disk that needs 4096 must be `ERR_DIRECT_IO_UNSUPPORTED`.
#[test]
fn finding_1_short_dwb_file_in_direct_mode_is_a_typed_refusal() {
    let _serial = serial();
    let sim = SimVfs::new(); // direct I/O needs 4096-byte alignment
    sim.create_dir_all(Path::new("/f")).unwrap();
    let open = |path: &str, mode| {
        DoubleWriteBuffer::open_with(
            Arc::new(sim.clone()),
            Path::new(path),
            DwbOptions::new(mode),
        )
    };

    sim_file(&sim, Path::new("/f/garbage.dwb"), &[0xAB; 1000]);
    assert_eq!(
        open("/f/garbage.dwb", DwbMode::Buffered)
            .unwrap_err()
            .code(),
        "ERR_DWB_CORRUPT"
    );

    let small = small_disk();
    drop(
        DoubleWriteBuffer::open_with(
            Arc::new(small.clone()),
            Path::new("/seed/x.dwb"),
            DwbOptions {
                // Direct: 512-byte blocks (a buffered DWB gets page-sized ones).
                mode: DwbMode::Direct,
                capacity: Some(4),
                max_record_bytes: Some(488),
            },
        )
        .unwrap(),
    );
    let valid = small.read_file(Path::new("/seed/x.dwb")).unwrap();
    assert_eq!(valid.len(), 2560);
    sim_file(&sim, Path::new("/f/small.dwb"), &valid);
    assert!(open("/f/small.dwb", DwbMode::Buffered).is_ok());

    let garbage = open("/f/garbage.dwb", DwbMode::Direct).unwrap_err();
    let small_direct = open("/f/small.dwb", DwbMode::Direct).unwrap_err();
    assert_eq!(
        (garbage.code(), small_direct.code()),
        ("ERR_DWB_CORRUPT", "ERR_DIRECT_IO_UNSUPPORTED"),
        "garbage: {garbage}; valid 512-byte-block DWB: {small_direct}"
    );
}

/// Finding 2 (`wal/recovery.rs`, `recover`): `Wal::open` panics ("range start index 4096
/// out of range") when the last segment is shorter than the block size in its header:
/// `scan_segment` starts at the block size, finds nothing, and returns that offset as the
/// end, then `buf[tail_start..end_offset]` slices past the file. A segment cut inside its
/// header block (here: a real WAL's only segment cut to 3,000 bytes) must give a typed
/// error or an empty log, never a panic.
#[test]
fn finding_2_segment_shorter_than_its_block_does_not_panic() {
    let _serial = serial();
    let sim = SimVfs::new();
    let dir = Path::new("/f/wal");
    let options = WalOptions {
        segment_size_bytes: 64 * 1024,
        ..WalOptions::default()
    };
    let wal = Wal::open_with(Arc::new(sim.clone()), dir, options).unwrap();
    wal.append(put(1, 10)).unwrap();
    wal.close().unwrap();
    drop(wal);
    sim.truncate_file(&dir.join("wal-00000000000000000001.seg"), 3000);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        Wal::open_with(Arc::new(sim.clone()), dir, options)
            .map(|wal| wal.close())
            .map_err(|e| e.code())
    }));
    match outcome {
        Err(_) => panic!("Wal::open panicked on a segment shorter than its block size"),
        Ok(Err(code)) => assert!(code.starts_with("ERR_"), "{code}"),
        Ok(Ok(closed)) => closed.unwrap(),
    }
}

/// A segment header block of `block` bytes (first LSN 1) and nothing else: an empty log.
fn segment_with_block(block: u32, len: usize) -> Vec<u8> {
    let mut segment = vec![0u8; len];
    segment[..4].copy_from_slice(b"DWSG");
    segment[4..6].copy_from_slice(&1u16.to_le_bytes());
    segment[8..12].copy_from_slice(&block.to_le_bytes());
    segment[16..24].copy_from_slice(&1u64.to_le_bytes());
    checks::fix_segment_crcs(&mut segment);
    segment
}

/// Finding 3 (`wal/writer.rs`, `Writer::new`; `wal/segment.rs`, `SegmentHeader::decode`):
/// the block size in a segment header has no upper bound, and the writer allocates a
/// commit buffer of 16 blocks (`AlignedBuf::new(block * 16, block)`) for it, and rolls to
/// new segments of at least one such block. A 1 MiB segment whose header claims 1 MiB
/// blocks makes a 17 MiB allocation at open (17 × the file; a 64 MiB segment claiming
/// 64 MiB blocks: 1.06 GiB). The protection block is a page or the direct-I/O alignment,
/// so a header claiming more is corrupt.
#[test]
fn finding_3_huge_segment_block_size_does_not_over_allocate() {
    let _serial = serial();
    let block = 1u32 << 20;
    let input = WalInput {
        flags: flags::DWB_OFF,
        first: &segment_with_block(block, block as usize),
        second: None,
        dwb: None,
    }
    .encode();
    if let Err(e) = check(Target::WalSegment, &input) {
        panic!("{e}");
    }
}

/// Finding 4 (`dwb.rs`, `Geometry::decode`): with debug assertions (every `cargo test`,
/// debug builds of the binding), a DWB header with a valid checksum and a block size that
/// is not a power of two panics in `align::round_up` (`debug_assert!`), because the
/// expected geometry is computed before the block size is checked. It must be
/// `ERR_DWB_CORRUPT` ("impossible geometry"), as in release builds.
#[test]
fn finding_4_dwb_block_size_not_a_power_of_two_is_corrupt() {
    let _serial = serial();
    let mut header = vec![0u8; 8192];
    header[..4].copy_from_slice(b"DBLW");
    header[4..6].copy_from_slice(&1u16.to_le_bytes());
    header[8..12].copy_from_slice(&1000u32.to_le_bytes()); // block size: not a power of two
    header[12..16].copy_from_slice(&1000u32.to_le_bytes());
    header[16..20].copy_from_slice(&1u32.to_le_bytes());
    header[20..24].copy_from_slice(&488u32.to_le_bytes());
    checks::fix_dwb_crcs(&mut header);
    let sim = SimVfs::new();
    sim.create_dir_all(Path::new("/f")).unwrap();
    sim_file(&sim, Path::new("/f/x.dwb"), &header);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        DoubleWriteBuffer::open_with(
            Arc::new(sim.clone()),
            Path::new("/f/x.dwb"),
            DwbOptions::new(DwbMode::Buffered),
        )
        .map(drop)
        .map_err(|e| e.code())
    }));
    match outcome {
        Err(_) => panic!("opening a DWB with a 1000-byte block size panicked"),
        Ok(result) => assert_eq!(result, Err("ERR_DWB_CORRUPT")),
    }
}

/// Finding 5 (`dwb.rs`, `scan_ring` and `flush_frames`): a frame with a valid prefix and
/// `seq = u64::MAX` overflows `seq + 1` when the ring is scanned at open (a panic with
/// debug assertions; in release `next_seq` wraps to 0 and every later copy of that LSN
/// loses to the forged one). Such a frame must be ignored (or the DWB refused).
#[test]
fn finding_5_frame_seq_at_u64_max_does_not_overflow() {
    let _serial = serial();
    let small = small_disk();
    let path = Path::new("/seed/x.dwb");
    let dwb = DoubleWriteBuffer::open_with(
        Arc::new(small.clone()),
        path,
        DwbOptions {
            mode: DwbMode::Buffered,
            capacity: Some(8),
            max_record_bytes: Some(488),
        },
    )
    .unwrap();
    let record = WalRecord::new(RecordType::PUT, 1, 0, 0, 0, payload(1, 10), None, None).unwrap();
    let _ = dwb.write_record(&record).unwrap();
    drop(dwb);
    let mut bytes = small.read_file(path).unwrap();
    bytes[512 + 8..512 + 16].copy_from_slice(&u64::MAX.to_le_bytes()); // the frame's seq
    checks::fix_dwb_crcs(&mut bytes);
    let sim = SimVfs::new();
    sim.create_dir_all(Path::new("/f")).unwrap();
    sim_file(&sim, Path::new("/f/x.dwb"), &bytes);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        DoubleWriteBuffer::open_with(
            Arc::new(sim.clone()),
            Path::new("/f/x.dwb"),
            DwbOptions::new(DwbMode::Buffered),
        )
        .map(drop)
        .map_err(|e| e.code())
    }));
    assert!(
        outcome.is_ok(),
        "opening a DWB with a frame of seq u64::MAX panicked"
    );
}

/// A segment for `first_lsn` (4096-byte header block) holding `lsns`, one commit each.
fn segment_with_records(first_lsn: u64, lsns: &[u64]) -> Vec<u8> {
    let mut segment = segment_with_block(4096, 4096);
    segment[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    for &lsn in lsns {
        // By hand: the constructor refuses the LSNs these tests need.
        let body = payload(lsn, 8);
        let mut header = RecordHeader {
            record_type: RecordType::PUT,
            key_id: 0,
            lsn,
            commit_lsn: lsn,
            tenant_id: 0,
            vshard_id: 0,
            database_id: 0,
            payload_len: body.len() as u32,
            crc: 0,
        };
        header.crc = header.compute_crc(&body);
        segment.extend_from_slice(&header.encode());
        segment.extend_from_slice(&body);
    }
    checks::fix_segment_crcs(&mut segment);
    segment
}

/// Finding 6 (`wal/mod.rs`, `Wal::open_with`): a directory whose only segment is named
/// (and headed) LSN 0 recovers `next_lsn` 0 and computes `last_lsn` as `next_lsn - 1`: a
/// panic with debug assertions; in release the first append gets LSN 0, which every
/// reader refuses, so an acknowledged record is gone at the next open. A segment for
/// LSN 0 must be `ERR_WAL_CORRUPT`.
#[test]
fn finding_6_segment_for_lsn_0_does_not_overflow() {
    let _serial = serial();
    let input = WalInput {
        flags: flags::NAME_FROM_HEADER | flags::DWB_OFF | flags::APPEND,
        first: &segment_with_records(0, &[]),
        second: None,
        dwb: None,
    }
    .encode();
    if let Err(e) = check(Target::WalSegment, &input) {
        panic!("{e}");
    }
}

/// Finding 7 (`wal/recovery.rs`, `scan_segment`; `wal/replay.rs`, `Replay::step`;
/// `wal/writer.rs`, `Writer::commit`): LSN `u64::MAX` overflows `expected += 1` when a
/// record carries it, and an append at `u64::MAX` overflows the `first_lsn..` range in
/// the commit thread (caught, so the WAL poisons itself with "internal error"). The end
/// of the LSN space must be a typed error, not an overflow.
#[test]
fn finding_7_lsn_u64_max_does_not_overflow() {
    let _serial = serial();
    for (first_lsn, lsns) in [(u64::MAX, vec![u64::MAX]), (u64::MAX, vec![])] {
        let input = WalInput {
            flags: flags::NAME_FROM_HEADER | flags::DWB_OFF | flags::APPEND,
            first: &segment_with_records(first_lsn, &lsns),
            second: None,
            dwb: None,
        }
        .encode();
        if let Err(e) = check(Target::WalSegment, &input) {
            panic!("segment for LSN {first_lsn} holding {lsns:?}: {e}");
        }
    }
}

/// Finding 8 (`dwb.rs`, `scan_ring` / `flush_frames` / `void_from`): a frame that no
/// chain reaches at open is never indexed, so `void_from` does not erase it even when its
/// LSN is past the recovered end. In buffered mode a flush writes exactly its frames, so
/// when a later flush ends where such a remnant starts, the chain now continues into it,
/// the next open indexes it, and recovery takes it as proof that its LSN was acknowledged
/// and writes it into the log: a record that was never appended is replayed.
///
/// Here: a flush of copies of LSNs 1 and 2 (a commit that never reached the WAL) whose
/// first frame prefix was torn, so LSN 2's copy is unreachable; then a WAL appends LSN 1
/// with a payload of the same size, whose copy ends exactly where the old LSN 2 starts.
#[test]
fn finding_8_unreachable_dwb_frame_never_becomes_a_record() {
    let _serial = serial();
    let sim = small_disk();
    let dir = Path::new("/seed/wal");
    let options = WalOptions {
        segment_size_bytes: 64 * 1024,
        dwb_capacity: Some(4),
        dwb_max_record_bytes: Some(488),
        ..WalOptions::default()
    };
    sim.create_dir_all(dir).unwrap();
    let dwb_path = dir.join("wal.dwb");
    let dwb = DoubleWriteBuffer::open_with(
        Arc::new(sim.clone()),
        &dwb_path,
        DwbOptions {
            mode: DwbMode::Buffered,
            capacity: options.dwb_capacity,
            max_record_bytes: options.dwb_max_record_bytes,
        },
    )
    .unwrap();
    let ghost = WalRecord::new(
        RecordType::PUT,
        2,
        0,
        0,
        0,
        b"never appended".to_vec(),
        None,
        None,
    )
    .unwrap();
    let _ = dwb
        .write_record_deferred(
            &WalRecord::new(RecordType::PUT, 1, 0, 0, 0, payload(1, 100), None, None).unwrap(),
        )
        .unwrap();
    let _ = dwb.write_record_deferred(&ghost).unwrap();
    dwb.flush().unwrap();
    let first_frame = dwb.geometry().ring_offset_bytes() + dwb.frames()[0].2;
    drop(dwb);
    sim.poke(&dwb_path, first_frame, b"torn"); // the first frame's magic: its sector was torn

    let wal = Wal::open_with(Arc::new(sim.clone()), dir, options).unwrap();
    assert_eq!(wal.last_lsn(), 0);
    assert_eq!(wal.append(put(1, 100)).unwrap(), 1); // a frame as long as the torn one
    wal.close().unwrap();
    drop(wal);

    let wal = Wal::open_with(Arc::new(sim.clone()), dir, options).unwrap();
    let replayed: Vec<u64> = wal
        .replay(0, None)
        .unwrap()
        .map(|r| r.unwrap().lsn())
        .collect();
    assert_eq!(
        (replayed, wal.recovery().repaired_from_dwb),
        (vec![1], 0),
        "a record that was never appended came back from the DWB"
    );
}

/// Finding 9 (`wal/writer.rs`, `Writer::grow_active`): with `direct_io`, a commit that has
/// to grow an empty last segment whose length is not a multiple of the block size (a
/// segment cut short) writes zeros from the unaligned end of the file: EINVAL, so every
/// append fails with `ERR_IO` although the WAL opened. It should grow from the last whole
/// block (or roll to a new segment at open, as it does for an unaligned end).
#[test]
fn finding_9_direct_io_append_grows_a_cut_short_segment() {
    let _serial = serial();
    let sim = SimVfs::new();
    let dir = Path::new("/f/wal");
    let options = WalOptions {
        segment_size_bytes: 64 * 1024,
        direct_io: true,
        dwb_capacity: Some(4),
        dwb_max_record_bytes: Some(4072),
        ..WalOptions::default()
    };
    drop(Wal::open_with(Arc::new(sim.clone()), dir, options).unwrap());
    sim.truncate_file(&dir.join("wal-00000000000000000001.seg"), 5000);
    let wal = Wal::open_with(Arc::new(sim.clone()), dir, options).unwrap();
    let appended = wal.append(put(1, 300)).map_err(|e| e.to_string());
    assert_eq!(appended, Ok(1));
}
