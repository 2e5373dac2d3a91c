//! A counting global allocator: the largest single allocation (or reallocation) and the
//! peak of live heap bytes since the last [`reset`].
//!
//! Shared by the fuzz targets (through this crate's library) and by the stable regression
//! test `crates/doublewrite/tests/fuzz_regressions.rs` (through `#[path]`), so both
//! enforce the same allocation bounds. It only counts: every call goes to the system
//! allocator unchanged. The process has one meter; callers serialize their measurements
//! (libFuzzer runs one input at a time; the regression test holds a lock).
#![allow(unsafe_code)] // implementing `GlobalAlloc` is unsafe by definition; nothing else is

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering::Relaxed};

/// The allocator: counts, then delegates to [`System`].
#[derive(Debug)]
pub struct Meter;

#[global_allocator]
static METER: Meter = Meter;

static LARGEST: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK_LIVE: AtomicIsize = AtomicIsize::new(0);
static BASELINE: AtomicIsize = AtomicIsize::new(0);

fn grew(size: usize, delta: isize) {
    LARGEST.fetch_max(size, Relaxed);
    let live = LIVE.fetch_add(delta, Relaxed) + delta;
    PEAK_LIVE.fetch_max(live, Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counters are atomics and never allocate.
unsafe impl GlobalAlloc for Meter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size(), layout.size() as isize);
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size(), layout.size() as isize);
        // SAFETY: forwarded contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size, new_size as isize - layout.size() as isize);
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// What was allocated since the last [`reset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Largest single allocation or reallocation, in bytes.
    pub largest: usize,
    /// Highest number of live heap bytes above the level at the reset.
    pub peak_live: usize,
}

/// Starts a new measurement.
pub fn reset() {
    let live = LIVE.load(Relaxed);
    BASELINE.store(live, Relaxed);
    PEAK_LIVE.store(live, Relaxed);
    LARGEST.store(0, Relaxed);
}

/// The usage since the last [`reset`].
pub fn usage() -> Usage {
    let peak = PEAK_LIVE.load(Relaxed) - BASELINE.load(Relaxed);
    Usage {
        largest: LARGEST.load(Relaxed),
        peak_live: peak.max(0) as usize,
    }
}
