//! A blocking append (`Wal::append_batch`, what `appendSync` calls) commits on the calling
//! thread when the writer is idle, and otherwise waits its turn behind queued work. These
//! tests prove where the commit runs (a file system that records which thread wrote and
//! synced the segments), that LSNs follow the order of the calls however the two paths
//! interleave, and that a close racing blocking appends loses none it acknowledged.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, ThreadId};
use std::time::Duration;

mod common;

use common::replay_all;
use doublewrite::io::{FileKind, OpenOptions, StdVfs, Vfs, VfsFile};
use doublewrite::{Error, RecordInput, RecordType, TailProtection, Wal, WalOptions};

/// Which threads wrote or synced a segment file (`wal-<lsn>.seg`), once recording is on.
#[derive(Debug, Default)]
struct Seen {
    recording: AtomicBool,
    threads: Mutex<Vec<(ThreadId, Option<String>)>>,
}

impl Seen {
    fn note(&self) {
        if self.recording.load(Ordering::SeqCst) {
            let current = thread::current();
            let entry = (current.id(), current.name().map(str::to_owned));
            self.threads.lock().unwrap().push(entry);
        }
    }

    fn take(&self) -> Vec<(ThreadId, Option<String>)> {
        std::mem::take(&mut *self.threads.lock().unwrap())
    }
}

/// The real file system, noting the thread of every segment write and sync.
#[derive(Debug)]
struct ThreadRecordingVfs {
    seen: Arc<Seen>,
}

#[derive(Debug)]
struct ThreadRecordingFile {
    inner: Box<dyn VfsFile>,
    seen: Option<Arc<Seen>>,
}

fn is_segment(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("wal-") && n.ends_with(".seg"))
}

impl Vfs for ThreadRecordingVfs {
    fn open(&self, path: &Path, options: OpenOptions) -> io::Result<Box<dyn VfsFile>> {
        let inner = StdVfs.open(path, options)?;
        let seen = is_segment(path).then(|| self.seen.clone());
        Ok(Box::new(ThreadRecordingFile { inner, seen }))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        StdVfs.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdVfs.rename(from, to)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        StdVfs.list_dir(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        StdVfs.create_dir_all(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        StdVfs.sync_dir(dir)
    }
    fn kind(&self, path: &Path) -> io::Result<Option<FileKind>> {
        StdVfs.kind(path)
    }
}

impl ThreadRecordingFile {
    fn note(&self) {
        if let Some(seen) = &self.seen {
            seen.note();
        }
    }
}

impl VfsFile for ThreadRecordingFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.note();
        self.inner.write_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.note();
        self.inner.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.note();
        self.inner.sync_all()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn try_lock_exclusive(&self) -> io::Result<bool> {
        self.inner.try_lock_exclusive()
    }
    fn direct_io_alignment(&self) -> Option<usize> {
        self.inner.direct_io_alignment()
    }
    fn drop_cache(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.drop_cache(offset, len)
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    seen: Arc<Seen>,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        Fixture {
            dir: tmp.path().join("wal"),
            _tmp: tmp,
            seen: Arc::new(Seen::default()),
        }
    }

    fn open(&self, options: WalOptions) -> Wal {
        let vfs = Arc::new(ThreadRecordingVfs {
            seen: self.seen.clone(),
        });
        Wal::open_with(vfs, &self.dir, options).unwrap()
    }
}

fn put(body: Vec<u8>) -> RecordInput {
    RecordInput::new(RecordType::PUT, body)
}

/// An idle writer: each blocking append writes and syncs its segment on the caller's own
/// thread, never on the commit thread, and is durable and readable when it returns.
#[test]
fn an_idle_blocking_append_commits_on_the_calling_thread() {
    for tail_protection in [TailProtection::Mirror, TailProtection::Pad] {
        let fixture = Fixture::new();
        let wal = fixture.open(WalOptions {
            tail_protection,
            ..WalOptions::default()
        });
        fixture.seen.recording.store(true, Ordering::SeqCst);
        let mut expected = Vec::new();
        for i in 0..20u64 {
            let body = format!("inline {i}").into_bytes();
            let lsn = wal.append(put(body.clone())).unwrap();
            assert_eq!(wal.last_lsn(), lsn, "the view shows the record on return");
            expected.push((lsn, body));
        }
        fixture.seen.recording.store(false, Ordering::SeqCst);
        let seen = fixture.seen.take();
        assert!(
            seen.len() >= 2 * 20,
            "every commit wrote and synced a segment: {seen:?}"
        );
        let me = thread::current().id();
        assert!(
            seen.iter().all(|(id, _)| *id == me),
            "{tail_protection:?}: a segment was touched off the calling thread: {seen:?}"
        );
        let stats = wal.stats();
        assert_eq!(stats.commits, 20);
        assert_eq!(stats.wal_syncs, 20);
        assert_eq!(replay_all(&wal), expected);
        wal.close().unwrap();
        let wal = fixture.open(WalOptions::default());
        assert_eq!(replay_all(&wal), expected, "durable across a reopen");
    }
}

/// With work queued, a blocking append does not jump it: it queues, the commit thread
/// commits it after the earlier job, and its LSN is the later one.
#[test]
fn a_blocking_append_behind_queued_work_waits_its_turn() {
    let fixture = Fixture::new();
    let wal = Arc::new(fixture.open(WalOptions::default()));
    wal.hold_commits(true);
    let (send, receive) = mpsc::channel();
    wal.submit_append(
        vec![put(b"queued first".to_vec())],
        Box::new(move |result| send.send(result).unwrap()),
    );
    fixture.seen.recording.store(true, Ordering::SeqCst);
    let blocking = {
        let wal = wal.clone();
        thread::spawn(move || wal.append(put(b"blocking second".to_vec())).unwrap())
    };
    thread::sleep(Duration::from_millis(50));
    assert!(!blocking.is_finished(), "it waits while the queue is held");
    wal.hold_commits(false);
    let first = receive.recv().unwrap().unwrap();
    let second = blocking.join().unwrap();
    assert!(
        first < second,
        "LSNs follow the calls: {first} then {second}"
    );
    let seen = fixture.seen.take();
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|(_, name)| name.as_deref() == Some("doublewrite-commit")),
        "queued work runs on the commit thread: {seen:?}"
    );
    let records: Vec<Vec<u8>> = replay_all(&wal).into_iter().map(|r| r.1).collect();
    assert_eq!(
        records,
        vec![b"queued first".to_vec(), b"blocking second".to_vec()]
    );
}

/// An append's LSN: returned by a blocking call, or to come from a queued one's callback.
enum Ack {
    Now(u64),
    Later(mpsc::Receiver<doublewrite::Result<u64>>),
}

impl Ack {
    fn lsn(self) -> u64 {
        match self {
            Ack::Now(lsn) => lsn,
            Ack::Later(receive) => receive.recv().unwrap().unwrap(),
        }
    }
}

/// Threads mixing queued appends and blocking ones, so that commits alternate between the
/// commit thread and the callers' threads: every LSN distinct, each thread's in the order
/// of its calls, and the log holds exactly what was acknowledged.
#[test]
fn inline_and_queued_commits_interleave_in_call_order() {
    let fixture = Fixture::new();
    let wal = Arc::new(fixture.open(WalOptions {
        segment_size_bytes: 64 << 10,
        ..WalOptions::default()
    }));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let wal = wal.clone();
            thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0..150u64 {
                    let body = format!(
                        "thread {t} record {i} {}",
                        "x".repeat((i * 37 % 300) as usize)
                    )
                    .into_bytes();
                    let ack = if (i + t) % 3 == 0 {
                        let (send, receive) = mpsc::channel();
                        wal.submit_append(
                            vec![put(body.clone())],
                            Box::new(move |r| send.send(r).unwrap()),
                        );
                        Ack::Later(receive)
                    } else {
                        Ack::Now(wal.append(put(body.clone())).unwrap())
                    };
                    acked.push((ack, body));
                }
                acked
                    .into_iter()
                    .map(|(ack, body)| (ack.lsn(), body))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all = Vec::new();
    for handle in threads {
        let acked = handle.join().unwrap();
        assert!(
            acked.windows(2).all(|w| w[0].0 < w[1].0),
            "one thread's LSNs rise in the order of its calls"
        );
        all.extend(acked);
    }
    all.sort();
    let lsns: BTreeSet<u64> = all.iter().map(|a| a.0).collect();
    assert_eq!(lsns.len(), 8 * 150, "every append got its own LSN");
    assert_eq!(replay_all(&wal), all);
    assert!(
        wal.stats().segment_rolls > 0,
        "the commits crossed segments"
    );
}

/// `close` while threads are in blocking appends: each append either returns its LSN,
/// and then the record is in the log after a reopen, or fails as closed; nothing hangs.
#[test]
fn close_racing_blocking_appends_keeps_every_acknowledged_record() {
    let fixture = Fixture::new();
    let wal = Arc::new(fixture.open(WalOptions::default()));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let wal = wal.clone();
            thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0.. {
                    let body = format!("thread {t} record {i}").into_bytes();
                    match wal.append(put(body.clone())) {
                        Ok(lsn) => acked.push((lsn, body)),
                        Err(Error::Closed { .. }) => break,
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
                acked
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(100));
    wal.close().unwrap();
    let mut acked: Vec<(u64, Vec<u8>)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    acked.sort();
    assert!(!acked.is_empty());
    drop(wal);
    let wal = fixture.open(WalOptions::default());
    assert_eq!(
        replay_all(&wal),
        acked,
        "exactly the acknowledged records, in LSN order"
    );
}
