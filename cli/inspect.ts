/**
 * `doublewrite inspect <file.dwb>`: the header, the geometry and every copy of a
 * double-write buffer file, read-only (binding: `inspectDwb` in `src/tools.rs`).
 *
 * The core opens the file read-only, checks the header and indexes the copies the way
 * recovery does; for a copy whose record does not verify, this reads the record's bytes
 * and decodes them to say why.
 *
 * @internal
 * @module
 */

import { closeSync, openSync, readSync } from 'node:fs'

import '../loader.js'
import * as binding from '../binding.js'
import { WalRecord } from '../index.js'

import { EXIT, type Io, codeAndMessage, hex32, int, json, native, print, table } from './output.js'

/** Bytes of the checksummed prefix in front of every copy (docs/FORMAT.md, "Frame"). */
const FRAME_PREFIX_BYTES = 24

export interface InspectOptions {
  json: boolean
  /** Leave out the list of copies. */
  summary: boolean
}

/** One copy in the ring, as `inspect` reports it. */
export interface CopyReport {
  seq: bigint
  lsn: bigint
  /** The slot whose span the copy starts in (`ringOffset / slotStride`): copies are packed, several can share a slot. */
  slot: number
  ringOffset: number
  fileOffset: number
  /** Bytes of the record copy (header + payload). */
  recordBytes: number
  valid: boolean
  /** Why the copy does not verify (`null` when valid). */
  problem: string | null
  /** Whether recovery would use this copy for its LSN (the newest valid one). */
  used: boolean
}

export interface InspectReport {
  path: string
  header: { magic: string; formatVersion: number; checksum: number }
  geometry: binding.NativeDwbGeometry
  copies: {
    total: number
    valid: number
    damaged: number
    distinctLsns: number
    lsnMin: bigint | null
    lsnMax: bigint | null
    newestSeq: bigint | null
  }
  frames: CopyReport[]
}

export async function inspectCommand(file: string, options: InspectOptions, io: Io): Promise<number> {
  const inspection = await native(() => binding.inspectDwb(file))
  const report = buildReport(inspection, file)
  if (options.json) {
    print(io.stdout, json(options.summary ? { ...report, frames: undefined } : report))
    return EXIT.ok
  }
  print(io.stdout, ...describe(report, options.summary))
  return EXIT.ok
}

function buildReport(inspection: binding.NativeDwbInspection, file: string): InspectReport {
  const { geometry } = inspection
  const fd = openSync(file, 'r')
  try {
    // The header fields fit well within 64 bytes (docs/FORMAT.md); the rest of the block is zeros.
    const head = Buffer.alloc(64)
    readSync(fd, head, 0, head.length, 0)
    const newestValid = new Map<bigint, bigint>()
    for (const frame of inspection.frames) {
      if (!frame.valid) continue
      const best = newestValid.get(frame.lsn)
      if (best === undefined || frame.seq > best) newestValid.set(frame.lsn, frame.seq)
    }
    const frames = inspection.frames.map((frame): CopyReport => {
      const fileOffset = geometry.ringOffset + frame.ringOffset
      return {
        seq: frame.seq,
        lsn: frame.lsn,
        slot: Math.floor(frame.ringOffset / geometry.slotStride),
        ringOffset: frame.ringOffset,
        fileOffset,
        recordBytes: frame.recordLen,
        valid: frame.valid,
        problem: frame.valid ? null : whyInvalid(fd, fileOffset + FRAME_PREFIX_BYTES, frame.recordLen),
        used: frame.valid && newestValid.get(frame.lsn) === frame.seq,
      }
    })
    const lsns = [...new Set(frames.map((f) => f.lsn))].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))
    const valid = frames.filter((f) => f.valid).length
    return {
      path: inspection.path,
      header: {
        magic: head.toString('latin1', 0, 4),
        formatVersion: head.readUInt16LE(4),
        checksum: head.readUInt32LE(32),
      },
      geometry,
      copies: {
        total: frames.length,
        valid,
        damaged: frames.length - valid,
        distinctLsns: lsns.length,
        lsnMin: lsns[0] ?? null,
        lsnMax: lsns[lsns.length - 1] ?? null,
        newestSeq: frames.reduce<bigint | null>((max, f) => (max === null || f.seq > max ? f.seq : max), null),
      },
      frames,
    }
  } finally {
    closeSync(fd)
  }
}

/** Decodes the record bytes of a copy the core found invalid, to say what is wrong with it. */
function whyInvalid(fd: number, offset: number, length: number): string {
  const bytes = Buffer.alloc(length)
  const read = readSync(fd, bytes, 0, length, offset)
  if (read < length) return `the file ends ${length - read} bytes before the end of the record`
  try {
    WalRecord.decode(bytes)
    return 'changed while it was read (verifies now)'
  } catch (error) {
    const { code, message } = codeAndMessage(error)
    return `${code}: ${message}`
  }
}

function describe(report: InspectReport, summary: boolean): string[] {
  const { geometry: g, copies: c, header: h } = report
  const lines = [
    `double-write buffer ${report.path}`,
    `  header    magic ${h.magic}, format ${h.formatVersion}, checksum ${hex32(h.checksum)} (verified)`,
    `  geometry  block ${int(g.blockSize)} B, ${int(g.capacity)} slots of ${int(g.slotStride)} B, largest record ${int(g.maxRecordSize)} B`,
    `  file      ${int(g.fileSize)} B: header block ${int(g.ringOffset)} B + ring ${int(g.fileSize - g.ringOffset)} B`,
    c.total === 0
      ? '  copies    none (a new buffer, or every copy was voided)'
      : `  copies    ${int(c.total)}: ${int(c.valid)} valid, ${int(c.damaged)} damaged; ` +
        `${int(c.distinctLsns)} LSNs from ${int(c.lsnMin ?? 0n)} to ${int(c.lsnMax ?? 0n)}; newest seq ${int(c.newestSeq ?? 0n)}`,
  ]
  if (c.damaged > 0) {
    lines.push('            (a damaged copy is one a crash interrupted while it was written; recovery never uses it)')
  }
  if (!summary && c.total > 0) {
    const rows = report.frames.map((f) => [
      int(f.seq),
      int(f.lsn),
      int(f.slot),
      int(f.ringOffset),
      int(f.fileOffset),
      int(f.recordBytes),
      f.used ? '*' : '',
      f.valid ? 'valid' : `DAMAGED ${f.problem ?? ''}`,
    ])
    lines.push('', ...table(['seq', 'lsn', 'slot', 'ring offset', 'file offset', 'record B', 'use', 'state'], rows, [6, 7]))
    lines.push('', 'use: * = the copy recovery would take for its LSN (the newest valid one)')
  }
  return lines
}
