//! Commits started on the caller's thread whose write the kernel makes durable and
//! completes on its own (`Wal::submit_durable`, `kernel_completion`): they land where the
//! commit thread's would, they are acknowledged only once durable, work queued behind one
//! (a blocking append, a sync, a close) ends it instead of deadlocking, a failed write
//! poisons the log, and every crash point keeps every acknowledged record — under `'pad'`
//! (one write per commit) and under `'mirror'` (the DWB copies and the WAL write that
//! rewrites the log's partial last block, submitted together).
#![allow(unsafe_code)] // one poll(2) on the eventfd, as an event loop would wait on it

mod common;

use std::sync::mpsc;

use common::{assert_records, payload, put, replay_all, Env};
use doublewrite::io::sim::{Fault, FaultPlan, FaultPoint, Op, SimRng, TearPolicy};
use doublewrite::{
    DwbMode, Error, Protection, ProtectionState, RecordInput, TailProtection, Wal, WalOptions,
};

fn options() -> WalOptions {
    options_for(TailProtection::Pad)
}

fn options_for(tail_protection: TailProtection) -> WalOptions {
    WalOptions {
        direct_io: true,
        dwb_mode: DwbMode::Direct,
        tail_protection,
        kernel_completion: true,
        segment_size_bytes: 64 * 1024,
        ..WalOptions::default()
    }
}

/// Opens the WAL, or `None` (with a note) where this file system refuses direct I/O.
fn open(env: &Env, options: WalOptions) -> Option<Wal> {
    match env.open(options) {
        Ok(wal) => Some(wal),
        Err(Error::DirectIoUnsupported { detail, .. }) => {
            eprintln!("SKIPPED: direct I/O unavailable here: {detail}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// Submits `records` through `submit_durable`; the outcome arrives on the receiver.
fn submit(wal: &Wal, records: Vec<RecordInput>) -> mpsc::Receiver<doublewrite::Result<u64>> {
    let (send, receive) = mpsc::channel();
    wal.submit_durable(vec![(
        records,
        Box::new(move |outcome| {
            let _ = send.send(outcome);
        }),
    )]);
    receive
}

/// Submits `records` through `submit_durable` and waits for the outcome the way a binding
/// would: reap once the commit completes (a commit that went to the commit thread
/// instead is waited for through its callback).
fn durable_append(wal: &Wal, records: Vec<RecordInput>) -> doublewrite::Result<u64> {
    let receive = submit(wal, records);
    let reaped = wal.reap_durable(true);
    let outcome = receive.recv().expect("every job gets its outcome");
    if !reaped {
        // The commit thread ran it, and marks itself idle just after the callbacks: wait
        // for that, so the next append finds the writer idle as a binding's would.
        while !wal.is_idle() {
            std::thread::yield_now();
        }
    }
    outcome
}

fn durable_commits_land_like_the_commit_threads(env: &Env, tail_protection: TailProtection) {
    let options = || options_for(tail_protection);
    let Some(wal) = open(env, options()) else {
        return;
    };
    assert!(wal.has_durable_writes());
    let mut expected = Vec::new();
    let (mut padded, mut mirrored) = (0, 0);
    for lsn in 1..=40u64 {
        let len = (lsn as usize * 311) % 6000;
        let before = wal.stats();
        let got = durable_append(&wal, vec![put(lsn, len)]).unwrap();
        assert_eq!(got, lsn);
        expected.push((lsn, payload(lsn, len)));
        let after = wal.stats();
        let kernel = after.durable_commits > before.durable_commits;
        let padding = after.padding_bytes - before.padding_bytes;
        if tail_protection == TailProtection::Mirror && kernel {
            if padding > 0 {
                // Padded instead of copied: the padding is at most a quarter of the
                // commit's bytes, and the commit took one sync.
                assert!(padding * 4 <= (56 + len) as u64, "LSN {lsn}: {after:?}");
                assert_eq!(after.dwb_syncs, before.dwb_syncs, "LSN {lsn}: {after:?}");
                padded += 1;
            } else {
                // Shared its last block with the next commit: its copies went to the DWB
                // in a flush overlapped with the WAL's.
                assert_eq!(
                    after.overlapped_syncs,
                    before.overlapped_syncs + 1,
                    "LSN {lsn}"
                );
                mirrored += 1;
            }
        }
    }
    let stats = wal.stats();
    // 40 records of up to 6 KB in 64 KiB segments: the commits that did not fit rolled on
    // the commit thread; every other one went through the kernel (under `'mirror'` but
    // the first, whose copies had no earlier flush to stand on).
    assert!(stats.segment_rolls >= 1, "{stats:?}");
    assert_eq!(stats.commits, 40, "{stats:?}");
    let first = u64::from(tail_protection == TailProtection::Mirror);
    assert!(
        stats.durable_commits >= 40 - stats.segment_rolls - first && stats.durable_commits < 40,
        "{stats:?}"
    );
    if tail_protection == TailProtection::Mirror {
        // Both ways of protecting the next commit's first block went through the kernel.
        assert!(
            padded > 0 && mirrored > 0,
            "padded {padded}, mirrored {mirrored}"
        );
        assert_eq!(padded + mirrored, stats.durable_commits, "{stats:?}");
    }
    assert_eq!(
        stats.wal_syncs, 40,
        "one sync per commit, either way: {stats:?}"
    );
    assert_records(&replay_all(&wal), &expected);
    wal.close().unwrap();
    let wal = env.open(options()).unwrap();
    assert_records(&replay_all(&wal), &expected);
    // Reopened without the option, the same log goes on through the commit thread.
    drop(wal);
    let plain = WalOptions {
        kernel_completion: false,
        ..options()
    };
    let wal = env.open(plain).unwrap();
    assert!(!wal.has_durable_writes());
    assert_eq!(wal.append(put(41, 10)).unwrap(), 41);
    expected.push((41, payload(41, 10)));
    assert_records(&replay_all(&wal), &expected);
}

#[test]
fn durable_commits_land_like_the_commit_threads_on_disk() {
    durable_commits_land_like_the_commit_threads(&Env::std(), TailProtection::Pad);
}

#[test]
fn durable_commits_land_like_the_commit_threads_simulated() {
    durable_commits_land_like_the_commit_threads(&Env::sim(), TailProtection::Pad);
}

#[test]
fn durable_mirror_commits_land_like_the_commit_threads_on_disk() {
    durable_commits_land_like_the_commit_threads(&Env::std(), TailProtection::Mirror);
}

#[test]
fn durable_mirror_commits_land_like_the_commit_threads_simulated() {
    durable_commits_land_like_the_commit_threads(&Env::sim(), TailProtection::Mirror);
}

/// On the real disk the completion is signalled on the eventfd, not found by waiting.
#[cfg(target_os = "linux")]
#[test]
fn the_ready_descriptor_signals_the_completion() {
    let env = Env::std();
    let Some(wal) = open(&env, options()) else {
        return;
    };
    let fd = wal.durable_ready_fd().expect("Linux AIO offers an eventfd");
    let receive = submit(&wal, vec![put(1, 100)]);
    assert!(receive.try_recv().is_err(), "acknowledged before durable");
    let mut ready = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the call.
    let polled = unsafe { libc::poll(&mut ready, 1, 10_000) };
    assert_eq!(polled, 1, "the eventfd did not become readable");
    assert!(wal.reap_durable(false), "readable, but nothing to reap");
    assert_eq!(receive.try_recv().unwrap().unwrap(), 1);
    assert!(!wal.reap_durable(false), "reaped twice");
    assert_eq!(wal.stats().durable_commits, 1);
}

/// A blocking append, a sync and a close behind a commit nobody reaps: the commit thread
/// ends it, in LSN order, instead of waiting forever for the caller that started it.
fn work_queued_behind_a_commit_ends_it(env: &Env) {
    let Some(wal) = open(env, options()) else {
        return;
    };
    let first = submit(&wal, vec![put(1, 500), put(2, 500)]);
    // Without reaping: this thread now blocks on work behind the commit in flight.
    assert_eq!(wal.append(put(3, 10)).unwrap(), 3);
    assert_eq!(first.try_recv().unwrap().unwrap(), 1);
    let fourth = submit(&wal, vec![put(4, 10)]);
    wal.sync().unwrap();
    assert_eq!(fourth.try_recv().unwrap().unwrap(), 4);
    let fifth = submit(&wal, vec![put(5, 10)]);
    wal.close().unwrap();
    assert_eq!(fifth.recv().unwrap().unwrap(), 5);
    let wal = env.open(options()).unwrap();
    let lsns: Vec<u64> = replay_all(&wal).iter().map(|r| r.0).collect();
    assert_eq!(lsns, vec![1, 2, 3, 4, 5]);
}

#[test]
fn work_queued_behind_a_commit_ends_it_on_disk() {
    work_queued_behind_a_commit_ends_it(&Env::std());
}

#[test]
fn work_queued_behind_a_commit_ends_it_simulated() {
    work_queued_behind_a_commit_ends_it(&Env::sim());
}

/// A write whose sync fails is not acknowledged, and nothing after it is: the log is
/// poisoned, as after a failed fdatasync. Reopened, it holds what was acknowledged.
#[test]
fn a_failed_durable_write_poisons_the_log() {
    let env = Env::sim();
    let sim = env.sim.clone().unwrap();
    let wal = env.open(options()).unwrap();
    assert_eq!(durable_append(&wal, vec![put(1, 100)]).unwrap(), 1);
    // The next commit's write is the next mutation, its sync the one after.
    sim.set_plan(FaultPlan {
        fail_sync_at: [sim.mutation_count() + 2].into(),
        ..FaultPlan::default()
    });
    let err = durable_append(&wal, vec![put(2, 100)]).unwrap_err();
    assert_eq!(err.code(), "ERR_WAL_POISONED", "{err}");
    assert!(err.to_string().contains("RWF_DSYNC"), "{err}");
    let err = durable_append(&wal, vec![put(3, 100)]).unwrap_err();
    assert_eq!(err.code(), "ERR_WAL_POISONED");
    assert_eq!(wal.stats().durable_commits, 1);
    drop(wal);
    sim.set_plan(FaultPlan::default());
    let wal = env.open(options()).unwrap();
    let lsns: Vec<u64> = replay_all(&wal).iter().map(|r| r.0).collect();
    assert!(lsns == vec![1] || lsns == vec![1, 2], "{lsns:?}");
}

/// Every crash point of a run of durable commits (some rolling on the commit thread),
/// under ten tear patterns: after recovery every acknowledged record is intact, the rest
/// appear only as an intact, contiguous suffix, and the log takes appends again.
#[test]
fn every_crash_point_of_durable_commits() {
    every_crash_point(TailProtection::Pad, 700, FaultPlan::default(), 8..=12);
}

/// The same under `'mirror'`, with records small enough to share blocks: every commit
/// but a session's first rewrites the log's partial last block, its copies and that
/// write in flight together.
#[test]
fn every_crash_point_of_durable_mirror_commits() {
    every_crash_point(TailProtection::Mirror, 100, FaultPlan::default(), 8..=12);
}

/// The same when the kernel takes a `'mirror'` commit's submission only in part (its
/// DWB write lands, unsynced; the WAL write is refused, as `io_submit` may): that commit
/// and every later one of the session go the usual way, and the copies the partial write
/// left are never mistaken for records at recovery. The two pairs before it go through
/// the kernel, and nothing after it does.
#[test]
fn every_crash_point_after_a_submission_taken_in_part() {
    let faults = FaultPlan {
        durable_taken_in_part: Some(3),
        ..FaultPlan::default()
    };
    every_crash_point(TailProtection::Mirror, 100, faults, 2..=2);
}

/// Crashes a run of 12 durable appends at each of its mutations in turn, on a disk with
/// `faults`; the run without a crash acknowledges all 12, none unprotected, and sends
/// `through_kernel` of them through the kernel.
fn every_crash_point(
    tail_protection: TailProtection,
    min_len: usize,
    faults: FaultPlan,
    through_kernel: std::ops::RangeInclusive<u64>,
) {
    let options = || options_for(tail_protection);
    let kernel_commits = std::cell::Cell::new(0);
    let run = |env: &Env, acked: &mut Vec<(u64, usize)>| -> Vec<(u64, usize)> {
        let mut attempted = Vec::new();
        let Ok(wal) = env.open(options()) else {
            return attempted;
        };
        for lsn in 1..=12u64 {
            let len = min_len + (lsn as usize * 1777) % (min_len * 13);
            attempted.push((lsn, len));
            match durable_append(&wal, vec![put(lsn, len)]) {
                Ok(got) => {
                    assert_eq!(got, lsn);
                    acked.push((lsn, len));
                }
                Err(_) => break,
            }
        }
        kernel_commits.set(wal.stats().durable_commits);
        let status = wal.protection();
        assert_ne!(status.state, ProtectionState::Degraded);
        assert_eq!(status.unprotected_records, 0);
        attempted
    };
    let env = Env::sim();
    let sim = env.sim.clone().unwrap();
    sim.set_plan(faults.clone());
    let base = sim.mutation_count();
    let mut acked = Vec::new();
    run(&env, &mut acked);
    let steps = sim.mutation_count() - base;
    assert!(steps > 20, "only {steps} steps");
    assert_eq!(
        acked.len(),
        12,
        "without a crash every append is acknowledged"
    );
    assert!(
        through_kernel.contains(&kernel_commits.get()),
        "{} of 12 commits went through the kernel, not {through_kernel:?}",
        kernel_commits.get()
    );
    let mut crashes = 0;
    for step in 1..=steps {
        let mut policies = vec![TearPolicy::KeepOld, TearPolicy::KeepNew];
        policies.extend([TearPolicy::Random; 8]);
        for (variant, policy) in policies.into_iter().enumerate() {
            let env = Env::sim();
            let sim = env.sim.clone().unwrap();
            sim.set_plan(FaultPlan {
                crash_at: Some(sim.mutation_count() + step),
                ..faults.clone()
            });
            let mut acked = Vec::new();
            let attempted = run(&env, &mut acked);
            if sim.is_powered_off() {
                crashes += 1;
            } else {
                sim.power_off();
            }
            sim.crash(&mut SimRng::new(step * 17 + variant as u64), policy);
            let label = format!("crash at step {step}/{steps}, {policy:?} #{variant}");
            let wal = env
                .open(options())
                .unwrap_or_else(|e| panic!("{label}: recovery failed: {e}"));
            let records = replay_all(&wal);
            for (i, (lsn, bytes)) in records.iter().enumerate() {
                assert_eq!(*lsn, i as u64 + 1, "{label}: LSNs not contiguous");
                let len = attempted
                    .iter()
                    .find(|a| a.0 == *lsn)
                    .unwrap_or_else(|| panic!("{label}: LSN {lsn} was never appended"))
                    .1;
                assert!(bytes == &payload(*lsn, len), "{label}: LSN {lsn} torn");
            }
            let last = records.last().map_or(0, |r| r.0);
            if let Some(&(newest, _)) = acked.last() {
                assert!(
                    last >= newest,
                    "{label}: acknowledged LSN {newest} lost (log ends at {last})"
                );
            }
            assert_eq!(
                durable_append(&wal, vec![put(last + 1, 10)]).unwrap(),
                last + 1
            );
        }
    }
    eprintln!(
        "durable commits ({tail_protection:?}): {steps} steps × 10 tear patterns, {crashes} crashes"
    );
    // A named fault point wins over a crash planned at the same mutation.
    let faulted = u64::from(faults.at_point.is_some());
    assert!(
        crashes >= (steps - faulted) * 10,
        "every step but the faulted one must be a crash"
    );
}

/// A durable write refused for lack of space is a failed write, not a failed sync: it is
/// undone (its leftovers zeroed and synced) and its LSNs come back, so the log goes on
/// once space returns, as on the usual path. (The crash simulator found the difference.)
#[test]
fn a_durable_write_without_space_is_undone_not_poisoned() {
    let env = Env::sim();
    let sim = env.sim.clone().unwrap();
    let wal = env.open(options()).unwrap();
    assert_eq!(durable_append(&wal, vec![put(1, 100)]).unwrap(), 1);
    sim.set_plan(FaultPlan {
        no_space_at: [sim.mutation_count() + 1].into(),
        ..FaultPlan::default()
    });
    let err = durable_append(&wal, vec![put(2, 3000)]).unwrap_err();
    assert_eq!(err.code(), "ERR_NO_SPACE", "{err}");
    sim.set_plan(FaultPlan::default());
    assert_eq!(
        durable_append(&wal, vec![put(2, 50)]).unwrap(),
        2,
        "the LSN comes back"
    );
    assert_eq!(wal.stats().durable_commits, 2);
    drop(wal);
    let wal = env.open(options()).unwrap();
    assert_records(
        &replay_all(&wal),
        &[(1, payload(1, 100)), (2, payload(2, 50))],
    );
}

/// The log's bytes do not depend on which thread wrote a commit: the same appends through
/// the kernel and through the commit thread leave the same segment files, byte for byte
/// but for each header's random epoch and its CRC (so the on-disk format, docs/FORMAT.md,
/// is the same either way).
#[test]
fn both_paths_write_the_same_bytes() {
    both_paths_write_the_same_bytes_under(TailProtection::Pad);
}

#[test]
fn both_paths_write_the_same_bytes_under_mirror() {
    both_paths_write_the_same_bytes_under(TailProtection::Mirror);
}

fn both_paths_write_the_same_bytes_under(tail_protection: TailProtection) {
    let write = |kernel_completion: bool| {
        let env = Env::sim();
        let options = WalOptions {
            kernel_completion,
            ..options_for(tail_protection)
        };
        let wal = env.open(options).unwrap();
        for lsn in 1..=30u64 {
            let len = (lsn as usize * 911) % 7000;
            assert_eq!(durable_append(&wal, vec![put(lsn, len)]).unwrap(), lsn);
        }
        let durable = wal.stats().durable_commits;
        drop(wal);
        let files: Vec<(std::path::PathBuf, Vec<u8>)> = env
            .segments()
            .into_iter()
            .map(|path| {
                let bytes = env.read(&path);
                (path, bytes)
            })
            .collect();
        (files, durable)
    };
    let (through_kernel, durable) = write(true);
    let (through_thread, none) = write(false);
    assert!(
        durable > 20,
        "{durable} of 30 commits went through the kernel"
    );
    assert_eq!(none, 0);
    assert_eq!(through_kernel.len(), through_thread.len());
    for ((path, kernel), (_, thread)) in through_kernel.iter().zip(&through_thread) {
        // The header block differs by design (a random epoch and its CRC): compare the
        // rest of it, and every record block.
        let block = u32::from_le_bytes(kernel[8..12].try_into().unwrap()) as usize;
        assert_eq!(kernel.len(), thread.len(), "{}", path.display());
        assert_eq!(kernel[..24], thread[..24], "{}: header", path.display());
        assert_eq!(kernel[32..40], thread[32..40], "{}: header", path.display());
        let at = kernel[block..]
            .iter()
            .zip(&thread[block..])
            .position(|(a, b)| a != b);
        assert_eq!(
            at,
            None,
            "{}: records differ at {block} + {at:?}",
            path.display()
        );
    }
}

/// Under `'mirror'`, a commit whose DWB copies fail while its WAL write runs out of space
/// poisons the log instead of giving its LSNs back: the failed DWB write may have left
/// valid copies that no flush of this session would erase (a DWB that failed under the
/// degraded policy is not written again). Reopened, the log holds what was acknowledged.
#[test]
fn a_failed_mirror_copy_with_no_space_for_the_wal_poisons_the_log() {
    let env = Env::sim();
    let sim = env.sim.clone().unwrap();
    let options = WalOptions {
        protection: Protection::Degraded,
        ..options_for(TailProtection::Mirror)
    };
    let wal = env.open(options).unwrap();
    for lsn in 1..=3 {
        assert_eq!(durable_append(&wal, vec![put(lsn, 100)]).unwrap(), lsn);
    }
    assert!(wal.stats().durable_commits >= 1, "{:?}", wal.stats());
    // The next commit: its DWB write, its WAL write, then the DWB write's sync.
    let next = sim.mutation_count();
    sim.set_plan(FaultPlan {
        no_space_at: [next + 2].into(),
        fail_sync_at: [next + 3].into(),
        ..FaultPlan::default()
    });
    let err = durable_append(&wal, vec![put(4, 100)]).unwrap_err();
    assert_eq!(err.code(), "ERR_WAL_POISONED", "{err}");
    assert!(err.to_string().contains("DWB copies also failed"), "{err}");
    drop(wal);
    sim.set_plan(FaultPlan::default());
    let wal = env.open(options).unwrap();
    // The refused record was never acknowledged; it may come back intact (its write
    // landed in full before space ran out), as an unacknowledged suffix may.
    let lsns: Vec<u64> = replay_all(&wal).iter().map(|r| r.0).collect();
    assert!(
        lsns == vec![1, 2, 3] || lsns == vec![1, 2, 3, 4],
        "{lsns:?}"
    );
    let next = lsns.len() as u64 + 1;
    assert_eq!(wal.append(put(next, 10)).unwrap(), next);
}

/// Under `'strict'` (the default), a `'mirror'` commit whose DWB copies fail on the kernel
/// path (the 6th sync of the DWB file) is still acknowledged — the last flush protected
/// it — and the DWB stays in use: the next commit finds its tail without a copy and goes
/// the usual way (copies synced first), so 10 commits go through the kernel where 11 do
/// without the fault (which tells that the fault hit the kernel path), and none is
/// acknowledged unprotected. Every crash point keeps every
/// acknowledged record.
#[test]
fn every_crash_point_after_a_failed_mirror_copy_under_strict() {
    assert_eq!(WalOptions::default().protection, Protection::Strict);
    let faults = FaultPlan {
        at_point: Some(FaultPoint::new(Op::Sync, "wal.dwb", 6, Fault::FailSync)),
        ..FaultPlan::default()
    };
    every_crash_point(TailProtection::Mirror, 100, faults, 10..=10);
}
