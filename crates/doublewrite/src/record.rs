//! The WAL record: a 56-byte little-endian header followed by the payload.
//!
//! ```text
//! offset size field          notes
//!      0    4 magic          b"DWAL"
//!      4    2 format_version 1
//!      6    2 key_id         0 unless the encrypted bit (14) of record_type is set
//!      8    4 record_type    bit 15 = required, bit 14 = encrypted, bit 31 = internal framing
//!     12    8 lsn            0 only for internal framing (padding)
//!     20    8 commit_lsn     LSN of the first record of the commit that wrote this record
//!     28    8 tenant_id
//!     36    4 vshard_id
//!     40    8 database_id
//!     48    4 payload_len    <= MAX_PAYLOAD_BYTES (64 MiB)
//!     52    4 crc32c         CRC-32C of bytes 0..52 followed by the payload
//! ```
//!
//! The same table, with the reasoning behind each field, is in `docs/FORMAT.md`.

use std::fmt;

/// Size of the encoded record header.
pub const HEADER_SIZE: usize = 56;
/// `b"DWAL"`: the first four bytes of every record.
pub const RECORD_MAGIC: [u8; 4] = *b"DWAL";
/// The record format this build writes and the only one it reads.
pub const RECORD_FORMAT_VERSION: u16 = 1;
/// Largest payload a record may carry.
pub const MAX_PAYLOAD_BYTES: u32 = 64 * 1024 * 1024;
/// Largest LSN a record may have (the one above it would not fit in "next LSN").
pub const MAX_LSN: u64 = u64::MAX - 1;
/// Bit 15 of `record_type`: a reader that does not know the type must fail.
pub const REQUIRED_FLAG: u32 = 0x8000;
/// Bit 14 of `record_type`: the payload is ciphertext.
pub const ENCRYPTED_FLAG: u32 = 0x4000;
/// Bit 31 of `record_type`: framing written by the WAL itself, never returned to users.
pub const INTERNAL_FLAG: u32 = 0x8000_0000;
/// Record type of the framed padding the WAL writes to end a commit on a block boundary.
pub const PADDING_RECORD_TYPE: u32 = INTERNAL_FLAG | 1;

const CRC_OFFSET: usize = 52;

const _: () = assert!(HEADER_SIZE == CRC_OFFSET + 4);
const _: () = assert!(HEADER_SIZE <= 512, "a record header must fit in one sector");

/// The record types this package defines. Users may use any other type that has neither
/// the encrypted nor the internal bit set; bit 15 marks a type a reader must understand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordType;

impl RecordType {
    /// Does nothing; optional.
    pub const NOOP: u32 = 0x0000;
    /// Insert or replace a value.
    pub const PUT: u32 = REQUIRED_FLAG | 0x0001;
    /// Remove a value.
    pub const DELETE: u32 = REQUIRED_FLAG | 0x0002;
    /// Several operations applied atomically.
    pub const TRANSACTION: u32 = REQUIRED_FLAG | 0x0003;
    /// Everything before this LSN is applied elsewhere.
    pub const CHECKPOINT: u32 = REQUIRED_FLAG | 0x0004;
    /// Metadata a reader may ignore.
    pub const METADATA: u32 = 0x0005;

    /// The types defined above, for a reader that knows no others.
    pub const BUILT_IN: [u32; 6] = [
        Self::NOOP,
        Self::PUT,
        Self::DELETE,
        Self::TRANSACTION,
        Self::CHECKPOINT,
        Self::METADATA,
    ];

    /// Whether a reader that does not know `record_type` must refuse to go on.
    pub fn is_required(record_type: u32) -> bool {
        record_type & REQUIRED_FLAG != 0
    }
}

/// Why bytes are not a valid record, or why a record cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    /// The payload is larger than [`MAX_PAYLOAD_BYTES`].
    PayloadTooLarge { size_bytes: u64, max_bytes: u64 },
    /// The record type uses a bit reserved for the package (encrypted or internal).
    ReservedRecordType { record_type: u32 },
    /// Fewer bytes than a header, or than the header says the record has.
    Truncated {
        needed_bytes: u64,
        available_bytes: u64,
    },
    /// The first four bytes are not [`RECORD_MAGIC`].
    BadMagic { found: [u8; 4] },
    /// A format version this build does not read.
    UnsupportedVersion { found: u16, supported: u16 },
    /// The header declares a payload longer than [`MAX_PAYLOAD_BYTES`].
    LengthOutOfBounds { payload_len: u32, max_bytes: u32 },
    /// A header field holds a value the format forbids.
    InvalidHeader { detail: &'static str },
    /// The CRC stored in the header does not match the header and payload.
    ChecksumMismatch {
        lsn: u64,
        expected: u32,
        actual: u32,
    },
    /// Bytes follow the record where exactly one record was expected.
    TrailingBytes { extra_bytes: u64 },
}

impl RecordError {
    /// Stable code, also used as the `code` of the JS error.
    pub fn code(&self) -> &'static str {
        match self {
            RecordError::PayloadTooLarge { .. } => "ERR_RECORD_TOO_LARGE",
            RecordError::ReservedRecordType { .. } => "ERR_RECORD_TYPE",
            RecordError::ChecksumMismatch { .. } => "ERR_RECORD_CHECKSUM",
            RecordError::Truncated { .. }
            | RecordError::BadMagic { .. }
            | RecordError::UnsupportedVersion { .. }
            | RecordError::LengthOutOfBounds { .. }
            | RecordError::InvalidHeader { .. }
            | RecordError::TrailingBytes { .. } => "ERR_RECORD_CORRUPT",
        }
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::PayloadTooLarge { size_bytes, max_bytes } => write!(
                f,
                "payload of {size_bytes} bytes is larger than the {max_bytes}-byte limit of a record; split it"
            ),
            RecordError::ReservedRecordType { record_type } => write!(
                f,
                "record type {record_type:#x} sets a reserved bit (bit 14 is set only by encryption, bit 31 marks WAL framing)"
            ),
            RecordError::Truncated { needed_bytes, available_bytes } => write!(
                f,
                "record is cut short: {needed_bytes} bytes needed, {available_bytes} available"
            ),
            RecordError::BadMagic { found } => {
                write!(f, "not a record: magic is {found:02x?}, expected {RECORD_MAGIC:02x?} (\"DWAL\")")
            }
            RecordError::UnsupportedVersion { found, supported } => write!(
                f,
                "record format version {found} is not supported (this build reads version {supported})"
            ),
            RecordError::LengthOutOfBounds { payload_len, max_bytes } => write!(
                f,
                "record header declares a {payload_len}-byte payload, more than the {max_bytes}-byte limit"
            ),
            RecordError::InvalidHeader { detail } => write!(f, "invalid record header: {detail}"),
            RecordError::ChecksumMismatch { lsn, expected, actual } => write!(
                f,
                "record checksum mismatch (header says LSN {lsn}): stored {expected:#010x}, computed {actual:#010x}"
            ),
            RecordError::TrailingBytes { extra_bytes } => {
                write!(f, "{extra_bytes} bytes follow the record; expected exactly one record")
            }
        }
    }
}

impl std::error::Error for RecordError {}

/// The fields of a record header, decoded. Parsing one checks magic, version, the
/// reserved bits and the length bound, but not the CRC (that needs the payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub record_type: u32,
    pub key_id: u16,
    pub lsn: u64,
    pub commit_lsn: u64,
    pub tenant_id: u64,
    pub vshard_id: u32,
    pub database_id: u64,
    pub payload_len: u32,
    pub crc: u32,
}

impl RecordHeader {
    /// Size of the whole record this header describes.
    pub fn record_len(&self) -> usize {
        HEADER_SIZE + self.payload_len as usize
    }

    /// Whether this is WAL framing (padding) rather than a user record.
    pub fn is_internal(&self) -> bool {
        self.record_type & INTERNAL_FLAG != 0
    }

    /// Encodes the header with the given CRC. Fields are written in on-disk order.
    fn encode_without_crc(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        out[0..4].copy_from_slice(&RECORD_MAGIC);
        out[4..6].copy_from_slice(&RECORD_FORMAT_VERSION.to_le_bytes());
        out[6..8].copy_from_slice(&self.key_id.to_le_bytes());
        out[8..12].copy_from_slice(&self.record_type.to_le_bytes());
        out[12..20].copy_from_slice(&self.lsn.to_le_bytes());
        out[20..28].copy_from_slice(&self.commit_lsn.to_le_bytes());
        out[28..36].copy_from_slice(&self.tenant_id.to_le_bytes());
        out[36..40].copy_from_slice(&self.vshard_id.to_le_bytes());
        out[40..48].copy_from_slice(&self.database_id.to_le_bytes());
        out[48..52].copy_from_slice(&self.payload_len.to_le_bytes());
        out
    }

    /// Parses and validates a header (not its CRC). Never allocates.
    pub fn parse(bytes: &[u8]) -> Result<RecordHeader, RecordError> {
        let Some(bytes) = bytes.get(..HEADER_SIZE) else {
            return Err(RecordError::Truncated {
                needed_bytes: HEADER_SIZE as u64,
                available_bytes: bytes.len() as u64,
            });
        };
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != RECORD_MAGIC {
            return Err(RecordError::BadMagic { found: magic });
        }
        let version = read_u16(bytes, 4);
        if version != RECORD_FORMAT_VERSION {
            return Err(RecordError::UnsupportedVersion {
                found: version,
                supported: RECORD_FORMAT_VERSION,
            });
        }
        let header = RecordHeader {
            key_id: read_u16(bytes, 6),
            record_type: read_u32(bytes, 8),
            lsn: read_u64(bytes, 12),
            commit_lsn: read_u64(bytes, 20),
            tenant_id: read_u64(bytes, 28),
            vshard_id: read_u32(bytes, 36),
            database_id: read_u64(bytes, 40),
            payload_len: read_u32(bytes, 48),
            crc: read_u32(bytes, CRC_OFFSET),
        };
        if header.payload_len > MAX_PAYLOAD_BYTES {
            return Err(RecordError::LengthOutOfBounds {
                payload_len: header.payload_len,
                max_bytes: MAX_PAYLOAD_BYTES,
            });
        }
        if header.record_type & ENCRYPTED_FLAG == 0 && header.key_id != 0 {
            return Err(RecordError::InvalidHeader {
                detail: "key id is set on a record that is not encrypted",
            });
        }
        if header.is_internal() {
            if header.record_type != PADDING_RECORD_TYPE {
                return Err(RecordError::InvalidHeader {
                    detail: "unknown internal record type",
                });
            }
            if header.lsn != 0 {
                return Err(RecordError::InvalidHeader {
                    detail: "padding record with a non-zero LSN",
                });
            }
        } else if header.lsn == 0 {
            return Err(RecordError::InvalidHeader {
                detail: "LSN 0 is reserved for padding",
            });
        } else if header.lsn > MAX_LSN {
            return Err(RecordError::InvalidHeader {
                detail: "LSN beyond the largest one a record may have",
            });
        } else if header.commit_lsn == 0 || header.commit_lsn > header.lsn {
            return Err(RecordError::InvalidHeader {
                detail: "commit LSN is 0 or above the record's own LSN",
            });
        }
        Ok(header)
    }

    /// The CRC of this header's fields followed by `payload`.
    pub fn compute_crc(&self, payload: &[u8]) -> u32 {
        let head = self.encode_without_crc();
        crc32c::crc32c_append(crc32c::crc32c(&head[..CRC_OFFSET]), payload)
    }

    /// Encodes the header, CRC included.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut out = self.encode_without_crc();
        out[CRC_OFFSET..].copy_from_slice(&self.crc.to_le_bytes());
        out
    }
}

/// A record as the WAL stores it and the double-write buffer copies it.
#[derive(Clone, PartialEq, Eq)]
pub struct WalRecord {
    header: RecordHeader,
    payload: Vec<u8>,
}

impl fmt::Debug for WalRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalRecord")
            .field("header", &self.header)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl WalRecord {
    /// Builds a record written on its own (its commit LSN is its own LSN). With `key`, the
    /// payload is sealed with AES-256-GCM for the segment whose header is `preamble` (see
    /// [`crate::crypto`]): the encrypted bit and the key id are set, and the CRC covers
    /// the ciphertext.
    ///
    /// # Errors
    /// [`RecordError::PayloadTooLarge`] above 64 MiB; [`RecordError::ReservedRecordType`]
    /// when the encrypted or internal bit is set; [`RecordError::InvalidHeader`] for LSN 0,
    /// or a key without the preamble.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        record_type: u32,
        lsn: u64,
        tenant_id: u64,
        vshard_id: u32,
        database_id: u64,
        payload: Vec<u8>,
        key: Option<&crate::crypto::EncryptionKey>,
        preamble: Option<&crate::wal::segment::SegmentHeader>,
    ) -> Result<WalRecord, RecordError> {
        let Some(key) = key else {
            return WalRecord::with_commit_lsn(
                record_type,
                lsn,
                lsn,
                tenant_id,
                vshard_id,
                database_id,
                payload,
            );
        };
        let Some(preamble) = preamble else {
            return Err(RecordError::InvalidHeader {
                detail: "an encrypted record needs the header (preamble) of the segment it is written into",
            });
        };
        check_user_record(record_type, lsn, payload.len())?;
        let mut header = RecordHeader {
            record_type: record_type | ENCRYPTED_FLAG,
            key_id: key.id(),
            lsn,
            commit_lsn: lsn,
            tenant_id,
            vshard_id,
            database_id,
            payload_len: 0,
            crc: 0,
        };
        let sealed = key.segment_cipher(preamble).seal(&header, &payload);
        header.payload_len = sealed.len() as u32;
        header.crc = header.compute_crc(&sealed);
        Ok(WalRecord {
            header,
            payload: sealed,
        })
    }

    /// The plaintext of an encrypted record (the payload itself when it is not).
    ///
    /// # Errors
    /// `ERR_WAL_KEY_MISSING` when `key` has another id; `ERR_WAL_DECRYPT` when the tag
    /// does not verify.
    pub fn decrypt_payload(
        &self,
        key: &crate::crypto::EncryptionKey,
        preamble: &crate::wal::segment::SegmentHeader,
    ) -> crate::Result<Vec<u8>> {
        if self.header.record_type & ENCRYPTED_FLAG == 0 {
            return Ok(self.payload.clone());
        }
        if key.id() != self.header.key_id {
            return Err(crate::Error::KeyMissing {
                key_id: self.header.key_id,
                lsn: self.header.lsn,
            });
        }
        key.segment_cipher(preamble)
            .open(&self.header, &self.payload)
    }

    /// Builds a record that is part of a commit whose first record has `commit_lsn`.
    pub fn with_commit_lsn(
        record_type: u32,
        lsn: u64,
        commit_lsn: u64,
        tenant_id: u64,
        vshard_id: u32,
        database_id: u64,
        payload: Vec<u8>,
    ) -> Result<WalRecord, RecordError> {
        check_user_record(record_type, lsn, payload.len())?;
        if commit_lsn == 0 || commit_lsn > lsn {
            return Err(RecordError::InvalidHeader {
                detail: "commit LSN must be between 1 and the record's own LSN",
            });
        }
        let mut header = RecordHeader {
            record_type,
            key_id: 0,
            lsn,
            commit_lsn,
            tenant_id,
            vshard_id,
            database_id,
            payload_len: payload.len() as u32,
            crc: 0,
        };
        header.crc = header.compute_crc(&payload);
        Ok(WalRecord { header, payload })
    }

    pub fn header(&self) -> &RecordHeader {
        &self.header
    }
    pub fn record_type(&self) -> u32 {
        self.header.record_type
    }
    pub fn lsn(&self) -> u64 {
        self.header.lsn
    }
    pub fn commit_lsn(&self) -> u64 {
        self.header.commit_lsn
    }
    pub fn tenant_id(&self) -> u64 {
        self.header.tenant_id
    }
    pub fn vshard_id(&self) -> u32 {
        self.header.vshard_id
    }
    pub fn database_id(&self) -> u64 {
        self.header.database_id
    }
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
    pub fn into_payload(self) -> Vec<u8> {
        self.payload
    }
    pub fn crc(&self) -> u32 {
        self.header.crc
    }
    /// Bytes the record occupies when encoded.
    pub fn encoded_len(&self) -> usize {
        self.header.record_len()
    }

    /// Recomputes the CRC over header and payload and compares it with the stored one.
    pub fn verify_checksum(&self) -> Result<(), RecordError> {
        let actual = self.header.compute_crc(&self.payload);
        if actual != self.header.crc {
            return Err(RecordError::ChecksumMismatch {
                lsn: self.header.lsn,
                expected: self.header.crc,
                actual,
            });
        }
        Ok(())
    }

    /// Appends the encoded record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.header.encode());
        out.extend_from_slice(&self.payload);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// Decodes exactly one record and verifies its checksum.
    pub fn decode(bytes: &[u8]) -> Result<WalRecord, RecordError> {
        let (record, used) = WalRecord::decode_prefix(bytes)?;
        if used != bytes.len() {
            return Err(RecordError::TrailingBytes {
                extra_bytes: (bytes.len() - used) as u64,
            });
        }
        Ok(record)
    }

    /// Decodes the record at the start of `bytes`, verifies it and returns it with the
    /// number of bytes it used. The header (magic, version, length bound) is checked
    /// before anything is allocated.
    pub fn decode_prefix(bytes: &[u8]) -> Result<(WalRecord, usize), RecordError> {
        let (header, payload) = check_encoded(bytes)?;
        let record = WalRecord {
            header,
            payload: payload.to_vec(),
        };
        Ok((record, header.record_len()))
    }
}

/// Validates the encoded record at the start of `bytes` without copying it: header
/// checks, the length against the bytes available, then the CRC.
pub fn check_encoded(bytes: &[u8]) -> Result<(RecordHeader, &[u8]), RecordError> {
    let header = RecordHeader::parse(bytes)?;
    let record_len = header.record_len();
    let Some(payload) = bytes.get(HEADER_SIZE..record_len) else {
        return Err(RecordError::Truncated {
            needed_bytes: record_len as u64,
            available_bytes: bytes.len() as u64,
        });
    };
    let actual = header.compute_crc(payload);
    if actual != header.crc {
        return Err(RecordError::ChecksumMismatch {
            lsn: header.lsn,
            expected: header.crc,
            actual,
        });
    }
    Ok((header, payload))
}

/// Checks the arguments of a user record: size bound, reserved type bits, LSN 0.
pub fn check_user_record(
    record_type: u32,
    lsn: u64,
    payload_len: usize,
) -> Result<(), RecordError> {
    if payload_len as u64 > u64::from(MAX_PAYLOAD_BYTES) {
        return Err(RecordError::PayloadTooLarge {
            size_bytes: payload_len as u64,
            max_bytes: u64::from(MAX_PAYLOAD_BYTES),
        });
    }
    check_record_type(record_type)?;
    if lsn == 0 {
        return Err(RecordError::InvalidHeader {
            detail: "LSN 0 is reserved for padding; LSNs start at 1",
        });
    }
    if lsn > MAX_LSN {
        return Err(RecordError::InvalidHeader {
            detail: "LSN u64::MAX is reserved; the largest LSN is u64::MAX - 1",
        });
    }
    Ok(())
}

/// Refuses the bits of `record_type` that only the package may set.
pub fn check_record_type(record_type: u32) -> Result<(), RecordError> {
    if record_type & (ENCRYPTED_FLAG | INTERNAL_FLAG) != 0 {
        return Err(RecordError::ReservedRecordType { record_type });
    }
    Ok(())
}

/// Appends a user record built from its parts to `out` without an intermediate
/// [`WalRecord`]; the caller has checked the arguments with [`check_user_record`].
pub fn encode_record_into(out: &mut Vec<u8>, mut header: RecordHeader, payload: &[u8]) {
    debug_assert_eq!(header.payload_len as usize, payload.len());
    header.crc = header.compute_crc(payload);
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
}

/// Appends a padding record of exactly `total_len` bytes (at least [`HEADER_SIZE`]) to
/// `out`. Its payload is zeros; `commit_lsn` ties it to the commit it ends.
pub fn encode_padding_into(out: &mut Vec<u8>, total_len: usize, commit_lsn: u64) {
    assert!(total_len >= HEADER_SIZE, "padding must hold a header");
    let payload_len = total_len - HEADER_SIZE;
    let header = RecordHeader {
        record_type: PADDING_RECORD_TYPE,
        key_id: 0,
        lsn: 0,
        commit_lsn,
        tenant_id: 0,
        vshard_id: 0,
        database_id: 0,
        payload_len: payload_len as u32,
        crc: 0,
    };
    let start = out.len();
    out.resize(start + total_len, 0);
    let crc = header.compute_crc(&out[start + HEADER_SIZE..]);
    let encoded = RecordHeader { crc, ..header }.encode();
    out[start..start + HEADER_SIZE].copy_from_slice(&encoded);
}

pub(crate) fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}
pub(crate) fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}
pub(crate) fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(lsn: u64, payload: &[u8]) -> WalRecord {
        WalRecord::new(RecordType::PUT, lsn, 7, 3, 9, payload.to_vec(), None, None).unwrap()
    }

    #[test]
    fn crc32c_check_value() {
        // The standard CRC-32C check value proves the algorithm (Castagnoli) is the one documented.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let record = sample(42, b"hello");
        let bytes = record.encode();
        assert_eq!(bytes.len(), HEADER_SIZE + 5);
        let decoded = WalRecord::decode(&bytes).unwrap();
        assert_eq!(decoded, record);
        assert_eq!(decoded.lsn(), 42);
        assert_eq!(decoded.commit_lsn(), 42);
        assert_eq!(decoded.tenant_id(), 7);
        assert_eq!(decoded.vshard_id(), 3);
        assert_eq!(decoded.database_id(), 9);
        assert_eq!(decoded.payload(), b"hello");
        decoded.verify_checksum().unwrap();
    }

    #[test]
    fn layout_is_little_endian_at_documented_offsets() {
        let record = sample(0x0102_0304_0506_0708, b"");
        let bytes = record.encode();
        assert_eq!(&bytes[0..4], b"DWAL");
        assert_eq!(&bytes[4..6], &[1, 0]);
        assert_eq!(&bytes[8..12], &[0x01, 0x80, 0, 0]);
        assert_eq!(&bytes[12..20], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&bytes[48..52], &[0, 0, 0, 0]);
        let crc = crc32c::crc32c(&bytes[..52]);
        assert_eq!(&bytes[52..56], &crc.to_le_bytes());
    }

    #[test]
    fn payload_over_64_mib_is_refused() {
        let err = WalRecord::new(
            RecordType::PUT,
            1,
            0,
            0,
            0,
            vec![0; 64 * 1024 * 1024 + 1],
            None,
            None,
        )
        .unwrap_err();
        assert!(matches!(err, RecordError::PayloadTooLarge { .. }));
        assert_eq!(err.code(), "ERR_RECORD_TOO_LARGE");
        WalRecord::new(
            RecordType::PUT,
            1,
            0,
            0,
            0,
            vec![0; 64 * 1024 * 1024],
            None,
            None,
        )
        .unwrap();
    }

    #[test]
    fn reserved_type_bits_and_lsn_zero_are_refused() {
        for t in [ENCRYPTED_FLAG, INTERNAL_FLAG | 5, PADDING_RECORD_TYPE] {
            assert!(matches!(
                WalRecord::new(t, 1, 0, 0, 0, vec![], None, None),
                Err(RecordError::ReservedRecordType { .. })
            ));
        }
        assert!(matches!(
            WalRecord::new(RecordType::PUT, 0, 0, 0, 0, vec![], None, None),
            Err(RecordError::InvalidHeader { .. })
        ));
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let bytes = sample(5, b"payload bytes").encode();
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x20;
            assert!(
                WalRecord::decode(&damaged).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn huge_declared_length_is_refused_before_allocating() {
        let mut bytes = sample(5, b"x").encode();
        bytes[48..52].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            WalRecord::decode(&bytes),
            Err(RecordError::LengthOutOfBounds { .. })
        ));
    }

    #[test]
    fn short_input_is_truncated_not_a_panic() {
        let bytes = sample(5, b"abcdef").encode();
        for len in 0..bytes.len() {
            assert!(WalRecord::decode(&bytes[..len]).is_err());
        }
        assert!(matches!(
            WalRecord::decode(&bytes[..HEADER_SIZE + 2]),
            Err(RecordError::Truncated { .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_reported() {
        let mut bytes = sample(5, b"abc").encode();
        bytes.push(0);
        assert!(matches!(
            WalRecord::decode(&bytes),
            Err(RecordError::TrailingBytes { extra_bytes: 1 })
        ));
    }

    #[test]
    fn padding_is_valid_framing_of_exact_length() {
        for total in [HEADER_SIZE, HEADER_SIZE + 1, 4096] {
            let mut out = vec![];
            encode_padding_into(&mut out, total, 17);
            assert_eq!(out.len(), total);
            let (header, _) = check_encoded(&out).unwrap();
            assert!(header.is_internal());
            assert_eq!(header.commit_lsn, 17);
        }
    }

    #[test]
    fn new_with_a_key_seals_the_payload_for_its_segment() {
        use crate::crypto::EncryptionKey;
        use crate::wal::segment::SegmentHeader;
        let key = EncryptionKey::new(3, [7; 32]).unwrap();
        let preamble = SegmentHeader {
            block_size_bytes: 4096,
            first_lsn: 10,
            epoch: 0xFEED,
            cipher: 1,
        };
        let record = WalRecord::new(
            RecordType::PUT,
            12,
            1,
            2,
            3,
            b"secret".to_vec(),
            Some(&key),
            Some(&preamble),
        )
        .unwrap();
        assert_eq!(record.record_type(), RecordType::PUT | ENCRYPTED_FLAG);
        assert_eq!(record.header().key_id, 3);
        assert_eq!(record.payload().len(), 6 + 16);
        assert!(!record.payload().windows(6).any(|w| w == b"secret"));
        record.verify_checksum().unwrap();
        let decoded = WalRecord::decode(&record.encode()).unwrap();
        assert_eq!(decoded.decrypt_payload(&key, &preamble).unwrap(), b"secret");
        // Another segment (another preamble) or another key does not open it.
        let other = SegmentHeader {
            epoch: 0xBEEF,
            ..preamble
        };
        assert_eq!(
            decoded.decrypt_payload(&key, &other).unwrap_err().code(),
            "ERR_WAL_DECRYPT"
        );
        let wrong = EncryptionKey::new(3, [8; 32]).unwrap();
        assert_eq!(
            decoded
                .decrypt_payload(&wrong, &preamble)
                .unwrap_err()
                .code(),
            "ERR_WAL_DECRYPT"
        );
        let missing = EncryptionKey::new(4, [7; 32]).unwrap();
        assert_eq!(
            decoded
                .decrypt_payload(&missing, &preamble)
                .unwrap_err()
                .code(),
            "ERR_WAL_KEY_MISSING"
        );
        // A key needs the preamble.
        assert!(WalRecord::new(RecordType::PUT, 12, 0, 0, 0, vec![], Some(&key), None).is_err());
    }

    #[test]
    fn required_bit() {
        assert!(RecordType::is_required(RecordType::PUT));
        assert!(!RecordType::is_required(RecordType::NOOP));
        assert!(!RecordType::is_required(RecordType::METADATA));
    }
}
