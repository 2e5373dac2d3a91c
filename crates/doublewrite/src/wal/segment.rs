//! WAL segment files: `wal-<first LSN, 20 digits>.seg`.
//!
//! ```text
//! segment = header block | records …
//! header  = one block (block_size bytes), written once when the segment is created:
//!   offset size field
//!        0    4 magic             b"DWSG"
//!        4    2 format_version    1
//!        6    2 reserved          0
//!        8    4 block_size_bytes  the protection block: records start here
//!       12    4 reserved          0
//!       16    8 first_lsn         equals the LSN in the file name
//!       24    8 epoch             random, chosen at creation
//!       32    1 cipher            0 = plaintext records, 1 = AES-256-GCM records
//!       33    7 reserved          0
//!       40    4 crc32c            CRC-32C of bytes 0..40
//! ```
//!
//! Segments are created whole: written under a `.tmp` name to their full size (zeros, so
//! later writes never allocate and fdatasync has no metadata to commit), synced, renamed
//! into place, and the directory synced. A segment therefore exists complete or not at all.

use std::path::{Path, PathBuf};

use crate::align::AlignedBuf;
use crate::error::{Error, Result};
use crate::io::{self, OpenOptions, Vfs, VfsFile};
use crate::record::{read_u32, read_u64};

pub const SEGMENT_MAGIC: [u8; 4] = *b"DWSG";
pub const SEGMENT_FORMAT_VERSION: u16 = 1;
const HEADER_FIELDS_SIZE: usize = 44;
/// Largest protection block accepted (pages are at most 64 KiB on the platforms we know).
pub const MAX_BLOCK_BYTES: u32 = 64 * 1024;
/// Bytes of the encoded header: the "preamble" bound into encrypted records' AAD.
pub const PREAMBLE_BYTES: usize = HEADER_FIELDS_SIZE;
/// `cipher` value of a segment whose records are encrypted with AES-256-GCM.
pub const CIPHER_AES_256_GCM: u8 = 1;
const ZERO_CHUNK_BYTES: usize = 1 << 20;
/// Memory alignment of the zero chunk: enough for direct I/O on every device we know.
const ZERO_CHUNK_ALIGNMENT: usize = 64 * 1024;

/// Name of the segment whose first record has `first_lsn`.
pub fn segment_name(first_lsn: u64) -> String {
    format!("wal-{first_lsn:020}.seg")
}

/// The first LSN encoded in a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The decoded header of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub block_size_bytes: u32,
    pub first_lsn: u64,
    pub epoch: u64,
    /// 0: plaintext; [`CIPHER_AES_256_GCM`]: records are written encrypted.
    pub cipher: u8,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; HEADER_FIELDS_SIZE] {
        let mut out = [0u8; HEADER_FIELDS_SIZE];
        out[0..4].copy_from_slice(&SEGMENT_MAGIC);
        out[4..6].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
        out[8..12].copy_from_slice(&self.block_size_bytes.to_le_bytes());
        out[16..24].copy_from_slice(&self.first_lsn.to_le_bytes());
        out[24..32].copy_from_slice(&self.epoch.to_le_bytes());
        out[32] = self.cipher;
        let crc = crc32c::crc32c(&out[..40]);
        out[40..44].copy_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> std::result::Result<SegmentHeader, String> {
        if bytes.len() < HEADER_FIELDS_SIZE {
            return Err(format!(
                "{} bytes, shorter than a segment header",
                bytes.len()
            ));
        }
        if bytes[0..4] != SEGMENT_MAGIC {
            return Err(format!("magic {:02x?} is not \"DWSG\"", &bytes[0..4]));
        }
        let stored = read_u32(bytes, 40);
        let actual = crc32c::crc32c(&bytes[..40]);
        if stored != actual {
            return Err(format!(
                "segment header checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
            ));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != SEGMENT_FORMAT_VERSION {
            return Err(format!("segment format version {version} is not supported"));
        }
        let header = SegmentHeader {
            block_size_bytes: read_u32(bytes, 8),
            first_lsn: read_u64(bytes, 16),
            epoch: read_u64(bytes, 24),
            cipher: bytes[32],
        };
        if !header.block_size_bytes.is_power_of_two()
            || !(512..=MAX_BLOCK_BYTES).contains(&header.block_size_bytes)
        {
            return Err(format!("impossible block size {}", header.block_size_bytes));
        }
        if header.cipher > CIPHER_AES_256_GCM {
            return Err(format!(
                "unknown cipher {} (this build knows 0 and 1)",
                header.cipher
            ));
        }
        Ok(header)
    }

    /// Offset of the first record.
    pub fn data_start(&self) -> u64 {
        u64::from(self.block_size_bytes)
    }
}

/// A segment file of the WAL directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    pub first_lsn: u64,
    pub path: PathBuf,
}

/// The segments of `dir`, oldest first.
pub fn list_segments(vfs: &dyn Vfs, dir: &Path) -> Result<Vec<SegmentFile>> {
    let names = vfs
        .list_dir(dir)
        .map_err(|e| Error::io("list WAL directory", dir, e))?;
    let mut segments: Vec<SegmentFile> = names
        .iter()
        .filter_map(|name| {
            parse_segment_name(name).map(|first_lsn| SegmentFile {
                first_lsn,
                path: dir.join(name),
            })
        })
        .collect();
    segments.sort_by_key(|s| s.first_lsn);
    Ok(segments)
}

/// Removes leftovers of interrupted creations (`*.tmp`). Nothing in them was ever used.
pub fn remove_temporaries(vfs: &dyn Vfs, dir: &Path) -> Result<()> {
    let names = vfs
        .list_dir(dir)
        .map_err(|e| Error::io("list WAL directory", dir, e))?;
    for name in names.iter().filter(|n| n.ends_with(".tmp")) {
        let path = dir.join(name);
        vfs.remove_file(&path)
            .map_err(|e| Error::io("remove unfinished file", &path, e))?;
    }
    Ok(())
}

/// Creates a new WAL's first segment of `size_bytes` for records from `first_lsn` on,
/// durably (see the module documentation), and returns its path. Its zeros go through the
/// page cache: recovery reads the whole segment right after.
pub fn create_segment(
    vfs: &dyn Vfs,
    dir: &Path,
    first_lsn: u64,
    block_size_bytes: u32,
    size_bytes: u64,
    cipher: u8,
) -> Result<PathBuf> {
    let (path, _) = create_segment_file(
        vfs,
        dir,
        first_lsn,
        block_size_bytes,
        size_bytes,
        cipher,
        ZeroFill::Cached,
    )?;
    vfs.sync_dir(dir)
        .map_err(|e| Error::io("sync WAL directory", dir, e))?;
    Ok(path)
}

/// Like [`create_segment`] but leaves the directory sync to the caller: the file is
/// complete and in place (replacing an empty segment of the same name), its name not yet
/// durable. Returns its path and header.
pub fn create_segment_file(
    vfs: &dyn Vfs,
    dir: &Path,
    first_lsn: u64,
    block_size_bytes: u32,
    size_bytes: u64,
    cipher: u8,
    fill: ZeroFill,
) -> Result<(PathBuf, SegmentHeader)> {
    let path = dir.join(segment_name(first_lsn));
    let tmp = dir.join(format!("{}.tmp", segment_name(first_lsn)));
    if vfs.kind(&tmp).ok().flatten().is_some() {
        vfs.remove_file(&tmp)
            .map_err(|e| Error::io("remove unfinished segment", &tmp, e))?;
    }
    let header = SegmentHeader {
        block_size_bytes,
        first_lsn,
        epoch: random_u64(),
        cipher,
    };
    let result = (|| {
        create_zero_filled(vfs, &tmp, &header.encode(), size_bytes, fill, None)?;
        vfs.rename(&tmp, &path)
            .map_err(|e| Error::io("rename new segment", &path, e))
    })();
    if result.is_err() {
        // Best effort: a leftover .tmp is removed at the next open anyway.
        let _ = vfs.remove_file(&tmp);
    }
    result.map(|()| (path, header))
}

/// Name of the segment the writer prepares ahead of time (see [`prepare_spare`]), once it
/// is complete; while it is being written it is `SPARE_NAME.tmp`.
pub const SPARE_NAME: &str = "wal-spare.seg";

/// The completed spare in `dir` if it is exactly `size_bytes` long (a spare of another
/// size — the segment size changed — is removed).
pub fn existing_spare(vfs: &dyn Vfs, dir: &Path, size_bytes: u64) -> Option<PathBuf> {
    let path = dir.join(SPARE_NAME);
    let file = vfs.open(&path, OpenOptions::read_only()).ok()?;
    let len = file.len().ok()?;
    drop(file);
    if len == size_bytes {
        Some(path)
    } else {
        let _ = vfs.remove_file(&path);
        None
    }
}

/// Creates a zero-filled, synced file of `size_bytes`, ready to become the next segment
/// (see [`adopt_spare`]): written as `SPARE_NAME.tmp`, renamed to [`SPARE_NAME`] once
/// synced, so a spare found at open is always complete (an unfinished `.tmp` is removed).
/// Stops early, removing the file, once `cancel` is set.
pub fn prepare_spare(
    vfs: &dyn Vfs,
    dir: &Path,
    size_bytes: u64,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<PathBuf> {
    let done = dir.join(SPARE_NAME);
    let path = dir.join(format!("{SPARE_NAME}.tmp"));
    if vfs.kind(&path).ok().flatten().is_some() {
        vfs.remove_file(&path)
            .map_err(|e| Error::io("remove old spare segment", &path, e))?;
    }
    create_zero_filled(
        vfs,
        &path,
        &[],
        size_bytes,
        ZeroFill::PastCache,
        Some(cancel),
    )?;
    vfs.rename(&path, &done)
        .map_err(|e| Error::io("rename spare segment", &done, e))?;
    Ok(done)
}

/// Turns a prepared spare into the segment for `first_lsn`: writes and syncs its header,
/// then renames it into place. The caller syncs the directory.
pub fn adopt_spare(
    vfs: &dyn Vfs,
    dir: &Path,
    spare: &Path,
    first_lsn: u64,
    block_size_bytes: u32,
    cipher: u8,
) -> Result<(PathBuf, SegmentHeader)> {
    let path = dir.join(segment_name(first_lsn));
    let header = SegmentHeader {
        block_size_bytes,
        first_lsn,
        epoch: random_u64(),
        cipher,
    };
    let file = vfs
        .open(spare, OpenOptions::read_write())
        .map_err(|e| Error::io("open spare segment", spare, e))?;
    let mut block = vec![0u8; block_size_bytes as usize];
    block[..HEADER_FIELDS_SIZE].copy_from_slice(&header.encode());
    io::write_all_at(file.as_ref(), &block, 0)
        .map_err(|e| Error::io("write segment header", spare, e))?;
    file.sync_data()
        .map_err(|e| Error::io("sync segment header", spare, e))?;
    drop(file);
    vfs.rename(spare, &path)
        .map_err(|e| Error::io("rename spare segment", &path, e))?;
    Ok((path, header))
}

/// How a new segment's zeros are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroFill {
    /// Through the page cache: for a file read right after (a new WAL's first segment).
    Cached,
    /// Past the page cache (O_DIRECT) when the file is created with it and the file
    /// system reports a direct-I/O alignment (Linux `statx`) of at most 64 KiB that
    /// divides the size; else, or when it refuses the direct writes, through it. The
    /// zeros only have to reach the device; copying 64 MiB into fresh page-cache pages
    /// cost more CPU than the commits themselves at 4 KiB records. The writer extends its
    /// writes to the end of their last page (`Writer::write_wal`), so the page cache does
    /// not read the page a commit ends in back from the device.
    PastCache,
}

/// Creates `path` holding `head` followed by zeros up to `size_bytes`, and syncs it.
/// Stops early, removing the file, once `cancel` is set.
fn create_zero_filled(
    vfs: &dyn Vfs,
    path: &Path,
    head: &[u8],
    size_bytes: u64,
    fill: ZeroFill,
    cancel: Option<&std::sync::atomic::AtomicBool>,
) -> Result<()> {
    if fill == ZeroFill::PastCache {
        if let Some(file) = open_direct(vfs, path, size_bytes)? {
            let result = write_zeros(file.as_ref(), head, size_bytes, cancel);
            drop(file);
            match result {
                // A file system may take O_DIRECT at open and refuse the writes.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => vfs
                    .remove_file(path)
                    .map_err(|e| Error::io("remove unfinished segment", path, e))?,
                result => return zero_fill_outcome(vfs, path, result),
            }
        }
    }
    let file = vfs
        .open(path, OpenOptions::create_new())
        .map_err(|e| Error::io("create segment", path, e))?;
    let result = write_zeros(file.as_ref(), head, size_bytes, cancel);
    drop(file);
    zero_fill_outcome(vfs, path, result)
}

/// How a [`write_zeros`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filled {
    Complete,
    Cancelled,
}

/// Writes `head` and zeros up to `size_bytes` into `file`, then syncs it; stops early,
/// unsynced, once `cancel` is set.
fn write_zeros(
    file: &dyn VfsFile,
    head: &[u8],
    size_bytes: u64,
    cancel: Option<&std::sync::atomic::AtomicBool>,
) -> std::io::Result<Filled> {
    let chunk_len = (ZERO_CHUNK_BYTES as u64).min(size_bytes) as usize;
    let mut chunk = AlignedBuf::new(chunk_len, ZERO_CHUNK_ALIGNMENT);
    chunk.resize_zeroed(chunk_len);
    chunk.as_mut_slice()[..head.len()].copy_from_slice(head);
    let mut offset = 0u64;
    while offset < size_bytes {
        if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
            return Ok(Filled::Cancelled);
        }
        let n = chunk_len.min((size_bytes - offset) as usize);
        io::write_all_at(file, &chunk.as_slice()[..n], offset)?;
        if offset == 0 {
            chunk.as_mut_slice()[..head.len()].fill(0);
        }
        offset += n as u64;
    }
    file.sync_all()?;
    Ok(Filled::Complete)
}

/// The result of a zero-fill; a cancelled one removes its file.
fn zero_fill_outcome(vfs: &dyn Vfs, path: &Path, result: std::io::Result<Filled>) -> Result<()> {
    match result {
        Ok(Filled::Complete) => Ok(()),
        Ok(Filled::Cancelled) => {
            let _ = vfs.remove_file(path);
            Err(Error::Closed { what: "WAL" })
        }
        Err(e) => Err(Error::io("zero-fill and sync new segment", path, e)),
    }
}

/// `path` created for direct I/O, if the file system takes it for a file of this size;
/// `None` (and no file) otherwise.
fn open_direct(vfs: &dyn Vfs, path: &Path, size_bytes: u64) -> Result<Option<Box<dyn VfsFile>>> {
    match vfs.open(path, OpenOptions::create_new().with_direct(true)) {
        Ok(file) => {
            let fits = file.direct_io_alignment().is_some_and(|align| {
                align <= ZERO_CHUNK_ALIGNMENT && size_bytes.is_multiple_of(align as u64)
            });
            if fits {
                return Ok(Some(file));
            }
            drop(file);
            vfs.remove_file(path)
                .map_err(|e| Error::io("remove unfinished segment", path, e))?;
            Ok(None)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(Error::io("create segment", path, e))
        }
        // Refused, or failed in a way a buffered open will report again. Linux creates the
        // file before it refuses O_DIRECT; macOS before F_NOCACHE.
        Err(_) => {
            let _ = vfs.remove_file(path);
            Ok(None)
        }
    }
}

/// Reads and checks a segment's header.
pub fn read_header(file: &dyn VfsFile, segment: &SegmentFile) -> Result<SegmentHeader> {
    let mut bytes = [0u8; HEADER_FIELDS_SIZE];
    let got = io::read_up_to_at(file, &mut bytes, 0)
        .map_err(|e| Error::io("read segment header", &segment.path, e))?;
    let header = SegmentHeader::decode(&bytes[..got]).map_err(|detail| Error::WalCorrupt {
        path: segment.path.clone(),
        offset: 0,
        lsn: segment.first_lsn,
        detail,
    })?;
    let len = file
        .len()
        .map_err(|e| Error::io("measure segment", &segment.path, e))?;
    if len < header.data_start() {
        return Err(Error::WalCorrupt {
            path: segment.path.clone(),
            offset: len,
            lsn: segment.first_lsn,
            detail: format!(
                "the segment is {len} bytes, shorter than its {}-byte header block",
                header.block_size_bytes
            ),
        });
    }
    if header.first_lsn == 0 || header.first_lsn > crate::record::MAX_LSN {
        return Err(Error::WalCorrupt {
            path: segment.path.clone(),
            offset: 0,
            lsn: header.first_lsn,
            detail: "a segment's first LSN must be between 1 and u64::MAX - 1".into(),
        });
    }
    if header.first_lsn != segment.first_lsn {
        return Err(Error::WalCorrupt {
            path: segment.path.clone(),
            offset: 0,
            lsn: segment.first_lsn,
            detail: format!(
                "header says the first LSN is {} but the file name says {}",
                header.first_lsn, segment.first_lsn
            ),
        });
    }
    Ok(header)
}

/// A random number from the operating system (segment epochs; encryption nonces).
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_reject_lookalikes() {
        assert_eq!(segment_name(1), "wal-00000000000000000001.seg");
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        for bad in [
            "wal-1.seg",
            "wal-0000000000000000000x.seg",
            "wal-00000000000000000001.seg.tmp",
            "x.seg",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn header_round_trip_and_damage() {
        let header = SegmentHeader {
            block_size_bytes: 4096,
            first_lsn: 77,
            epoch: 0xDEAD_BEEF,
            cipher: CIPHER_AES_256_GCM,
        };
        let bytes = header.encode();
        assert_eq!(SegmentHeader::decode(&bytes).unwrap(), header);
        for i in 0..bytes.len() {
            let mut damaged = bytes;
            damaged[i] ^= 4;
            assert!(SegmentHeader::decode(&damaged).is_err(), "flip at {i}");
        }
    }
}
