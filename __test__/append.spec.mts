// The append path: the appends of a tick are packed into reused buffers (payloads copied
// at call time) and handed over in one native call; outcomes come back in batches.
import test from 'ava'
import type { ExecutionContext } from 'ava'

import { MAX_PAYLOAD_BYTES, RecordType, Wal, WalRecord, type WalOptions } from 'doublewrite'

import { bytesOf, coded, tempDir, textOf } from './helpers.mjs'

const SMALL: WalOptions = { segmentSize: 1 << 20 }

async function openWal(t: ExecutionContext, options: WalOptions = SMALL): Promise<Wal> {
  const wal = await Wal.open(tempDir(t, 'wal'), options)
  t.teardown(() => wal.close())
  return wal
}

async function replayAll(wal: Wal): Promise<WalRecord[]> {
  const out: WalRecord[] = []
  for await (const record of wal.replay()) out.push(record)
  return out
}

/** `length` bytes, each `(seed + i) & 0xff`. */
function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length)
  for (let i = 0; i < length; i++) bytes[i] = (seed + i) & 0xff
  return bytes
}

test('a payload buffer reused right after append returns is written as it was at the call, at any size and through every append method', async (t) => {
  const wal = await openWal(t, { segmentSize: 16 << 20 })
  // One scratch buffer, overwritten after every call. Sizes cross the staging buffer's
  // initial size (64 KiB) and the size at which a tick is handed over early (1 MiB).
  const sizes = [0, 1, 7, 128, 4096, 70_000, 300_000, 128, 1_100_000, 3, 65_536]
  const scratch = new Uint8Array(Math.max(...sizes))
  const expected: Uint8Array[] = []
  const pending: Promise<unknown>[] = []
  sizes.forEach((size, i) => {
    const view = scratch.subarray(0, size)
    view.set(pattern(size, i))
    expected.push(pattern(size, i))
    pending.push(wal.append(RecordType.Put, view))
    scratch.fill(0xee)
  })
  // A batch, then a synchronous append, reusing the same buffer between records.
  const a = scratch.subarray(0, 5000)
  a.set(pattern(5000, 100))
  const b = new Uint8Array(scratch.buffer, 5000, 200)
  b.set(pattern(200, 101))
  pending.push(wal.appendBatch([{ recordType: RecordType.Put, payload: a }, { recordType: RecordType.Put, payload: b }]))
  expected.push(pattern(5000, 100), pattern(200, 101))
  scratch.fill(0xdd)
  scratch.subarray(0, 999).set(pattern(999, 102))
  t.is(wal.appendSync(RecordType.Put, scratch.subarray(0, 999)), BigInt(expected.length + 1))
  expected.push(pattern(999, 102))
  scratch.fill(0xcc)
  await Promise.all(pending)
  const records = await replayAll(wal)
  t.is(records.length, expected.length)
  records.forEach((record, i) => t.deepEqual(record.payload, expected[i], `record ${i} (${expected[i]?.length} bytes)`))
})

test('ticks of appends in flight together keep their own bytes while the buffers their payloads were copied into are reused', async (t) => {
  // Each tick hands over more than 16 KiB, so its payloads go into one pooled buffer; the
  // ticks are not awaited, so buffers come back (and are reused) while later ticks are
  // still queued. A buffer reused before all its records were written would show up here
  // as another tick's bytes.
  const wal = await openWal(t, { segmentSize: 4 << 20 })
  const ticks = 150
  const perTick = 40
  const pending: Promise<bigint>[] = []
  const expected: Uint8Array[] = []
  for (let tick = 0; tick < ticks; tick++) {
    for (let i = 0; i < perTick; i++) {
      const size = i % 13 === 0 ? 0 : 700 + ((tick * 7 + i * 31) % 900)
      const payload = pattern(size, tick * perTick + i)
      expected.push(payload)
      pending.push(wal.append(RecordType.Put, payload))
    }
    await new Promise((resolve) => setImmediate(resolve))
  }
  const lsns = await Promise.all(pending)
  t.deepEqual(lsns, Array.from({ length: ticks * perTick }, (_, i) => BigInt(i + 1)))
  const records = await replayAll(wal)
  t.is(records.length, expected.length)
  const wrong = records.filter((record, i) => !Buffer.from(record.payload).equals(Buffer.from(expected[i] as Uint8Array)))
  t.is(wrong.length, 0, `records with another record's bytes: ${wrong.map((r) => r.lsn).slice(0, 5).join(', ')}`)
  t.true(wal.stats.commits > 1n, `commits ran while ticks were queued: ${wal.stats.commits}`)
})

test('10,000 concurrent appends each get their own LSN, in call order, and their own payload', async (t) => {
  const wal = await openWal(t, { segmentSize: 4 << 20 })
  const count = 10_000
  const appends = Array.from({ length: count }, (_, i) => wal.append(RecordType.Put, bytesOf(`r${i}`)))
  const lsns = await Promise.all(appends)
  t.is(new Set(lsns).size, count)
  t.deepEqual(lsns, Array.from({ length: count }, (_, i) => BigInt(i + 1)))
  // A second wave reuses the tickets of the first: still one LSN per caller.
  const again = await Promise.all(Array.from({ length: count }, (_, i) => wal.append(RecordType.Put, bytesOf(`s${i}`))))
  t.deepEqual(again, Array.from({ length: count }, (_, i) => BigInt(count + i + 1)))
  const records = await replayAll(wal)
  t.is(records.length, 2 * count)
  t.true(records.every((r, i) => textOf(r.payload) === (i < count ? `r${i}` : `s${i - count}`)))
  t.true(wal.stats.commits < BigInt(2 * count), `group commit: ${wal.stats.commits} commits`)
})

test('the outcomes of one large group commit are settled a chunk per macrotask, in LSN order: the event loop gets turns in between', async (t) => {
  const wal = await openWal(t)
  const count = 1000
  const order: bigint[] = []
  let turnTaken = -1
  // All appended in one tick: one native submit, normally one group commit.
  const appends = Array.from({ length: count }, (_, i) =>
    wal.append(RecordType.Put, bytesOf(`r${i}`)).then((lsn) => {
      if (order.length === 0) setImmediate(() => (turnTaken = order.length))
      order.push(lsn)
    }),
  )
  await Promise.all(appends)
  t.deepEqual(order, [...order].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)), 'settled in LSN order')
  t.is(new Set(order).size, count)
  // The premise: the commits are large (1,000 appends queued at once on a fresh WAL).
  t.true(wal.stats.commits <= 2n, `${wal.stats.commits} commits`)
  t.true(turnTaken > 0 && turnTaken < count, `a macrotask ran after ${turnTaken} of ${count} outcomes were settled`)
})

test('256 appenders in a closed loop, each awaiting its append then issuing the next: every caller gets its own LSN', async (t) => {
  const wal = await openWal(t, { segmentSize: 4 << 20 })
  const perAppender = 20
  const seen: bigint[] = []
  await Promise.all(
    Array.from({ length: 256 }, async (_, appender) => {
      for (let i = 0; i < perAppender; i++) seen.push(await wal.append(RecordType.Put, bytesOf(`${appender}/${i}`), { vshardId: appender }))
    }),
  )
  t.is(seen.length, 256 * perAppender)
  t.is(new Set(seen).size, seen.length)
  const byLsn = new Map((await replayAll(wal)).map((r) => [r.lsn, r]))
  t.is(byLsn.size, seen.length)
  // Each appender's records are in its own call order.
  const last = new Map<number, number>()
  for (const record of [...byLsn.values()].sort((x, y) => Number(x.lsn - y.lsn))) {
    const [appender, i] = textOf(record.payload).split('/').map(Number) as [number, number]
    t.is(record.vshardId, appender)
    t.is(i, (last.get(appender) ?? -1) + 1)
    last.set(appender, i)
  }
})

test('errors in the middle of a tick reject only their own callers; the others commit in call order', async (t) => {
  const wal = await openWal(t)
  const ok = (text: string) => wal.append(RecordType.Put, bytesOf(text))
  const oversize = new Uint8Array(MAX_PAYLOAD_BYTES + 1)
  const results = await Promise.allSettled([
    ok('a'),
    wal.append(0x4000, bytesOf('reserved bit 14')), // refused by the core
    ok('b'),
    wal.append(RecordType.Put, oversize), // refused by the core, never copied
    ok('c'),
    wal.append(-1, bytesOf('negative type')), // refused by the argument checks
    wal.appendBatch([
      { recordType: RecordType.Put, payload: bytesOf('batch ok') },
      { recordType: 0x8000_0000, payload: bytesOf('batch bad') },
    ]), // the whole batch is one caller: refused as one
    wal.append(RecordType.Put, bytesOf('d'), { tenantId: 9n }),
    wal.appendBatch([
      { recordType: RecordType.Put, payload: bytesOf('e') },
      { recordType: RecordType.Put, payload: oversize },
    ]),
    ok('f'),
  ])
  t.deepEqual(
    results.map((r) => r.status),
    ['fulfilled', 'rejected', 'fulfilled', 'rejected', 'fulfilled', 'rejected', 'rejected', 'fulfilled', 'rejected', 'fulfilled'],
  )
  const reason = (i: number) => (results[i] as PromiseRejectedResult).reason as Error & { code: string }
  t.like(reason(1), { code: 'ERR_RECORD_TYPE' })
  t.like(reason(3), { code: 'ERR_RECORD_TOO_LARGE' })
  t.regex(reason(3).message, new RegExp(`${MAX_PAYLOAD_BYTES + 1} bytes`))
  t.true(reason(5) instanceof RangeError)
  t.like(reason(5), { code: 'ERR_OUT_OF_RANGE' })
  t.like(reason(6), { code: 'ERR_RECORD_TYPE' })
  t.like(reason(8), { code: 'ERR_RECORD_TOO_LARGE' })
  const lsns = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))
  t.deepEqual(lsns, [1n, 2n, 3n, 4n, 5n], 'no LSN was consumed by a refused caller')
  const records = await replayAll(wal)
  t.deepEqual(
    records.map((r) => [textOf(r.payload), r.tenantId]),
    [
      ['a', 0n],
      ['b', 0n],
      ['c', 0n],
      ['d', 9n],
      ['f', 0n],
    ],
  )
  // The next tick is clean.
  t.is(await ok('g'), 6n)
})

test('ids of some records of a tick land on exactly those records', async (t) => {
  const wal = await openWal(t)
  const max = 2n ** 64n - 1n
  const cases: Array<{ tenantId?: bigint; vshardId?: number; databaseId?: bigint }> = [
    {},
    {},
    { tenantId: 1n },
    {},
    { databaseId: max, vshardId: 0xffff_ffff },
    { vshardId: 3 },
    { tenantId: max, databaseId: 2n },
    {},
  ]
  const pending = cases.map((ids, i) => wal.append(RecordType.Put, bytesOf(`${i}`), ids))
  const batch = wal.appendBatch([
    { recordType: RecordType.Put, payload: bytesOf('b0') },
    { recordType: RecordType.Delete, payload: bytesOf('b1'), tenantId: 5n, databaseId: 6n },
  ])
  await Promise.all([...pending, batch])
  t.deepEqual(
    wal.appendBatchSync([
      { recordType: RecordType.Put, payload: bytesOf('s0'), databaseId: 8n },
      { recordType: RecordType.Put, payload: bytesOf('s1') },
    ]),
    [11n, 12n],
  )
  const records = await replayAll(wal)
  const expected = [
    ...cases.map((ids) => [ids.tenantId ?? 0n, ids.vshardId ?? 0, ids.databaseId ?? 0n]),
    [0n, 0, 0n],
    [5n, 0, 6n],
    [0n, 0, 8n],
    [0n, 0, 0n],
  ]
  t.deepEqual(
    records.map((r) => [r.tenantId, r.vshardId, r.databaseId]),
    expected,
  )
  t.is(records[9]?.recordType, RecordType.Delete)
})

test('append returns a promise for every input: bad input and a closed WAL reject, never throw', async (t) => {
  const wal = await openWal(t)
  const bad: Array<[() => Promise<bigint>, ReturnType<typeof coded>]> = [
    [() => wal.append(1.5, bytesOf('x')), coded(RangeError, 'ERR_OUT_OF_RANGE')],
    [() => wal.append(2 ** 32, bytesOf('x')), coded(RangeError, 'ERR_OUT_OF_RANGE')],
    [() => wal.append(RecordType.Put, new ArrayBuffer(4) as unknown as Uint8Array), coded(TypeError, 'ERR_INVALID_ARG_TYPE')],
    [() => wal.append(RecordType.Put, bytesOf('x'), null as unknown as undefined), coded(TypeError, 'ERR_INVALID_ARG_TYPE')],
  ]
  for (const [call, expectation] of bad) {
    let promise: Promise<bigint> | undefined
    t.notThrows(() => {
      promise = call()
    })
    await t.throwsAsync(promise as Promise<bigint>, expectation)
  }
  const inFlight = Array.from({ length: 1000 }, (_, i) => wal.append(RecordType.Put, bytesOf(`${i}`)))
  const closing = wal.close()
  const late = wal.append(RecordType.Put, bytesOf('late'))
  await t.throwsAsync(late, coded(Error, 'ERR_WAL_CLOSED'))
  t.deepEqual(await Promise.all(inFlight), Array.from({ length: 1000 }, (_, i) => BigInt(i + 1)))
  await closing
  await t.throwsAsync(wal.append(RecordType.Put, bytesOf('later')), coded(Error, 'ERR_WAL_CLOSED'))
  await t.throwsAsync(wal.appendBatch([]), coded(Error, 'ERR_WAL_CLOSED'))
})

test('busyPoll: awaited, concurrent and batched appends resolve with their LSNs and replay as written, while timers still run', async (t) => {
  for (const tailProtection of ['mirror', 'pad'] as const) {
    const wal = await openWal(t, { ...SMALL, busyPoll: true, tailProtection })
    let timerFiredAfter = -1
    let done = 0
    setTimeout(() => {
      timerFiredAfter = done
    }, 1)
    const expected: Uint8Array[] = []
    for (let i = 0; i < 300; i++) {
      const payload = pattern(100 + (i % 50), i)
      expected.push(payload)
      t.is(await wal.append(RecordType.Put, payload), BigInt(i + 1))
      done += 1
    }
    // The busy poll keeps the loop turning, never blocked: the timer fired mid-run.
    t.true(timerFiredAfter >= 0 && timerFiredAfter < 300, `the 1 ms timer fired after ${timerFiredAfter} of 300 appends`)
    const concurrent = Array.from({ length: 64 }, (_, i) => pattern(4096, 1000 + i))
    const lsns = await Promise.all(concurrent.map((payload) => wal.append(RecordType.Put, payload)))
    t.deepEqual(lsns, Array.from({ length: 64 }, (_, i) => BigInt(301 + i)))
    expected.push(...concurrent)
    const batch = [pattern(7, 2000), pattern(70_000, 2001)]
    t.deepEqual(await wal.appendBatch(batch.map((payload) => ({ recordType: RecordType.Put, payload }))), [365n, 366n])
    expected.push(...batch)
    const records = await replayAll(wal)
    t.deepEqual(
      records.map((record) => Buffer.from(record.payload)),
      expected.map((payload) => Buffer.from(payload)),
      tailProtection,
    )
    await wal.close()
  }
})

/**
 * Records which callbacks are passed to `setImmediate` while `during` runs and which of
 * them are still pending, so a test can follow the library's own immediates without
 * counting those of the test runner or of Node (`process.getActiveResourcesInfo()` counts
 * every immediate of the thread, and the runner schedules some of its own).
 */
async function watchImmediates<T>(
  during: (pending: (callback: unknown) => number, scheduledBy: (call: () => unknown) => unknown[]) => Promise<T>,
): Promise<T> {
  const original = globalThis.setImmediate
  const pendingCount = new Map<unknown, number>()
  let scheduled: unknown[] | undefined
  const spy = ((callback: (...args: unknown[]) => void, ...args: unknown[]) => {
    pendingCount.set(callback, (pendingCount.get(callback) ?? 0) + 1)
    scheduled?.push(callback)
    return original(() => {
      pendingCount.set(callback, (pendingCount.get(callback) ?? 1) - 1)
      callback(...args)
    })
  }) as typeof setImmediate
  globalThis.setImmediate = spy
  try {
    return await during(
      (callback) => pendingCount.get(callback) ?? 0,
      (call) => {
        scheduled = []
        try {
          call()
          return scheduled
        } finally {
          scheduled = undefined
        }
      },
    )
  } finally {
    globalThis.setImmediate = original
  }
}

/** Resolves after the event loop's check phase has run `turns` times. */
async function loopTurns(turns: number): Promise<void> {
  for (let i = 0; i < turns; i++) await new Promise((resolve) => setImmediate(resolve))
}

// Serial: setImmediate is replaced for the duration, and no other test should see the spy.
test.serial('busyPoll keeps a setImmediate pending exactly while an append is in flight, and without it none is', async (t) => {
  for (const busyPoll of [false, true]) {
    const wal = await openWal(t, { ...SMALL, busyPoll })
    await watchImmediates(async (pending, scheduledBy) => {
      let spin: unknown
      for (let i = 0; i < 20; i++) {
        let append: Promise<bigint> | undefined
        const scheduled = scheduledBy(() => {
          append = wal.append(RecordType.Put, pattern(64, i))
        })
        if (!busyPoll) {
          t.deepEqual(scheduled, [], `busyPoll false: append ${i} scheduled no immediate`)
        } else {
          // The first append starts the chain; a later one may find the previous chain
          // still on its last turn and then schedules nothing new, but one turn is pending.
          if (spin === undefined) {
            t.is(scheduled.length, 1, 'busyPoll true: the first append starts the chain')
            spin = scheduled[0]
          } else {
            t.true(scheduled.every((callback) => callback === spin), `busyPoll true: append ${i} schedules only the chain`)
          }
          t.is(pending(spin), 1, `busyPoll true: one turn of the chain is pending while append ${i} is in flight`)
        }
        await append
      }
      // The chain ends on its next turn once nothing is in flight, well within its 1 ms limit.
      await loopTurns(2)
      if (busyPoll) t.is(pending(spin), 0, 'busyPoll true: nothing pending once every append resolved')
    })
    await wal.close()
  }
})
