//! Every crash point of each workload shape, as SQLite's crash tests do: run the shape
//! once to count its I/O steps, then for step 1, 2, … until the shape finishes before the
//! crash, lose power at that step under ten tear patterns (eight random seeds, all unsynced
//! writes lost, all kept), recover, and check: the acknowledged prefix is intact, the
//! interrupted records appear only as a contiguous, intact suffix, and the log accepts
//! appends again.

mod common;

use common::{payload, put, replay_all, Env};
use doublewrite::io::sim::{FaultPlan, SimRng, TearPolicy};
use doublewrite::{DwbMode, RecordInput, TailProtection, Wal, WalOptions};

/// A workload shape: a setup whose records are all acknowledged, then one operation that
/// the crash interrupts. Records carry their LSN-derived payload so they can be checked.
struct Shape {
    name: &'static str,
    options: WalOptions,
    setup: fn(&Wal),
    operation: fn(&Wal) -> Vec<(u64, usize)>,
}

fn sizes(from: u64, len: usize, count: u64) -> Vec<(u64, usize)> {
    (from..from + count).map(|lsn| (lsn, len)).collect()
}

fn append_all(wal: &Wal, records: &[(u64, usize)]) {
    let inputs: Vec<RecordInput> = records.iter().map(|&(lsn, len)| put(lsn, len)).collect();
    let _ = wal.append_batch(inputs);
}

fn small(capacity: u32, max_record: u32) -> WalOptions {
    WalOptions {
        segment_size_bytes: 16 * 1024,
        dwb_capacity: Some(capacity),
        dwb_max_record_bytes: Some(max_record),
        ..WalOptions::default()
    }
}

fn shapes() -> Vec<Shape> {
    vec![
        Shape {
            name: "single append",
            options: small(4, 4096),
            setup: |wal| {
                for lsn in 1..=5 {
                    wal.append(put(lsn, 300)).unwrap();
                }
            },
            operation: |wal| {
                let records = sizes(6, 300, 1);
                append_all(wal, &records);
                records
            },
        },
        Shape {
            name: "batch larger than the ring",
            options: small(2, 1024),
            setup: |wal| {
                for lsn in 1..=3 {
                    wal.append(put(lsn, 100)).unwrap();
                }
            },
            operation: |wal| {
                let records = sizes(4, 100, 120);
                append_all(wal, &records);
                records
            },
        },
        Shape {
            name: "record larger than a slot",
            options: small(4, 1024),
            setup: |wal| {
                for lsn in 1..=3 {
                    wal.append(put(lsn, 200)).unwrap();
                }
            },
            operation: |wal| {
                let records = vec![(4, 9000), (5, 100)];
                append_all(wal, &records[..1]);
                append_all(wal, &records[1..]);
                records
            },
        },
        Shape {
            name: "segment roll",
            options: small(4, 4096),
            setup: |wal| {
                for lsn in 1..=20 {
                    wal.append(put(lsn, 500)).unwrap();
                }
            },
            operation: |wal| {
                let records = sizes(21, 3000, 4);
                append_all(wal, &records);
                records
            },
        },
        Shape {
            name: "truncate",
            options: small(4, 4096),
            setup: |wal| {
                for lsn in 1..=60 {
                    wal.append(put(lsn, 700)).unwrap();
                }
            },
            operation: |wal| {
                let cut = wal.segments()[2].first_lsn;
                let _ = wal.truncate_before(cut);
                let records = sizes(61, 50, 2);
                append_all(wal, &records);
                records
            },
        },
        Shape {
            name: "pad policy in direct mode",
            options: WalOptions {
                direct_io: true,
                dwb_mode: DwbMode::Direct,
                tail_protection: TailProtection::Pad,
                ..small(4, 4096)
            },
            setup: |wal| {
                for lsn in 1..=4 {
                    wal.append(put(lsn, 900)).unwrap();
                }
            },
            operation: |wal| {
                let records = sizes(5, 900, 6);
                append_all(wal, &records);
                records
            },
        },
    ]
}

/// Runs the shape's setup and returns the environment and the mutation count after it.
fn prepared(shape: &Shape) -> (Env, u64) {
    let env = Env::sim();
    {
        let wal = env.open(shape.options).unwrap();
        (shape.setup)(&wal);
        wal.close().unwrap();
    }
    let sim = env.sim.clone().unwrap();
    // Opening again is part of the prepared state: crash points count from here.
    (env, sim.mutation_count())
}

fn check_after_crash(
    shape: &Shape,
    env: &Env,
    acked: u64,
    attempted: &[(u64, usize)],
    label: &str,
) {
    let wal = env
        .open(shape.options)
        .unwrap_or_else(|e| panic!("{}: {label}: recovery failed: {e}", shape.name));
    let records = replay_all(&wal);
    let first = records.first().map_or(1, |r| r.0);
    for (i, (lsn, bytes)) in records.iter().enumerate() {
        assert_eq!(
            *lsn,
            first + i as u64,
            "{}: {label}: LSNs not contiguous",
            shape.name
        );
        let len = if *lsn <= acked {
            None
        } else {
            attempted.iter().find(|a| a.0 == *lsn).map(|a| a.1)
        };
        match len {
            Some(len) => assert!(
                bytes == &payload(*lsn, len),
                "{}: {label}: LSN {lsn} torn",
                shape.name
            ),
            None if *lsn <= acked => {}
            None => panic!("{}: {label}: LSN {lsn} was never appended", shape.name),
        }
    }
    let last = records.last().map_or(0, |r| r.0);
    assert!(
        last >= acked,
        "{}: {label}: acknowledged LSN {acked} lost (log ends at {last})",
        shape.name
    );
    let next = wal.append(put(last + 1, 10)).unwrap();
    assert_eq!(next, last + 1, "{}: {label}", shape.name);
}

fn every_crash_point(shape: &Shape) {
    // How many I/O steps the operation takes (open + operation + close).
    let (env, base) = prepared(shape);
    let acked = {
        let wal = env.open(shape.options).unwrap();
        let acked = wal.last_lsn();
        (shape.operation)(&wal);
        wal.close().unwrap();
        acked
    };
    let steps = env.sim.as_ref().unwrap().mutation_count() - base;
    assert!(steps > 3, "{}: only {steps} steps", shape.name);
    let mut crashes = 0;
    for step in 1..=steps + 1 {
        let mut policies = vec![TearPolicy::KeepOld, TearPolicy::KeepNew];
        policies.extend([TearPolicy::Random; 8]);
        for (variant, policy) in policies.into_iter().enumerate() {
            let (env, base) = prepared(shape);
            let sim = env.sim.clone().unwrap();
            sim.set_plan(FaultPlan {
                crash_at: Some(base + step),
                ..FaultPlan::default()
            });
            let attempted = match env.open(shape.options) {
                Ok(wal) => {
                    let attempted = (shape.operation)(&wal);
                    drop(wal);
                    attempted
                }
                Err(_) => Vec::new(),
            };
            if !sim.is_powered_off() {
                sim.power_off();
            } else {
                crashes += 1;
            }
            sim.crash(&mut SimRng::new(step * 31 + variant as u64), policy);
            let label = format!("crash at step {step}/{steps}, {policy:?} #{variant}");
            check_after_crash(shape, &env, acked, &attempted, &label);
        }
    }
    eprintln!(
        "{}: {steps} steps × 10 tear patterns, {crashes} crashes",
        shape.name
    );
    assert!(
        crashes as u64 >= steps * 10,
        "{}: every step must be a crash",
        shape.name
    );
}

#[test]
fn every_crash_point_of_a_single_append() {
    every_crash_point(&shapes()[0]);
}

#[test]
fn every_crash_point_of_a_batch_larger_than_the_ring() {
    every_crash_point(&shapes()[1]);
}

#[test]
fn every_crash_point_of_a_record_larger_than_a_slot() {
    every_crash_point(&shapes()[2]);
}

#[test]
fn every_crash_point_of_a_segment_roll() {
    every_crash_point(&shapes()[3]);
}

#[test]
fn every_crash_point_of_a_truncation() {
    every_crash_point(&shapes()[4]);
}

#[test]
fn every_crash_point_of_a_padded_direct_commit() {
    every_crash_point(&shapes()[5]);
}
