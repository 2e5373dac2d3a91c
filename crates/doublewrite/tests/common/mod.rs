//! Shared helpers: an environment that is either a temporary directory on the real disk or
//! a simulated disk, and small tools to find and damage records in segment files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use doublewrite::io::sim::SimVfs;
use doublewrite::io::{StdVfs, Vfs};
use doublewrite::record::check_encoded;
use doublewrite::wal::segment::list_segments;
use doublewrite::{RecordInput, RecordType, Wal, WalOptions};

pub struct Env {
    pub vfs: Arc<dyn Vfs>,
    pub dir: PathBuf,
    pub sim: Option<SimVfs>,
    _tmp: Option<tempfile::TempDir>,
}

impl Env {
    pub fn std() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        Env {
            vfs: Arc::new(StdVfs),
            dir: tmp.path().join("wal"),
            sim: None,
            _tmp: Some(tmp),
        }
    }

    pub fn sim() -> Env {
        let sim = SimVfs::new();
        sim.create_dir_all(Path::new("/data")).unwrap();
        Env {
            vfs: Arc::new(sim.clone()),
            dir: PathBuf::from("/data/wal"),
            sim: Some(sim),
            _tmp: None,
        }
    }

    pub fn open(&self, options: WalOptions) -> doublewrite::Result<Wal> {
        Wal::open_with(self.vfs.clone(), &self.dir, options)
    }

    pub fn segments(&self) -> Vec<PathBuf> {
        list_segments(self.vfs.as_ref(), &self.dir)
            .unwrap()
            .into_iter()
            .map(|s| s.path)
            .collect()
    }

    pub fn read(&self, path: &Path) -> Vec<u8> {
        match &self.sim {
            Some(sim) => sim.read_file(path).unwrap(),
            None => std::fs::read(path).unwrap(),
        }
    }

    /// Overwrites bytes durably (damage at rest, or a torn write made visible).
    pub fn overwrite(&self, path: &Path, offset: u64, bytes: &[u8]) {
        match &self.sim {
            Some(sim) => sim.poke(path, offset, bytes),
            None => {
                use std::os::unix::fs::FileExt;
                let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
                f.write_all_at(bytes, offset).unwrap();
                f.sync_all().unwrap();
            }
        }
    }

    pub fn remove(&self, path: &Path) {
        self.vfs.remove_file(path).unwrap();
        self.vfs.sync_dir(&self.dir).unwrap();
    }

    /// Where each record of each segment sits: (segment, LSN, offset, length).
    pub fn locate(&self) -> Vec<(PathBuf, u64, u64, usize)> {
        let mut out = Vec::new();
        for path in self.segments() {
            let bytes = self.read(&path);
            let block = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
            let mut pos = block;
            while let Ok((h, _)) = check_encoded(&bytes[pos..]) {
                if !h.is_internal() {
                    out.push((path.clone(), h.lsn, pos as u64, h.record_len()));
                }
                pos += h.record_len();
            }
        }
        out
    }

    pub fn find(&self, lsn: u64) -> (PathBuf, u64, usize) {
        let (path, _, offset, len) = self
            .locate()
            .into_iter()
            .find(|r| r.1 == lsn)
            .unwrap_or_else(|| panic!("LSN {lsn} not found on disk"));
        (path, offset, len)
    }
}

/// Compares replayed records with the expected ones and names the first difference
/// (instead of printing megabytes of payload).
pub fn assert_records(actual: &[(u64, Vec<u8>)], expected: &[(u64, Vec<u8>)]) {
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert_eq!(
            a.0, e.0,
            "record #{i}: LSN {} where {} was expected",
            a.0, e.0
        );
        assert!(
            a.1 == e.1,
            "record LSN {}: payload differs ({} vs {} bytes)",
            a.0,
            a.1.len(),
            e.1.len()
        );
    }
    assert_eq!(
        actual.len(),
        expected.len(),
        "{} records replayed, {} expected (last replayed: {:?})",
        actual.len(),
        expected.len(),
        actual.last().map(|r| r.0)
    );
}

/// A deterministic payload for `lsn` of `len` bytes.
pub fn payload(lsn: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (lsn as usize * 31 + i * 7) as u8)
        .collect()
}

pub fn put(lsn_hint: u64, len: usize) -> RecordInput {
    RecordInput::new(RecordType::PUT, payload(lsn_hint, len))
}

/// All records of the log, as (LSN, payload).
pub fn replay_all(wal: &Wal) -> Vec<(u64, Vec<u8>)> {
    wal.replay(0, None)
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            (r.lsn(), r.payload().to_vec())
        })
        .collect()
}

/// Small geometry so segments roll and the DWB ring wraps often.
pub fn small_options() -> WalOptions {
    WalOptions {
        segment_size_bytes: 64 * 1024,
        dwb_capacity: Some(4),
        dwb_max_record_bytes: Some(4096),
        ..WalOptions::default()
    }
}

/// Runs `scenario` on the real disk and on the simulated disk.
#[macro_export]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_std { $(#[test] fn $name() { super::$name(&super::common::Env::std()); })* }
        mod on_sim { $(#[test] fn $name() { super::$name(&super::common::Env::sim()); })* }
    };
}
