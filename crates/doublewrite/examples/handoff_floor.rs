//! What a thread hand-off costs a durable commit on this machine, outside doublewrite.
//!
//! ```text
//! cargo run --release -p doublewrite --example handoff_floor -- DIR [COMMITS] [ROUNDS]
//! ```
//!
//! Six ways to make one 4 KiB write durable, each a loop of COMMITS (default 2000) durable
//! writes into one preallocated, zero-filled 64 MiB file in DIR, run in interleaved rounds
//! (default 9) so that a noisy disk hits all of them alike:
//! - `inline`: the calling thread writes and calls fdatasync — what better-sqlite3 does on
//!   the JS thread;
//! - `handoff`: the caller wakes a worker thread (mutex + condvar), the worker writes and
//!   calls fdatasync, then wakes the caller through an eventfd the caller waits on in
//!   `epoll_wait` — the two wakes of an awaited doublewrite append (JS thread → commit
//!   thread → libuv's eventfd), without JS or encoding;
//! - `handoff-prewake`: as `handoff`, but the worker wakes the caller when its fdatasync
//!   *starts*, and the caller spins until it ends — a spin from the sync's start, done
//!   natively (PERFORMANCE §9 tried it from JS under `busyPoll`);
//! - `aio-fdsync`: the caller writes, submits `IOCB_CMD_FDSYNC` with Linux AIO (the kernel
//!   runs the sync on a workqueue) and waits for its eventfd in `epoll_wait` — one way an
//!   async API could sync without a thread of its own;
//! - `dio-dsync`: the calling thread writes the block with `O_DIRECT` and `RWF_DSYNC`
//!   (`pwritev2`): durable when the call returns, no fdatasync;
//! - `aio-dio-dsync`: the same write submitted through Linux AIO, its completion signalled
//!   to an eventfd the caller waits on in `epoll_wait` — a completion that reaches the
//!   waiting thread without a thread of ours in between, and without a spin.
//!
//! It prints the median µs per commit of each and the calling thread's CPU per commit (user
//! and system time from `RUSAGE_THREAD`: what a spin costs). PERFORMANCE.md §2 quotes it:
//! the hand-off is the gap between an awaited append and better-sqlite3's blocking one.
#![allow(unsafe_code)] // raw syscalls (epoll, eventfd, AIO): the experiment is about them

#[cfg(target_os = "linux")]
mod linux {
    use std::fs::File;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Instant;

    const BLOCK: usize = 4096;
    const SPAN: u64 = 64 << 20;

    /// `struct iocb` of `<linux/aio_abi.h>` (little-endian field order).
    #[repr(C)]
    #[derive(Debug, Default)]
    struct Iocb {
        data: u64,
        key: u32,
        rw_flags: u32,
        opcode: u16,
        priority: i16,
        fd: u32,
        buf: u64,
        nbytes: u64,
        offset: i64,
        reserved: u64,
        flags: u32,
        resfd: u32,
    }

    /// `struct io_event` of `<linux/aio_abi.h>`.
    #[repr(C)]
    #[derive(Debug, Default, Clone, Copy)]
    struct IoEvent {
        data: u64,
        obj: u64,
        res: i64,
        res2: i64,
    }

    const IOCB_CMD_PWRITE: u16 = 1;
    const IOCB_CMD_FDSYNC: u16 = 3;
    const IOCB_FLAG_RESFD: u32 = 1;

    fn check(what: &str, result: i64) -> i64 {
        assert!(result >= 0, "{what}: {}", std::io::Error::last_os_error());
        result
    }

    fn prepared_file(path: &str) -> File {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap_or_else(|e| panic!("create {path}: {e}"));
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(SPAN >> 20) {
            file.write_all(&zeros).expect("zero-fill");
        }
        file.sync_all().expect("sync the zero-fill");
        file
    }

    fn offset(commit: u64) -> u64 {
        (commit * BLOCK as u64) % SPAN
    }

    fn write_block(fd: i32, block: &[u8], at: u64) {
        let written = unsafe { libc::pwrite(fd, block.as_ptr().cast(), block.len(), at as i64) };
        assert_eq!(
            written,
            block.len() as isize,
            "pwrite: {}",
            std::io::Error::last_os_error()
        );
    }

    fn fdatasync(fd: i32) {
        check("fdatasync", unsafe { libc::fdatasync(fd) } as i64);
    }

    /// A block of 7s at a `BLOCK`-aligned address inside `storage` (O_DIRECT's rule).
    fn aligned_block(storage: &mut Vec<u8>) -> &[u8] {
        *storage = vec![7u8; 2 * BLOCK];
        let skip = storage.as_ptr().align_offset(BLOCK);
        &storage[skip..skip + BLOCK]
    }

    /// The file opened again with `O_DIRECT`.
    fn direct(path: &str) -> File {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .unwrap_or_else(|e| panic!("open {path} with O_DIRECT: {e}"))
    }

    /// CPU time (user + system) the calling thread has used, in µs.
    fn thread_cpu_us() -> f64 {
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        check(
            "getrusage",
            unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } as i64,
        );
        let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
        us(usage.ru_utime) + us(usage.ru_stime)
    }

    /// An eventfd and an epoll set watching it: the shape of libuv's async wake.
    struct Wake {
        eventfd: i32,
        epoll: i32,
    }

    impl Wake {
        fn new() -> Wake {
            let eventfd = check("eventfd", unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) }
                as i64) as i32;
            let epoll = check("epoll_create1", unsafe { libc::epoll_create1(0) } as i64) as i32;
            let mut interest = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: 0,
            };
            check("epoll_ctl", unsafe {
                libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, eventfd, &mut interest)
            } as i64);
            Wake { eventfd, epoll }
        }

        fn signal(&self) {
            let one = 1u64;
            check("eventfd write", unsafe {
                libc::write(self.eventfd, (&one as *const u64).cast(), 8)
            } as i64);
        }

        fn wait(&self) {
            let mut ready = libc::epoll_event { events: 0, u64: 0 };
            while unsafe { libc::epoll_wait(self.epoll, &mut ready, 1, -1) } != 1 {}
            let mut count = 0u64;
            check("eventfd read", unsafe {
                libc::read(self.eventfd, (&mut count as *mut u64).cast(), 8)
            } as i64);
        }
    }

    impl Drop for Wake {
        fn drop(&mut self) {
            unsafe {
                libc::close(self.epoll);
                libc::close(self.eventfd);
            }
        }
    }

    /// The prepared file, also opened with `O_DIRECT`.
    struct Target {
        file: File,
        direct: File,
        /// A second prepared file: the DWB of a `mirror` commit.
        other: File,
        other_direct: File,
    }

    fn inline(target: &Target, commits: u64, first: u64) -> f64 {
        let fd = target.file.as_raw_fd();
        let block = vec![7u8; BLOCK];
        let started = Instant::now();
        for commit in first..first + commits {
            write_block(fd, &block, offset(commit));
            fdatasync(fd);
        }
        started.elapsed().as_secs_f64() * 1e6 / commits as f64
    }

    fn handoff(target: &Target, commits: u64, first: u64) -> f64 {
        handoff_with(target, commits, first, false)
    }

    fn handoff_prewake(target: &Target, commits: u64, first: u64) -> f64 {
        handoff_with(target, commits, first, true)
    }

    /// `handoff`; with `prewake`, the worker signals when its fdatasync starts and stores the
    /// commit's number in `synced` when it ends, and the caller spins on `synced`.
    fn handoff_with(target: &Target, commits: u64, first: u64, prewake: bool) -> f64 {
        let fd = target.file.as_raw_fd();
        let done = Arc::new(Wake::new());
        let synced = Arc::new(AtomicU64::new(u64::MAX));
        // The next offset to write, or None when idle; u64::MAX stops the worker.
        let request = Arc::new((Mutex::new(None::<u64>), Condvar::new()));
        let worker = {
            let (done, request, synced) = (done.clone(), request.clone(), synced.clone());
            std::thread::spawn(move || {
                let block = vec![7u8; BLOCK];
                loop {
                    let (slot, ready) = &*request;
                    let mut next = slot.lock().expect("request lock");
                    let at = loop {
                        match next.take() {
                            Some(at) => break at,
                            None => next = ready.wait(next).expect("request wait"),
                        }
                    };
                    drop(next);
                    if at == u64::MAX {
                        return;
                    }
                    write_block(fd, &block, at);
                    if prewake {
                        done.signal();
                        fdatasync(fd);
                        synced.store(at, Ordering::Release);
                    } else {
                        fdatasync(fd);
                        done.signal();
                    }
                }
            })
        };
        let send = |at: u64| {
            let (slot, ready) = &*request;
            *slot.lock().expect("request lock") = Some(at);
            ready.notify_one();
        };
        let started = Instant::now();
        for commit in first..first + commits {
            send(offset(commit));
            done.wait();
            if prewake {
                while synced.load(Ordering::Acquire) != offset(commit) {
                    std::hint::spin_loop();
                }
            }
        }
        let per_commit = started.elapsed().as_secs_f64() * 1e6 / commits as f64;
        send(u64::MAX);
        worker.join().expect("worker");
        per_commit
    }

    /// A Linux AIO context whose completions are signalled to an eventfd waited on in
    /// `epoll_wait` (the shape of libuv's loop).
    struct Aio {
        context: u64,
        done: Wake,
    }

    impl Aio {
        fn new() -> Aio {
            let mut context: u64 = 0;
            check("io_setup", unsafe {
                libc::syscall(libc::SYS_io_setup, 8, &mut context)
            });
            Aio {
                context,
                done: Wake::new(),
            }
        }

        /// Submits `request`, sleeps in `epoll_wait` until its completion is signalled, and
        /// returns its result.
        fn run(&self, mut request: Iocb) -> i64 {
            request.flags = IOCB_FLAG_RESFD;
            request.resfd = self.done.eventfd as u32;
            let mut batch: [*mut Iocb; 1] = [&mut request];
            let submitted = check("io_submit", unsafe {
                libc::syscall(libc::SYS_io_submit, self.context, 1, batch.as_mut_ptr())
            });
            assert_eq!(submitted, 1);
            self.done.wait();
            let mut event = [IoEvent::default()];
            let timeout: *const libc::timespec = std::ptr::null();
            let reaped = unsafe {
                libc::syscall(
                    libc::SYS_io_getevents,
                    self.context,
                    1,
                    1,
                    event.as_mut_ptr(),
                    timeout,
                )
            };
            assert_eq!(check("io_getevents", reaped), 1);
            event[0].res
        }
    }

    impl Drop for Aio {
        fn drop(&mut self) {
            check("io_destroy", unsafe {
                libc::syscall(libc::SYS_io_destroy, self.context)
            });
        }
    }

    fn aio_fdsync(target: &Target, commits: u64, first: u64) -> f64 {
        let fd = target.file.as_raw_fd();
        let aio = Aio::new();
        let block = vec![7u8; BLOCK];
        let started = Instant::now();
        for commit in first..first + commits {
            write_block(fd, &block, offset(commit));
            let result = aio.run(Iocb {
                opcode: IOCB_CMD_FDSYNC,
                fd: fd as u32,
                ..Iocb::default()
            });
            assert_eq!(result, 0, "the AIO fdatasync failed: {result}");
        }
        started.elapsed().as_secs_f64() * 1e6 / commits as f64
    }

    fn dio_dsync(target: &Target, commits: u64, first: u64) -> f64 {
        let fd = target.direct.as_raw_fd();
        let mut storage = Vec::new();
        let block = aligned_block(&mut storage);
        let vec = libc::iovec {
            iov_base: block.as_ptr() as *mut libc::c_void,
            iov_len: BLOCK,
        };
        let started = Instant::now();
        for commit in first..first + commits {
            let written = check("pwritev2", unsafe {
                libc::pwritev2(fd, &vec, 1, offset(commit) as i64, libc::RWF_DSYNC)
            } as i64);
            assert_eq!(written, BLOCK as i64);
        }
        started.elapsed().as_secs_f64() * 1e6 / commits as f64
    }

    /// An AIO write of `block` at commit `commit`'s offset of `fd`, with `RWF_DSYNC`.
    fn dsync_write(fd: i32, block: &[u8], commit: u64) -> Iocb {
        Iocb {
            opcode: IOCB_CMD_PWRITE,
            fd: fd as u32,
            buf: block.as_ptr() as u64,
            nbytes: BLOCK as u64,
            offset: offset(commit) as i64,
            rw_flags: libc::RWF_DSYNC as u32,
            ..Iocb::default()
        }
    }

    fn aio_dio_dsync(target: &Target, commits: u64, first: u64) -> f64 {
        let fd = target.direct.as_raw_fd();
        let aio = Aio::new();
        let mut storage = Vec::new();
        let block = aligned_block(&mut storage);
        let started = Instant::now();
        for commit in first..first + commits {
            let result = aio.run(dsync_write(fd, block, commit));
            assert_eq!(
                result, BLOCK as i64,
                "the AIO O_DIRECT write failed: {result}"
            );
        }
        started.elapsed().as_secs_f64() * 1e6 / commits as f64
    }

    /// The serial two-file cycle of a `mirror` commit that cannot overlap: write + fdatasync
    /// one file, then the other (the benchmark's `device-2file`).
    fn pair_serial(target: &Target, commits: u64, first: u64) -> f64 {
        let (a, b) = (target.other.as_raw_fd(), target.file.as_raw_fd());
        let block = vec![7u8; BLOCK];
        let started = Instant::now();
        for commit in first..first + commits {
            write_block(a, &block, offset(commit));
            fdatasync(a);
            write_block(b, &block, offset(commit));
            fdatasync(b);
        }
        started.elapsed().as_secs_f64() * 1e6 / commits as f64
    }

    /// Both writes submitted at once through Linux AIO, `O_DIRECT` and `RWF_DSYNC`, one
    /// `io_submit`; the caller sleeps in `epoll_wait` until both completions are signalled:
    /// an overlapped `mirror` commit with no thread of ours.
    fn pair_aio_dio_dsync(target: &Target, commits: u64, first: u64) -> f64 {
        let fds = [target.other_direct.as_raw_fd(), target.direct.as_raw_fd()];
        let aio = Aio::new();
        let mut storage = Vec::new();
        let block = aligned_block(&mut storage);
        let started = Instant::now();
        for commit in first..first + commits {
            let mut requests = fds.map(|fd| Iocb {
                flags: IOCB_FLAG_RESFD,
                resfd: aio.done.eventfd as u32,
                ..dsync_write(fd, block, commit)
            });
            let [first_request, second_request] = &mut requests;
            let mut batch: [*mut Iocb; 2] = [first_request, second_request];
            let submitted = check("io_submit", unsafe {
                libc::syscall(libc::SYS_io_submit, aio.context, 2, batch.as_mut_ptr())
            });
            assert_eq!(submitted, 2);
            let mut reaped = 0;
            while reaped < 2 {
                aio.done.wait();
                let mut events = [IoEvent::default(); 2];
                let zero = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                let got = check("io_getevents", unsafe {
                    libc::syscall(
                        libc::SYS_io_getevents,
                        aio.context,
                        0,
                        2,
                        events.as_mut_ptr(),
                        &zero,
                    )
                });
                for event in &events[..got as usize] {
                    assert_eq!(
                        event.res, BLOCK as i64,
                        "an AIO write failed: {}",
                        event.res
                    );
                }
                reaped += got;
            }
        }
        started.elapsed().as_secs_f64() * 1e6 / commits as f64
    }

    pub fn main() {
        let mut args = std::env::args().skip(1);
        let dir = args
            .next()
            .expect("usage: handoff_floor DIR [COMMITS] [ROUNDS]");
        let commits: u64 = args
            .next()
            .map_or(2000, |s| s.parse().expect("COMMITS: a number"));
        let rounds: usize = args
            .next()
            .map_or(9, |s| s.parse().expect("ROUNDS: a number"));
        std::fs::create_dir_all(&dir).expect("create DIR");
        let path = format!("{dir}/handoff_floor.dat");
        let other_path = format!("{dir}/handoff_floor_dwb.dat");
        let target = Target {
            file: prepared_file(&path),
            direct: direct(&path),
            other: prepared_file(&other_path),
            other_direct: direct(&other_path),
        };
        type Way = fn(&Target, u64, u64) -> f64;
        let ways: [(&str, Way); 8] = [
            ("inline", inline),
            ("handoff", handoff),
            ("handoff-prewake", handoff_prewake),
            ("aio-fdsync", aio_fdsync),
            ("dio-dsync", dio_dsync),
            ("aio-dio-dsync", aio_dio_dsync),
            ("pair-serial", pair_serial),
            ("pair-aio-dio", pair_aio_dio_dsync),
        ];
        // Per way: µs per commit of each round, and the caller's CPU µs per commit.
        let mut results = vec![Vec::new(); ways.len()];
        let mut cpu = vec![Vec::new(); ways.len()];
        let mut first = 0;
        for _ in 0..rounds {
            for (((_, way), runs), cpu) in ways.iter().zip(&mut results).zip(&mut cpu) {
                let cpu_before = thread_cpu_us();
                runs.push(way(&target, commits, first));
                cpu.push((thread_cpu_us() - cpu_before) / commits as f64);
                first += commits;
            }
        }
        // The runs stay in round order for the printout.
        let median = |runs: &[f64]| {
            let mut sorted = runs.to_vec();
            sorted.sort_by(f64::total_cmp);
            sorted[sorted.len() / 2]
        };
        let base = median(&results[0]);
        for (((name, _), runs), cpu) in ways.iter().zip(&results).zip(&cpu) {
            let m = median(runs);
            println!(
                "{name:<15} {m:6.1} µs/commit ({:5.0}/s), {:+6.1} µs over inline, caller CPU {:5.1} µs/commit; runs {:?}",
                1e6 / m,
                m - base,
                median(cpu),
                runs.iter().map(|x| x.round()).collect::<Vec<_>>()
            );
        }
        drop(target);
        std::fs::remove_file(&path).expect("remove the data file");
        std::fs::remove_file(&other_path).expect("remove the second data file");
    }
}

fn main() {
    #[cfg(target_os = "linux")]
    linux::main();
    #[cfg(not(target_os = "linux"))]
    eprintln!("handoff_floor measures Linux system calls; it does nothing here");
}
