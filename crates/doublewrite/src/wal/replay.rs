//! Reading records back: a snapshot of the segments and the end of the log, read one
//! segment at a time with its own file handles.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::crypto::{KeyRing, SegmentCipher};
use crate::error::{Error, Result};
use crate::io::{self, OpenOptions, Vfs};
use crate::record::{check_encoded, RecordType, WalRecord, ENCRYPTED_FLAG, HEADER_SIZE};

use super::segment::{read_header, SegmentFile, SegmentHeader};

/// Iterator over durable records in LSN order (see [`super::Wal::replay`]).
#[derive(Debug)]
pub struct Replay {
    vfs: Arc<dyn Vfs>,
    segments: Vec<SegmentFile>,
    /// (first LSN of the active segment, end offset of its last acknowledged record)
    end: (u64, u64),
    /// Records at or above this LSN were not acknowledged when the replay started.
    limit_lsn: u64,
    from_lsn: u64,
    known_types: BTreeSet<u32>,
    index: usize,
    buf: Vec<u8>,
    pos: usize,
    /// Where the loaded segment's records end (`None`: until the first invalid bytes).
    stop: Option<usize>,
    expected: u64,
    loaded: bool,
    finished: bool,
    keys: Option<Arc<KeyRing>>,
    /// Header of the loaded segment, and its ciphers by key id.
    header: Option<SegmentHeader>,
    ciphers: BTreeMap<u16, SegmentCipher>,
}

impl Replay {
    pub(crate) fn new(
        vfs: Arc<dyn Vfs>,
        segments: Vec<SegmentFile>,
        end: (u64, u64),
        limit_lsn: u64,
        from_lsn: u64,
        known_types: BTreeSet<u32>,
        keys: Option<Arc<KeyRing>>,
    ) -> Replay {
        // Skip the segments that end before `from_lsn`.
        let start = segments
            .windows(2)
            .take_while(|w| w[1].first_lsn <= from_lsn)
            .count();
        let expected = segments.get(start).map_or(limit_lsn, |s| s.first_lsn);
        Replay {
            vfs,
            segments,
            end,
            limit_lsn,
            from_lsn,
            known_types,
            index: start,
            buf: Vec::new(),
            pos: 0,
            stop: None,
            expected,
            loaded: false,
            finished: false,
            keys,
            header: None,
            ciphers: BTreeMap::new(),
        }
    }

    fn load(&mut self) -> Result<()> {
        let segment = &self.segments[self.index];
        let file = self
            .vfs
            .open(&segment.path, OpenOptions::read_only())
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::InvalidOptions {
                    detail: format!(
                        "{} was removed (truncateBefore) while this replay read the log",
                        segment.path.display()
                    ),
                },
                _ => Error::io("open segment for replay", &segment.path, e),
            })?;
        let header = read_header(file.as_ref(), segment)?;
        let active = segment.first_lsn == self.end.0;
        let len = if active {
            self.end.1
        } else {
            file.len()
                .map_err(|e| Error::io("measure segment", &segment.path, e))?
        };
        self.buf.clear();
        self.buf.resize(len as usize, 0);
        io::read_exact_at(file.as_ref(), &mut self.buf, 0)
            .map_err(|e| Error::io("read segment", &segment.path, e))?;
        self.pos = header.data_start() as usize;
        self.header = Some(header);
        self.ciphers.clear();
        self.stop = active.then_some(len as usize);
        if segment.first_lsn != self.expected {
            return Err(self.corrupt("the segment does not continue the previous one"));
        }
        self.loaded = true;
        Ok(())
    }

    fn corrupt(&self, detail: &str) -> Error {
        let segment = &self.segments[self.index];
        Error::WalCorrupt {
            path: segment.path.clone(),
            offset: self.pos as u64,
            lsn: self.expected,
            detail: format!(
                "{detail} (found while replaying; the log changed after it was recovered)"
            ),
        }
    }

    fn step(&mut self) -> Result<Option<WalRecord>> {
        loop {
            if self.expected >= self.limit_lsn || self.index >= self.segments.len() {
                return Ok(None);
            }
            if !self.loaded {
                self.load()?;
            }
            let at_stop = self.stop.is_some_and(|stop| self.pos >= stop);
            let parsed = if at_stop {
                None
            } else {
                check_encoded(&self.buf[self.pos..]).ok().map(|(h, _)| h)
            };
            match parsed {
                Some(h) if h.is_internal() => {
                    self.pos += h.record_len();
                }
                Some(h) if h.lsn == self.expected => {
                    let start = self.pos;
                    self.pos += h.record_len();
                    self.expected += 1;
                    if h.lsn < self.from_lsn {
                        continue;
                    }
                    let logical_type = h.record_type & !crate::record::ENCRYPTED_FLAG;
                    if !self.known_types.contains(&logical_type) {
                        if RecordType::is_required(logical_type) {
                            return Err(Error::UnknownRequiredRecordType {
                                record_type: h.record_type,
                                lsn: h.lsn,
                            });
                        }
                        continue;
                    }
                    if h.record_type & ENCRYPTED_FLAG == 0 {
                        let (record, _) = WalRecord::decode_prefix(&self.buf[start..])
                            .expect("verified by check_encoded");
                        return Ok(Some(record));
                    }
                    let plaintext =
                        self.decrypt(&h, start + HEADER_SIZE..start + h.record_len())?;
                    // Returned as the record the caller appended: logical type, plaintext.
                    let record = WalRecord::with_commit_lsn(
                        logical_type,
                        h.lsn,
                        h.commit_lsn,
                        h.tenant_id,
                        h.vshard_id,
                        h.database_id,
                        plaintext,
                    )?;
                    return Ok(Some(record));
                }
                _ => {
                    // The end of this segment's records.
                    let next = self.segments.get(self.index + 1).map(|s| s.first_lsn);
                    match next {
                        Some(first) if first == self.expected => {
                            self.index += 1;
                            self.loaded = false;
                        }
                        Some(_) => return Err(self.corrupt("a record is damaged or missing")),
                        None if at_stop => return Ok(None),
                        None => return Err(self.corrupt("a record is damaged or missing")),
                    }
                }
            }
        }
    }
}

impl Replay {
    /// Decrypts the ciphertext at `range` of the loaded segment.
    fn decrypt(
        &mut self,
        header: &crate::record::RecordHeader,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<u8>> {
        let key_id = header.key_id;
        if !self.ciphers.contains_key(&key_id) {
            let keys = self.keys.as_ref().ok_or(Error::KeyMissing {
                key_id,
                lsn: header.lsn,
            })?;
            let segment = self.header.as_ref().expect("a segment is loaded");
            let cipher = keys.segment_cipher(key_id, segment, header.lsn)?;
            self.ciphers.insert(key_id, cipher);
        }
        self.ciphers[&key_id].open(header, &self.buf[range])
    }
}

impl Iterator for Replay {
    type Item = Result<WalRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        match self.step() {
            Ok(Some(record)) => Some(Ok(record)),
            Ok(None) => {
                self.finished = true;
                None
            }
            Err(e) => {
                self.finished = true;
                Some(Err(e))
            }
        }
    }
}
