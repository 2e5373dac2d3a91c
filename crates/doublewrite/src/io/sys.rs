//! The only `unsafe` in the core: the system calls the standard library does not wrap,
//! and one CPU instruction it does not offer safely (the streaming stores of
//! [`copy_streaming`]). Each function states the contract that makes its call sound.
#![allow(unsafe_code)]

use std::fs::File;

/// Direct-I/O alignment of an open file from `statx(STATX_DIOALIGN)` (Linux ≥ 6.1):
/// the larger of the offset and memory alignments, or `None` when the kernel or file
/// system does not report one (or reports that direct I/O is unsupported).
#[cfg(target_os = "linux")]
pub fn direct_io_alignment(file: &File) -> Option<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: `statx` is plain data for which all-zero bytes are a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let empty = c"";
    // SAFETY: the fd is open for the lifetime of `file`; `empty` is a valid C string and
    // AT_EMPTY_PATH makes the kernel use the fd itself; `stx` is a valid, writable statx.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return None;
    }
    let alignment = stx.stx_dio_offset_align.max(stx.stx_dio_mem_align) as usize;
    alignment.is_power_of_two().then_some(alignment)
}

#[cfg(not(target_os = "linux"))]
pub fn direct_io_alignment(_file: &File) -> Option<usize> {
    None
}

/// macOS has no O_DIRECT: F_NOCACHE turns the page cache off for this descriptor.
#[cfg(target_vendor = "apple")]
pub fn set_no_cache(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: F_NOCACHE takes an int argument and only changes this descriptor's caching.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_NOCACHE, 1) };
    if rc == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `posix_fadvise(POSIX_FADV_DONTNEED)` over a range of an open file.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn drop_cache(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let offset = libc::off_t::try_from(offset).unwrap_or(libc::off_t::MAX);
    let len = libc::off_t::try_from(len).unwrap_or(0);
    // SAFETY: the fd is open for the lifetime of `file`; the advice only affects the
    // kernel's cache of this file and returns an error number instead of setting errno.
    let rc =
        unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn drop_cache(_file: &File, _offset: u64, _len: u64) -> std::io::Result<()> {
    Ok(())
}

/// Asks the kernel to back the whole pages inside `memory` with writable pages now, in one
/// call, instead of one page fault per page as they are first written
/// (`madvise(MADV_POPULATE_WRITE)`, Linux ≥ 5.14). Best effort: where the kernel refuses
/// (older) the pages fault in as usual; contents do not change.
#[cfg(target_os = "linux")]
pub fn populate_for_write(memory: &mut [std::mem::MaybeUninit<u8>]) {
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let Some(page) = usize::try_from(page).ok().filter(|p| p.is_power_of_two()) else {
        return;
    };
    let start = memory.as_mut_ptr() as usize;
    let first = start.next_multiple_of(page);
    let end = (start + memory.len()) / page * page;
    if first >= end {
        return;
    }
    // SAFETY: [first, end) lies inside `memory`, and both ends are multiples of the kernel's
    // page size, so the kernel does not round the range out of it; `memory` is borrowed
    // mutably for the call, so nothing else reads or writes it meanwhile;
    // MADV_POPULATE_WRITE only faults its pages in as a write would, without changing
    // their contents, and reports failure by its return value, which best effort ignores.
    let _ = unsafe {
        libc::madvise(
            first as *mut libc::c_void,
            end - first,
            libc::MADV_POPULATE_WRITE,
        )
    };
}

#[cfg(not(target_os = "linux"))]
pub fn populate_for_write(_memory: &mut [std::mem::MaybeUninit<u8>]) {}

/// Copies `src` into `dst` (the same length) with non-temporal stores where the CPU has
/// them (x86-64: SSE2's `movntdq`, in every x86-64 CPU; elsewhere a plain copy). The bytes
/// go to memory without the destination's cache lines being read first, and leave none of
/// them in the cache: the copy for a buffer that a direct-I/O write hands to the device and
/// nothing on the CPU reads again. On this project's virtual machines a plain copy into a
/// buffer the device had just read ran at 8–15 GB/s, this one at 23–50 GB/s
/// (docs/PERFORMANCE.md §6, "Streaming copies"). Where a file system takes `O_DIRECT` but
/// copies through memory anyway (tmpfs, ext4 with `data=journal`), the kernel then reads the
/// buffer from memory instead of the cache: correct, a little slower.
pub fn copy_streaming(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "copy_streaming needs equal lengths");
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        const CHUNK: usize = 64;
        // Streaming stores need 16-byte aligned destinations; aligned to whole cache lines,
        // no line is left part streamed, part cached (which a later plain store into it
        // would have to read back). Plain copies before and after.
        let head = dst.as_ptr().align_offset(CHUNK).min(dst.len());
        dst[..head].copy_from_slice(&src[..head]);
        let chunks = (dst.len() - head) / CHUNK;
        let (d, s) = (dst[head..].as_mut_ptr(), src[head..].as_ptr());
        for i in 0..chunks {
            let at = i * CHUNK;
            // SAFETY: `at + CHUNK <= dst.len() - head == src.len() - head`, so every load and
            // store stays inside the borrowed slices; `d + at` is 64-byte aligned (`head`
            // aligned `d`, and `at` is a multiple of 64), so 16-byte aligned as
            // `_mm_stream_si128` requires; the loads are unaligned loads; `dst` is borrowed
            // mutably, so nothing else reads or writes it meanwhile, and the `_mm_sfence`
            // below orders these stores before any later access to it, as Rust's rules
            // for non-temporal stores require; SSE2 is part of the x86-64 baseline.
            unsafe {
                let (d, s) = (d.add(at).cast::<__m128i>(), s.add(at).cast::<__m128i>());
                let a = _mm_loadu_si128(s);
                let b = _mm_loadu_si128(s.add(1));
                let c = _mm_loadu_si128(s.add(2));
                let e = _mm_loadu_si128(s.add(3));
                _mm_stream_si128(d, a);
                _mm_stream_si128(d.add(1), b);
                _mm_stream_si128(d.add(2), c);
                _mm_stream_si128(d.add(3), e);
            }
        }
        // Streaming stores are weakly ordered: the fence orders them before every later
        // access to `dst` (the plain tail copy below, the system call or the thread that
        // takes the buffer next); without it the stores above would not be sound.
        // SAFETY: a fence touches no memory; SSE is part of the x86-64 baseline.
        unsafe { _mm_sfence() };
        let done = head + chunks * CHUNK;
        dst[done..].copy_from_slice(&src[done..]);
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.copy_from_slice(src);
}

/// One submission at a time through Linux AIO (`io_submit`): up to [`AIO_MAX_WRITES`]
/// writes, each made durable by the kernel itself (`RWF_DSYNC`: a write completes only
/// once its range, and what reading it back needs, is on stable storage), their
/// completions signalled to an eventfd that an event loop can wait on. The descriptors
/// must be open with `O_DIRECT`: a buffered AIO write would run synchronously inside
/// `io_submit`.
///
/// The buffers of the writes in flight are owned here until every one is reaped (or the
/// context is destroyed, which waits for them), so the kernel never reads freed memory.
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub struct AioDsync {
    context: libc::c_ulong,
    eventfd: std::os::fd::OwnedFd,
    /// The submission in flight: each write's buffer and, once reaped, its result.
    in_flight: Vec<(crate::align::AlignedBuf, Option<i64>)>,
}

/// Writes one [`AioDsync`] submission may hold: a `mirror` commit's DWB copies and its
/// WAL blocks.
#[cfg(target_os = "linux")]
pub const AIO_MAX_WRITES: usize = 2;

/// `struct iocb` of `<linux/aio_abi.h>` (little-endian field order of `aio_key` and
/// `aio_rw_flags`, as on every target this builds for).
#[cfg(target_os = "linux")]
#[repr(C)]
#[derive(Default)]
struct Iocb {
    data: u64,
    key: u32,
    rw_flags: u32,
    opcode: u16,
    reqprio: i16,
    fd: u32,
    buf: u64,
    nbytes: u64,
    offset: i64,
    reserved2: u64,
    flags: u32,
    resfd: u32,
}

/// `struct io_event` of `<linux/aio_abi.h>`.
#[cfg(target_os = "linux")]
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

#[cfg(target_os = "linux")]
const IOCB_CMD_PWRITE: u16 = 1;
#[cfg(target_os = "linux")]
const IOCB_FLAG_RESFD: u32 = 1;

#[cfg(target_os = "linux")]
fn syscall_result(rc: libc::c_long) -> std::io::Result<libc::c_long> {
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

#[cfg(target_os = "linux")]
impl AioDsync {
    /// An AIO context for one submission and a non-blocking eventfd. `Err` where the
    /// kernel has no AIO (or a seccomp profile refuses it): the caller writes and syncs
    /// instead.
    pub fn new() -> std::io::Result<AioDsync> {
        use std::os::fd::FromRawFd;
        if cfg!(target_endian = "big") {
            // `Iocb` lays out `aio_key` / `aio_rw_flags` in little-endian order; on a
            // big-endian target RWF_DSYNC would land in the key and not be honoured.
            return Err(std::io::Error::from(std::io::ErrorKind::Unsupported));
        }
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor
        // that nothing else owns.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nothing else.
        let eventfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let mut context: libc::c_ulong = 0;
        // SAFETY: io_setup writes the new context's id into `context`, a valid u64 that
        // must be zero on entry.
        syscall_result(unsafe {
            libc::syscall(
                libc::SYS_io_setup,
                AIO_MAX_WRITES as libc::c_long,
                &mut context,
            )
        })?;
        Ok(AioDsync {
            context,
            eventfd,
            in_flight: Vec::new(),
        })
    }

    fn clear_signal(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into `count`, a valid u64; the eventfd is non-blocking,
        // so this only clears a pending signal (EAGAIN when there is none).
        let _ = unsafe { libc::read(self.ready_fd(), (&mut count as *mut u64).cast(), 8) };
    }

    /// The eventfd: readable once a write has completed (reaping reads it back to zero).
    pub fn ready_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.eventfd.as_raw_fd()
    }

    /// Starts writing each buffer's contents at its offset of its descriptor, all in one
    /// `io_submit`. Lengths, offsets and the buffers' addresses must suit the
    /// descriptors' direct-I/O alignment (the kernel refuses them otherwise). One
    /// submission is in flight at a time: the buffers come back with the error when one
    /// already is, when there are more than [`AIO_MAX_WRITES`], or when the kernel
    /// refuses the submission. If it takes only the first writes, this waits for those
    /// before it returns the error: their ranges then hold unknown bytes, unsynced.
    pub fn start(
        &mut self,
        writes: Vec<(std::os::fd::RawFd, crate::align::AlignedBuf, u64)>,
    ) -> Result<(), (std::io::Error, Vec<crate::align::AlignedBuf>)> {
        let refuse = |error: std::io::Error, writes: Vec<(i32, crate::align::AlignedBuf, u64)>| {
            Err((error, writes.into_iter().map(|(_, buf, _)| buf).collect()))
        };
        if !self.in_flight.is_empty() {
            return refuse(
                std::io::Error::other("a durable write is already in flight"),
                writes,
            );
        }
        if writes.is_empty() || writes.len() > AIO_MAX_WRITES {
            return refuse(
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
                writes,
            );
        }
        // On the stack: a submission allocates nothing but the channel's record of it.
        let mut requests: [Iocb; AIO_MAX_WRITES] = Default::default();
        for (index, ((fd, buf, offset), request)) in writes.iter().zip(&mut requests).enumerate() {
            let Ok(offset) = i64::try_from(*offset) else {
                return refuse(
                    std::io::Error::from(std::io::ErrorKind::InvalidInput),
                    writes,
                );
            };
            *request = Iocb {
                data: index as u64,
                opcode: IOCB_CMD_PWRITE,
                fd: *fd as u32,
                buf: buf.as_ptr() as u64,
                nbytes: buf.len() as u64,
                offset,
                rw_flags: libc::RWF_DSYNC as u32,
                flags: IOCB_FLAG_RESFD,
                resfd: self.ready_fd() as u32,
                ..Iocb::default()
            };
        }
        let [first, second] = &mut requests;
        let mut batch: [*mut Iocb; AIO_MAX_WRITES] = [first, second];
        // SAFETY: `batch` points at valid iocbs for the call (the kernel copies them); the
        // memory they name is the buffers' contents, and the buffers are kept in
        // `in_flight`, unmoved on the heap and unread by us, until every write is reaped
        // or the context destroyed (`Drop`), so the kernel never reads memory that was
        // freed.
        let submitted = unsafe {
            libc::syscall(
                libc::SYS_io_submit,
                self.context,
                writes.len() as libc::c_long,
                batch.as_mut_ptr(),
            )
        };
        let count = writes.len();
        let taken = match syscall_result(submitted) {
            Ok(n) => n as usize,
            Err(e) => return refuse(e, writes),
        };
        self.in_flight = writes.into_iter().map(|(_, buf, _)| (buf, None)).collect();
        if taken == count {
            return Ok(());
        }
        // Only the first `taken` were accepted: let them complete, then give everything
        // back. (`taken` is 0 only when the kernel took nothing, with no error.)
        for (_, result) in &mut self.in_flight[taken..] {
            *result = Some(-i64::from(libc::ECANCELED));
        }
        let mut buffers = Vec::new();
        if taken > 0 {
            if let Some(done) = self.reap(true) {
                buffers = done.into_iter().map(|(_, buf)| buf).collect();
            }
        } else {
            buffers = self.in_flight.drain(..).map(|(buf, _)| buf).collect();
        }
        Err((
            std::io::Error::other(format!("io_submit took {taken} of {count} writes")),
            buffers,
        ))
    }

    /// The submission in flight's outcomes (bytes written, per write, in submission
    /// order) and buffers, once every write completed; with `wait`, sleeps until they
    /// have. `None` while one runs (without `wait`) or when nothing is in flight.
    #[allow(clippy::type_complexity)]
    pub fn reap(
        &mut self,
        wait: bool,
    ) -> Option<Vec<(std::io::Result<usize>, crate::align::AlignedBuf)>> {
        // Cleared first, even with nothing in flight: a signal that outlived the reaping
        // of its write (the kernel signals after queueing the event) must not leave the
        // descriptor readable for an event loop to spin on.
        self.clear_signal();
        if self.in_flight.is_empty() {
            return None;
        }
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let timeout: *const libc::timespec = if wait { std::ptr::null() } else { &zero };
        while self.in_flight.iter().any(|(_, result)| result.is_none()) {
            let mut events = [IoEvent::default(); AIO_MAX_WRITES];
            let pending = self.in_flight.iter().filter(|(_, r)| r.is_none()).count();
            // SAFETY: `events` has room for the `pending` (≤ AIO_MAX_WRITES) events asked
            // for; `timeout` is null (wait) or points at a valid timespec for the call.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_io_getevents,
                    self.context,
                    if wait { 1 } else { 0 },
                    pending as libc::c_long,
                    events.as_mut_ptr(),
                    timeout,
                )
            };
            match syscall_result(rc) {
                Ok(0) => return None,
                Ok(n) => {
                    for event in &events[..n as usize] {
                        if let Some((_, result)) = self.in_flight.get_mut(event.data as usize) {
                            *result = Some(event.res);
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // The context is broken: nothing more will complete through it. Keep
                    // the buffers (the kernel may still read them); report the error.
                    let failed = (0..self.in_flight.len())
                        .map(|_| {
                            (
                                Err(std::io::Error::new(e.kind(), e.to_string())),
                                crate::align::AlignedBuf::new(0, 1),
                            )
                        })
                        .collect();
                    return Some(failed);
                }
            }
        }
        let outcomes = self
            .in_flight
            .drain(..)
            .map(|(buf, result)| {
                let res = result.expect("every write reaped");
                let outcome = if res < 0 {
                    Err(std::io::Error::from_raw_os_error(-res as i32))
                } else {
                    Ok(res as usize)
                };
                (outcome, buf)
            })
            .collect();
        Some(outcomes)
    }
}

#[cfg(target_os = "linux")]
impl Drop for AioDsync {
    fn drop(&mut self) {
        // SAFETY: io_destroy cancels or waits for the writes in flight before it returns,
        // so the buffers dropped after it are no longer in the kernel's hands.
        let _ = unsafe { libc::syscall(libc::SYS_io_destroy, self.context) };
        self.in_flight.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Populating pages the allocator handed out zeroed and untouched (a large `vec![0; n]`
    /// is lazily zeroed memory) leaves them zero; a range with no whole page in it, or
    /// nothing at all, is accepted.
    #[test]
    fn populating_changes_no_byte() {
        let mut zeros = vec![0u8; 4 << 20];
        zeros[12_345] = 7;
        let view = zeros.as_mut_ptr().cast::<std::mem::MaybeUninit<u8>>();
        // SAFETY: the same bytes, viewed as possibly uninitialised (a weaker type), for the
        // life of `zeros`' mutable borrow; nothing reads `zeros` meanwhile.
        let bytes = unsafe { std::slice::from_raw_parts_mut(view, 4 << 20) };
        populate_for_write(bytes);
        populate_for_write(&mut bytes[1..100]);
        populate_for_write(&mut []);
        assert_eq!(zeros[12_345], 7);
        zeros[12_345] = 0;
        assert!(zeros.iter().all(|&b| b == 0));
    }

    /// Minor page faults of the calling thread so far.
    #[cfg(target_os = "linux")]
    fn thread_minor_faults() -> i64 {
        // SAFETY: `rusage` is plain data for which all-zero bytes are a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `usage` is a valid, writable rusage for the call.
        assert_eq!(
            unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) },
            0
        );
        usage.ru_minflt
    }

    /// What the pool relies on: after the call, writing the whole buffer takes (almost) no
    /// page faults, where 8 MiB of fresh memory would take one per 4 KiB page (2,048).
    #[cfg(target_os = "linux")]
    #[test]
    fn populated_memory_is_written_without_page_faults() {
        const LEN: usize = 8 << 20;
        let mut buffer = Vec::<u8>::with_capacity(LEN);
        populate_for_write(buffer.spare_capacity_mut());
        let before = thread_minor_faults();
        buffer.resize(LEN, 0xA5);
        let faults = thread_minor_faults() - before;
        assert!(
            faults < 16,
            "{faults} page faults writing 8 MiB after populating it"
        );
        assert!(buffer.iter().all(|&b| b == 0xA5));
    }

    /// The streaming copy copies every byte and nothing beyond: for every length around
    /// its 64-byte chunks and every misalignment of source and destination (the body of a
    /// direct write starts anywhere in its block), with guard bytes on both sides.
    #[test]
    fn streaming_copy_copies_exactly_the_bytes() {
        let source: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
        for dst_shift in 0..65 {
            for src_shift in [0, 1, 5, 16, 33] {
                for len in (0..200).chain([1023, 1024, 1025, 4096, 4099, 4800]) {
                    let mut dst = vec![0xEEu8; len + dst_shift + 32];
                    let src = &source[src_shift..src_shift + len];
                    copy_streaming(&mut dst[dst_shift..dst_shift + len], src);
                    assert!(
                        dst[..dst_shift].iter().all(|&b| b == 0xEE),
                        "before, len {len}"
                    );
                    assert_eq!(&dst[dst_shift..dst_shift + len], src, "len {len}");
                    assert!(
                        dst[dst_shift + len..].iter().all(|&b| b == 0xEE),
                        "after, len {len}"
                    );
                }
            }
        }
    }
}
