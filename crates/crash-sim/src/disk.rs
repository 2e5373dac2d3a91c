//! The disk a case runs on: the simulated disk (`doublewrite::io::sim::SimVfs`), or
//! faultfs — a FUSE file system with the same fault model, reached through the real
//! kernel with `doublewrite::io::StdVfs` (Linux, root or `fusermount3`).
//!
//! The workload and the checker do not know which one they run on: they see a
//! [`Vfs`] and a directory, count operations, plan one fault at an operation number, cut
//! the power and crash with the case's seeded generator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use doublewrite::io::sim::{FaultPlan, SimRng, SimVfs, TearPolicy};
use doublewrite::io::Vfs;

use crate::CaseConfig;

/// Which disk cases run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskKind {
    /// The simulated disk (deterministic, in memory).
    #[default]
    Sim,
    /// faultfs through the kernel, every file opened `FOPEN_DIRECT_IO` (no page cache).
    Fuse,
    /// faultfs through the kernel with the kernel's page cache serving reads
    /// (write-through; writeback cache off).
    FuseCached,
    /// faultfs where a failed file sync behaves like Linux after a writeback error (the
    /// pages are marked clean without reaching the disk; a later fsync does not write
    /// them): beyond the fault model as `docs/FORMAT.md` states it (its "known limit").
    FuseFsyncgate,
}

impl DiskKind {
    pub fn parse(name: &str) -> Option<DiskKind> {
        match name {
            "sim" => Some(DiskKind::Sim),
            "fuse" => Some(DiskKind::Fuse),
            "fuse-cached" => Some(DiskKind::FuseCached),
            "fuse-fsyncgate" => Some(DiskKind::FuseFsyncgate),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DiskKind::Sim => "sim",
            DiskKind::Fuse => "fuse",
            DiskKind::FuseCached => "fuse-cached",
            DiskKind::FuseFsyncgate => "fuse-fsyncgate",
        }
    }

    pub fn is_fuse(self) -> bool {
        self != DiskKind::Sim
    }
}

/// One fault, at an operation number; installing one replaces the previous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Power is lost at this operation (a write is applied, unsynced, then fails).
    PowerLossAt(u64),
    /// A sync at this operation fails with EIO (nothing happens if it is not a sync).
    SyncFailsAt(u64),
    /// A write (or creation) at this operation fails with ENOSPC after a prefix.
    NoSpaceAt(u64),
}

/// A disk a case can run on.
pub trait Disk: Send {
    /// The file system the WAL uses.
    fn vfs(&self) -> Arc<dyn Vfs>;
    /// Where the WAL lives.
    fn wal_dir(&self) -> &Path;
    /// State-changing operations so far (the numbers [`Fault`] refers to).
    fn mutation_count(&self) -> u64;
    fn set_fault(&self, fault: Fault);
    fn is_powered_off(&self) -> bool;
    /// Cuts power now.
    fn power_off(&self);
    /// Reboots after a power loss: settles every unsynced sector and directory entry
    /// with choices drawn from `rng`. Returns how many sectors were unsynced.
    fn crash(&mut self, rng: &mut SimRng) -> u64;
    /// Extra counters for the summary (empty for the simulated disk).
    fn counters(&self) -> BTreeMap<String, u64> {
        BTreeMap::new()
    }
}

/// Opens the disk of `kind` for a case.
///
/// # Errors
/// A FUSE disk could not be mounted (the reason, in words).
pub fn open_disk(kind: DiskKind, cfg: &CaseConfig) -> Result<Box<dyn Disk>, String> {
    match kind {
        DiskKind::Sim => Ok(Box::new(SimDisk::new(cfg))),
        #[cfg(target_os = "linux")]
        DiskKind::Fuse | DiskKind::FuseCached | DiskKind::FuseFsyncgate => {
            Ok(Box::new(fuse::FuseDisk::new(kind)?))
        }
        #[cfg(not(target_os = "linux"))]
        DiskKind::Fuse | DiskKind::FuseCached | DiskKind::FuseFsyncgate => {
            Err("FUSE disks are only supported on Linux".into())
        }
    }
}

/// Whether FUSE disks work here; `Err` says why not. Mounts, uses and unmounts a probe.
pub fn fuse_available() -> Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        faultfs::probe(&std::env::temp_dir())
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err("FUSE disks are only supported on Linux".into())
    }
}

/// The simulated disk.
#[derive(Debug)]
pub struct SimDisk {
    sim: SimVfs,
    dir: PathBuf,
}

impl SimDisk {
    pub fn new(cfg: &CaseConfig) -> SimDisk {
        let sim = SimVfs::new();
        sim.set_direct_io_alignment(cfg.direct_io_alignment);
        sim.set_linux_failed_writeback(cfg.linux_failed_writeback);
        sim.create_dir_all(Path::new("/disk")).expect("sim dir");
        SimDisk {
            sim,
            dir: PathBuf::from("/disk/wal"),
        }
    }
}

impl Disk for SimDisk {
    fn vfs(&self) -> Arc<dyn Vfs> {
        Arc::new(self.sim.clone())
    }
    fn wal_dir(&self) -> &Path {
        &self.dir
    }
    fn mutation_count(&self) -> u64 {
        self.sim.mutation_count()
    }
    fn set_fault(&self, fault: Fault) {
        let mut plan = FaultPlan::default();
        match fault {
            Fault::None => {}
            Fault::PowerLossAt(at) => plan.crash_at = Some(at),
            Fault::SyncFailsAt(at) => plan.fail_sync_at = [at].into_iter().collect(),
            Fault::NoSpaceAt(at) => plan.no_space_at = [at].into_iter().collect(),
        }
        self.sim.set_plan(plan);
    }
    fn is_powered_off(&self) -> bool {
        self.sim.is_powered_off()
    }
    fn power_off(&self) {
        self.sim.power_off();
    }
    fn crash(&mut self, rng: &mut SimRng) -> u64 {
        self.sim.crash(rng, TearPolicy::Random)
    }
}

#[cfg(target_os = "linux")]
mod fuse {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use doublewrite::io::sim::SimRng;
    use doublewrite::io::{StdVfs, Vfs};
    use faultfs::{Control, CrashMode, FaultFs, FaultPlan, Options};

    use super::{Disk, DiskKind, Fault};

    static NEXT_MOUNT: AtomicU64 = AtomicU64::new(0);

    /// faultfs mounted in a scratch directory for one case; unmounted and removed on drop.
    #[derive(Debug)]
    pub struct FuseDisk {
        fs: Option<FaultFs>,
        control: Control,
        root: PathBuf,
        dir: PathBuf,
        modes: BTreeMap<&'static str, u64>,
    }

    impl FuseDisk {
        pub fn new(kind: DiskKind) -> Result<FuseDisk, String> {
            let root = std::env::temp_dir().join(format!(
                "doublewrite-faultfs-{}-{}",
                std::process::id(),
                NEXT_MOUNT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&root);
            let (backing, mnt) = (root.join("backing"), root.join("mnt"));
            std::fs::create_dir_all(&mnt).map_err(|e| format!("{}: {e}", mnt.display()))?;
            let options = Options {
                // The backing store's own durability is not under test (power losses are
                // simulated above it); syncing it would only slow the runs down.
                sync_backing: false,
                // What the WAL assumes when the kernel reports no direct-I/O alignment,
                // which it does not on FUSE.
                direct_io_alignment: 4096,
                refuse_direct_io: false,
                kernel_page_cache: kind == DiskKind::FuseCached,
                failed_sync_loses_data: kind == DiskKind::FuseFsyncgate,
            };
            let fs = FaultFs::mount(&backing, &mnt, options).map_err(|e| {
                let _ = std::fs::remove_dir_all(&root);
                format!("mounting faultfs on {} failed: {e}", mnt.display())
            })?;
            Ok(FuseDisk {
                control: fs.control(),
                fs: Some(fs),
                dir: mnt.join("wal"),
                root,
                modes: BTreeMap::new(),
            })
        }
    }

    impl Drop for FuseDisk {
        fn drop(&mut self) {
            if let Some(fs) = self.fs.take() {
                if let Err(e) = fs.unmount() {
                    eprintln!("faultfs: unmounting {} failed: {e}", self.root.display());
                }
            }
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    /// Crash modes, weighted: the simulated disk's rule most often, then tears at each
    /// boundary, garbage, zeros, all dropped and all kept.
    fn pick_mode(rng: &mut SimRng) -> CrashMode {
        match rng.below(10) {
            0..=3 => CrashMode::Random,
            4 => CrashMode::Torn512,
            5 => CrashMode::Torn4096,
            6 => CrashMode::Garbage,
            7 => CrashMode::Zeros,
            8 => CrashMode::DropAll,
            _ => CrashMode::KeepAll,
        }
    }

    /// The real file system, except that a commit's two overlapped fdatasyncs run one
    /// after the other (in alternating order): two threads' syncs would reach faultfs in
    /// either order, and a case could not replay from its seed. Crash points then fall
    /// between the two syncs both ways round, as on the simulated disk.
    #[derive(Debug, Default)]
    struct ReplayableVfs {
        pairs: AtomicU64,
    }

    impl Vfs for ReplayableVfs {
        fn open(
            &self,
            path: &Path,
            options: doublewrite::io::OpenOptions,
        ) -> std::io::Result<Box<dyn doublewrite::io::VfsFile>> {
            StdVfs.open(path, options)
        }
        fn remove_file(&self, path: &Path) -> std::io::Result<()> {
            StdVfs.remove_file(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
            StdVfs.rename(from, to)
        }
        fn list_dir(&self, dir: &Path) -> std::io::Result<Vec<String>> {
            StdVfs.list_dir(dir)
        }
        fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
            StdVfs.create_dir_all(dir)
        }
        fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
            StdVfs.sync_dir(dir)
        }
        fn kind(&self, path: &Path) -> std::io::Result<Option<doublewrite::io::FileKind>> {
            StdVfs.kind(path)
        }
        fn sync_data_pair(
            &self,
            first: &Arc<dyn doublewrite::io::VfsFile>,
            second: &Arc<dyn doublewrite::io::VfsFile>,
        ) -> (std::io::Result<()>, std::io::Result<()>) {
            let first_goes_first = self.pairs.fetch_add(1, Ordering::Relaxed).is_multiple_of(2);
            doublewrite::io::sync_one_then_other(first.as_ref(), second.as_ref(), first_goes_first)
        }
    }

    impl Disk for FuseDisk {
        fn vfs(&self) -> Arc<dyn Vfs> {
            Arc::new(ReplayableVfs::default())
        }
        fn wal_dir(&self) -> &Path {
            &self.dir
        }
        fn mutation_count(&self) -> u64 {
            self.control.op_count()
        }
        fn set_fault(&self, fault: Fault) {
            let mut plan = FaultPlan::default();
            match fault {
                Fault::None => {}
                Fault::PowerLossAt(at) => plan.power_loss_at_op = Some(at),
                Fault::SyncFailsAt(at) => plan.fail_sync_at_ops = [at].into_iter().collect(),
                Fault::NoSpaceAt(at) => plan.no_space_at_ops = [at].into_iter().collect(),
            }
            self.control.set_plan(plan);
        }
        fn is_powered_off(&self) -> bool {
            self.control.is_powered_off()
        }
        fn power_off(&self) {
            self.control.power_off();
        }
        fn crash(&mut self, rng: &mut SimRng) -> u64 {
            let mode = pick_mode(rng);
            let seed = rng.next_u64();
            *self.modes.entry(mode.name()).or_default() += 1;
            match self.control.crash(seed, mode) {
                Ok(report) => report.unsynced_sectors,
                Err(e) => panic!("faultfs crash failed in its backing store: {e}"),
            }
        }
        fn counters(&self) -> BTreeMap<String, u64> {
            let s = self.control.stats();
            let mut out: BTreeMap<String, u64> = self
                .modes
                .iter()
                .map(|(mode, n)| (format!("crash mode {mode}"), *n))
                .collect();
            for (name, value) in [
                ("fs operations", s.ops),
                ("fs writes", s.writes),
                ("fs file syncs", s.file_syncs),
                ("fs directory syncs", s.dir_syncs),
                ("injected failed syncs", s.failed_syncs),
                ("injected ENOSPC", s.no_space_errors),
                (
                    "EIO to dead handles or while powered off",
                    s.dead_handle_errors,
                ),
                ("misaligned O_DIRECT refused", s.misaligned_direct_io),
                ("sectors settled", s.settled.unsynced_sectors),
                ("sectors settled old", s.settled.sectors_old),
                ("sectors settled new", s.settled.sectors_new),
                ("sectors settled zeros", s.settled.sectors_zeroed),
                ("sectors settled random", s.settled.sectors_random),
                ("entry changes applied", s.settled.entries_applied),
                ("entry changes undone", s.settled.entries_reverted),
                ("size changes applied", s.settled.sizes_applied),
                ("size changes undone", s.settled.sizes_reverted),
            ] {
                out.insert(name.to_string(), value);
            }
            out
        }
    }
}
