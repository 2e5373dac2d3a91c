import { execFile } from 'node:child_process'
import { existsSync, readdirSync, statfsSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

import test from 'ava'
import type { ExecutionContext } from 'ava'

import { RecordType, Wal, WalRecord, type DwbMode, type Protection, type TailProtection, type WalOptions } from 'doublewrite'

import { bytesOf, coded, probeDirectIo, segmentFiles, tempDir, textOf } from './helpers.mjs'

const execFileAsync = promisify(execFile)
const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures')

const direct = probeDirectIo()
const directTest = direct.ok ? test : test.skip
const directNote = direct.ok ? '' : ` [SKIPPED: ${direct.reason}]`

/** Small segments: quick to create, and they roll. */
const SMALL: WalOptions = { segmentSize: 1 << 20 }

async function openWal(t: ExecutionContext, dir: string, options: WalOptions = SMALL): Promise<Wal> {
  const wal = await Wal.open(dir, options)
  t.teardown(() => wal.close())
  return wal
}

/** Every test ends with this: no record was ever acknowledged without protection. */
function assertProtected(t: ExecutionContext, wal: Wal): void {
  t.is(wal.stats.unprotectedRecords, 0n, 'stats.unprotectedRecords')
  t.is(wal.protection.unprotectedRecords, 0n, 'protection.unprotectedRecords')
}

async function replayAll(wal: Wal, fromLsn?: bigint): Promise<WalRecord[]> {
  const out: WalRecord[] = []
  for await (const record of wal.replay(fromLsn === undefined ? {} : { fromLsn })) out.push(record)
  return out
}

/** The bytes plaintext records of these payloads take in a segment (56-byte headers). */
const recordBytes = (payloads: Uint8Array[]): bigint => payloads.reduce((sum, p) => sum + 56n + BigInt(p.length), 0n)

test('64 concurrent appends each get their own distinct LSN, share few commits, and are all replayed', async (t) => {
  const wal = await openWal(t, tempDir(t, 'wal'))
  const appends = Array.from({ length: 64 }, (_, i) => wal.append(RecordType.Put, bytesOf(`record ${i}`), { tenantId: BigInt(i), vshardId: i, databaseId: 7n }))
  const lsns = await Promise.all(appends)
  t.is(new Set(lsns).size, 64)
  t.deepEqual(
    [...lsns].sort((a, b) => Number(a - b)),
    Array.from({ length: 64 }, (_, i) => BigInt(i + 1)),
  )
  // Appends made in one tick get LSNs in call order.
  t.deepEqual(lsns, Array.from({ length: 64 }, (_, i) => BigInt(i + 1)))
  const stats = wal.stats
  t.is(stats.records, 64n)
  t.true(stats.commits < 64n, `group commit: ${stats.commits} commits for 64 appends`)
  t.is(stats.walSyncs, stats.commits)
  // 'mirror': at most one DWB sync per commit (none for a commit that pads to a block for
  // at most a quarter of its bytes), overlapped with the WAL sync (the previous commit's
  // flush holds the copies each WAL write puts at risk) unless it is the session's first or
  // its flush would wrap onto a page of the previous one.
  t.true(stats.dwbSyncs > 0n && stats.dwbSyncs <= stats.commits, `${stats.dwbSyncs} DWB syncs for ${stats.commits} commits`)
  t.true(stats.overlappedSyncs >= stats.dwbSyncs - 1n, `${stats.overlappedSyncs} of ${stats.dwbSyncs}`)
  t.true(stats.paddingBytes * 4n <= recordBytes(Array.from({ length: 64 }, (_, i) => bytesOf(`record ${i}`))), `${stats.paddingBytes} padding bytes`)
  const records = await replayAll(wal)
  t.is(records.length, 64)
  records.forEach((record, i) => {
    t.is(record.lsn, BigInt(i + 1))
    t.is(textOf(record.payload), `record ${i}`)
    t.is(record.tenantId, BigInt(i))
    t.is(record.vshardId, i)
    t.is(record.databaseId, 7n)
    t.is(record.recordType, RecordType.Put)
  })
  assertProtected(t, wal)
})

test('appendBatch is one commit with consecutive LSNs in order', async (t) => {
  const wal = await openWal(t, tempDir(t, 'wal'))
  await wal.append(RecordType.Put, bytesOf('first'))
  const commitsBefore = wal.stats.commits
  const lsns = await wal.appendBatch([
    { recordType: RecordType.Put, payload: bytesOf('a') },
    { recordType: RecordType.Delete, payload: bytesOf('b'), tenantId: 5n },
    { recordType: RecordType.Metadata, payload: new Uint8Array(0) },
  ])
  t.deepEqual(lsns, [2n, 3n, 4n])
  t.is(wal.stats.commits, commitsBefore + 1n)
  const records = await replayAll(wal, 2n)
  t.deepEqual(
    records.map((r) => [r.lsn, r.commitLsn, r.recordType, textOf(r.payload)]),
    [
      [2n, 2n, RecordType.Put, 'a'],
      [3n, 2n, RecordType.Delete, 'b'],
      [4n, 2n, RecordType.Metadata, ''],
    ],
  )
  t.is(records[1]?.tenantId, 5n)
  t.deepEqual(await wal.appendBatch([]), [])
  assertProtected(t, wal)
})

test('append copies the payload at call time: reusing the buffer right away is safe', async (t) => {
  const wal = await openWal(t, tempDir(t, 'wal'))
  const scratch = new Uint8Array(4)
  const appends: Promise<bigint>[] = []
  for (let i = 0; i < 10; i++) {
    scratch.fill(i)
    appends.push(wal.append(RecordType.Put, scratch))
  }
  await Promise.all(appends)
  const records = await replayAll(wal)
  t.deepEqual(
    records.map((r) => r.payload[0]),
    Array.from({ length: 10 }, (_, i) => i),
  )
})

test('appendSync and appendBatchSync are durable on return and keep call order with async appends', async (t) => {
  const wal = await openWal(t, tempDir(t, 'wal'))
  const pending = wal.append(RecordType.Put, bytesOf('async first'))
  t.is(wal.appendSync(RecordType.Put, bytesOf('sync second')), 2n)
  t.deepEqual(wal.appendBatchSync([{ recordType: RecordType.Put, payload: bytesOf('x') }, { recordType: RecordType.Put, payload: bytesOf('y') }]), [3n, 4n])
  t.is(await pending, 1n)
  t.is(wal.lastLsn, 4n)
  t.is(wal.nextLsn, 5n)
  t.deepEqual(
    [...wal.replaySync()].map((r) => textOf(r.payload)),
    ['async first', 'sync second', 'x', 'y'],
  )
})

test('appendSync alternating between an idle writer (after an awaited append) and one with an append in flight keeps call order', async (t) => {
  const wal = await openWal(t, tempDir(t, 'wal'))
  const expected: string[] = []
  let last = 0n
  for (let i = 0; i < 60; i++) {
    const pending = wal.append(RecordType.Put, bytesOf(`async ${i}`))
    expected.push(`async ${i}`)
    // Every other round the writer is idle when appendSync runs; otherwise the append above is
    // still staged or committing and appendSync must land after it.
    if (i % 2 === 0) t.is(await pending, last + 1n)
    const lsn = wal.appendSync(RecordType.Put, bytesOf(`sync ${i}`))
    expected.push(`sync ${i}`)
    t.is(lsn, last + 2n)
    if (i % 2 === 1) t.is(await pending, last + 1n)
    last = lsn
  }
  t.is(wal.lastLsn, 120n)
  t.deepEqual(
    [...wal.replaySync()].map((r) => textOf(r.payload)),
    expected,
  )
})

test('replay: async and sync iterators, from an LSN, in small batches, and early exit', async (t) => {
  const wal = await openWal(t, tempDir(t, 'wal'))
  await wal.appendBatch(Array.from({ length: 300 }, (_, i) => ({ recordType: RecordType.Put, payload: bytesOf(String(i + 1)) })))
  const all = await replayAll(wal)
  t.is(all.length, 300)
  t.true(all.every((r, i) => r.lsn === BigInt(i + 1) && textOf(r.payload) === String(i + 1)))
  const fromAsync: bigint[] = []
  for await (const record of wal.replay({ fromLsn: 250n, batchSize: 7 })) fromAsync.push(record.lsn)
  t.deepEqual(fromAsync, Array.from({ length: 51 }, (_, i) => BigInt(250 + i)))
  const fromSync = [...wal.replaySync({ fromLsn: 299n, batchSize: 1 })].map((r) => r.lsn)
  t.deepEqual(fromSync, [299n, 300n])
  let seen = 0
  for await (const record of wal.replay()) {
    seen += 1
    if (record.lsn === 10n) break
  }
  t.is(seen, 10)
  // A replay is a snapshot: records appended after it started are not in it.
  const snapshot = wal.replaySync({ fromLsn: 300n })
  await wal.append(RecordType.Put, bytesOf('later'))
  t.deepEqual([...snapshot].map((r) => r.lsn), [300n])
})

test('replay fails on an unknown required type, skips an unknown optional one, and returns types listed in knownTypes', async (t) => {
  const wal = await openWal(t, tempDir(t, 'wal'))
  const customOptional = 0x0100
  const customRequired = 0x8100
  await wal.append(RecordType.Put, bytesOf('1'))
  await wal.append(customOptional, bytesOf('2'))
  await wal.append(RecordType.Put, bytesOf('3'))
  t.deepEqual([...wal.replaySync()].map((r) => r.lsn), [1n, 3n], 'unknown optional type skipped')
  t.deepEqual([...wal.replaySync({ knownTypes: [customOptional] })].map((r) => r.lsn), [1n, 2n, 3n])
  await wal.append(customRequired, bytesOf('4'))
  const error = await t.throwsAsync(replayAll(wal), coded(Error, 'ERR_WAL_UNKNOWN_RECORD_TYPE'))
  t.regex(error?.message ?? '', /LSN 4/)
  t.throws(() => [...wal.replaySync()], coded(Error, 'ERR_WAL_UNKNOWN_RECORD_TYPE'))
  t.deepEqual([...wal.replaySync({ knownTypes: new Set([customRequired]) })].map((r) => r.lsn), [1n, 3n, 4n])
  // The records before the failure are still delivered in order.
  const before: bigint[] = []
  await t.throwsAsync(async () => {
    for await (const record of wal.replay({ batchSize: 100 })) before.push(record.lsn)
  }, coded(Error, 'ERR_WAL_UNKNOWN_RECORD_TYPE'))
  t.deepEqual(before, [1n, 3n])
})

test('reopening recovers the log and the next append continues right after it', async (t) => {
  const dir = tempDir(t, 'wal')
  const first = await Wal.open(dir, SMALL)
  t.deepEqual(first.recovery.lastLsn, 0n)
  t.is(first.recovery.records, 0)
  await Promise.all(Array.from({ length: 20 }, (_, i) => first.append(RecordType.Put, bytesOf(`before ${i}`))))
  await first.close()
  const second = await openWal(t, dir)
  const report = second.recovery
  t.is(report.firstLsn, 1n)
  t.is(report.lastLsn, 20n)
  t.is(report.records, 20)
  t.is(report.segments, 1)
  t.is(report.repairedFromDwb, 0)
  t.is(report.tornTailBytes, 0)
  t.is(typeof report.durationMs, 'number')
  t.is(await second.append(RecordType.Put, bytesOf('after')), 21n)
  const records = await replayAll(second)
  t.is(records.length, 21)
  t.is(textOf(records[20]?.payload ?? new Uint8Array()), 'after')
  assertProtected(t, second)
})

test('Wal.openSync / syncSync / truncateBeforeSync / closeSync work on the JS thread', (t) => {
  const dir = tempDir(t, 'wal')
  const wal = Wal.openSync(dir, SMALL)
  t.is(wal.appendSync(RecordType.Put, bytesOf('one')), 1n)
  wal.syncSync()
  t.is(wal.truncateBeforeSync(1n), 0)
  wal.closeSync()
  wal.closeSync()
  t.false(wal.isOpen())
  const again = Wal.openSync(dir, SMALL)
  t.is(again.recovery.lastLsn, 1n)
  again[Symbol.dispose]()
  t.false(again.isOpen())
})

test('sync() resolves after every earlier append is durable', async (t) => {
  const wal = await openWal(t, tempDir(t, 'wal'))
  const states: string[] = []
  const appends = Array.from({ length: 10 }, (_, i) => wal.append(RecordType.Put, bytesOf(String(i))).then(() => states.push('append')))
  await wal.sync()
  states.push('sync')
  await Promise.all(appends)
  t.is(states.indexOf('sync'), 10, 'every earlier append resolved before sync')
})

test('truncateBefore removes whole old segments and replay below the floor is refused', async (t) => {
  const dir = tempDir(t, 'wal')
  const wal = await openWal(t, dir, { segmentSize: 16 * 1024 })
  for (let round = 0; round < 8; round++) {
    await wal.appendBatch(Array.from({ length: 10 }, () => ({ recordType: RecordType.Put, payload: new Uint8Array(900) })))
  }
  const segmentsBefore = segmentFiles(dir).length
  t.true(segmentsBefore > 2, `${segmentsBefore} segments`)
  t.true(wal.stats.segmentRolls > 0n)
  const removed = await wal.truncateBefore(wal.lastLsn)
  t.true(removed >= 1)
  t.is(segmentFiles(dir).length, segmentsBefore - removed)
  await t.throwsAsync(replayAll(wal, 1n), coded(Error, 'ERR_INVALID_OPTIONS'))
  const remaining = await replayAll(wal)
  t.is(remaining.at(-1)?.lsn, wal.lastLsn)
  t.is(await wal.truncateBefore(0n), 0)
  assertProtected(t, wal)
})

test('close waits for in-flight appends: every append made before close() resolves first, later ones get ERR_WAL_CLOSED', async (t) => {
  const dir = tempDir(t, 'wal')
  const wal = await Wal.open(dir, SMALL)
  let resolved = 0
  const appends = Array.from({ length: 200 }, (_, i) =>
    wal.append(RecordType.Put, bytesOf(`in flight ${i}`)).then((lsn) => {
      resolved += 1
      return lsn
    }),
  )
  const closing = wal.close()
  t.is(wal.close(), closing, 'close() is idempotent')
  t.false(wal.isOpen())
  await t.throwsAsync(wal.append(RecordType.Put, bytesOf('too late')), coded(Error, 'ERR_WAL_CLOSED'))
  await closing
  t.is(resolved, 200, 'all appends were acknowledged before close resolved')
  t.is(new Set(await Promise.all(appends)).size, 200)
  const reopened = await openWal(t, dir)
  t.is(reopened.recovery.records, 200)
})

test('close() while sync, truncate and replay calls are in flight: they complete, then the WAL is closed', async (t) => {
  const dir = tempDir(t, 'wal')
  const wal = await Wal.open(dir, SMALL)
  await wal.appendBatch(Array.from({ length: 100 }, () => ({ recordType: RecordType.Put, payload: bytesOf('r') })))
  const replay = wal.replay({ batchSize: 10 })
  const firstRecord = replay.next()
  const syncing = wal.sync()
  const truncating = wal.truncateBefore(50n)
  const closing = wal.close()
  await syncing
  t.is(await truncating, 0)
  t.is((await firstRecord).value?.lsn, 1n)
  await closing
  // A replay reads its own file handles: it can finish after the WAL closed.
  let count = 1
  for await (const _ of replay) count += 1
  t.is(count, 100)
})

test('after close every call fails with ERR_WAL_CLOSED and Symbol.asyncDispose closes', async (t) => {
  const dir = tempDir(t, 'wal')
  const wal = await Wal.open(dir, SMALL)
  await wal[Symbol.asyncDispose]()
  const closed = coded(Error, 'ERR_WAL_CLOSED')
  await t.throwsAsync(wal.append(RecordType.Put, bytesOf('x')), closed)
  await t.throwsAsync(wal.appendBatch([{ recordType: RecordType.Put, payload: bytesOf('x') }]), closed)
  t.throws(() => wal.appendSync(RecordType.Put, bytesOf('x')), closed)
  t.throws(() => wal.appendBatchSync([]), closed)
  await t.throwsAsync(wal.sync(), closed)
  t.throws(() => wal.syncSync(), closed)
  await t.throwsAsync(wal.truncateBefore(1n), closed)
  t.throws(() => wal.replay(), closed)
  t.throws(() => wal.replaySync(), closed)
  for (const getter of ['recovery', 'stats', 'protection', 'io', 'lastLsn', 'nextLsn', 'dir'] as const) t.throws(() => wal[getter], closed, getter)
  await wal.close()
  wal.closeSync()
})

test('protection reports the policy and its state for each configuration', async (t) => {
  const cases: Array<[WalOptions, { policy: Protection; tailProtection: TailProtection; state: string }]> = [
    [{}, { policy: 'strict', tailProtection: 'mirror', state: 'active' }],
    [{ tailProtection: 'pad' }, { policy: 'strict', tailProtection: 'pad', state: 'padding' }],
    [{ dwbMode: 'off' }, { policy: 'strict', tailProtection: 'mirror', state: 'padding' }],
    [{ protection: 'degraded' }, { policy: 'degraded', tailProtection: 'mirror', state: 'active' }],
  ]
  for (const [options, expected] of cases) {
    const dir = tempDir(t, 'wal')
    const wal = await Wal.open(dir, { ...SMALL, ...options })
    await wal.appendBatch(Array.from({ length: 5 }, () => ({ recordType: RecordType.Put, payload: bytesOf('p') })))
    await wal.append(RecordType.Put, bytesOf('q'))
    t.like(wal.protection, { ...expected, unprotectedRecords: 0n }, JSON.stringify(options))
    t.is(existsSync(path.join(dir, 'wal.dwb')), options.dwbMode !== 'off')
    assertProtected(t, wal)
    await wal.close()
  }
})

test('default options create a 64 MiB segment, a buffered DWB and prepare the next segment', async (t) => {
  const dir = tempDir(t, 'wal')
  const wal = await openWal(t, dir, {})
  t.is(await wal.append(RecordType.Put, bytesOf('x')), 1n)
  // The spare is being written (.tmp) or done; either way it is not a segment.
  const files = readdirSync(dir).filter((f) => !f.startsWith('wal-spare.seg')).sort()
  t.deepEqual(files, ['LOCK', 'wal-00000000000000000001.seg', 'wal.dwb'])
  t.is(wal.dir, dir)
})

test('bad input: TypeError / RangeError with stable codes before any native call', async (t) => {
  const dir = tempDir(t, 'wal')
  const wal = await openWal(t, dir)
  const payload = bytesOf('x')
  await t.throwsAsync(wal.append(RecordType.Put, 'x' as unknown as Uint8Array), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  await t.throwsAsync(wal.append(RecordType.Put, [1] as unknown as Uint8Array), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  await t.throwsAsync(wal.append(-1, payload), coded(RangeError, 'ERR_OUT_OF_RANGE'))
  await t.throwsAsync(wal.append('put' as unknown as number, payload), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  await t.throwsAsync(wal.append(RecordType.Put, payload, { tenantId: 1 as unknown as bigint }), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  await t.throwsAsync(wal.append(RecordType.Put, payload, { databaseId: 2n ** 64n }), coded(RangeError, 'ERR_OUT_OF_RANGE'))
  await t.throwsAsync(wal.append(RecordType.Put, payload, { vshardId: -1 }), coded(RangeError, 'ERR_OUT_OF_RANGE'))
  await t.throwsAsync(wal.append(0x4000, payload), coded(Error, 'ERR_RECORD_TYPE'))
  await t.throwsAsync(wal.appendBatch('nope' as unknown as []), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  await t.throwsAsync(wal.appendBatch([{ recordType: RecordType.Put, payload: 5 as unknown as Uint8Array }]), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  // A batch's records past the common shape take the full checks, which name the record.
  const plain = { recordType: RecordType.Put, payload }
  const named = (code: string, name: string) => (e: unknown) => (e as { code?: string }).code === code && String((e as Error).message).includes(name)
  t.true(named('ERR_OUT_OF_RANGE', 'records[1].recordType')(await wal.appendBatch([plain, { recordType: 1.5, payload }]).catch((e: unknown) => e)))
  t.true(named('ERR_INVALID_ARG_TYPE', 'records[1].tenantId')(await wal.appendBatch([plain, { ...plain, tenantId: 1 as unknown as bigint }]).catch((e: unknown) => e)))
  t.true(named('ERR_INVALID_ARG_TYPE', 'records[1]')(await wal.appendBatch([plain, [] as unknown as typeof plain]).catch((e: unknown) => e)))
  // eslint-disable-next-line no-sparse-arrays
  t.true(named('ERR_INVALID_ARG_TYPE', 'records[1]')(await wal.appendBatch([plain, , plain] as (typeof plain)[]).catch((e: unknown) => e)))
  // Plain records and records with ids in one batch: each keeps its own ids.
  const mixed = await wal.appendBatch([plain, { ...plain, tenantId: 7n, vshardId: 3, databaseId: 9n }, { ...plain, tenantId: undefined } as unknown as typeof plain])
  const replayed = [...wal.replaySync({ fromLsn: mixed[0] as bigint })].slice(0, 3)
  t.deepEqual(
    replayed.map((r) => [r.tenantId, r.vshardId, r.databaseId]),
    [[0n, 0, 0n], [7n, 3, 9n], [0n, 0, 0n]],
  )
  t.throws(() => wal.appendSync(RecordType.Put, null as unknown as Uint8Array), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  await t.throwsAsync(wal.truncateBefore(5 as unknown as bigint), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  await t.throwsAsync(wal.truncateBefore(-5n), coded(RangeError, 'ERR_OUT_OF_RANGE'))
  t.throws(() => wal.replay({ fromLsn: 1 as unknown as bigint }), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  t.throws(() => wal.replay({ fromLsn: 2n ** 64n }), coded(RangeError, 'ERR_OUT_OF_RANGE'))
  t.throws(() => wal.replaySync({ knownTypes: 5 as unknown as number[] }), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  t.throws(() => wal.replaySync({ batchSize: 0 }), coded(RangeError, 'ERR_OUT_OF_RANGE'))
  // An invalid append rejects alone: the valid appends of the same tick still commit.
  const [bad, good] = await Promise.allSettled([wal.append(0x8000_0000, payload), wal.append(RecordType.Put, payload)])
  t.is(bad.status, 'rejected')
  t.is(good.status, 'fulfilled')
  // Options.
  const other = path.join(dir, 'other')
  await t.throwsAsync(Wal.open(other, { protection: 'lenient' as Protection }), coded(RangeError, 'ERR_INVALID_ARG_VALUE'))
  await t.throwsAsync(Wal.open(other, { tailProtection: 'zero' as TailProtection }), coded(RangeError, 'ERR_INVALID_ARG_VALUE'))
  await t.throwsAsync(Wal.open(other, { dwbMode: 'fast' as DwbMode }), coded(RangeError, 'ERR_INVALID_ARG_VALUE'))
  await t.throwsAsync(Wal.open(other, { directIo: 'yes' as unknown as boolean }), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  await t.throwsAsync(Wal.open(other, { segmentSize: -1 }), coded(RangeError, 'ERR_OUT_OF_RANGE'))
  await t.throwsAsync(Wal.open(other, { segmentSize: 1.5 }), coded(RangeError, 'ERR_OUT_OF_RANGE'))
  await t.throwsAsync(Wal.open(other, { segmentSize: 100 }), coded(Error, 'ERR_INVALID_OPTIONS'))
  await t.throwsAsync(Wal.open(other, 'fast' as unknown as WalOptions), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  await t.throwsAsync(Wal.open(5 as unknown as string), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  const file = path.join(dir, 'a-file')
  writeFileSync(file, 'x')
  await t.throwsAsync(Wal.open(file, SMALL), coded(Error, 'ERR_PATH_IS_DIRECTORY'))
  assertProtected(t, wal)
})

test('a second open of the same directory in this process fails with ERR_LOCKED until the first closes', async (t) => {
  const dir = tempDir(t, 'wal')
  const first = await Wal.open(dir, SMALL)
  await t.throwsAsync(Wal.open(dir, SMALL), coded(Error, 'ERR_LOCKED'))
  t.throws(() => Wal.openSync(dir, SMALL), coded(Error, 'ERR_LOCKED'))
  await first.close()
  const second = await openWal(t, dir)
  t.true(second.isOpen())
})

test('an open from a child process fails with ERR_LOCKED while this process holds the WAL', async (t) => {
  const dir = tempDir(t, 'wal')
  const wal = await openWal(t, dir)
  const locked = await execFileAsync(process.execPath, [path.join(fixtures, 'wal-open.mjs'), dir])
  t.like(JSON.parse(locked.stdout), { ok: false, code: 'ERR_LOCKED' })
  await wal.close()
  const free = await execFileAsync(process.execPath, [path.join(fixtures, 'wal-open.mjs'), dir])
  t.like(JSON.parse(free.stdout), { ok: true })
})

test('a process with appends in flight stays alive until they are durable, then exits although the WAL was never closed', async (t) => {
  const dir = tempDir(t, 'wal')
  const child = await execFileAsync(process.execPath, [path.join(fixtures, 'keepalive-child.mjs'), dir], { timeout: 30_000 })
  t.is(child.stdout, 'durable 1\n')
  const wal = await openWal(t, dir)
  t.is(wal.recovery.lastLsn, 1n)
})

test('busyPoll: the event loop stops turning once nothing is in flight, so an idle process uses no CPU and exits on its own', async (t) => {
  const dir = tempDir(t, 'wal')
  const child = await execFileAsync(process.execPath, [path.join(fixtures, 'busy-poll-child.mjs'), dir], { timeout: 30_000 })
  const report = JSON.parse(child.stdout) as { lastLsn: string; idleCpuMs: number }
  t.is(report.lastLsn, '84')
  // A loop still turning would use most of the 300 ms; an idle one uses next to nothing.
  t.true(report.idleCpuMs < 100, `the idle process used ${report.idleCpuMs} ms of CPU in 300 ms`)
  const wal = await openWal(t, dir)
  t.is(wal.recovery.lastLsn, 84n)
})

test('busyPoll must be a boolean', async (t) => {
  const dir = tempDir(t, 'wal')
  for (const value of [1, 'yes', null, {}]) {
    await t.throwsAsync(Wal.open(dir, { busyPoll: value as unknown as boolean }), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
    t.throws(() => Wal.openSync(dir, { busyPoll: value as unknown as boolean }), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  }
  t.deepEqual(readdirSync(dir), [], 'a refused option creates nothing')
})

directTest(`direct I/O segments: many commits replay completely and reopen resumes${directNote}`, async (t) => {
  const dir = tempDir(t, 'wal')
  const wal = await Wal.open(dir, { ...SMALL, directIo: true })
  t.is(wal.protection.policy, 'strict')
  const written: Uint8Array[] = []
  for (let round = 0; round < 10; round++) {
    const payloads = Array.from({ length: 7 }, (_, i) => new Uint8Array(100 + round * 50 + i).fill(round))
    written.push(...payloads)
    await Promise.all(payloads.map((payload) => wal.append(RecordType.Put, payload)))
  }
  t.is((await replayAll(wal)).length, 70)
  t.true(wal.stats.paddingBytes * 4n <= recordBytes(written), "'mirror' packs commits with direct I/O too (the partial last block is rewritten whole), padding only where it costs at most a quarter of a commit")
  assertProtected(t, wal)
  await wal.close()
  const again = await openWal(t, dir, { ...SMALL, directIo: true })
  t.is(again.recovery.lastLsn, 70n)
  t.is(await again.append(RecordType.Put, bytesOf('more')), 71n)
  t.is((await replayAll(again)).length, 71)
})

/** `statfs` magic numbers of the file systems that report their direct-I/O alignment. */
const EXT4_MAGIC = 0xef53
const XFS_MAGIC = 0x58465342

/** Options of a WAL whose idle awaited appends commit through the kernel. */
const KERNEL: WalOptions = { ...SMALL, directIo: true, tailProtection: 'pad', kernelCompletion: true }

directTest(`kernelCompletion: awaited, concurrent, batched and blocking appends keep their order, go through the kernel, and replay as written${directNote}`, async (t) => {
  const dir = tempDir(t, 'wal')
  const wal = await openWal(t, dir, KERNEL)
  const expected: Uint8Array[] = []
  const put = async (payload: Uint8Array): Promise<bigint> => {
    expected.push(payload)
    return wal.append(RecordType.Put, payload)
  }
  for (let i = 0; i < 200; i++) t.is(await put(new Uint8Array(100 + (i % 300)).fill(i)), BigInt(i + 1))
  const awaited = wal.stats.durableCommits
  // Each awaited append found the writer idle: all but those that rolled a segment.
  t.true(awaited >= 190n, `${awaited} of 200 awaited commits went through the kernel`)
  const concurrent = Array.from({ length: 64 }, (_, i) => new Uint8Array(4096).fill(i))
  t.deepEqual(await Promise.all(concurrent.map(put)), Array.from({ length: 64 }, (_, i) => BigInt(201 + i)))
  // A blocking append while a commit is in flight in the kernel: the commit thread ends
  // that commit (nobody on this thread can), then commits this one after it.
  const inFlight = put(bytesOf('in flight'))
  expected.push(bytesOf('blocking'))
  t.is(wal.appendSync(RecordType.Put, bytesOf('blocking')), 266n)
  t.is(await inFlight, 265n)
  const batch = [bytesOf('a'), new Uint8Array(70_000).fill(9)]
  expected.push(...batch)
  t.deepEqual(await wal.appendBatch(batch.map((payload) => ({ recordType: RecordType.Put, payload }))), [267n, 268n])
  await wal.sync()
  const records = await replayAll(wal)
  t.deepEqual(
    records.map((record) => Buffer.from(record.payload)),
    expected.map((payload) => Buffer.from(payload)),
  )
  t.is(wal.stats.walSyncs, wal.stats.commits, 'one sync per commit, through the kernel or not')
  assertProtected(t, wal)
  await wal.close()
  const again = await openWal(t, dir, KERNEL)
  t.is(again.recovery.lastLsn, 268n)
  t.is(await again.append(RecordType.Put, bytesOf('more')), 269n)
})

directTest(`kernelCompletion: a process with a commit in flight in the kernel stays alive until it is durable, then exits without close${directNote}`, async (t) => {
  const dir = tempDir(t, 'wal')
  const child = await execFileAsync(process.execPath, [path.join(fixtures, 'keepalive-child.mjs'), dir, 'kernel'], { timeout: 30_000 })
  t.is(child.stdout, 'durable 1 (1 through the kernel)\n')
  const wal = await openWal(t, dir, KERNEL)
  t.is(wal.recovery.lastLsn, 1n)
})

directTest(`kernelCompletion: once nothing is in flight the event loop sleeps, also after the commit thread reaped commits, so an idle process uses no CPU and exits on its own${directNote}`, async (t) => {
  const dir = tempDir(t, 'wal')
  const child = await execFileAsync(process.execPath, [path.join(fixtures, 'busy-poll-child.mjs'), dir, 'kernel'], { timeout: 30_000 })
  const report = JSON.parse(child.stdout) as { lastLsn: string; idleCpuMs: number }
  t.is(report.lastLsn, '174')
  // A watch firing on a stale completion signal would use most of the 300 ms.
  t.true(report.idleCpuMs < 100, `the idle process used ${report.idleCpuMs} ms of CPU in 300 ms`)
  const wal = await openWal(t, dir, KERNEL)
  t.is(wal.recovery.lastLsn, 174n)
})

for (const tailProtection of ['pad', 'mirror'] as const) {
  test(`tailProtection '${tailProtection}' writes O_DIRECT where the file system takes it (and reports its alignment: ext4 and XFS on Linux ≥ 6.1; explicit directIo ${direct.ok ? 'works' : 'fails'} here), commits idle awaited appends through the kernel, and its log reopens either way`, async (t) => {
    const dir = tempDir(t, 'wal')
    const defaults: WalOptions = { ...SMALL, tailProtection }
    // The choice needs the alignment reported by statx: Linux >= 6.1, on ext4 and XFS (not
    // tmpfs, which takes O_DIRECT without reporting it). Elsewhere it may stay buffered.
    const [major = 0, minor = 0] = os.release().split('.').map(Number)
    const reported =
      process.platform === 'linux' &&
      (major > 6 || (major === 6 && minor >= 1)) &&
      [EXT4_MAGIC, XFS_MAGIC].includes(statfsSync(dir).type)
    const wal = await Wal.open(dir, defaults)
    t.true(!wal.io.directIo || direct.ok, 'O_DIRECT only where the file system takes it')
    const chosen = reported ? direct.ok : wal.io.directIo
    // 'mirror' writes its DWB nearly every commit, so it takes O_DIRECT there too; 'pad' does not.
    const dwbMode = tailProtection === 'mirror' && chosen ? 'direct' : 'buffered'
    t.deepEqual(wal.io, { directIo: chosen, kernelCompletion: chosen, dwbMode })
    const payloads = Array.from({ length: 60 }, (_, i) => new Uint8Array(1 + ((i * 997) % 6000)).fill(i))
    for (const payload of payloads.slice(0, 30)) await wal.append(RecordType.Put, payload)
    // A 'mirror' session's first commit has no earlier flush to protect it and takes the
    // commit thread; every idle one after it goes through the kernel.
    if (wal.io.kernelCompletion) t.true(wal.stats.durableCommits >= 25n, `${wal.stats.durableCommits} of 30 awaited commits through the kernel`)
    else t.is(wal.stats.durableCommits, 0n)
    t.is(wal.stats.walSyncs, wal.stats.commits, 'one WAL sync per commit')
    if (tailProtection === 'mirror') t.true(wal.stats.paddingBytes * 4n <= recordBytes(payloads.slice(0, 30)), "'mirror' packs its commits, O_DIRECT or not (padding at most a quarter of a commit)")
    await wal.close()
    // The same log, buffered and on the commit thread, then with the defaults again.
    for (const options of [{ ...defaults, directIo: false }, { ...defaults, kernelCompletion: false }, defaults]) {
      const again = await Wal.open(dir, options)
      t.is(again.io.kernelCompletion, options === defaults && chosen)
      t.is(again.io.directIo, options.directIo !== false && chosen)
      const lsn = await again.append(RecordType.Put, payloads[Number(again.recovery.lastLsn)]!)
      t.is(lsn, again.recovery.lastLsn + 1n)
      await again.close()
    }
    const last = await openWal(t, dir, defaults)
    const records = await replayAll(last)
    t.deepEqual(
      records.map((record) => Buffer.from(record.payload)),
      payloads.slice(0, 33).map((payload) => Buffer.from(payload)),
    )
    // An explicit directIo: false stays buffered, with no kernel commits; so does an
    // explicit buffered DWB under 'mirror' (its kernel path needs an O_DIRECT DWB).
    const buffered = [{ ...defaults, directIo: false }, { ...defaults, dwbMode: 'buffered' as const }]
    for (const options of buffered) {
      const other = await openWal(t, tempDir(t, 'other'), options)
      await other.append(RecordType.Put, bytesOf('x'))
      await other.append(RecordType.Put, bytesOf('y'))
      t.is(other.io.dwbMode, 'buffered')
      if (options.directIo === false) t.deepEqual(other.io, { directIo: false, kernelCompletion: false, dwbMode: 'buffered' })
      // `io` reports the kernel path only where a commit can take it: not 'mirror' with a
      // buffered DWB, whose copies cannot join the submission.
      else t.is(other.io.kernelCompletion, tailProtection === 'pad' && chosen)
      // ('pad' writes no DWB per commit, so its buffered DWB changes nothing.)
      if (options.directIo === false || tailProtection === 'mirror') t.is(other.stats.durableCommits, 0n)
    }
  })
}

test('kernelCompletion must be a boolean, and needs O_DIRECT segments (not directIo: false)', async (t) => {
  const dir = tempDir(t, 'wal')
  for (const value of [1, 'yes', null, {}]) {
    await t.throwsAsync(Wal.open(dir, { kernelCompletion: value as unknown as boolean }), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  }
  for (const options of [
    { kernelCompletion: true, directIo: false },
    { kernelCompletion: true, tailProtection: 'pad', directIo: false } as const,
  ]) {
    await t.throwsAsync(Wal.open(dir, options), coded(RangeError, 'ERR_INVALID_ARG_VALUE'))
    t.throws(() => Wal.openSync(dir, options), coded(RangeError, 'ERR_INVALID_ARG_VALUE'))
  }
  t.deepEqual(readdirSync(dir), [], 'a refused option creates nothing')
})
