//! The bytes of a record to append.
//!
//! A [`Payload`] owns its bytes, or is a range of a buffer that several records share. The
//! second form lets a binding copy the payloads of one call into one buffer that it reuses
//! once the call's commit is done, instead of allocating (and faulting in) fresh memory for
//! every record: the buffer goes back to its owner when the last record holding it is
//! dropped, on the commit thread ([`pooled_copy`]).

use std::fmt;
use std::ops::{Deref, Range};
use std::sync::{Arc, Mutex, MutexGuard};

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
// back, so a burst reuses memory its first commits have freed; once none is in flight it
// keeps only a few buffers, so an idle process does not hold a burst's memory.

/// Buffers kept while copies are in flight, at most; more are freed.
const MAX_POOLED: usize = 64;
/// Buffers kept once no copy is in flight.
const KEPT_IDLE: usize = 4;
/// A buffer larger than this is freed, not kept (one large append must not pin its size).
const MAX_POOLED_CAPACITY: usize = 4 << 20;
/// A new buffer has room for at least this much: small calls then leave buffers that a
/// full hand-over of the JS layer (1 MiB, `STAGE_FLUSH_BYTES` in index.ts) mostly reuses.
const MIN_CAPACITY: usize = 64 << 10;

struct Pool {
    free: Vec<Vec<u8>>,
    /// Copies handed out and not yet dropped.
    lent: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: Vec::new(),
    lent: 0,
});

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
        let mut bytes = std::mem::take(&mut self.0);
        bytes.clear();
        let mut pool = pool();
        pool.lent -= 1;
        let keep = if pool.lent == 0 {
            KEPT_IDLE
        } else {
            MAX_POOLED
        };
        if bytes.capacity() <= MAX_POOLED_CAPACITY && pool.free.len() < keep {
            pool.free.push(bytes);
        }
        let excess = pool.free.len().saturating_sub(keep);
        // The oldest first: the newest were touched last and are likeliest still cached.
        let freed: Vec<Vec<u8>> = pool.free.drain(..excess).collect();
        drop(pool);
        drop(freed);
    }
}

/// `bytes` copied into a buffer from a process-wide pool (or a new one when none is free),
/// for [`Payload::shared`]: the buffer goes back to the pool when the last payload holding
/// it is dropped. Allocating per record instead costs a page fault per 4 KiB payload when
/// the allocator gives freed memory back to the kernel (docs/PERFORMANCE.md §6).
pub fn pooled_copy(bytes: &[u8]) -> SharedBytes {
    let reused = {
        let mut pool = pool();
        pool.lent += 1;
        pool.free.pop()
    };
    let mut buffer = reused.unwrap_or_default();
    buffer.reserve(bytes.len().max(MIN_CAPACITY));
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

    /// The pool is process-wide; one test touches it, so no other test races its counts.
    #[test]
    fn the_pool_reuses_returned_buffers_and_keeps_few_once_nothing_is_in_flight() {
        let first = pooled_copy(&[1, 2, 3]);
        assert_eq!((*first).as_ref(), &[1, 2, 3]);
        let address = (*first).as_ref().as_ptr();
        drop(first);
        let second = pooled_copy(&[4, 5]);
        assert_eq!((*second).as_ref(), &[4, 5]);
        assert_eq!(
            (*second).as_ref().as_ptr(),
            address,
            "the second copy reuses the first's buffer"
        );
        drop(second);

        // A burst: while one copy stays in flight, the returned buffers are kept, up to a bound.
        let held = pooled_copy(&[0]);
        let burst: Vec<_> = (0..MAX_POOLED + 4)
            .map(|i| pooled_copy(&[i as u8]))
            .collect();
        drop(burst);
        assert_eq!(
            pool().free.len(),
            MAX_POOLED,
            "extra buffers are freed, not kept"
        );
        let large = pooled_copy(&vec![0u8; MAX_POOLED_CAPACITY + 1]);
        drop(large);
        assert_eq!(
            pool().free.len(),
            MAX_POOLED - 1,
            "an oversized buffer is not kept (it took a pooled one)"
        );
        // The burst is over: the last copy in flight is dropped.
        drop(held);
        assert_eq!(
            pool().free.len(),
            KEPT_IDLE,
            "an idle pool keeps only a few"
        );
        assert_eq!(pool().lent, 0);
    }
}
