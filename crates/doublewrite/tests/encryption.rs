//! Encrypted records: AES-256-GCM at rest, key rotation, no plaintext on disk, repairs
//! of ciphertext from the DWB, and nonces never reused for one key.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::{replay_all, Env};
use doublewrite::io::sim::{FaultPlan, SimRng, TearPolicy};
use doublewrite::record::{check_encoded, ENCRYPTED_FLAG};
use doublewrite::wal::segment::{list_segments, SegmentHeader};
use doublewrite::{KeyRing, RecordInput, RecordType, Wal, WalOptions};

on_both!(
    round_trip_and_reopen,
    no_plaintext_reaches_the_wal_or_the_dwb,
    rotation_keeps_old_records_readable,
    a_missing_key_is_named_never_garbage,
    a_wrong_key_under_the_right_id_fails_to_decrypt,
    torn_ciphertext_is_repaired_from_the_dwb,
    nonces_are_never_reused_across_reopen_torn_tail_truncation_and_restore,
);

const KEY1: [u8; 32] = [0x11; 32];
const KEY2: [u8; 32] = [0x22; 32];

fn ring(keys: &[(u16, [u8; 32])], active: u16) -> KeyRing {
    KeyRing::new(keys.iter().copied(), active).unwrap()
}

fn opts() -> WalOptions {
    WalOptions {
        segment_size_bytes: 64 * 1024,
        dwb_capacity: Some(4),
        dwb_max_record_bytes: Some(4096),
        ..WalOptions::default()
    }
}

fn open(env: &Env, keys: KeyRing) -> Wal {
    Wal::open_with_keys(env.vfs.clone(), &env.dir, opts(), Some(keys)).unwrap()
}

fn marked(lsn: u64) -> Vec<u8> {
    format!("PLAINTEXT-MARKER-{lsn:06}-the-quick-brown-fox").into_bytes()
}

fn put_marked(lsn: u64) -> RecordInput {
    RecordInput::new(RecordType::PUT, marked(lsn))
}

fn expected(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Vec<u8>)> {
    range.map(|lsn| (lsn, marked(lsn))).collect()
}

fn round_trip_and_reopen(env: &Env) {
    {
        let wal = open(env, ring(&[(1, KEY1)], 1));
        for lsn in 1..=20 {
            assert_eq!(wal.append(put_marked(lsn)).unwrap(), lsn);
        }
        assert!(replay_all(&wal) == expected(1..=20));
    }
    let wal = open(env, ring(&[(1, KEY1)], 1));
    assert!(replay_all(&wal) == expected(1..=20));
    let first = wal.replay(1, None).unwrap().next().unwrap().unwrap();
    assert_eq!(
        first.record_type(),
        RecordType::PUT,
        "the logical type comes back"
    );
}

fn no_plaintext_reaches_the_wal_or_the_dwb(env: &Env) {
    let wal = open(env, ring(&[(1, KEY1)], 1));
    for lsn in 1..=40 {
        wal.append(put_marked(lsn)).unwrap();
    }
    wal.append_batch((41..=60).map(put_marked).collect())
        .unwrap();
    wal.close().unwrap();
    let needle = b"PLAINTEXT-MARKER";
    let files = env.vfs.list_dir(&env.dir).unwrap();
    assert!(files.iter().any(|f| f.ends_with(".dwb")) && files.iter().any(|f| f.ends_with(".seg")));
    for name in files {
        let bytes = env.read(&env.dir.join(&name));
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "plaintext found in {name}"
        );
    }
    // The DWB holds copies, and they are ciphertext: every record there is encrypted.
    let dwb =
        doublewrite::DoubleWriteBuffer::open_read_only(env.vfs.clone(), &env.dir.join("wal.dwb"))
            .unwrap();
    assert!(!dwb.frames().is_empty());
    for lsn in dwb.indexed_lsns() {
        let copy = dwb.recover_encoded(lsn).unwrap().unwrap();
        let (header, _) = check_encoded(&copy).unwrap();
        assert_ne!(
            header.record_type & ENCRYPTED_FLAG,
            0,
            "copy of LSN {lsn} is plaintext"
        );
    }
}

fn rotation_keeps_old_records_readable(env: &Env) {
    {
        let wal = open(env, ring(&[(1, KEY1)], 1));
        for lsn in 1..=5 {
            wal.append(put_marked(lsn)).unwrap();
        }
    }
    {
        let wal = open(env, ring(&[(1, KEY1), (2, KEY2)], 2));
        for lsn in 6..=10 {
            wal.append(put_marked(lsn)).unwrap();
        }
    }
    let wal = open(env, ring(&[(1, KEY1), (2, KEY2)], 2));
    assert!(replay_all(&wal) == expected(1..=10));
    // Which key wrote what, read from the files.
    let ids: BTreeSet<u16> = encrypted_records(env)
        .into_iter()
        .map(|r| r.key_id)
        .collect();
    assert_eq!(ids, [1, 2].into_iter().collect());
}

fn a_missing_key_is_named_never_garbage(env: &Env) {
    {
        let wal = open(env, ring(&[(1, KEY1)], 1));
        wal.append(put_marked(1)).unwrap();
    }
    {
        let wal = open(env, ring(&[(1, KEY1), (2, KEY2)], 2));
        wal.append(put_marked(2)).unwrap();
    }
    let wal = open(env, ring(&[(2, KEY2)], 2));
    let outcome: Vec<_> = wal.replay(0, None).unwrap().collect();
    let err = outcome[0].as_ref().unwrap_err();
    assert_eq!(err.code(), "ERR_WAL_KEY_MISSING");
    assert!(err.to_string().contains("key id 1"), "{err}");
    // Without any key the log still opens (recovery checks CRCs, not plaintext).
    drop(wal);
    let plain = Wal::open_with(env.vfs.clone(), &env.dir, opts()).unwrap();
    let err = plain.replay(0, None).unwrap().next().unwrap().unwrap_err();
    assert_eq!(err.code(), "ERR_WAL_KEY_MISSING");
}

fn a_wrong_key_under_the_right_id_fails_to_decrypt(env: &Env) {
    {
        let wal = open(env, ring(&[(1, KEY1)], 1));
        wal.append(put_marked(1)).unwrap();
    }
    let wal = open(env, ring(&[(1, KEY2)], 1));
    let err = wal.replay(0, None).unwrap().next().unwrap().unwrap_err();
    assert_eq!(err.code(), "ERR_WAL_DECRYPT", "{err}");
}

fn torn_ciphertext_is_repaired_from_the_dwb(env: &Env) {
    {
        let wal = open(env, ring(&[(1, KEY1)], 1));
        for lsn in 1..=6 {
            wal.append(put_marked(lsn)).unwrap();
        }
    }
    let (path, offset, _) = env.find(5);
    env.overwrite(&path, offset + 60, &[0; 12]);
    let wal = open(env, ring(&[(1, KEY1)], 1));
    assert_eq!(wal.recovery().repaired_from_dwb, 1);
    assert!(replay_all(&wal) == expected(1..=6));
}

/// An encrypted record as found in a segment file.
#[derive(Debug, Clone)]
struct Sealed {
    key_id: u16,
    epoch: u64,
    lsn: u64,
    ciphertext: Vec<u8>,
}

fn records_in(bytes: &[u8]) -> Vec<Sealed> {
    let Ok(header) = SegmentHeader::decode(bytes) else {
        return vec![];
    };
    let mut pos = header.data_start() as usize;
    let mut out = vec![];
    while let Ok((h, payload)) = check_encoded(&bytes[pos..]) {
        if h.record_type & ENCRYPTED_FLAG != 0 {
            out.push(Sealed {
                key_id: h.key_id,
                epoch: header.epoch,
                lsn: h.lsn,
                ciphertext: payload.to_vec(),
            });
        }
        pos += h.record_len();
    }
    out
}

fn encrypted_records(env: &Env) -> Vec<Sealed> {
    list_segments(env.vfs.as_ref(), &env.dir)
        .unwrap()
        .iter()
        .flat_map(|s| records_in(&env.read(&s.path)))
        .collect()
}

/// Every (key, segment epoch, LSN) — the subkey and nonce — sealed one ciphertext only.
fn assert_nonces_unique(all: &[Sealed]) {
    let mut seen: BTreeMap<(u16, u64, u64), Vec<u8>> = BTreeMap::new();
    for record in all {
        let key = (record.key_id, record.epoch, record.lsn);
        if let Some(previous) = seen.insert(key, record.ciphertext.clone()) {
            assert!(
                previous == record.ciphertext,
                "key {} epoch {:#x} LSN {} sealed two different plaintexts",
                record.key_id,
                record.epoch,
                record.lsn
            );
        }
    }
}

fn copy_dir(env: &Env, from: &Path, to: &Path) {
    env.vfs.create_dir_all(to).unwrap();
    for name in env.vfs.list_dir(from).unwrap() {
        let bytes = env.read(&from.join(&name));
        let file = env
            .vfs
            .open(&to.join(&name), doublewrite::io::OpenOptions::create_new())
            .unwrap();
        doublewrite::io::write_all_at(file.as_ref(), &bytes, 0).unwrap();
        file.sync_all().unwrap();
    }
    env.vfs.sync_dir(to).unwrap();
}

fn nonces_are_never_reused_across_reopen_torn_tail_truncation_and_restore(env: &Env) {
    let keys = || ring(&[(1, KEY1)], 1);
    let mut history: Vec<Sealed> = vec![];
    // Reopen several times.
    for round in 0..3u64 {
        let wal = open(env, keys());
        for i in 1..=10 {
            wal.append(put_marked(round * 100 + i)).unwrap();
        }
    }
    history.extend(encrypted_records(env));
    // A torn tail: the last record is cut, and its LSN is reused after reopen.
    let last = encrypted_records(env)
        .into_iter()
        .map(|r| r.lsn)
        .max()
        .unwrap();
    env.remove(&env.dir.join("wal.dwb"));
    let (path, offset, _) = env.find(last);
    env.overwrite(&path, offset + 70, &[0xFF; 8]);
    {
        let wal = open(env, keys());
        assert_eq!(wal.recovery().last_lsn, last - 1);
        assert_eq!(
            wal.append(put_marked(9_999)).unwrap(),
            last,
            "the LSN is reused"
        );
    }
    history.extend(encrypted_records(env));
    // A backup, more writes, then the backup restored and written to again.
    let backup = env.dir.with_file_name("backup");
    copy_dir(env, &env.dir, &backup);
    {
        let wal = open(env, keys());
        for i in 0..10 {
            wal.append(put_marked(5_000 + i)).unwrap();
        }
    }
    history.extend(encrypted_records(env));
    let lost_timeline = env.dir.with_file_name("lost");
    copy_dir(env, &env.dir, &lost_timeline);
    for name in env.vfs.list_dir(&env.dir).unwrap() {
        env.vfs.remove_file(&env.dir.join(name)).unwrap();
    }
    for name in env.vfs.list_dir(&backup).unwrap() {
        let bytes = env.read(&backup.join(&name));
        let file = env
            .vfs
            .open(
                &env.dir.join(&name),
                doublewrite::io::OpenOptions::create_new(),
            )
            .unwrap();
        doublewrite::io::write_all_at(file.as_ref(), &bytes, 0).unwrap();
        file.sync_all().unwrap();
    }
    {
        let wal = open(env, keys());
        for i in 0..10 {
            // Same LSNs as the lost timeline's, different plaintexts.
            wal.append(put_marked(7_000 + i)).unwrap();
        }
        // Truncation, then more writes.
        let segments = wal.segments();
        wal.truncate_before(segments[segments.len() - 1].first_lsn)
            .unwrap();
        for i in 0..5 {
            wal.append(put_marked(8_000 + i)).unwrap();
        }
    }
    history.extend(encrypted_records(env));
    assert!(history.len() > 60);
    assert_nonces_unique(&history);
}

/// Power loss at every step of an encrypted commit, many tear patterns: what recovery
/// returns always decrypts, and every acknowledged record is there.
#[test]
fn crashes_during_encrypted_commits_recover_and_decrypt() {
    for seed in 0..40u64 {
        let env = Env::sim();
        let sim = env.sim.clone().unwrap();
        {
            let wal = open(&env, ring(&[(1, KEY1)], 1));
            for lsn in 1..=6 {
                wal.append(put_marked(lsn)).unwrap();
            }
            sim.set_plan(FaultPlan {
                crash_at: Some(sim.mutation_count() + 1 + seed % 5),
                ..FaultPlan::default()
            });
            let _ = wal.append_batch((7..=10).map(put_marked).collect());
        }
        if !sim.is_powered_off() {
            sim.power_off();
        }
        sim.crash(&mut SimRng::new(seed), TearPolicy::Random);
        let wal = open(&env, ring(&[(1, KEY1)], 1));
        let records = replay_all(&wal);
        assert!(records.len() >= 6, "seed {seed}");
        for (lsn, payload) in records {
            assert!(payload == marked(lsn), "seed {seed}: LSN {lsn}");
        }
    }
}
