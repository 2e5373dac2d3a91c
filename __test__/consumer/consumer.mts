// A consumer of the published package, as ESM: compiled with `strict` against the
// published types (index.d.mts, cli/main.d.ts) by scripts/test-pack.mjs in a directory
// where only the packed tarballs are installed, then run there. It commits, recovers,
// checks that `import` and `require` share one module instance, and that the addon was
// loaded from the platform package.

import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { Writable } from 'node:stream'

import {
  DoubleWriteBuffer,
  type DoublewriteError,
  DwbMode,
  RecordType,
  type RecoveryReport,
  Wal,
  type WalOptions,
  WalRecord,
  dwbBytesWrittenTotal,
} from 'doublewrite'
import { main } from 'doublewrite/cli'

const dir = mkdtempSync(path.join(tmpdir(), 'doublewrite-consumer-esm-'))
try {
  const walDir = path.join(dir, 'wal')
  const options: WalOptions = { segmentSize: 1 << 20, dwbMode: DwbMode.Buffered }
  const encoder = new TextEncoder()
  const wal = await Wal.open(walDir, options)
  const lsns: bigint[] = await Promise.all(
    Array.from({ length: 100 }, (_, i) => wal.append(RecordType.Put, encoder.encode(`esm record ${i + 1}`))),
  )
  assert.equal(lsns.length, 100)
  assert.equal(wal.stats.records, 100n)
  await wal.close()

  await using reopened = await Wal.open(walDir, options)
  const report: RecoveryReport = reopened.recovery
  assert.equal(report.records, 100)
  assert.equal(report.lastLsn, 100n)
  const decoder = new TextDecoder()
  let replayed = 0
  for await (const record of reopened.replay()) {
    replayed += 1
    assert.equal(decoder.decode(record.payload), `esm record ${record.lsn}`)
  }
  assert.equal(replayed, 100)
  await reopened.close()

  // The command line's programmatic entry: the WAL verifies clean (exit code 0).
  let output = ''
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      output += chunk.toString()
      done()
    },
  })
  const exitCode: number = await main(['verify', walDir, '--json'], { stdout: sink, stderr: process.stderr })
  assert.equal(exitCode, 0, output)
  assert.equal((JSON.parse(output) as { verdict: string }).verdict, 'clean')

  // DoubleWriteBuffer: one flush, then recovery by LSN.
  const dwb = DoubleWriteBuffer.openSync(path.join(dir, 'pages.dwb'), { mode: 'buffered' })
  dwb.writeRecordDeferred(WalRecord.create({ recordType: RecordType.Put, lsn: 7n, payload: encoder.encode('page 7') }))
  await dwb.flush()
  const copy = await dwb.recoverRecord(7n)
  assert.equal(copy === null ? null : decoder.decode(copy.payload), 'page 7')
  dwb.close()
  assert.ok(dwbBytesWrittenTotal() > 0n)

  // Errors carry codes, typed.
  try {
    await Wal.open(walDir, { dwbMode: 'sideways' as DwbMode })
    assert.fail('an unknown mode was accepted')
  } catch (error) {
    assert.equal((error as DoublewriteError).code, 'ERR_INVALID_ARG_VALUE')
  }

  // `import` and `require` give the same module instance.
  const require = createRequire(import.meta.url)
  const required = require('doublewrite') as typeof import('doublewrite')
  assert.equal(required.Wal, Wal)

  // The addon is the platform package's, not something found elsewhere.
  const loaded = (process.report.getReport() as { sharedObjects: string[] }).sharedObjects.filter((file) => file.endsWith('.node'))
  console.log(JSON.stringify({ module: 'esm', records: replayed, recovery: report.durationMs >= 0, addons: loaded }))
} finally {
  rmSync(dir, { recursive: true, force: true })
}
