//! The crash simulator: seeded workloads on the simulated disk, crashes at random I/O
//! steps (also during recovery), failed syncs and full disks, and a checker that verifies
//! the guarantee after every recovery:
//!
//! - every acknowledged record is returned intact;
//! - LSNs form a contiguous run from the first retained LSN;
//! - nothing is returned that was never appended (every record carries its submission id
//!   in `tenant_id` and a payload derived from it);
//! - records appended but not acknowledged appear only as a suffix;
//! - recovery succeeds (only in-model faults are injected, so `ERR_WAL_CORRUPT` is a
//!   violation here);
//! - no record is ever acknowledged unprotected, and none after a failed sync.
//!
//! Everything a case does follows from its seed; `--seed S --cases 1` replays it.
//!
//! Cases run on the simulated disk by default, or through the kernel on faultfs, a FUSE
//! file system with the same fault model (`--disk fuse`, see [`disk`]): the same
//! workload and the same checker, only the [`Disk`] differs.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;

use doublewrite::io::sim::SimRng;
use doublewrite::io::Vfs;
use doublewrite::wal::Weakness;
use doublewrite::{
    DwbMode, Error, KeyRing, RecordInput, RecordType, TailProtection, Wal, WalOptions,
};

pub mod disk;

pub use disk::{fuse_available, Disk, DiskKind, Fault};

const CLEAN_REOPEN: &str = "clean reopen";

/// How a case is set up; all of it derived from the seed.
#[derive(Debug, Clone)]
pub struct CaseConfig {
    pub seed: u64,
    pub options: WalOptions,
    pub direct_io_alignment: usize,
    pub steps: usize,
    /// Records are encrypted (AES-256-GCM), sometimes under a rotated key ring.
    pub encryption: Option<Encryption>,
    /// Failed syncs behave like Linux's: the unwritten pages stay cached but clean.
    pub linux_failed_writeback: bool,
}

/// The key ring a case uses: key 1 from the start; from `rotate_at_open` on, key 2 is
/// active (and key 1 kept for the older records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encryption {
    pub rotate_at_open: u64,
}

impl CaseConfig {
    pub fn from_seed(seed: u64, weakness: Option<Weakness>) -> CaseConfig {
        let mut rng = SimRng::new(seed ^ 0xC0FF_EE00);
        let direct_io = rng.chance(1, 4);
        let dwb_mode = match rng.below(20) {
            0..=11 => DwbMode::Buffered,
            12..=16 => DwbMode::Direct,
            _ => DwbMode::Off,
        };
        let tail_protection = if rng.chance(1, 4) {
            TailProtection::Pad
        } else {
            TailProtection::Mirror
        };
        let max_record = [512u32, 1024, 4096, 16384][rng.below(4) as usize];
        let mut options = WalOptions {
            dwb_mode,
            direct_io,
            segment_size_bytes: 16 * 1024 * (1 + rng.below(8)),
            dwb_capacity: Some(2 + rng.below(7) as u32),
            dwb_max_record_bytes: Some(max_record),
            tail_protection,
            max_commit_bytes: 64 * 1024 * (1 + rng.below(4)),
            ..WalOptions::default()
        };
        let mut steps = 8 + rng.below(24) as usize;
        if let Some(weakness) = weakness {
            options.weakness = Some(weakness);
            options.direct_io = false;
            options.dwb_mode = DwbMode::Buffered;
            options.tail_protection = TailProtection::Mirror;
            match weakness {
                Weakness::NoRepairWriteBack
                | Weakness::ReferenceMirroring
                | Weakness::UnguardedOverlap => {
                    options.dwb_capacity = Some(2);
                    options.dwb_max_record_bytes = Some(1024);
                    steps += 20;
                }
                Weakness::NoDwb | Weakness::LookupByDamagedHeader => {}
            }
        }
        let direct_io_alignment = if rng.chance(1, 4) { 512 } else { 4096 };
        // Drawn from their own stream, so the rest of every case stays as it was.
        let mut extra = SimRng::new(seed ^ 0x5EC2_E7ED);
        let encryption = (weakness.is_none() && extra.chance(1, 3)).then(|| Encryption {
            rotate_at_open: 1 + extra.below(4),
        });
        let linux_failed_writeback = extra.chance(1, 2);
        // Half the direct-I/O cases commit idle appends through the kernel's durable
        // writes (`kernel_completion`: the write lands unsynced and is synced on reaping).
        options.kernel_completion = options.direct_io && extra.chance(1, 2);
        // Half the buffered cases leave direct I/O to the file system, as the Node API does
        // by default (`prefer_direct_io`; the simulated disk takes O_DIRECT), `'mirror'`
        // ones with a buffered DWB also the DWB's (`prefer_direct_dwb`), and half of those
        // commit through the kernel where that chose O_DIRECT.
        if !options.direct_io && weakness.is_none() && extra.chance(1, 2) {
            options.prefer_direct_io = true;
            options.prefer_direct_dwb = options.tail_protection == TailProtection::Mirror;
            options.kernel_completion = extra.chance(1, 2);
        }
        CaseConfig {
            seed,
            options,
            direct_io_alignment,
            steps,
            encryption,
            linux_failed_writeback,
        }
    }

    /// The key ring for the `opens`-th open of this case (`None`: plaintext).
    fn key_ring(&self, opens: u64) -> Option<KeyRing> {
        let encryption = self.encryption?;
        let (keys, active) = if opens >= encryption.rotate_at_open {
            (vec![(1, [0xA1; 32]), (2, [0xB2; 32])], 2)
        } else {
            (vec![(1, [0xA1; 32])], 1)
        };
        Some(KeyRing::new(keys, active).expect("a valid key ring"))
    }

    /// The largest record a DWB slot holds in this case (for boundary sizes).
    fn slot_record_bytes(&self) -> usize {
        self.options.dwb_max_record_bytes.unwrap_or(65536) as usize
    }
}

/// What one case did and found.
#[derive(Debug, Clone, Default)]
pub struct CaseOutcome {
    pub seed: u64,
    pub crashes: u64,
    pub recoveries: u64,
    pub repairs: u64,
    pub acknowledged: u64,
    pub violations: Vec<String>,
    /// What the disk counted (FUSE disks only).
    pub disk_counters: BTreeMap<String, u64>,
}

/// Totals over many cases.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub cases: u64,
    pub crashes: u64,
    pub recoveries: u64,
    pub repairs: u64,
    pub acknowledged: u64,
    pub violations: u64,
    pub failing_seeds: Vec<(u64, String)>,
    /// Sums of the cases' disk counters (FUSE disks only).
    pub disk_counters: BTreeMap<String, u64>,
}

impl Summary {
    pub fn add(&mut self, outcome: &CaseOutcome) {
        self.cases += 1;
        self.crashes += outcome.crashes;
        self.recoveries += outcome.recoveries;
        self.repairs += outcome.repairs;
        self.acknowledged += outcome.acknowledged;
        self.violations += outcome.violations.len() as u64;
        if let Some(first) = outcome.violations.first() {
            self.failing_seeds.push((outcome.seed, first.clone()));
        }
        for (name, value) in &outcome.disk_counters {
            *self.disk_counters.entry(name.clone()).or_default() += value;
        }
    }

    pub fn line(&self) -> String {
        format!(
            "crash-sim: {} cases, {} crashes, {} repairs, {} violations",
            self.cases, self.crashes, self.repairs, self.violations
        )
    }
}

/// The payload of the record submitted with `id`: derived from the id, so a replayed
/// record proves both where it came from and that it is intact.
pub fn payload(id: u64, len: usize) -> Vec<u8> {
    let mut state = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ len as u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn check_value(id: u64, len: usize) -> u64 {
    id.rotate_left(17) ^ (len as u64).wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// The checker's knowledge: what was submitted and what was acknowledged.
#[derive(Debug, Default)]
struct Model {
    next_id: u64,
    sizes: HashMap<u64, usize>,
    /// LSN → submission id of every record known durable (acknowledged, or returned by
    /// a recovery).
    acked: BTreeMap<u64, u64>,
    /// Records below this LSN may have been truncated.
    floor: u64,
}

impl Model {
    fn new_record(&mut self, len: usize) -> (u64, RecordInput) {
        self.next_id += 1;
        let id = self.next_id;
        self.sizes.insert(id, len);
        let input = RecordInput {
            record_type: RecordType::PUT,
            payload: payload(id, len).into(),
            tenant_id: id,
            vshard_id: (id % 7) as u32,
            database_id: check_value(id, len),
        };
        (id, input)
    }

    fn acknowledge(&mut self, first_lsn: u64, ids: &[u64]) {
        for (i, id) in ids.iter().enumerate() {
            self.acked.insert(first_lsn + i as u64, *id);
        }
    }

    fn max_acked(&self) -> u64 {
        self.acked.keys().next_back().copied().unwrap_or(0)
    }
}

/// One machine running one case, on a simulated or a FUSE disk.
struct Machine {
    cfg: CaseConfig,
    disk: Box<dyn Disk>,
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    rng: SimRng,
    model: Model,
    outcome: CaseOutcome,
    /// `CRASH_SIM_TRACE=1`: print every step (for replaying one seed).
    tracing: bool,
}

impl Machine {
    fn new(cfg: CaseConfig, disk: Box<dyn Disk>) -> Machine {
        let rng = SimRng::new(cfg.seed);
        Machine {
            outcome: CaseOutcome {
                seed: cfg.seed,
                ..CaseOutcome::default()
            },
            vfs: disk.vfs(),
            dir: disk.wal_dir().to_path_buf(),
            disk,
            rng,
            model: Model::default(),
            tracing: std::env::var_os("CRASH_SIM_TRACE").is_some(),
            cfg,
        }
    }

    fn trace(&self, what: std::fmt::Arguments<'_>) {
        if self.tracing {
            eprintln!(
                "[seed {} m{}] {what}",
                self.cfg.seed,
                self.disk.mutation_count()
            );
        }
    }

    fn violation(&mut self, what: String) {
        self.trace(format_args!("VIOLATION {what}"));
        self.outcome.violations.push(what);
    }

    fn open(&mut self) -> Result<Wal, Error> {
        let keys = self.cfg.key_ring(self.outcome.recoveries);
        let wal = Wal::open_with_keys(self.vfs.clone(), &self.dir, self.cfg.options, keys);
        self.trace(format_args!(
            "open -> {:?}",
            wal.as_ref()
                .map(|w| w.recovery().clone())
                .map_err(|e| e.to_string())
        ));
        let wal = wal?;
        self.outcome.recoveries += 1;
        self.outcome.repairs += wal.recovery().repaired_from_dwb;
        Ok(wal)
    }

    /// Opens after a crash or a clean close and checks the guarantee.
    fn recover_and_check(&mut self, context: &str) -> Option<Wal> {
        match self.open() {
            Ok(wal) => {
                self.check(&wal, context);
                Some(wal)
            }
            Err(e) => {
                self.violation(format!(
                    "{context}: recovery failed within the fault model: [{}] {e}",
                    e.code()
                ));
                None
            }
        }
    }

    fn check(&mut self, wal: &Wal, context: &str) {
        let replay = match wal.replay(0, None) {
            Ok(replay) => replay,
            Err(e) => {
                self.violation(format!("{context}: replay refused: {e}"));
                return;
            }
        };
        let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
        let mut previous: Option<u64> = None;
        for record in replay {
            let record = match record {
                Ok(r) => r,
                Err(e) => {
                    self.violation(format!("{context}: replay failed: {e}"));
                    return;
                }
            };
            let lsn = record.lsn();
            if let Some(p) = previous {
                if lsn != p + 1 {
                    self.violation(format!("{context}: LSN gap: {p} then {lsn}"));
                }
            }
            previous = Some(lsn);
            let id = record.tenant_id();
            let Some(&len) = self.model.sizes.get(&id) else {
                self.violation(format!(
                    "{context}: LSN {lsn} holds a record never appended (id {id})"
                ));
                continue;
            };
            if record.payload() != payload(id, len).as_slice()
                || record.database_id() != check_value(id, len)
            {
                self.violation(format!("{context}: LSN {lsn} (id {id}) is not intact"));
                continue;
            }
            if let Some(&acked_id) = self.model.acked.get(&lsn) {
                if acked_id != id {
                    self.violation(format!(
                        "{context}: LSN {lsn} holds id {id} but id {acked_id} was acknowledged there"
                    ));
                }
            } else if lsn <= self.model.max_acked() {
                self.violation(format!(
                    "{context}: LSN {lsn} is not acknowledged but precedes acknowledged LSN {}",
                    self.model.max_acked()
                ));
            } else if context == CLEAN_REOPEN {
                // After a clean close every append has its answer: a record that was
                // refused must not appear.
                self.violation(format!(
                    "{context}: LSN {lsn} (id {id}) was refused but is in the log"
                ));
            }
            seen.insert(lsn, id);
        }
        let first_retained = seen.keys().next().copied().unwrap_or(wal.next_lsn());
        let missing: Vec<u64> = self
            .model
            .acked
            .keys()
            .copied()
            .filter(|lsn| *lsn >= self.model.floor.max(first_retained.min(self.model.floor)))
            .filter(|lsn| !seen.contains_key(lsn))
            .collect();
        if let Some(lsn) = missing.first() {
            self.violation(format!(
                "{context}: acknowledged LSN {lsn} is missing ({} missing in all; first retained {first_retained}, truncation floor {})",
                missing.len(),
                self.model.floor
            ));
        }
        let unprotected = wal.stats().unprotected_records;
        if unprotected > 0 && self.cfg.options.weakness.is_none() {
            self.violation(format!(
                "{context}: {unprotected} records acknowledged unprotected"
            ));
        }
        // What recovery returned is durable now: later crashes must keep it.
        self.model.acked = seen;
    }

    fn pick_len(&mut self) -> usize {
        let slot = self.cfg.slot_record_bytes();
        let header = doublewrite::record::HEADER_SIZE;
        match self.rng.below(100) {
            0..=39 => self.rng.below(200) as usize,
            40..=54 => self.rng.below(2000) as usize,
            55..=74 => {
                let block = 4096usize;
                let edges = [
                    0,
                    1,
                    slot - header - 1,
                    slot - header,
                    slot - header + 1,
                    block - header - 1,
                    block - header,
                    block - header + 1,
                    2 * block - header,
                    block - 24 - header,
                ];
                edges[self.rng.below(edges.len() as u64) as usize]
            }
            75..=89 => self.rng.below(2 * slot as u64) as usize,
            90..=97 => self.rng.below(20_000) as usize,
            _ => self.rng.below(256 * 1024) as usize,
        }
    }

    fn pick_batch(&mut self) -> Vec<(u64, RecordInput)> {
        let (count, small) = match self.rng.below(100) {
            0..=49 => (1, false),
            50..=79 => (2 + self.rng.below(9) as usize, false),
            80..=94 => (10 + self.rng.below(190) as usize, true),
            95..=98 => (200 + self.rng.below(1800) as usize, true),
            _ => (2000 + self.rng.below(8000) as usize, true),
        };
        (0..count)
            .map(|_| {
                let len = if small {
                    self.rng.below(120) as usize
                } else {
                    self.pick_len()
                };
                self.model.new_record(len)
            })
            .collect()
    }

    /// Appends one batch; returns whether it was acknowledged.
    fn append(&mut self, wal: &Wal, expect_ok: bool, context: &str) -> Result<(), Error> {
        let batch = self.pick_batch();
        let ids: Vec<u64> = batch.iter().map(|b| b.0).collect();
        let records = batch.into_iter().map(|b| b.1).collect();
        let result = if wal.has_durable_writes() {
            // Started on this thread where the writer is idle, reaped as a binding would.
            let (send, receive) = mpsc::channel();
            wal.submit_durable(vec![(
                records,
                Box::new(move |result| {
                    let _ = send.send(result);
                }),
            )]);
            wal.reap_durable(true);
            receive.recv().unwrap_or(Err(Error::Closed { what: "WAL" }))
        } else {
            wal.append_batch(records)
        };
        self.trace(format_args!(
            "append {} records (ids {:?}..) -> {:?}",
            ids.len(),
            ids.first(),
            result.as_ref().map_err(|e| e.code())
        ));
        match result {
            Ok(first) => {
                self.model.acknowledge(first, &ids);
                self.outcome.acknowledged += ids.len() as u64;
                Ok(())
            }
            Err(e) => {
                if expect_ok {
                    self.violation(format!(
                        "{context}: append failed without a fault: [{}] {e}",
                        e.code()
                    ));
                }
                Err(e)
            }
        }
    }

    /// Several committers at once: queued while the commit thread is held, then merged.
    fn concurrent(&mut self, wal: &Wal, expect_ok: bool, context: &str) {
        let committers = 2 + self.rng.below(7) as usize;
        let batches: Vec<Vec<(u64, RecordInput)>> = (0..committers)
            .map(|_| {
                let n = 1 + self.rng.below(5) as usize;
                (0..n)
                    .map(|_| {
                        let len = self.pick_len();
                        self.model.new_record(len)
                    })
                    .collect()
            })
            .collect();
        let (send, receive) = mpsc::channel();
        wal.hold_commits(true);
        for (index, batch) in batches.iter().enumerate() {
            let send = send.clone();
            let records = batch.iter().map(|b| b.1.clone()).collect();
            wal.submit_append(
                records,
                Box::new(move |result| {
                    let _ = send.send((index, result));
                }),
            );
        }
        wal.hold_commits(false);
        drop(send);
        let mut results: Vec<(usize, Result<u64, Error>)> = receive.iter().collect();
        results.sort_by_key(|r| r.0);
        for (index, result) in results {
            let ids: Vec<u64> = batches[index].iter().map(|b| b.0).collect();
            self.trace(format_args!(
                "concurrent committer {index}: {} records -> {:?}",
                ids.len(),
                result.as_ref().map_err(|e| e.code())
            ));
            match result {
                Ok(first) => {
                    self.model.acknowledge(first, &ids);
                    self.outcome.acknowledged += ids.len() as u64;
                }
                Err(e) if expect_ok => self.violation(format!(
                    "{context}: concurrent append failed without a fault: {e}"
                )),
                Err(_) => {}
            }
        }
    }

    fn truncate(&mut self, wal: &Wal) {
        let first = wal.segments().first().map_or(1, |s| s.first_lsn);
        let last = wal.next_lsn();
        let cut = first + self.rng.below(last - first + 1);
        self.trace(format_args!("truncate_before({cut})"));
        match wal.truncate_before(cut) {
            Ok(_) => self.model.floor = self.model.floor.max(cut),
            Err(e) => self.violation(format!(
                "truncate_before({cut}) failed without a fault: {e}"
            )),
        }
    }

    /// Runs workload steps against `wal` until power is lost (or `steps` ran).
    fn run_until_power_loss(&mut self, wal: &Wal, steps: usize) {
        for _ in 0..steps {
            if self.disk.is_powered_off() {
                return;
            }
            match self.rng.below(10) {
                0..=5 => {
                    let _ = self.append(wal, false, "during crash window");
                }
                6..=8 => self.concurrent(wal, false, "during crash window"),
                _ => {
                    let first = wal.segments().first().map_or(1, |s| s.first_lsn);
                    let cut = first + self.rng.below(wal.next_lsn() - first + 1);
                    // Asked for, the removal may be durable even if the call failed.
                    self.model.floor = self.model.floor.max(cut);
                    self.trace(format_args!("truncate_before({cut}) in crash window"));
                    let _ = wal.truncate_before(cut);
                }
            }
        }
    }

    /// Loses power somewhere in the next mutations, recovers (maybe crashing again during
    /// recovery), and checks.
    fn crash_cycle(&mut self, wal: Wal) -> Option<Wal> {
        let window = 1 + self.rng.below(60);
        let at = self.disk.mutation_count() + window;
        self.trace(format_args!("power will fail at mutation {at}"));
        self.disk.set_fault(Fault::PowerLossAt(at));
        let steps = 1 + self.rng.below(6) as usize;
        self.run_until_power_loss(&wal, steps);
        self.disk.power_off();
        drop(wal);
        self.crash();
        // Sometimes the power fails again while recovery is repairing.
        while self.rng.chance(1, 3) {
            let at = self.disk.mutation_count() + 1 + self.rng.below(12);
            self.disk.set_fault(Fault::PowerLossAt(at));
            match self.open() {
                Ok(wal) => {
                    self.disk.set_fault(Fault::None);
                    if self.disk.is_powered_off() {
                        drop(wal);
                        self.crash();
                        continue;
                    }
                    self.check(&wal, "recovery that outran the planned crash");
                    drop(wal);
                    break;
                }
                Err(_) if self.disk.is_powered_off() => self.crash(),
                Err(e) => {
                    self.violation(format!(
                        "recovery failed (crash during recovery armed): [{}] {e}",
                        e.code()
                    ));
                    return None;
                }
            }
        }
        self.disk.set_fault(Fault::None);
        self.recover_and_check("after crash")
    }

    fn crash(&mut self) {
        let torn = self.disk.crash(&mut self.rng);
        self.trace(format_args!("CRASH ({torn} unsynced sectors settled)"));
        self.outcome.crashes += 1;
    }

    /// A sync fails: the WAL must poison itself and acknowledge nothing more.
    fn sync_failure_cycle(&mut self, wal: Wal) -> Option<Wal> {
        let at = self.disk.mutation_count() + 1 + self.rng.below(30);
        self.trace(format_args!("a sync will fail at mutation {at}"));
        self.disk.set_fault(Fault::SyncFailsAt(at));
        let mut poisoned = false;
        for _ in 0..8 {
            match self.append(&wal, false, "sync failure") {
                Ok(()) if poisoned => {
                    self.violation(
                        "an append was acknowledged after a failed sync poisoned the WAL".into(),
                    );
                }
                Ok(()) => {}
                Err(Error::WalPoisoned { .. }) => {
                    poisoned = true;
                    if wal.sync().is_ok() {
                        self.violation("sync() succeeded on a poisoned WAL".into());
                    }
                }
                // A failed sync of a new segment or of the directory refuses the commit
                // without touching acknowledged data; the WAL stays usable.
                Err(Error::DwbUnavailable { .. }) | Err(Error::Io { .. }) => {}
                Err(e) => self.violation(format!(
                    "unexpected error after a failed sync: [{}] {e}",
                    e.code()
                )),
            }
        }
        self.disk.set_fault(Fault::None);
        drop(wal);
        self.recover_and_check("reopen after failed sync")
    }

    /// The disk fills up: the failed commit takes no LSN and the WAL keeps working.
    fn no_space_cycle(&mut self, wal: &Wal) {
        let at = self.disk.mutation_count() + 1 + self.rng.below(20);
        self.trace(format_args!("the disk will be full at mutation {at}"));
        self.disk.set_fault(Fault::NoSpaceAt(at));
        for _ in 0..4 {
            let before = wal.next_lsn();
            match self.append(wal, false, "no space") {
                Ok(()) => {}
                Err(Error::NoSpace { .. }) | Err(Error::DwbUnavailable { .. }) => {
                    if wal.next_lsn() != before {
                        self.violation(format!(
                            "a commit refused for lack of space consumed LSNs ({before} → {})",
                            wal.next_lsn()
                        ));
                    }
                }
                Err(e) => self.violation(format!(
                    "unexpected error when the disk filled: [{}] {e}",
                    e.code()
                )),
            }
        }
        self.disk.set_fault(Fault::None);
        let _ = self.append(wal, true, "after the disk had space again");
    }

    fn run(mut self) -> CaseOutcome {
        self.trace(format_args!("case: {:?}", self.cfg));
        self.run_workload();
        let mut outcome = std::mem::take(&mut self.outcome);
        outcome.disk_counters = self.disk.counters();
        outcome
    }

    fn run_workload(&mut self) {
        let mut wal = match self.open() {
            Ok(wal) => wal,
            Err(e) => {
                self.violation(format!("the first open failed: {e}"));
                return;
            }
        };
        for _ in 0..self.cfg.steps {
            let next = match self.rng.below(100) {
                0..=34 => {
                    let _ = self.append(&wal, true, "append");
                    Some(wal)
                }
                35..=49 => {
                    self.concurrent(&wal, true, "concurrent appends");
                    Some(wal)
                }
                50..=53 => {
                    if wal.sync().is_err() {
                        self.violation("sync() failed without a fault".into());
                    }
                    Some(wal)
                }
                54..=59 => {
                    self.truncate(&wal);
                    Some(wal)
                }
                60..=65 => {
                    if let Err(e) = wal.close() {
                        self.violation(format!("close failed: {e}"));
                    }
                    drop(wal);
                    self.recover_and_check(CLEAN_REOPEN)
                }
                66..=87 => self.crash_cycle(wal),
                88..=93 => self.sync_failure_cycle(wal),
                _ => {
                    self.no_space_cycle(&wal);
                    Some(wal)
                }
            };
            match next {
                Some(next) => wal = next,
                None => return,
            }
        }
        // Every case ends with a power loss at an idle moment and a final check.
        self.disk.power_off();
        drop(wal);
        self.crash();
        self.recover_and_check("final crash");
    }
}

/// Runs the case with `seed` on the simulated disk.
pub fn run_case(seed: u64, weakness: Option<Weakness>) -> CaseOutcome {
    run_case_on(DiskKind::Sim, seed, weakness)
}

/// Runs the case with `seed` on a disk of `kind`. A FUSE disk that cannot be mounted
/// is reported as a violation of the case (check [`fuse_available`] first).
pub fn run_case_on(kind: DiskKind, seed: u64, weakness: Option<Weakness>) -> CaseOutcome {
    let cfg = CaseConfig::from_seed(seed, weakness);
    match disk::open_disk(kind, &cfg) {
        Ok(disk) => Machine::new(cfg, disk).run(),
        Err(e) => CaseOutcome {
            seed,
            violations: vec![format!("no {} disk: {e}", kind.name())],
            ..CaseOutcome::default()
        },
    }
}

/// Runs `cases` cases with seeds `first_seed..` on `threads` threads, on the simulated
/// disk.
pub fn run_many(
    first_seed: u64,
    cases: u64,
    threads: usize,
    weakness: Option<Weakness>,
) -> Summary {
    run_many_on(DiskKind::Sim, first_seed, cases, threads, weakness)
}

/// Runs `cases` cases with seeds `first_seed..` on `threads` threads, each on its own
/// disk of `kind`.
pub fn run_many_on(
    kind: DiskKind,
    first_seed: u64,
    cases: u64,
    threads: usize,
    weakness: Option<Weakness>,
) -> Summary {
    let next = std::sync::atomic::AtomicU64::new(0);
    let summary = std::sync::Mutex::new(Summary::default());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= cases {
                    break;
                }
                let outcome = run_case_on(kind, first_seed + i, weakness);
                summary.lock().unwrap().add(&outcome);
            });
        }
    });
    let mut summary = summary.into_inner().unwrap();
    summary.failing_seeds.sort();
    summary
}

/// Names of the weakened configurations, for the command line.
pub fn parse_weakness(name: &str) -> Option<Weakness> {
    match name {
        "no-dwb" => Some(Weakness::NoDwb),
        "lookup-by-damaged-header" => Some(Weakness::LookupByDamagedHeader),
        "no-repair-write-back" => Some(Weakness::NoRepairWriteBack),
        "batch-exceeds-ring" => Some(Weakness::ReferenceMirroring),
        "unguarded-overlap" => Some(Weakness::UnguardedOverlap),
        _ => None,
    }
}

pub const WEAKNESSES: [&str; 5] = [
    "no-dwb",
    "lookup-by-damaged-header",
    "no-repair-write-back",
    "batch-exceeds-ring",
    "unguarded-overlap",
];
