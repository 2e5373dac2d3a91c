//! How the commit thread waits for its next unit of work: it polls the queue for a short
//! while before it sleeps.
//!
//! When one caller awaits each commit, its next append arrives a few tens of µs after the
//! commit thread reported the last one: the caller's wake-up, its continuation, its next
//! submit. Sleeping on the condition variable in between costs a sleep and a wake-up per
//! commit, and on a virtual machine whose idle vCPUs halt the wake-up is the dear part (an
//! inter-processor interrupt and a halted vCPU brought back: tens of µs; see
//! docs/PERFORMANCE.md §2). So the thread first polls, yielding the CPU between polls, for
//! up to [`LIMIT`]. Two guards keep the poll from taking a CPU someone else needs:
//! - a yield that took longer than [`SLOW_YIELD`] means another thread ran on this CPU
//!   meanwhile: the poll stops at once (RocksDB's write thread reads the same sign, and
//!   gives up after a few such yields);
//! - a credit that falls with each poll that found nothing: while work arrives too rarely
//!   for polling to pay, the thread sleeps at once ([`Poller::may_poll`] says no), and
//!   tries a poll again now and then.

use std::time::{Duration, Instant};

/// The longest poll: about the turnaround of an awaiting JS caller on a slow VM.
const LIMIT: Duration = Duration::from_micros(50);
/// A yield longer than this gave the CPU to another thread.
const SLOW_YIELD: Duration = Duration::from_micros(10);
/// Credit gained by a poll that found work, and its ceiling.
const HIT_GAIN: i32 = 1;
const MAX_CREDIT: i32 = 16;
/// Credit lost by a poll that found nothing; with a credit below zero the thread sleeps at
/// once, and each such wait earns one back.
const MISS_COST: i32 = 4;

/// The commit thread's poll state: one per thread, kept across waits.
#[derive(Debug)]
pub(super) struct Poller {
    credit: i32,
    limit: Duration,
    slow_yield: Duration,
}

impl Poller {
    pub(super) fn new() -> Poller {
        Poller {
            credit: 0,
            limit: LIMIT,
            slow_yield: SLOW_YIELD,
        }
    }

    /// Whether this wait should poll at all; a `false` (out of credit) earns one back, so a
    /// poll is tried again after a few waits.
    pub(super) fn may_poll(&mut self) -> bool {
        if self.credit < 0 {
            self.credit += 1;
            return false;
        }
        true
    }

    /// Polls `ready` (yielding the CPU before each call) until it returns true or the poll
    /// gives up; returns whether it returned true. `false` means: sleep until woken.
    pub(super) fn poll(&mut self, mut ready: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        let mut before = start;
        loop {
            std::thread::yield_now();
            let after = Instant::now();
            if ready() {
                self.credit = (self.credit + HIT_GAIN).min(MAX_CREDIT);
                return true;
            }
            if after - before > self.slow_yield || after - start > self.limit {
                self.credit -= MISS_COST;
                return false;
            }
            before = after;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A poller whose yields never count as slow: the tests below are about the credit, and
    /// a busy test machine must not turn a yield into a miss.
    fn patient() -> Poller {
        Poller {
            slow_yield: Duration::from_secs(3600),
            limit: Duration::from_millis(20),
            ..Poller::new()
        }
    }

    #[test]
    fn a_poll_returns_as_soon_as_work_is_ready() {
        let mut poller = patient();
        let mut calls = 0;
        assert!(poller.poll(|| {
            calls += 1;
            calls == 3
        }));
        assert_eq!(calls, 3, "no call after the one that found work");
        assert_eq!(poller.credit, HIT_GAIN);
    }

    #[test]
    fn a_poll_that_finds_nothing_gives_up_after_its_limit() {
        let mut poller = patient();
        let start = Instant::now();
        assert!(!poller.poll(|| false));
        assert!(start.elapsed() >= poller.limit, "gave up before the limit");
        assert_eq!(poller.credit, -MISS_COST);
    }

    #[test]
    fn after_misses_the_thread_sleeps_at_once_then_tries_again() {
        let mut poller = patient();
        assert!(poller.may_poll());
        assert!(!poller.poll(|| false));
        // Below zero: no poll for MISS_COST waits.
        for _ in 0..MISS_COST {
            assert!(!poller.may_poll(), "polled while out of credit");
        }
        assert_eq!(poller.credit, 0);
        // Then a poll again, which finds work.
        assert!(poller.may_poll());
        assert!(poller.poll(|| true));
    }

    #[test]
    fn credit_is_bounded_so_a_change_of_workload_is_noticed_soon() {
        let mut poller = patient();
        for _ in 0..1000 {
            assert!(poller.poll(|| true));
        }
        assert_eq!(poller.credit, MAX_CREDIT);
        let misses = (MAX_CREDIT / MISS_COST) + 1;
        for _ in 0..misses {
            assert!(!poller.poll(|| false));
        }
        assert!(
            !poller.may_poll(),
            "a few misses after a long run of hits stop the polling"
        );
    }

    #[test]
    fn a_slow_yield_ends_the_poll() {
        let mut poller = Poller {
            slow_yield: Duration::ZERO,
            limit: Duration::from_secs(2),
            ..Poller::new()
        };
        let start = Instant::now();
        assert!(!poller.poll(|| false));
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "polled until the limit"
        );
        assert_eq!(poller.credit, -MISS_COST);
    }
}
