//! A simulated disk implementing the fault model of `docs/FORMAT.md` ("Assumptions about
//! the media"), deterministic from a seed:
//!
//! 1. Writes not covered by a completed sync may be lost, partly applied, or applied in
//!    any order, at 512-byte sector granularity: at a crash every sector written since
//!    its file's last sync independently becomes its old content, its new content, zeros,
//!    or random bytes.
//! 2. A sector being written when power fails may read back old, new or garbage (same
//!    rule; a write interrupted by the crash counts as written).
//! 3. A completed sync makes that file's writes durable; directory entries created,
//!    removed or renamed since the directory's last sync may each vanish or reappear.
//! 4. A sync can fail ([`FaultPlan::fail_sync_at`]); its data stays undetermined.
//! 5. A write can fail with ENOSPC ([`FaultPlan::no_space_at`]), possibly after part of it
//!    was applied.
//!
//! Every operation that changes state is numbered (see [`SimVfs::mutation_count`]); a
//! [`FaultPlan`] names the operation at which the machine "loses power". After that every
//! call fails until [`SimVfs::crash`] builds the post-crash disk and starts a new "boot".
//! Directories themselves are durable from their creation (the WAL's parent directory is
//! outside the fault model).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{FileKind, OpenOptions, Vfs, VfsFile};
use crate::align::{AlignedBuf, PAGE_BYTES};

/// Granularity at which the simulated device tears writes.
pub const SECTOR_SIZE: usize = 512;

/// A small, fast, seedable PRNG (SplitMix64): the simulator must be reproducible from a
/// seed on every platform, so it does not depend on an external crate's stream.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
    /// True with probability `numerator / denominator`.
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.below(denominator) < numerator
    }
    pub fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// When faults happen, by mutation number (1-based, counted across the whole disk).
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// Power is lost at this mutation: a write is applied (unsynced) and then the machine
    /// stops; any other mutation does not happen.
    pub crash_at: Option<u64>,
    /// Syncs (file or directory) at these mutation numbers fail with EIO.
    pub fail_sync_at: BTreeSet<u64>,
    /// Writes at these mutation numbers fail with ENOSPC after applying a prefix.
    pub no_space_at: BTreeSet<u64>,
    /// Direct-I/O opens fail as unsupported (a file system like tmpfs).
    pub refuse_direct_io: bool,
    /// A named fault point: the fault fires at the `nth` (1-based) operation of `op` on a
    /// file whose name contains `file` — e.g. the first sync of `wal.dwb`.
    pub at_point: Option<FaultPoint>,
    /// The `nth` (1-based, over the disk's life) durable submission of two writes is
    /// taken only in part, as `io_submit` may: its first write lands (unsynced) and the
    /// submission is refused.
    pub durable_taken_in_part: Option<u64>,
}

/// An operation a [`FaultPoint`] can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Write,
    Sync,
}

/// What happens at a [`FaultPoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    PowerLoss,
    FailSync,
    NoSpace,
    /// A write fails with EINVAL and applies nothing: a file system that took O_DIRECT at
    /// open and refuses the writes.
    RefuseWrite,
}

/// A fault at a named place: `(op, file, nth) → fault`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultPoint {
    pub op: Op,
    pub file: String,
    pub nth: u64,
    pub fault: Fault,
    /// How many matching operations have been seen (internal).
    pub seen: u64,
}

impl FaultPoint {
    pub fn new(op: Op, file: &str, nth: u64, fault: Fault) -> FaultPoint {
        FaultPoint {
            op,
            file: file.to_string(),
            nth,
            fault,
            seen: 0,
        }
    }
}

/// How a crash treats each unsynced sector, for tests that need one outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TearPolicy {
    /// Each sector independently old, new, zeros or random.
    Random,
    /// Every unsynced write is lost.
    KeepOld,
    /// Every unsynced write survives (a clean process kill).
    KeepNew,
}

/// Counters of what the simulated disk has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    pub mutations: u64,
    pub writes: u64,
    pub bytes_written: u64,
    pub file_syncs: u64,
    pub dir_syncs: u64,
    pub crashes: u64,
    pub torn_sectors: u64,
}

/// Sectors written since the last sync, one bit each.
#[derive(Debug, Default, Clone)]
struct SectorSet {
    words: Vec<u64>,
}

impl SectorSet {
    fn insert_range(&mut self, first: u64, last: u64) {
        let need = (last / 64 + 1) as usize;
        if self.words.len() < need {
            self.words.resize(need, 0);
        }
        for sector in first..=last {
            self.words[(sector / 64) as usize] |= 1 << (sector % 64);
        }
    }
    fn take(&mut self) -> Vec<u64> {
        let mut out = Vec::new();
        for (i, word) in std::mem::take(&mut self.words).into_iter().enumerate() {
            let mut w = word;
            while w != 0 {
                let bit = w.trailing_zeros() as u64;
                out.push(i as u64 * 64 + bit);
                w &= w - 1;
            }
        }
        out
    }
    fn remove_range(&mut self, first: u64, last: u64) {
        for sector in first..=last {
            if let Some(word) = self.words.get_mut((sector / 64) as usize) {
                *word &= !(1 << (sector % 64));
            }
        }
    }
    fn contains(&self, sector: u64) -> bool {
        self.words
            .get((sector / 64) as usize)
            .is_some_and(|w| w & (1 << (sector % 64)) != 0)
    }
    fn retain_below(&mut self, sector_limit: u64) {
        let taken = self.take();
        for sector in taken.into_iter().filter(|&s| s < sector_limit) {
            self.insert_range(sector, sector);
        }
    }
}

#[derive(Debug, Default)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
    dirty_sectors: SectorSet,
    /// Linux after a failed writeback: sectors whose new bytes are still cached (reads
    /// see them) but no longer dirty — no later sync writes them, and dropping the cache
    /// or a crash shows what the device holds.
    failed_sectors: SectorSet,
    locked_by: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    inodes: BTreeMap<u64, Inode>,
    next_ino: u64,
    /// Directory path → entry name → inode, as the running system sees it.
    live_dirs: BTreeMap<PathBuf, BTreeMap<String, u64>>,
    /// The same, as a crash would leave it (only updated by `sync_dir`).
    durable_dirs: BTreeMap<PathBuf, BTreeMap<String, u64>>,
    plan: FaultPlan,
    powered_off: bool,
    boot: u64,
    stats: SimStats,
    direct_io_alignment: usize,
    /// Durable submissions of two writes so far (for `FaultPlan::durable_taken_in_part`).
    durable_pairs: u64,
    /// Failed syncs behave like Linux's ("fsyncgate"): see `Inode::failed_sectors`.
    linux_failed_writeback: bool,
}

/// A simulated disk. Clones share the same disk.
#[derive(Debug, Clone)]
pub struct SimVfs {
    state: Arc<Mutex<State>>,
}

impl Default for SimVfs {
    fn default() -> Self {
        SimVfs::new()
    }
}

static NEXT_HANDLE_ID: AtomicU64 = AtomicU64::new(1);

fn powered_off_error() -> io::Error {
    io::Error::other("simulated power loss: the machine is off")
}

fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let parent = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    Ok((parent, name.to_string()))
}

impl SimVfs {
    pub fn new() -> SimVfs {
        SimVfs {
            state: Arc::new(Mutex::new(State {
                direct_io_alignment: 4096,
                ..State::default()
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock (a failed assertion in a test) must not hide
        // the disk from the code that reports it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the alignment direct-I/O files demand (512 or 4096 in the tests).
    pub fn set_direct_io_alignment(&self, alignment: usize) {
        assert!(alignment.is_power_of_two());
        self.lock().direct_io_alignment = alignment;
    }

    /// Makes failed syncs behave like Linux: the pages they could not write stay cached
    /// but clean (a later sync does not write them); only a crash or dropping the cache
    /// shows that the device never got them.
    pub fn set_linux_failed_writeback(&self, on: bool) {
        self.lock().linux_failed_writeback = on;
    }

    /// Installs the fault plan; mutation numbers count from the start of the disk's life.
    pub fn set_plan(&self, plan: FaultPlan) {
        self.lock().plan = plan;
    }

    /// Number of state-changing operations so far (writes, syncs, creates, removals,
    /// renames): the crash points a test can choose from.
    pub fn mutation_count(&self) -> u64 {
        self.lock().stats.mutations
    }

    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }

    /// Whether the planned power loss has happened and no crash recovery ran yet.
    pub fn is_powered_off(&self) -> bool {
        self.lock().powered_off
    }

    /// Cuts power now (if it is not already off).
    pub fn power_off(&self) {
        self.lock().powered_off = true;
    }

    /// Builds the disk a reboot would find, from the durable state and the unsynced
    /// writes (fault-model points 1–3), and powers the machine back on. Handles opened
    /// before the crash stay dead. Returns the number of sectors that were unsynced.
    pub fn crash(&self, rng: &mut SimRng, policy: TearPolicy) -> u64 {
        let mut state = self.lock();
        let mut unsynced_sectors = 0;
        let inode_ids: Vec<u64> = state.inodes.keys().copied().collect();
        for ino in inode_ids {
            let inode = state.inodes.get_mut(&ino).expect("listed inode");
            unsynced_sectors += settle_inode(inode, rng, policy);
            inode.locked_by = None;
        }
        // Directory entries changed since the last directory sync: each may go either way.
        let dirs: Vec<PathBuf> = state.live_dirs.keys().cloned().collect();
        for dir in dirs {
            let live = state.live_dirs.get(&dir).cloned().unwrap_or_default();
            let durable = state.durable_dirs.get(&dir).cloned().unwrap_or_default();
            let names: BTreeSet<String> = live.keys().chain(durable.keys()).cloned().collect();
            let mut settled = BTreeMap::new();
            for name in names {
                let (now, before) = (live.get(&name).copied(), durable.get(&name).copied());
                let pick = if now == before {
                    now
                } else {
                    match policy {
                        TearPolicy::KeepNew => now,
                        TearPolicy::KeepOld => before,
                        TearPolicy::Random => {
                            if rng.chance(1, 2) {
                                now
                            } else {
                                before
                            }
                        }
                    }
                };
                if let Some(ino) = pick {
                    settled.insert(name, ino);
                }
            }
            state.live_dirs.insert(dir.clone(), settled.clone());
            state.durable_dirs.insert(dir, settled);
        }
        // Inodes no entry names any more are gone.
        let referenced: BTreeSet<u64> = state
            .live_dirs
            .values()
            .flat_map(|entries| entries.values().copied())
            .collect();
        state.inodes.retain(|ino, _| referenced.contains(ino));
        state.powered_off = false;
        state.plan = FaultPlan::default();
        state.boot += 1;
        state.stats.crashes += 1;
        state.stats.torn_sectors += unsynced_sectors;
        unsynced_sectors
    }

    /// The bytes a file holds now (live view), for tests that inspect or damage disks.
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        let (dir, name) = split(path).ok()?;
        let ino = state.live_dirs.get(&dir)?.get(&name)?;
        Some(state.inodes.get(ino)?.live.clone())
    }

    /// Overwrites bytes of a file and makes them durable at once: damage "at rest"
    /// (fault-model point 5) or a hand-made on-disk state.
    pub fn poke(&self, path: &Path, offset: u64, bytes: &[u8]) {
        let mut state = self.lock();
        let (dir, name) = split(path).expect("path with a file name");
        let ino = *state
            .live_dirs
            .get(&dir)
            .and_then(|d| d.get(&name))
            .expect("poke: no such file");
        let inode = state.inodes.get_mut(&ino).expect("inode");
        let end = offset as usize + bytes.len();
        if inode.live.len() < end {
            inode.live.resize(end, 0);
        }
        inode.live[offset as usize..end].copy_from_slice(bytes);
        if inode.durable.len() < end {
            inode.durable.resize(end, 0);
        }
        inode.durable[offset as usize..end].copy_from_slice(bytes);
    }

    /// Cuts a file to `len` bytes, durably.
    pub fn truncate_file(&self, path: &Path, len: u64) {
        let mut state = self.lock();
        let (dir, name) = split(path).expect("path with a file name");
        let ino = *state
            .live_dirs
            .get(&dir)
            .and_then(|d| d.get(&name))
            .expect("truncate: no such file");
        let inode = state.inodes.get_mut(&ino).expect("inode");
        inode.live.truncate(len as usize);
        inode.durable.truncate(len as usize);
        inode
            .dirty_sectors
            .retain_below(len.div_ceil(SECTOR_SIZE as u64));
    }

    /// Starts a mutation: counts it and applies the fault plan; the result tells the
    /// caller which injected fault to apply.
    fn begin_mutation(state: &mut State, boot: u64) -> io::Result<Mutation> {
        SimVfs::begin_named_mutation(state, boot, None)
    }

    fn begin_named_mutation(
        state: &mut State,
        boot: u64,
        named: Option<(Op, &Path)>,
    ) -> io::Result<Mutation> {
        if state.powered_off || boot != state.boot {
            return Err(powered_off_error());
        }
        state.stats.mutations += 1;
        if let (Some((op, path)), Some(point)) = (named, state.plan.at_point.as_mut()) {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if op == point.op && name.contains(point.file.as_str()) {
                point.seen += 1;
                if point.seen == point.nth {
                    let fault = point.fault;
                    return Ok(match fault {
                        Fault::PowerLoss => {
                            state.powered_off = true;
                            Mutation::PowerLoss
                        }
                        Fault::FailSync => Mutation::FailSync,
                        Fault::NoSpace => Mutation::NoSpace,
                        Fault::RefuseWrite => Mutation::Refused,
                    });
                }
            }
        }
        let n = state.stats.mutations;
        if state.plan.crash_at == Some(n) {
            state.powered_off = true;
            return Ok(Mutation::PowerLoss);
        }
        if state.plan.fail_sync_at.contains(&n) {
            return Ok(Mutation::FailSync);
        }
        if state.plan.no_space_at.contains(&n) {
            return Ok(Mutation::NoSpace);
        }
        Ok(Mutation::Normal)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mutation {
    Normal,
    PowerLoss,
    FailSync,
    NoSpace,
    Refused,
}

/// Decides the post-crash content of one file. Returns how many sectors were unsynced.
fn settle_inode(inode: &mut Inode, rng: &mut SimRng, policy: TearPolicy) -> u64 {
    let mut dirty: Vec<u64> = inode.dirty_sectors.take();
    dirty.extend(inode.failed_sectors.take());
    dirty.sort_unstable();
    dirty.dedup();
    let live_len = inode.live.len();
    let durable_len = inode.durable.len();
    // The size changes with a sync only; an unsynced extension may or may not survive.
    let new_len = if live_len == durable_len {
        live_len
    } else {
        match policy {
            TearPolicy::KeepNew => live_len,
            TearPolicy::KeepOld => durable_len,
            TearPolicy::Random => {
                if rng.chance(1, 2) {
                    live_len
                } else {
                    durable_len
                }
            }
        }
    };
    let mut result = inode.durable.clone();
    result.resize(new_len, 0);
    for &sector in &dirty {
        let start = sector as usize * SECTOR_SIZE;
        if start >= new_len {
            continue;
        }
        let end = (start + SECTOR_SIZE).min(new_len);
        let choice = match policy {
            TearPolicy::KeepOld => 0,
            TearPolicy::KeepNew => 1,
            TearPolicy::Random => rng.below(4),
        };
        match choice {
            0 => {} // old content (already in `result`, zeros past the durable end)
            1 => {
                let live_end = end.min(live_len);
                if start < live_end {
                    result[start..live_end].copy_from_slice(&inode.live[start..live_end]);
                }
            }
            2 => result[start..end].fill(0),
            _ => rng.fill(&mut result[start..end]),
        }
    }
    inode.live = result.clone();
    inode.durable = result;
    dirty.len() as u64
}

#[derive(Debug)]
struct SimFile {
    vfs: SimVfs,
    ino: u64,
    boot: u64,
    handle_id: u64,
    direct: bool,
    writable: bool,
    path: PathBuf,
}

impl Drop for SimFile {
    fn drop(&mut self) {
        let mut state = self.vfs.lock();
        if let Some(inode) = state.inodes.get_mut(&self.ino) {
            if inode.locked_by == Some(self.handle_id) {
                inode.locked_by = None;
            }
        }
    }
}

impl SimFile {
    fn check_direct(&self, state: &State, ptr: usize, len: usize, offset: u64) -> io::Result<()> {
        if !self.direct {
            return Ok(());
        }
        let align = state.direct_io_alignment;
        if !ptr.is_multiple_of(align)
            || !len.is_multiple_of(align)
            || !offset.is_multiple_of(align as u64)
        {
            return Err(io::Error::from_raw_os_error(libc_einval()));
        }
        Ok(())
    }
}

fn libc_einval() -> i32 {
    22
}

impl Vfs for SimVfs {
    fn open(&self, path: &Path, options: OpenOptions) -> io::Result<Box<dyn VfsFile>> {
        let mut state = self.lock();
        if state.powered_off {
            return Err(powered_off_error());
        }
        if options.direct && state.plan.refuse_direct_io {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "simulated file system refuses direct I/O",
            ));
        }
        let (dir, name) = split(path)?;
        if state.live_dirs.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{} is a directory, not a file", path.display()),
            ));
        }
        if !state.live_dirs.contains_key(&dir) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("directory {} does not exist", dir.display()),
            ));
        }
        let existing = state.live_dirs[&dir].get(&name).copied();
        let ino = match existing {
            Some(_) if options.create_new => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists", path.display()),
                ))
            }
            Some(ino) => ino,
            None if options.create || options.create_new => {
                let boot = state.boot;
                match SimVfs::begin_mutation(&mut state, boot)? {
                    Mutation::PowerLoss => return Err(powered_off_error()),
                    Mutation::NoSpace => {
                        return Err(io::Error::new(
                            io::ErrorKind::StorageFull,
                            "simulated ENOSPC creating a file",
                        ))
                    }
                    // Named faults never land on a create.
                    Mutation::Normal | Mutation::FailSync | Mutation::Refused => {}
                }
                state.next_ino += 1;
                let ino = state.next_ino;
                state.inodes.insert(ino, Inode::default());
                state
                    .live_dirs
                    .get_mut(&dir)
                    .expect("checked above")
                    .insert(name, ino);
                ino
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} does not exist", path.display()),
                ))
            }
        };
        let boot = state.boot;
        drop(state);
        Ok(Box::new(SimFile {
            vfs: self.clone(),
            ino,
            boot,
            handle_id: NEXT_HANDLE_ID.fetch_add(1, Ordering::Relaxed),
            direct: options.direct,
            writable: options.write || options.create || options.create_new,
            path: path.to_path_buf(),
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let (dir, name) = split(path)?;
        let boot = state.boot;
        if state.powered_off {
            return Err(powered_off_error());
        }
        let present = state
            .live_dirs
            .get(&dir)
            .is_some_and(|entries| entries.contains_key(&name));
        if !present {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} does not exist", path.display()),
            ));
        }
        if SimVfs::begin_mutation(&mut state, boot)? == Mutation::PowerLoss {
            return Err(powered_off_error());
        }
        state
            .live_dirs
            .get_mut(&dir)
            .expect("present")
            .remove(&name);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let (from_dir, from_name) = split(from)?;
        let (to_dir, to_name) = split(to)?;
        let boot = state.boot;
        if state.powered_off {
            return Err(powered_off_error());
        }
        let ino = state
            .live_dirs
            .get(&from_dir)
            .and_then(|entries| entries.get(&from_name))
            .copied()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} does not exist", from.display()),
                )
            })?;
        if !state.live_dirs.contains_key(&to_dir) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "target directory"));
        }
        if SimVfs::begin_mutation(&mut state, boot)? == Mutation::PowerLoss {
            return Err(powered_off_error());
        }
        state
            .live_dirs
            .get_mut(&from_dir)
            .expect("present")
            .remove(&from_name);
        state
            .live_dirs
            .get_mut(&to_dir)
            .expect("present")
            .insert(to_name, ino);
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.lock();
        if state.powered_off {
            return Err(powered_off_error());
        }
        state
            .live_dirs
            .get(dir)
            .map(|entries| entries.keys().cloned().collect())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("directory {} does not exist", dir.display()),
                )
            })
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        if state.powered_off {
            return Err(powered_off_error());
        }
        for ancestor in dir.ancestors() {
            state.live_dirs.entry(ancestor.to_path_buf()).or_default();
            state
                .durable_dirs
                .entry(ancestor.to_path_buf())
                .or_default();
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let boot = state.boot;
        match SimVfs::begin_mutation(&mut state, boot)? {
            Mutation::PowerLoss => return Err(powered_off_error()),
            Mutation::FailSync => {
                return Err(io::Error::other("simulated EIO syncing a directory"))
            }
            Mutation::Normal | Mutation::NoSpace | Mutation::Refused => {}
        }
        state.stats.dir_syncs += 1;
        let live =
            state.live_dirs.get(dir).cloned().ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "directory does not exist")
            })?;
        state.durable_dirs.insert(dir.to_path_buf(), live);
        Ok(())
    }

    fn kind(&self, path: &Path) -> io::Result<Option<FileKind>> {
        let state = self.lock();
        if state.powered_off {
            return Err(powered_off_error());
        }
        if state.live_dirs.contains_key(path) {
            return Ok(Some(FileKind::Directory));
        }
        let (dir, name) = split(path)?;
        Ok(state
            .live_dirs
            .get(&dir)
            .and_then(|entries| entries.get(&name))
            .map(|_| FileKind::File))
    }

    /// One after the other, in an order the disk's history picks (the parity of its
    /// mutation count), so a seeded run reproduces and crash points fall between the two
    /// syncs both ways round: either file may reach the disk first, as with real
    /// overlapped syncs.
    fn sync_data_pair(
        &self,
        first: &Arc<dyn VfsFile>,
        second: &Arc<dyn VfsFile>,
    ) -> (io::Result<()>, io::Result<()>) {
        let first_goes_first = self.lock().stats.mutations.is_multiple_of(2);
        super::sync_one_then_other(first.as_ref(), second.as_ref(), first_goes_first)
    }

    fn durable_writes(&self) -> Option<Box<dyn super::DurableWrites>> {
        Some(Box::new(SimDurableWrites {
            vfs: self.clone(),
            in_flight: Vec::new(),
        }))
    }
}

/// [`super::DurableWrites`] on the simulated disk: each write lands (unsynced) when it
/// starts and is synced when the submission finishes, so a crash between the two finds it
/// as the fault model leaves any unsynced write — lost, torn or garbled, each write on its
/// own — and a failing sync fails the write. Syncing the whole file is what `RWF_DSYNC`
/// promises for the write's range; the writer sends every write of such a file through
/// here or syncs it itself, so the file holds no other unsynced bytes for the difference
/// to hide.
#[derive(Debug)]
struct SimDurableWrites {
    vfs: SimVfs,
    in_flight: Vec<(Arc<dyn VfsFile>, io::Result<usize>, AlignedBuf)>,
}

impl super::DurableWrites for SimDurableWrites {
    fn ready_fd(&self) -> Option<i32> {
        None
    }

    fn start(
        &mut self,
        writes: Vec<super::DurableWrite>,
    ) -> Result<(), (io::Error, Vec<AlignedBuf>)> {
        if !self.in_flight.is_empty() {
            let refused = io::Error::other("a durable write is already in flight");
            return Err((refused, writes.into_iter().map(|w| w.buf).collect()));
        }
        if writes.is_empty() || writes.len() > 2 {
            let refused = io::Error::from(io::ErrorKind::InvalidInput);
            return Err((refused, writes.into_iter().map(|w| w.buf).collect()));
        }
        let taken = if writes.len() == 2 {
            let mut state = self.vfs.lock();
            state.durable_pairs += 1;
            if state.plan.durable_taken_in_part == Some(state.durable_pairs) {
                1
            } else {
                2
            }
        } else {
            writes.len()
        };
        let count = writes.len();
        let mut buffers = Vec::with_capacity(count);
        for (index, super::DurableWrite { file, buf, offset }) in writes.into_iter().enumerate() {
            if index >= taken {
                buffers.push(buf);
                continue;
            }
            let written =
                super::write_all_at(file.as_ref(), buf.as_slice(), offset).map(|()| buf.len());
            self.in_flight.push((file, written, buf));
        }
        if taken < count {
            // As `AioDsync::start`: the writes taken complete (unsynced), and every
            // buffer comes back with the error.
            let mut all: Vec<AlignedBuf> = self.in_flight.drain(..).map(|(_, _, b)| b).collect();
            all.extend(buffers);
            let refused = io::Error::other(format!("io_submit took {taken} of {count} writes"));
            return Err((refused, all));
        }
        Ok(())
    }

    fn finish(&mut self, _wait: bool) -> Option<Vec<(io::Result<usize>, AlignedBuf)>> {
        if self.in_flight.is_empty() {
            return None;
        }
        let outcomes = self
            .in_flight
            .drain(..)
            .map(|(file, written, buf)| {
                (written.and_then(|len| file.sync_data().map(|()| len)), buf)
            })
            .collect();
        Some(outcomes)
    }
}

impl VfsFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let state = self.vfs.lock();
        if state.powered_off || self.boot != state.boot {
            return Err(powered_off_error());
        }
        self.check_direct(&state, buf.as_ptr() as usize, buf.len(), offset)?;
        let inode = state
            .inodes
            .get(&self.ino)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "file vanished"))?;
        let offset = offset as usize;
        if offset >= inode.live.len() {
            return Ok(0);
        }
        let n = buf.len().min(inode.live.len() - offset);
        buf[..n].copy_from_slice(&inode.live[offset..offset + n]);
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        let mut state = self.vfs.lock();
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{} is open read-only", self.path.display()),
            ));
        }
        self.check_direct(&state, buf.as_ptr() as usize, buf.len(), offset)?;
        let mutation =
            SimVfs::begin_named_mutation(&mut state, self.boot, Some((Op::Write, &self.path)))?;
        if mutation == Mutation::Refused {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "simulated EINVAL: the file system refuses this write",
            ));
        }
        let mut len = buf.len();
        if mutation == Mutation::NoSpace {
            // ENOSPC after a prefix of whole sectors (possibly none) was applied.
            len = (len / 2) / SECTOR_SIZE * SECTOR_SIZE;
        }
        if mutation == Mutation::FailSync {
            // A planned sync failure that landed on a write: the write just happens.
        }
        state.stats.writes += 1;
        state.stats.bytes_written += len as u64;
        let inode = state
            .inodes
            .get_mut(&self.ino)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "file vanished"))?;
        let start = offset as usize;
        let end = start + len;
        if inode.live.len() < end {
            inode.live.resize(end, 0);
        }
        inode.live[start..end].copy_from_slice(&buf[..len]);
        if len > 0 {
            let first = (start / SECTOR_SIZE) as u64;
            let last = ((end - 1) / SECTOR_SIZE) as u64;
            inode.failed_sectors.remove_range(first, last);
            // Through the page cache a write dirties whole pages, and writeback rewrites
            // every sector of them: a crash may tear those the write did not change too.
            let (first, last) = if self.direct {
                (first, last)
            } else {
                let page = (PAGE_BYTES as usize / SECTOR_SIZE) as u64;
                (first / page * page, (last / page + 1) * page - 1)
            };
            inode.dirty_sectors.insert_range(first, last);
        }
        match mutation {
            Mutation::PowerLoss => Err(powered_off_error()),
            Mutation::NoSpace => Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "simulated ENOSPC (no space left on device)",
            )),
            // A refused write returned before anything was applied.
            Mutation::Normal | Mutation::FailSync | Mutation::Refused => Ok(len),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.vfs.lock();
        match SimVfs::begin_named_mutation(&mut state, self.boot, Some((Op::Sync, &self.path)))? {
            Mutation::PowerLoss => return Err(powered_off_error()),
            Mutation::FailSync => {
                if state.linux_failed_writeback {
                    if let Some(inode) = state.inodes.get_mut(&self.ino) {
                        for sector in inode.dirty_sectors.take() {
                            inode.failed_sectors.insert_range(sector, sector);
                        }
                    }
                }
                return Err(io::Error::other("simulated EIO from fdatasync"));
            }
            Mutation::Normal | Mutation::NoSpace | Mutation::Refused => {}
        }
        state.stats.file_syncs += 1;
        let inode = state
            .inodes
            .get_mut(&self.ino)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "file vanished"))?;
        let dirty = inode.dirty_sectors.take();
        inode.durable.resize(inode.live.len(), 0);
        for sector in dirty {
            let start = sector as usize * SECTOR_SIZE;
            let end = (start + SECTOR_SIZE).min(inode.live.len());
            if start < end {
                inode.durable[start..end].copy_from_slice(&inode.live[start..end]);
            }
        }
        Ok(())
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        let state = self.vfs.lock();
        if state.powered_off || self.boot != state.boot {
            return Err(powered_off_error());
        }
        Ok(state
            .inodes
            .get(&self.ino)
            .map_or(0, |i| i.live.len() as u64))
    }

    fn try_lock_exclusive(&self) -> io::Result<bool> {
        let mut state = self.vfs.lock();
        if state.powered_off || self.boot != state.boot {
            return Err(powered_off_error());
        }
        let inode = state
            .inodes
            .get_mut(&self.ino)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "file vanished"))?;
        match inode.locked_by {
            Some(holder) if holder != self.handle_id => Ok(false),
            _ => {
                inode.locked_by = Some(self.handle_id);
                Ok(true)
            }
        }
    }

    fn direct_io_alignment(&self) -> Option<usize> {
        Some(self.vfs.lock().direct_io_alignment)
    }

    fn drop_cache(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut state = self.vfs.lock();
        if state.powered_off || self.boot != state.boot {
            return Err(powered_off_error());
        }
        let Some(inode) = state.inodes.get_mut(&self.ino) else {
            return Ok(());
        };
        if len == 0 {
            return Ok(());
        }
        let first = offset / SECTOR_SIZE as u64;
        let last = (offset + len - 1) / SECTOR_SIZE as u64;
        for sector in first..=last {
            // Clean cached pages are re-read from the device; dirty ones stay.
            if inode.failed_sectors.contains(sector) {
                let start = sector as usize * SECTOR_SIZE;
                let end = (start + SECTOR_SIZE).min(inode.live.len());
                for i in start..end {
                    inode.live[i] = inode.durable.get(i).copied().unwrap_or(0);
                }
                inode.failed_sectors.remove_range(sector, sector);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{read_exact_at, write_all_at};

    fn setup() -> (SimVfs, PathBuf) {
        let vfs = SimVfs::new();
        let dir = PathBuf::from("/d");
        vfs.create_dir_all(&dir).unwrap();
        (vfs, dir)
    }

    #[test]
    fn synced_bytes_survive_every_crash() {
        let (vfs, dir) = setup();
        let path = dir.join("f");
        let f = vfs.open(&path, OpenOptions::create_new()).unwrap();
        write_all_at(f.as_ref(), &[7u8; 3 * PAGE], 0).unwrap();
        f.sync_data().unwrap();
        vfs.sync_dir(&dir).unwrap();
        write_all_at(f.as_ref(), &[9u8; 1024], PAGE as u64 + 512).unwrap();
        drop(f);
        for seed in 0..50 {
            let copy = vfs.clone();
            let before = copy.read_file(&path).unwrap();
            assert_eq!(&before[PAGE + 512..PAGE + 1536], &[9u8; 1024]);
            copy.crash(&mut SimRng::new(seed), TearPolicy::Random);
            let after = copy.read_file(&path).unwrap();
            assert_eq!(&after[..PAGE], &[7u8; PAGE], "synced page changed");
            assert_eq!(&after[2 * PAGE..], &[7u8; PAGE], "synced page changed");
            // Re-dirty for the next round.
            let f = copy.open(&path, OpenOptions::read_write()).unwrap();
            write_all_at(f.as_ref(), &[9u8; 1024], PAGE as u64 + 512).unwrap();
        }
    }

    const PAGE: usize = PAGE_BYTES as usize;

    /// Through the page cache, a write of part of a page puts the whole page at risk:
    /// writeback rewrites it, and a crash may tear sectors the write did not change.
    /// With direct I/O only the written sectors are.
    #[test]
    fn a_buffered_write_puts_its_whole_page_at_risk() {
        for direct in [false, true] {
            let (vfs, dir) = setup();
            vfs.set_direct_io_alignment(512);
            let path = dir.join("f");
            let f = vfs
                .open(&path, OpenOptions::create_new().with_direct(direct))
                .unwrap();
            let mut buf = crate::align::AlignedBuf::new(PAGE, PAGE);
            buf.resize_zeroed(PAGE);
            buf.as_mut_slice().fill(7);
            write_all_at(f.as_ref(), buf.as_slice(), 0).unwrap();
            f.sync_data().unwrap();
            vfs.sync_dir(&dir).unwrap();
            buf.as_mut_slice()[..512].fill(9);
            write_all_at(f.as_ref(), &buf.as_slice()[..512], 0).unwrap();
            drop(f);
            let torn_elsewhere = (0..50).any(|seed| {
                let copy = vfs.clone();
                copy.crash(&mut SimRng::new(seed), TearPolicy::Random);
                copy.read_file(&path).unwrap()[512..] != [7u8; PAGE - 512]
            });
            assert_eq!(torn_elsewhere, !direct, "direct: {direct}");
        }
    }

    #[test]
    fn unsynced_sectors_tear_independently() {
        let (vfs, dir) = setup();
        let path = dir.join("f");
        let f = vfs.open(&path, OpenOptions::create_new()).unwrap();
        write_all_at(f.as_ref(), &[0u8; 8192], 0).unwrap();
        f.sync_data().unwrap();
        vfs.sync_dir(&dir).unwrap();
        write_all_at(f.as_ref(), &[0xEE; 8192], 0).unwrap();
        drop(f);
        vfs.crash(&mut SimRng::new(3), TearPolicy::Random);
        let after = vfs.read_file(&path).unwrap();
        let mut kinds = BTreeSet::new();
        for sector in after.chunks(SECTOR_SIZE) {
            kinds.insert(if sector.iter().all(|&b| b == 0xEE) {
                "new"
            } else if sector.iter().all(|&b| b == 0) {
                "old-or-zero"
            } else {
                "garbage"
            });
        }
        assert!(
            kinds.len() >= 2,
            "16 sectors all tore the same way: {kinds:?}"
        );
    }

    #[test]
    fn unsynced_directory_entries_may_vanish() {
        let (vfs, dir) = setup();
        let mut vanished = 0;
        for seed in 0..40 {
            let path = dir.join(format!("f{seed}"));
            let f = vfs.open(&path, OpenOptions::create_new()).unwrap();
            write_all_at(f.as_ref(), b"x", 0).unwrap();
            f.sync_data().unwrap();
            drop(f);
            vfs.crash(&mut SimRng::new(seed), TearPolicy::Random);
            if vfs.kind(&path).unwrap().is_none() {
                vanished += 1;
            }
            vfs.sync_dir(&dir).unwrap();
        }
        assert!(vanished > 0 && vanished < 40, "vanished {vanished} of 40");
    }

    #[test]
    fn planned_faults_fire_at_their_mutation() {
        let (vfs, dir) = setup();
        let f = vfs.open(&dir.join("f"), OpenOptions::create_new()).unwrap(); // mutation 1
        let mut plan = FaultPlan::default();
        plan.fail_sync_at.insert(3);
        plan.no_space_at.insert(4);
        plan.crash_at = Some(5);
        vfs.set_plan(plan);
        write_all_at(f.as_ref(), &[1; 4096], 0).unwrap(); // 2
        assert!(f.sync_data().is_err()); // 3
        let err = write_all_at(f.as_ref(), &[2; 4096], 4096).unwrap_err(); // 4
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert!(f.sync_data().is_err()); // 5: power loss
        assert!(vfs.is_powered_off());
        assert!(f.read_at(&mut [0; 1], 0).is_err());
        vfs.crash(&mut SimRng::new(1), TearPolicy::KeepOld);
        assert!(
            f.read_at(&mut [0; 1], 0).is_err(),
            "a handle from before the crash works"
        );
    }

    #[test]
    fn direct_io_demands_alignment() {
        let (vfs, dir) = setup();
        let f = vfs
            .open(&dir.join("f"), OpenOptions::create_new().with_direct(true))
            .unwrap();
        let mut buf = crate::align::AlignedBuf::new(4096, 4096);
        buf.resize_zeroed(4096);
        write_all_at(f.as_ref(), buf.as_slice(), 0).unwrap();
        assert!(f.write_at(&buf.as_slice()[..100], 0).is_err());
        assert!(f.write_at(buf.as_slice(), 100).is_err());
        let mut out = crate::align::AlignedBuf::new(4096, 4096);
        out.resize_zeroed(4096);
        read_exact_at(f.as_ref(), out.as_mut_slice(), 0).unwrap();
    }

    #[test]
    fn second_handle_cannot_take_the_lock() {
        let (vfs, dir) = setup();
        let a = vfs
            .open(&dir.join("LOCK"), OpenOptions::create_new())
            .unwrap();
        let b = vfs
            .open(&dir.join("LOCK"), OpenOptions::read_write())
            .unwrap();
        assert!(a.try_lock_exclusive().unwrap());
        assert!(!b.try_lock_exclusive().unwrap());
        drop(a);
        assert!(b.try_lock_exclusive().unwrap());
    }
}
