// The contestants of the benchmark. Each factory returns
//   { id, sync, open(dir), commitOne(payload), commitBatch(payloads), append?(payload), stats?(), close() }
// - commitOne: one durable commit of one record (W1).
// - commitBatch: one durable commit of all `payloads` (W2).
// - append: one record whose promise resolves once durable, many kept in flight (W3);
//   only for libraries with an asynchronous API (the synchronous ones cannot overlap).
// - sync: the library blocks the JS thread for its syncs (the driver yields to the event
//   loop after every commit, so the event-loop delay shows the blocking honestly).
// - stats: counters of our WAL (bigints turned into numbers).

import { createRequire } from 'node:module'
import { closeSync, fdatasyncSync, fsyncSync, openSync, readdirSync, readFileSync, statSync, writeSync } from 'node:fs'
import path from 'node:path'
import zlib from 'node:zlib'

const require = createRequire(import.meta.url)

/** The configurations of our WAL that the benchmark knows, by contestant id. */
export const OUR_CONFIGS = {
  // The defaults ('mirror'): O_DIRECT segments and DWB where the file system takes them,
  // an idle awaited append's DWB copies and WAL write submitted to the kernel together.
  'dw-mirror': { tailProtection: 'mirror' },
  // 'mirror' kept buffered (the defaults before 2026-11-24), with a buffered or a direct DWB.
  'dw-buffered-mirror': { dwbMode: 'buffered', tailProtection: 'mirror', directIo: false },
  'dw-direct-mirror': { dwbMode: 'direct', tailProtection: 'mirror', directIo: false },
  // 'pad' with its defaults: O_DIRECT segments where the file system takes them, and an
  // idle awaited append committed on the JS thread through the kernel (kernelCompletion).
  'dw-pad': { tailProtection: 'pad' },
  // 'pad' kept buffered, every commit on the commit thread ('pad''s defaults before 2026-11-24).
  'dw-buffered-pad': { dwbMode: 'buffered', tailProtection: 'pad', directIo: false },
  'dw-off': { dwbMode: 'off' },
  // Segments opened with O_DIRECT (the DWB then defaults to direct); every commit pads,
  // every commit on the commit thread (what 'dw-pad' does without the kernel's completion).
  'dw-directio': { directIo: true, tailProtection: 'pad', kernelCompletion: false },
  // The defaults plus AES-256-GCM at rest (a fixed benchmark key).
  'dw-encrypted': {
    tailProtection: 'mirror',
    encryption: { keys: [{ id: 1, key: new Uint8Array(32).fill(0x5a) }], activeKeyId: 1 },
  },
  // 'pad' through appendSync / appendBatchSync: the commit runs on the JS thread, blocking it
  // as better-sqlite3 does (W1 and W2 only: a blocking call cannot overlap). Kept buffered,
  // as measured before 'pad' chose O_DIRECT by default.
  'dw-pad-sync': { dwbMode: 'buffered', tailProtection: 'pad', directIo: false },
  // Buffered 'mirror' through appendSync / appendBatchSync.
  'dw-mirror-sync': { dwbMode: 'buffered', tailProtection: 'mirror', directIo: false },
  // Awaited appends with `busyPoll`: the event loop keeps turning while a commit is in
  // flight (the JS thread's CPU for the wake-up it saves).
  'dw-pad-busy': { dwbMode: 'buffered', tailProtection: 'pad', directIo: false, busyPoll: true },
  'dw-mirror-busy': { dwbMode: 'buffered', tailProtection: 'mirror', directIo: false, busyPoll: true },
}

/** Our contestants that commit on the JS thread (the `*Sync` twins). */
const BLOCKING = new Set(['dw-pad-sync', 'dw-mirror-sync'])

export const PEERS = ['js-wal', 'js-dwb', 'sqlite-wal-full', 'lmdb', 'classic-level-sync']

/** Short description of every contestant, for the JSON and the docs. */
export const DESCRIPTIONS = {
  'dw-mirror': "doublewrite, the defaults (tailProtection 'mirror'): O_DIRECT segments and DWB where the file system takes them, commits share blocks; an idle awaited append's DWB copies and WAL write submitted together through Linux AIO with RWF_DSYNC (both flushes at once) from the JS thread, the completion watched by the event loop (kernelCompletion)",
  'dw-buffered-mirror': "doublewrite, dwbMode 'buffered', tailProtection 'mirror', directIo: false (the defaults before 2026-11-24: buffered segments and DWB, every commit on the commit thread)",
  'dw-direct-mirror': "doublewrite, dwbMode 'direct' (O_DIRECT DWB), tailProtection 'mirror', directIo: false (buffered segments)",
  'dw-pad': "doublewrite, tailProtection 'pad' with its defaults: O_DIRECT segments where the file system takes them, an idle awaited append written with RWF_DSYNC through Linux AIO from the JS thread and its completion watched by the event loop (kernelCompletion); one sync per commit",
  'dw-buffered-pad': "doublewrite, dwbMode 'buffered', tailProtection 'pad', directIo: false (buffered segments, every commit on the commit thread; one sync per commit)",
  'dw-off': "doublewrite, dwbMode 'off' (no DWB; commits padded to a block)",
  'dw-directio': "doublewrite, directIo: true, tailProtection 'pad', kernelCompletion: false (O_DIRECT segments and DWB; commits padded, every commit on the commit thread)",
  'dw-pad-sync': "doublewrite, tailProtection 'pad', directIo: false, through appendSync / appendBatchSync: blocks the JS thread for each commit, as better-sqlite3 does",
  'dw-mirror-sync': "doublewrite, dwbMode 'buffered', tailProtection 'mirror', directIo: false, through appendSync / appendBatchSync: blocks the JS thread for each commit",
  'dw-pad-busy': "doublewrite, tailProtection 'pad', directIo: false, busyPoll: true (awaited; the event loop turns instead of sleeping while a commit is in flight)",
  'dw-mirror-busy': "doublewrite, dwbMode 'buffered', tailProtection 'mirror', directIo: false, busyPoll: true (awaited; the event loop turns instead of sleeping while a commit is in flight)",
  'dw-encrypted': "doublewrite, the defaults plus encryption (AES-256-GCM, one key): the cost of encryption next to dw-mirror",
  'js-wal': 'hand-written JS log: [len][crc32][payload] frames, fs.writeSync to an O_APPEND file + fs.fdatasyncSync',
  'js-dwb': 'hand-written JS double write: the frames at offset 0 of a side file + fdatasyncSync, then appended to the log + fdatasyncSync',
  'sqlite-wal-full': 'better-sqlite3, journal_mode=WAL, synchronous=FULL; INSERT per record, one transaction per batch',
  lmdb: 'lmdb-js defaults (durable async writes, overlappingSync), binary values; await put / transaction',
  'classic-level-sync': 'classic-level (LevelDB), put / batch with {sync: true}',
}

export function isOurs(id) {
  return Object.hasOwn(OUR_CONFIGS, id)
}

/** Loads our built package (index.js for the API, binding.js for benchDeviceLimit). */
export function loadPackage(packageDir) {
  const api = require(path.join(packageDir, 'index.js'))
  let binding = null
  try {
    binding = require(path.join(packageDir, 'binding.js'))
  } catch {
    binding = null
  }
  return { api, binding }
}

export function makeContestant(id, { packageDir }) {
  if (isOurs(id)) return ours(id, OUR_CONFIGS[id], packageDir)
  switch (id) {
    case 'js-wal':
      return jsLog(id, false)
    case 'js-dwb':
      return jsLog(id, true)
    case 'sqlite-wal-full':
      return sqlite(id)
    case 'lmdb':
      return lmdb(id)
    case 'classic-level-sync':
      return classicLevel(id)
    default:
      throw new Error(`unknown contestant ${id}`)
  }
}

/** Our WAL with any `Wal.open` options (experiments outside the benchmark's configurations). */
export function makeOurs(id, options, { packageDir }) {
  return ours(id, options, packageDir)
}

function ours(id, options, packageDir) {
  const { api } = loadPackage(packageDir)
  const { Wal, RecordType } = api
  const Put = RecordType.Put
  const blocking = BLOCKING.has(id)
  let wal
  return {
    id,
    sync: blocking,
    async open(dir) {
      wal = await Wal.open(path.join(dir, 'wal'), options)
      await spareSettled(path.join(dir, 'wal'))
    },
    commitOne: (payload) => (blocking ? wal.appendSync(Put, payload) : wal.append(Put, payload)),
    commitBatch: (payloads) => {
      const records = payloads.map((payload) => ({ recordType: Put, payload }))
      return blocking ? wal.appendBatchSync(records) : wal.appendBatch(records)
    },
    ...(blocking ? {} : { append: (payload) => wal.append(Put, payload) }),
    stats() {
      const s = wal.stats
      return Object.fromEntries(Object.entries(s).map(([k, v]) => [k, Number(v)]))
    },
    protection: () => wal.protection.state,
    async close() {
      await wal.close()
    },
  }
}

/**
 * Right after an open the WAL prepares its next segment in the background (64 MiB of zeros,
 * then a sync: `prepareSegments`, on by default in Node). That is a one-off cost of opening,
 * not of appending: wait until the spare is complete and durable (fsync of a read-only
 * descriptor waits for its writeback) so it does not overlap the timed window.
 */
async function spareSettled(walDir, timeoutMs = 20_000) {
  const spare = path.join(walDir, 'wal-spare.seg.tmp')
  const sizeOf = (file) => {
    try {
      return statSync(file).size
    } catch {
      return -1
    }
  }
  const segment = readdirSync(walDir).find((n) => /^wal-\d{20}\.seg$/.test(n))
  const full = segment ? sizeOf(path.join(walDir, segment)) : -1
  const deadline = Date.now() + timeoutMs
  let seen = false
  while (full > 0 && Date.now() < deadline) {
    const size = sizeOf(spare)
    if (size >= full) {
      try {
        const fd = openSync(spare, 'r')
        fsyncSync(fd)
        closeSync(fd)
      } catch {
        // Adopted or removed meanwhile: nothing left to wait for.
      }
      return
    }
    if (size < 0 && seen) return // renamed into place already
    seen ||= size >= 0
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

const crc32 =
  typeof zlib.crc32 === 'function'
    ? zlib.crc32
    : (() => {
        const table = new Int32Array(256)
        for (let n = 0; n < 256; n++) {
          let c = n
          for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
          table[n] = c
        }
        return (bytes) => {
          let c = -1
          for (let i = 0; i < bytes.length; i++) c = table[(c ^ bytes[i]) & 0xff] ^ (c >>> 8)
          return (c ^ -1) >>> 0
        }
      })()

/** Frames `payloads` ([len u32][crc32 u32][payload] each) into one buffer. */
function frames(payloads) {
  let total = 0
  for (const p of payloads) total += 8 + p.length
  const out = Buffer.allocUnsafe(total)
  let at = 0
  for (const p of payloads) {
    out.writeUInt32LE(p.length, at)
    out.writeUInt32LE(crc32(p), at + 4)
    out.set(p, at + 8)
    at += 8 + p.length
  }
  return out
}

function jsLog(id, doubleWrite) {
  let log
  let side
  const commit = (bytes) => {
    if (doubleWrite) {
      writeSync(side, bytes, 0, bytes.length, 0)
      fdatasyncSync(side)
    }
    writeSync(log, bytes)
    fdatasyncSync(log)
  }
  return {
    id,
    sync: true,
    async open(dir) {
      log = openSync(path.join(dir, 'log'), 'a')
      if (doubleWrite) side = openSync(path.join(dir, 'side.dwb'), 'w')
    },
    commitOne: (payload) => commit(frames([payload])),
    commitBatch: (payloads) => commit(frames(payloads)),
    stats: () => ({ syncsPerCommit: doubleWrite ? 2 : 1 }),
    async close() {
      closeSync(log)
      if (doubleWrite) closeSync(side)
    },
  }
}

function sqlite(id) {
  const Database = require('better-sqlite3')
  let db
  let insert
  let insertMany
  return {
    id,
    sync: true,
    async open(dir) {
      db = new Database(path.join(dir, 'log.sqlite'))
      db.pragma('journal_mode = WAL')
      db.pragma('synchronous = FULL')
      db.exec('CREATE TABLE log (id INTEGER PRIMARY KEY, v BLOB NOT NULL)')
      insert = db.prepare('INSERT INTO log (v) VALUES (?)')
      insertMany = db.transaction((payloads) => {
        for (const p of payloads) insert.run(p)
      })
    },
    commitOne: (payload) => {
      insert.run(payload)
    },
    commitBatch: (payloads) => {
      insertMany(payloads)
    },
    async close() {
      db.close()
    },
  }
}

function lmdb(id) {
  const { open } = require('lmdb')
  let db
  let key = 0
  return {
    id,
    sync: false,
    async open(dir) {
      db = open({ path: path.join(dir, 'data.mdb'), encoding: 'binary' })
    },
    commitOne: (payload) => db.put(++key, payload),
    commitBatch: (payloads) =>
      db.transaction(() => {
        for (const p of payloads) db.put(++key, p)
      }),
    append: (payload) => db.put(++key, payload),
    async close() {
      await db.close()
    },
  }
}

function classicLevel(id) {
  const { ClassicLevel } = require('classic-level')
  let db
  let key = 0
  const next = () => String(++key).padStart(16, '0')
  const sync = { sync: true }
  return {
    id,
    sync: false,
    async open(dir) {
      db = new ClassicLevel(path.join(dir, 'leveldb'), { valueEncoding: 'view' })
      await db.open()
    },
    commitOne: (payload) => db.put(next(), payload, sync),
    commitBatch: (payloads) =>
      db.batch(
        payloads.map((value) => ({ type: 'put', key: next(), value })),
        sync,
      ),
    append: (payload) => db.put(next(), payload, sync),
    async close() {
      await db.close()
    },
  }
}

/** Versions of the peers as installed (for the JSON and the docs). */
export function peerVersions() {
  const version = (name) => {
    try {
      const main = require.resolve(name)
      const at = main.lastIndexOf(`${path.sep}node_modules${path.sep}${name}${path.sep}`)
      const dir = main.slice(0, at + `${path.sep}node_modules${path.sep}${name}`.length)
      return JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')).version
    } catch {
      return null
    }
  }
  return {
    'better-sqlite3': version('better-sqlite3'),
    lmdb: version('lmdb'),
    'classic-level': version('classic-level'),
  }
}
