//! The I/O seam: every file-system call the core makes goes through [`Vfs`] and
//! [`VfsFile`]. [`StdVfs`] is the real disk; [`sim::SimVfs`] is a simulated disk that
//! keeps durable and unsynced bytes apart and can lose, tear and reorder unsynced writes,
//! fail syncs and run out of space — the crash simulator runs the same core code on it.
//!
//! The core holds `Arc<dyn Vfs>` / `Arc<dyn VfsFile>` rather than being generic over the
//! backend: one indirect call per system call is noise next to the system call, and it
//! keeps the public types (`Wal`, `DoubleWriteBuffer`) free of a type parameter.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::align::AlignedBuf;

pub mod sim;
mod std_fs;
mod sys;

pub use std_fs::StdVfs;
/// Memory too: the copy into a buffer bound for the device, see [`sys::copy_streaming`].
pub(crate) use sys::copy_streaming;
/// Memory, not files, but a system call all the same: see [`sys::populate_for_write`].
pub(crate) use sys::populate_for_write;

/// How to open a file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Open for writing as well as reading.
    pub write: bool,
    /// Create the file if it does not exist.
    pub create: bool,
    /// Fail if the file exists (implies `create`).
    pub create_new: bool,
    /// Bypass the page cache: O_DIRECT on Linux, F_NOCACHE on macOS. Offsets, lengths
    /// and buffer addresses must then be multiples of the file's direct-I/O alignment.
    pub direct: bool,
}

impl OpenOptions {
    pub fn read_only() -> OpenOptions {
        OpenOptions::default()
    }
    pub fn read_write() -> OpenOptions {
        OpenOptions {
            write: true,
            ..OpenOptions::default()
        }
    }
    pub fn create_new() -> OpenOptions {
        OpenOptions {
            write: true,
            create: true,
            create_new: true,
            ..OpenOptions::default()
        }
    }
    pub fn with_direct(self, direct: bool) -> OpenOptions {
        OpenOptions { direct, ..self }
    }
}

/// A file system: the real one or a simulated one.
pub trait Vfs: Send + Sync + fmt::Debug {
    /// Opens `path`.
    ///
    /// # Errors
    /// `NotFound` when it does not exist and `create` is off; `AlreadyExists` with
    /// `create_new`; `Unsupported` when `direct` is asked for and the file system or
    /// platform cannot bypass the cache (never a silent buffered fallback).
    fn open(&self, path: &Path, options: OpenOptions) -> io::Result<Box<dyn VfsFile>>;

    /// Removes a file. The removal is durable only after [`Vfs::sync_dir`] on its parent.
    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// Renames a file, replacing `to`. Durable only after [`Vfs::sync_dir`].
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Names of the entries of a directory (files only), in no particular order.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;

    /// Creates a directory and its parents. Durable only after syncing their parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;

    /// Makes the directory's entries (creations, removals, renames) durable.
    ///
    /// # Errors
    /// Any failure: the caller must treat its earlier entry changes as not durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;

    /// What `path` is: `None` when nothing is there.
    fn kind(&self, path: &Path) -> io::Result<Option<FileKind>>;

    /// A channel for [`DurableWrites`], where this file system has one (the real disk on
    /// Linux: AIO with `RWF_DSYNC`); `None` by default, and where the kernel refuses.
    fn durable_writes(&self) -> Option<Box<dyn DurableWrites>> {
        None
    }

    /// [`VfsFile::sync_data`] of two files, overlapped where the platform can (the WAL
    /// syncs a commit's segment and its DWB copies together): both results, `first`'s
    /// first. Neither sync waits for the other's outcome; each file's durability is as
    /// if it had been synced alone. By default one after the other.
    fn sync_data_pair(
        &self,
        first: &Arc<dyn VfsFile>,
        second: &Arc<dyn VfsFile>,
    ) -> (io::Result<()>, io::Result<()>) {
        sync_one_then_other(first.as_ref(), second.as_ref(), true)
    }
}

/// [`Vfs::sync_data_pair`] without overlap: `first` then `second`, or (with
/// `first_goes_first` false) the other way round. Results in argument order.
pub fn sync_one_then_other(
    first: &dyn VfsFile,
    second: &dyn VfsFile,
    first_goes_first: bool,
) -> (io::Result<()>, io::Result<()>) {
    if first_goes_first {
        (first.sync_data(), second.sync_data())
    } else {
        let second_result = second.sync_data();
        (first.sync_data(), second_result)
    }
}

/// Writes that are durable when they complete and complete later, one submission in flight
/// at a time: each write and its fdatasync in one request the kernel finishes on its own,
/// so a thread can start a commit and sleep in its event loop until the completion wakes
/// it, with no thread of ours in between (docs/PERFORMANCE.md §2).
///
/// A completed write is durable for its own range only (Linux `RWF_DSYNC` syncs the range
/// it wrote, not the file's other dirty pages): use it on files opened with
/// [`OpenOptions::direct`] whose every write goes through it or is synced on its own.
pub trait DurableWrites: Send + fmt::Debug {
    /// A descriptor that becomes readable when a write in flight completes (an eventfd
    /// on Linux), for an event loop to watch; `None` where completion is only learnt by
    /// [`DurableWrites::finish`] with `wait`.
    fn ready_fd(&self) -> Option<i32>;

    /// Starts `writes` (at most two: a `mirror` commit's DWB copies and its WAL blocks)
    /// as one submission. They run at once and complete independently, in no order: a
    /// caller that needs one durable before another may not submit them together. Each
    /// length, offset and buffer must suit its file's direct-I/O alignment. The buffers
    /// stay here until [`DurableWrites::finish`] returns them.
    ///
    /// # Errors
    /// The submission did not start (another is in flight, the kernel refused it, a file
    /// is not one this channel can write): the buffers come back. Nothing was written —
    /// except when the kernel took only the first writes: those have completed by the
    /// time this returns, and their ranges hold unknown bytes, unsynced.
    fn start(&mut self, writes: Vec<DurableWrite>) -> Result<(), (io::Error, Vec<AlignedBuf>)>;

    /// The outcomes of the submission in flight (per write, in the order given: bytes
    /// written, or the error — then that range is in an unknown state, as after a failed
    /// fdatasync) and its buffers, once every write has completed; with `wait`, sleeps
    /// until they have. `None` while one runs (without `wait`) and when nothing is in
    /// flight.
    fn finish(&mut self, wait: bool) -> Option<Vec<(io::Result<usize>, AlignedBuf)>>;
}

/// One write of a [`DurableWrites`] submission: `buf`'s contents at `offset` of `file`.
#[derive(Debug)]
pub struct DurableWrite {
    pub file: Arc<dyn VfsFile>,
    pub buf: AlignedBuf,
    pub offset: u64,
}

/// What a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Directory,
    Other,
}

/// An open file. Positional reads and writes only; no shared cursor.
#[expect(
    clippy::len_without_is_empty,
    reason = "a file's size is read, never tested for emptiness"
)]
pub trait VfsFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Writes up to `buf.len()` bytes at `offset`; the write is not durable until a sync.
    ///
    /// # Errors
    /// `StorageFull` (ENOSPC) when space runs out; some bytes may have been written.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize>;

    /// fdatasync: makes earlier writes and the size durable (not other metadata).
    ///
    /// # Errors
    /// Any failure leaves the unsynced data in an unknown state; the caller must not
    /// retry and report success (the WAL poisons itself).
    fn sync_data(&self) -> io::Result<()>;

    /// fsync: [`VfsFile::sync_data`] plus all metadata.
    fn sync_all(&self) -> io::Result<()>;

    /// Current size in bytes.
    fn len(&self) -> io::Result<u64>;

    /// Takes an exclusive advisory lock without waiting; `Ok(false)` when someone else
    /// (another process, or another open of the same file in this process) holds it.
    fn try_lock_exclusive(&self) -> io::Result<bool>;

    /// The alignment direct I/O needs on this file (offsets, lengths and buffer
    /// addresses), or `None` when the platform reports none.
    fn direct_io_alignment(&self) -> Option<usize>;

    /// Asks the kernel to forget its cached copy of `[offset, offset + len)`, so the next
    /// read returns what the device holds (`posix_fadvise(POSIX_FADV_DONTNEED)` on Linux;
    /// nothing elsewhere). After a failed writeback Linux keeps the unwritten data in the
    /// cache as if it were clean: recovery drops the range it cannot vouch for before
    /// trusting it.
    fn drop_cache(&self, offset: u64, len: u64) -> io::Result<()>;

    /// The operating system's descriptor of this file when it was opened with
    /// [`OpenOptions::direct`], for [`DurableWrites`] of the same file system; `None`
    /// otherwise, and by default (a simulated file has none).
    fn direct_fd(&self) -> Option<i32> {
        None
    }
}

/// Reads exactly `buf.len()` bytes at `offset`.
///
/// # Errors
/// `UnexpectedEof` when the file ends first.
pub fn read_exact_at(file: &dyn VfsFile, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("file ends before offset {}", offset + buf.len() as u64),
                ))
            }
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads as many bytes as the file has at `offset`, up to `buf.len()`. A short read of a
/// regular file means its end: stop there (retrying would issue an unaligned read, which
/// direct I/O refuses).
pub fn read_up_to_at(file: &dyn VfsFile, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let wanted = buf.len() - done;
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) if n < wanted => {
                done += n;
                break;
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Writes all of `buf` at `offset`, retrying short writes.
pub fn write_all_at(file: &dyn VfsFile, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match file.write_at(buf, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "write returned 0 bytes",
                ))
            }
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether an I/O error means the device is out of space.
pub fn is_no_space(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::StorageFull
}
