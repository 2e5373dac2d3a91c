//! `crash-sim --cases N [--seed S] [--threads T] [--weaken NAME] [--disk KIND]`
//!
//! Runs N seeded crash cases (seeds S, S+1, …) and ends with one line:
//! `crash-sim: N cases, C crashes, R repairs, V violations`. Exits 1 when V > 0.
//! A failing case prints its seed and the command that replays it. `--disk fuse` runs
//! the cases through the kernel on faultfs (Linux; root or fusermount3); when FUSE is
//! unavailable it prints `crash-sim: SKIPPED: <reason>` and exits 77 (the automake
//! convention for a skipped test), so a CI script can accept that and nothing else.

use std::process::ExitCode;
use std::time::Instant;

use doublewrite_crash_sim::{fuse_available, parse_weakness, run_many_on, DiskKind, WEAKNESSES};

const USAGE: &str =
    "usage: crash-sim [--cases N] [--seed S] [--threads T] [--weaken NAME] [--disk KIND]
  --cases N      number of cases (default 1000)
  --seed S       seed of the first case (default 1); case i uses seed S+i
  --threads T    worker threads (default: available cores)
  --weaken NAME  run a deliberately broken configuration (the checker must find violations):
                 no-dwb | lookup-by-damaged-header | no-repair-write-back | batch-exceeds-ring |
                 unguarded-overlap
  --disk KIND    sim (default): the simulated disk;
                 fuse: faultfs, a FUSE file system with the same fault model, through the kernel
                       (Linux, root or fusermount3; one mount per case);
                 fuse-cached: the same with the kernel page cache serving reads;
                 fuse-fsyncgate: fuse, but a failed fsync loses its data like Linux after a
                       writeback error (beyond the documented fault model: expect violations)
                 An unavailable FUSE disk prints SKIPPED: <reason> and exits 77.";

/// Exit code when the requested disk is unavailable here.
const SKIPPED: u8 = 77;

fn main() -> ExitCode {
    let mut cases = 1000u64;
    let mut seed = 1u64;
    let mut threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut weakness = None;
    let mut disk = DiskKind::Sim;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next().unwrap_or_else(|| {
                eprintln!("{name} needs a value\n{USAGE}");
                std::process::exit(2);
            })
        };
        let parsed = match arg.as_str() {
            "--cases" => value("--cases").parse().map(|v| cases = v).is_ok(),
            "--seed" => value("--seed").parse().map(|v| seed = v).is_ok(),
            "--threads" => value("--threads").parse().map(|v| threads = v).is_ok(),
            "--weaken" => {
                let name = value("--weaken");
                weakness = parse_weakness(&name);
                if weakness.is_none() {
                    eprintln!("unknown weakness {name:?}; one of {WEAKNESSES:?}");
                }
                weakness.is_some()
            }
            "--disk" => {
                let name = value("--disk");
                DiskKind::parse(&name).map(|d| disk = d).is_some()
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => false,
        };
        if !parsed {
            eprintln!("bad argument {arg:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    if disk.is_fuse() {
        if let Err(reason) = fuse_available() {
            eprintln!(
                "crash-sim: SKIPPED: --disk {} is unavailable here: {reason}",
                disk.name()
            );
            return ExitCode::from(SKIPPED);
        }
    }
    let started = Instant::now();
    let summary = run_many_on(disk, seed, cases, threads, weakness);
    for (case_seed, violation) in summary.failing_seeds.iter().take(20) {
        eprintln!("VIOLATION seed {case_seed}: {violation}");
        eprintln!(
            "  replay: npm run crash-sim -- --seed {case_seed} --cases 1{}{}",
            weakness_flag(weakness),
            disk_flag(disk)
        );
    }
    if summary.failing_seeds.len() > 20 {
        eprintln!(
            "… and {} more failing seeds",
            summary.failing_seeds.len() - 20
        );
    }
    if disk.is_fuse() {
        eprintln!("disk: {} (faultfs through the kernel)", disk.name());
        for (name, value) in &summary.disk_counters {
            eprintln!("  {name}: {value}");
        }
    }
    eprintln!(
        "{} recoveries, {} acknowledged records checked, {:.1} s",
        summary.recoveries,
        summary.acknowledged,
        started.elapsed().as_secs_f64()
    );
    println!("{}", summary.line());
    if summary.violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn disk_flag(disk: DiskKind) -> String {
    match disk {
        DiskKind::Sim => String::new(),
        other => format!(" --disk {}", other.name()),
    }
}

fn weakness_flag(weakness: Option<doublewrite::wal::Weakness>) -> String {
    use doublewrite::wal::Weakness;
    match weakness {
        None => String::new(),
        Some(w) => {
            let name = match w {
                Weakness::NoDwb => "no-dwb",
                Weakness::LookupByDamagedHeader => "lookup-by-damaged-header",
                Weakness::NoRepairWriteBack => "no-repair-write-back",
                Weakness::ReferenceMirroring => "batch-exceeds-ring",
                Weakness::UnguardedOverlap => "unguarded-overlap",
            };
            format!(" --weaken {name}")
        }
    }
}
