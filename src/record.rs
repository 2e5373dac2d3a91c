//! WAL records (mirrors the `record` section of `index.ts`).
//!
//! Bytes go to JS only as copies in JS-owned memory (`Uint8ArraySlice::copy_from` creates
//! the ArrayBuffer with `napi_create_arraybuffer` and copies into it): Electron forbids
//! buffers backed by external memory.

use doublewrite::{record, RecordType, WalRecord};
use napi::bindgen_prelude::{BigInt, Uint8ArraySlice};
use napi::{Env, Result};
use napi_derive::napi;

use crate::error::{record_error, u64_from_bigint};

/// Record type `Noop` (optional).
#[napi]
pub const RECORD_TYPE_NOOP: u32 = RecordType::NOOP;
/// Record type `Put` (required).
#[napi]
pub const RECORD_TYPE_PUT: u32 = RecordType::PUT;
/// Record type `Delete` (required).
#[napi]
pub const RECORD_TYPE_DELETE: u32 = RecordType::DELETE;
/// Record type `Transaction` (required).
#[napi]
pub const RECORD_TYPE_TRANSACTION: u32 = RecordType::TRANSACTION;
/// Record type `Checkpoint` (required).
#[napi]
pub const RECORD_TYPE_CHECKPOINT: u32 = RecordType::CHECKPOINT;
/// Record type `Metadata` (optional).
#[napi]
pub const RECORD_TYPE_METADATA: u32 = RecordType::METADATA;
/// Bit 15 of a record type: a reader that does not know the type must fail.
#[napi]
pub const REQUIRED_FLAG: u32 = record::REQUIRED_FLAG;
/// Bit 14 of a record type: set only by encryption; reserved.
#[napi]
pub const ENCRYPTED_FLAG: u32 = record::ENCRYPTED_FLAG;
/// Bytes of the record header in front of every payload.
#[napi]
pub const HEADER_SIZE: u32 = record::HEADER_SIZE as u32;
/// Largest payload of one record, in bytes.
#[napi]
pub const MAX_PAYLOAD_BYTES: u32 = record::MAX_PAYLOAD_BYTES;

/// A WAL record held in Rust; fields are read through getters, bytes come back as copies.
#[napi]
pub struct NativeWalRecord {
    pub(crate) inner: WalRecord,
}

impl NativeWalRecord {
    pub(crate) fn new(inner: WalRecord) -> NativeWalRecord {
        NativeWalRecord { inner }
    }
}

#[napi]
impl NativeWalRecord {
    /// Builds a record (its commit LSN is its own LSN) and computes its CRC.
    #[napi(factory)]
    pub fn create(
        record_type: u32,
        lsn: BigInt,
        tenant_id: BigInt,
        vshard_id: u32,
        database_id: BigInt,
        payload: Uint8ArraySlice,
    ) -> Result<NativeWalRecord> {
        let lsn = u64_from_bigint("lsn", &lsn)?;
        let tenant_id = u64_from_bigint("tenantId", &tenant_id)?;
        let database_id = u64_from_bigint("databaseId", &database_id)?;
        let record = WalRecord::new(
            record_type,
            lsn,
            tenant_id,
            vshard_id,
            database_id,
            payload.to_vec(),
            None,
            None,
        )
        .map_err(record_error)?;
        Ok(NativeWalRecord::new(record))
    }

    /// Decodes exactly one encoded record and verifies its CRC.
    #[napi(factory)]
    pub fn decode(bytes: Uint8ArraySlice) -> Result<NativeWalRecord> {
        WalRecord::decode(&bytes)
            .map(NativeWalRecord::new)
            .map_err(record_error)
    }

    /// The encoded record (header + payload), copied into JS-owned memory.
    #[napi]
    pub fn encode<'env>(&self, env: &'env Env) -> Result<Uint8ArraySlice<'env>> {
        Uint8ArraySlice::copy_from(env, self.inner.encode())
    }

    #[napi(getter)]
    pub fn record_type(&self) -> u32 {
        self.inner.record_type()
    }

    #[napi(getter)]
    pub fn lsn(&self) -> u64 {
        self.inner.lsn()
    }

    #[napi(getter)]
    pub fn commit_lsn(&self) -> u64 {
        self.inner.commit_lsn()
    }

    #[napi(getter)]
    pub fn tenant_id(&self) -> u64 {
        self.inner.tenant_id()
    }

    #[napi(getter)]
    pub fn vshard_id(&self) -> u32 {
        self.inner.vshard_id()
    }

    #[napi(getter)]
    pub fn database_id(&self) -> u64 {
        self.inner.database_id()
    }

    #[napi(getter)]
    pub fn crc(&self) -> u32 {
        self.inner.crc()
    }

    /// Bytes of the encoded record.
    #[napi(getter)]
    pub fn encoded_len(&self) -> u32 {
        self.inner.encoded_len() as u32
    }

    /// A copy of the payload in JS-owned memory.
    #[napi(getter)]
    pub fn payload<'env>(&self, env: &'env Env) -> Result<Uint8ArraySlice<'env>> {
        Uint8ArraySlice::copy_from(env, self.inner.payload())
    }
}
