//! The bytes of a record to append.
//!
//! A [`Payload`] owns its bytes, or is a range of a buffer that several records share. The
//! second form lets a binding copy the payloads of one call into one buffer that it reuses
//! once the call's commit is done, instead of allocating (and faulting in) fresh memory for
//! every record: the buffer goes back to its owner when the last record holding it is
//! dropped, normally by the commit thread ([`pooled_copy`]).

use std::fmt;
use std::ops::{Deref, Range};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};

/// A buffer that the payloads of several records share (see [`Payload::shared`]).
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// The bytes of one record: read through `Deref<Target = [u8]>`.
#[derive(Clone)]
pub struct Payload(Repr);

#[derive(Clone)]
enum Repr {
    Owned(Vec<u8>),
    Shared {
        buffer: SharedBytes,
        start: usize,
        end: usize,
    },
}

impl Payload {
    /// The bytes `range` of `buffer`, without copying them.
    ///
    /// # Panics
    /// When `range` is not inside `buffer` (a caller's bug: check it before).
    pub fn shared(buffer: SharedBytes, range: Range<usize>) -> Payload {
        let len = (*buffer).as_ref().len();
        assert!(
            range.start <= range.end && range.end <= len,
            "payload range {range:?} is outside its {len}-byte buffer"
        );
        Payload(Repr::Shared {
            buffer,
            start: range.start,
            end: range.end,
        })
    }
}

impl Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Owned(bytes) => bytes,
            Repr::Shared { buffer, start, end } => &(**buffer).as_ref()[*start..*end],
        }
    }
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Default for Payload {
    fn default() -> Payload {
        Payload(Repr::Owned(Vec::new()))
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Payload {
        Payload(Repr::Owned(bytes))
    }
}

impl From<&[u8]> for Payload {
    fn from(bytes: &[u8]) -> Payload {
        Payload(Repr::Owned(bytes.to_vec()))
    }
}

impl From<Box<[u8]>> for Payload {
    fn from(bytes: Box<[u8]>) -> Payload {
        Payload(Repr::Owned(bytes.into_vec()))
    }
}

impl From<String> for Payload {
    fn from(text: String) -> Payload {
        Payload(Repr::Owned(text.into_bytes()))
    }
}

impl From<&str> for Payload {
    fn from(text: &str) -> Payload {
        Payload(Repr::Owned(text.as_bytes().to_vec()))
    }
}

impl<const N: usize> From<[u8; N]> for Payload {
    fn from(bytes: [u8; N]) -> Payload {
        Payload(Repr::Owned(bytes.to_vec()))
    }
}

impl<const N: usize> From<&[u8; N]> for Payload {
    fn from(bytes: &[u8; N]) -> Payload {
        Payload(Repr::Owned(bytes.to_vec()))
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        **self == **other
    }
}

impl Eq for Payload {}

impl fmt::Debug for Payload {
    /// The length, not the bytes: a payload can be megabytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.len())
    }
}

// The pool of `pooled_copy`: while payloads are in flight it keeps what their commits give
// back, so a burst reuses memory its first commits have freed; it never keeps more free
// buffers than are lent out (plus a few), so a process whose appends have drained does not
// hold a burst's memory. A new buffer of at least `MIN_POPULATED_BYTES` has its pages
// populated in one call before the copy (`io::populate_for_write`), instead of one page
// fault per 4 KiB as the copy first touches memory the allocator got fresh from the kernel
// (docs/PERFORMANCE.md §6). And once a copy finds no free buffer its size, a thread of
// its own populates the next ones ahead of need (`fill_ahead`).

/// Free buffers kept, at most.
const MAX_POOLED: usize = 64;
/// Free buffers kept beyond the number lent out.
const KEPT_SPARE: usize = 4;
/// Bytes of capacity the free buffers may hold together.
const MAX_POOLED_BYTES: usize = 64 << 20;
/// A buffer larger than this is freed, not kept (one large append must not pin its size).
const MAX_POOLED_CAPACITY: usize = 4 << 20;
/// Smaller copies get a buffer of their own, not a pooled one: their allocation is cheap,
/// and a small call (one 128-byte append) must not hold a buffer sized for a large one.
const MIN_POOLED_BYTES: usize = 16 << 10;
/// New buffers from this size up are populated before the copy (the binding's copies are
/// up to ~1 MiB: `STAGE_FLUSH_BYTES` in index.ts). Below it, the call would cost more than
/// the few page faults it saves.
const MIN_POPULATED_BYTES: usize = 256 << 10;
/// Free buffers of a burst's size that the filler keeps ready, at most.
const FILLED_AHEAD: usize = 4;
/// The filler sizes its buffers up to a multiple of this, with this much room to spare: a
/// tick's copies vary by a record's length around the binding's ~1 MiB.
const FILL_GRAIN: usize = 64 << 10;

/// An empty buffer that can hold `len` bytes.
fn new_buffer(len: usize) -> Vec<u8> {
    let mut buffer = Vec::with_capacity(len);
    if len >= MIN_POPULATED_BYTES {
        crate::io::populate_for_write(buffer.spare_capacity_mut());
    }
    buffer
}

struct Pool {
    /// Oldest first.
    free: Vec<Vec<u8>>,
    /// Pooled copies handed out and not yet dropped.
    lent: usize,
    /// The size of buffer the filler should have ready (0: none wanted).
    wanted: usize,
}

impl Pool {
    /// Takes out the newest free buffer that can hold `len` bytes.
    fn take(&mut self, len: usize) -> Option<Vec<u8>> {
        let newest_fit = self
            .free
            .iter()
            .rposition(|buffer| buffer.capacity() >= len)?;
        Some(self.free.remove(newest_fit))
    }

    /// Whether the filler should add a buffer of `len` bytes: the pool would keep one that
    /// large, fewer than `FILLED_AHEAD` free ones fit it, and one more stays within the
    /// bounds `trim` keeps.
    fn needs_fill(&self, len: usize) -> bool {
        let fits = self.free.iter().filter(|b| b.capacity() >= len).count();
        let bytes: usize = self.free.iter().map(Vec::capacity).sum();
        len <= MAX_POOLED_CAPACITY
            && fits < FILLED_AHEAD
            && self.free.len() < MAX_POOLED.min(self.lent + KEPT_SPARE)
            && bytes + len <= MAX_POOLED_BYTES
    }

    /// Takes out the oldest free buffers beyond the bounds (the newest were touched last,
    /// likeliest still cached), for the caller to free outside the lock.
    fn trim(&mut self) -> Vec<Vec<u8>> {
        let mut bytes = 0;
        let kept = (self.free.iter().rev())
            .take(MAX_POOLED.min(self.lent + KEPT_SPARE))
            .take_while(|buffer| {
                bytes += buffer.capacity();
                bytes <= MAX_POOLED_BYTES
            })
            .count();
        self.free.drain(..self.free.len() - kept).collect()
    }
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: Vec::new(),
    lent: 0,
    wanted: 0,
});

/// Wakes the filler (waits with `POOL`'s lock).
static FILL: Condvar = Condvar::new();
/// Whether copies ask the filler for buffers (off only in this file's test of the bounds).
static FILL_AHEAD: AtomicBool = AtomicBool::new(true);
static FILLER: Once = Once::new();

/// The filler: while a burst of large copies runs, it populates the next buffers on its
/// own thread, so the copying thread (the JS thread, in the binding) finds them ready
/// instead of paying for fresh pages itself (~3 µs per 4 KiB on the development VM;
/// docs/PERFORMANCE.md §6). Best effort: a copy that finds none populates its own.
fn fill_ahead() {
    let mut guard = pool();
    loop {
        while guard.wanted == 0 {
            guard = FILL
                .wait(guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        let len = guard.wanted;
        if !guard.needs_fill(len) {
            guard.wanted = 0;
            continue;
        }
        // Populate outside the lock: copies and drops go on meanwhile.
        drop(guard);
        let buffer = new_buffer(len);
        guard = pool();
        if guard.needs_fill(len) {
            guard.free.push(buffer);
        } else {
            // Copies were returned meanwhile: not needed after all.
            drop(guard);
            drop(buffer);
            guard = pool();
        }
    }
}

/// Asks the filler for buffers that hold `len` bytes (the caller holds `POOL`'s lock): of
/// `len` rounded up with room to spare, so the next copies of about that size fit them too;
/// never of a size the pool would not keep.
fn want(pool: &mut Pool, len: usize) {
    if len < MIN_POPULATED_BYTES || !FILL_AHEAD.load(Ordering::Relaxed) {
        return;
    }
    let len = (len + FILL_GRAIN)
        .next_multiple_of(FILL_GRAIN)
        .min(MAX_POOLED_CAPACITY)
        .max(len);
    if !pool.needs_fill(len) {
        return;
    }
    FILLER.call_once(|| {
        // Without the thread every copy populates its own buffer, as before.
        let _ = std::thread::Builder::new()
            .name("doublewrite-fill".into())
            .spawn(fill_ahead);
    });
    pool.wanted = len;
    FILL.notify_one();
}

fn pool() -> MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A copy of some bytes in a pooled buffer; the buffer returns to the pool when dropped.
struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.0);
        let mut pool = pool();
        pool.lent -= 1;
        if buffer.capacity() <= MAX_POOLED_CAPACITY {
            pool.free.push(buffer);
        }
        let freed = pool.trim();
        drop(pool);
        drop(freed);
    }
}

/// `bytes` copied into a buffer from a process-wide pool (or a new one when none that is
/// free can hold them), for [`Payload::shared`]: the buffer goes back to the pool when the
/// last payload holding it is dropped (by the commit thread, once the commit is done).
/// Allocating per record instead costs a page fault per 4 KiB payload when the allocator
/// gives freed memory back to the kernel, and a new buffer of at least 256 KiB has its
/// pages populated in one call before the copy (docs/PERFORMANCE.md §6). Copies under
/// 16 KiB get a buffer of their own.
pub fn pooled_copy(bytes: &[u8]) -> SharedBytes {
    if bytes.len() < MIN_POOLED_BYTES {
        return Arc::new(bytes.to_vec());
    }
    let reused = {
        let mut pool = pool();
        pool.lent += 1;
        let reused = pool.take(bytes.len());
        if reused.is_none() {
            // The pool is short of buffers this size: a burst is outgrowing it.
            want(&mut pool, bytes.len());
        }
        reused
    };
    let mut buffer = reused.unwrap_or_else(|| new_buffer(bytes.len()));
    buffer.clear();
    buffer.extend_from_slice(bytes);
    Arc::new(Pooled(buffer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts its drops, as a binding's reused buffer would go back to its pool.
    struct Tracked(Vec<u8>, Arc<AtomicUsize>);

    impl AsRef<[u8]> for Tracked {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn shared_payloads_read_their_own_range_and_release_the_buffer_with_the_last() {
        let drops = Arc::new(AtomicUsize::new(0));
        let buffer: SharedBytes = Arc::new(Tracked(b"helloworld".to_vec(), drops.clone()));
        let hello = Payload::shared(buffer.clone(), 0..5);
        let world = Payload::shared(buffer, 5..10);
        assert_eq!(&*hello, b"hello");
        assert_eq!(&*world, b"world");
        assert_eq!(hello, Payload::from(b"hello"));
        drop(hello);
        assert_eq!(
            drops.load(Ordering::SeqCst),
            0,
            "world still holds the buffer"
        );
        drop(world);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    #[should_panic(expected = "outside its 3-byte buffer")]
    fn a_range_past_the_buffer_is_refused() {
        let buffer: SharedBytes = Arc::new(vec![1u8, 2, 3]);
        let _ = Payload::shared(buffer, 1..4);
    }

    #[test]
    fn debug_shows_the_length_not_the_bytes() {
        assert_eq!(
            format!("{:?}", Payload::from(vec![7u8; 3])),
            "Payload(3 bytes)"
        );
    }

    /// The pool is process-wide: this is the one test that touches it (the binding's
    /// calls are tested from JavaScript), so no other test races its counts.
    #[test]
    fn the_pool_reuses_returned_buffers_within_its_bounds() {
        // The exact counts below need no filler adding buffers; it is checked at the end.
        FILL_AHEAD.store(false, Ordering::Relaxed);
        let size = MIN_POOLED_BYTES;
        let fill = |n: u8| vec![n; size];

        // A small copy is a buffer of its own and never enters the pool.
        drop(pooled_copy(&[1, 2, 3]));
        let pool_now = pool();
        assert_eq!((pool_now.free.len(), pool_now.lent), (0, 0));
        drop(pool_now);

        let first = pooled_copy(&fill(1));
        assert_eq!((*first).as_ref(), &fill(1)[..]);
        let address = (*first).as_ref().as_ptr();
        drop(first);
        assert_eq!(pool().free.len(), 1, "a dropped copy's buffer is kept");
        let second = pooled_copy(&fill(2));
        assert_eq!((*second).as_ref(), &fill(2)[..]);
        assert_eq!((*second).as_ref().as_ptr(), address, "and reused");
        assert_eq!(pool().free.len(), 0);
        drop(second);

        // A burst: the returned buffers are kept while others are still lent, up to a bound.
        let burst: Vec<_> = (0..MAX_POOLED + 8)
            .map(|i| pooled_copy(&fill(i as u8)))
            .collect();
        let newest = (*burst[burst.len() - 1]).as_ref().as_ptr();
        let mut burst = burst.into_iter();
        for copy in burst.by_ref().take(MAX_POOLED + 4) {
            drop(copy);
        }
        assert_eq!(
            pool().free.len(),
            4 + KEPT_SPARE,
            "no more than lent + KEPT_SPARE"
        );
        for copy in burst {
            drop(copy);
        }
        let pool_now = pool();
        assert_eq!(
            pool_now.free.len(),
            KEPT_SPARE,
            "a drained pool keeps only a few"
        );
        assert_eq!(pool_now.lent, 0);
        assert_eq!(
            pool_now.free.last().map(Vec::as_ptr),
            Some(newest),
            "the newest buffer is kept, the oldest freed"
        );
        drop(pool_now);

        // A buffer too large to keep: none of the free ones fits it, and it is not kept.
        let before = pool().free.len();
        drop(pooled_copy(&vec![0u8; MAX_POOLED_CAPACITY + 1]));
        assert_eq!(pool().free.len(), before, "freed, not kept");

        // A copy takes the newest free buffer that can hold it, not a newer, smaller one
        // (which would have to grow into fresh memory), and the copy reads as itself.
        let address = |copy: &SharedBytes| (**copy).as_ref().as_ptr();
        let large = |n: u8, len: usize| vec![n; len];
        let big = pooled_copy(&large(3, MIN_POPULATED_BYTES + 1));
        let small = pooled_copy(&fill(7));
        let big_address = address(&big);
        drop(big);
        drop(small);
        let middle = pooled_copy(&large(4, MIN_POPULATED_BYTES));
        assert_eq!((*middle).as_ref(), &large(4, MIN_POPULATED_BYTES)[..]);
        assert_eq!(address(&middle), big_address, "the older buffer that fits");
        drop(middle);
        // A copy that no free buffer can hold gets a new one and takes none of them.
        let (free_before, most) = {
            let pool_now = pool();
            let most = pool_now.free.iter().map(Vec::capacity).max();
            (pool_now.free.len(), most.expect("free buffers"))
        };
        let longer = pooled_copy(&large(5, most + 1));
        assert_eq!((*longer).as_ref(), &large(5, most + 1)[..]);
        assert_eq!(pool().free.len(), free_before, "no free buffer taken");
        drop(longer);

        // The bytes bound: 17 returned buffers of 4 MiB while 13 are lent; the count bound
        // (13 + KEPT_SPARE) would keep all 17, the bytes bound keeps 16 (64 MiB).
        let largest = vec![0u8; MAX_POOLED_CAPACITY];
        let big: Vec<_> = (0..30).map(|_| pooled_copy(&largest)).collect();
        let mut big = big.into_iter();
        for copy in big.by_ref().take(17) {
            drop(copy);
        }
        let pool_now = pool();
        assert_eq!(pool_now.free.len(), MAX_POOLED_BYTES / MAX_POOLED_CAPACITY);
        assert!(pool_now.free.iter().map(Vec::capacity).sum::<usize>() <= MAX_POOLED_BYTES);
        drop(pool_now);
        drop(big);

        // The filler: a large copy that finds no free buffer it fits has the next ones
        // populated on another thread while copies are lent, up to FILLED_AHEAD, and the
        // next copy takes one of them.
        FILL_AHEAD.store(true, Ordering::Relaxed);
        pool().free.clear();
        let len = MIN_POPULATED_BYTES;
        let fits = || pool().free.iter().filter(|b| b.capacity() >= len).count();
        let first = pooled_copy(&large(6, len));
        let started = std::time::Instant::now();
        let mut idle = false;
        while !idle && started.elapsed() < std::time::Duration::from_secs(10) {
            let now = fits();
            assert!(now <= FILLED_AHEAD, "{now} buffers filled ahead");
            // Done once it filled some and has gone back to waiting.
            idle = now > 0 && pool().wanted == 0;
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            idle,
            "the filler did not fill buffers and go idle within 10 s"
        );
        let pool_now = pool();
        assert!(
            pool_now.free.len() <= pool_now.lent + KEPT_SPARE,
            "within trim's bound"
        );
        let filled: Vec<*const u8> = pool_now.free.iter().map(Vec::as_ptr).collect();
        drop(pool_now);
        let second = pooled_copy(&large(7, len));
        assert_eq!((*second).as_ref(), &large(7, len)[..]);
        assert!(
            filled.contains(&address(&second)),
            "a filled buffer is reused"
        );
        // A copy a little longer fits the filled buffers too (they have room to spare).
        let third = pooled_copy(&large(8, len + 100));
        assert!(
            filled.contains(&address(&third)),
            "a filled buffer holds a longer copy"
        );
        drop((first, second, third));
        // A copy larger than the pool keeps asks for nothing: no buffer that size is filled.
        pool().free.clear();
        let huge = pooled_copy(&large(9, MAX_POOLED_CAPACITY + 1));
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(
            pool().free.len(),
            0,
            "nothing filled for a copy the pool would free"
        );
        assert_eq!(pool().wanted, 0);
        drop(huge);
    }
}
