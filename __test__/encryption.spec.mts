// Encrypted WALs from JavaScript: round trip, rotation, no plaintext on disk, and every
// bad key option rejected with a coded RangeError/TypeError before anything is opened.

import { readdirSync, readFileSync } from 'node:fs'
import path from 'node:path'

import test from 'ava'

import { RecordType, Wal, type WalOptions } from 'doublewrite'

import { bytesOf, coded, tempDir, textOf } from './helpers.mjs'

const KEY1 = new Uint8Array(32).fill(0x11)
const KEY2 = new Uint8Array(32).fill(0x22)

function options(keys: { id: number; key: Uint8Array }[], activeKeyId: number): WalOptions {
  return { segmentSize: 1 << 20, encryption: { keys, activeKeyId } }
}

async function replayTexts(wal: Wal): Promise<string[]> {
  const out: string[] = []
  for await (const record of wal.replay()) out.push(textOf(record.payload))
  return out
}

test('records written encrypted read back as plaintext, also after reopen', async (t) => {
  const dir = tempDir(t, 'enc')
  const first = await Wal.open(dir, options([{ id: 1, key: KEY1 }], 1))
  const lsns = await Promise.all(['alpha', 'beta', 'gamma'].map((s) => first.append(RecordType.Put, bytesOf(s))))
  t.deepEqual(lsns, [1n, 2n, 3n])
  t.deepEqual(await replayTexts(first), ['alpha', 'beta', 'gamma'])
  await first.close()
  const again = await Wal.open(dir, options([{ id: 1, key: KEY1 }], 1))
  t.deepEqual(await replayTexts(again), ['alpha', 'beta', 'gamma'])
  const [record] = again.replaySync()
  t.is(record?.recordType, RecordType.Put, 'the logical record type comes back')
  await again.close()
})

test('no plaintext byte sequence reaches the WAL segments or the DWB', async (t) => {
  const dir = tempDir(t, 'enc-plain')
  const wal = await Wal.open(dir, options([{ id: 7, key: KEY1 }], 7))
  await Promise.all(Array.from({ length: 64 }, (_, i) => wal.append(RecordType.Put, bytesOf(`SECRET-PAYLOAD-${i}`))))
  await wal.appendBatch(Array.from({ length: 32 }, (_, i) => ({ recordType: RecordType.Put, payload: bytesOf(`SECRET-BATCH-${i}`) })))
  await wal.close()
  const needle = Buffer.from('SECRET-')
  const files = readdirSync(dir)
  t.true(files.some((f) => f.endsWith('.dwb')) && files.some((f) => f.endsWith('.seg')))
  for (const name of files) {
    t.is(readFileSync(path.join(dir, name)).indexOf(needle), -1, `plaintext in ${name}`)
  }
})

test('rotation: records under the old key stay readable; a missing key is named', async (t) => {
  const dir = tempDir(t, 'enc-rotate')
  const a = await Wal.open(dir, options([{ id: 1, key: KEY1 }], 1))
  await a.append(RecordType.Put, bytesOf('under key 1'))
  await a.close()
  const b = await Wal.open(dir, options([{ id: 1, key: KEY1 }, { id: 2, key: KEY2 }], 2))
  await b.append(RecordType.Put, bytesOf('under key 2'))
  t.deepEqual(await replayTexts(b), ['under key 1', 'under key 2'])
  await b.close()
  const c = await Wal.open(dir, options([{ id: 2, key: KEY2 }], 2))
  const error = await t.throwsAsync(replayTexts(c), { code: 'ERR_WAL_KEY_MISSING' })
  t.regex(error?.message ?? '', /key id 1/)
  await c.close()
})

test('the caller keeps its key bytes; the options object is not retained', async (t) => {
  const dir = tempDir(t, 'enc-keep')
  const key = new Uint8Array(32).fill(0x5a)
  const wal = await Wal.open(dir, options([{ id: 3, key }], 3))
  t.true(key.every((b) => b === 0x5a), "the caller's array is not modified")
  await wal.append(RecordType.Put, bytesOf('x'))
  await wal.close()
})

test('bad key options are rejected with a coded error before opening', (t) => {
  const dir = tempDir(t, 'enc-bad')
  const cases: [WalOptions['encryption'] | unknown, { instanceOf: new (...args: never[]) => Error; code: string }][] = [
    [{ keys: [{ id: 1, key: new Uint8Array(16) }], activeKeyId: 1 }, coded(RangeError, 'ERR_INVALID_ARG_VALUE')],
    [{ keys: [{ id: 1, key: new Uint8Array(33) }], activeKeyId: 1 }, coded(RangeError, 'ERR_INVALID_ARG_VALUE')],
    [{ keys: [{ id: 1, key: KEY1 }], activeKeyId: 2 }, coded(RangeError, 'ERR_INVALID_ARG_VALUE')],
    [{ keys: [{ id: 0, key: KEY1 }], activeKeyId: 0 }, coded(RangeError, 'ERR_OUT_OF_RANGE')],
    [{ keys: [{ id: 70000, key: KEY1 }], activeKeyId: 70000 }, coded(RangeError, 'ERR_OUT_OF_RANGE')],
    [{ keys: [{ id: 1, key: KEY1 }, { id: 1, key: KEY2 }], activeKeyId: 1 }, coded(RangeError, 'ERR_INVALID_ARG_VALUE')],
    [{ keys: [], activeKeyId: 1 }, coded(RangeError, 'ERR_INVALID_ARG_VALUE')],
    [{ keys: [{ id: 1, key: 'not bytes' }], activeKeyId: 1 }, coded(TypeError, 'ERR_INVALID_ARG_TYPE')],
    [{ keys: 'nope', activeKeyId: 1 }, coded(TypeError, 'ERR_INVALID_ARG_TYPE')],
    ['nope', coded(TypeError, 'ERR_INVALID_ARG_TYPE')],
  ]
  for (const [encryption, expected] of cases) {
    t.throws(() => Wal.openSync(dir, { encryption } as WalOptions), expected, JSON.stringify(encryption, (_k, v) => (v instanceof Uint8Array ? `${v.length} bytes` : v)))
  }
  t.deepEqual(readdirSync(dir), [], 'nothing was created')
})
