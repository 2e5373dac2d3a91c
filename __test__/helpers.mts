// Shared helpers of the ava specs: temporary directories, an independent CRC-32C, the
// on-disk parsers the tests use to find records, and the direct-I/O probe.

import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'

import type { ExecutionContext } from 'ava'

import { DoubleWriteBuffer, type DoublewriteError } from 'doublewrite'

/** Where test directories go: `$DOUBLEWRITE_TEST_DIR` or the OS temp directory. */
export const TEST_ROOT = process.env.DOUBLEWRITE_TEST_DIR ?? tmpdir()

/** A fresh directory, removed when the test ends. */
export function tempDir(t: ExecutionContext, name = 'test'): string {
  const dir = mkdtempSync(path.join(TEST_ROOT, `doublewrite-${name}-`))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** CRC-32C (Castagnoli, reflected 0x82F63B78), written independently of the Rust crate. */
const CRC_TABLE = (() => {
  const table = new Uint32Array(256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1
    table[n] = c >>> 0
  }
  return table
})()

export function crc32c(...chunks: Uint8Array[]): number {
  let crc = 0xffffffff
  for (const chunk of chunks) {
    for (const byte of chunk) crc = (CRC_TABLE[(crc ^ byte) & 0xff] as number) ^ (crc >>> 8)
  }
  return (crc ^ 0xffffffff) >>> 0
}

/** The record header as documented in docs/FORMAT.md: 56 bytes, little-endian. */
export interface RecordHeader {
  magic: string
  version: number
  keyId: number
  recordType: number
  lsn: bigint
  commitLsn: bigint
  tenantId: bigint
  vshardId: number
  databaseId: bigint
  payloadLength: number
  crc: number
}

export const RECORD_HEADER_BYTES = 56
/** Records of a segment start after its header block. */
export const SEGMENT_DATA_OFFSET = 4096

export function parseHeader(bytes: Uint8Array, offset = 0): RecordHeader {
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset, RECORD_HEADER_BYTES)
  return {
    magic: String.fromCharCode(...bytes.subarray(offset, offset + 4)),
    version: view.getUint16(4, true),
    keyId: view.getUint16(6, true),
    recordType: view.getUint32(8, true),
    lsn: view.getBigUint64(12, true),
    commitLsn: view.getBigUint64(20, true),
    tenantId: view.getBigUint64(28, true),
    vshardId: view.getUint32(36, true),
    databaseId: view.getBigUint64(40, true),
    payloadLength: view.getUint32(48, true),
    crc: view.getUint32(52, true),
  }
}

/** A record found in a segment file. */
export interface SegmentRecord extends RecordHeader {
  /** Offset of the record's first byte in the file. */
  offset: number
  /** Encoded length (header + payload). */
  length: number
  /** Whether this is WAL framing (padding), which is not a user record. */
  padding: boolean
}

/** Walks the records of a segment from offset 4096 until bytes stop being a record. */
export function parseSegment(bytes: Uint8Array): SegmentRecord[] {
  const records: SegmentRecord[] = []
  let offset = SEGMENT_DATA_OFFSET
  while (offset + RECORD_HEADER_BYTES <= bytes.length) {
    const header = parseHeader(bytes, offset)
    if (header.magic !== 'DWAL') break
    const length = RECORD_HEADER_BYTES + header.payloadLength
    if (offset + length > bytes.length) break
    records.push({ ...header, offset, length, padding: (header.recordType & 0x8000_0000) !== 0 })
    offset += length
  }
  return records
}

/** Segment files of a WAL directory, oldest first. */
export function segmentFiles(dir: string): string[] {
  return readdirSync(dir)
    .filter((name) => /^wal-\d{20}\.seg$/.test(name))
    .sort()
    .map((name) => path.join(dir, name))
}

export function readSegment(file: string): Uint8Array {
  return new Uint8Array(readFileSync(file))
}

/** Whether `error` is a coded error with this class and code (for ava's `t.throws`). */
export function coded(instanceOf: new (...args: never[]) => Error, code: string) {
  return { instanceOf, code } as const
}

/** Whether O_DIRECT works under {@link TEST_ROOT}; the reason when it does not. */
export function probeDirectIo(): { ok: true } | { ok: false; reason: string } {
  const dir = mkdtempSync(path.join(TEST_ROOT, 'doublewrite-probe-'))
  try {
    DoubleWriteBuffer.openSync(path.join(dir, 'probe.dwb'), { mode: 'direct' }).close()
    return { ok: true }
  } catch (error) {
    const code = (error as DoublewriteError).code
    if (code === 'ERR_DIRECT_IO_UNSUPPORTED') {
      return { ok: false, reason: `direct I/O unavailable in ${TEST_ROOT}: ${(error as Error).message}` }
    }
    throw error
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

/** Deterministic bytes for a test record. */
export function bytesOf(text: string): Uint8Array {
  return new TextEncoder().encode(text)
}

export function textOf(bytes: Uint8Array): string {
  return new TextDecoder().decode(bytes)
}
