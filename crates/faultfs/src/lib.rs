//! faultfs: a FUSE pass-through file system that behaves like a disk losing power.
//!
//! It keeps, per file, what the backing directory holds as *durable* and an in-memory
//! overlay of writes not yet covered by an `fsync`/`fdatasync` of that file, and per
//! directory the entry changes (creations, renames, unlinks) not yet covered by an
//! `fsync` of the directory. Reads see the overlay. A sync moves the overlay into the
//! backing store. On command ([`Control::crash`]) every unsynced 512-byte sector becomes
//! old, new, zeros or random bytes and every unsynced entry change is applied or not,
//! according to a [`CrashMode`] and a seed; then the overlay is forgotten and every handle
//! opened before the crash fails with EIO, as after a reboot. A [`FaultPlan`] makes the
//! n-th operation lose power, a sync fail with EIO, or a write fail with ENOSPC;
//! [`Control::op_count`] numbers the operations so crash points can be chosen.
//!
//! The file system runs in a thread of the calling process ([`FaultFs::mount`]); the
//! [`Control`] handle is the control channel. The `faultfs` binary mounts one over a
//! Unix socket instead, for other processes (see `src/bin/faultfs.rs`).
//!
//! Which points of the fault model (`docs/FORMAT.md`, "Assumptions about the media") it
//! injects, and how the kernel sits in between, is documented in `crates/faultfs/README.md`.

#[cfg(target_os = "linux")]
mod fs;
#[cfg(target_os = "linux")]
mod state;

#[cfg(target_os = "linux")]
pub use linux::*;

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex, MutexGuard};

    use fuser::{BackgroundSession, Config, MountOption};

    use crate::state::State;
    pub use crate::state::{
        CrashMode, CrashReport, FaultPlan, Options, Stats, Unsynced, SECTOR, STORE_NAME,
    };

    /// A mounted faultfs. Dropping it unmounts (lazily if something is still open).
    #[derive(Debug)]
    pub struct FaultFs {
        session: Option<BackgroundSession>,
        control: Control,
        mountpoint: PathBuf,
    }

    /// The control channel of a mounted faultfs; clones share it.
    #[derive(Debug, Clone)]
    pub struct Control {
        state: Arc<Mutex<State>>,
    }

    impl FaultFs {
        /// Mounts a faultfs over `backing` (created if missing; files already in it are
        /// durable) at `mountpoint` (an existing directory). Needs `/dev/fuse` and either
        /// root (mount(2)) or the `fusermount3` helper.
        ///
        /// # Errors
        /// The backing directory cannot be prepared, or the mount fails.
        pub fn mount(backing: &Path, mountpoint: &Path, options: Options) -> io::Result<FaultFs> {
            let state = Arc::new(Mutex::new(State::new(backing, options)?));
            let handler = crate::fs::FaultFsHandler {
                state: state.clone(),
                uid: nix::unistd::getuid().as_raw(),
                gid: nix::unistd::getgid().as_raw(),
            };
            let mut config = Config::default();
            config.mount_options = vec![
                MountOption::FSName("faultfs".into()),
                MountOption::Subtype("faultfs".into()),
                MountOption::NoAtime,
            ];
            let session = fuser::spawn_mount(handler, mountpoint, &config)?;
            Ok(FaultFs {
                session: Some(session),
                control: Control { state },
                mountpoint: mountpoint.to_path_buf(),
            })
        }

        pub fn control(&self) -> Control {
            self.control.clone()
        }

        pub fn mountpoint(&self) -> &Path {
            &self.mountpoint
        }

        /// Unmounts and waits for the file system thread. If the mount is busy (a file is
        /// still open) it is detached lazily instead and the thread left to end by itself.
        ///
        /// # Errors
        /// The unmount failed even lazily.
        pub fn unmount(mut self) -> io::Result<()> {
            self.unmount_inner()
        }

        fn unmount_inner(&mut self) -> io::Result<()> {
            let Some(session) = self.session.take() else {
                return Ok(());
            };
            match session.umount_and_join() {
                Ok(()) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH)
                        .map_err(io::Error::from)
                }
                Err(e) => Err(e),
            }
        }
    }

    impl Drop for FaultFs {
        fn drop(&mut self) {
            let _ = self.unmount_inner();
        }
    }

    impl Control {
        fn lock(&self) -> MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(|e| e.into_inner())
        }

        /// State-changing operations so far (writes, truncations, file and directory
        /// syncs, file creations, unlinks, renames): the numbers a [`FaultPlan`] uses.
        pub fn op_count(&self) -> u64 {
            self.lock().stats().ops
        }

        pub fn stats(&self) -> Stats {
            self.lock().stats()
        }

        /// What is unsynced right now (sectors, files, directory entries).
        pub fn unsynced(&self) -> Unsynced {
            self.lock().unsynced()
        }

        /// Installs a fault plan, replacing the previous one.
        pub fn set_plan(&self, plan: FaultPlan) {
            self.lock().set_plan(plan);
        }

        /// The `n`-th file or directory sync from now fails with EIO.
        pub fn fail_nth_sync(&self, n: u64) {
            self.set_plan(FaultPlan {
                fail_nth_sync: Some(n),
                ..FaultPlan::default()
            });
        }

        /// The `n`-th write from now fails with ENOSPC (after a prefix of whole sectors).
        pub fn no_space_at_nth_write(&self, n: u64) {
            self.set_plan(FaultPlan {
                no_space_nth_write: Some(n),
                ..FaultPlan::default()
            });
        }

        /// Power is lost at operation `op` (absolute, see [`Control::op_count`]).
        pub fn power_loss_at(&self, op: u64) {
            self.set_plan(FaultPlan {
                power_loss_at_op: Some(op),
                ..FaultPlan::default()
            });
        }

        /// Cuts power now: every operation fails with EIO until [`Control::crash`].
        pub fn power_off(&self) {
            self.lock().power_off();
        }

        pub fn is_powered_off(&self) -> bool {
            self.lock().is_powered_off()
        }

        /// Loses power (if not already off) and reboots: settles every unsynced sector,
        /// size and entry change per `mode` with choices drawn from `seed`, forgets the
        /// overlay, kills every open handle and clears the fault plan.
        ///
        /// # Errors
        /// I/O errors of the backing store.
        pub fn crash(&self, seed: u64, mode: CrashMode) -> io::Result<CrashReport> {
            let mut state = self.lock();
            state.power_off();
            state.crash(seed, mode)
        }
    }

    /// Whether a faultfs can be mounted here: mounts one in a scratch directory under
    /// `scratch`, writes, syncs and reads a file through it, crashes it and unmounts.
    ///
    /// # Errors
    /// Why not, in words (no `/dev/fuse`, mount refused, …).
    pub fn probe(scratch: &Path) -> Result<(), String> {
        use std::io::{Read, Write};
        if !Path::new("/dev/fuse").exists() {
            return Err("/dev/fuse does not exist (no FUSE in this kernel or container)".into());
        }
        if let Err(e) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
        {
            return Err(format!("cannot open /dev/fuse: {e}"));
        }
        static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let root = scratch.join(format!(
            "faultfs-probe-{}-{}",
            std::process::id(),
            PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        let (backing, mnt) = (root.join("backing"), root.join("mnt"));
        std::fs::create_dir_all(&mnt)
            .map_err(|e| format!("cannot create {}: {e}", mnt.display()))?;
        let result = (|| {
            let fs = FaultFs::mount(&backing, &mnt, Options::default()).map_err(|e| {
                format!(
                    "mounting a FUSE file system failed: {e} (needs root with CAP_SYS_ADMIN, or fusermount3)"
                )
            })?;
            let path = mnt.join("probe");
            let check = || -> io::Result<Vec<u8>> {
                let mut f = std::fs::File::create(&path)?;
                f.write_all(b"probe")?;
                f.sync_all()?;
                let mut back = Vec::new();
                std::fs::File::open(&path)?.read_to_end(&mut back)?;
                Ok(back)
            };
            let back = check().map_err(|e| format!("I/O through the FUSE mount failed: {e}"))?;
            if back != b"probe" {
                return Err(format!("the FUSE mount read back {back:?}"));
            }
            fs.control()
                .crash(1, CrashMode::DropAll)
                .map_err(|e| format!("crash failed: {e}"))?;
            fs.unmount().map_err(|e| format!("unmount failed: {e}"))
        })();
        let _ = std::fs::remove_dir_all(&root);
        result
    }
}
