//! Each scenario is written once against `&Env` and run on the real disk (`_std`) and on
//! the simulated disk (`_sim`).

use super::*;
use crate::io::sim::{SimRng, SimVfs, TearPolicy};
use crate::record::RecordType;

struct Env {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    sim: Option<SimVfs>,
    _tmp: Option<tempfile::TempDir>,
}

impl Env {
    fn std() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        Env {
            vfs: Arc::new(StdVfs),
            dir: tmp.path().to_path_buf(),
            sim: None,
            _tmp: Some(tmp),
        }
    }
    fn sim() -> Env {
        let sim = SimVfs::new();
        sim.create_dir_all(Path::new("/dwb")).unwrap();
        Env {
            vfs: Arc::new(sim.clone()),
            dir: PathBuf::from("/dwb"),
            sim: Some(sim),
            _tmp: None,
        }
    }
    fn path(&self) -> PathBuf {
        self.dir.join("test.dwb")
    }
    fn open(&self, options: DwbOptions) -> Result<DoubleWriteBuffer> {
        DoubleWriteBuffer::open_with(self.vfs.clone(), &self.path(), options)
    }
    fn buffered(&self) -> DoubleWriteBuffer {
        self.open(DwbOptions::new(DwbMode::Buffered)).unwrap()
    }
    fn small(&self, mode: DwbMode, capacity: u32, max: u32) -> Result<DoubleWriteBuffer> {
        self.open(DwbOptions {
            mode,
            capacity: Some(capacity),
            max_record_bytes: Some(max),
        })
    }
    fn file_bytes(&self) -> Vec<u8> {
        match &self.sim {
            Some(sim) => sim.read_file(&self.path()).unwrap(),
            None => std::fs::read(self.path()).unwrap(),
        }
    }
    fn overwrite(&self, offset: u64, bytes: &[u8]) {
        match &self.sim {
            Some(sim) => sim.poke(&self.path(), offset, bytes),
            None => {
                use std::os::unix::fs::FileExt;
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(self.path())
                    .unwrap();
                f.write_all_at(bytes, offset).unwrap();
            }
        }
    }
}

/// Asserts that a copy was staged (every record in these tests fits unless stated).
fn mirrored(outcome: Result<DwbMirror>) {
    assert_eq!(outcome.unwrap(), DwbMirror::Mirrored);
}

fn rec(lsn: u64, payload: &[u8]) -> WalRecord {
    WalRecord::new(RecordType::PUT, lsn, 1, 2, 3, payload.to_vec(), None, None).unwrap()
}

/// A record whose encoded size is exactly `len` bytes.
fn rec_of_len(lsn: u64, len: usize) -> WalRecord {
    rec(lsn, &vec![(lsn % 251) as u8; len - HEADER_SIZE])
}

/// Whether direct I/O works where the real-disk tests run; prints the reason when not.
fn direct_io_available(env: &Env) -> bool {
    if env.sim.is_some() {
        return true;
    }
    match env.open(DwbOptions::new(DwbMode::Direct)) {
        Ok(_) => true,
        Err(Error::DirectIoUnsupported { detail, .. }) => {
            eprintln!(
                "SKIPPED: direct I/O unavailable in {}: {detail}",
                env.dir.display()
            );
            false
        }
        Err(e) => panic!("unexpected error probing direct I/O: {e}"),
    }
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod on_std { $(#[test] fn $name() { super::$name(&super::Env::std()); })* }
        mod on_sim { $(#[test] fn $name() { super::$name(&super::Env::sim()); })* }
    };
}

both!(
    write_and_recover,
    missing_lsn_is_none,
    survives_reopen,
    deferred_batch_then_one_flush,
    flush_is_idempotent,
    stride_and_slots_are_block_aligned,
    wrap_keeps_newest_and_drops_oldest,
    small_records_pack_and_wrap,
    bytes_counter_grows,
    modes_read_each_others_files,
    reused_lsn_returns_newest_copy,
    reused_lsn_newest_across_wrap,
    reused_lsn_newest_across_reopen,
    sequence_resumes_above_disk_maximum,
    torn_prefix_is_never_returned,
    torn_record_is_never_returned,
    garbage_slot_is_never_returned,
    corrupt_header_is_a_typed_error,
    oversized_record_is_skipped_and_counted,
    conflicting_geometry_is_refused,
    geometry_persists_across_reopen,
    off_mode_is_refused,
    directory_path_is_refused,
    direct_mode_writes_only_padded_blocks,
    invalid_encoded_copy_is_refused,
    a_payload_embedding_a_frame_is_not_a_copy,
    lookups_between_flushes_see_every_change,
    a_reused_flush_buffer_pads_with_zeros,
);

fn write_and_recover(env: &Env) {
    let dwb = env.buffered();
    let record = rec(7, b"seven");
    assert_eq!(dwb.write_record(&record).unwrap(), DwbMirror::Mirrored);
    assert_eq!(dwb.recover_record(7).unwrap(), Some(record));
}

fn missing_lsn_is_none(env: &Env) {
    let dwb = env.buffered();
    mirrored(dwb.write_record(&rec(1, b"a")));
    assert_eq!(dwb.recover_record(2).unwrap(), None);
}

fn survives_reopen(env: &Env) {
    {
        let dwb = env.buffered();
        mirrored(dwb.write_record(&rec(3, b"three")));
    }
    let dwb = env.buffered();
    assert_eq!(dwb.recover_record(3).unwrap().unwrap().payload(), b"three");
}

fn deferred_batch_then_one_flush(env: &Env) {
    let dwb = env.buffered();
    for lsn in 1..=5 {
        assert_eq!(
            dwb.write_record_deferred(&rec(lsn, &[lsn as u8; 10]))
                .unwrap(),
            DwbMirror::Mirrored
        );
    }
    assert_eq!(dwb.pending_records(), 5);
    assert_eq!(
        dwb.recover_record(1).unwrap(),
        None,
        "unflushed copies are not on disk"
    );
    dwb.flush().unwrap();
    assert_eq!(dwb.pending_records(), 0);
    for lsn in 1..=5 {
        assert_eq!(
            dwb.recover_record(lsn).unwrap().unwrap().payload(),
            &[lsn as u8; 10]
        );
    }
    drop(dwb);
    let dwb = env.buffered();
    for lsn in 1..=5 {
        assert!(dwb.recover_record(lsn).unwrap().is_some());
    }
}

fn flush_is_idempotent(env: &Env) {
    let dwb = env.buffered();
    mirrored(dwb.write_record_deferred(&rec(1, b"x")));
    dwb.flush().unwrap();
    let file_before = env.file_bytes();
    let mutations_before = env.sim.as_ref().map(|s| s.mutation_count());
    dwb.flush().unwrap();
    dwb.flush().unwrap();
    assert_eq!(env.file_bytes(), file_before);
    // On the simulated disk we can see that no write and no sync happened at all.
    assert_eq!(
        env.sim.as_ref().map(|s| s.mutation_count()),
        mutations_before
    );
}

fn stride_and_slots_are_block_aligned(env: &Env) {
    let dwb = env.buffered();
    let g = dwb.geometry();
    let block = u64::from(g.block_size_bytes);
    assert!(g.block_size_bytes.is_power_of_two() && g.block_size_bytes >= 512);
    assert_eq!(u64::from(dwb.slot_stride()) % block, 0);
    assert!(u64::from(dwb.slot_stride()) >= (FRAME_PREFIX_SIZE + 64 * 1024) as u64);
    for i in 0..g.capacity {
        assert_eq!(g.slot_offset_bytes(i) % block, 0, "slot {i}");
    }
    // Every flush starts on a block boundary, whatever the record sizes.
    for lsn in 1..=40 {
        mirrored(dwb.write_record(&rec(lsn, &vec![1; (lsn * 37) as usize])));
    }
    let frames = dwb.frames();
    let mut starts = 0;
    for window in frames.windows(2) {
        let (prev, next) = (window[0], window[1]);
        if next.1 == prev.1 + 1 {
            // Each write_record is its own flush: each frame starts a flush.
            assert_eq!(next.2 % block, 0, "flush start {} not aligned", next.2);
            starts += 1;
        }
    }
    assert!(starts >= 30);
}

fn wrap_keeps_newest_and_drops_oldest(env: &Env) {
    // With max-size records each write fills one slot, like the reference's ring.
    let capacity = 8;
    let max = 4096;
    let dwb = env.small(DwbMode::Buffered, capacity, max).unwrap();
    let writes = u64::from(capacity) + 5;
    for lsn in 1..=writes {
        mirrored(dwb.write_record(&rec_of_len(lsn, max as usize)));
    }
    for lsn in 1..=5 {
        assert_eq!(
            dwb.recover_record(lsn).unwrap(),
            None,
            "LSN {lsn} survived a full wrap"
        );
    }
    for lsn in writes - 4..=writes {
        assert!(dwb.recover_record(lsn).unwrap().is_some(), "LSN {lsn} lost");
    }
    drop(dwb);
    let dwb = env.small(DwbMode::Buffered, capacity, max).unwrap();
    for lsn in writes - 4..=writes {
        assert!(
            dwb.recover_record(lsn).unwrap().is_some(),
            "LSN {lsn} lost after reopen"
        );
    }
}

/// The index by LSN is built by a lookup and must follow every later change to the ring:
/// a flush's new copies, the copies a wrap overwrites, a retracted flush.
fn lookups_between_flushes_see_every_change(env: &Env) {
    let capacity = 4;
    let max = 4096;
    let dwb = env.small(DwbMode::Buffered, capacity, max).unwrap();
    mirrored(dwb.write_record(&rec_of_len(1, max as usize)));
    assert!(dwb.recover_record(1).unwrap().is_some());
    for lsn in 2..=u64::from(capacity) + 1 {
        assert_eq!(dwb.recover_record(lsn).unwrap(), None);
        mirrored(dwb.write_record(&rec_of_len(lsn, max as usize)));
        assert!(
            dwb.recover_record(lsn).unwrap().is_some(),
            "LSN {lsn}, flushed after a lookup, not found"
        );
    }
    assert_eq!(
        dwb.recover_record(1).unwrap(),
        None,
        "LSN 1 found after the wrap overwrote it"
    );
    dwb.retract_last_flush();
    assert_eq!(
        dwb.recover_record(u64::from(capacity) + 1).unwrap(),
        None,
        "a retracted copy found"
    );
    assert!(dwb.recover_record(u64::from(capacity)).unwrap().is_some());
}

/// A flush reuses the last one's buffer, which still holds that flush's bytes: a smaller
/// flush after a larger one must still write zeros from its last frame to the block end.
fn a_reused_flush_buffer_pads_with_zeros(env: &Env) {
    let dwb = env.small(DwbMode::Buffered, 8, 16384).unwrap();
    let block = dwb.geometry().block_size_bytes as usize;
    // Large, non-zero payloads: the buffer's bytes after the small frame below.
    mirrored(dwb.write_record(&rec(1, &vec![0xee; 2 * block])));
    mirrored(dwb.write_record(&rec(2, &vec![0xdd; 2 * block])));
    mirrored(dwb.write_record(&rec(3, b"small")));
    let at = frame_offset(&dwb, 3) as usize;
    let frame_end = at + FRAME_PREFIX_SIZE + rec(3, b"small").encode().len();
    let block_end = round_up(frame_end as u64, block as u64) as usize;
    let bytes = env.file_bytes();
    assert!(
        bytes[frame_end..block_end].iter().all(|&b| b == 0),
        "stale bytes after the last frame of a flush"
    );
    assert_eq!(dwb.recover_record(3).unwrap().unwrap().payload(), b"small");
}

fn small_records_pack_and_wrap(env: &Env) {
    let dwb = env.small(DwbMode::Buffered, 4, 1024).unwrap();
    let ring_bytes = dwb.geometry().ring_bytes();
    // Batches of 16 small records: several frames share a block, and the ring wraps.
    let mut lsn = 0;
    let mut total = 0;
    while total < ring_bytes * 3 {
        for _ in 0..16 {
            lsn += 1;
            let r = rec(lsn, &[lsn as u8; 100]);
            total += (FRAME_PREFIX_SIZE + r.encoded_len()) as u64;
            mirrored(dwb.write_record_deferred(&r));
        }
        dwb.flush().unwrap();
    }
    for back in 0..16 {
        let want = lsn - back;
        assert_eq!(
            dwb.recover_record(want).unwrap().unwrap().payload(),
            &[want as u8; 100]
        );
    }
    assert_eq!(dwb.recover_record(1).unwrap(), None);
}

fn bytes_counter_grows(env: &Env) {
    let dwb = env.buffered();
    let before = dwb_bytes_written_total();
    mirrored(dwb.write_record(&rec(1, &[0; 100])));
    assert!(dwb_bytes_written_total() >= before + 100 + HEADER_SIZE as u64);
}

fn modes_read_each_others_files(env: &Env) {
    if !direct_io_available(env) {
        return;
    }
    // Start from a fresh file for the probe above may have created one.
    {
        let direct = env.open(DwbOptions::new(DwbMode::Direct)).unwrap();
        mirrored(direct.write_record(&rec(10, b"from direct")));
    }
    {
        let buffered = env.buffered();
        assert_eq!(
            buffered.recover_record(10).unwrap().unwrap().payload(),
            b"from direct"
        );
        mirrored(buffered.write_record(&rec(11, b"from buffered")));
    }
    let direct = env.open(DwbOptions::new(DwbMode::Direct)).unwrap();
    assert_eq!(
        direct.recover_record(11).unwrap().unwrap().payload(),
        b"from buffered"
    );
    assert_eq!(
        direct.recover_record(10).unwrap().unwrap().payload(),
        b"from direct"
    );
}

fn reused_lsn_returns_newest_copy(env: &Env) {
    let dwb = env.buffered();
    mirrored(dwb.write_record(&rec(5, b"old")));
    mirrored(dwb.write_record(&rec(5, b"new")));
    assert_eq!(dwb.recover_record(5).unwrap().unwrap().payload(), b"new");
    // Two copies staged in one flush: the later one wins too.
    mirrored(dwb.write_record_deferred(&rec(6, b"first")));
    mirrored(dwb.write_record_deferred(&rec(6, b"second")));
    dwb.flush().unwrap();
    assert_eq!(dwb.recover_record(6).unwrap().unwrap().payload(), b"second");
}

fn reused_lsn_newest_across_wrap(env: &Env) {
    // The newer copy lands at a lower ring position than the older one after the wrap.
    let dwb = env.small(DwbMode::Buffered, 4, 1024).unwrap();
    let ring_bytes = dwb.geometry().ring_bytes();
    let block = u64::from(dwb.geometry().block_size_bytes);
    let frame = (FRAME_PREFIX_SIZE + 1024) as u64;
    // Fill until one more max-size frame fits but the one after it must wrap.
    let mut lsn = 0;
    loop {
        let pos = lock(&dwb.ring).write_pos;
        if pos + frame <= ring_bytes && round_up(pos + frame, block) + frame > ring_bytes {
            break;
        }
        lsn += 1;
        mirrored(dwb.write_record(&rec_of_len(lsn, 1024)));
    }
    let mut older = b"older, high in the ring".to_vec();
    older.resize(1024 - HEADER_SIZE, b'.');
    let mut newer = b"newer, wrapped to the start".to_vec();
    newer.resize(1024 - HEADER_SIZE, b'.');
    mirrored(dwb.write_record(&rec(99, &older)));
    mirrored(dwb.write_record(&rec(99, &newer)));
    let frames: Vec<_> = dwb.frames().into_iter().filter(|f| f.0 == 99).collect();
    assert_eq!(frames.len(), 2);
    assert!(
        frames[1].2 < frames[0].2,
        "test setup: the newer copy should sit lower"
    );
    assert_eq!(
        dwb.recover_record(99).unwrap().unwrap().payload(),
        &newer[..]
    );
    drop(dwb);
    let dwb = env.small(DwbMode::Buffered, 4, 1024).unwrap();
    assert_eq!(
        dwb.recover_record(99).unwrap().unwrap().payload(),
        &newer[..]
    );
}

fn reused_lsn_newest_across_reopen(env: &Env) {
    {
        let dwb = env.buffered();
        mirrored(dwb.write_record(&rec(8, b"before reopen")));
    }
    {
        let dwb = env.buffered();
        mirrored(dwb.write_record(&rec(8, b"after reopen")));
    }
    let dwb = env.buffered();
    assert_eq!(
        dwb.recover_record(8).unwrap().unwrap().payload(),
        b"after reopen"
    );
}

fn sequence_resumes_above_disk_maximum(env: &Env) {
    let max_seq = {
        let dwb = env.buffered();
        for lsn in 1..=10 {
            mirrored(dwb.write_record(&rec(lsn, b"x")));
        }
        dwb.frames().iter().map(|f| f.1).max().unwrap()
    };
    let dwb = env.buffered();
    mirrored(dwb.write_record(&rec(11, b"y")));
    let newest = dwb.frames().into_iter().find(|f| f.0 == 11).unwrap();
    assert_eq!(newest.1, max_seq + 1);
}

fn frame_offset(dwb: &DoubleWriteBuffer, lsn: u64) -> u64 {
    let f = dwb.frames().into_iter().find(|f| f.0 == lsn).unwrap();
    dwb.geometry().ring_offset_bytes() + f.2
}

fn torn_prefix_is_never_returned(env: &Env) {
    let at = {
        let dwb = env.buffered();
        mirrored(dwb.write_record(&rec(1, b"good")));
        frame_offset(&dwb, 1)
    };
    // Flip the sequence number inside the prefix: its CRC must reject it.
    env.overwrite(at + 9, &[0xFF]);
    let dwb = env.buffered();
    assert_eq!(dwb.recover_record(1).unwrap(), None);
}

fn torn_record_is_never_returned(env: &Env) {
    let at = {
        let dwb = env.buffered();
        mirrored(dwb.write_record(&rec(1, b"payload that will tear")));
        frame_offset(&dwb, 1)
    };
    env.overwrite(at + (FRAME_PREFIX_SIZE + HEADER_SIZE + 3) as u64, &[0; 4]);
    let dwb = env.buffered();
    assert_eq!(dwb.recover_record(1).unwrap(), None);
}

fn garbage_slot_is_never_returned(env: &Env) {
    let (at, ring_offset) = {
        let dwb = env.buffered();
        mirrored(dwb.write_record(&rec(1, b"keep")));
        mirrored(dwb.write_record(&rec(2, b"garbage me")));
        (frame_offset(&dwb, 2), dwb.geometry().ring_offset_bytes())
    };
    let mut rng = SimRng::new(42);
    let mut junk = vec![0u8; 512];
    rng.fill(&mut junk);
    env.overwrite(at, &junk);
    // Garbage elsewhere in the ring, too, including a fake prefix magic.
    let mut fake = junk.clone();
    fake[..4].copy_from_slice(&FRAME_MAGIC);
    env.overwrite(ring_offset + 8192 * 4, &fake);
    let dwb = env.buffered();
    assert_eq!(dwb.recover_record(2).unwrap(), None);
    assert_eq!(dwb.recover_record(1).unwrap().unwrap().payload(), b"keep");
}

fn corrupt_header_is_a_typed_error(env: &Env) {
    drop(env.buffered());
    env.overwrite(16, &[0x99]);
    let err = env.open(DwbOptions::new(DwbMode::Buffered)).unwrap_err();
    assert_eq!(err.code(), "ERR_DWB_CORRUPT", "{err}");
    assert!(err.to_string().contains("checksum"), "{err}");
}

fn oversized_record_is_skipped_and_counted(env: &Env) {
    let dwb = env.small(DwbMode::Buffered, 4, 1024).unwrap();
    let big = rec_of_len(1, 1025);
    assert_eq!(
        dwb.write_record(&big).unwrap(),
        DwbMirror::Skipped(SkipReason::TooLarge {
            size_bytes: 1025,
            max_bytes: 1024
        })
    );
    assert_eq!(dwb.skipped_records(), 1);
    assert_eq!(dwb.recover_record(1).unwrap(), None);
    assert_eq!(
        dwb.write_record(&rec_of_len(2, 1024)).unwrap(),
        DwbMirror::Mirrored
    );
}

fn conflicting_geometry_is_refused(env: &Env) {
    drop(env.small(DwbMode::Buffered, 8, 2048).unwrap());
    let err = env.small(DwbMode::Buffered, 9, 2048).unwrap_err();
    assert_eq!(err.code(), "ERR_DWB_GEOMETRY");
    let err = env.small(DwbMode::Buffered, 8, 4096).unwrap_err();
    assert_eq!(err.code(), "ERR_DWB_GEOMETRY");
}

fn geometry_persists_across_reopen(env: &Env) {
    drop(env.small(DwbMode::Buffered, 8, 2048).unwrap());
    let dwb = env.buffered();
    assert_eq!(dwb.capacity(), 8);
    assert_eq!(dwb.max_record_bytes(), 2048);
}

fn off_mode_is_refused(env: &Env) {
    let err = env.open(DwbOptions::new(DwbMode::Off)).unwrap_err();
    assert_eq!(err.code(), "ERR_DWB_OFF");
}

fn directory_path_is_refused(env: &Env) {
    let err = DoubleWriteBuffer::open_with(
        env.vfs.clone(),
        &env.dir,
        DwbOptions::new(DwbMode::Buffered),
    )
    .unwrap_err();
    assert_eq!(err.code(), "ERR_PATH_IS_DIRECTORY", "{err}");
}

fn direct_mode_writes_only_padded_blocks(env: &Env) {
    if !direct_io_available(env) {
        return;
    }
    let dwb = env.open(DwbOptions::new(DwbMode::Direct)).unwrap();
    let block = u64::from(dwb.geometry().block_size_bytes);
    // Other tests write DWBs concurrently; measure our own flushes through the file.
    let batch: Vec<WalRecord> = (1..=16).map(|lsn| rec(lsn, &[7; 128])).collect();
    for r in &batch {
        mirrored(dwb.write_record_deferred(r));
    }
    dwb.flush().unwrap();
    let frame_bytes = 16 * (FRAME_PREFIX_SIZE + HEADER_SIZE + 128) as u64;
    let start = frame_offset(&dwb, 1);
    let bytes = env.file_bytes();
    let end = start + round_up(frame_bytes, block);
    assert!(
        bytes[(start + frame_bytes) as usize..end as usize]
            .iter()
            .all(|&b| b == 0),
        "padding not zeroed"
    );
    // 16 records of 128 B share blocks: far below one stride (the reference) per record.
    assert!(round_up(frame_bytes, block) <= 16 * 512);
}

fn invalid_encoded_copy_is_refused(env: &Env) {
    let dwb = env.buffered();
    let mut bytes = rec(1, b"abc").encode();
    bytes[HEADER_SIZE] ^= 1;
    assert_eq!(
        dwb.write_encoded_deferred(&bytes).unwrap_err().code(),
        "ERR_RECORD_CHECKSUM"
    );
    assert_eq!(dwb.pending_records(), 0);
}

/// A crash during a flush leaves the earlier flushes intact and never yields a torn copy.
#[test]
fn crash_during_flush_keeps_earlier_copies() {
    for seed in 0..200 {
        let env = Env::sim();
        let sim = env.sim.clone().unwrap();
        let dwb = env.small(DwbMode::Buffered, 8, 2048).unwrap();
        for lsn in 1..=4 {
            mirrored(dwb.write_record(&rec(lsn, &[lsn as u8; 300])));
        }
        sim.set_plan(crate::io::sim::FaultPlan {
            crash_at: Some(sim.mutation_count() + 1), // the next write
            ..Default::default()
        });
        for lsn in 5..=8 {
            mirrored(dwb.write_record_deferred(&rec(lsn, &[lsn as u8; 300])));
        }
        assert!(dwb.flush().is_err());
        drop(dwb);
        sim.crash(&mut SimRng::new(seed), TearPolicy::Random);
        let dwb = env.small(DwbMode::Buffered, 8, 2048).unwrap();
        for lsn in 1..=4 {
            assert_eq!(
                dwb.recover_record(lsn).unwrap().unwrap().payload(),
                &[lsn as u8; 300]
            );
        }
        for lsn in 5..=8 {
            if let Some(r) = dwb.recover_record(lsn).unwrap() {
                assert_eq!(
                    r.payload(),
                    &[lsn as u8; 300],
                    "seed {seed}: torn copy returned"
                );
            }
        }
    }
}

/// A failed flush keeps the copies staged; the retry makes them durable.
#[test]
fn failed_sync_keeps_copies_for_retry() {
    let env = Env::sim();
    let sim = env.sim.clone().unwrap();
    let dwb = env.buffered();
    mirrored(dwb.write_record_deferred(&rec(1, b"a")));
    let mut plan = crate::io::sim::FaultPlan::default();
    plan.fail_sync_at.insert(sim.mutation_count() + 2);
    sim.set_plan(plan);
    assert!(dwb.flush().is_err());
    assert_eq!(dwb.pending_records(), 1);
    dwb.flush().unwrap();
    assert_eq!(dwb.recover_record(1).unwrap().unwrap().payload(), b"a");
}

/// Staging never waits for a flush running on another thread.
#[test]
fn staging_while_flushing_loses_nothing() {
    let env = Env::std();
    let dwb = Arc::new(env.buffered());
    let flusher = {
        let dwb = dwb.clone();
        std::thread::spawn(move || {
            for _ in 0..200 {
                dwb.flush().unwrap();
            }
        })
    };
    for lsn in 1..=2000 {
        mirrored(dwb.write_record_deferred(&rec(lsn, &lsn.to_le_bytes())));
    }
    flusher.join().unwrap();
    dwb.flush().unwrap();
    for lsn in 1900..=2000 {
        assert_eq!(
            dwb.recover_record(lsn).unwrap().unwrap().payload(),
            &lsn.to_le_bytes()
        );
    }
}

/// A record's payload is copied into the ring byte for byte; one crafted to hold a
/// well-formed frame (here for LSN 999, with a huge sequence number so it would win) at a
/// block boundary must not be indexed as a copy: without the file's random salt its
/// checksum cannot be right.
fn a_payload_embedding_a_frame_is_not_a_copy(env: &Env) {
    let dwb = env.buffered();
    let block = dwb.geometry().block_size_bytes as usize;
    let forged_record = rec(999, b"injected by a tenant").encode();
    let mut payload = vec![0x41u8; block - FRAME_PREFIX_SIZE - HEADER_SIZE];
    for salt_guess in [None, Some(0u64)] {
        let mut prefix = [0u8; FRAME_PREFIX_SIZE];
        prefix[0..4].copy_from_slice(&FRAME_MAGIC);
        prefix[4..8].copy_from_slice(&(forged_record.len() as u32).to_le_bytes());
        prefix[8..16].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
        let crc = match salt_guess {
            None => crc32c::crc32c(&prefix[..20]),
            Some(salt) => crc32c::crc32c_append(crc32c::crc32c(&salt.to_le_bytes()), &prefix[..20]),
        };
        prefix[20..24].copy_from_slice(&crc.to_le_bytes());
        payload.extend_from_slice(&prefix);
        payload.extend_from_slice(&forged_record);
        payload.resize(
            payload.len().next_multiple_of(block) - FRAME_PREFIX_SIZE - HEADER_SIZE,
            0x41,
        );
    }
    mirrored(dwb.write_record(&rec(1, &payload)));
    drop(dwb);
    let dwb = env.buffered();
    assert!(dwb.recover_record(1).unwrap().is_some());
    assert_eq!(
        dwb.recover_record(999).unwrap(),
        None,
        "a forged frame was taken as a copy"
    );
    assert_eq!(dwb.indexed_lsns(), vec![1]);
}

/// A buffered DWB is created with blocks of at least a page, so its header has a page of
/// its own; one created for direct I/O has 512-byte blocks here.
#[test]
fn a_buffered_dwb_gets_page_sized_blocks() {
    let env = Env::sim();
    env.sim.as_ref().unwrap().set_direct_io_alignment(512);
    let block = env.buffered().geometry().block_size_bytes;
    assert_eq!(u64::from(block), crate::align::PAGE_BYTES);
    let env = Env::sim();
    env.sim.as_ref().unwrap().set_direct_io_alignment(512);
    let dwb = env.small(DwbMode::Direct, 64, 4096).unwrap();
    assert_eq!(dwb.geometry().block_size_bytes, 512);
}

/// With 512-byte blocks behind a 4 KiB page (a DWB created for direct I/O, opened
/// buffered), a flush overlapped with the WAL's sync starts on a page of its own:
/// writeback of it rewrites no page holding the last flush's frames (the copies the WAL
/// write in flight relies on). No flush touches the header's page; a plain flush still
/// packs at the next block; `next_flush_spares_last` is false while nothing protects the
/// WAL write.
#[test]
fn an_overlapped_flush_shares_no_page_with_the_last() {
    let env = Env::sim();
    env.sim.as_ref().unwrap().set_direct_io_alignment(512);
    drop(env.small(DwbMode::Direct, 64, 4096).unwrap());
    let dwb = env.small(DwbMode::Buffered, 64, 4096).unwrap();
    let block = u64::from(dwb.geometry().block_size_bytes);
    let offset = dwb.geometry().ring_offset_bytes();
    assert_eq!(block, 512);
    assert!(!dwb.next_flush_spares_last(), "there is no last flush yet");
    mirrored(dwb.write_record(&rec(1, b"first")));
    mirrored(dwb.write_record_deferred(&rec(2, b"second")));
    assert!(dwb.next_flush_spares_last());
    let other: Arc<dyn VfsFile> = Arc::from(
        env.vfs
            .open(&env.dir.join("other"), OpenOptions::create_new())
            .unwrap(),
    );
    let (copies, synced) = dwb.flush_alongside(env.vfs.as_ref(), &other);
    assert!(copies.unwrap(), "the staged copy was flushed");
    synced.unwrap();
    mirrored(dwb.write_record(&rec(3, b"third")));
    let frames = dwb.frames();
    let end = |i: usize| frames[i].2 + (FRAME_PREFIX_SIZE as u64) + u64::from(frames[i].3);
    let page = crate::align::PAGE_BYTES;
    assert!(
        offset + frames[0].2 >= page,
        "the header's page is left alone"
    );
    assert_eq!(
        (offset + frames[1].2) % page,
        0,
        "overlapped flush on a page boundary"
    );
    assert!(offset + frames[1].2 >= round_up(offset + end(0), page));
    assert_eq!(frames[2].2, round_up(end(1), block), "a plain flush packs");
    for lsn in 1..=3 {
        assert!(dwb.recover_record(lsn).unwrap().is_some());
    }
    drop(dwb);
    assert_eq!(
        env.buffered().indexed_lsns(),
        vec![1, 2, 3],
        "a reopen finds all three"
    );
}
