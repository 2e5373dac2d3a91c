import { spawn } from 'node:child_process'
import { once } from 'node:events'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { Worker } from 'node:worker_threads'

import test from 'ava'

import { Wal, dwbBytesWrittenTotal } from 'doublewrite'

import { probeDirectIo, tempDir } from './helpers.mjs'

const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures')

function runWorker<T>(file: string, workerData: unknown): Promise<T> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(path.join(fixtures, file), { workerData })
    let message: T | undefined
    worker.once('message', (m: T) => (message = m))
    worker.once('error', reject)
    worker.once('exit', (code) => (code === 0 && message !== undefined ? resolve(message) : reject(new Error(`worker exited with ${code}`))))
  })
}

interface DwbWorkerResult {
  bytesWritten: bigint
  totalSeen: bigint
  recoveredLength: number
}

test.serial('dwbBytesWrittenTotal counts the writes of two worker threads, each with its own addon instance and buffer', async (t) => {
  const dir = tempDir(t, 'workers')
  const before = dwbBytesWrittenTotal()
  const [a, b] = await Promise.all([
    runWorker<DwbWorkerResult>('dwb-worker.mjs', { file: path.join(dir, 'a.dwb'), records: 20, payloadBytes: 1000 }),
    runWorker<DwbWorkerResult>('dwb-worker.mjs', { file: path.join(dir, 'b.dwb'), records: 30, payloadBytes: 2000 }),
  ])
  t.is(a.recoveredLength, 1000)
  t.is(b.recoveredLength, 2000)
  t.true(a.bytesWritten >= 20n * (1000n + 56n))
  t.true(b.bytesWritten >= 30n * (2000n + 56n))
  const delta = dwbBytesWrittenTotal() - before
  // The main thread wrote nothing: everything counted here was written by the workers.
  t.true(delta >= a.bytesWritten + b.bytesWritten, `process-wide delta ${delta} < ${a.bytesWritten} + ${b.bytesWritten}`)
  // Each worker reads the same process-wide counter, which includes at least its own writes.
  t.true(a.totalSeen - before >= a.bytesWritten)
  t.true(b.totalSeen - before >= b.bytesWritten)
})

test('an open from a worker thread fails with ERR_LOCKED while the main thread holds the WAL, and succeeds after close', async (t) => {
  const dir = tempDir(t, 'workers')
  const wal = await Wal.open(dir, { segmentSize: 1 << 20 })
  const locked = await runWorker<{ ok: boolean; code?: string; name?: string }>('wal-open.mjs', { dir })
  t.like(locked, { ok: false, code: 'ERR_LOCKED', name: 'Error' })
  await wal.close()
  const free = await runWorker<{ ok: boolean }>('wal-open.mjs', { dir })
  t.like(free, { ok: true })
})

interface WalWorkerResult {
  threadId: number
  lastLsn: bigint
  syncLastLsn: bigint
  commits: bigint
  walDwbBytes: bigint
  dwbBytes: bigint
  recoveredLength: number
  totalSeen: bigint
}

test.serial('four workers at once, each with its own WAL directory and DWB: all load the addon, none sees another, the process-wide counter counts them all', async (t) => {
  const dir = tempDir(t, 'workers-many')
  const before = dwbBytesWrittenTotal()
  const records = 64
  const results = await Promise.all(
    [1, 2, 3, 4].map((n) =>
      runWorker<WalWorkerResult>('wal-worker.mjs', {
        walDir: path.join(dir, `wal-${n}`),
        dwbFile: path.join(dir, `pages-${n}.dwb`),
        records,
        payloadBytes: 100 * n,
      }),
    ),
  )
  t.is(new Set(results.map((r) => r.threadId)).size, 4, 'four distinct worker threads')
  let written = 0n
  for (const [i, r] of results.entries()) {
    t.is(r.lastLsn, BigInt(records), `worker ${i + 1}: its own WAL, LSNs 1..${records}`)
    t.is(r.syncLastLsn, BigInt(records + 8), `worker ${i + 1}: its appendSync calls follow`)
    t.true(r.commits >= 1n && r.commits <= BigInt(records))
    t.is(r.recoveredLength, 100 * (i + 1), `worker ${i + 1}: its own DWB`)
    // (A WAL's DWB bytes can be 0: its one group commit may end on a block boundary,
    // leaving nothing a later write could tear.)
    t.true(r.dwbBytes > 0n)
    t.true(r.totalSeen - before >= r.walDwbBytes + r.dwbBytes, 'each worker sees at least its own writes in the process-wide counter')
    written += r.walDwbBytes + r.dwbBytes
  }
  const delta = dwbBytesWrittenTotal() - before
  t.true(delta >= written, `process-wide delta ${delta} < ${written} written by the workers' WALs and buffers`)
  // Every worker's WAL is intact and closed: the main thread opens each and replays it.
  for (const [i, r] of results.entries()) {
    const wal = await Wal.open(path.join(dir, `wal-${i + 1}`), { segmentSize: 1 << 20, prepareSegments: false })
    const payloads = [...wal.replaySync()].map((record) => record.payload)
    t.is(payloads.length, records + 8)
    t.true(payloads.every((p) => p.length === 100 * (i + 1) && p.every((b) => b === (r.threadId & 0xff))))
    await wal.close()
  }
})

test('workers terminated in the middle of WAL appends and DWB flushes do not crash the process; the WAL reopens with every acknowledged LSN', async (t) => {
  const dir = tempDir(t, 'workers-terminate')
  const rounds = 15
  // A child process: if the addon aborted on termination, the child would die by a signal
  // instead of failing one assertion here.
  // Where direct I/O works, every third round commits through the kernel (kernelCompletion).
  const kernel = probeDirectIo().ok ? ['kernel'] : []
  const child = spawn(process.execPath, [path.join(fixtures, 'terminate-child.mjs'), dir, String(rounds), ...kernel], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
  const [code, signal] = (await once(child, 'close')) as [number | null, NodeJS.Signals | null]
  t.is(signal, null, `the child died by ${signal}: ${stderr}`)
  t.is(code, 0, stderr)
  const summary = JSON.parse(stdout) as { rounds: number; terminatedAppending: number; terminatedFlushing: number; acknowledged: number; flushes: number }
  t.is(summary.rounds, rounds)
  t.log(
    `${rounds} rounds: ${summary.acknowledged} appends acknowledged before a termination (${summary.terminatedAppending} rounds), ` +
      `${summary.flushes} flushes (${summary.terminatedFlushing} rounds)`,
  )
  // Appends and flushes are in flight from the moment a worker reports ready; these count
  // the rounds where some had already completed, so the termination met a running loop.
  t.true(summary.terminatedAppending + summary.terminatedFlushing > 0, 'some terminations hit a worker mid-loop')
})
