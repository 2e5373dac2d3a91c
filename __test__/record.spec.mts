import { createRequire } from 'node:module'

import test from 'ava'

import * as esm from 'doublewrite'
import { HEADER_SIZE, MAX_PAYLOAD_BYTES, RecordType, REQUIRED_FLAG, WalRecord } from 'doublewrite'

import { bytesOf, coded, crc32c, parseHeader } from './helpers.mjs'

test('RecordType carries the core values, with the required bit on the types a reader must know', (t) => {
  t.is(RecordType.Noop, 0x0000)
  t.is(RecordType.Put, 0x8001)
  t.is(RecordType.Delete, 0x8002)
  t.is(RecordType.Transaction, 0x8003)
  t.is(RecordType.Checkpoint, 0x8004)
  t.is(RecordType.Metadata, 0x0005)
  t.is(RecordType.REQUIRED_FLAG, 0x8000)
  t.is(REQUIRED_FLAG, 0x8000)
  t.true(RecordType.isRequired(RecordType.Put))
  t.false(RecordType.isRequired(RecordType.Metadata))
  t.true(Object.isFrozen(RecordType))
  t.is(HEADER_SIZE, 56)
  t.is(MAX_PAYLOAD_BYTES, 64 * 1024 * 1024)
})

test('a record round-trips through encode/decode with every field intact', (t) => {
  const record = WalRecord.create({
    recordType: RecordType.Put,
    lsn: 42n,
    tenantId: 2n ** 64n - 1n,
    vshardId: 0xffff_ffff,
    databaseId: 7n,
    payload: bytesOf('hello'),
  })
  t.is(record.recordType, RecordType.Put)
  t.is(record.lsn, 42n)
  t.is(record.commitLsn, 42n)
  t.is(record.tenantId, 2n ** 64n - 1n)
  t.is(record.vshardId, 0xffff_ffff)
  t.is(record.databaseId, 7n)
  t.deepEqual(record.payload, bytesOf('hello'))
  t.is(record.encodedLength, 56 + 5)
  const decoded = WalRecord.decode(record.encode())
  t.is(decoded.lsn, 42n)
  t.is(decoded.crc, record.crc)
  t.deepEqual(decoded.encode(), record.encode())
})

test('encode() follows the documented little-endian header and its CRC matches an independent CRC-32C', (t) => {
  const payload = bytesOf('the quick brown fox')
  const record = WalRecord.create({ recordType: RecordType.Delete, lsn: 0x0102030405n, vshardId: 9, payload })
  const bytes = record.encode()
  t.is(bytes.length, 56 + payload.length)
  const header = parseHeader(bytes)
  t.is(header.magic, 'DWAL')
  t.is(header.version, 1)
  t.is(header.keyId, 0)
  t.is(header.recordType, RecordType.Delete)
  t.is(header.lsn, 0x0102030405n)
  t.is(header.commitLsn, 0x0102030405n)
  t.is(header.tenantId, 0n)
  t.is(header.vshardId, 9)
  t.is(header.databaseId, 0n)
  t.is(header.payloadLength, payload.length)
  t.deepEqual(bytes.subarray(56), payload)
  t.is(header.crc, crc32c(bytes.subarray(0, 52), payload))
  t.is(record.crc, header.crc)
})

test('payload and encode() return fresh copies: mutating them does not change the record', (t) => {
  const source = bytesOf('abc')
  const record = WalRecord.create({ recordType: RecordType.Put, lsn: 1n, payload: source })
  source[0] = 0
  const payload = record.payload
  payload[1] = 0
  record.encode()[56] = 0
  t.deepEqual(record.payload, bytesOf('abc'))
  t.not(record.payload, record.payload)
  t.true(record.payload.buffer instanceof ArrayBuffer)
})

test('decode() refuses flipped bytes (ERR_RECORD_CHECKSUM), cut-short and trailing bytes (ERR_RECORD_CORRUPT)', (t) => {
  const bytes = WalRecord.create({ recordType: RecordType.Put, lsn: 3n, payload: bytesOf('payload') }).encode()
  const flipped = bytes.slice()
  flipped[60] = (flipped[60] as number) ^ 0xff
  t.throws(() => WalRecord.decode(flipped), coded(Error, 'ERR_RECORD_CHECKSUM'))
  t.throws(() => WalRecord.decode(bytes.subarray(0, 40)), coded(Error, 'ERR_RECORD_CORRUPT'))
  t.throws(() => WalRecord.decode(bytes.subarray(0, bytes.length - 1)), coded(Error, 'ERR_RECORD_CORRUPT'))
  const longer = new Uint8Array(bytes.length + 3)
  longer.set(bytes)
  t.throws(() => WalRecord.decode(longer), coded(Error, 'ERR_RECORD_CORRUPT'))
  const badMagic = bytes.slice()
  badMagic[0] = 0x58
  t.throws(() => WalRecord.decode(badMagic), coded(Error, 'ERR_RECORD_CORRUPT'))
  t.throws(() => WalRecord.decode(new Uint8Array(0)), coded(Error, 'ERR_RECORD_CORRUPT'))
})

test('bad record input throws TypeError/RangeError with a stable code and never crashes', (t) => {
  const payload = bytesOf('x')
  const base = { recordType: RecordType.Put, lsn: 1n, payload }
  // A number where a bigint LSN is expected.
  t.throws(() => WalRecord.create({ ...base, lsn: 1 as unknown as bigint }), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  // Negative, zero (reserved for padding), 2^64-1 (reserved: the LSN after the last) and above.
  t.throws(() => WalRecord.create({ ...base, lsn: -1n }), coded(RangeError, 'ERR_OUT_OF_RANGE'))
  t.throws(() => WalRecord.create({ ...base, lsn: 0n }), coded(RangeError, 'ERR_OUT_OF_RANGE'))
  t.throws(() => WalRecord.create({ ...base, lsn: 2n ** 64n }), coded(RangeError, 'ERR_OUT_OF_RANGE'))
  t.throws(() => WalRecord.create({ ...base, lsn: 2n ** 64n - 1n }), coded(RangeError, 'ERR_OUT_OF_RANGE'))
  t.notThrows(() => WalRecord.create({ ...base, lsn: 2n ** 64n - 2n }))
  // Ids: u64 as bigint, u32 as number.
  t.throws(() => WalRecord.create({ ...base, tenantId: 1 as unknown as bigint }), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  t.throws(() => WalRecord.create({ ...base, databaseId: -5n }), coded(RangeError, 'ERR_OUT_OF_RANGE'))
  t.throws(() => WalRecord.create({ ...base, vshardId: 2 ** 32 }), coded(RangeError, 'ERR_OUT_OF_RANGE'))
  t.throws(() => WalRecord.create({ ...base, vshardId: 1.5 }), coded(RangeError, 'ERR_OUT_OF_RANGE'))
  // A payload that is not a Uint8Array.
  for (const bad of ['x', [1, 2], new ArrayBuffer(2), new Uint16Array(2), null, undefined]) {
    t.throws(() => WalRecord.create({ ...base, payload: bad as unknown as Uint8Array }), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  }
  t.throws(() => WalRecord.decode('DWAL' as unknown as Uint8Array), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  // Record types: out of u32 range, or using the reserved encrypted / framing bits.
  t.throws(() => WalRecord.create({ ...base, recordType: -1 }), coded(RangeError, 'ERR_OUT_OF_RANGE'))
  t.throws(() => WalRecord.create({ ...base, recordType: '1' as unknown as number }), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
  t.throws(() => WalRecord.create({ ...base, recordType: 0x4000 }), coded(Error, 'ERR_RECORD_TYPE'))
  t.throws(() => WalRecord.create({ ...base, recordType: 0x8000_0001 }), coded(Error, 'ERR_RECORD_TYPE'))
  t.throws(() => WalRecord.create(null as unknown as { recordType: number; lsn: bigint; payload: Uint8Array }), coded(TypeError, 'ERR_INVALID_ARG_TYPE'))
})

test('a payload over 64 MiB is refused with ERR_RECORD_TOO_LARGE', (t) => {
  const big = new Uint8Array(MAX_PAYLOAD_BYTES + 1)
  t.throws(() => WalRecord.create({ recordType: RecordType.Put, lsn: 1n, payload: big }), coded(Error, 'ERR_RECORD_TOO_LARGE'))
})

test('coded errors look like Node errors: name [code]: message, with the caller in the stack', (t) => {
  const error = t.throws(() => WalRecord.create({ recordType: RecordType.Put, lsn: 1 as unknown as bigint, payload: bytesOf('') }))
  t.truthy(error)
  t.regex(error?.stack ?? '', /^TypeError \[ERR_INVALID_ARG_TYPE\]: The "lsn" argument must be of type bigint/)
  t.regex(error?.stack ?? '', /record\.spec/)
  const native = t.throws(() => WalRecord.decode(new Uint8Array(10)))
  t.regex(native?.stack ?? '', /^Error \[ERR_RECORD_CORRUPT\]: record is cut short/)
  t.notRegex(native?.message ?? '', /^\[/)
})

test('the ES module entry and the CommonJS entry are one and the same module instance', (t) => {
  const require = createRequire(import.meta.url)
  const cjs = require('doublewrite') as typeof esm
  t.is(cjs.WalRecord, esm.WalRecord)
  t.is(cjs.Wal, esm.Wal)
  t.is(cjs.DoubleWriteBuffer, esm.DoubleWriteBuffer)
  t.is(cjs.RecordType, esm.RecordType)
  t.deepEqual(Object.keys(cjs).sort(), Object.keys(esm).sort())
})
