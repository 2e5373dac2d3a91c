//! The model behind the mount, free of FUSE plumbing (only `Errno` from fuser).
//!
//! - Every regular file is an *inode* whose durable bytes live in one backing file,
//!   `<backing>/.faultfs-inodes/<ino>`, plus an in-memory overlay: the live content of every
//!   512-byte sector written since the file's last `fsync`/`fdatasync`, and the live size.
//!   Reads see the overlay over the durable bytes (like a page cache).
//!   With [`Options::failed_sync_loses_data`], a failed sync moves the overlay to a
//!   *lost* set instead: still read (the page cache keeps it), never written by a later
//!   sync (the pages were marked clean), settled like unsynced sectors at a crash.
//! - Every directory has its *live* entries (what the running system sees) and its
//!   *durable* entries (what a power loss keeps). Durable entries are hard links in the
//!   backing tree to the inode files, so the backing directory always looks like the disk
//!   after a power loss (plus the hidden inode store). A directory `fsync` makes its live
//!   entries durable. Directories themselves are created and removed durably at once.
//! - Every state-changing operation (write, truncate, file or directory sync, file
//!   creation, unlink, rename) is numbered; a [`FaultPlan`] names operations at which
//!   power is lost, a sync fails with EIO, or a write fails with ENOSPC.
//! - [`State::crash`] settles the unsynced state (per sector: old, new, zeros or random
//!   bytes; per entry change: applied or not), forgets the overlay, kills every open
//!   handle and powers the machine back on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use fuser::Errno;

/// Granularity at which unsynced writes are tracked and torn.
pub const SECTOR: usize = 512;
const SECTOR_U64: u64 = SECTOR as u64;
/// The root directory's inode number (FUSE's).
pub const ROOT: u64 = 1;
/// Name of the hidden inode store inside the backing directory.
pub const STORE_NAME: &str = ".faultfs-inodes";

/// How the file system behaves; fixed at mount.
#[derive(Debug, Clone)]
pub struct Options {
    /// `fsync` of a file or directory also `fdatasync`s the backing file (or directory)
    /// after moving the overlay into it. Off, the backing store is only written: enough
    /// for simulated power losses (the backing store's own durability is not under test)
    /// and much faster on a real disk.
    pub sync_backing: bool,
    /// Reads and writes through a handle opened with `O_DIRECT` must have offsets and
    /// lengths that are multiples of this (EINVAL otherwise), as on a block device.
    /// 0 disables the check. (The kernel does not check this on FUSE, and buffer
    /// addresses cannot be checked from here.)
    pub direct_io_alignment: u32,
    /// Opens with `O_DIRECT` fail with EINVAL (a file system without direct I/O).
    pub refuse_direct_io: bool,
    /// Let the kernel's page cache serve reads (write-through; no writeback cache).
    /// Off (default), every file is opened with `FOPEN_DIRECT_IO`: every read and write
    /// reaches this file system.
    pub kernel_page_cache: bool,
    /// A failed file sync behaves like Linux after a writeback error on a buffered file
    /// (ext4, xfs, btrfs since 4.13): the written pages are marked clean although they
    /// did not reach the disk, reads keep returning them, a later `fsync` succeeds
    /// without writing them, and a power loss loses (or tears) them. Off, a failed sync
    /// leaves the data unsynced and a later sync makes it durable (the fault model's
    /// point 4 as the simulated disk implements it).
    pub failed_sync_loses_data: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            sync_backing: true,
            direct_io_alignment: 512,
            refuse_direct_io: false,
            kernel_page_cache: false,
            failed_sync_loses_data: false,
        }
    }
}

/// Faults to inject, by operation number (see [`Stats::ops`]) or by count from when the
/// plan was installed. Installing a plan replaces the previous one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// Power is lost at this operation: a write is applied (unsynced) and fails, any
    /// other operation does not happen and fails; afterwards everything fails with EIO
    /// until [`State::crash`].
    pub power_loss_at_op: Option<u64>,
    /// A file or directory sync at one of these operation numbers fails with EIO (its
    /// unsynced data stays unsynced). At another kind of operation nothing happens.
    pub fail_sync_at_ops: BTreeSet<u64>,
    /// A write (or file creation, or extending truncate) at one of these operation
    /// numbers fails with ENOSPC after applying a prefix of whole sectors (possibly none).
    pub no_space_at_ops: BTreeSet<u64>,
    /// The n-th file or directory sync from now (1-based) fails with EIO.
    pub fail_nth_sync: Option<u64>,
    /// The n-th write from now (1-based) fails with ENOSPC (as above).
    pub no_space_nth_write: Option<u64>,
}

/// What a crash does with every unsynced sector (and, for the `Drop`/`Keep` modes, with
/// every unsynced directory entry change; the others decide each change by coin flip).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CrashMode {
    /// Each unsynced 512-byte sector independently old, new, zeros or random bytes (the
    /// simulated disk's rule); each entry change applied or not.
    Random,
    /// Every unsynced write and entry change is lost.
    DropAll,
    /// Every unsynced write and entry change survives (a process kill, not a power loss).
    KeepAll,
    /// Each unsynced 512-byte sector independently old or new: tears at 512-byte boundaries.
    Torn512,
    /// Each 4096-byte block holding unsynced sectors entirely old or entirely new: tears at
    /// 4096-byte boundaries.
    Torn4096,
    /// Every unsynced sector becomes random bytes.
    Garbage,
    /// Every unsynced sector becomes zeros.
    Zeros,
}

impl CrashMode {
    /// Whether an unsynced directory entry or size change survives the crash: always
    /// under `KeepAll`, never under `DropAll`, else by coin flip.
    fn keeps_change(self, rng: &mut Rng) -> bool {
        match self {
            CrashMode::KeepAll => true,
            CrashMode::DropAll => false,
            _ => rng.coin(),
        }
    }

    pub const ALL: [CrashMode; 7] = [
        CrashMode::Random,
        CrashMode::DropAll,
        CrashMode::KeepAll,
        CrashMode::Torn512,
        CrashMode::Torn4096,
        CrashMode::Garbage,
        CrashMode::Zeros,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CrashMode::Random => "random",
            CrashMode::DropAll => "drop",
            CrashMode::KeepAll => "keep",
            CrashMode::Torn512 => "torn512",
            CrashMode::Torn4096 => "torn4096",
            CrashMode::Garbage => "garbage",
            CrashMode::Zeros => "zeros",
        }
    }

    pub fn parse(name: &str) -> Option<CrashMode> {
        CrashMode::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// What one crash did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Unsynced sectors that were settled (within the settled file sizes).
    pub unsynced_sectors: u64,
    pub sectors_old: u64,
    pub sectors_new: u64,
    pub sectors_zeroed: u64,
    pub sectors_random: u64,
    /// Unsynced directory entry changes that were kept / undone.
    pub entries_applied: u64,
    pub entries_reverted: u64,
    /// Files whose unsynced size change was kept / undone.
    pub sizes_applied: u64,
    pub sizes_reverted: u64,
}

/// Counters since the mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// State-changing operations so far: the numbers a [`FaultPlan`] refers to.
    pub ops: u64,
    pub writes: u64,
    pub bytes_written: u64,
    pub reads: u64,
    pub file_syncs: u64,
    pub dir_syncs: u64,
    pub failed_syncs: u64,
    pub no_space_errors: u64,
    pub power_losses: u64,
    pub crashes: u64,
    /// Operations refused because power was off or the handle predates a crash.
    pub dead_handle_errors: u64,
    /// `O_DIRECT` reads/writes refused for misalignment.
    pub misaligned_direct_io: u64,
    /// Totals of every [`CrashReport`].
    pub settled: CrashReport,
}

/// Unsynced state right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unsynced {
    pub sectors: u64,
    pub files: u64,
    pub entries: u64,
}

/// Kind of an inode, for attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// Attributes of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
}

/// SplitMix64: the crash decisions follow from the seed alone.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_F42D_4C95_7F2D)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }
    pub fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[derive(Debug)]
struct FileNode {
    /// The inode's durable bytes.
    data: File,
    durable_size: u64,
    live_size: u64,
    /// Live content of every sector written (or truncated) since the last sync. Bytes of
    /// a sector at or past `live_size` are zero.
    dirty: BTreeMap<u64, Box<[u8; SECTOR]>>,
    /// Sectors whose sync failed under [`Options::failed_sync_loses_data`]: their live
    /// content, read but never made durable until written again.
    lost: BTreeMap<u64, Box<[u8; SECTOR]>>,
    /// Open handles (of the current boot).
    open: u32,
}

#[derive(Debug)]
struct DirNode {
    /// Path relative to the backing directory.
    rel: PathBuf,
    parent: u64,
    live: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
}

#[derive(Debug)]
enum Node {
    File(FileNode),
    Dir(DirNode),
}

#[derive(Debug, Clone, Copy)]
struct Handle {
    ino: u64,
    direct: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Write,
    Create,
    Sync,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Injected {
    None,
    PowerLoss,
    FailSync,
    NoSpace,
}

/// Everything the file system knows; the FUSE layer holds it under a mutex.
#[derive(Debug)]
pub struct State {
    backing: PathBuf,
    store: PathBuf,
    options: Options,
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// Open file and directory handles of the current boot. A crash empties it: handles
    /// from before are unknown afterwards and every use of them fails with EIO.
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    powered_off: bool,
    plan: FaultPlan,
    syncs_since_plan: u64,
    writes_since_plan: u64,
    stats: Stats,
}

fn io_errno(e: &io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn name_of(name: &OsStr) -> OsString {
    name.to_os_string()
}

impl State {
    /// Opens the backing directory (created if missing). Files already in it become
    /// durable inodes (hard links keep their identity); a leftover inode store from an
    /// earlier mount is discarded first.
    pub fn new(backing: &Path, options: Options) -> io::Result<State> {
        fs::create_dir_all(backing)?;
        let backing = backing.canonicalize()?;
        let store = backing.join(STORE_NAME);
        if store.exists() {
            fs::remove_dir_all(&store)?;
        }
        fs::create_dir(&store)?;
        let mut state = State {
            backing,
            store,
            options,
            nodes: HashMap::new(),
            next_ino: ROOT + 1,
            handles: HashMap::new(),
            next_fh: 1,
            powered_off: false,
            plan: FaultPlan::default(),
            syncs_since_plan: 0,
            writes_since_plan: 0,
            stats: Stats::default(),
        };
        state.nodes.insert(
            ROOT,
            Node::Dir(DirNode {
                rel: PathBuf::new(),
                parent: ROOT,
                live: BTreeMap::new(),
                durable: BTreeMap::new(),
            }),
        );
        let mut seen: HashMap<(u64, u64), u64> = HashMap::new();
        state.adopt_tree(ROOT, &mut seen)?;
        Ok(state)
    }

    /// Takes the existing backing tree under directory `dir` in as durable state.
    fn adopt_tree(&mut self, dir: u64, seen: &mut HashMap<(u64, u64), u64>) -> io::Result<()> {
        let rel = self.dir(dir).expect("directory").rel.clone();
        let mut entries: Vec<_> =
            fs::read_dir(self.backing.join(&rel))?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            if dir == ROOT && name == STORE_NAME {
                continue;
            }
            let meta = fs::symlink_metadata(entry.path())?;
            let ino = if meta.is_dir() {
                let ino = self.alloc_ino();
                self.nodes.insert(
                    ino,
                    Node::Dir(DirNode {
                        rel: rel.join(&name),
                        parent: dir,
                        live: BTreeMap::new(),
                        durable: BTreeMap::new(),
                    }),
                );
                self.adopt_tree(ino, seen)?;
                ino
            } else if meta.is_file() {
                if let Some(&ino) = seen.get(&(meta.dev(), meta.ino())) {
                    ino
                } else {
                    let ino = self.alloc_ino();
                    fs::hard_link(entry.path(), self.data_path(ino))?;
                    let data = self.open_data(ino)?;
                    self.nodes.insert(
                        ino,
                        Node::File(FileNode {
                            data,
                            durable_size: meta.len(),
                            live_size: meta.len(),
                            dirty: BTreeMap::new(),
                            lost: BTreeMap::new(),
                            open: 0,
                        }),
                    );
                    seen.insert((meta.dev(), meta.ino()), ino);
                    ino
                }
            } else {
                continue; // symlinks, sockets…: not supported, not shown
            };
            let d = self.dir_mut(dir).expect("directory");
            d.live.insert(name.clone(), ino);
            d.durable.insert(name, ino);
        }
        Ok(())
    }

    fn alloc_ino(&mut self) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    fn data_path(&self, ino: u64) -> PathBuf {
        self.store.join(ino.to_string())
    }

    fn open_data(&self, ino: u64) -> io::Result<File> {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.data_path(ino))
    }

    fn dir(&self, ino: u64) -> Option<&DirNode> {
        match self.nodes.get(&ino) {
            Some(Node::Dir(d)) => Some(d),
            _ => None,
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Option<&mut DirNode> {
        match self.nodes.get_mut(&ino) {
            Some(Node::Dir(d)) => Some(d),
            _ => None,
        }
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut FileNode, Errno> {
        match self.nodes.get_mut(&ino) {
            Some(Node::File(f)) => Ok(f),
            Some(Node::Dir(_)) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn is_powered_off(&self) -> bool {
        self.powered_off
    }

    /// Cuts power now: every later operation fails with EIO until [`State::crash`].
    pub fn power_off(&mut self) {
        if !self.powered_off {
            self.powered_off = true;
            self.stats.power_losses += 1;
        }
    }

    /// Installs a fault plan (replacing the previous one).
    pub fn set_plan(&mut self, plan: FaultPlan) {
        self.plan = plan;
        self.syncs_since_plan = 0;
        self.writes_since_plan = 0;
    }

    /// What is unsynced right now.
    pub fn unsynced(&self) -> Unsynced {
        let mut u = Unsynced::default();
        for node in self.nodes.values() {
            match node {
                Node::File(f) => {
                    u.sectors += (f.dirty.len() + f.lost.len()) as u64;
                    if !f.dirty.is_empty() || !f.lost.is_empty() || f.live_size != f.durable_size {
                        u.files += 1;
                    }
                }
                Node::Dir(d) => {
                    let names: BTreeSet<&OsString> =
                        d.live.keys().chain(d.durable.keys()).collect();
                    u.entries += names
                        .into_iter()
                        .filter(|n| d.live.get(*n) != d.durable.get(*n))
                        .count() as u64;
                }
            }
        }
        u
    }

    fn check_power(&mut self) -> Result<(), Errno> {
        if self.powered_off {
            self.stats.dead_handle_errors += 1;
            return Err(Errno::EIO);
        }
        Ok(())
    }

    /// Counts a state-changing operation and applies the fault plan to it.
    fn begin(&mut self, kind: OpKind) -> Result<Injected, Errno> {
        self.check_power()?;
        self.stats.ops += 1;
        let n = self.stats.ops;
        if self.plan.power_loss_at_op == Some(n) {
            self.power_off();
            return Ok(Injected::PowerLoss);
        }
        match kind {
            OpKind::Sync => {
                self.syncs_since_plan += 1;
                if self.plan.fail_sync_at_ops.contains(&n)
                    || self.plan.fail_nth_sync == Some(self.syncs_since_plan)
                {
                    self.stats.failed_syncs += 1;
                    return Ok(Injected::FailSync);
                }
            }
            OpKind::Write | OpKind::Create => {
                if kind == OpKind::Write {
                    self.writes_since_plan += 1;
                }
                if self.plan.no_space_at_ops.contains(&n)
                    || (kind == OpKind::Write
                        && self.plan.no_space_nth_write == Some(self.writes_since_plan))
                {
                    self.stats.no_space_errors += 1;
                    return Ok(Injected::NoSpace);
                }
            }
            OpKind::Other => {}
        }
        Ok(Injected::None)
    }

    fn handle(&mut self, fh: u64) -> Result<Handle, Errno> {
        self.check_power()?;
        match self.handles.get(&fh) {
            Some(h) => Ok(*h),
            None => {
                self.stats.dead_handle_errors += 1;
                Err(Errno::EIO)
            }
        }
    }

    fn attr(&self, ino: u64) -> Result<Attr, Errno> {
        match self.nodes.get(&ino) {
            Some(Node::File(f)) => Ok(Attr {
                ino,
                kind: Kind::File,
                size: f.live_size,
            }),
            Some(Node::Dir(d)) => Ok(Attr {
                ino,
                kind: Kind::Dir,
                size: d.live.len() as u64,
            }),
            None => Err(Errno::ENOENT),
        }
    }

    fn live_entry(&self, parent: u64, name: &OsStr) -> Result<Option<u64>, Errno> {
        let dir = self.dir(parent).ok_or(Errno::ENOTDIR)?;
        Ok(dir.live.get(name).copied())
    }

    fn reserved(parent: u64, name: &OsStr) -> bool {
        parent == ROOT && name == STORE_NAME
    }

    pub fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<Attr, Errno> {
        self.check_power()?;
        match self.live_entry(parent, name)? {
            Some(ino) => self.attr(ino),
            None => Err(Errno::ENOENT),
        }
    }

    pub fn getattr(&mut self, ino: u64) -> Result<Attr, Errno> {
        self.check_power()?;
        self.attr(ino)
    }

    /// Truncates or extends a file (ftruncate); counted as a write.
    pub fn set_size(&mut self, ino: u64, fh: Option<u64>, size: u64) -> Result<Attr, Errno> {
        if let Some(fh) = fh {
            self.handle(fh)?;
        }
        let old = self.file_mut(ino)?.live_size;
        let injected = self.begin(OpKind::Write)?;
        match injected {
            Injected::PowerLoss => return Err(Errno::EIO),
            Injected::NoSpace if size > old => return Err(Errno::ENOSPC),
            _ => {}
        }
        let file = self.file_mut(ino)?;
        if size < file.live_size {
            // Sectors from the new end on read as zeros from now on, also if the file
            // grows again: mark them written with zeros past the new end.
            let first = size / SECTOR_U64;
            let last = file.live_size.max(file.durable_size).div_ceil(SECTOR_U64);
            for sector in first..last {
                let mut content = sector_live(file, sector).map_err(|e| io_errno(&e))?;
                let keep = size.saturating_sub(sector * SECTOR_U64).min(SECTOR_U64) as usize;
                content[keep..].fill(0);
                file.lost.remove(&sector);
                file.dirty.insert(sector, content);
            }
        }
        file.live_size = size;
        self.attr(ino)
    }

    pub fn mkdir(&mut self, parent: u64, name: &OsStr) -> Result<Attr, Errno> {
        self.check_power()?;
        if Self::reserved(parent, name) {
            return Err(Errno::EPERM);
        }
        if self.live_entry(parent, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        // A durable entry whose removal is not yet durable: make the removal durable so
        // the directory can take the name (directories are durable at once).
        let rel = self.dir(parent).expect("checked").rel.clone();
        if let Some(old) = self
            .dir(parent)
            .expect("checked")
            .durable
            .get(name)
            .copied()
        {
            self.set_backing_entry(&rel, name, Some(old), None)
                .map_err(|e| io_errno(&e))?;
            self.dir_mut(parent).expect("checked").durable.remove(name);
        }
        fs::create_dir(self.backing.join(&rel).join(name)).map_err(|e| io_errno(&e))?;
        let ino = self.alloc_ino();
        self.nodes.insert(
            ino,
            Node::Dir(DirNode {
                rel: rel.join(name),
                parent,
                live: BTreeMap::new(),
                durable: BTreeMap::new(),
            }),
        );
        let d = self.dir_mut(parent).expect("checked");
        d.live.insert(name_of(name), ino);
        d.durable.insert(name_of(name), ino);
        self.collect_garbage();
        self.attr(ino)
    }

    pub fn rmdir(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        self.check_power()?;
        let ino = self.live_entry(parent, name)?.ok_or(Errno::ENOENT)?;
        let (rel, durable) = match self.dir(ino) {
            None => return Err(Errno::ENOTDIR),
            Some(d) if !d.live.is_empty() => return Err(Errno::ENOTEMPTY),
            Some(d) => (d.rel.clone(), d.durable.clone()),
        };
        // Removals inside it that were not durable yet become durable with it.
        for (entry, old) in durable {
            self.set_backing_entry(&rel, &entry, Some(old), None)
                .map_err(|e| io_errno(&e))?;
        }
        fs::remove_dir(self.backing.join(&rel)).map_err(|e| io_errno(&e))?;
        self.nodes.remove(&ino);
        let d = self.dir_mut(parent).expect("checked");
        d.live.remove(name);
        d.durable.remove(name);
        self.collect_garbage();
        Ok(())
    }

    fn new_handle(&mut self, ino: u64, direct: bool) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, Handle { ino, direct });
        if let Ok(file) = self.file_mut(ino) {
            file.open += 1;
        }
        fh
    }

    fn check_open_flags(&self, flags: i32) -> Result<bool, Errno> {
        let direct = flags & libc::O_DIRECT != 0;
        if direct && self.options.refuse_direct_io {
            return Err(Errno::EINVAL);
        }
        Ok(direct)
    }

    /// Creates (or, without `O_EXCL`, opens) a file. A creation is counted as an
    /// operation; the new entry is durable only after the directory is synced.
    pub fn create(&mut self, parent: u64, name: &OsStr, flags: i32) -> Result<(Attr, u64), Errno> {
        self.check_power()?;
        let direct = self.check_open_flags(flags)?;
        if Self::reserved(parent, name) {
            return Err(Errno::EPERM);
        }
        if let Some(ino) = self.live_entry(parent, name)? {
            if flags & libc::O_EXCL != 0 {
                return Err(Errno::EEXIST);
            }
            let attr = self.attr(ino)?;
            if attr.kind == Kind::Dir {
                return Err(Errno::EISDIR);
            }
            let fh = self.new_handle(ino, direct);
            return Ok((attr, fh));
        }
        match self.begin(OpKind::Create)? {
            Injected::PowerLoss => return Err(Errno::EIO),
            Injected::NoSpace => return Err(Errno::ENOSPC),
            Injected::None | Injected::FailSync => {}
        }
        let ino = self.alloc_ino();
        let data = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.data_path(ino))
            .map_err(|e| io_errno(&e))?;
        self.nodes.insert(
            ino,
            Node::File(FileNode {
                data,
                durable_size: 0,
                live_size: 0,
                dirty: BTreeMap::new(),
                lost: BTreeMap::new(),
                open: 0,
            }),
        );
        self.dir_mut(parent)
            .expect("checked")
            .live
            .insert(name_of(name), ino);
        let fh = self.new_handle(ino, direct);
        Ok((self.attr(ino)?, fh))
    }

    pub fn open(&mut self, ino: u64, flags: i32) -> Result<u64, Errno> {
        self.check_power()?;
        let direct = self.check_open_flags(flags)?;
        self.file_mut(ino)?;
        Ok(self.new_handle(ino, direct))
    }

    pub fn opendir(&mut self, ino: u64) -> Result<u64, Errno> {
        self.check_power()?;
        if self.dir(ino).is_none() {
            return Err(Errno::ENOTDIR);
        }
        Ok(self.new_handle(ino, false))
    }

    /// Releases a file or directory handle (always succeeds; a handle from before a crash
    /// is already gone).
    pub fn release(&mut self, fh: u64) {
        if let Some(h) = self.handles.remove(&fh) {
            if let Ok(file) = self.file_mut(h.ino) {
                file.open = file.open.saturating_sub(1);
            }
            self.collect_garbage();
        }
    }

    fn check_direct(&mut self, handle: Handle, offset: u64, len: usize) -> Result<(), Errno> {
        let align = u64::from(self.options.direct_io_alignment);
        if handle.direct
            && align > 0
            && (!offset.is_multiple_of(align) || !(len as u64).is_multiple_of(align))
        {
            self.stats.misaligned_direct_io += 1;
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    pub fn read(&mut self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let handle = self.handle(fh)?;
        if handle.ino != ino {
            return Err(Errno::EBADF);
        }
        self.check_direct(handle, offset, size as usize)?;
        self.stats.reads += 1;
        let file = self.file_mut(ino)?;
        if offset >= file.live_size {
            return Ok(Vec::new());
        }
        let n = u64::from(size).min(file.live_size - offset) as usize;
        let mut buf = vec![0u8; n];
        let end = offset + n as u64;
        let durable_end = end.min(file.durable_size);
        if offset < durable_end {
            file.data
                .read_exact_at(&mut buf[..(durable_end - offset) as usize], offset)
                .map_err(|e| io_errno(&e))?;
        }
        let first = offset / SECTOR_U64;
        let last = (end - 1) / SECTOR_U64;
        // A direct read goes to the disk: it does not see pages whose writeback failed.
        let lost = if handle.direct {
            file.lost.range(0..0)
        } else {
            file.lost.range(first..=last)
        };
        for (&sector, content) in lost.chain(file.dirty.range(first..=last)) {
            let s_start = sector * SECTOR_U64;
            let from = s_start.max(offset);
            let to = (s_start + SECTOR_U64).min(end);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&content[(from - s_start) as usize..(to - s_start) as usize]);
        }
        Ok(buf)
    }

    /// Writes into the overlay. Not durable until the file is synced.
    pub fn write(&mut self, ino: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let handle = self.handle(fh)?;
        if handle.ino != ino {
            return Err(Errno::EBADF);
        }
        self.check_direct(handle, offset, data.len())?;
        let injected = self.begin(OpKind::Write)?;
        let len = if injected == Injected::NoSpace {
            (data.len() / 2) / SECTOR * SECTOR
        } else {
            data.len()
        };
        self.stats.writes += 1;
        self.stats.bytes_written += len as u64;
        let file = self.file_mut(ino)?;
        apply_write(file, offset, &data[..len]).map_err(|e| io_errno(&e))?;
        match injected {
            Injected::PowerLoss => Err(Errno::EIO),
            Injected::NoSpace => Err(Errno::ENOSPC),
            Injected::None | Injected::FailSync => Ok(len as u32),
        }
    }

    /// fsync/fdatasync of a file: its overlay and size go to the backing file.
    pub fn fsync(&mut self, ino: u64, fh: u64) -> Result<(), Errno> {
        let handle = self.handle(fh)?;
        if handle.ino != ino {
            return Err(Errno::EBADF);
        }
        match self.begin(OpKind::Sync)? {
            Injected::PowerLoss => return Err(Errno::EIO),
            Injected::FailSync => {
                if self.options.failed_sync_loses_data {
                    let file = self.file_mut(ino)?;
                    let mut dirty = std::mem::take(&mut file.dirty);
                    file.lost.append(&mut dirty);
                }
                return Err(Errno::EIO);
            }
            Injected::None | Injected::NoSpace => {}
        }
        self.stats.file_syncs += 1;
        let sync_backing = self.options.sync_backing;
        let file = self.file_mut(ino)?;
        flush_file(file, sync_backing).map_err(|e| io_errno(&e))
    }

    /// fsync of a directory: its live entries become durable (hard links in the backing
    /// tree are made to match).
    pub fn fsyncdir(&mut self, ino: u64, fh: u64) -> Result<(), Errno> {
        let handle = self.handle(fh)?;
        if handle.ino != ino {
            return Err(Errno::EBADF);
        }
        if self.dir(ino).is_none() {
            return Err(Errno::ENOTDIR);
        }
        match self.begin(OpKind::Sync)? {
            Injected::PowerLoss | Injected::FailSync => return Err(Errno::EIO),
            Injected::None | Injected::NoSpace => {}
        }
        self.stats.dir_syncs += 1;
        let d = self.dir(ino).expect("checked");
        let rel = d.rel.clone();
        let live = d.live.clone();
        let durable = d.durable.clone();
        let names: BTreeSet<&OsString> = live.keys().chain(durable.keys()).collect();
        for name in names {
            let (now, before) = (live.get(name).copied(), durable.get(name).copied());
            if now != before {
                self.set_backing_entry(&rel, name, before, now)
                    .map_err(|e| io_errno(&e))?;
            }
        }
        if self.options.sync_backing {
            File::open(self.backing.join(&rel))
                .and_then(|d| d.sync_all())
                .map_err(|e| io_errno(&e))?;
        }
        self.dir_mut(ino).expect("checked").durable = live;
        self.collect_garbage();
        Ok(())
    }

    /// Entries of a live directory, with `.` and `..`.
    pub fn readdir(&mut self, ino: u64, fh: u64) -> Result<Vec<(u64, Kind, OsString)>, Errno> {
        self.handle(fh)?;
        let d = self.dir(ino).ok_or(Errno::ENOTDIR)?;
        let mut out = vec![
            (ino, Kind::Dir, OsString::from(".")),
            (d.parent, Kind::Dir, OsString::from("..")),
        ];
        for (name, &child) in &d.live {
            let kind = match self.nodes.get(&child) {
                Some(Node::Dir(_)) => Kind::Dir,
                _ => Kind::File,
            };
            out.push((child, kind, name.clone()));
        }
        Ok(out)
    }

    pub fn unlink(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        self.check_power()?;
        let ino = self.live_entry(parent, name)?.ok_or(Errno::ENOENT)?;
        if self.dir(ino).is_some() {
            return Err(Errno::EISDIR);
        }
        if self.begin(OpKind::Other)? == Injected::PowerLoss {
            return Err(Errno::EIO);
        }
        self.dir_mut(parent).expect("checked").live.remove(name);
        self.collect_garbage();
        Ok(())
    }

    /// Renames a file (replacing the target). Directories cannot be renamed (EPERM).
    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
        exchange: bool,
    ) -> Result<(), Errno> {
        self.check_power()?;
        if exchange {
            return Err(Errno::EINVAL);
        }
        if Self::reserved(new_parent, new_name) {
            return Err(Errno::EPERM);
        }
        let ino = self.live_entry(parent, name)?.ok_or(Errno::ENOENT)?;
        if self.dir(ino).is_some() {
            return Err(Errno::EPERM);
        }
        if let Some(target) = self.live_entry(new_parent, new_name)? {
            if no_replace {
                return Err(Errno::EEXIST);
            }
            if self.dir(target).is_some() {
                return Err(Errno::EISDIR);
            }
        }
        if self.begin(OpKind::Other)? == Injected::PowerLoss {
            return Err(Errno::EIO);
        }
        self.dir_mut(parent).expect("checked").live.remove(name);
        self.dir_mut(new_parent)
            .expect("checked")
            .live
            .insert(name_of(new_name), ino);
        self.collect_garbage();
        Ok(())
    }

    /// Makes the backing entry `rel/name` go from inode `old` to inode `new`.
    fn set_backing_entry(
        &self,
        rel: &Path,
        name: &OsStr,
        old: Option<u64>,
        new: Option<u64>,
    ) -> io::Result<()> {
        let path = self.backing.join(rel).join(name);
        if old.is_some() {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        if let Some(ino) = new {
            if matches!(self.nodes.get(&ino), Some(Node::File(_))) {
                fs::hard_link(self.data_path(ino), &path)?;
            }
        }
        Ok(())
    }

    /// Forgets files that no live or durable entry names and no handle holds.
    fn collect_garbage(&mut self) {
        let mut referenced: BTreeSet<u64> = BTreeSet::new();
        for node in self.nodes.values() {
            if let Node::Dir(d) = node {
                referenced.extend(d.live.values().copied());
                referenced.extend(d.durable.values().copied());
            }
        }
        let garbage: Vec<u64> = self
            .nodes
            .iter()
            .filter_map(|(&ino, node)| match node {
                Node::File(f) if f.open == 0 && !referenced.contains(&ino) => Some(ino),
                _ => None,
            })
            .collect();
        for ino in garbage {
            self.nodes.remove(&ino);
            let _ = fs::remove_file(self.data_path(ino));
        }
    }

    /// A power loss and reboot: settles every unsynced sector, size and directory entry
    /// change according to `mode` (random choices from `seed`), forgets the overlay,
    /// invalidates every open handle, clears the fault plan and powers on.
    ///
    /// # Errors
    /// Only I/O errors of the backing store.
    pub fn crash(&mut self, seed: u64, mode: CrashMode) -> io::Result<CrashReport> {
        let mut rng = Rng::new(seed);
        let mut report = CrashReport::default();
        let sync_backing = self.options.sync_backing;
        let mut inos: Vec<u64> = self.nodes.keys().copied().collect();
        inos.sort_unstable();
        for &ino in &inos {
            if let Some(Node::File(file)) = self.nodes.get_mut(&ino) {
                settle_file(file, &mut rng, mode, &mut report, sync_backing)?;
                file.open = 0;
            }
        }
        for &ino in &inos {
            let Some(d) = self.dir(ino) else { continue };
            let rel = d.rel.clone();
            let (live, durable) = (d.live.clone(), d.durable.clone());
            let names: BTreeSet<&OsString> = live.keys().chain(durable.keys()).collect();
            let mut settled = BTreeMap::new();
            for name in names {
                let (now, before) = (live.get(name).copied(), durable.get(name).copied());
                let pick = if now == before {
                    now
                } else {
                    if mode.keeps_change(&mut rng) {
                        report.entries_applied += 1;
                        self.set_backing_entry(&rel, name, before, now)?;
                        now
                    } else {
                        report.entries_reverted += 1;
                        before
                    }
                };
                if let Some(ino) = pick {
                    settled.insert(name.clone(), ino);
                }
            }
            if sync_backing {
                File::open(self.backing.join(&rel))?.sync_all()?;
            }
            let d = self.dir_mut(ino).expect("listed");
            d.live = settled.clone();
            d.durable = settled;
        }
        self.handles.clear();
        self.collect_garbage();
        self.plan = FaultPlan::default();
        self.syncs_since_plan = 0;
        self.writes_since_plan = 0;
        self.powered_off = false;
        self.stats.crashes += 1;
        let s = &mut self.stats.settled;
        s.unsynced_sectors += report.unsynced_sectors;
        s.sectors_old += report.sectors_old;
        s.sectors_new += report.sectors_new;
        s.sectors_zeroed += report.sectors_zeroed;
        s.sectors_random += report.sectors_random;
        s.entries_applied += report.entries_applied;
        s.entries_reverted += report.entries_reverted;
        s.sizes_applied += report.sizes_applied;
        s.sizes_reverted += report.sizes_reverted;
        Ok(report)
    }
}

/// The live content of one sector.
fn sector_live(file: &FileNode, sector: u64) -> io::Result<Box<[u8; SECTOR]>> {
    if let Some(content) = file.dirty.get(&sector).or_else(|| file.lost.get(&sector)) {
        return Ok(content.clone());
    }
    let mut content = Box::new([0u8; SECTOR]);
    let start = sector * SECTOR_U64;
    let durable_end = file.durable_size.min(file.live_size);
    if start < durable_end {
        let n = (durable_end - start).min(SECTOR_U64) as usize;
        file.data.read_exact_at(&mut content[..n], start)?;
    }
    Ok(content)
}

fn apply_write(file: &mut FileNode, offset: u64, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let end = offset + data.len() as u64;
    for sector in offset / SECTOR_U64..=(end - 1) / SECTOR_U64 {
        let s_start = sector * SECTOR_U64;
        let from = s_start.max(offset);
        let to = (s_start + SECTOR_U64).min(end);
        let mut content = if from == s_start && to == s_start + SECTOR_U64 {
            Box::new([0u8; SECTOR])
        } else {
            sector_live(file, sector)?
        };
        content[(from - s_start) as usize..(to - s_start) as usize]
            .copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
        file.lost.remove(&sector);
        file.dirty.insert(sector, content);
    }
    file.live_size = file.live_size.max(end);
    Ok(())
}

/// Moves a file's overlay into its backing file (a completed sync).
fn flush_file(file: &mut FileNode, sync_backing: bool) -> io::Result<()> {
    if file.live_size != file.durable_size {
        file.data.set_len(file.live_size)?;
    }
    for (&sector, content) in &file.dirty {
        let start = sector * SECTOR_U64;
        if start >= file.live_size {
            continue;
        }
        let n = (file.live_size - start).min(SECTOR_U64) as usize;
        file.data.write_all_at(&content[..n], start)?;
    }
    file.dirty.clear();
    file.durable_size = file.live_size;
    if sync_backing {
        file.data.sync_data()?;
    }
    Ok(())
}

/// Decides the post-crash content of one file.
fn settle_file(
    file: &mut FileNode,
    rng: &mut Rng,
    mode: CrashMode,
    report: &mut CrashReport,
    sync_backing: bool,
) -> io::Result<()> {
    // Sectors whose sync failed (kept in the page cache, never written) settle like
    // unsynced ones.
    let mut dirty = std::mem::take(&mut file.lost);
    dirty.append(&mut file.dirty);
    let new_len = if file.live_size == file.durable_size {
        file.live_size
    } else {
        if mode.keeps_change(rng) {
            report.sizes_applied += 1;
            file.live_size
        } else {
            report.sizes_reverted += 1;
            file.durable_size
        }
    };
    if new_len != file.durable_size {
        file.data.set_len(new_len)?;
    }
    let mut block: Option<(u64, bool)> = None;
    let mut scratch = [0u8; SECTOR];
    for (sector, content) in dirty {
        let start = sector * SECTOR_U64;
        if start >= new_len {
            continue;
        }
        let end = (start + SECTOR_U64).min(new_len);
        let n = (end - start) as usize;
        report.unsynced_sectors += 1;
        // 0 old, 1 new, 2 zeros, 3 random
        let choice = match mode {
            CrashMode::Random => rng.below(4),
            CrashMode::DropAll => 0,
            CrashMode::KeepAll => 1,
            CrashMode::Torn512 => u64::from(rng.coin()),
            CrashMode::Torn4096 => {
                let b = sector / 8;
                let keep_new = match block {
                    Some((current, keep_new)) if current == b => keep_new,
                    _ => {
                        let keep_new = rng.coin();
                        block = Some((b, keep_new));
                        keep_new
                    }
                };
                u64::from(keep_new)
            }
            CrashMode::Garbage => 3,
            CrashMode::Zeros => 2,
        };
        match choice {
            0 => report.sectors_old += 1, // already in the backing file (zeros past its old end)
            1 => {
                report.sectors_new += 1;
                let live_end = end.min(file.live_size);
                if start < live_end {
                    file.data
                        .write_all_at(&content[..(live_end - start) as usize], start)?;
                }
            }
            2 => {
                report.sectors_zeroed += 1;
                scratch[..n].fill(0);
                file.data.write_all_at(&scratch[..n], start)?;
            }
            _ => {
                report.sectors_random += 1;
                rng.fill(&mut scratch[..n]);
                file.data.write_all_at(&scratch[..n], start)?;
            }
        }
    }
    if sync_backing {
        file.data.sync_data()?;
    }
    file.durable_size = new_len;
    file.live_size = new_len;
    Ok(())
}

#[cfg(test)]
mod tests;
