//! Commits into a segment none of whose pages are in the page cache never make the kernel
//! read a page back from the device. Spares are zero-filled past the page cache, so a
//! buffered write that covered only part of a page would first have to read the rest of
//! it, synchronously, inside the commit; the writer writes whole pages instead.
//!
//! Its own test binary: `/proc/self/io` counts the reads of the whole process.
#![cfg(target_os = "linux")]

use std::path::Path;
use std::time::{Duration, Instant};

use doublewrite::io::{OpenOptions, StdVfs, Vfs};
use doublewrite::wal::segment::SPARE_NAME;
use doublewrite::{RecordInput, RecordType, Wal, WalOptions};

/// Bytes this process has caused to be fetched from storage (`read_bytes`).
fn device_read_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("read_bytes: "))
        .and_then(|n| n.trim().parse().ok())
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
    assert_eq!(read, 0, "commits read {read} bytes back from the device");
    wal.close().unwrap();
}
