//! The checker finds nothing in the real configuration and finds violations in each
//! deliberately weakened one: it can fail.

use doublewrite::wal::Weakness;
use doublewrite_crash_sim::{run_case, run_many};

const CASES: u64 = 300;

#[test]
fn the_real_configuration_has_no_violations() {
    let summary = run_many(1, CASES, 2, None);
    assert!(summary.crashes > CASES, "{}", summary.line());
    assert!(summary.repairs > 0, "{}", summary.line());
    assert_eq!(
        summary.violations,
        0,
        "{}: {:?}",
        summary.line(),
        summary.failing_seeds
    );
}

fn weakened_is_caught(weakness: Weakness) {
    let summary = run_many(1, CASES, 2, Some(weakness));
    assert!(
        summary.violations > 0,
        "the checker missed {weakness:?}: {}",
        summary.line()
    );
}

#[test]
fn catches_a_wal_without_dwb_protection() {
    weakened_is_caught(Weakness::NoDwb);
}

#[test]
fn catches_lookup_by_the_damaged_headers_lsn() {
    weakened_is_caught(Weakness::LookupByDamagedHeader);
}

#[test]
fn catches_repairs_that_are_not_written_back() {
    weakened_is_caught(Weakness::NoRepairWriteBack);
}

#[test]
fn catches_a_batch_allowed_to_exceed_the_ring() {
    weakened_is_caught(Weakness::ReferenceMirroring);
}

#[test]
fn a_case_replays_identically_from_its_seed() {
    for seed in [3, 77, 1234] {
        let a = run_case(seed, None);
        let b = run_case(seed, None);
        assert_eq!(
            (a.crashes, a.recoveries, a.repairs, a.acknowledged),
            (b.crashes, b.recoveries, b.repairs, b.acknowledged),
            "seed {seed} is not deterministic"
        );
    }
}
