//! Encryption at rest: AES-256-GCM over record payloads (RustCrypto `aes-gcm`).
//!
//! - Each segment has its own subkey per master key: HKDF-SHA256(key, salt = the
//!   segment's random 64-bit epoch, info = `"doublewrite segment key v1"`).
//! - Nonce (12 bytes) = low 32 bits of the epoch ‖ the record's LSN, little-endian.
//!   A (key, segment, LSN) triple encrypts at most one plaintext: the writer never
//!   reuses an LSN within a segment — every open and every failed commit of an encrypted
//!   WAL starts a new segment (new random epoch), which covers torn-tail cuts, refused
//!   commits and a directory restored from a backup.
//! - Associated data = the record header with `payload_len` and `crc` zeroed (so the
//!   type, LSN, commit LSN, ids and key id are authenticated) ‖ the segment header (the
//!   "preamble": a record copied into another segment fails to decrypt).
//! - The CRC covers the ciphertext and tag: recovery and the DWB never see plaintext.
//!
//! Keys live in [`KeyRing`] as `Zeroizing` arrays: wiped when the ring is dropped.

use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::record::{RecordHeader, ENCRYPTED_FLAG, HEADER_SIZE};
use crate::wal::segment::SegmentHeader;

/// Bytes of an AES-256 key.
pub const KEY_BYTES: usize = 32;
/// Bytes the GCM tag adds to every encrypted payload.
pub const TAG_BYTES: usize = 16;
const SUBKEY_INFO: &[u8] = b"doublewrite segment key v1";

/// One AES-256 key and its id (1–65535; 0 marks plaintext). Wiped when dropped.
pub struct EncryptionKey {
    id: u16,
    bytes: Zeroizing<[u8; KEY_BYTES]>,
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionKey")
            .field("id", &self.id)
            .finish()
    }
}

impl EncryptionKey {
    /// # Errors
    /// [`Error::InvalidOptions`] for id 0.
    pub fn new(id: u16, bytes: [u8; KEY_BYTES]) -> Result<EncryptionKey> {
        if id == 0 {
            return Err(Error::InvalidOptions {
                detail: "key id 0 is reserved for plaintext records; use ids 1 to 65535".into(),
            });
        }
        Ok(EncryptionKey {
            id,
            bytes: Zeroizing::new(bytes),
        })
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    /// The cipher of this key for the segment with `preamble`.
    pub fn segment_cipher(&self, preamble: &SegmentHeader) -> SegmentCipher {
        SegmentCipher::new(&self.bytes, self.id, preamble)
    }
}

/// The keys a WAL may read with, and the one it writes with. Key id 0 is reserved (it
/// marks a plaintext record).
pub struct KeyRing {
    keys: BTreeMap<u16, EncryptionKey>,
    active: u16,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

impl KeyRing {
    /// # Errors
    /// [`Error::InvalidOptions`] for key id 0, a repeated id, or an active id that is not
    /// among the keys.
    pub fn new(
        keys: impl IntoIterator<Item = (u16, [u8; KEY_BYTES])>,
        active: u16,
    ) -> Result<KeyRing> {
        let mut ring = BTreeMap::new();
        for (id, key) in keys {
            if ring.insert(id, EncryptionKey::new(id, key)?).is_some() {
                return Err(Error::InvalidOptions {
                    detail: format!("key id {id} is given twice"),
                });
            }
        }
        if !ring.contains_key(&active) {
            return Err(Error::InvalidOptions {
                detail: format!("the active key id {active} is not among the keys"),
            });
        }
        Ok(KeyRing { keys: ring, active })
    }

    pub fn active_id(&self) -> u16 {
        self.active
    }

    pub fn ids(&self) -> Vec<u16> {
        self.keys.keys().copied().collect()
    }

    /// The cipher of key `key_id` for the segment with `header`.
    pub fn segment_cipher(
        &self,
        key_id: u16,
        header: &SegmentHeader,
        lsn: u64,
    ) -> Result<SegmentCipher> {
        let key = self
            .keys
            .get(&key_id)
            .ok_or(Error::KeyMissing { key_id, lsn })?;
        Ok(key.segment_cipher(header))
    }
}

/// AES-256-GCM under the subkey of one (key, segment).
pub struct SegmentCipher {
    cipher: Aes256Gcm,
    key_id: u16,
    epoch: u64,
    preamble: [u8; segment::PREAMBLE_BYTES],
}

use crate::wal::segment;

impl fmt::Debug for SegmentCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentCipher")
            .field("key_id", &self.key_id)
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl SegmentCipher {
    fn new(key: &[u8; KEY_BYTES], key_id: u16, header: &SegmentHeader) -> SegmentCipher {
        let hkdf = Hkdf::<Sha256>::new(Some(&header.epoch.to_le_bytes()), key);
        let mut subkey = Zeroizing::new([0u8; KEY_BYTES]);
        hkdf.expand(SUBKEY_INFO, subkey.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        SegmentCipher {
            cipher: Aes256Gcm::new(subkey.as_ref().into()),
            key_id,
            epoch: header.epoch,
            preamble: header.encode(),
        }
    }

    pub fn key_id(&self) -> u16 {
        self.key_id
    }

    fn nonce(&self, lsn: u64) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&(self.epoch as u32).to_le_bytes());
        nonce[4..].copy_from_slice(&lsn.to_le_bytes());
        nonce
    }

    fn associated_data(
        &self,
        header: &RecordHeader,
    ) -> [u8; HEADER_SIZE + segment::PREAMBLE_BYTES] {
        let mut aad = [0u8; HEADER_SIZE + segment::PREAMBLE_BYTES];
        let bare = RecordHeader {
            payload_len: 0,
            crc: 0,
            ..*header
        };
        aad[..HEADER_SIZE].copy_from_slice(&bare.encode());
        aad[HEADER_SIZE..].copy_from_slice(&self.preamble);
        aad
    }

    /// Encrypts `plaintext` for the record with `header` (its type must carry the
    /// encrypted flag and its key id this cipher's). Returns ciphertext ‖ tag.
    pub fn seal(&self, header: &RecordHeader, plaintext: &[u8]) -> Vec<u8> {
        debug_assert!(header.record_type & ENCRYPTED_FLAG != 0);
        debug_assert_eq!(header.key_id, self.key_id);
        let nonce = self.nonce(header.lsn);
        let aad = self.associated_data(header);
        self.cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption cannot fail for payloads under 64 GiB")
    }

    /// Decrypts and authenticates the payload of the record with `header`.
    ///
    /// # Errors
    /// [`Error::DecryptFailed`] when the tag does not verify (a wrong key under the right
    /// id, or bytes changed after encryption that still match their CRC).
    pub fn open(&self, header: &RecordHeader, ciphertext: &[u8]) -> Result<Vec<u8>> {
        let nonce = self.nonce(header.lsn);
        let aad = self.associated_data(header);
        self.cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| Error::DecryptFailed {
                lsn: header.lsn,
                key_id: header.key_id,
            })
    }
}
