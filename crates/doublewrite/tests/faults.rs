//! Named fault points on the simulated disk: power loss before the DWB sync, between the
//! two syncs, at the overlapped syncs, after the WAL sync; a failed sync; a full disk; a
//! DWB that cannot be written under the strict and the degraded policies. Each crash test
//! runs many tear patterns.

mod common;

use common::{payload, put, replay_all, small_options, Env};
use doublewrite::io::sim::{Fault, FaultPlan, FaultPoint, Op, SimRng, SimVfs, TearPolicy};
use doublewrite::{Protection, ProtectionState, Wal, WalOptions};

/// Small segments: the simulated disk holds every byte in memory.
fn small() -> WalOptions {
    WalOptions {
        segment_size_bytes: 256 * 1024,
        ..WalOptions::default()
    }
}

/// Writes 6 records (one commit each, small, so they share the tail block), arms
/// `point`, appends a batch that the fault interrupts, crashes with `seed`, reopens.
/// Returns the records after recovery, the recovery report's repair count, and whether
/// the batch was acknowledged. With `reopened`, the log is closed and reopened before the
/// batch, whose commit is then the session's first: its DWB flush holds the at-risk copies
/// and is synced before the WAL write. Otherwise the batch's flush is overlapped with its
/// WAL sync (the previous commit's flush holds the at-risk copies).
fn interrupted_commit(
    point: FaultPoint,
    seed: u64,
    reopened: bool,
) -> (Vec<(u64, Vec<u8>)>, u64, bool) {
    let env = Env::sim();
    let sim = env.sim.clone().unwrap();
    let mut wal = env.open(small()).unwrap();
    for i in 1..=6 {
        wal.append(put(i, 150)).unwrap();
    }
    assert_eq!(wal.stats().overlapped_syncs, 6);
    if reopened {
        drop(wal);
        wal = env.open(small()).unwrap();
    }
    sim.set_plan(FaultPlan {
        at_point: Some(point),
        ..FaultPlan::default()
    });
    let result = wal.append_batch((7..=12).map(|i| put(i, 150)).collect());
    drop(wal);
    let acked_second = result.is_ok();
    if !sim.is_powered_off() {
        sim.power_off();
    }
    sim.crash(&mut SimRng::new(seed), TearPolicy::Random);
    let wal = env.open(small()).unwrap();
    (
        replay_all(&wal),
        wal.recovery().repaired_from_dwb,
        acked_second,
    )
}

fn expect_prefix(records: &[(u64, Vec<u8>)], at_least: u64) {
    assert!(
        records.len() as u64 >= at_least,
        "{} records, {at_least} acknowledged",
        records.len()
    );
    for (i, (lsn, bytes)) in records.iter().enumerate() {
        assert_eq!(*lsn, i as u64 + 1, "LSNs are contiguous");
        assert!(bytes == &payload(*lsn, 150), "LSN {lsn} is intact");
    }
}

/// Runs [`interrupted_commit`] with 60 tear patterns and checks each: the batch was not
/// acknowledged and records 1-6 came back intact. Returns the most records any pattern
/// kept and the repairs from the DWB in all.
fn crash_at(point: &FaultPoint, reopened: bool) -> (usize, u64) {
    let (mut most, mut repairs) = (0, 0);
    for seed in 0..60 {
        let (records, repaired, acked) = interrupted_commit(point.clone(), seed, reopened);
        assert!(!acked, "seed {seed}");
        expect_prefix(&records, 6);
        most = most.max(records.len());
        repairs += repaired;
    }
    (most, repairs)
}

#[test]
fn crash_before_the_dwb_sync_keeps_every_acknowledged_record() {
    let (most, _) = crash_at(
        &FaultPoint::new(Op::Sync, "wal.dwb", 1, Fault::PowerLoss),
        true,
    );
    // No WAL byte of the interrupted commit was written: nothing of it can appear.
    assert_eq!(most, 6);
}

#[test]
fn crash_at_the_overlapped_syncs_keeps_every_acknowledged_record() {
    // The batch's WAL write is in the page cache and its copies are being synced: the
    // block holding records 1-6 may tear, and their copies from the last flush (which
    // this one spares) repair it.
    let (_, repairs) = crash_at(
        &FaultPoint::new(Op::Sync, "wal.dwb", 1, Fault::PowerLoss),
        false,
    );
    assert!(repairs > 0, "some tear patterns needed the DWB");
}

#[test]
fn crash_between_the_syncs_repairs_the_torn_tail_from_the_dwb() {
    // Power fails during the WAL write, after the copies of records 1-6 are durable: the
    // write rewrites the block holding them and may tear it. With `reopened` the copies
    // come from this commit's own flush, synced first; without, from the last commit's.
    let point = FaultPoint::new(Op::Write, ".seg", 1, Fault::PowerLoss);
    for reopened in [true, false] {
        let (_, repairs) = crash_at(&point, reopened);
        assert!(
            repairs > 0,
            "some tear patterns needed the DWB (reopened: {reopened})"
        );
    }
}

#[test]
fn crash_after_the_wal_sync_keeps_the_synced_commit() {
    for seed in 0..30 {
        // The WAL sync completes; power fails at the next mutation, before the caller
        // hears back: the commit is durable and comes back whole.
        let env = Env::sim();
        let sim = env.sim.clone().unwrap();
        let wal = env.open(small()).unwrap();
        for i in 1..=6 {
            wal.append(put(i, 150)).unwrap();
        }
        wal.append_batch((7..=12).map(|i| put(i, 150)).collect())
            .unwrap();
        sim.power_off();
        drop(wal);
        sim.crash(&mut SimRng::new(seed), TearPolicy::Random);
        let wal = env.open(small()).unwrap();
        let records = replay_all(&wal);
        expect_prefix(&records, 12);
        assert_eq!(records.len(), 12);
    }
}

#[test]
fn failed_wal_sync_poisons_until_reopened() {
    let env = Env::sim();
    let sim = env.sim.clone().unwrap();
    let wal = env.open(small()).unwrap();
    wal.append(put(1, 10)).unwrap();
    sim.set_plan(FaultPlan {
        at_point: Some(FaultPoint::new(Op::Sync, ".seg", 1, Fault::FailSync)),
        ..FaultPlan::default()
    });
    let err = wal.append(put(2, 10)).unwrap_err();
    assert_eq!(err.code(), "ERR_WAL_POISONED", "{err}");
    // Never retried into a success: every later append and sync is refused.
    sim.set_plan(FaultPlan::default());
    assert_eq!(
        wal.append(put(3, 10)).unwrap_err().code(),
        "ERR_WAL_POISONED"
    );
    assert_eq!(wal.sync().unwrap_err().code(), "ERR_WAL_POISONED");
    assert_eq!(wal.stats().unprotected_records, 0);
    wal.close().unwrap();
    drop(wal);
    let wal = env.open(small()).unwrap();
    let records = replay_all(&wal);
    // Record 1 was acknowledged; record 2 may or may not have survived (never acked).
    assert!(records[0] == (1, payload(1, 10)));
    assert!(records.len() <= 2);
    let next = wal.append(put(9, 10)).unwrap();
    assert_eq!(next, records.len() as u64 + 1);
}

/// A file system may take O_DIRECT at open and then refuse the writes (EINVAL): the new
/// segment of a roll is then zero-filled through the page cache instead, and the commit
/// that needed it goes through.
#[test]
fn a_roll_whose_direct_zero_fill_is_refused_fills_through_the_cache() {
    let (env, sim, wal, options) = one_record_before_a_roll(Fault::RefuseWrite);
    assert_eq!(wal.append(put(2, 10_000)).unwrap(), 2);
    assert_eq!(wal.stats().segment_rolls, 1);
    sim.set_plan(FaultPlan::default());
    wal.close().unwrap();
    drop(wal);
    let wal = env.open(options).unwrap();
    assert_eq!(
        replay_all(&wal),
        vec![(1, payload(1, 10_000)), (2, payload(2, 10_000))]
    );
}

/// A simulated WAL of 16 KiB segments holding one 10,000-byte record, so that the next
/// such record rolls, with `fault` armed at the first write of the roll's new segment.
fn one_record_before_a_roll(fault: Fault) -> (Env, SimVfs, Wal, WalOptions) {
    let env = Env::sim();
    let sim = env.sim.clone().unwrap();
    let options = WalOptions {
        segment_size_bytes: 16 * 1024,
        ..WalOptions::default()
    };
    let wal = env.open(options).unwrap();
    wal.append(put(1, 10_000)).unwrap();
    sim.set_plan(FaultPlan {
        at_point: Some(FaultPoint::new(Op::Write, ".seg.tmp", 1, fault)),
        ..FaultPlan::default()
    });
    (env, sim, wal, options)
}

#[test]
fn full_disk_at_segment_roll_takes_no_lsn_and_the_wal_keeps_working() {
    // The next commit does not fit: the new segment's preallocation hits ENOSPC.
    let (env, sim, wal, options) = one_record_before_a_roll(Fault::NoSpace);
    let err = wal.append(put(2, 10_000)).unwrap_err();
    assert_eq!(err.code(), "ERR_NO_SPACE", "{err}");
    assert_eq!(wal.next_lsn(), 2, "no LSN consumed");
    sim.set_plan(FaultPlan::default());
    assert_eq!(wal.append(put(2, 10_000)).unwrap(), 2);
    drop(wal);
    let wal = env.open(options).unwrap();
    assert_eq!(replay_all(&wal).len(), 2);
}

#[test]
fn full_disk_during_the_wal_write_acknowledges_nothing_partial() {
    let env = Env::sim();
    let sim = env.sim.clone().unwrap();
    let wal = env.open(small()).unwrap();
    for i in 1..=3 {
        wal.append(put(i, 700)).unwrap();
    }
    sim.set_plan(FaultPlan {
        at_point: Some(FaultPoint::new(Op::Write, ".seg", 1, Fault::NoSpace)),
        ..FaultPlan::default()
    });
    let err = wal
        .append_batch((4..=9).map(|i| put(i, 700)).collect())
        .unwrap_err();
    assert_eq!(err.code(), "ERR_NO_SPACE");
    assert_eq!(wal.next_lsn(), 4);
    sim.set_plan(FaultPlan::default());
    // A smaller commit reuses the LSN; the partial leftovers of the failed one are erased.
    assert_eq!(wal.append(put(4, 5)).unwrap(), 4);
    drop(wal);
    sim.crash(&mut SimRng::new(5), TearPolicy::Random);
    let wal = env.open(small()).unwrap();
    let records = replay_all(&wal);
    assert_eq!(records.len(), 4);
    assert!(records[3] == (4, payload(4, 5)));
    assert_eq!(
        wal.recovery().torn_tail_bytes,
        0,
        "no leftovers of the failed write"
    );
}

/// Arms the simulated disk to fail the next sync of the DWB (EIO).
fn fail_next_dwb_sync(sim: &SimVfs) {
    sim.set_plan(FaultPlan {
        at_point: Some(FaultPoint::new(Op::Sync, "wal.dwb", 1, Fault::FailSync)),
        ..FaultPlan::default()
    });
}

#[test]
fn strict_policy_refuses_when_the_dwb_cannot_be_written() {
    let env = Env::sim();
    let sim = env.sim.clone().unwrap();
    let wal = env.open(small()).unwrap();
    wal.append(put(1, 100)).unwrap();
    // Record 2's flush runs alongside its WAL sync and fails: record 2 itself was
    // protected by record 1's flush, so it is acknowledged; its copy is not durable.
    fail_next_dwb_sync(&sim);
    assert_eq!(wal.append(put(2, 100)).unwrap(), 2);
    assert_eq!(wal.stats().overlapped_syncs, 1);
    // So record 3's commit flushes before its WAL write, and is refused when that fails.
    let segment = env.segments()[0].clone();
    let before = env.read(&segment);
    fail_next_dwb_sync(&sim);
    let err = wal.append(put(3, 100)).unwrap_err();
    assert_eq!(err.code(), "ERR_DWB_UNAVAILABLE", "{err}");
    assert_eq!(env.read(&segment), before, "no WAL byte was written");
    assert_eq!(wal.next_lsn(), 3);
    // The DWB works again: so does the WAL.
    sim.set_plan(FaultPlan::default());
    assert_eq!(wal.append(put(3, 100)).unwrap(), 3);
    assert_eq!(wal.protection().state, ProtectionState::Active);
    assert_eq!(wal.stats().unprotected_records, 0);
}

#[test]
fn degraded_policy_acknowledges_and_reports_the_state() {
    let env = Env::sim();
    let sim = env.sim.clone().unwrap();
    let options = WalOptions {
        protection: Protection::Degraded,
        ..small()
    };
    let wal = env.open(options).unwrap();
    wal.append(put(1, 100)).unwrap();
    fail_next_dwb_sync(&sim);
    assert_eq!(wal.append(put(2, 100)).unwrap(), 2);
    sim.set_plan(FaultPlan::default());
    for i in 3..=10 {
        wal.append(put(i, 100)).unwrap();
    }
    let protection = wal.protection();
    assert_eq!(protection.state, ProtectionState::Degraded);
    // The commit after the one that found the DWB broken moved to a fresh segment instead
    // of rewriting the block holding records 1-2, and every later commit is padded:
    // nothing unprotected.
    assert_eq!(protection.unprotected_records, 0);
    assert!(wal.stats().padding_bytes > 0);
    assert_eq!(wal.segments().len(), 2);
    drop(wal);
    sim.crash(&mut SimRng::new(1), TearPolicy::Random);
    let wal = env.open(options).unwrap();
    assert_eq!(replay_all(&wal).len(), 10);
}

#[test]
fn crash_while_recovery_repairs_then_a_second_recovery() {
    let mut exercised = 0;
    for seed in 0..80 {
        let env = Env::sim();
        let sim = env.sim.clone().unwrap();
        let wal = env.open(small()).unwrap();
        for i in 1..=6 {
            wal.append(put(i, 150)).unwrap();
        }
        sim.set_plan(FaultPlan {
            at_point: Some(FaultPoint::new(Op::Write, ".seg", 1, Fault::PowerLoss)),
            ..FaultPlan::default()
        });
        let _ = wal.append_batch((7..=12).map(|i| put(i, 150)).collect());
        drop(wal);
        sim.crash(&mut SimRng::new(seed), TearPolicy::Random);
        // The first recovery loses power at its first write (a repair or the erase).
        sim.set_plan(FaultPlan {
            at_point: Some(FaultPoint::new(Op::Write, ".seg", 1, Fault::PowerLoss)),
            ..FaultPlan::default()
        });
        if env.open(small()).is_err() {
            exercised += 1;
            sim.crash(&mut SimRng::new(seed + 1000), TearPolicy::Random);
        }
        sim.set_plan(FaultPlan::default());
        let wal = env.open(small()).unwrap();
        expect_prefix(&replay_all(&wal), 6);
    }
    assert!(exercised > 0, "some recoveries were interrupted");
}

/// Linux "fsyncgate": after a failed writeback the kernel keeps the unwritten bytes cached
/// but clean. A reopen in the same boot must read what the device holds for the last
/// commit (recovery drops that range from the cache), not build on bytes a crash will
/// take away. Pad mode, so no DWB copy can hide the difference.
#[test]
fn reopen_after_a_failed_sync_reads_what_the_device_holds() {
    for seed in 0..30 {
        let env = Env::sim();
        let sim = env.sim.clone().unwrap();
        sim.set_linux_failed_writeback(true);
        let options = WalOptions {
            tail_protection: doublewrite::TailProtection::Pad,
            ..small()
        };
        {
            let wal = env.open(options).unwrap();
            for i in 1..=5 {
                wal.append(put(i, 150)).unwrap();
            }
            sim.set_plan(FaultPlan {
                at_point: Some(FaultPoint::new(Op::Sync, ".seg", 1, Fault::FailSync)),
                ..FaultPlan::default()
            });
            let err = wal
                .append_batch((6..=8).map(|i| put(i, 150)).collect())
                .unwrap_err();
            assert_eq!(err.code(), "ERR_WAL_POISONED");
        }
        sim.set_plan(FaultPlan::default());
        // Reopen in the same boot: the failed commit is in the cache, not on the device.
        let kept = {
            let wal = env.open(options).unwrap();
            let kept = replay_all(&wal).len() as u64;
            assert_eq!(kept, 5, "seed {seed}: the never-written commit was trusted");
            for i in kept + 1..=kept + 4 {
                assert_eq!(wal.append(put(i, 150)).unwrap(), i);
            }
            kept + 4
        };
        sim.crash(&mut SimRng::new(seed), TearPolicy::Random);
        let wal = env.open(options).unwrap();
        let records = replay_all(&wal);
        assert_eq!(records.len() as u64, kept, "seed {seed}");
        for (lsn, bytes) in records {
            assert!(bytes == payload(lsn, 150), "seed {seed}: LSN {lsn}");
        }
    }
}

/// A commit that must move to a new segment (its at-risk records cannot be protected:
/// the DWB failed under the degraded policy) and whose roll fails after the writer adopted
/// the new segment — at whichever sync a fault lands — is refused or lands at the new
/// segment's start: an acknowledged record is never written at the old segment's offset in
/// the new file (after zeros, where recovery would stop before it).
#[test]
fn a_failed_sync_during_a_rescue_roll_loses_nothing() {
    let options = WalOptions {
        protection: Protection::Degraded,
        prepare_segments: false,
        ..small()
    };
    let mut refused = 0;
    for k in 1..=40 {
        let env = Env::sim();
        let sim = env.sim.clone().unwrap();
        let wal = env.open(options).unwrap();
        wal.append(put(1, 100)).unwrap();
        fail_next_dwb_sync(&sim);
        assert_eq!(wal.append(put(2, 100)).unwrap(), 2);
        assert_eq!(wal.protection().state, ProtectionState::Degraded);
        sim.set_plan(FaultPlan {
            fail_sync_at: [sim.mutation_count() + k].into(),
            ..FaultPlan::default()
        });
        let mut acked = 2;
        match wal.append(put(3, 100)) {
            Ok(3) => acked = 3,
            Ok(lsn) => panic!("LSN {lsn}"),
            Err(_) => {
                refused += 1;
                sim.set_plan(FaultPlan::default());
                if wal.append(put(3, 100)).is_ok() {
                    acked = 3;
                }
            }
        }
        sim.power_off();
        drop(wal);
        sim.crash(&mut SimRng::new(k), TearPolicy::Random);
        let wal = env.open(options).unwrap();
        let records = replay_all(&wal);
        assert!(
            records.len() >= acked,
            "k {k}: {} records, {acked} acknowledged",
            records.len()
        );
        for (i, (lsn, bytes)) in records.iter().enumerate() {
            assert_eq!(*lsn, i as u64 + 1, "k {k}");
            assert!(bytes == &payload(*lsn, 100), "k {k}: LSN {lsn} is intact");
        }
    }
    assert!(refused > 0, "some faults landed on a sync of the roll");
}

/// A 12 KiB DWB ring (three 4 KiB slots) behind 4 KiB blocks: a flush of two pages
/// cannot be placed without landing on the last one's pages when that sits mid-ring.
fn tight_ring() -> WalOptions {
    WalOptions {
        dwb_capacity: Some(3),
        dwb_max_record_bytes: Some(2048),
        ..small_options()
    }
}

/// Record lengths from 40 to 1,940 bytes (each fits a slot).
fn varied_len(lsn: u64) -> usize {
    40 + ((lsn as usize * 1_297) % 1_900)
}

/// Appends records of `varied_len` (one commit each) to a fresh log under `tight_ring`
/// until a commit's DWB flush is synced before its WAL write instead of alongside it (it
/// would land on the last flush's pages); returns how many records came before it. The
/// simulated disk is deterministic: a fresh log given the same appends does the same.
fn records_before_a_serial_flush() -> u64 {
    let env = Env::sim();
    let wal = env.open(tight_ring()).unwrap();
    for i in 1..=400 {
        let before = wal.stats();
        wal.append(put(i, varied_len(i))).unwrap();
        let after = wal.stats();
        if i > 1
            && after.dwb_syncs > before.dwb_syncs
            && after.overlapped_syncs == before.overlapped_syncs
            && after.padding_bytes == before.padding_bytes
        {
            return i - 1;
        }
    }
    panic!("no commit flushed before its WAL write");
}

/// The payload length whose record, appended at `end` (56-byte headers, 4 KiB blocks),
/// ends its commit 100 bytes short of a block boundary: padding that is cheap under
/// `'mirror'` (a quarter of the commit or less).
fn cheaply_padded_len(end: u64) -> usize {
    let target = (end + 500).div_ceil(4096) * 4096 - 100;
    (target - end - 56) as usize
}

/// After a commit whose copies were flushed before its WAL write and then given up — its
/// WAL write refused (the copies are retracted: a refused record's copy must be zeroed
/// before its LSN is reused) or its flush failed (it may have landed on the last flush's
/// pages) — the last flush no longer stands for the copies the next WAL write puts at risk.
/// So the next commit flushes before its WAL write even when it pads cheaply, which
/// otherwise writes no DWB at all.
fn a_cheaply_padded_commit_after_given_up_copies_flushes_first(fault: Fault, code: &str) {
    let k = records_before_a_serial_flush();
    let env = Env::sim();
    let sim = env.sim.clone().unwrap();
    let wal = env.open(tight_ring()).unwrap();
    let mut expected = Vec::new();
    for i in 1..=k {
        wal.append(put(i, varied_len(i))).unwrap();
        expected.push((i, payload(i, varied_len(i))));
    }
    let (op, file) = match fault {
        Fault::NoSpace => (Op::Write, ".seg"),
        _ => (Op::Sync, "wal.dwb"),
    };
    sim.set_plan(FaultPlan {
        at_point: Some(FaultPoint::new(op, file, 1, fault)),
        ..FaultPlan::default()
    });
    let before = wal.stats();
    let err = wal.append(put(k + 1, varied_len(k + 1))).unwrap_err();
    assert_eq!(err.code(), code, "{err}");
    assert_eq!(wal.next_lsn(), k + 1);
    if fault == Fault::NoSpace {
        assert_eq!(wal.stats().dwb_syncs, before.dwb_syncs + 1, "flushed first");
    }
    sim.set_plan(FaultPlan::default());
    // The log still ends with record k (which commit k + 1 put at risk).
    let (_, offset, len) = env.find(k);
    let len = cheaply_padded_len(offset + len as u64);
    let before = wal.stats();
    assert_eq!(wal.append(put(k + 1, len)).unwrap(), k + 1);
    let after = wal.stats();
    assert_eq!(after.padding_bytes, before.padding_bytes + 100, "{after:?}");
    assert_eq!(
        (after.dwb_syncs, after.overlapped_syncs),
        (before.dwb_syncs + 1, before.overlapped_syncs),
        "the padded commit flushed before its WAL write: {after:?}"
    );
    expected.push((k + 1, payload(k + 1, len)));
    drop(wal);
    sim.crash(&mut SimRng::new(11), TearPolicy::Random);
    let wal = env.open(tight_ring()).unwrap();
    assert!(replay_all(&wal) == expected);
}

#[test]
fn a_cheaply_padded_commit_after_a_refused_one_flushes_first() {
    a_cheaply_padded_commit_after_given_up_copies_flushes_first(Fault::NoSpace, "ERR_NO_SPACE");
}

#[test]
fn a_cheaply_padded_commit_after_a_failed_strict_flush_flushes_first() {
    a_cheaply_padded_commit_after_given_up_copies_flushes_first(
        Fault::FailSync,
        "ERR_DWB_UNAVAILABLE",
    );
}
