//! Block arithmetic and a heap buffer whose start is aligned for direct I/O.
//!
//! The buffer is built from a plain `Vec<u8>` by over-allocating and starting at the first
//! aligned address, so it needs no `unsafe`. Its padding is zeroed every time a padded
//! span is taken, so no stale bytes from an earlier use ever reach the disk.

/// Alignment used when the file system does not report one.
pub const DEFAULT_ALIGNMENT: usize = 4096;

/// The page the page cache writes back whole: a buffered write of any byte of a page may
/// rewrite (and, when power fails, tear) every sector of it.
pub const PAGE_BYTES: u64 = if cfg!(all(target_vendor = "apple", target_arch = "aarch64")) {
    16 * 1024
} else {
    4096
};

/// Rounds `value` up to a multiple of `align` (a power of two).
pub fn round_up(value: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    (value + align - 1) & !(align - 1)
}

/// Rounds `value` down to a multiple of `align` (a power of two).
pub fn round_down(value: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    value & !(align - 1)
}

pub fn is_aligned(value: u64, align: u64) -> bool {
    value & (align - 1) == 0
}

/// A growable byte buffer whose first byte sits at an `alignment`-aligned address.
#[derive(Debug)]
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
    alignment: usize,
}

impl AlignedBuf {
    /// An empty buffer with room for at least `capacity` bytes.
    pub fn new(capacity: usize, alignment: usize) -> AlignedBuf {
        assert!(
            alignment.is_power_of_two(),
            "alignment must be a power of two"
        );
        let capacity = round_up(capacity.max(alignment) as u64, alignment as u64) as usize;
        let storage = vec![0u8; capacity + alignment];
        let start = storage.as_ptr().align_offset(alignment);
        assert!(start < alignment, "no aligned start in the allocation");
        AlignedBuf {
            storage,
            start,
            len: 0,
            alignment,
        }
    }

    pub fn alignment(&self) -> usize {
        self.alignment
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.storage.len() - self.alignment
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Makes room for `additional` more bytes, keeping the contents.
    pub fn reserve(&mut self, additional: usize) {
        let needed = self.len + additional;
        if needed <= self.capacity() {
            return;
        }
        let mut grown = AlignedBuf::new(needed.max(self.capacity() * 2), self.alignment);
        grown.extend_from_slice(self.as_slice());
        *self = grown;
    }

    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.extend_from_slice_with(bytes, <[u8]>::copy_from_slice);
    }

    /// [`AlignedBuf::extend_from_slice`] with the copy made by `copy(destination, bytes)`
    /// (for instance a streaming copy into a buffer bound for the device). `copy` must write
    /// every byte of `destination`: whatever it leaves holds an earlier use's bytes.
    pub(crate) fn extend_from_slice_with(
        &mut self,
        bytes: &[u8],
        copy: impl FnOnce(&mut [u8], &[u8]),
    ) {
        self.reserve(bytes.len());
        let at = self.start + self.len;
        copy(&mut self.storage[at..at + bytes.len()], bytes);
        self.len += bytes.len();
    }

    /// Sets the length to `len`, filling new bytes with zeros.
    pub fn resize_zeroed(&mut self, len: usize) {
        if len > self.len {
            self.reserve(len - self.len);
            let from = self.start + self.len;
            self.storage[from..self.start + len].fill(0);
        }
        self.len = len;
    }

    /// Address of the first byte (aligned to `alignment`).
    pub fn as_ptr(&self) -> *const u8 {
        self.storage[self.start..].as_ptr()
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }

    /// The contents followed by zeros up to the next multiple of the alignment: the span a
    /// direct-I/O write needs. The padding is zeroed here, every time.
    pub fn padded_slice(&mut self) -> &[u8] {
        let padded = round_up(self.len as u64, self.alignment as u64) as usize;
        self.reserve(padded - self.len);
        let from = self.start + self.len;
        self.storage[from..self.start + padded].fill(0);
        &self.storage[self.start..self.start + padded]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_is_aligned_and_padding_is_zeroed_on_reuse() {
        let mut buf = AlignedBuf::new(100, 4096);
        assert_eq!(buf.as_slice().as_ptr() as usize % 4096, 0);
        buf.extend_from_slice(&[0xAB; 5000]);
        assert_eq!(buf.padded_slice().len(), 8192);
        buf.clear();
        buf.extend_from_slice(&[1, 2, 3]);
        let span = buf.padded_slice();
        assert_eq!(span.len(), 4096);
        assert!(
            span[3..].iter().all(|&b| b == 0),
            "stale bytes leaked into padding"
        );
    }

    #[test]
    fn growing_keeps_contents_and_alignment() {
        let mut buf = AlignedBuf::new(512, 512);
        for i in 0..10_000u32 {
            buf.extend_from_slice(&i.to_le_bytes());
        }
        assert_eq!(buf.as_slice().as_ptr() as usize % 512, 0);
        assert_eq!(&buf.as_slice()[4 * 9999..], &9999u32.to_le_bytes());
    }

    #[test]
    fn rounding() {
        assert_eq!(round_up(0, 4096), 0);
        assert_eq!(round_up(1, 4096), 4096);
        assert_eq!(round_down(4097, 4096), 4096);
        assert!(is_aligned(8192, 4096));
        assert!(!is_aligned(8193, 4096));
    }
}
