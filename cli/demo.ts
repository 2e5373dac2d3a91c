/**
 * `doublewrite demo`: the torn-write scenario end to end, in a temporary directory (the
 * logic of `examples/demo.mjs`, which is the version to read as example code):
 *
 * 1. appends records to a WAL with group commit (many appends in flight share each DWB
 *    sync + WAL sync; each caller gets its own LSN once its record is durable);
 * 2. damages an acknowledged record on disk the way a torn write does: random bytes over
 *    the part of it that shares a block with the next commit, which rewrote that block;
 * 3. reopens the WAL: recovery restores the record from its DWB copy, writes it back,
 *    and every record is there again;
 * 4. shows the DoubleWriteBuffer on its own: stage copies, flush once, reopen, recover.
 *
 * @internal
 * @module
 */

import { randomBytes } from 'node:crypto'
import { closeSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, writeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'

import { DoubleWriteBuffer, RecordType, Wal, WalRecord, dwbBytesWrittenTotal } from '../index.js'

import { EXIT, type Io, codeAndMessage, int, json, print } from './output.js'

export interface DemoOptions {
  json: boolean
  records: number
  inFlight: number
  /** Keep the directory (and say where it is). */
  keep: boolean
  /** Parent of the temporary directory (default: the OS temp directory). */
  dir: string | undefined
}

/** Segment layout the tear needs (docs/FORMAT.md): records start at the block after the header. */
const SEGMENT_DATA_OFFSET = 4096
const RECORD_HEADER_BYTES = 56

export async function demoCommand(options: DemoOptions, io: Io): Promise<number> {
  const encoder = new TextEncoder()
  const decoder = new TextDecoder()
  const root = mkdtempSync(path.join(options.dir ?? tmpdir(), 'doublewrite-demo-'))
  const walDir = path.join(root, 'wal')
  const say = (...lines: string[]): void => {
    if (!options.json) print(io.stdout, ...lines)
  }
  const waveSize = (round: number, inFlight: number): number => 1 + ((round * 37) % inFlight)
  const payloadOf = (n: number): Uint8Array => encoder.encode(`event #${n}: ${'x'.repeat(20 + ((n * 37) % 300))}`)
  try {
    // ── 1. group commit ────────────────────────────────────────────────────────────────
    say(`1. group commit: ${int(options.records)} appends to a WAL in ${walDir}, up to ${options.inFlight} in flight at a time`)
    const wal = await Wal.open(walDir, { segmentSize: 4 << 20 })
    const started = performance.now()
    let written = 0
    for (let round = 0; written < options.records; round++) {
      // Waves of varied sizes, as a real workload's: a commit of a big wave may end with
      // padding to a block instead of sharing its last block (when that costs at most a
      // quarter of it), and a small one shares its block — the DWB's work, torn below.
      const wave = Math.min(waveSize(round, options.inFlight), options.records - written)
      await Promise.all(Array.from({ length: wave }, () => wal.append(RecordType.Put, payloadOf(++written))))
    }
    const appendMs = performance.now() - started
    const stats = wal.stats
    const lastLsn = wal.lastLsn
    say(
      `   ${int(options.records)} records durable in ${appendMs.toFixed(0)} ms: ${int(stats.commits)} commits, ` +
        `${int(stats.walSyncs)} WAL syncs, ${int(stats.dwbSyncs)} DWB syncs (${int(stats.dwbBytesWritten)} bytes of DWB copies); last LSN ${int(lastLsn)}`,
    )
    await wal.close()

    // ── 2. a torn write ────────────────────────────────────────────────────────────────
    const torn = tearAtCommitBoundary(walDir)
    let decodeError: { code: string; message: string } | null = null
    try {
      WalRecord.decode(readFileSync(torn.file).subarray(torn.recordStart, torn.recordEnd))
    } catch (error) {
      decodeError = codeAndMessage(error)
    }
    say(
      '',
      `2. torn write: ${torn.end - torn.start} bytes of acknowledged record LSN ${torn.lsn} overwritten with garbage`,
      `   (${path.basename(torn.file)} bytes ${int(torn.start)}..${int(torn.end)}: the block the commit of LSN ${torn.nextCommitLsn} rewrote)`,
      decodeError === null ? '   (the damaged bytes happen to decode; nothing to repair)' : `   reading it now fails: ${decodeError.code}`,
    )

    // ── 3. recovery ────────────────────────────────────────────────────────────────────
    const reopened = await Wal.open(walDir, { segmentSize: 4 << 20 })
    const recovery = reopened.recovery
    let intact = 0
    for await (const record of reopened.replay()) {
      if (decoder.decode(record.payload) === decoder.decode(payloadOf(Number(record.lsn)))) intact += 1
    }
    await reopened.close()
    const everyRecordBack = intact === options.records
    say(
      '',
      `3. recovery on reopen (${recovery.durationMs.toFixed(1)} ms): ${int(recovery.repairedFromDwb)} record restored from the DWB and written back;`,
      `   replay finds ${int(intact)} of ${int(options.records)} records intact${everyRecordBack ? ': every acknowledged record is back' : ': UNEXPECTED'}`,
    )

    // ── 4. the DoubleWriteBuffer on its own ────────────────────────────────────────────
    const dwbFile = path.join(root, 'pages.dwb')
    const dwb = await DoubleWriteBuffer.open(dwbFile, { mode: 'buffered' })
    for (let lsn = 1n; lsn <= 5n; lsn++) {
      dwb.writeRecordDeferred(WalRecord.create({ recordType: RecordType.Put, lsn, payload: encoder.encode(`page image ${lsn}`) }))
    }
    await dwb.flush()
    const geometry = { capacity: dwb.capacity, slotStride: dwb.slotStride, mode: dwb.mode }
    dwb.close()
    const again = await DoubleWriteBuffer.open(dwbFile, { mode: 'buffered' })
    const copy = await again.recoverRecord(3n)
    const missing = await again.recoverRecord(99n)
    again.close()
    const copyText = copy === null ? null : decoder.decode(copy.payload)
    say(
      '',
      `4. DoubleWriteBuffer ${path.basename(dwbFile)}: ${geometry.capacity} slots of ${int(geometry.slotStride)} B, mode ${geometry.mode};`,
      `   5 copies staged, one flush; after reopening, recoverRecord(3n) → "${copyText}", recoverRecord(99n) → ${missing}`,
      `   DWB bytes written by this process: ${int(dwbBytesWrittenTotal())}`,
    )
    if (options.keep) say('', `kept ${root}`)
    if (options.json) {
      print(
        io.stdout,
        json({
          dir: options.keep ? root : null,
          groupCommit: { records: options.records, inFlight: options.inFlight, durationMs: appendMs, stats, lastLsn },
          tornWrite: { ...torn, file: path.basename(torn.file), decodeError },
          recovery: { ...recovery, intact, everyRecordBack },
          dwb: { ...geometry, recovered: copyText, missing: missing === null ? null : 'found', bytesWrittenTotal: dwbBytesWrittenTotal() },
        }),
      )
    }
    return everyRecordBack ? EXIT.ok : EXIT.error
  } finally {
    if (!options.keep) rmSync(root, { recursive: true, force: true })
  }
}

/**
 * Finds the last commit that starts inside a block and overwrites, with random bytes, the
 * bytes of the acknowledged record before it that share that block. Each record has a
 * 56-byte little-endian header: magic "DWAL" at 0, type at 8, LSN at 12, commit LSN at 20,
 * payload length at 48 (docs/FORMAT.md).
 */
function tearAtCommitBoundary(walDir: string): {
  file: string
  lsn: bigint
  nextCommitLsn: bigint
  start: number
  end: number
  recordStart: number
  recordEnd: number
} {
  const block = 4096
  const segments = readdirSync(walDir)
    .filter((name) => /^wal-\d{20}\.seg$/.test(name))
    .sort()
    .reverse()
  for (const name of segments) {
    const file = path.join(walDir, name)
    const bytes = readFileSync(file)
    const records: { offset: number; length: number; lsn: bigint; commitLsn: bigint }[] = []
    for (
      let offset = SEGMENT_DATA_OFFSET;
      offset + RECORD_HEADER_BYTES <= bytes.length && bytes.toString('latin1', offset, offset + 4) === 'DWAL';

    ) {
      const length = RECORD_HEADER_BYTES + bytes.readUInt32LE(offset + 48)
      if ((bytes.readUInt32LE(offset + 8) & 0x8000_0000) === 0) {
        records.push({ offset, length, lsn: bytes.readBigUInt64LE(offset + 12), commitLsn: bytes.readBigUInt64LE(offset + 20) })
      }
      offset += length
    }
    for (let i = records.length - 1; i > 0; i--) {
      const victim = records[i - 1]
      const next = records[i]
      if (victim === undefined || next === undefined) continue
      if (next.commitLsn === victim.commitLsn || next.offset % block === 0) continue
      const start = Math.max(Math.floor(next.offset / block) * block, victim.offset)
      const fd = openSync(file, 'r+')
      try {
        writeSync(fd, randomBytes(next.offset - start), 0, next.offset - start, start)
      } finally {
        closeSync(fd)
      }
      return {
        file,
        lsn: victim.lsn,
        nextCommitLsn: next.commitLsn,
        start,
        end: next.offset,
        recordStart: victim.offset,
        recordEnd: victim.offset + victim.length,
      }
    }
  }
  throw new Error('no commit starts inside a block (try more --records)')
}
