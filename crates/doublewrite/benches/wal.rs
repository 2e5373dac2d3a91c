//! `cargo bench -p doublewrite` — durable commits/s of the core, next to the device limit
//! measured in the same run (write + fdatasync on one preallocated file; the two-file
//! cycle a DWB commit needs). Prints a Markdown table; timings are the median of
//! `DW_BENCH_RUNS` runs (default 3) of `DW_BENCH_SECONDS` each (default 2), with the
//! spread (max − min) / median. `DW_BENCH_DIR` picks the directory (default: a temp dir;
//! it must be on a real disk, not tmpfs).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use doublewrite::{DwbMode, RecordInput, RecordType, TailProtection, Wal, WalOptions};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Row {
    name: String,
    records_per_s: Vec<f64>,
    commits_per_s: Vec<f64>,
    note: String,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn spread(values: &[f64]) -> f64 {
    let max = values.iter().cloned().fold(f64::MIN, f64::max);
    let min = values.iter().cloned().fold(f64::MAX, f64::min);
    (max - min) / median(values)
}

/// A file of `len` bytes whose blocks are all written (so overwrites allocate nothing).
fn preallocated(path: &Path, len: usize) -> File {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all_at(&vec![0u8; len], 0).unwrap();
    f.sync_all().unwrap();
    f
}

/// Device limit: write 4 KiB + fdatasync in a loop; one file or the two-file cycle.
fn device_limit(dir: &Path, files: usize, seconds: f64) -> (f64, f64) {
    let paths: Vec<PathBuf> = (0..files).map(|i| dir.join(format!("limit-{i}"))).collect();
    let handles: Vec<File> = paths.iter().map(|p| preallocated(p, 64 << 20)).collect();
    let block = vec![0x5Au8; 4096];
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut cycles = 0u64;
    let started = Instant::now();
    while Instant::now() < deadline {
        for f in &handles {
            f.write_all_at(&block, (cycles % 16_000) * 4096).unwrap();
            f.sync_data().unwrap();
        }
        cycles += 1;
    }
    let rate = cycles as f64 / started.elapsed().as_secs_f64();
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
    (rate, rate)
}

fn open_wal(dir: &Path, options: WalOptions) -> Wal {
    let _ = std::fs::remove_dir_all(dir);
    Wal::open(dir, options).unwrap()
}

/// One writer awaiting each commit of `batch` records.
fn one_writer(
    dir: &Path,
    options: WalOptions,
    batch: usize,
    size: usize,
    seconds: f64,
) -> (f64, f64) {
    let wal = open_wal(dir, options);
    let payload = vec![0xA7u8; size];
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut commits = 0u64;
    while Instant::now() < deadline {
        let records = (0..batch)
            .map(|_| RecordInput::new(RecordType::PUT, payload.clone()))
            .collect();
        wal.append_batch(records).unwrap();
        commits += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(wal.stats().unprotected_records, 0);
    wal.close().unwrap();
    (commits as f64 * batch as f64 / secs, commits as f64 / secs)
}

/// `threads` appenders, each awaiting its own single-record appends (group commit).
fn concurrent(
    dir: &Path,
    options: WalOptions,
    threads: usize,
    size: usize,
    seconds: f64,
) -> (f64, f64) {
    let wal = Arc::new(open_wal(dir, options));
    let stop = Arc::new(AtomicBool::new(false));
    let appended = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (wal, stop, appended) = (wal.clone(), stop.clone(), appended.clone());
            std::thread::spawn(move || {
                let payload = vec![0x3Cu8; size];
                while !stop.load(Ordering::Relaxed) {
                    wal.append(RecordInput::new(RecordType::PUT, payload.clone()))
                        .unwrap();
                    appended.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let stats = wal.stats();
    assert_eq!(stats.unprotected_records, 0);
    wal.close().unwrap();
    (
        appended.load(Ordering::Relaxed) as f64 / secs,
        stats.commits as f64 / secs,
    )
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let runs: usize = env_or("DW_BENCH_RUNS", 3);
    let seconds: f64 = env_or("DW_BENCH_SECONDS", 2.0);
    let tmp =
        tempfile::tempdir_in(std::env::var("DW_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
            .unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let dir = tmp.path();
    let mirror = WalOptions {
        segment_size_bytes: 256 << 20,
        ..WalOptions::default()
    };
    let pad = WalOptions {
        tail_protection: TailProtection::Pad,
        ..mirror
    };
    let direct = WalOptions {
        dwb_mode: DwbMode::Direct,
        ..mirror
    };
    type Case<'a> = (&'a str, Box<dyn Fn() -> (f64, f64) + 'a>, &'a str);
    let wal_dir = dir.join("wal");
    let cases: Vec<Case> = vec![
        (
            "device: write+fdatasync, 1 file",
            Box::new(|| device_limit(dir, 1, seconds)),
            "4 KiB overwrite",
        ),
        (
            "device: two-file cycle",
            Box::new(|| device_limit(dir, 2, seconds)),
            "cycles/s",
        ),
        (
            "mirror, 1 writer, 128 B",
            Box::new(|| one_writer(&wal_dir, mirror, 1, 128, seconds)),
            "",
        ),
        (
            "pad, 1 writer, 128 B",
            Box::new(|| one_writer(&wal_dir, pad, 1, 128, seconds)),
            "",
        ),
        (
            "mirror+direct DWB, 1 writer, 128 B",
            Box::new(|| one_writer(&wal_dir, direct, 1, 128, seconds)),
            "",
        ),
        (
            "mirror, batches of 64, 128 B",
            Box::new(|| one_writer(&wal_dir, mirror, 64, 128, seconds)),
            "",
        ),
        (
            "pad, batches of 64, 128 B",
            Box::new(|| one_writer(&wal_dir, pad, 64, 128, seconds)),
            "",
        ),
        (
            "mirror, 64 threads, 128 B",
            Box::new(|| concurrent(&wal_dir, mirror, 64, 128, seconds)),
            "",
        ),
        (
            "pad, 64 threads, 128 B",
            Box::new(|| concurrent(&wal_dir, pad, 64, 128, seconds)),
            "",
        ),
        (
            "mirror, batches of 64, 4 KiB",
            Box::new(|| one_writer(&wal_dir, mirror, 64, 4096, seconds)),
            "",
        ),
    ];
    let mut rows: Vec<Row> = cases
        .iter()
        .map(|(name, _, note)| Row {
            name: name.to_string(),
            records_per_s: vec![],
            commits_per_s: vec![],
            note: note.to_string(),
        })
        .collect();
    // Runs are interleaved so that noise spreads over every row alike.
    for _ in 0..runs {
        for (row, (_, run, _)) in rows.iter_mut().zip(&cases) {
            let (records, commits) = run();
            row.records_per_s.push(records);
            row.commits_per_s.push(commits);
        }
    }
    println!("| case | records/s | commits/s | spread | note |");
    println!("|---|---:|---:|---:|---|");
    for row in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.0}% | {} |",
            row.name,
            median(&row.records_per_s),
            median(&row.commits_per_s),
            spread(&row.records_per_s) * 100.0,
            row.note
        );
    }
}
