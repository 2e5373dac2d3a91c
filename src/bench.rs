//! Benchmark support (not part of the public TypeScript API): the device limit, measured
//! by `bench/run.mjs` in the same run as everything it is compared with.
//!
//! `benchDeviceLimit(dir, files, blockSize, seconds, direct?, overlap?)` prepares `files` files of
//! [`FILE_BYTES`] each, written in full and synced (so every later write overwrites
//! allocated, initialised blocks, as the WAL's zero-filled segments and the DWB are), then
//! for `seconds` runs cycles of: for each file in turn, write `blockSize` bytes at the
//! file's next block (sequential, wrapping) and `fdatasync` it. One file is the floor of a
//! single durable write; two files is the least a DWB commit can cost (DWB write + sync,
//! then WAL write + sync). With `overlap` (two files), each cycle writes both files and then
//! runs their two fdatasyncs at once through `Vfs::sync_data_pair`, as a steady-state
//! `'mirror'` commit does. It runs on the libuv pool and goes through the core's I/O seam
//! (`StdVfs`), so `direct` uses exactly the O_DIRECT path the WAL uses.
#![cfg_attr(
    test,
    allow(
        dead_code,
        reason = "only the napi registration (absent from test builds) calls into this module"
    )
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use doublewrite::align::AlignedBuf;
use doublewrite::io::{write_all_at, OpenOptions, StdVfs, Vfs, VfsFile};
use napi::bindgen_prelude::AsyncTask;
use napi::{Env, Result, Task};
use napi_derive::napi;

use crate::error::{coded, ERR_INVALID_ARG_VALUE, ERR_OUT_OF_RANGE};

/// Bytes of each prepared file; writes wrap around inside it.
const FILE_BYTES: u64 = 16 << 20;
/// Untimed cycles before the clock starts.
const WARMUP_CYCLES: u64 = 20;

/// What `benchDeviceLimit` measured. Latencies are in microseconds.
#[napi(object)]
pub struct DeviceLimitResult {
    /// Timed cycles (one cycle = write + fdatasync on every file, in turn).
    pub cycles: f64,
    /// Timed seconds.
    pub seconds: f64,
    /// Cycles per second.
    pub cycles_per_sec: f64,
    /// Percentiles of one cycle.
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Mean time of one `write` call and of one `fdatasync` call.
    pub mean_write_us: f64,
    pub mean_sync_us: f64,
    /// The direct-I/O alignment the file system reported (0: none reported).
    pub direct_io_alignment: f64,
}

/// Runs the device-limit loop on the libuv pool (see the module documentation).
#[napi(ts_return_type = "Promise<DeviceLimitResult>")]
pub fn bench_device_limit(
    dir: String,
    files: u32,
    block_size: u32,
    seconds: f64,
    direct: Option<bool>,
    overlap: Option<bool>,
) -> Result<AsyncTask<DeviceLimit>> {
    if !(1..=16).contains(&files) {
        return Err(coded(ERR_OUT_OF_RANGE, "\"files\" must be 1 to 16"));
    }
    let overlap = overlap.unwrap_or(false);
    if overlap && files != 2 {
        return Err(coded(ERR_OUT_OF_RANGE, "\"overlap\" needs exactly 2 files"));
    }
    if block_size == 0 || u64::from(block_size) > FILE_BYTES / 4 {
        return Err(coded(
            ERR_OUT_OF_RANGE,
            format!("\"blockSize\" must be 1 to {}", FILE_BYTES / 4),
        ));
    }
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0) {
        return Err(coded(ERR_OUT_OF_RANGE, "\"seconds\" must be in (0, 3600]"));
    }
    Ok(AsyncTask::new(DeviceLimit {
        dir: PathBuf::from(dir),
        files,
        block_size,
        seconds,
        direct: direct.unwrap_or(false),
        overlap,
    }))
}

pub struct DeviceLimit {
    dir: PathBuf,
    files: u32,
    block_size: u32,
    seconds: f64,
    direct: bool,
    overlap: bool,
}

fn io_error(what: &str, path: &Path, error: std::io::Error) -> napi::Error {
    coded("ERR_IO", format!("{what} {}: {error}", path.display()))
}

/// Creates `path` (replacing it) with every block written and synced.
fn prepare(vfs: &StdVfs, path: &Path) -> Result<()> {
    if vfs.kind(path).ok().flatten().is_some() {
        vfs.remove_file(path)
            .map_err(|e| io_error("remove", path, e))?;
    }
    let file = vfs
        .open(path, OpenOptions::create_new())
        .map_err(|e| io_error("create", path, e))?;
    let chunk = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < FILE_BYTES {
        write_all_at(file.as_ref(), &chunk, at).map_err(|e| io_error("fill", path, e))?;
        at += chunk.len() as u64;
    }
    file.sync_all().map_err(|e| io_error("sync", path, e))
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e6
}

impl DeviceLimit {
    fn run(&self) -> Result<DeviceLimitResult> {
        let vfs = StdVfs;
        let paths: Vec<PathBuf> = (0..self.files)
            .map(|i| self.dir.join(format!("device-limit-{i}.bin")))
            .collect();
        for path in &paths {
            prepare(&vfs, path)?;
        }
        let handles: Vec<Arc<dyn VfsFile>> = paths
            .iter()
            .map(|path| {
                vfs.open(path, OpenOptions::read_write().with_direct(self.direct))
                    .map(Arc::from)
                    .map_err(|e| io_error("open", path, e))
            })
            .collect::<Result<_>>()?;
        let reported = handles[0].direct_io_alignment().unwrap_or(0);
        // The WAL assumes a page when the file system reports nothing; so does this.
        let alignment = if reported == 0 { 4096 } else { reported };
        let block = u64::from(self.block_size);
        if self.direct && block % alignment as u64 != 0 {
            return Err(coded(
                ERR_INVALID_ARG_VALUE,
                format!(
                    "direct I/O needs blockSize to be a multiple of the alignment ({alignment})"
                ),
            ));
        }
        let mut buf = AlignedBuf::new(self.block_size as usize, alignment.max(4096));
        buf.resize_zeroed(self.block_size as usize);
        buf.as_mut_slice().fill(0x5A);
        let slots = FILE_BYTES / block;

        let cycle = |n: u64, write_time: &mut Duration, sync_time: &mut Duration| {
            let offset = (n % slots) * block;
            if self.overlap {
                let t0 = Instant::now();
                for (file, path) in handles.iter().zip(&paths) {
                    write_all_at(file.as_ref(), buf.as_slice(), offset)
                        .map_err(|e| io_error("write", path, e))?;
                }
                let t1 = Instant::now();
                let (first, second) = vfs.sync_data_pair(&handles[0], &handles[1]);
                first.map_err(|e| io_error("fdatasync", &paths[0], e))?;
                second.map_err(|e| io_error("fdatasync", &paths[1], e))?;
                // Per call, as in the serial cycle: each sync took the pair's time.
                *write_time += t1 - t0;
                *sync_time += t1.elapsed() * 2;
                return Ok(());
            }
            for (file, path) in handles.iter().zip(&paths) {
                let t0 = Instant::now();
                write_all_at(file.as_ref(), buf.as_slice(), offset)
                    .map_err(|e| io_error("write", path, e))?;
                let t1 = Instant::now();
                file.sync_data()
                    .map_err(|e| io_error("fdatasync", path, e))?;
                *write_time += t1 - t0;
                *sync_time += t1.elapsed();
            }
            Ok::<(), napi::Error>(())
        };

        let (mut write_time, mut sync_time) = (Duration::ZERO, Duration::ZERO);
        for n in 0..WARMUP_CYCLES {
            cycle(n, &mut write_time, &mut sync_time)?;
        }
        let (mut write_time, mut sync_time) = (Duration::ZERO, Duration::ZERO);
        let mut latencies = Vec::with_capacity(1 << 16);
        let limit = Duration::from_secs_f64(self.seconds);
        let started = Instant::now();
        let mut n = WARMUP_CYCLES;
        while started.elapsed() < limit {
            let t = Instant::now();
            cycle(n, &mut write_time, &mut sync_time)?;
            latencies.push(t.elapsed());
            n += 1;
        }
        let elapsed = started.elapsed().as_secs_f64();
        drop(handles);
        for path in &paths {
            let _ = vfs.remove_file(path);
        }
        latencies.sort_unstable();
        let cycles = latencies.len() as f64;
        let calls = cycles * f64::from(self.files);
        Ok(DeviceLimitResult {
            cycles,
            seconds: elapsed,
            cycles_per_sec: cycles / elapsed,
            p50_us: percentile(&latencies, 50.0),
            p99_us: percentile(&latencies, 99.0),
            max_us: percentile(&latencies, 100.0),
            mean_write_us: write_time.as_secs_f64() * 1e6 / calls,
            mean_sync_us: sync_time.as_secs_f64() * 1e6 / calls,
            direct_io_alignment: reported as f64,
        })
    }
}

impl Task for DeviceLimit {
    type Output = DeviceLimitResult;
    type JsValue = DeviceLimitResult;

    fn compute(&mut self) -> Result<DeviceLimitResult> {
        self.run()
    }

    fn resolve(&mut self, _env: Env, output: DeviceLimitResult) -> Result<DeviceLimitResult> {
        Ok(output)
    }
}
