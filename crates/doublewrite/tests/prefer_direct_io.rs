//! `prefer_direct_io` (the Node API's default for `tailProtection: 'pad'`): the WAL writes
//! its segments with O_DIRECT where the file system takes it and buffered where it does
//! not — never an error — and a log written one way reopens and continues the other way.

mod common;

use common::{assert_records, put, replay_all, Env};
use doublewrite::io::sim::FaultPlan;
use doublewrite::io::OpenOptions;
use doublewrite::{Error, TailProtection, Wal, WalOptions};

fn pad(prefer_direct_io: bool) -> WalOptions {
    WalOptions {
        tail_protection: TailProtection::Pad,
        prefer_direct_io,
        kernel_completion: true,
        segment_size_bytes: 64 * 1024,
        ..WalOptions::default()
    }
}

/// `direct_io` explicitly, as `'pad'` users could ask for it.
fn explicit() -> WalOptions {
    WalOptions {
        direct_io: true,
        ..pad(false)
    }
}

/// Where O_DIRECT does not fit: an explicit `direct_io` open is refused, a preferring one
/// opens buffered, with no commits through the kernel.
fn refused_then_buffered(env: &Env) -> Wal {
    assert!(matches!(
        env.open(explicit()),
        Err(Error::DirectIoUnsupported { .. })
    ));
    let wal = env.open(pad(true)).unwrap();
    assert!(!wal.direct_io());
    assert!(!wal.has_durable_writes());
    wal
}

/// Appends `count` records of assorted sizes (some roll the 64 KiB segments).
fn append(wal: &Wal, count: u64) {
    for i in 0..count {
        let lsn = wal.next_lsn();
        wal.append(put(lsn, 1 + (i as usize * 1237) % 9000))
            .unwrap();
    }
}

/// On the real disk the choice is the one an explicit `direct_io` open can make: O_DIRECT
/// exactly where such an open succeeds (and the kernel reports the alignment); the log then reopens buffered and again preferring
/// O_DIRECT, every record intact, the LSNs continuing.
#[test]
fn on_the_real_disk_it_takes_o_direct_exactly_where_an_explicit_open_can() {
    let probe = Env::std();
    let explicit_works = match probe.open(explicit()) {
        Ok(wal) => wal.close().is_ok(),
        Err(Error::DirectIoUnsupported { .. }) => false,
        Err(e) => panic!("{e}"),
    };
    // The choice also needs the alignment reported (statx, Linux >= 6.1).
    let reported = explicit_works
        && probe
            .vfs
            .open(
                &probe.dir.join(doublewrite::wal::LOCK_FILE_NAME),
                OpenOptions::read_write().with_direct(true),
            )
            .unwrap()
            .direct_io_alignment()
            .is_some();
    let direct_works = explicit_works && reported;
    let env = Env::std();
    let wal = env.open(pad(true)).unwrap();
    assert_eq!(
        wal.direct_io(),
        direct_works,
        "the choice matches the file system"
    );
    assert_eq!(
        wal.has_durable_writes(),
        direct_works && cfg!(target_os = "linux")
    );
    append(&wal, 40);
    let expected = replay_all(&wal);
    wal.close().unwrap();

    let buffered = env.open(pad(false)).unwrap();
    assert!(!buffered.direct_io());
    assert_records(&replay_all(&buffered), &expected);
    append(&buffered, 40);
    let expected = replay_all(&buffered);
    buffered.close().unwrap();

    let again = env.open(pad(true)).unwrap();
    assert_eq!(again.direct_io(), direct_works);
    assert_records(&replay_all(&again), &expected);
    assert_eq!(again.next_lsn(), 81);
}

/// A file system that refuses O_DIRECT (tmpfs on older kernels, some FUSE file systems):
/// the WAL opens buffered, with no commits through the kernel, and works.
#[test]
fn where_o_direct_is_refused_it_opens_buffered() {
    let env = Env::sim();
    env.sim.as_ref().unwrap().set_plan(FaultPlan {
        refuse_direct_io: true,
        ..FaultPlan::default()
    });
    let wal = refused_then_buffered(&env);
    append(&wal, 30);
    assert_eq!(replay_all(&wal).len(), 30);
}

/// Segments whose block is smaller than the file system's direct-I/O alignment (a log
/// moved to a disk with larger sectors) cannot be written with O_DIRECT: an explicit
/// `direct_io` open refuses them, a preferring one stays buffered.
#[test]
fn segments_with_blocks_below_the_alignment_stay_buffered() {
    let env = Env::sim();
    let sim = env.sim.as_ref().unwrap();
    let wal = env.open(pad(true)).unwrap();
    assert!(
        wal.direct_io(),
        "the simulated disk takes O_DIRECT at 4 KiB"
    );
    append(&wal, 10);
    let expected = replay_all(&wal);
    wal.close().unwrap();

    sim.set_direct_io_alignment(8192);
    let wal = refused_then_buffered(&env);
    assert_records(&replay_all(&wal), &expected);
    append(&wal, 10);
    assert_eq!(replay_all(&wal).len(), 20);
}

/// The choice is only ever made for a WAL that did not ask for O_DIRECT itself: without
/// `prefer_direct_io` a WAL stays buffered on a disk that takes O_DIRECT.
#[test]
fn without_the_preference_it_stays_buffered() {
    let env = Env::sim();
    let wal = env.open(pad(false)).unwrap();
    assert!(!wal.direct_io());
    assert!(!wal.has_durable_writes());
}
