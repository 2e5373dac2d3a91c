//! The only `unsafe` in the core: the system calls the standard library does not wrap.
//! Each function states the contract that makes its call sound.
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
}
