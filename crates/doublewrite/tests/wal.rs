//! WAL behaviour: append, group commit, recovery and repair, padding, truncation, locking.
//! Each scenario runs on the real disk and on the simulated disk.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{assert_records, payload, put, replay_all, small_options, Env};
use doublewrite::{
    DwbMode, Error, ProtectionState, RecordInput, RecordType, TailProtection, WalOptions,
};

on_both!(
    append_replay_reopen_continue,
    batch_gets_contiguous_lsns,
    concurrent_appenders_each_get_their_own_lsn,
    completion_hook_runs_once_after_a_whole_group_commit,
    tear_record_header_is_repaired,
    tear_record_payload_is_repaired,
    tear_record_length_field_is_repaired,
    zeroed_record_with_dwb_copy_is_repaired,
    repair_survives_the_ring_wrapping,
    batch_larger_than_the_ring,
    record_larger_than_a_slot_pads_its_commit,
    mirror_pads_a_commit_whose_padding_is_cheap,
    recovered_tail_too_large_for_the_ring_rolls_to_a_fresh_segment,
    pad_policy_starts_every_commit_on_a_block,
    dwb_off_pads_and_stays_protected,
    torn_tail_is_cut_and_reported,
    damage_followed_by_later_commits_is_corrupt,
    missing_middle_segment_is_corrupt,
    segments_roll_and_replay_across_them,
    truncate_removes_whole_old_segments,
    second_open_is_locked,
    replay_from_lsn_and_known_types,
    replay_below_retained_floor_is_refused,
    empty_payload_and_max_sizes,
    direct_io_multi_flush_replays_completely,
    direct_io_pad_replays_completely,
    closed_wal_rejects,
    prepared_segments_roll_and_replay,
);

fn append_replay_reopen_continue(env: &Env) {
    let mut expected = Vec::new();
    {
        let wal = env.open(WalOptions::default()).unwrap();
        for i in 1..=50u64 {
            let len = (i as usize * 37) % 700;
            let lsn = wal.append(put(i, len)).unwrap();
            assert_eq!(lsn, i);
            expected.push((i, payload(i, len)));
        }
        assert_records(&replay_all(&wal), &expected);
        assert_eq!(wal.stats().unprotected_records, 0);
        wal.close().unwrap();
    }
    let wal = env.open(WalOptions::default()).unwrap();
    let report = wal.recovery().clone();
    assert_eq!(report.last_lsn, 50);
    assert_eq!(report.records, 50);
    assert_eq!(report.repaired_from_dwb, 0);
    assert_eq!(report.torn_tail_bytes, 0);
    assert_records(&replay_all(&wal), &expected);
    assert_eq!(wal.append(put(51, 10)).unwrap(), 51);
}

fn batch_gets_contiguous_lsns(env: &Env) {
    let wal = env.open(WalOptions::default()).unwrap();
    wal.append(put(1, 5)).unwrap();
    let batch: Vec<RecordInput> = (0..1000).map(|i| put(i, i as usize % 300)).collect();
    let first = wal.append_batch(batch).unwrap();
    assert_eq!(first, 2);
    assert_eq!(wal.last_lsn(), 1001);
    let records = replay_all(&wal);
    assert_eq!(records.len(), 1001);
    for (i, (lsn, bytes)) in records.iter().skip(1).enumerate() {
        assert_eq!(*lsn, 2 + i as u64);
        assert!(bytes == &payload(i as u64, i % 300));
    }
    let stats = wal.stats();
    assert_eq!(stats.commits, 2, "one commit per append_batch");
    assert_eq!(stats.wal_syncs, 2);
}

fn concurrent_appenders_each_get_their_own_lsn(env: &Env) {
    let wal = Arc::new(env.open(WalOptions::default()).unwrap());
    let threads: Vec<_> = (0..64u64)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                (0..20u64)
                    .map(|i| {
                        let body = format!("thread {t} record {i}").into_bytes();
                        let lsn = wal
                            .append(RecordInput::new(RecordType::PUT, body.clone()))
                            .unwrap();
                        (lsn, body)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked: Vec<(u64, Vec<u8>)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    acked.sort();
    let lsns: BTreeSet<u64> = acked.iter().map(|a| a.0).collect();
    assert_eq!(lsns.len(), 64 * 20, "every append got its own LSN");
    assert_records(&replay_all(&wal), &acked);
    let stats = wal.stats();
    assert_eq!(stats.records, 64 * 20);
    assert!(stats.commits <= stats.records);
    assert_eq!(stats.unprotected_records, 0);
}

/// The completion hook runs once per group commit, after the callbacks of EVERY append
/// merged into it (a binding relies on this to hand a commit's outcomes over at once),
/// and never for outcomes reported on the submitting thread.
fn completion_hook_runs_once_after_a_whole_group_commit(env: &Env) {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let wal = env.open(WalOptions::default()).unwrap();
    let called = Arc::new(AtomicUsize::new(0));
    let seen_at_hook = Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let (called, seen) = (called.clone(), seen_at_hook.clone());
        wal.set_completion_hook(Some(Arc::new(move || {
            seen.lock().unwrap().push(called.load(SeqCst));
        })));
    }
    wal.hold_commits(true);
    let jobs = (0..100u64)
        .map(|i| {
            let called = called.clone();
            let done: doublewrite::wal::AppendCallback = Box::new(move |outcome| {
                outcome.unwrap();
                called.fetch_add(1, SeqCst);
            });
            (vec![put(i, 10)], done)
        })
        .collect();
    wal.submit_many(jobs);
    // An invalid record is refused on this thread: its callback runs, the hook does not.
    let refused: doublewrite::wal::AppendCallback = Box::new(|outcome| assert!(outcome.is_err()));
    wal.submit_many(vec![(
        vec![RecordInput::new(
            RecordType::PUT | doublewrite::record::ENCRYPTED_FLAG,
            vec![],
        )],
        refused,
    )]);
    assert!(seen_at_hook.lock().unwrap().is_empty());
    wal.hold_commits(false);
    // Wait for the group commit's hook (a sync submitted before it ran could merge into
    // the same unit of work).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while seen_at_hook.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the hook never ran");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(
        *seen_at_hook.lock().unwrap(),
        vec![100],
        "one group commit of all 100 appends: the hook ran once, after all 100 callbacks"
    );
    wal.sync().unwrap();
    let runs = seen_at_hook.lock().unwrap().clone();
    assert!(runs.iter().all(|&n| n == 100), "{runs:?}");
    wal.set_completion_hook(None);
    wal.append(put(200, 10)).unwrap();
    assert_eq!(
        seen_at_hook.lock().unwrap().len(),
        runs.len(),
        "a cleared hook does not run"
    );
}

/// A tail block whose records need more than half the DWB ring as copies can only come
/// from an earlier session (commits that would leave one are padded): here the DWB is
/// replaced by a much smaller one between sessions. The first commit after the reopen
/// must not rewrite that block (its copies would not fit one flush): it rolls to a fresh
/// segment, and nothing acknowledged is ever unprotected.
fn recovered_tail_too_large_for_the_ring_rolls_to_a_fresh_segment(env: &Env) {
    let wal = env.open(WalOptions::default()).unwrap();
    let batch: Vec<RecordInput> = (1..=20).map(|i| put(i, 100)).collect();
    wal.append_batch(batch).unwrap();
    wal.close().unwrap();
    assert_eq!(env.segments().len(), 1);
    env.remove(&env.dir.join("wal.dwb"));
    // A 2 KiB ring: 20 records of ~156 B in the tail block need ~3.6 KiB of frames.
    let small = WalOptions {
        dwb_capacity: Some(1),
        dwb_max_record_bytes: Some(2048 - 24),
        ..WalOptions::default()
    };
    let wal = env.open(small).unwrap();
    wal.append(put(21, 100)).unwrap();
    assert_eq!(
        env.segments().len(),
        2,
        "the commit went to a fresh segment"
    );
    assert_eq!(wal.stats().unprotected_records, 0);
    assert_eq!(replay_all(&wal).len(), 21);
}

/// Appends `n` records (one commit each), damages record `k` at `offset_in_record` (or
/// all of it with zeros), reopens, and checks everything came back.
fn tear_and_recover(
    env: &Env,
    n: u64,
    k: u64,
    damage: impl Fn(&Env, &std::path::Path, u64, usize),
) {
    let mut expected = Vec::new();
    {
        let wal = env.open(WalOptions::default()).unwrap();
        for i in 1..=n {
            wal.append(put(i, 100 + i as usize)).unwrap();
            expected.push((i, payload(i, 100 + i as usize)));
        }
    }
    let (path, offset, len) = env.find(k);
    damage(env, &path, offset, len);
    let wal = env.open(WalOptions::default()).unwrap();
    assert_eq!(
        wal.recovery().repaired_from_dwb,
        1,
        "record {k} was repaired from the DWB"
    );
    assert_records(&replay_all(&wal), &expected);
    // The next append lands right after them: the file is continuous.
    let next = wal.append(put(n + 1, 10)).unwrap();
    assert_eq!(next, n + 1);
    wal.close().unwrap();
    let located: Vec<u64> = env.locate().iter().map(|r| r.1).collect();
    assert_eq!(located, (1..=n + 1).collect::<Vec<_>>());
    // Recovering again finds nothing left to repair: the repair was written back.
    let wal = env.open(WalOptions::default()).unwrap();
    assert_eq!(wal.recovery().repaired_from_dwb, 0);
    assert_eq!(wal.recovery().records, n + 1);
}

fn tear_record_header_is_repaired(env: &Env) {
    // Garbage over the start of the header (magic and LSN), as a torn sector would leave.
    tear_and_recover(env, 5, 3, |env, path, offset, _| {
        env.overwrite(path, offset + 2, &[0xA5; 20])
    });
}

fn tear_record_payload_is_repaired(env: &Env) {
    tear_and_recover(env, 5, 5, |env, path, offset, len| {
        env.overwrite(path, offset + len as u64 - 10, &[0; 10])
    });
}

fn tear_record_length_field_is_repaired(env: &Env) {
    // A huge length: the reader must not trust it (nor allocate it).
    tear_and_recover(env, 8, 2, |env, path, offset, _| {
        env.overwrite(path, offset + 48, &0xFFFF_FFF0u32.to_le_bytes())
    });
}

fn zeroed_record_with_dwb_copy_is_repaired(env: &Env) {
    tear_and_recover(env, 6, 4, |env, path, offset, len| {
        env.overwrite(path, offset, &vec![0; len])
    });
}

fn repair_survives_the_ring_wrapping(env: &Env) {
    // After a repair is written back, the copy is no longer needed: fill the ring many
    // times over, damage nothing, and the repaired record still reads back.
    let options = small_options();
    {
        let wal = env.open(options).unwrap();
        for i in 1..=5 {
            wal.append(put(i, 200)).unwrap();
        }
    }
    let (path, offset, _) = env.find(4);
    env.overwrite(&path, offset + 60, &[0xEE; 8]);
    {
        let wal = env.open(options).unwrap();
        assert_eq!(wal.recovery().repaired_from_dwb, 1);
        for i in 6..=200 {
            wal.append(put(i, 300)).unwrap();
        }
    }
    let wal = env.open(options).unwrap();
    assert_eq!(wal.recovery().repaired_from_dwb, 0);
    let records = replay_all(&wal);
    assert_eq!(records.len(), 200);
    assert!(records[3] == (4, payload(4, 200)));
}

fn batch_larger_than_the_ring(env: &Env) {
    let options = small_options();
    let wal = env.open(options).unwrap();
    wal.append(put(1, 50)).unwrap();
    let ring_bytes = 4 * 4096;
    let batch: Vec<RecordInput> = (0..400).map(|i| put(i + 2, 150)).collect();
    assert!(batch.len() * 200 > ring_bytes * 2);
    wal.append_batch(batch).unwrap();
    wal.append(put(402, 50)).unwrap();
    assert_eq!(replay_all(&wal).len(), 402);
    assert_eq!(wal.stats().unprotected_records, 0);
}

fn record_larger_than_a_slot_pads_its_commit(env: &Env) {
    let options = small_options(); // DWB slots hold 4096-byte records
    let wal = env.open(options).unwrap();
    wal.append(put(1, 100)).unwrap();
    let padding_before = wal.stats().padding_bytes;
    wal.append(put(2, 10_000)).unwrap();
    assert!(
        wal.stats().padding_bytes > padding_before,
        "the big record's commit was padded"
    );
    wal.append(put(3, 100)).unwrap();
    assert_eq!(wal.stats().unprotected_records, 0);
    wal.close().unwrap();
    // The next commit started on a fresh block: record 3 is block-aligned.
    let (_, offset, _) = env.find(3);
    assert_eq!(offset % 4096, 0);
    let wal = env.open(options).unwrap();
    assert_eq!(replay_all(&wal).len(), 3);
}

/// Under `'mirror'` a commit that would end within a quarter of its own bytes of a block
/// boundary pads to it instead of copying its last records to the DWB: it takes one sync
/// (the at-risk copy of the commit before is already durable), and the next commit starts
/// on a fresh block. A commit that would need more padding shares its block as before.
fn mirror_pads_a_commit_whose_padding_is_cheap(env: &Env) {
    let options = small_options(); // 4 KiB blocks, DWB slots of 4096-byte records
    let wal = env.open(options).unwrap();
    // Record 1 (56 + 100 bytes) shares its block: its copy goes to the DWB.
    wal.append(put(1, 100)).unwrap();
    let first = wal.stats();
    assert_eq!((first.padding_bytes, first.dwb_syncs), (0, 1), "{first:?}");
    // Record 2 (56 + 3,784 bytes, a DWB slot's worth) ends 100 bytes short of the block:
    // padded, with no DWB sync of its own.
    wal.append(put(2, 3784)).unwrap();
    let second = wal.stats();
    assert_eq!(second.padding_bytes, 100, "{second:?}");
    assert_eq!(second.dwb_syncs, 1, "{second:?}");
    assert_eq!(second.wal_syncs, 2, "{second:?}");
    // Record 3 starts a block: nothing at risk, and it shares its block again (padding
    // 3,940 bytes would be far more than a quarter of its 156).
    wal.append(put(3, 100)).unwrap();
    let third = wal.stats();
    assert_eq!(third.padding_bytes, 100, "{third:?}");
    assert_eq!(third.dwb_syncs, 2, "{third:?}");
    assert_eq!(third.unprotected_records, 0);
    wal.close().unwrap();
    let (_, offset, _) = env.find(3);
    assert_eq!(offset % 4096, 0);
    let wal = env.open(options).unwrap();
    assert_records(
        &replay_all(&wal),
        &[
            (1, payload(1, 100)),
            (2, payload(2, 3784)),
            (3, payload(3, 100)),
        ],
    );
}

fn pad_policy_starts_every_commit_on_a_block(env: &Env) {
    let options = WalOptions {
        tail_protection: TailProtection::Pad,
        ..WalOptions::default()
    };
    {
        let wal = env.open(options).unwrap();
        for i in 1..=20 {
            wal.append(put(i, 128)).unwrap();
        }
        let stats = wal.stats();
        assert_eq!(stats.dwb_syncs, 0, "pad never syncs the DWB");
        assert_eq!(stats.wal_syncs, 20);
        assert_eq!(wal.protection().state, ProtectionState::Padding);
    }
    for (_, lsn, offset, _) in env.locate() {
        assert_eq!(offset % 4096, 0, "record {lsn} does not start a block");
    }
    let wal = env.open(options).unwrap();
    assert_eq!(replay_all(&wal).len(), 20);
}

fn dwb_off_pads_and_stays_protected(env: &Env) {
    let options = WalOptions {
        dwb_mode: DwbMode::Off,
        ..WalOptions::default()
    };
    let wal = env.open(options).unwrap();
    for i in 1..=10 {
        wal.append(put(i, 64)).unwrap();
    }
    assert_eq!(wal.protection().state, ProtectionState::Padding);
    assert_eq!(wal.stats().unprotected_records, 0);
    assert_eq!(wal.stats().dwb_syncs, 0);
    assert_eq!(
        env.vfs.kind(&env.dir.join("wal.dwb")).unwrap(),
        None,
        "no DWB file"
    );
}

fn torn_tail_is_cut_and_reported(env: &Env) {
    {
        let wal = env.open(WalOptions::default()).unwrap();
        for i in 1..=4 {
            wal.append(put(i, 100)).unwrap();
        }
    }
    // Bytes of a half-written fifth commit after the end, with no DWB copy.
    let (path, offset, len) = env.find(4);
    let end = offset + len as u64;
    env.overwrite(&path, end, &[0x5A; 300]);
    let wal = env.open(WalOptions::default()).unwrap();
    assert_eq!(wal.recovery().torn_tail_bytes, 300);
    assert_eq!(wal.recovery().last_lsn, 4);
    assert_eq!(wal.append(put(5, 10)).unwrap(), 5);
    wal.close().unwrap();
    // The garbage was erased: a reopen sees a clean end.
    let wal = env.open(WalOptions::default()).unwrap();
    assert_eq!(wal.recovery().torn_tail_bytes, 0);
    assert_eq!(replay_all(&wal).len(), 5);
}

fn damage_followed_by_later_commits_is_corrupt(env: &Env) {
    let options = small_options();
    {
        let wal = env.open(options).unwrap();
        // Enough later commits that the DWB no longer holds record 3's copy.
        for i in 1..=120 {
            wal.append(put(i, 300)).unwrap();
        }
    }
    let (path, offset, _) = env.find(3);
    env.overwrite(&path, offset + 70, &[0xFF; 4]);
    let before = env.read(&path);
    let err = env.open(options).unwrap_err();
    assert_eq!(err.code(), "ERR_WAL_CORRUPT", "{err}");
    match &err {
        Error::WalCorrupt {
            path: p,
            offset: o,
            lsn,
            ..
        } => {
            assert_eq!(p, &path);
            assert_eq!(*o, offset);
            assert_eq!(*lsn, 3);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(env.read(&path), before, "a failed recovery changes nothing");
}

fn missing_middle_segment_is_corrupt(env: &Env) {
    let options = small_options();
    {
        let wal = env.open(options).unwrap();
        for i in 1..=800 {
            wal.append(put(i, 200)).unwrap();
        }
        assert!(wal.segments().len() >= 3);
    }
    let segments = env.segments();
    env.remove(&segments[1]);
    let err = env.open(options).unwrap_err();
    assert_eq!(err.code(), "ERR_WAL_CORRUPT", "{err}");
}

fn segments_roll_and_replay_across_them(env: &Env) {
    let options = small_options();
    {
        let wal = env.open(options).unwrap();
        for i in 1..=600 {
            wal.append(put(i, (i as usize * 13) % 900)).unwrap();
        }
        assert!(wal.stats().segment_rolls >= 3);
    }
    let wal = env.open(options).unwrap();
    let records = replay_all(&wal);
    assert_eq!(records.len(), 600);
    for (i, (lsn, bytes)) in records.iter().enumerate() {
        let want = i as u64 + 1;
        assert_eq!(*lsn, want);
        assert!(bytes == &payload(want, (want as usize * 13) % 900));
    }
    // Every segment's name is the LSN of its first record.
    for segment in wal.segments() {
        let first = env
            .locate()
            .into_iter()
            .find(|r| r.0 == segment.path)
            .map(|r| r.1);
        assert_eq!(first, Some(segment.first_lsn));
    }
}

fn truncate_removes_whole_old_segments(env: &Env) {
    let options = small_options();
    let wal = env.open(options).unwrap();
    for i in 1..=800 {
        wal.append(put(i, 200)).unwrap();
    }
    let segments = wal.segments();
    assert!(segments.len() >= 3);
    let cut = segments[2].first_lsn;
    let removed = wal.truncate_before(cut).unwrap();
    assert_eq!(removed, 2);
    assert_eq!(wal.segments()[0].first_lsn, cut);
    let records = replay_all(&wal);
    assert_eq!(records.first().unwrap().0, cut);
    assert_eq!(records.last().unwrap().0, 800);
    // Truncating within the active segment removes nothing.
    let before = wal.segments().len() as u64;
    assert_eq!(wal.truncate_before(u64::MAX).unwrap(), before - 1);
    assert_eq!(wal.segments().len(), 1);
    wal.close().unwrap();
    let wal = env.open(options).unwrap();
    assert_eq!(wal.recovery().last_lsn, 800);
    assert_eq!(wal.append(put(801, 5)).unwrap(), 801);
}

fn second_open_is_locked(env: &Env) {
    let wal = env.open(WalOptions::default()).unwrap();
    let err = env.open(WalOptions::default()).unwrap_err();
    assert_eq!(err.code(), "ERR_LOCKED");
    wal.close().unwrap();
    env.open(WalOptions::default()).unwrap();
}

fn replay_from_lsn_and_known_types(env: &Env) {
    let wal = env.open(WalOptions::default()).unwrap();
    wal.append(put(1, 3)).unwrap();
    wal.append(RecordInput::new(0x0200, b"optional custom".to_vec()))
        .unwrap();
    wal.append(put(3, 3)).unwrap();
    wal.append(RecordInput::new(0x8200, b"required custom".to_vec()))
        .unwrap();
    let from3: Vec<u64> = wal
        .replay(3, Some([RecordType::PUT, 0x8200].into_iter().collect()))
        .unwrap()
        .map(|r| r.unwrap().lsn())
        .collect();
    assert_eq!(from3, vec![3, 4]);
    // Default known types: the optional custom type is skipped, the required one fails.
    let outcome: Vec<_> = wal.replay(0, None).unwrap().collect();
    assert_eq!(outcome.len(), 3);
    assert_eq!(outcome[0].as_ref().unwrap().lsn(), 1);
    assert_eq!(outcome[1].as_ref().unwrap().lsn(), 3);
    assert_eq!(
        outcome[2].as_ref().unwrap_err().code(),
        "ERR_WAL_UNKNOWN_RECORD_TYPE"
    );
}

fn replay_below_retained_floor_is_refused(env: &Env) {
    let options = small_options();
    let wal = env.open(options).unwrap();
    for i in 1..=600 {
        wal.append(put(i, 200)).unwrap();
    }
    let cut = wal.segments()[1].first_lsn;
    wal.truncate_before(cut).unwrap();
    assert_eq!(
        wal.replay(1, None).unwrap_err().code(),
        "ERR_INVALID_OPTIONS"
    );
    assert!(wal.replay(cut, None).is_ok());
}

fn empty_payload_and_max_sizes(env: &Env) {
    let options = small_options();
    let wal = env.open(options).unwrap();
    // Sizes around the DWB slot limit and the block size.
    let sizes = [
        0usize,
        1,
        4096 - 56 - 1,
        4096 - 56,
        4096 - 56 + 1,
        4096,
        8192 - 56,
        70_000,
    ];
    for (i, len) in sizes.iter().enumerate() {
        wal.append(put(i as u64 + 1, *len)).unwrap();
    }
    let err = wal
        .append(RecordInput::new(
            RecordType::PUT,
            vec![0; 64 * 1024 * 1024 + 1],
        ))
        .unwrap_err();
    assert_eq!(err.code(), "ERR_RECORD_TOO_LARGE");
    assert_eq!(
        wal.next_lsn(),
        sizes.len() as u64 + 1,
        "a refused record takes no LSN"
    );
    let err = wal.append(RecordInput::new(0x4000, vec![1])).unwrap_err();
    assert_eq!(err.code(), "ERR_RECORD_TYPE");
    wal.close().unwrap();
    let wal = env.open(options).unwrap();
    let records = replay_all(&wal);
    let lens: Vec<usize> = records.iter().map(|r| r.1.len()).collect();
    assert_eq!(lens, sizes.to_vec());
}

/// With direct I/O, `'mirror'` packs commits into shared blocks (rewriting the partial
/// last block whole, its records copied to the DWB first) and `'pad'` starts each commit on
/// a block; both replay every record, after reopening and after a buffered session.
fn direct_io_multi_flush_replays_completely(env: &Env) {
    direct_io_replays_completely(env, TailProtection::Mirror);
}

fn direct_io_pad_replays_completely(env: &Env) {
    direct_io_replays_completely(env, TailProtection::Pad);
}

fn direct_io_replays_completely(env: &Env, tail_protection: TailProtection) {
    let options = WalOptions {
        direct_io: true,
        dwb_mode: DwbMode::Direct,
        tail_protection,
        ..WalOptions::default()
    };
    let wal = match env.open(options) {
        Ok(wal) => wal,
        Err(Error::DirectIoUnsupported { detail, .. }) => {
            eprintln!("SKIPPED: direct I/O unavailable here: {detail}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let mut expected = Vec::new();
    for i in 1..=60u64 {
        let len = (i as usize * 97) % 5000;
        wal.append(put(i, len)).unwrap();
        expected.push((i, payload(i, len)));
    }
    wal.close().unwrap();
    let unaligned = env
        .locate()
        .iter()
        .filter(|(_, _, offset, _)| offset % 4096 != 0)
        .count();
    if tail_protection == TailProtection::Pad {
        // Every commit ends padded to the block, so each starts aligned.
        assert_eq!(unaligned, 0, "a 'pad' commit does not start a block");
    } else {
        assert!(
            unaligned > 30,
            "'mirror' packs commits: {unaligned} of 60 unaligned"
        );
    }
    let wal = env.open(options).unwrap();
    assert_records(&replay_all(&wal), &expected);
    // Reopening resumes at the end of the log and keeps going.
    wal.append(put(61, 33)).unwrap();
    expected.push((61, payload(61, 33)));
    assert_records(&replay_all(&wal), &expected);
    // A log written buffered then reopened with direct I/O also works.
    wal.close().unwrap();
    {
        let buffered = env.open(WalOptions::default()).unwrap();
        buffered.append(put(62, 10)).unwrap();
        expected.push((62, payload(62, 10)));
    }
    let wal = env.open(options).unwrap();
    wal.append(put(63, 10)).unwrap();
    expected.push((63, payload(63, 10)));
    assert_records(&replay_all(&wal), &expected);
}

fn closed_wal_rejects(env: &Env) {
    let wal = env.open(WalOptions::default()).unwrap();
    wal.append(put(1, 1)).unwrap();
    wal.close().unwrap();
    wal.close().unwrap();
    assert_eq!(wal.append(put(2, 1)).unwrap_err().code(), "ERR_WAL_CLOSED");
    assert_eq!(wal.sync().unwrap_err().code(), "ERR_WAL_CLOSED");
}

fn prepared_segments_roll_and_replay(env: &Env) {
    let options = WalOptions {
        prepare_segments: true,
        ..small_options()
    };
    let mut expected = Vec::new();
    for round in 0..3u64 {
        let wal = env.open(options).unwrap();
        for i in 1..=300u64 {
            let lsn = round * 300 + i;
            wal.append(put(lsn, 350)).unwrap();
            expected.push((lsn, payload(lsn, 350)));
        }
        assert!(wal.stats().segment_rolls >= 1);
        assert_records(&replay_all(&wal), &expected);
        wal.close().unwrap();
    }
    // Every segment is named after its first record; no spare was mistaken for one.
    let wal = env.open(options).unwrap();
    assert_records(&replay_all(&wal), &expected);
    for segment in wal.segments() {
        let first = env
            .locate()
            .into_iter()
            .find(|r| r.0 == segment.path)
            .map(|r| r.1);
        assert_eq!(first, Some(segment.first_lsn));
    }
}

/// In steady state a `'mirror'` commit's DWB sync runs alongside its WAL sync (the last
/// flush already holds the copies its WAL write puts at risk): on the real disk, one DWB
/// sync and one WAL sync per commit, nearly all overlapped. The session's first commit
/// after a reopen with a partial tail block flushes before its WAL write instead.
#[test]
fn mirror_commits_overlap_their_two_syncs_on_the_real_disk() {
    let env = Env::std();
    let wal = env.open(small_options()).unwrap();
    for i in 1..=200 {
        wal.append(put(i, 100)).unwrap();
    }
    let stats = wal.stats();
    assert_eq!(stats.commits, 200);
    assert_eq!((stats.dwb_syncs, stats.wal_syncs), (200, 200));
    // All but the rare flush that would wrap onto a page of the last one.
    assert!(stats.overlapped_syncs >= 190, "{stats:?}");
    drop(wal);
    let wal = env.open(small_options()).unwrap();
    wal.append(put(201, 100)).unwrap();
    wal.append(put(202, 100)).unwrap();
    let stats = wal.stats();
    assert_eq!((stats.dwb_syncs, stats.overlapped_syncs), (2, 1));
    assert_eq!(replay_all(&wal).len(), 202);
}
