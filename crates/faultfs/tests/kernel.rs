//! What the kernel does between a program and faultfs: each test mounts a faultfs and
//! checks one behaviour the crash simulator's FUSE runs rely on (or one way the kernel
//! differs from the simulated disk). Every test prints `SKIPPED: <reason>` and passes
//! when FUSE is unavailable.
#![cfg(target_os = "linux")]

use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use doublewrite::align::AlignedBuf;
use doublewrite::io::{OpenOptions, StdVfs, Vfs};
use faultfs::{CrashMode, FaultFs, Options};

struct Mounted {
    fs: Option<FaultFs>,
    root: PathBuf,
    mnt: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(fs) = self.fs.take() {
            fs.unmount().expect("unmount");
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Mounted {
    fn fs(&self) -> &FaultFs {
        self.fs.as_ref().expect("mounted")
    }
    fn path(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }
    fn sync_root(&self) {
        std::fs::File::open(&self.mnt).unwrap().sync_all().unwrap();
    }
}

/// Written straight to stderr so it shows without `--nocapture`.
fn say(what: &str) {
    let _ = writeln!(io::stderr(), "{what}");
}

/// Whether FUSE works here, probed once per test binary.
fn available() -> Result<(), String> {
    static PROBE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    PROBE
        .get_or_init(|| faultfs::probe(&std::env::temp_dir()))
        .clone()
}

fn mount(name: &str, options: Options) -> Option<Mounted> {
    let scratch = std::env::temp_dir();
    if let Err(reason) = available() {
        say(&format!("SKIPPED: {reason}"));
        return None;
    }
    let root = scratch.join(format!("faultfs-kernel-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mnt = root.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let fs = FaultFs::mount(&root.join("backing"), &mnt, options).expect("mount");
    Some(Mounted {
        fs: Some(fs),
        root,
        mnt,
    })
}

fn open_rw(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap()
}

#[test]
fn fsync_and_fdatasync_reach_the_file_system_close_does_not() {
    let Some(m) = mount("syncs", Options::default()) else {
        return;
    };
    let control = m.fs().control();
    let f = open_rw(&m.path("a"));
    f.write_all_at(&[1; 4096], 0).unwrap();
    assert_eq!(control.unsynced().sectors, 8);
    f.sync_data().unwrap();
    assert_eq!(control.stats().file_syncs, 1);
    assert_eq!(control.unsynced().sectors, 0);
    f.write_all_at(&[2; 512], 0).unwrap();
    f.sync_all().unwrap();
    assert_eq!(control.stats().file_syncs, 2);
    f.write_all_at(&[3; 512], 512).unwrap();
    drop(f); // close(): FUSE_FLUSH, which is not a sync
    assert_eq!(control.unsynced().sectors, 1, "close() synced");
    assert_eq!(
        control.unsynced().entries,
        1,
        "the creation is not durable yet"
    );
    m.sync_root();
    assert_eq!(control.stats().dir_syncs, 1);
    assert_eq!(control.unsynced().entries, 0);
}

#[test]
fn flock_is_exclusive_per_open_file_description() {
    let Some(m) = mount("flock", Options::default()) else {
        return;
    };
    let vfs = StdVfs;
    let a = vfs
        .open(&m.path("LOCK"), OpenOptions::create_new())
        .unwrap();
    let b = vfs
        .open(&m.path("LOCK"), OpenOptions::read_write())
        .unwrap();
    assert!(a.try_lock_exclusive().unwrap());
    assert!(!b.try_lock_exclusive().unwrap(), "two holders of one flock");
    drop(a);
    assert!(b.try_lock_exclusive().unwrap());
}

#[test]
fn direct_io_works_unaligned_is_refused_and_no_alignment_is_reported() {
    let Some(m) = mount("direct", Options::default()) else {
        return;
    };
    let vfs = StdVfs;
    let f = vfs
        .open(&m.path("d"), OpenOptions::create_new().with_direct(true))
        .expect("O_DIRECT open through FUSE");
    // The kernel reports no direct-I/O alignment for FUSE files (no STATX_DIOALIGN):
    // the WAL then assumes 4096, which faultfs enforces here.
    say(&format!(
        "statx direct-I/O alignment on FUSE: {:?}",
        f.direct_io_alignment()
    ));
    let mut buf = AlignedBuf::new(8192, 4096);
    buf.resize_zeroed(8192);
    assert_eq!(f.write_at(buf.as_slice(), 0).unwrap(), 8192);
    let err = f.write_at(&buf.as_slice()[..100], 0).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    assert_eq!(m.fs().control().stats().misaligned_direct_io, 1);
    drop(f);
    drop(m);
    let Some(m) = mount(
        "direct-refused",
        Options {
            refuse_direct_io: true,
            ..Options::default()
        },
    ) else {
        return;
    };
    let err = vfs
        .open(&m.path("d"), OpenOptions::create_new().with_direct(true))
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}");
}

/// One `pwrite` larger than the kernel's FUSE request size arrives as several writes:
/// each is its own operation, so a power loss can fall inside one system call (the
/// simulated disk counts one `write_at` as one operation).
#[test]
fn one_large_write_arrives_in_several_requests() {
    let Some(m) = mount("split", Options::default()) else {
        return;
    };
    let control = m.fs().control();
    let f = open_rw(&m.path("big"));
    let before = control.stats().writes;
    let data = vec![7u8; 4 << 20];
    assert_eq!(f.write_at(&data, 0).unwrap(), data.len());
    let requests = control.stats().writes - before;
    say(&format!(
        "one 4 MiB pwrite arrived as {requests} FUSE writes"
    ));
    assert!(requests >= 4, "{requests}");
    // A fault in a later request of such a write is not an error of the call: the
    // kernel returns the bytes done so far (a short write) and the error comes with the
    // next call. A power loss: the retry fails with EIO.
    let at = control.op_count() + 2;
    control.power_loss_at(at);
    let done = f
        .write_at(&data, 4 << 20)
        .expect("short write, not an error");
    say(&format!("power loss in the 2nd request of a 4 MiB pwrite: the call returned {done} (short), not EIO"));
    assert!(done > 0 && done < data.len(), "{done}");
    let err = f
        .write_at(&data[done..], (4 << 20) + done as u64)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(control.is_powered_off());
}

/// ENOSPC in a later request of one large write is a short write too; a one-shot ENOSPC
/// (as the simulator and faultfs inject it) then disappears in the caller's retry loop.
#[test]
fn enospc_inside_one_large_write_is_a_short_write() {
    let Some(m) = mount("split-enospc", Options::default()) else {
        return;
    };
    let control = m.fs().control();
    let f = open_rw(&m.path("big"));
    let data = vec![7u8; 4 << 20];
    control.no_space_at_nth_write(2);
    let done = f.write_at(&data, 0).expect("short write, not ENOSPC");
    assert!(done > 0 && done < data.len(), "{done}");
    say(&format!(
        "ENOSPC in the 2nd request of a 4 MiB pwrite: the call returned {done} (short), not ENOSPC"
    ));
    assert_eq!(control.stats().no_space_errors, 1);
    // doublewrite's write_all_at retries the rest, which now fits.
    doublewrite::io::write_all_at(
        StdVfs
            .open(&m.path("big"), OpenOptions::read_write())
            .unwrap()
            .as_ref(),
        &data[done..],
        done as u64,
    )
    .unwrap();
}

fn stale_reads(page_cache: bool) -> Option<(bool, Vec<u8>)> {
    let m = mount(
        if page_cache { "stale-cached" } else { "stale" },
        Options {
            kernel_page_cache: page_cache,
            ..Options::default()
        },
    )?;
    let control = m.fs().control();
    let f = open_rw(&m.path("s"));
    f.write_all_at(&[0xAA; 8192], 0).unwrap();
    f.sync_data().unwrap();
    m.sync_root();
    f.write_all_at(&[0xBB; 8192], 0).unwrap();
    let mut buf = vec![0u8; 8192];
    f.read_exact_at(&mut buf, 0).unwrap(); // fills the page cache, if there is one
    assert_eq!(buf, vec![0xBB; 8192]);
    control.crash(1, CrashMode::DropAll).unwrap();
    // The old descriptor: the process that held it would be dead.
    let old_handle_failed = f.read_exact_at(&mut buf, 0).is_err();
    drop(f);
    // A fresh open sees the disk after the crash.
    let mut fresh = vec![0u8; 8192];
    std::fs::File::open(m.path("s"))
        .unwrap()
        .read_exact_at(&mut fresh, 0)
        .unwrap();
    Some((old_handle_failed, fresh))
}

#[test]
fn after_a_crash_old_handles_fail_and_reopening_reads_the_settled_disk() {
    let Some((old_failed, fresh)) = stale_reads(false) else {
        return;
    };
    assert!(old_failed, "a handle from before the crash still read");
    assert_eq!(fresh, vec![0xAA; 8192], "stale data after the crash");
}

/// With the kernel page cache on, a read through a descriptor from before the crash is
/// served from the cache without reaching faultfs: it returns pre-crash bytes instead of
/// failing. A fresh open invalidates the cache (no `FOPEN_KEEP_CACHE`), so recovery,
/// which reopens everything, reads the settled disk.
#[test]
fn with_the_page_cache_old_handles_read_stale_bytes_but_reopening_is_fresh() {
    let Some((old_failed, fresh)) = stale_reads(true) else {
        return;
    };
    say(&format!(
        "page cache on: a read through a pre-crash descriptor {}",
        if old_failed {
            "failed"
        } else {
            "succeeded from the kernel's cache"
        }
    ));
    assert_eq!(fresh, vec![0xAA; 8192], "stale data after reopening");
}

#[test]
fn enospc_and_failed_syncs_reach_the_caller() {
    let Some(m) = mount("errors", Options::default()) else {
        return;
    };
    let control = m.fs().control();
    let f = open_rw(&m.path("e"));
    control.no_space_at_nth_write(1);
    let err = f.write_at(&[1; 8192], 0).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::StorageFull, "{err}");
    assert_eq!(f.metadata().unwrap().len(), 4096, "a prefix was applied");
    control.fail_nth_sync(1);
    let err = f.sync_data().unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // Nothing in the kernel latches the error: the next fsync reaches faultfs and
    // succeeds (faultfs keeps the data unsynced after a failed sync, as the simulator).
    f.sync_data().unwrap();
    assert_eq!(control.unsynced().sectors, 0);
}

#[test]
fn unsynced_creations_renames_and_unlinks_are_undone_by_a_crash() {
    let Some(m) = mount("entries", Options::default()) else {
        return;
    };
    let control = m.fs().control();
    std::fs::create_dir(m.path("wal")).unwrap();
    let seg = m.path("wal/seg");
    let f = open_rw(&m.path("wal/seg.tmp"));
    f.write_all_at(b"segment", 0).unwrap();
    f.sync_data().unwrap();
    drop(f);
    std::fs::File::open(m.path("wal"))
        .unwrap()
        .sync_all()
        .unwrap();
    std::fs::rename(m.path("wal/seg.tmp"), &seg).unwrap();
    std::fs::write(m.path("wal/new"), b"x").unwrap();
    control.crash(0, CrashMode::DropAll).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(m.path("wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["seg.tmp"]);
    assert_eq!(std::fs::read(m.path("wal/seg.tmp")).unwrap(), b"segment");
    // Many entries: readdir pages through them.
    for i in 0..600 {
        std::fs::write(m.path(&format!("wal/f{i:04}")), b"").unwrap();
    }
    assert_eq!(std::fs::read_dir(m.path("wal")).unwrap().count(), 601);
    control.crash(0, CrashMode::KeepAll).unwrap();
    assert_eq!(std::fs::read_dir(m.path("wal")).unwrap().count(), 601);
}
