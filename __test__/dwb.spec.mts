import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { open } from 'node:fs/promises'
import path from 'node:path'

import test from 'ava'
import type { ExecutionContext } from 'ava'

import { DoubleWriteBuffer, DwbMode, RecordType, WalRecord, dwbBytesWrittenTotal, type DwbOptions } from 'doublewrite'

import { bytesOf, coded, probeDirectIo, tempDir, textOf } from './helpers.mjs'

const direct = probeDirectIo()
/** Direct-I/O tests run for real where O_DIRECT works and are reported skipped (with the reason) elsewhere. */
const directTest = direct.ok ? test : test.skip
const directNote = direct.ok ? '' : ` [SKIPPED: ${direct.reason}]`

function rec(lsn: bigint, payload: Uint8Array | string = `record ${lsn}`): WalRecord {
  return WalRecord.create({
    recordType: RecordType.Put,
    lsn,
    tenantId: 1n,
    vshardId: 2,
    databaseId: 3n,
    payload: typeof payload === 'string' ? bytesOf(payload) : payload,
  })
}

/** A record whose encoded size is exactly `size` bytes. */
function recOfSize(lsn: bigint, size: number): WalRecord {
  return rec(lsn, new Uint8Array(size - 56).fill(Number(lsn % 251n)))
}

function dwbPath(t: ExecutionContext, name = 'test.dwb'): string {
  return path.join(tempDir(t, 'dwb'), name)
}

async function openDwb(t: ExecutionContext, file: string, options: DwbOptions = { mode: 'buffered' }): Promise<DoubleWriteBuffer> {
  const dwb = await DoubleWriteBuffer.open(file, options)
  t.teardown(() => dwb.close())
  return dwb
}

test('DwbMode is a typed const object with defaultForParent', (t) => {
  t.deepEqual({ ...DwbMode }, { Off: 'off', Buffered: 'buffered', Direct: 'direct', defaultForParent: DwbMode.defaultForParent })
  t.is(DwbMode.defaultForParent(true), 'direct')
  t.is(DwbMode.defaultForParent(false), 'buffered')
  t.throws(() => DwbMode.defaultForParent(1 as unknown as boolean), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  t.true(Object.isFrozen(DwbMode))
})

test('write and recover: writeRecord makes a copy recoverRecord returns byte for byte', async (t) => {
  const dwb = await openDwb(t, dwbPath(t))
  const record = rec(7n, 'seven')
  t.deepEqual(await dwb.writeRecord(record), { mirrored: true })
  const back = await dwb.recoverRecord(7n)
  t.truthy(back)
  t.deepEqual(back?.encode(), record.encode())
  t.is(back?.tenantId, 1n)
  t.is(back?.vshardId, 2)
  t.is(back?.databaseId, 3n)
  t.is(textOf(back?.payload ?? new Uint8Array()), 'seven')
})

test('a missing LSN recovers as null', async (t) => {
  const dwb = await openDwb(t, dwbPath(t))
  await dwb.writeRecord(rec(1n))
  t.is(await dwb.recoverRecord(2n), null)
  t.is(dwb.recoverRecordSync(2n), null)
  t.is(await dwb.recoverRecord(0n), null)
})

test('copies survive closing and reopening the file', async (t) => {
  const file = dwbPath(t)
  const first = await DoubleWriteBuffer.open(file, { mode: 'buffered' })
  await first.writeRecord(rec(3n, 'three'))
  first.close()
  const second = await openDwb(t, file)
  t.is(textOf((await second.recoverRecord(3n))?.payload ?? new Uint8Array()), 'three')
})

test('five deferred writes then one flush: nothing on disk before, all five recoverable after (and after reopen)', async (t) => {
  const file = dwbPath(t)
  const dwb = await DoubleWriteBuffer.open(file, { mode: 'buffered' })
  for (let lsn = 1n; lsn <= 5n; lsn++) t.deepEqual(dwb.writeRecordDeferred(rec(lsn)), { mirrored: true })
  t.is(dwb.pendingRecords, 5)
  t.is(await dwb.recoverRecord(1n), null, 'unflushed copies are not on disk')
  const before = dwb.bytesWritten
  await dwb.flush()
  t.is(dwb.pendingRecords, 0)
  t.true(dwb.bytesWritten > before)
  for (let lsn = 1n; lsn <= 5n; lsn++) t.is(textOf((await dwb.recoverRecord(lsn))?.payload ?? new Uint8Array()), `record ${lsn}`)
  dwb.close()
  const reopened = await openDwb(t, file)
  for (let lsn = 1n; lsn <= 5n; lsn++) t.truthy(reopened.recoverRecordSync(lsn))
})

test.serial('flush is idempotent: flushing with nothing staged writes no byte', async (t) => {
  const file = dwbPath(t)
  const dwb = await openDwb(t, file)
  dwb.writeRecordDeferred(rec(1n))
  await dwb.flush()
  const fileBefore = readFileSync(file)
  const written = dwb.bytesWritten
  const total = dwbBytesWrittenTotal()
  await dwb.flush()
  dwb.flushSync()
  await dwb.flush()
  t.true(readFileSync(file).equals(fileBefore), 'file unchanged')
  t.is(dwb.bytesWritten, written)
  t.is(dwbBytesWrittenTotal(), total)
})

test('slotStride and every slot offset are block-aligned, and the file is header block + capacity × stride', async (t) => {
  const file = dwbPath(t)
  const dwb = await openDwb(t, file)
  t.is(dwb.capacity, 64)
  t.is(dwb.maxRecordSize, 64 * 1024)
  const stride = dwb.slotStride
  const size = statSync(file).size
  const headerBlock = size - dwb.capacity * stride
  t.true(headerBlock >= 512 && (headerBlock & (headerBlock - 1)) === 0, `header block ${headerBlock} is a power of two`)
  t.is(stride % headerBlock, 0, 'stride is a whole number of blocks')
  t.true(stride >= dwb.maxRecordSize + 24, 'a slot holds its prefix and a max-size record')
  for (let slot = 0; slot < dwb.capacity; slot++) t.is((headerBlock + slot * stride) % headerBlock, 0)
})

test('after capacity + 5 max-size writes the last 5 are recoverable and the first 5 are gone (also after reopen)', async (t) => {
  const file = dwbPath(t)
  const options: DwbOptions = { mode: 'buffered', capacity: 8, maxRecordSize: 4096 }
  const dwb = await DoubleWriteBuffer.open(file, options)
  const writes = BigInt(dwb.capacity + 5)
  for (let lsn = 1n; lsn <= writes; lsn++) t.deepEqual(await dwb.writeRecord(recOfSize(lsn, 4096)), { mirrored: true })
  for (let lsn = 1n; lsn <= 5n; lsn++) t.is(await dwb.recoverRecord(lsn), null, `LSN ${lsn} survived a full wrap`)
  for (let lsn = writes - 4n; lsn <= writes; lsn++) t.truthy(await dwb.recoverRecord(lsn), `LSN ${lsn} lost`)
  dwb.close()
  const reopened = await openDwb(t, file, { mode: 'buffered' })
  t.is(reopened.capacity, 8, 'geometry comes from the file')
  for (let lsn = writes - 4n; lsn <= writes; lsn++) t.truthy(await reopened.recoverRecord(lsn), `LSN ${lsn} lost after reopen`)
})

test.serial('the process-wide bytes counter grows by at least the record written', async (t) => {
  const dwb = await openDwb(t, dwbPath(t))
  const before = dwbBytesWrittenTotal()
  t.is(typeof before, 'bigint')
  await dwb.writeRecord(rec(1n, new Uint8Array(100)))
  t.true(dwbBytesWrittenTotal() >= before + 100n + 56n)
  t.true(dwb.bytesWritten >= 156n)
})

test('a reused LSN recovers as the newest copy, also across a wrap and a reopen', async (t) => {
  const file = dwbPath(t)
  const dwb = await DoubleWriteBuffer.open(file, { mode: 'buffered', capacity: 4, maxRecordSize: 1024 })
  await dwb.writeRecord(rec(9n, 'old'))
  await dwb.writeRecord(rec(9n, 'new'))
  t.is(textOf((await dwb.recoverRecord(9n))?.payload ?? new Uint8Array()), 'new')
  for (let lsn = 10n; lsn < 13n; lsn++) await dwb.writeRecord(rec(lsn))
  await dwb.writeRecord(rec(9n, 'newest'))
  dwb.close()
  const reopened = await openDwb(t, file, { mode: 'buffered' })
  t.is(textOf((await reopened.recoverRecord(9n))?.payload ?? new Uint8Array()), 'newest')
})

test('an oversized record is not mirrored: { mirrored: false, reason: "too-large", size, max } and counted', async (t) => {
  const dwb = await openDwb(t, dwbPath(t), { mode: 'buffered', capacity: 4, maxRecordSize: 1024 })
  const big = recOfSize(5n, 2000)
  t.deepEqual(dwb.writeRecordDeferred(big), { mirrored: false, reason: 'too-large', size: 2000, max: 1024 })
  t.deepEqual(await dwb.writeRecord(big), { mirrored: false, reason: 'too-large', size: 2000, max: 1024 })
  t.is(dwb.skippedRecords, 2n)
  t.is(await dwb.recoverRecord(5n), null)
  t.deepEqual(dwb.writeRecordDeferred(recOfSize(6n, 1024)), { mirrored: true }, 'exactly max fits')
})

test('writeRecordDeferred while flush() is in flight loses nothing', async (t) => {
  const dwb = await openDwb(t, dwbPath(t), { mode: 'buffered', capacity: 64, maxRecordSize: 8192 })
  let lsn = 0n
  const stage = (count: number) => {
    for (let i = 0; i < count; i++) {
      lsn += 1n
      t.deepEqual(dwb.writeRecordDeferred(rec(lsn, new Uint8Array(3000).fill(Number(lsn % 256n)))), { mirrored: true })
    }
  }
  for (let round = 0; round < 20; round++) {
    stage(20)
    const flushing = dwb.flush() // runs on the libuv pool
    stage(10) // staged on the JS thread while that flush runs
    await flushing
  }
  await dwb.flush()
  t.is(dwb.pendingRecords, 0)
  // The ring holds 64 × 8 KiB: the newest copies must all be there, none torn.
  for (let back = 0n; back < 40n; back++) {
    const want = lsn - back
    const copy = await dwb.recoverRecord(want)
    t.truthy(copy, `LSN ${want} lost`)
    t.deepEqual(copy?.payload, new Uint8Array(3000).fill(Number(want % 256n)))
  }
})

test('close() while a flush is in flight: the flush completes, later calls get ERR_DWB_CLOSED', async (t) => {
  const file = dwbPath(t)
  const dwb = await DoubleWriteBuffer.open(file, { mode: 'buffered' })
  for (let lsn = 1n; lsn <= 50n; lsn++) dwb.writeRecordDeferred(rec(lsn, new Uint8Array(2000)))
  const flushing = dwb.flush()
  dwb.close()
  await flushing
  await t.throwsAsync(dwb.flush(), coded(Error, 'ERR_DWB_CLOSED'))
  const reopened = await openDwb(t, file)
  t.truthy(await reopened.recoverRecord(50n))
})

test('several async operations on one buffer at once all complete and agree', async (t) => {
  const dwb = await openDwb(t, dwbPath(t))
  const writes = Array.from({ length: 32 }, (_, i) => dwb.writeRecord(rec(BigInt(i + 1))))
  t.true((await Promise.all(writes)).every((r) => r.mirrored))
  const copies = await Promise.all(Array.from({ length: 32 }, (_, i) => dwb.recoverRecord(BigInt(i + 1))))
  t.true(copies.every((c, i) => c?.lsn === BigInt(i + 1)))
})

test('a damaged slot is never returned: it reads as empty', async (t) => {
  const file = dwbPath(t)
  const dwb = await DoubleWriteBuffer.open(file, { mode: 'buffered' })
  await dwb.writeRecord(rec(1n, 'intact'))
  dwb.close()
  const bytes = readFileSync(file)
  const at = bytes.indexOf('intact')
  t.true(at > 0)
  bytes[at] = 0x49 // 'I'
  writeFileSync(file, bytes)
  const reopened = await openDwb(t, file)
  t.is(await reopened.recoverRecord(1n), null)
})

test('a damaged file header is ERR_DWB_CORRUPT; a foreign file too', async (t) => {
  const file = dwbPath(t)
  DoubleWriteBuffer.openSync(file, { mode: 'buffered' }).close()
  const handle = await open(file, 'r+')
  await handle.write(Buffer.from([0xff]), 0, 1, 10)
  await handle.close()
  await t.throwsAsync(DoubleWriteBuffer.open(file, { mode: 'buffered' }), coded(Error, 'ERR_DWB_CORRUPT'))
  const foreign = path.join(path.dirname(file), 'foreign.dwb')
  writeFileSync(foreign, 'not a double-write buffer'.repeat(1000))
  t.throws(() => DoubleWriteBuffer.openSync(foreign, { mode: 'buffered' }), coded(Error, 'ERR_DWB_CORRUPT'))
})

test('options that contradict the file geometry are ERR_DWB_GEOMETRY', async (t) => {
  const file = dwbPath(t)
  DoubleWriteBuffer.openSync(file, { mode: 'buffered', capacity: 4 }).close()
  await t.throwsAsync(DoubleWriteBuffer.open(file, { mode: 'buffered', capacity: 8 }), coded(Error, 'ERR_DWB_GEOMETRY'))
})

test('bad input: TypeError / RangeError with stable codes, core errors with theirs; nothing crashes', async (t) => {
  const dir = tempDir(t, 'dwb-bad')
  const file = path.join(dir, 'ok.dwb')
  const dwb = await openDwb(t, file)
  // A number where a bigint LSN is expected.
  await t.throwsAsync(dwb.recoverRecord(1 as unknown as bigint), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  t.throws(() => dwb.recoverRecordSync(1 as unknown as bigint), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  // Negative or above 2^64-1.
  await t.throwsAsync(dwb.recoverRecord(-1n), coded(RangeError, 'ERR_OUT_OF_RANGE'))
  await t.throwsAsync(dwb.recoverRecord(2n ** 64n), coded(RangeError, 'ERR_OUT_OF_RANGE'))
  t.throws(() => dwb.recoverRecordSync(2n ** 70n), coded(RangeError, 'ERR_OUT_OF_RANGE'))
  // Not a WalRecord.
  t.throws(() => dwb.writeRecordDeferred({ lsn: 1n } as unknown as WalRecord), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  await t.throwsAsync(dwb.writeRecord(null as unknown as WalRecord), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  // Unknown mode, wrong option types.
  await t.throwsAsync(DoubleWriteBuffer.open(path.join(dir, 'a.dwb'), { mode: 'fast' as DwbMode }), coded(RangeError, 'ERR_INVALID_ARG_VALUE'))
  t.throws(() => DoubleWriteBuffer.openSync(path.join(dir, 'a.dwb'), { mode: 'Buffered' as DwbMode }), coded(RangeError, 'ERR_INVALID_ARG_VALUE'))
  t.throws(() => DoubleWriteBuffer.openSync(path.join(dir, 'a.dwb'), { mode: 1 as unknown as DwbMode }), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  t.throws(() => DoubleWriteBuffer.openSync(path.join(dir, 'a.dwb'), undefined as unknown as DwbOptions), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  t.throws(() => DoubleWriteBuffer.openSync(path.join(dir, 'a.dwb'), { mode: 'buffered', capacity: -1 }), coded(RangeError, 'ERR_OUT_OF_RANGE'))
  t.throws(() => DoubleWriteBuffer.openSync(path.join(dir, 'a.dwb'), { mode: 'buffered', capacity: '8' as unknown as number }), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  t.throws(() => DoubleWriteBuffer.openSync(42 as unknown as string, { mode: 'buffered' }), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  // Out-of-bounds geometry is the core's ERR_INVALID_OPTIONS.
  t.throws(() => DoubleWriteBuffer.openSync(path.join(dir, 'b.dwb'), { mode: 'buffered', capacity: 0 }), coded(Error, 'ERR_INVALID_OPTIONS'))
  // Mode 'off' is refused.
  await t.throwsAsync(DoubleWriteBuffer.open(path.join(dir, 'c.dwb'), { mode: 'off' }), coded(Error, 'ERR_DWB_OFF'))
  // A directory where the file should be.
  mkdirSync(path.join(dir, 'sub'))
  await t.throwsAsync(DoubleWriteBuffer.open(path.join(dir, 'sub'), { mode: 'buffered' }), coded(Error, 'ERR_PATH_IS_DIRECTORY'))
  t.throws(() => DoubleWriteBuffer.openSync(dir, { mode: 'buffered' }), coded(Error, 'ERR_PATH_IS_DIRECTORY'))
  // Still usable after all that.
  t.deepEqual(await dwb.writeRecord(rec(1n)), { mirrored: true })
})

test('after close every call fails with ERR_DWB_CLOSED; close is idempotent; dispose symbols close', async (t) => {
  const file = dwbPath(t)
  const dwb = await DoubleWriteBuffer.open(file, { mode: 'buffered' })
  t.true(dwb.isOpen())
  dwb.close()
  dwb.close()
  t.false(dwb.isOpen())
  const closed = coded(Error, 'ERR_DWB_CLOSED')
  t.throws(() => dwb.writeRecordDeferred(rec(1n)), closed)
  await t.throwsAsync(dwb.writeRecord(rec(1n)), closed)
  t.throws(() => dwb.writeRecordSync(rec(1n)), closed)
  await t.throwsAsync(dwb.flush(), closed)
  t.throws(() => dwb.flushSync(), closed)
  await t.throwsAsync(dwb.recoverRecord(1n), closed)
  t.throws(() => dwb.recoverRecordSync(1n), closed)
  for (const getter of ['mode', 'path', 'capacity', 'slotStride', 'maxRecordSize', 'skippedRecords', 'bytesWritten', 'pendingRecords'] as const) {
    t.throws(() => dwb[getter], closed, getter)
  }
  const viaDispose = DoubleWriteBuffer.openSync(file, { mode: 'buffered' })
  viaDispose[Symbol.dispose]()
  t.false(viaDispose.isOpen())
  const viaAsyncDispose = DoubleWriteBuffer.openSync(file, { mode: 'buffered' })
  await viaAsyncDispose[Symbol.asyncDispose]()
  t.false(viaAsyncDispose.isOpen())
})

test('the sync twins do what the async forms do', (t) => {
  const file = dwbPath(t)
  const dwb = DoubleWriteBuffer.openSync(file, { mode: 'buffered' })
  t.teardown(() => dwb.close())
  t.is(dwb.mode, 'buffered')
  t.is(dwb.path, file)
  t.deepEqual(dwb.writeRecordSync(rec(4n)), { mirrored: true })
  dwb.writeRecordDeferred(rec(5n))
  dwb.flushSync()
  t.is(dwb.recoverRecordSync(4n)?.lsn, 4n)
  t.is(dwb.recoverRecordSync(5n)?.lsn, 5n)
})

directTest(`direct mode writes and recovers for real${directNote}`, async (t) => {
  const dwb = await openDwb(t, dwbPath(t), { mode: 'direct' })
  t.is(dwb.mode, 'direct')
  for (let lsn = 1n; lsn <= 10n; lsn++) dwb.writeRecordDeferred(rec(lsn, new Uint8Array(Number(lsn) * 300).fill(7)))
  await dwb.flush()
  for (let lsn = 1n; lsn <= 10n; lsn++) t.is((await dwb.recoverRecord(lsn))?.payload.length, Number(lsn) * 300)
})

directTest(`buffered and direct read each other's files${directNote}`, async (t) => {
  const dir = tempDir(t, 'dwb-modes')
  const fromBuffered = path.join(dir, 'buffered.dwb')
  const fromDirect = path.join(dir, 'direct.dwb')
  const b = await DoubleWriteBuffer.open(fromBuffered, { mode: 'buffered' })
  await b.writeRecord(rec(11n, 'written buffered'))
  b.close()
  const d = await DoubleWriteBuffer.open(fromDirect, { mode: 'direct' })
  await d.writeRecord(rec(12n, 'written direct'))
  d.close()
  const readDirect = await openDwb(t, fromBuffered, { mode: 'direct' })
  t.is(textOf((await readDirect.recoverRecord(11n))?.payload ?? new Uint8Array()), 'written buffered')
  const readBuffered = await openDwb(t, fromDirect, { mode: 'buffered' })
  t.is(textOf((await readBuffered.recoverRecord(12n))?.payload ?? new Uint8Array()), 'written direct')
})
