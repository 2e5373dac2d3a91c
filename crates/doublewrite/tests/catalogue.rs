//! A catalogue of hand-made on-disk states, one test each, with the exact typed outcome.
//! Each runs on the real disk and on the simulated disk.

mod common;

use common::{payload, put, replay_all, Env};
use doublewrite::dwb::{DoubleWriteBuffer, DwbOptions};
use doublewrite::record::{RecordType, WalRecord, HEADER_SIZE};
use doublewrite::{DwbMode, Error, ProtectionState, WalOptions};

on_both!(
    empty_directory_opens_empty,
    short_length_at_the_tail_is_a_torn_tail,
    huge_length_at_the_tail_is_a_torn_tail,
    huge_length_in_the_middle_is_repaired_from_the_dwb,
    bad_crc_at_the_tail_is_cut,
    bad_crc_in_the_middle_is_corrupt,
    damage_inside_the_last_commit_is_a_torn_tail,
    torn_header_is_repaired,
    torn_payload_is_repaired,
    zeros_where_a_record_was_with_a_good_copy_are_repaired,
    torn_dwb_slot_and_torn_record_in_the_middle_is_corrupt,
    torn_dwb_slot_at_the_tail_is_cut,
    torn_dwb_header_replaces_the_dwb,
    torn_dwb_header_and_a_damaged_record_is_corrupt,
    record_and_its_copy_both_bad_is_corrupt,
    stale_slot_from_an_earlier_wrap_loses_to_the_newer_copy,
    two_valid_copies_of_one_lsn_repair_once,
    plausible_header_after_the_tail_is_erased,
);

/// Small segments keep the tests fast; everything else is the default configuration.
fn opts() -> WalOptions {
    WalOptions {
        segment_size_bytes: 256 * 1024,
        ..WalOptions::default()
    }
}

const N: u64 = 6;
const LEN: usize = 200;

/// `N` records of `LEN` bytes, one commit each; the WAL is closed afterwards.
fn written(env: &Env) {
    let wal = env.open(opts()).unwrap();
    for lsn in 1..=N {
        wal.append(put(lsn, LEN)).unwrap();
    }
    wal.close().unwrap();
}

fn expected(up_to: u64) -> Vec<(u64, Vec<u8>)> {
    (1..=up_to).map(|lsn| (lsn, payload(lsn, LEN))).collect()
}

fn dwb_path(env: &Env) -> std::path::PathBuf {
    env.dir.join("wal.dwb")
}

/// Removes the DWB, so no copy exists (it is recreated empty at open).
fn without_dwb(env: &Env) {
    env.remove(&dwb_path(env));
}

fn damage(env: &Env, lsn: u64, offset_in_record: u64, bytes: &[u8]) {
    let (path, offset, _) = env.find(lsn);
    env.overwrite(&path, offset + offset_in_record, bytes);
}

fn corrupt_error(err: Error, lsn: u64) {
    match err {
        Error::WalCorrupt { lsn: at, .. } => assert_eq!(at, lsn),
        other => panic!("expected ERR_WAL_CORRUPT at LSN {lsn}, got {other}"),
    }
}

fn empty_directory_opens_empty(env: &Env) {
    let wal = env.open(opts()).unwrap();
    let report = wal.recovery().clone();
    assert_eq!(
        (report.records, report.last_lsn, report.segments),
        (0, 0, 1)
    );
    assert_eq!(wal.append(put(1, 1)).unwrap(), 1);
}

fn short_length_at_the_tail_is_a_torn_tail(env: &Env) {
    written(env);
    without_dwb(env);
    damage(env, N, 48, &((LEN - 10) as u32).to_le_bytes());
    let wal = env.open(opts()).unwrap();
    assert_eq!(wal.recovery().last_lsn, N - 1);
    assert!(wal.recovery().torn_tail_bytes > 0);
    assert!(replay_all(&wal) == expected(N - 1));
}

fn huge_length_at_the_tail_is_a_torn_tail(env: &Env) {
    written(env);
    without_dwb(env);
    // A length far beyond the 64 MiB bound: refused before any allocation.
    damage(env, N, 48, &u32::MAX.to_le_bytes());
    let wal = env.open(opts()).unwrap();
    assert_eq!(wal.recovery().last_lsn, N - 1);
}

fn huge_length_in_the_middle_is_repaired_from_the_dwb(env: &Env) {
    written(env);
    damage(env, 4, 48, &0x0FFF_FFFFu32.to_le_bytes());
    let wal = env.open(opts()).unwrap();
    assert_eq!(wal.recovery().repaired_from_dwb, 1);
    assert!(replay_all(&wal) == expected(N));
}

fn bad_crc_at_the_tail_is_cut(env: &Env) {
    written(env);
    without_dwb(env);
    damage(env, N, HEADER_SIZE as u64 + 5, &[0xFF]);
    let wal = env.open(opts()).unwrap();
    let report = wal.recovery();
    assert_eq!(report.last_lsn, N - 1);
    assert_eq!(report.repaired_from_dwb, 0);
    assert_eq!(report.torn_tail_bytes, (HEADER_SIZE + LEN) as u64);
    assert_eq!(wal.append(put(N, 3)).unwrap(), N, "the cut LSN is reused");
}

fn bad_crc_in_the_middle_is_corrupt(env: &Env) {
    written(env);
    without_dwb(env);
    damage(env, 3, HEADER_SIZE as u64 + 5, &[0xFF]);
    let segment = env.segments()[0].clone();
    let before = env.read(&segment);
    let err = env.open(opts()).unwrap_err();
    assert!(err.to_string().contains("later commit"), "{err}");
    corrupt_error(err, 3);
    assert_eq!(env.read(&segment), before, "nothing was changed");
}

fn damage_inside_the_last_commit_is_a_torn_tail(env: &Env) {
    // The last commit holds LSNs N+1..N+4; damage N+2, keep N+3 and N+4 valid. Those
    // belong to the same (interrupted) commit: never acknowledged, so this is a torn
    // tail, not lost data — the commit LSN in each header tells recovery so.
    written(env);
    {
        let wal = env.open(opts()).unwrap();
        wal.append_batch((N + 1..=N + 4).map(|lsn| put(lsn, LEN)).collect())
            .unwrap();
    }
    without_dwb(env);
    damage(env, N + 2, 30, &[0xAA; 8]);
    let wal = env.open(opts()).unwrap();
    assert_eq!(wal.recovery().last_lsn, N + 1);
    assert!(wal.recovery().torn_tail_bytes >= 2 * (HEADER_SIZE + LEN) as u64);
}

fn torn_header_is_repaired(env: &Env) {
    written(env);
    damage(env, 3, 0, &[0x55; 24]);
    let wal = env.open(opts()).unwrap();
    assert_eq!(wal.recovery().repaired_from_dwb, 1);
    assert!(replay_all(&wal) == expected(N));
}

fn torn_payload_is_repaired(env: &Env) {
    written(env);
    damage(env, 5, HEADER_SIZE as u64 + 100, &[0x00; 64]);
    let wal = env.open(opts()).unwrap();
    assert_eq!(wal.recovery().repaired_from_dwb, 1);
    assert!(replay_all(&wal) == expected(N));
}

fn zeros_where_a_record_was_with_a_good_copy_are_repaired(env: &Env) {
    written(env);
    damage(env, 4, 0, &vec![0; HEADER_SIZE + LEN]);
    let wal = env.open(opts()).unwrap();
    assert_eq!(wal.recovery().repaired_from_dwb, 1);
    assert!(replay_all(&wal) == expected(N));
}

/// Damages the frame prefix of every DWB copy of `lsn`.
fn tear_copies(env: &Env, lsn: u64) {
    let dwb = DoubleWriteBuffer::open_with(
        env.vfs.clone(),
        &dwb_path(env),
        DwbOptions::new(DwbMode::Buffered),
    )
    .unwrap();
    let frames: Vec<_> = dwb.frames().into_iter().filter(|f| f.0 == lsn).collect();
    let ring = dwb.geometry().ring_offset_bytes();
    drop(dwb);
    assert!(!frames.is_empty(), "LSN {lsn} has a copy to tear");
    for (_, _, pos, _) in frames {
        env.overwrite(&dwb_path(env), ring + pos + 9, &[0xEE; 4]);
    }
}

fn torn_dwb_slot_and_torn_record_in_the_middle_is_corrupt(env: &Env) {
    written(env);
    tear_copies(env, 3);
    damage(env, 3, 60, &[0x11; 8]);
    corrupt_error(env.open(opts()).unwrap_err(), 3);
}

fn torn_dwb_slot_at_the_tail_is_cut(env: &Env) {
    written(env);
    tear_copies(env, N);
    damage(env, N, 60, &[0x11; 8]);
    let wal = env.open(opts()).unwrap();
    assert_eq!(wal.recovery().last_lsn, N - 1);
    assert_eq!(wal.recovery().repaired_from_dwb, 0);
}

fn torn_dwb_header_replaces_the_dwb(env: &Env) {
    written(env);
    env.overwrite(&dwb_path(env), 12, &[0x77; 4]);
    let wal = env.open(opts()).unwrap();
    assert!(replay_all(&wal) == expected(N));
    assert_eq!(
        wal.protection().state,
        ProtectionState::Active,
        "a fresh DWB took its place"
    );
    assert!(
        env.vfs
            .kind(&env.dir.join("wal.dwb.corrupt"))
            .unwrap()
            .is_some(),
        "the damaged one is kept aside"
    );
    wal.append(put(N + 1, LEN)).unwrap();
    wal.close().unwrap();
    // The new DWB protects: tear the newest record, it comes back.
    damage(env, N + 1, 40, &[0; 16]);
    let wal = env.open(opts()).unwrap();
    assert_eq!(wal.recovery().repaired_from_dwb, 1);
}

fn torn_dwb_header_and_a_damaged_record_is_corrupt(env: &Env) {
    written(env);
    env.overwrite(&dwb_path(env), 0, &[0x77; 4]);
    damage(env, 2, 70, &[0x22; 4]);
    corrupt_error(env.open(opts()).unwrap_err(), 2);
}

fn record_and_its_copy_both_bad_is_corrupt(env: &Env) {
    written(env);
    // Damage the copy's record bytes (not its prefix): the prefix verifies, the record
    // CRC does not, so the copy is refused.
    let dwb = DoubleWriteBuffer::open_with(
        env.vfs.clone(),
        &dwb_path(env),
        DwbOptions::new(DwbMode::Buffered),
    )
    .unwrap();
    let ring = dwb.geometry().ring_offset_bytes();
    let copies: Vec<_> = dwb.frames().into_iter().filter(|f| f.0 == 4).collect();
    drop(dwb);
    for (_, _, pos, _) in copies {
        env.overwrite(
            &dwb_path(env),
            ring + pos + 24 + HEADER_SIZE as u64 + 7,
            &[0x99],
        );
    }
    damage(env, 4, HEADER_SIZE as u64 + 7, &[0x99]);
    corrupt_error(env.open(opts()).unwrap_err(), 4);
}

/// Writes one more copy of `record` into the closed WAL's DWB (with a newer sequence).
fn add_copy(env: &Env, record: &WalRecord) {
    let dwb = DoubleWriteBuffer::open_with(
        env.vfs.clone(),
        &dwb_path(env),
        DwbOptions::new(DwbMode::Buffered),
    )
    .unwrap();
    assert_eq!(
        dwb.write_record(record).unwrap(),
        doublewrite::DwbMirror::Mirrored
    );
}

fn record_as_written(env: &Env, lsn: u64) -> WalRecord {
    let (path, offset, len) = env.find(lsn);
    let bytes = env.read(&path);
    WalRecord::decode(&bytes[offset as usize..offset as usize + len]).unwrap()
}

fn stale_slot_from_an_earlier_wrap_loses_to_the_newer_copy(env: &Env) {
    written(env);
    without_dwb(env);
    {
        // Recreate the DWB; an old, different copy of LSN 3 first, then the right one.
        let wal = env.open(opts()).unwrap();
        wal.close().unwrap();
    }
    let right = record_as_written(env, 3);
    let stale = WalRecord::with_commit_lsn(
        RecordType::PUT,
        3,
        3,
        0,
        0,
        0,
        b"an older incarnation".to_vec(),
    )
    .unwrap();
    add_copy(env, &stale);
    add_copy(env, &right);
    damage(env, 3, 10, &[0; 30]);
    let wal = env.open(opts()).unwrap();
    assert_eq!(wal.recovery().repaired_from_dwb, 1);
    assert!(replay_all(&wal) == expected(N), "the newer copy won");
}

fn two_valid_copies_of_one_lsn_repair_once(env: &Env) {
    written(env);
    let right = record_as_written(env, 2);
    add_copy(env, &right);
    add_copy(env, &right);
    damage(env, 2, 0, &vec![0; HEADER_SIZE + LEN]);
    let wal = env.open(opts()).unwrap();
    assert_eq!(wal.recovery().repaired_from_dwb, 1);
    assert!(replay_all(&wal) == expected(N));
}

fn plausible_header_after_the_tail_is_erased(env: &Env) {
    written(env);
    let (path, offset, len) = env.find(N);
    let end = offset + len as u64;
    // A whole valid-looking record with a wrong LSN, then a header with the right magic
    // and the expected LSN but a bad CRC: neither is the next record.
    let stray = WalRecord::new(RecordType::PUT, N + 7, 0, 0, 0, vec![1; 40], None, None)
        .unwrap()
        .encode();
    let mut plausible = WalRecord::new(RecordType::PUT, N + 1, 0, 0, 0, vec![2; 40], None, None)
        .unwrap()
        .encode();
    plausible[HEADER_SIZE + 3] ^= 0xFF;
    env.overwrite(&path, end, &stray);
    env.overwrite(&path, end + stray.len() as u64, &plausible);
    let wal = env.open(opts()).unwrap();
    assert_eq!(wal.recovery().last_lsn, N);
    assert_eq!(
        wal.recovery().torn_tail_bytes,
        (stray.len() + plausible.len()) as u64
    );
    assert_eq!(wal.append(put(N + 1, LEN)).unwrap(), N + 1);
    wal.close().unwrap();
    let wal = env.open(opts()).unwrap();
    assert_eq!(
        wal.recovery().torn_tail_bytes,
        0,
        "the stray bytes were erased"
    );
    assert!(replay_all(&wal) == expected(N + 1));
}
