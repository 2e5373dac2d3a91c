// doublewrite demo (`npm run demo`).
//
// 1. Writes records to a WAL with group commit: many appends in flight at once share
//    each DWB sync + WAL sync, and each caller gets its own LSN once its record is durable.
// 2. Damages an acknowledged record on disk the way a torn write does: when a commit
//    starts in the middle of a block, writing it rewrites that block, which also holds the
//    end of the acknowledged record before it. If power fails during that write, the
//    block can come back as garbage. We overwrite those bytes with random ones.
// 3. Reopens the WAL: recovery finds the damaged record, restores it from its copy in the
//    double-write buffer, writes it back, and every record is there again.
// 4. A short DoubleWriteBuffer quick-start: stage copies, flush once, reopen, recover.

import { randomBytes } from 'node:crypto'
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'

import { DoubleWriteBuffer, RecordType, Wal, WalRecord, dwbBytesWrittenTotal } from 'doublewrite'

const RECORDS = 2000
const IN_FLIGHT = 100
const BLOCK = 4096

const encoder = new TextEncoder()
const decoder = new TextDecoder()
const dir = mkdtempSync(path.join(tmpdir(), 'doublewrite-demo-'))
const walDir = path.join(dir, 'wal')

/** @param {number} n */
const payloadOf = (n) => encoder.encode(`event #${n}: ${'x'.repeat(20 + ((n * 37) % 300))}`)

try {
  // ── 1. group commit ──────────────────────────────────────────────────────────────────
  console.log(`WAL in ${walDir}`)
  const wal = await Wal.open(walDir, { segmentSize: 4 << 20 })
  const started = performance.now()
  let written = 0
  for (let round = 0; written < RECORDS; round++) {
    // Up to IN_FLIGHT appends at once, in waves of varied sizes as a real workload's; each
    // promise resolves with that record's own LSN. A big wave's commit may end with padding
    // to a block (when that costs at most a quarter of it); a small one shares its block.
    const size = Math.min(1 + ((round * 37) % IN_FLIGHT), RECORDS - written)
    const wave = Array.from({ length: size }, () => wal.append(RecordType.Put, payloadOf(++written)))
    await Promise.all(wave)
  }
  const elapsedMs = performance.now() - started
  const stats = wal.stats
  console.log(
    `appended ${RECORDS} records in ${elapsedMs.toFixed(0)} ms with group commit: ` +
      `${stats.commits} commits, ${stats.walSyncs} WAL syncs, ${stats.dwbSyncs} DWB syncs ` +
      `(${stats.dwbBytesWritten} bytes of DWB copies), last LSN ${wal.lastLsn}`,
  )
  console.log(`protection: ${JSON.stringify(wal.protection, (_, v) => (typeof v === 'bigint' ? Number(v) : v))}`)
  await wal.close()

  // ── 2. a torn write ──────────────────────────────────────────────────────────────────
  const torn = tearAtCommitBoundary(walDir)
  console.log(
    `\ntorn write: ${torn.end - torn.start} bytes of acknowledged record LSN ${torn.lsn} overwritten with garbage ` +
      `(${path.basename(torn.file)} bytes ${torn.start}..${torn.end}, in the block commit LSN ${torn.nextCommitLsn} rewrote)`,
  )
  try {
    WalRecord.decode(readFileSync(torn.file).subarray(torn.recordStart, torn.recordEnd))
    console.log('  (the damaged bytes happen to decode; nothing to repair)')
  } catch (error) {
    console.log(`  reading it now fails: ${/** @type {Error & {code: string}} */ (error).code}: ${/** @type {Error} */ (error).message}`)
  }

  // ── 3. recovery ──────────────────────────────────────────────────────────────────────
  const reopened = await Wal.open(walDir, { segmentSize: 4 << 20 })
  const report = reopened.recovery
  console.log('\nrecovery report:', report)
  let intact = 0
  for await (const record of reopened.replay()) {
    if (decoder.decode(record.payload) === decoder.decode(payloadOf(Number(record.lsn)))) intact += 1
  }
  console.log(
    `replayed ${intact} of ${RECORDS} records intact; ${report.repairedFromDwb} repaired from the double-write buffer` +
      (intact === RECORDS && report.repairedFromDwb === 1 ? ' — every record is back.' : ' — UNEXPECTED'),
  )
  await reopened.close()
  if (intact !== RECORDS) process.exitCode = 1

  // ── 4. DoubleWriteBuffer quick-start ─────────────────────────────────────────────────
  const dwbFile = path.join(dir, 'pages.dwb')
  const dwb = await DoubleWriteBuffer.open(dwbFile, { mode: 'buffered' })
  for (let lsn = 1n; lsn <= 5n; lsn++) {
    const record = WalRecord.create({ recordType: RecordType.Put, lsn, payload: encoder.encode(`page image ${lsn}`) })
    dwb.writeRecordDeferred(record) // staged, no I/O
  }
  await dwb.flush() // one write + one sync for all five, off the JS thread
  console.log(`\nDWB ${path.basename(dwbFile)}: ${dwb.capacity} slots of ${dwb.slotStride} bytes, mode ${dwb.mode}; flushed 5 copies`)
  dwb.close()
  const again = await DoubleWriteBuffer.open(dwbFile, { mode: 'buffered' })
  const copy = await again.recoverRecord(3n)
  console.log(`after reopen, recoverRecord(3n) → LSN ${copy?.lsn}: "${decoder.decode(copy?.payload)}"; recoverRecord(99n) → ${await again.recoverRecord(99n)}`)
  again.close()
  console.log(`DWB bytes written by this process: ${dwbBytesWrittenTotal()}`)
} finally {
  if (process.env.DOUBLEWRITE_DEMO_KEEP) console.log(`kept ${dir}`)
  else rmSync(dir, { recursive: true, force: true })
}

/**
 * Finds the last commit that starts inside a block and overwrites, with random bytes, the
 * bytes of the acknowledged record before it that share that block. Segment records start
 * at offset 4096; each has a 56-byte little-endian header: magic "DWAL" at 0, LSN at 12,
 * commit LSN at 20, payload length at 48.
 * @param {string} walDir
 */
function tearAtCommitBoundary(walDir) {
  const segments = readdirSync(walDir).filter((name) => /^wal-\d{20}\.seg$/.test(name)).sort().reverse()
  for (const name of segments) {
    const file = path.join(walDir, name)
    const bytes = readFileSync(file)
    /** @type {{ offset: number, length: number, lsn: bigint, commitLsn: bigint }[]} */
    const records = []
    for (let offset = 4096; offset + 56 <= bytes.length && bytes.toString('latin1', offset, offset + 4) === 'DWAL'; ) {
      const length = 56 + bytes.readUInt32LE(offset + 48)
      const recordType = bytes.readUInt32LE(offset + 8)
      if ((recordType & 0x8000_0000) === 0) {
        records.push({ offset, length, lsn: bytes.readBigUInt64LE(offset + 12), commitLsn: bytes.readBigUInt64LE(offset + 20) })
      }
      offset += length
    }
    for (let i = records.length - 1; i > 0; i--) {
      const victim = /** @type {(typeof records)[number]} */ (records[i - 1])
      const next = /** @type {(typeof records)[number]} */ (records[i])
      if (next.commitLsn === victim.commitLsn || next.offset % BLOCK === 0) continue
      const start = Math.max(Math.floor(next.offset / BLOCK) * BLOCK, victim.offset)
      const fd = openSync(file, 'r+')
      writeSync(fd, randomBytes(next.offset - start), 0, next.offset - start, start)
      closeSync(fd)
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
  throw new Error('no commit starts inside a block')
}
