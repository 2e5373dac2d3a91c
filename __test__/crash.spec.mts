// Crash and damage: records torn on disk the way a torn write leaves them, and a real
// process SIGKILLed while it appends as fast as it can.

import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { openSync, closeSync, writeSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import test from 'ava'
import type { ExecutionContext } from 'ava'

import { RecordType, Wal, type WalOptions } from 'doublewrite'

import { payloadFor, sameBytes } from './fixtures/payload.mjs'
import { parseSegment, readSegment, segmentFiles, tempDir, type SegmentRecord } from './helpers.mjs'

const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures')
const PROTECTION_BLOCK = 4096

interface Tear {
  file: string
  /** The acknowledged record whose bytes were overwritten. */
  victim: SegmentRecord
  start: number
  end: number
}

/**
 * Tears the block where a later commit started: when commit C begins in the middle of a
 * block, writing C rewrote that block, which also holds the tail of the acknowledged
 * record just before C. A torn write of that block leaves garbage in those bytes. This
 * overwrites them (from the start of the block or of the record, whichever is later, up
 * to where C begins) with random bytes: header bytes too when the record starts there.
 */
function tearLastCommitBoundary(dir: string, pick: (boundaries: number) => number = (n) => n - 1): Tear {
  for (const file of segmentFiles(dir).reverse()) {
    const records = parseSegment(readSegment(file)).filter((r) => !r.padding)
    const boundaries: number[] = []
    for (let i = 1; i < records.length; i++) {
      const previous = records[i - 1] as SegmentRecord
      const current = records[i] as SegmentRecord
      const sharesBlock = Math.floor(previous.offset / PROTECTION_BLOCK) === Math.floor(current.offset / PROTECTION_BLOCK) || current.offset % PROTECTION_BLOCK !== 0
      if (current.commitLsn !== previous.commitLsn && current.offset % PROTECTION_BLOCK !== 0 && sharesBlock) boundaries.push(i)
    }
    if (boundaries.length === 0) continue
    const index = boundaries[pick(boundaries.length)] as number
    const victim = records[index - 1] as SegmentRecord
    const next = records[index] as SegmentRecord
    const blockStart = Math.floor(next.offset / PROTECTION_BLOCK) * PROTECTION_BLOCK
    const start = Math.max(blockStart, victim.offset)
    const end = next.offset
    const fd = openSync(file, 'r+')
    try {
      writeSync(fd, randomBytes(end - start), 0, end - start, start)
    } finally {
      closeSync(fd)
    }
    return { file, victim, start, end }
  }
  throw new Error(`no commit in ${dir} starts inside a block`)
}

async function replayChecked(t: ExecutionContext, wal: Wal, fromLsn = 0n): Promise<bigint[]> {
  const lsns: bigint[] = []
  for await (const record of wal.replay({ fromLsn })) {
    lsns.push(record.lsn)
    if (!sameBytes(record.payload, payloadFor(record.lsn))) t.fail(`record ${record.lsn} replayed with the wrong payload`)
  }
  return lsns
}

const range = (from: bigint, to: bigint) => Array.from({ length: Number(to - from + 1n) }, (_, i) => from + BigInt(i))

for (const [label, options] of [
  ['separate commits', { rounds: Array.from({ length: 12 }, () => 1) }],
  // A group of 40 small records pads its commit to a block boundary ('mirror' does when that
  // costs at most a quarter of the commit), leaving nothing at risk: the lone appends between
  // the groups leave an acknowledged record in a shared block for the next group to rewrite.
  ['group commits of 40 concurrent appends, a lone append between them', { rounds: [40, 1, 40, 1, 40] }],
] as const) {
  test(`an acknowledged record torn on disk (${label}) is repaired from the DWB on reopen: repairedFromDwb === 1, every record replayed intact`, async (t) => {
    const dir = tempDir(t, 'tear')
    const wal = await Wal.open(dir, { segmentSize: 1 << 20 })
    let lsn = 0n
    for (const size of options.rounds) {
      const batch = Array.from({ length: size }, () => (lsn += 1n))
      const acknowledged = await Promise.all(batch.map((l) => wal.append(RecordType.Put, payloadFor(l))))
      t.deepEqual(acknowledged, batch)
    }
    t.is(wal.stats.unprotectedRecords, 0n)
    await wal.close()

    const tear = tearLastCommitBoundary(dir)
    t.log(`tore LSN ${tear.victim.lsn}: bytes ${tear.start}..${tear.end} of ${path.basename(tear.file)} (record at ${tear.victim.offset}, ${tear.victim.length} bytes)`)

    const reopened = await Wal.open(dir, { segmentSize: 1 << 20 })
    t.teardown(() => reopened.close())
    t.is(reopened.recovery.repairedFromDwb, 1)
    t.is(reopened.recovery.records, Number(lsn))
    t.is(reopened.recovery.lastLsn, lsn)
    t.deepEqual(await replayChecked(t, reopened), range(1n, lsn))
    // The repair was written back: appending continues right after, and a second reopen
    // finds nothing left to repair.
    t.is(await reopened.append(RecordType.Put, payloadFor(lsn + 1n)), lsn + 1n)
    await reopened.close()
    const again = await Wal.open(dir, { segmentSize: 1 << 20 })
    t.is(again.recovery.repairedFromDwb, 0)
    t.deepEqual(await replayChecked(t, again), range(1n, lsn + 1n))
    t.is(again.stats.unprotectedRecords, 0n)
    await again.close()
  })
}

// ─── the real-process kill test ────────────────────────────────────────────────────────

const KILL_ROUNDS = Number(process.env.DOUBLEWRITE_KILL_ROUNDS ?? 50)
const CONCURRENCY = 64

interface RoundResult {
  acknowledged: bigint[]
  signal: NodeJS.Signals | null
  code: number | null
  stderr: string
  sawReady: boolean
  /** The child's WAL committed idle awaited appends through the kernel (`wal.io`). */
  kernel: boolean
}

/**
 * Runs the appender child and SIGKILLs it at a random moment: usually 0–250 ms after it
 * reported ready (while appending), sometimes 0–120 ms after spawning (possibly during
 * its own open and recovery).
 */
function runAndKill(dir: string, options: WalOptions, early: boolean, mode: 'async' | 'sync', concurrency = CONCURRENCY): Promise<RoundResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(fixtures, 'crash-child.mjs'), dir, String(concurrency), JSON.stringify(options), mode], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    let sawReady = false
    const kill = () => child.kill('SIGKILL')
    if (early) setTimeout(kill, Math.random() * 120)
    child.stdout.setEncoding('utf8')
    child.stderr.setEncoding('utf8')
    child.stdout.on('data', (chunk: string) => {
      stdout += chunk
      if (!sawReady && stdout.includes('\n')) {
        sawReady = true
        if (!early) setTimeout(kill, Math.random() * 250)
      }
    })
    child.stderr.on('data', (chunk: string) => (stderr += chunk))
    child.once('error', reject)
    child.once('close', (code, signal) => {
      const lines = stdout.split('\n')
      lines.pop() // an incomplete last line (none expected: each line is one pipe write)
      const acknowledged = lines.filter((line) => !line.startsWith('ready')).map((line) => BigInt(line))
      const kernel = lines[0]?.startsWith('ready') === true && lines[0].endsWith(' kernel')
      resolve({ acknowledged, signal, code, stderr, sawReady, kernel })
    })
  })
}

// `async`: 64 awaited appends in flight (group commits on the commit thread). `sync`:
// appendSync, committed on the child's JS thread when idle and queued behind an async
// append every fourth time. Every fourth round of each mode the child opens with
// `tailProtection: 'pad'` and its defaults (O_DIRECT segments where the file system takes
// them, idle awaited appends committed through the kernel: one append in flight at a time
// in async mode, so that each commit takes that path), the same directory reopened with
// the defaults after it.
for (const [mode, rounds] of [
  ['async', KILL_ROUNDS],
  ['sync', Math.ceil(KILL_ROUNDS / 2)],
] as const) {
  test.serial(`SIGKILL at a random moment (${mode} appends), ${rounds} rounds: every LSN a child printed as acknowledged is replayed intact, and the WAL always reopens`, async (t) => {
    t.timeout(180_000)
    const dir = tempDir(t, `kill-${mode}`)
    const options: WalOptions = { segmentSize: 512 * 1024 }
    let maxAcknowledged = 0n
    let verifiedThrough = 0n
    let totalAcknowledged = 0
    let killedDuringAppends = 0
    let kernelRounds = 0
    const started = Date.now()
    for (let round = 0; round < rounds; round++) {
      // Every other async round the child busy-polls: its kills also land on a spinning loop.
      const childOptions: WalOptions = {
        ...options,
        ...(mode === 'async' && round % 2 === 1 ? { busyPoll: true } : {}),
        ...(round % 4 === 2 ? { tailProtection: 'pad' as const } : {}),
      }
      const pad = childOptions.tailProtection === 'pad'
      const result = await runAndKill(dir, childOptions, round % 5 === 4, mode, pad && mode === 'async' ? 1 : CONCURRENCY)
      if (result.signal !== 'SIGKILL') {
        t.fail(`round ${round}: the child was not killed but exited with ${result.code}: ${result.stderr}`)
        return
      }
      if (result.stderr !== '') t.log(`round ${round} child stderr: ${result.stderr}`)
      if (result.acknowledged.length > 0) killedDuringAppends += 1
      if (result.kernel) kernelRounds += 1
      totalAcknowledged += result.acknowledged.length
      for (const lsn of result.acknowledged) if (lsn > maxAcknowledged) maxAcknowledged = lsn

      // The WAL must open after every kill, and hold every acknowledged record.
      const wal = await Wal.open(dir, options)
      const report = wal.recovery
      t.true(report.lastLsn >= maxAcknowledged, `round ${round}: lastLsn ${report.lastLsn} < acknowledged ${maxAcknowledged}`)
      t.is(BigInt(report.records), report.lastLsn - report.firstLsn + 1n, `round ${round}: no gap`)
      // Check every record the log gained since the last round, and the tail of the last
      // round again (that is what the reopen after a kill touches).
      const from = verifiedThrough > 500n ? verifiedThrough - 500n : 1n
      const lsns = await replayChecked(t, wal, from)
      t.deepEqual(lsns.length, Number(report.lastLsn - from + 1n), `round ${round}: replay from ${from} is contiguous`)
      t.is(lsns.at(-1) ?? 0n, report.lastLsn)
      const present = new Set(lsns)
      for (const lsn of result.acknowledged) if (!present.has(lsn)) t.fail(`round ${round}: acknowledged LSN ${lsn} missing`)
      t.is(wal.stats.unprotectedRecords, 0n)
      verifiedThrough = report.lastLsn
      await wal.close()
    }
    // A final full pass over everything that was ever written.
    const wal = await Wal.open(dir, options)
    t.deepEqual(await replayChecked(t, wal), range(1n, wal.recovery.lastLsn))
    await wal.close()
    t.log(`${rounds} rounds in ${((Date.now() - started) / 1000).toFixed(1)} s: ${totalAcknowledged} acknowledged appends, ${killedDuringAppends} rounds killed mid-append, ${kernelRounds} opened with kernel completion, log ends at LSN ${verifiedThrough}`)
    t.true(killedDuringAppends >= rounds / 2, 'most kills hit a child that was appending')
  })
}
