// A consumer of the published package, as CommonJS: compiled with `strict` against the
// published types (index.d.ts) by scripts/test-pack.mjs in a directory where only the
// packed tarballs are installed, then run there: commit, recovery, replay, a DWB round trip.

import assert = require('node:assert/strict')
import fs = require('node:fs')
import os = require('node:os')
import path = require('node:path')

import doublewrite = require('doublewrite')

const { DoubleWriteBuffer, RecordType, Wal, WalRecord } = doublewrite

async function run(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'doublewrite-consumer-cjs-'))
  try {
    const walDir = path.join(dir, 'wal')
    const options: doublewrite.WalOptions = { segmentSize: 1 << 20 }
    const encoder = new TextEncoder()
    const wal = await Wal.open(walDir, options)
    for (let i = 1; i <= 50; i++) {
      const lsn: bigint = await wal.append(RecordType.Put, encoder.encode(`cjs record ${i}`), { tenantId: 3n })
      assert.equal(lsn, BigInt(i))
    }
    const batch: bigint[] = await wal.appendBatch([
      { recordType: RecordType.Put, payload: encoder.encode('cjs record 51') },
      { recordType: RecordType.Delete, payload: encoder.encode('cjs record 52'), vshardId: 2 },
    ])
    assert.deepEqual(batch, [51n, 52n])
    await wal.close()

    const reopened = Wal.openSync(walDir, options)
    const report: doublewrite.RecoveryReport = reopened.recovery
    assert.equal(report.records, 52)
    const records = [...reopened.replaySync()]
    assert.equal(records.length, 52)
    assert.equal(records[0]?.tenantId, 3n)
    reopened.closeSync()

    const dwb = await DoubleWriteBuffer.open(path.join(dir, 'pages.dwb'), { mode: 'buffered', capacity: 8 })
    const outcome: doublewrite.MirrorResult = dwb.writeRecordSync(
      WalRecord.create({ recordType: RecordType.Put, lsn: 9n, payload: encoder.encode('page 9') }),
    )
    assert.equal(outcome.mirrored, true)
    assert.equal((await dwb.recoverRecord(9n))?.lsn, 9n)
    dwb.close()
    console.log(JSON.stringify({ module: 'cjs', records: records.length, repairedFromDwb: report.repairedFromDwb }))
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

run().catch((error: unknown) => {
  console.error(error)
  process.exitCode = 1
})
