//! Commits into a segment none of whose pages are in the page cache never make the kernel
//! read a page back from the device. Spares are zero-filled past the page cache, so a
//! buffered write that covered only part of a page would first have to read the rest of
//! it, synchronously, inside the commit; the writer writes whole pages instead.
//!
//! Synced pages the writer will not touch again leave the page cache, so a log that keeps
//! growing does not fill memory with pages nothing reads.
//!
//! Its own test binary: `/proc/self/io` counts the reads of the whole process (the tests
//! take turns, see `ONE_AT_A_TIME`).
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use doublewrite::io::{OpenOptions, StdVfs, Vfs};
use doublewrite::wal::segment::SPARE_NAME;
use doublewrite::{RecordInput, RecordType, Wal, WalOptions};

/// The tests of this binary run one at a time: each measures the whole process.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Bytes this process has caused to be fetched from storage (`read_bytes`).
fn device_read_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("read_bytes: "))
        .and_then(|n| n.trim().parse().ok())
}

/// Each live thread's name and `read_bytes`, for a failure's message: which thread read.
/// (A thread that ended has no entry left; its reads count in the process's total only.)
fn reads_by_thread() -> String {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return "no /proc/self/task".into();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let read = std::fs::read_to_string(path.join("io"))
            .ok()
            .and_then(|io| {
                io.lines()
                    .find_map(|line| line.strip_prefix("read_bytes: "))
                    .map(|n| n.trim().to_string())
            })
            .unwrap_or_else(|| "?".into());
        out.push(format!("{} {read}", name.trim()));
    }
    out.join(", ")
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn record(n: u64, len: usize) -> RecordInput {
    RecordInput::new(RecordType::PUT, vec![(n % 251) as u8 + 1; len])
}

#[test]
fn commits_into_an_uncached_spare_read_nothing_back() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(_) = device_read_bytes() else {
        eprintln!("skipped: no /proc/self/io (task I/O accounting is off)");
        return;
    };
    // Under target/, on the disk of the checkout: `/tmp` may be tmpfs, which reads nothing.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().join("wal");
    let options = WalOptions {
        prepare_segments: true,
        segment_size_bytes: 1 << 20,
        ..WalOptions::default()
    };
    let wal = Wal::open(&dir, options).unwrap();
    let spare = dir.join(SPARE_NAME);
    wait_for(&spare);
    // Whatever way the spare was written, none of its pages is cached now.
    let file = StdVfs.open(&spare, OpenOptions::read_only()).unwrap();
    file.drop_cache(0, file.len().unwrap()).unwrap();
    drop(file);

    let mut n = 0;
    while wal.stats().segment_rolls == 0 {
        n += 1;
        wal.append(record(n, 3000)).unwrap();
    }
    // The roll started the next spare; it appears once written, so whatever the file
    // system read to allocate it is counted before the window.
    wait_for(&spare);
    // In the adopted spare now. 3000-byte records end every commit part-way into a page
    // the commit is the first to touch.
    let before = device_read_bytes().unwrap();
    for _ in 0..150 {
        n += 1;
        wal.append(record(n, 3000)).unwrap();
    }
    let read = device_read_bytes().unwrap() - before;
    assert_eq!(
        wal.stats().segment_rolls,
        1,
        "the commits stayed in the spare"
    );
    assert_eq!(
        read,
        0,
        "commits read {read} bytes back from the device (by thread: {})",
        reads_by_thread()
    );
    wal.close().unwrap();
}

/// Bytes of `file` in the page cache (util-linux `fincore`), or `None` without it.
fn cached_bytes(file: &Path) -> Option<u64> {
    let out = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--raw", "--output", "RES"])
        .arg(file)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

/// The segment the WAL appends to: the one with the highest first LSN.
fn newest_segment(dir: &Path) -> PathBuf {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("wal-") && n.ends_with(".seg"))
        .collect();
    names.sort();
    dir.join(names.last().expect("a segment"))
}

#[test]
fn synced_pages_behind_the_tail_leave_the_page_cache() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = tmp.path().join("wal");
    let options = WalOptions {
        segment_size_bytes: 16 << 20,
        ..WalOptions::default()
    };
    let wal = Wal::open(&dir, options).unwrap();
    let segment = newest_segment(&dir);
    let Some(_) = cached_bytes(&segment) else {
        eprintln!("skipped: no fincore (util-linux) to count cached pages");
        return;
    };
    // However the segment was created, none of its pages is cached now.
    let file = StdVfs.open(&segment, OpenOptions::read_only()).unwrap();
    file.drop_cache(0, file.len().unwrap()).unwrap();
    drop(file);
    // 8 MiB through the page cache in commits of 3000-byte records, each ending part-way
    // into a page (the page the next commit writes into, which must stay).
    let before = device_read_bytes();
    for n in 0..2800 {
        wal.append(record(n, 3000)).unwrap();
    }
    assert_eq!(
        wal.stats().segment_rolls,
        0,
        "the commits stayed in one segment"
    );
    let cached = cached_bytes(&segment).unwrap();
    assert!(
        cached <= 512 * 1024,
        "{cached} bytes of the segment are still cached after 8 MiB of synced commits"
    );
    if let (Some(before), Some(after)) = (before, device_read_bytes()) {
        assert_eq!(
            after - before,
            0,
            "commits read pages back from the device (by thread: {})",
            reads_by_thread()
        );
    }
    // What was released reads back from the device, whole.
    let records: Vec<_> = wal.replay(0, None).unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(records.len(), 2800);
    for (n, r) in records.iter().enumerate() {
        assert_eq!(r.payload(), vec![(n % 251) as u8 + 1; 3000].as_slice());
    }
    wal.close().unwrap();
}
