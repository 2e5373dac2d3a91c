import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { Worker } from 'node:worker_threads'

import test from 'ava'

import { Wal, dwbBytesWrittenTotal } from 'doublewrite'

import { tempDir } from './helpers.mjs'

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
