//! The model without a mount: overlay, syncs, crash modes, directory entries, plans.

use super::*;

struct Fixture {
    _dir: TempDir,
    backing: PathBuf,
    state: State,
}

/// A scratch directory removed on drop (no tempfile dependency).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn fixture(name: &str) -> Fixture {
    let root = std::env::temp_dir().join(format!("faultfs-unit-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let backing = root.join("backing");
    let state = State::new(&backing, Options::default()).unwrap();
    Fixture {
        _dir: TempDir(root),
        backing: backing.canonicalize().unwrap(),
        state,
    }
}

const WRONLY_CREATE: i32 = libc::O_RDWR | libc::O_CREAT;

fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn read_all(state: &mut State, ino: u64, fh: u64) -> Vec<u8> {
    state.read(ino, fh, 0, 1 << 20).unwrap()
}

#[test]
fn reads_see_the_overlay_and_sync_moves_it_to_the_backing_file() {
    let mut f = fixture("overlay");
    let (attr, fh) = f.state.create(ROOT, name("a"), WRONLY_CREATE).unwrap();
    f.state.write(attr.ino, fh, 0, &[1u8; 1000]).unwrap();
    f.state.write(attr.ino, fh, 700, &[2u8; 100]).unwrap();
    let mut expected = vec![1u8; 1000];
    expected[700..800].fill(2);
    assert_eq!(read_all(&mut f.state, attr.ino, fh), expected);
    assert_eq!(f.state.unsynced().sectors, 2);
    assert!(
        !f.backing.join("a").exists(),
        "an unsynced creation reached the backing tree"
    );
    f.state.fsync(attr.ino, fh).unwrap();
    assert_eq!(
        fs::read(f.backing.join(STORE_NAME).join(attr.ino.to_string())).unwrap(),
        expected
    );
    let dfh = f.state.opendir(ROOT).unwrap();
    f.state.fsyncdir(ROOT, dfh).unwrap();
    assert_eq!(fs::read(f.backing.join("a")).unwrap(), expected);
    assert_eq!(f.state.unsynced(), Unsynced::default());
}

#[test]
fn drop_all_loses_unsynced_writes_and_entries_keep_all_keeps_them() {
    for (mode, survives) in [(CrashMode::DropAll, false), (CrashMode::KeepAll, true)] {
        let mut f = fixture(&format!("dropkeep-{survives}"));
        let (a, fh) = f.state.create(ROOT, name("a"), WRONLY_CREATE).unwrap();
        f.state.write(a.ino, fh, 0, &[7u8; 4096]).unwrap();
        f.state.fsync(a.ino, fh).unwrap();
        let dfh = f.state.opendir(ROOT).unwrap();
        f.state.fsyncdir(ROOT, dfh).unwrap();
        f.state.write(a.ino, fh, 512, &[9u8; 1024]).unwrap();
        f.state.write(a.ino, fh, 4096, &[9u8; 512]).unwrap(); // extends
        let (b, _) = f.state.create(ROOT, name("b"), WRONLY_CREATE).unwrap();
        f.state.crash(5, mode).unwrap();
        let after = fs::read(f.backing.join("a")).unwrap();
        let mut expected = vec![7u8; 4096];
        if survives {
            expected[512..1536].fill(9);
            expected.extend_from_slice(&[9u8; 512]);
        }
        assert_eq!(after, expected, "{mode:?}");
        assert_eq!(f.backing.join("b").exists(), survives, "{mode:?}");
        assert_eq!(f.state.lookup(ROOT, name("b")).is_ok(), survives);
        let _ = b;
    }
}

#[test]
fn torn_4096_keeps_each_block_whole_torn_512_never_garbles() {
    let mut f = fixture("torn");
    let (a, fh) = f.state.create(ROOT, name("a"), WRONLY_CREATE).unwrap();
    f.state
        .write(a.ino, fh, 0, &vec![0x11u8; 64 * 1024])
        .unwrap();
    f.state.fsync(a.ino, fh).unwrap();
    let dfh = f.state.opendir(ROOT).unwrap();
    f.state.fsyncdir(ROOT, dfh).unwrap();
    let mut mixed_blocks = 0;
    for seed in 0..20 {
        for mode in [CrashMode::Torn4096, CrashMode::Torn512] {
            let fh = f.state.open(a.ino, libc::O_RDWR).unwrap();
            f.state
                .write(a.ino, fh, 0, &vec![0x22u8; 64 * 1024])
                .unwrap();
            f.state.crash(seed, mode).unwrap();
            let after = fs::read(f.backing.join("a")).unwrap();
            assert!(
                after.iter().all(|&b| b == 0x11 || b == 0x22),
                "{mode:?} garbled"
            );
            for block in after.chunks(4096) {
                let mixed = block.chunks(512).any(|s| s[0] != block[0]);
                if mode == CrashMode::Torn4096 {
                    assert!(!mixed, "torn4096 tore inside a 4096-byte block");
                } else if mixed {
                    mixed_blocks += 1;
                }
            }
            // Back to all-old for the next round.
            let fh = f.state.open(a.ino, libc::O_RDWR).unwrap();
            f.state
                .write(a.ino, fh, 0, &vec![0x11u8; 64 * 1024])
                .unwrap();
            f.state.fsync(a.ino, fh).unwrap();
        }
    }
    assert!(
        mixed_blocks > 0,
        "torn512 never tore inside a 4096-byte block"
    );
}

#[test]
fn random_mode_produces_every_sector_outcome_and_is_seeded() {
    let run = |seed: u64| {
        let mut f = fixture(&format!("random-{seed}"));
        let (a, fh) = f.state.create(ROOT, name("a"), WRONLY_CREATE).unwrap();
        f.state
            .write(a.ino, fh, 0, &vec![0x11u8; 32 * 1024])
            .unwrap();
        f.state.fsync(a.ino, fh).unwrap();
        let dfh = f.state.opendir(ROOT).unwrap();
        f.state.fsyncdir(ROOT, dfh).unwrap();
        f.state
            .write(a.ino, fh, 0, &vec![0x22u8; 32 * 1024])
            .unwrap();
        let report = f.state.crash(seed, CrashMode::Random).unwrap();
        (report, fs::read(f.backing.join("a")).unwrap())
    };
    let (report, bytes) = run(42);
    assert_eq!(report.unsynced_sectors, 64);
    assert!(report.sectors_old > 0 && report.sectors_new > 0);
    assert!(report.sectors_zeroed > 0 && report.sectors_random > 0);
    assert_eq!(run(42).1, bytes, "same seed, different disk");
    assert_ne!(run(43).1, bytes);
}

#[test]
fn garbage_and_zeros_modes() {
    for mode in [CrashMode::Garbage, CrashMode::Zeros] {
        let mut f = fixture(&format!("garbage-{}", mode.name()));
        let (a, fh) = f.state.create(ROOT, name("a"), WRONLY_CREATE).unwrap();
        f.state.write(a.ino, fh, 0, &[0x11u8; 4096]).unwrap();
        f.state.fsync(a.ino, fh).unwrap();
        let dfh = f.state.opendir(ROOT).unwrap();
        f.state.fsyncdir(ROOT, dfh).unwrap();
        f.state.write(a.ino, fh, 1024, &[0x22u8; 1024]).unwrap();
        f.state.crash(1, mode).unwrap();
        let after = fs::read(f.backing.join("a")).unwrap();
        assert_eq!(&after[..1024], &[0x11u8; 1024][..], "synced sector changed");
        assert_eq!(&after[2048..], &[0x11u8; 2048][..], "synced sector changed");
        let torn = &after[1024..2048];
        match mode {
            CrashMode::Zeros => assert!(torn.iter().all(|&b| b == 0)),
            _ => assert!(torn.iter().filter(|&&b| b == 0x22 || b == 0x11).count() < 64),
        }
    }
}

#[test]
fn handles_from_before_a_crash_fail_and_power_off_fails_everything() {
    let mut f = fixture("handles");
    let (a, fh) = f.state.create(ROOT, name("a"), WRONLY_CREATE).unwrap();
    f.state.power_off();
    assert_eq!(f.state.write(a.ino, fh, 0, b"x"), Err(Errno::EIO));
    assert_eq!(f.state.lookup(ROOT, name("a")).err(), Some(Errno::EIO));
    f.state.crash(0, CrashMode::KeepAll).unwrap();
    assert_eq!(f.state.write(a.ino, fh, 0, b"x"), Err(Errno::EIO));
    assert_eq!(f.state.read(a.ino, fh, 0, 1), Err(Errno::EIO));
    assert_eq!(f.state.fsync(a.ino, fh), Err(Errno::EIO));
    let fresh = f.state.open(a.ino, libc::O_RDWR).unwrap();
    assert_eq!(f.state.write(a.ino, fresh, 0, b"x"), Ok(1));
    f.state.release(fh); // a dead handle's release is harmless
}

#[test]
fn planned_faults_fire_at_their_operation() {
    let mut f = fixture("plan");
    let (a, fh) = f.state.create(ROOT, name("a"), WRONLY_CREATE).unwrap(); // op 1
    f.state.set_plan(FaultPlan {
        fail_sync_at_ops: [3].into_iter().collect(),
        no_space_at_ops: [4].into_iter().collect(),
        power_loss_at_op: Some(6),
        ..FaultPlan::default()
    });
    assert_eq!(f.state.write(a.ino, fh, 0, &[1; 4096]), Ok(4096)); // 2
    assert_eq!(f.state.fsync(a.ino, fh), Err(Errno::EIO)); // 3
    assert_eq!(
        f.state.write(a.ino, fh, 4096, &[2; 4096]),
        Err(Errno::ENOSPC)
    ); // 4
    assert_eq!(
        f.state.getattr(a.ino).unwrap().size,
        4096 + 2048,
        "ENOSPC applies a prefix"
    );
    assert_eq!(f.state.fsync(a.ino, fh), Ok(())); // 5
    assert_eq!(f.state.write(a.ino, fh, 0, &[3; 512]), Err(Errno::EIO)); // 6: power loss
    assert!(f.state.is_powered_off());
    assert_eq!(f.state.stats().ops, 6);
    f.state.crash(1, CrashMode::KeepAll).unwrap();
    // Relative counts.
    let fh = f.state.open(a.ino, libc::O_RDWR).unwrap();
    f.state.set_plan(FaultPlan {
        fail_nth_sync: Some(2),
        no_space_nth_write: Some(3),
        ..FaultPlan::default()
    });
    assert!(f.state.fsync(a.ino, fh).is_ok());
    assert_eq!(f.state.fsync(a.ino, fh), Err(Errno::EIO));
    assert!(f.state.fsync(a.ino, fh).is_ok());
    assert!(f.state.write(a.ino, fh, 0, &[1; 10]).is_ok());
    assert!(f.state.write(a.ino, fh, 0, &[1; 10]).is_ok());
    assert_eq!(f.state.write(a.ino, fh, 0, &[1; 10]), Err(Errno::ENOSPC));
    assert_eq!(f.state.stats().failed_syncs, 2);
    assert_eq!(f.state.stats().no_space_errors, 2);
}

#[test]
fn renames_and_unlinks_are_durable_only_after_a_directory_sync() {
    let mut f = fixture("entries");
    let (a, fh) = f.state.create(ROOT, name("a.tmp"), WRONLY_CREATE).unwrap();
    f.state.write(a.ino, fh, 0, b"segment").unwrap();
    f.state.fsync(a.ino, fh).unwrap();
    let dfh = f.state.opendir(ROOT).unwrap();
    f.state.fsyncdir(ROOT, dfh).unwrap();
    f.state
        .rename(ROOT, name("a.tmp"), ROOT, name("a.seg"), false, false)
        .unwrap();
    assert!(f.backing.join("a.tmp").exists() && !f.backing.join("a.seg").exists());
    f.state.fsyncdir(ROOT, dfh).unwrap();
    assert!(!f.backing.join("a.tmp").exists() && f.backing.join("a.seg").exists());
    f.state.unlink(ROOT, name("a.seg")).unwrap();
    assert!(f.backing.join("a.seg").exists());
    f.state.crash(3, CrashMode::DropAll).unwrap();
    assert_eq!(fs::read(f.backing.join("a.seg")).unwrap(), b"segment");
    assert!(f.state.lookup(ROOT, name("a.seg")).is_ok(), "undone unlink");
    // Each unsynced entry change goes either way, independently.
    let mut outcomes = BTreeSet::new();
    for seed in 0..32 {
        let dfh = f.state.opendir(ROOT).unwrap();
        let (b, fh) = f.state.create(ROOT, name("b"), WRONLY_CREATE).unwrap();
        f.state.write(b.ino, fh, 0, b"b").unwrap();
        f.state.fsync(b.ino, fh).unwrap();
        f.state.unlink(ROOT, name("a.seg")).unwrap();
        f.state.crash(seed, CrashMode::Random).unwrap();
        let (has_a, has_b) = (
            f.backing.join("a.seg").exists(),
            f.backing.join("b").exists(),
        );
        assert_eq!(f.state.lookup(ROOT, name("a.seg")).is_ok(), has_a);
        assert_eq!(f.state.lookup(ROOT, name("b")).is_ok(), has_b);
        outcomes.insert((has_a, has_b));
        // Reset: a.seg present, b absent, durably.
        let _ = dfh;
        let dfh = f.state.opendir(ROOT).unwrap();
        if !has_a {
            let (a, fh) = f.state.create(ROOT, name("a.seg"), WRONLY_CREATE).unwrap();
            f.state.write(a.ino, fh, 0, b"segment").unwrap();
            f.state.fsync(a.ino, fh).unwrap();
        }
        if has_b {
            f.state.unlink(ROOT, name("b")).unwrap();
        }
        f.state.fsyncdir(ROOT, dfh).unwrap();
    }
    assert_eq!(outcomes.len(), 4, "{outcomes:?}");
    // Nothing leaks in the inode store: only a.seg's inode is left.
    let stored = fs::read_dir(f.backing.join(STORE_NAME)).unwrap().count();
    assert_eq!(stored, 1);
}

#[test]
fn truncation_zeroes_what_lies_past_the_new_end() {
    let mut f = fixture("truncate");
    let (a, fh) = f.state.create(ROOT, name("a"), WRONLY_CREATE).unwrap();
    f.state.write(a.ino, fh, 0, &[5u8; 3000]).unwrap();
    f.state.fsync(a.ino, fh).unwrap();
    let dfh = f.state.opendir(ROOT).unwrap();
    f.state.fsyncdir(ROOT, dfh).unwrap();
    f.state.set_size(a.ino, Some(fh), 1000).unwrap();
    f.state.set_size(a.ino, Some(fh), 3000).unwrap();
    let back = read_all(&mut f.state, a.ino, fh);
    assert_eq!(&back[..1000], &[5u8; 1000][..]);
    assert!(back[1000..].iter().all(|&b| b == 0));
    f.state.fsync(a.ino, fh).unwrap();
    f.state.crash(0, CrashMode::DropAll).unwrap();
    let fh = f.state.open(a.ino, libc::O_RDONLY).unwrap();
    assert_eq!(read_all(&mut f.state, a.ino, fh), back);
}

#[test]
fn existing_backing_files_are_durable_and_direct_io_is_checked() {
    let root = std::env::temp_dir().join(format!("faultfs-unit-{}-existing", std::process::id()));
    let _guard = TempDir(root.clone());
    fs::create_dir_all(root.join("backing/sub")).unwrap();
    fs::write(root.join("backing/sub/x"), b"hello").unwrap();
    let mut state = State::new(&root.join("backing"), Options::default()).unwrap();
    let sub = state.lookup(ROOT, name("sub")).unwrap();
    let x = state.lookup(sub.ino, name("x")).unwrap();
    assert_eq!(x.size, 5);
    let fh = state.open(x.ino, libc::O_RDWR | libc::O_DIRECT).unwrap();
    assert_eq!(state.write(x.ino, fh, 0, &[0; 100]), Err(Errno::EINVAL));
    assert_eq!(state.write(x.ino, fh, 100, &[0; 512]), Err(Errno::EINVAL));
    assert_eq!(state.write(x.ino, fh, 512, &[1; 512]), Ok(512));
    state.crash(0, CrashMode::DropAll).unwrap();
    assert_eq!(fs::read(root.join("backing/sub/x")).unwrap(), b"hello");
    let refusing = State::new(
        &root.join("backing"),
        Options {
            refuse_direct_io: true,
            ..Options::default()
        },
    );
    let mut refusing = refusing.unwrap();
    let sub = refusing.lookup(ROOT, name("sub")).unwrap();
    let x = refusing.lookup(sub.ino, name("x")).unwrap();
    assert_eq!(
        refusing.open(x.ino, libc::O_RDWR | libc::O_DIRECT),
        Err(Errno::EINVAL)
    );
}

#[test]
fn failed_sync_can_lose_data_like_linux_after_a_writeback_error() {
    for loses in [false, true] {
        let fx = fixture(&format!("fsyncgate-{loses}"));
        let mut f = State::new(
            &fx.backing,
            Options {
                failed_sync_loses_data: loses,
                ..Options::default()
            },
        )
        .unwrap();
        let (a, fh) = f.create(ROOT, name("a"), WRONLY_CREATE).unwrap();
        f.write(a.ino, fh, 0, &[1u8; 1024]).unwrap();
        f.fsync(a.ino, fh).unwrap();
        let dfh = f.opendir(ROOT).unwrap();
        f.fsyncdir(ROOT, dfh).unwrap();
        f.write(a.ino, fh, 0, &[2u8; 1024]).unwrap();
        f.fail_then_sync(a.ino, fh);
        // The page cache still returns the new bytes either way; a direct read shows
        // what is on the disk.
        assert_eq!(f.read(a.ino, fh, 0, 1024).unwrap(), vec![2u8; 1024]);
        let direct = f.open(a.ino, libc::O_RDONLY | libc::O_DIRECT).unwrap();
        let on_disk = if loses { [1u8; 1024] } else { [2u8; 1024] };
        assert_eq!(f.read(a.ino, direct, 0, 1024).unwrap(), on_disk);
        f.release(direct);
        // Rewriting one sector makes that one dirty again: the next sync writes it.
        f.write(a.ino, fh, 512, &[3u8; 512]).unwrap();
        f.fsync(a.ino, fh).unwrap();
        f.crash(0, CrashMode::KeepAll).unwrap();
        let fh = f.open(a.ino, libc::O_RDONLY).unwrap();
        let after = f.read(a.ino, fh, 0, 1024).unwrap();
        // KeepAll keeps the lost sector's new bytes (unsynced sectors settle by mode);
        // DropAll shows the difference.
        assert_eq!(&after[512..], &[3u8; 512][..]);
        let fh = f.open(a.ino, libc::O_RDWR).unwrap();
        f.write(a.ino, fh, 0, &[4u8; 512]).unwrap();
        f.fail_then_sync(a.ino, fh);
        f.crash(0, CrashMode::DropAll).unwrap();
        let fh = f.open(a.ino, libc::O_RDONLY).unwrap();
        let first = f.read(a.ino, fh, 0, 512).unwrap();
        let expected = if loses { [2u8; 512] } else { [4u8; 512] };
        assert_eq!(first, expected, "failed_sync_loses_data = {loses}");
    }
}

impl State {
    /// A sync that fails, then one that succeeds.
    fn fail_then_sync(&mut self, ino: u64, fh: u64) {
        self.set_plan(FaultPlan {
            fail_nth_sync: Some(1),
            ..FaultPlan::default()
        });
        assert_eq!(self.fsync(ino, fh), Err(Errno::EIO));
        self.fsync(ino, fh).unwrap();
    }
}
