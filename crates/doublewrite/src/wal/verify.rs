//! Read-only verification of a WAL directory: what a recovery would keep, repair from the
//! DWB, cut as a torn tail, or refuse — without writing a byte (no lock file is created,
//! no DWB is created, nothing is repaired). `doublewrite verify` is built on it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dwb::DoubleWriteBuffer;
pub use crate::dwb::FrameCheck;
use crate::error::{Error, Result};
use crate::io::{FileKind, OpenOptions, Vfs};

use super::recovery;
use super::segment::list_segments;
use super::{DWB_FILE_NAME, LOCK_FILE_NAME};

/// The overall verdict, from best to worst; a command-line tool maps it to an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Every record verifies.
    Clean,
    /// Some records are damaged and the DWB holds valid copies of all of them.
    Repairable,
    /// The end of the log holds an interrupted commit that recovery would cut.
    TornTail,
    /// Acknowledged records are damaged beyond repair: recovery would refuse to open.
    Lost,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Repairable => "repairable",
            Verdict::TornTail => "torn-tail",
            Verdict::Lost => "lost",
        }
    }
}

/// What `verify` found.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub dir: PathBuf,
    pub segments: Vec<PathBuf>,
    pub first_lsn: u64,
    /// Last LSN a recovery would keep (0 when none).
    pub last_lsn: u64,
    pub records: u64,
    /// Damaged records that have a valid DWB copy: (segment, offset, LSN).
    pub repairable: Vec<(PathBuf, u64, u64)>,
    /// Where a torn tail starts, and how many bytes it spans.
    pub torn_tail: Option<(PathBuf, u64, u64)>,
    pub torn_tail_bytes: u64,
    /// Why acknowledged records are lost (the error recovery would return).
    pub lost: Option<Error>,
    /// The DWB's frames, or why it could not be read (`None` when there is no DWB).
    pub dwb: Option<std::result::Result<Vec<FrameCheck>, Error>>,
}

impl VerifyReport {
    pub fn verdict(&self) -> Verdict {
        if self.lost.is_some() {
            Verdict::Lost
        } else if self.torn_tail.is_some() {
            Verdict::TornTail
        } else if !self.repairable.is_empty() {
            Verdict::Repairable
        } else {
            Verdict::Clean
        }
    }
}

/// Verifies the WAL in `dir` without changing anything.
///
/// # Errors
/// [`Error::Locked`] when the WAL is open (its log may be changing under the check);
/// I/O errors. Damage is reported in the [`VerifyReport`], not as an error.
pub fn verify(vfs: Arc<dyn Vfs>, dir: &Path) -> Result<VerifyReport> {
    verify_with_progress(vfs, dir, &mut |_, _| {})
}

/// [`verify`], calling `progress(segments_done, segments_total)` as it goes.
pub fn verify_with_progress(
    vfs: Arc<dyn Vfs>,
    dir: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport> {
    match vfs.kind(dir).map_err(|e| Error::io("inspect", dir, e))? {
        Some(FileKind::Directory) => {}
        _ => {
            return Err(Error::WrongFileKind {
                path: dir.to_path_buf(),
                detail: "is not a WAL directory",
            })
        }
    }
    let lock_path = dir.join(LOCK_FILE_NAME);
    let _lock = match vfs.open(&lock_path, OpenOptions::read_only()) {
        Ok(file) => {
            if !file
                .try_lock_exclusive()
                .map_err(|e| Error::io("lock", &lock_path, e))?
            {
                return Err(Error::Locked {
                    path: dir.to_path_buf(),
                });
            }
            Some(file)
        }
        Err(_) => None,
    };
    let segments = list_segments(vfs.as_ref(), dir)?;
    let dwb_path = dir.join(DWB_FILE_NAME);
    let dwb = vfs
        .kind(&dwb_path)
        .map_err(|e| Error::io("inspect", &dwb_path, e))?
        .map(|_| DoubleWriteBuffer::open_read_only(vfs.clone(), &dwb_path));
    let frames = dwb.as_ref().map(|result| match result {
        Ok(dwb) => dwb.check_frames(),
        Err(e) => Err(e.clone()),
    });
    let mut report = VerifyReport {
        dir: dir.to_path_buf(),
        segments: segments.iter().map(|s| s.path.clone()).collect(),
        first_lsn: segments.first().map_or(1, |s| s.first_lsn),
        last_lsn: 0,
        records: 0,
        repairable: Vec::new(),
        torn_tail: None,
        torn_tail_bytes: 0,
        lost: None,
        dwb: frames,
    };
    if segments.is_empty() {
        return Ok(report);
    }
    let usable_dwb = dwb.as_ref().and_then(|d| d.as_ref().ok());
    match recovery::dry_run(&vfs, &segments, usable_dwb, progress) {
        Ok(recovered) => {
            report.last_lsn = recovered.next_lsn - 1;
            report.records = recovered.records;
            report.repairable = recovered.repaired;
            report.torn_tail_bytes = recovered.torn_tail_bytes;
            report.torn_tail = recovered
                .torn_tail_at
                .map(|(path, offset, _)| (path, offset, recovered.torn_tail_bytes));
        }
        Err(e @ Error::WalCorrupt { .. }) => report.lost = Some(e),
        Err(e) => return Err(e),
    }
    Ok(report)
}
