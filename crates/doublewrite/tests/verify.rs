//! `wal::verify` reports what recovery would do — clean, repairable, torn tail, lost —
//! and never writes a byte.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::{put, Env};
use doublewrite::wal::verify::{verify, Verdict};
use doublewrite::WalOptions;

on_both!(
    clean_log_is_clean,
    damaged_record_with_a_copy_is_repairable,
    torn_tail_is_reported,
    unrepairable_damage_is_lost,
    an_open_wal_is_not_verified,
);

fn opts() -> WalOptions {
    WalOptions {
        segment_size_bytes: 64 * 1024,
        dwb_capacity: Some(4),
        dwb_max_record_bytes: Some(4096),
        ..WalOptions::default()
    }
}

fn written(env: &Env, n: u64) {
    let wal = env.open(opts()).unwrap();
    for lsn in 1..=n {
        wal.append(put(lsn, 300)).unwrap();
    }
    wal.close().unwrap();
}

/// Every file of the WAL directory and its bytes.
fn snapshot(env: &Env) -> BTreeMap<PathBuf, Vec<u8>> {
    env.vfs
        .list_dir(&env.dir)
        .unwrap()
        .into_iter()
        .map(|name| {
            let path = env.dir.join(name);
            let bytes = env.read(&path);
            (path, bytes)
        })
        .collect()
}

fn verified(env: &Env) -> doublewrite::wal::verify::VerifyReport {
    let before = snapshot(env);
    let report = verify(env.vfs.clone(), &env.dir).unwrap();
    assert_eq!(snapshot(env), before, "verify wrote to the WAL directory");
    report
}

fn clean_log_is_clean(env: &Env) {
    written(env, 300);
    let report = verified(env);
    assert_eq!(report.verdict(), Verdict::Clean);
    assert_eq!(
        (report.first_lsn, report.last_lsn, report.records),
        (1, 300, 300)
    );
    assert!(report.segments.len() > 1);
    let frames = report.dwb.unwrap().unwrap();
    assert!(!frames.is_empty() && frames.iter().all(|f| f.valid));
}

fn damaged_record_with_a_copy_is_repairable(env: &Env) {
    written(env, 10);
    let (path, offset, _) = env.find(9);
    env.overwrite(&path, offset + 70, &[0xAB; 8]);
    let report = verified(env);
    assert_eq!(report.verdict(), Verdict::Repairable);
    assert_eq!(report.repairable, vec![(path, offset, 9)]);
    assert_eq!(report.last_lsn, 10);
    // Verification changed nothing: recovery still has the repair to do.
    let wal = env.open(opts()).unwrap();
    assert_eq!(wal.recovery().repaired_from_dwb, 1);
}

fn torn_tail_is_reported(env: &Env) {
    written(env, 10);
    env.remove(&env.dir.join("wal.dwb"));
    let (path, offset, len) = env.find(10);
    env.overwrite(&path, offset + 100, &[0xCD; 16]);
    let report = verified(env);
    assert_eq!(report.verdict(), Verdict::TornTail);
    assert_eq!(report.torn_tail, Some((path, offset, len as u64)));
    assert_eq!(report.last_lsn, 9);
    assert!(report.dwb.is_none(), "no DWB file, and none was created");
}

fn unrepairable_damage_is_lost(env: &Env) {
    written(env, 10);
    env.remove(&env.dir.join("wal.dwb"));
    let (path, offset, _) = env.find(3);
    env.overwrite(&path, offset + 100, &[0xEF; 16]);
    let report = verified(env);
    assert_eq!(report.verdict(), Verdict::Lost);
    let lost = report.lost.unwrap();
    assert_eq!(lost.code(), "ERR_WAL_CORRUPT");
    assert!(lost.to_string().contains(&offset.to_string()), "{lost}");
}

fn an_open_wal_is_not_verified(env: &Env) {
    let wal = env.open(opts()).unwrap();
    wal.append(put(1, 3)).unwrap();
    assert_eq!(
        verify(env.vfs.clone(), &env.dir).unwrap_err().code(),
        "ERR_LOCKED"
    );
}
