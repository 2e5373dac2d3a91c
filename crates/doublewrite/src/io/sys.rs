//! The only `unsafe` in the core: two system calls the standard library does not wrap.
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
