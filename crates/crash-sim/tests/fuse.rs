//! The crash simulator's workloads and checker through the kernel, on faultfs (a FUSE
//! file system with the simulated disk's fault model): the real configuration has no
//! violations under torn (512 and 4096), garbage, zeroed, dropped and kept writes,
//! failed syncs and ENOSPC, and a weakened one is caught there too.
//!
//! When FUSE is unavailable (no /dev/fuse, not root and no fusermount3, mount refused)
//! every test prints `SKIPPED: <reason>` to stderr and passes.

use std::io::Write;

use doublewrite::wal::Weakness;
use doublewrite_crash_sim::{fuse_available, run_case_on, run_many_on, DiskKind, Summary};

const CASES: u64 = 150;
const THREADS: usize = 2;

/// Straight to stderr so it shows without `--nocapture`.
fn say(what: &str) {
    let _ = writeln!(std::io::stderr(), "{what}");
}

fn fuse_or_skip(test: &str) -> bool {
    static PROBE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    match PROBE.get_or_init(fuse_available) {
        Ok(()) => true,
        Err(reason) => {
            say(&format!("SKIPPED: {test}: {reason}"));
            false
        }
    }
}

fn report(label: &str, summary: &Summary, started: std::time::Instant) {
    say(&format!(
        "{label}: {} ({} recoveries, {} acknowledged records checked, {:.1} s)",
        summary.line(),
        summary.recoveries,
        summary.acknowledged,
        started.elapsed().as_secs_f64()
    ));
}

fn counter(summary: &Summary, name: &str) -> u64 {
    summary.disk_counters.get(name).copied().unwrap_or(0)
}

#[test]
fn the_real_configuration_through_fuse_has_no_violations() {
    if !fuse_or_skip("fuse") {
        return;
    }
    let started = std::time::Instant::now();
    let summary = run_many_on(DiskKind::Fuse, 1, CASES, THREADS, None);
    report("fuse", &summary, started);
    assert_eq!(
        summary.violations,
        0,
        "{}: {:?}",
        summary.line(),
        summary.failing_seeds
    );
    assert!(summary.crashes > CASES, "{}", summary.line());
    assert!(summary.repairs > 0, "{}", summary.line());
    // Every kind of fault was injected.
    for mode in [
        "random", "torn512", "torn4096", "garbage", "zeros", "drop", "keep",
    ] {
        assert!(
            counter(&summary, &format!("crash mode {mode}")) > 0,
            "no {mode} crash: {:?}",
            summary.disk_counters
        );
    }
    for name in [
        "injected failed syncs",
        "injected ENOSPC",
        "sectors settled old",
        "sectors settled new",
        "sectors settled zeros",
        "sectors settled random",
        "entry changes applied",
        "entry changes undone",
    ] {
        assert!(
            counter(&summary, name) > 0,
            "{name}: {:?}",
            summary.disk_counters
        );
    }
}

#[test]
fn with_the_kernel_page_cache_there_are_no_violations() {
    if !fuse_or_skip("fuse-cached") {
        return;
    }
    let started = std::time::Instant::now();
    let summary = run_many_on(DiskKind::FuseCached, 1000, CASES / 3, THREADS, None);
    report("fuse-cached", &summary, started);
    assert_eq!(
        summary.violations,
        0,
        "{}: {:?}",
        summary.line(),
        summary.failing_seeds
    );
    assert!(summary.repairs > 0, "{}", summary.line());
}

/// The FUSE path can fail: without the DWB the checker finds lost acknowledged records.
#[test]
fn the_checker_catches_a_wal_without_dwb_through_fuse() {
    if !fuse_or_skip("fuse no-dwb") {
        return;
    }
    let started = std::time::Instant::now();
    let summary = run_many_on(DiskKind::Fuse, 1, CASES, THREADS, Some(Weakness::NoDwb));
    report("fuse --weaken no-dwb", &summary, started);
    assert!(
        summary.violations > 0,
        "the checker missed NoDwb through FUSE: {}",
        summary.line()
    );
}

#[test]
fn the_checker_catches_repairs_that_are_not_written_back_through_fuse() {
    if !fuse_or_skip("fuse no-repair-write-back") {
        return;
    }
    let summary = run_many_on(
        DiskKind::Fuse,
        1,
        CASES / 3,
        THREADS,
        Some(Weakness::NoRepairWriteBack),
    );
    assert!(
        summary.violations > 0,
        "the checker missed NoRepairWriteBack through FUSE: {}",
        summary.line()
    );
}

/// Cases are replayable through the kernel too (the crash-sim's writes are below the
/// kernel's FUSE request size, so the kernel does not split them).
#[test]
fn a_fuse_case_replays_identically_from_its_seed() {
    if !fuse_or_skip("fuse replay") {
        return;
    }
    for seed in [3, 77] {
        let a = run_case_on(DiskKind::Fuse, seed, None);
        let b = run_case_on(DiskKind::Fuse, seed, None);
        assert_eq!(
            (a.crashes, a.recoveries, a.repairs, a.acknowledged),
            (b.crashes, b.recoveries, b.repairs, b.acknowledged),
            "seed {seed} is not deterministic through FUSE"
        );
        assert_eq!(a.disk_counters, b.disk_counters, "seed {seed}");
    }
}
