//! The real file system, through `std::fs`.

use std::cell::RefCell;
use std::fs::{self, File};
use std::io;
use std::path::Path;
use std::sync::{mpsc, Arc};

use super::{sys, FileKind, OpenOptions, Vfs, VfsFile};
use crate::align::AlignedBuf;

/// The operating system's file system. Zero-sized; cloning it is free.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdVfs;

#[derive(Debug)]
struct StdFile {
    file: File,
    direct: bool,
}

/// A job for a [`SyncHelper`]: the file to sync and where to send the outcome.
type SyncJob = (Arc<dyn VfsFile>, mpsc::Sender<io::Result<()>>);

/// A thread that runs one fdatasync at a time for the thread that owns it, so that two
/// files' syncs overlap (see [`Vfs::sync_data_pair`]). Each thread that asks gets its own
/// (a WAL's commit thread, and a thread whose blocking append committed inline under
/// `'mirror'`), started on first use; it ends when that thread does. Every job carries
/// its own reply channel, so an outcome can never be matched with the wrong job.
struct SyncHelper {
    jobs: mpsc::Sender<SyncJob>,
}

impl SyncHelper {
    fn start() -> io::Result<SyncHelper> {
        let (jobs, job_rx) = mpsc::channel::<SyncJob>();
        std::thread::Builder::new()
            .name("doublewrite-sync".to_string())
            .spawn(move || {
                for (file, reply) in job_rx {
                    let _ = reply.send(file.sync_data());
                }
            })?;
        Ok(SyncHelper { jobs })
    }
}

/// This thread's helper: not tried yet, running, or not available (it could not be
/// started, or died): syncs then run one after the other.
enum HelperState {
    Untried,
    Running(SyncHelper),
    Unavailable,
}

thread_local! {
    static SYNC_HELPER: RefCell<HelperState> = const { RefCell::new(HelperState::Untried) };
}

/// Runs `first.sync_data()` on this thread's helper while this thread runs
/// `second.sync_data()`; `None` when there is no helper.
fn sync_on_helper(
    first: &Arc<dyn VfsFile>,
    second: &Arc<dyn VfsFile>,
) -> Option<(io::Result<()>, io::Result<()>)> {
    let reply = SYNC_HELPER
        .try_with(|cell| {
            let mut state = cell.borrow_mut();
            if matches!(*state, HelperState::Untried) {
                *state = match SyncHelper::start() {
                    Ok(helper) => HelperState::Running(helper),
                    Err(_) => HelperState::Unavailable,
                };
            }
            let HelperState::Running(helper) = &*state else {
                return None;
            };
            let (reply, outcome) = mpsc::channel();
            if helper.jobs.send((Arc::clone(first), reply)).is_err() {
                *state = HelperState::Unavailable;
                return None;
            }
            Some(outcome)
        })
        .ok()
        .flatten()?;
    let second_result = second.sync_data();
    // A helper that dies mid-job drops the reply sender: then sync here.
    let first_result = reply.recv().unwrap_or_else(|_| first.sync_data());
    Some((first_result, second_result))
}

impl Vfs for StdVfs {
    fn open(&self, path: &Path, options: OpenOptions) -> io::Result<Box<dyn VfsFile>> {
        let mut std_options = fs::OpenOptions::new();
        std_options
            .read(true)
            .write(options.write || options.create || options.create_new)
            .create(options.create && !options.create_new)
            .create_new(options.create_new);
        if options.direct {
            add_direct_flag(&mut std_options)?;
        }
        let file = match std_options.open(path) {
            Ok(file) => file,
            Err(e) if options.direct && e.raw_os_error() == Some(einval()) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "the file system holding {} refuses direct I/O (O_DIRECT): use buffered mode there",
                        path.display()
                    ),
                ));
            }
            Err(e) => return Err(e),
        };
        if file.metadata()?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{} is a directory, not a file", path.display()),
            ));
        }
        #[cfg(target_vendor = "apple")]
        if options.direct {
            sys::set_no_cache(&file)?;
        }
        Ok(Box::new(StdFile {
            file,
            direct: options.direct,
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Ok(name) = entry.file_name().into_string() {
                    names.push(name);
                }
            }
        }
        Ok(names)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    #[cfg(unix)]
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    /// Windows cannot open a directory for flushing without backup semantics; NTFS
    /// journals directory changes itself.
    #[cfg(not(unix))]
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn kind(&self, path: &Path) -> io::Result<Option<FileKind>> {
        match fs::metadata(path) {
            Ok(meta) if meta.is_file() => Ok(Some(FileKind::File)),
            Ok(meta) if meta.is_dir() => Ok(Some(FileKind::Directory)),
            Ok(_) => Ok(Some(FileKind::Other)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    #[cfg(target_os = "linux")]
    fn durable_writes(&self) -> Option<Box<dyn super::DurableWrites>> {
        let aio = sys::AioDsync::new().ok()?;
        Some(Box::new(AioWrites { aio }))
    }

    /// `first` is synced on this thread's helper while this thread syncs `second`, so the
    /// device can work on both at once (on the development VM the benchmark's
    /// `device-2file-overlap` cycle runs 1.29 × `device-2file`, which syncs one after the
    /// other: still two flushes, partly overlapped). Without a helper (it could not be
    /// started) the two run one after the other.
    fn sync_data_pair(
        &self,
        first: &Arc<dyn VfsFile>,
        second: &Arc<dyn VfsFile>,
    ) -> (io::Result<()>, io::Result<()>) {
        sync_on_helper(first, second)
            .unwrap_or_else(|| super::sync_one_then_other(first.as_ref(), second.as_ref(), true))
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn add_direct_flag(options: &mut fs::OpenOptions) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    options.custom_flags(libc::O_DIRECT);
    Ok(())
}

/// macOS sets F_NOCACHE after opening (see `sys::set_no_cache`); std's `sync_data` and
/// `sync_all` on Apple targets issue F_FULLFSYNC, which flushes the drive's cache too.
#[cfg(target_vendor = "apple")]
fn add_direct_flag(_options: &mut fs::OpenOptions) -> io::Result<()> {
    Ok(())
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
fn add_direct_flag(_options: &mut fs::OpenOptions) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "direct I/O is not supported on this platform: use buffered mode",
    ))
}

#[cfg(unix)]
fn einval() -> i32 {
    libc::EINVAL
}
#[cfg(not(unix))]
fn einval() -> i32 {
    87 // ERROR_INVALID_PARAMETER
}

impl VfsFile for StdFile {
    #[cfg(unix)]
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.file, buf, offset)
    }
    #[cfg(windows)]
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::windows::fs::FileExt::seek_read(&self.file, buf, offset)
    }

    #[cfg(unix)]
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::write_at(&self.file, buf, offset)
    }
    #[cfg(windows)]
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        std::os::windows::fs::FileExt::seek_write(&self.file, buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn try_lock_exclusive(&self) -> io::Result<bool> {
        match self.file.try_lock() {
            Ok(()) => Ok(true),
            Err(fs::TryLockError::WouldBlock) => Ok(false),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn direct_io_alignment(&self) -> Option<usize> {
        sys::direct_io_alignment(&self.file)
    }

    fn drop_cache(&self, offset: u64, len: u64) -> io::Result<()> {
        sys::drop_cache(&self.file, offset, len)
    }

    #[cfg(unix)]
    fn direct_fd(&self) -> Option<i32> {
        use std::os::fd::AsRawFd;
        self.direct.then(|| self.file.as_raw_fd())
    }
}

/// [`super::DurableWrites`] of the real disk: Linux AIO, `RWF_DSYNC` (`sys::AioDsync`).
#[cfg(target_os = "linux")]
#[derive(Debug)]
struct AioWrites {
    aio: sys::AioDsync,
}

#[cfg(target_os = "linux")]
impl super::DurableWrites for AioWrites {
    fn ready_fd(&self) -> Option<i32> {
        Some(self.aio.ready_fd())
    }

    /// The kernel holds its own reference to each open file while its write runs, so the
    /// descriptors may be closed meanwhile.
    fn start(
        &mut self,
        writes: Vec<super::DurableWrite>,
    ) -> Result<(), (io::Error, Vec<AlignedBuf>)> {
        let fds: Option<Vec<i32>> = writes.iter().map(|w| w.file.direct_fd()).collect();
        let Some(fds) = fds else {
            let buffered = io::Error::new(
                io::ErrorKind::Unsupported,
                "a durable write needs a file opened with direct I/O",
            );
            return Err((buffered, writes.into_iter().map(|w| w.buf).collect()));
        };
        let writes = fds
            .into_iter()
            .zip(writes)
            .map(|(fd, w)| (fd, w.buf, w.offset))
            .collect();
        self.aio.start(writes)
    }

    fn finish(&mut self, wait: bool) -> Option<Vec<(io::Result<usize>, AlignedBuf)>> {
        self.aio.reap(wait)
    }
}
