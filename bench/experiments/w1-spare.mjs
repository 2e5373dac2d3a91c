#!/usr/bin/env node
// Does the spare segment's zero-fill slow one writer awaiting each append under 'pad'?
//
//   node bench/experiments/w1-spare.mjs [seconds=3] [reps=5] [dir=os.tmpdir()]
//
// Under 'pad' every 128 B commit takes a 4 KiB block, so a 64 MiB segment fills in ~2 s and
// the next spare is zero-filled in the background while commits run. Three configurations,
// alternated rep by rep in one process: the defaults (64 MiB segments, spares prepared);
// one 1 GiB segment with `prepareSegments: false` (nothing but the commits reaches the
// device in the window); and better-sqlite3 (WAL, synchronous=FULL), the row's peer.
// Prints commits/s and latency quantiles per rep, then the median and range of each.
// Needs `npm run build` and `npm --prefix bench ci`.

import { mkdtempSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
const require = createRequire(import.meta.url)
const { Wal, RecordType } = require(path.join(root, 'index.js'))
const Database = require(path.join(root, 'bench', 'node_modules', 'better-sqlite3'))

const seconds = Number(process.argv[2] ?? 3)
const reps = Number(process.argv[3] ?? 5)
const base = process.argv[4] ?? os.tmpdir()
const RECORD_HEADER = 56
const payload = new Uint8Array(128 - RECORD_HEADER).fill(7)
const now = () => performance.now()

/** Times `commit` back to back for `seconds`; commits/s and latency quantiles in µs. */
async function timed(commit) {
  for (let i = 0; i < 200; i++) await commit()
  const latencies = []
  const end = now() + seconds * 1000
  for (let t = now(); t < end; t = now()) {
    await commit()
    latencies.push(now() - t)
  }
  latencies.sort((a, b) => a - b)
  const q = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] * 1000
  return { rate: latencies.length / seconds, p50: q(0.5), p99: q(0.99), max: q(1) }
}

async function ours(options) {
  const dir = mkdtempSync(path.join(base, 'w1-spare-'))
  try {
    const wal = await Wal.open(path.join(dir, 'wal'), options)
    const result = await timed(() => wal.append(RecordType.Put, payload))
    await wal.close()
    return result
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

async function sqlite() {
  const dir = mkdtempSync(path.join(base, 'w1-spare-'))
  try {
    const db = new Database(path.join(dir, 'db.sqlite'))
    db.pragma('journal_mode = WAL')
    db.pragma('synchronous = FULL')
    db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)')
    const insert = db.prepare('INSERT INTO t (v) VALUES (?)')
    const value = Buffer.alloc(128, 7)
    // Yield after each commit, as the benchmark does for blocking peers.
    const result = await timed(() => {
      insert.run(value)
      return new Promise(setImmediate)
    })
    db.close()
    return result
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

const configs = {
  'pad, 64 MiB segments + spares (defaults)': () => ours({ tailProtection: 'pad' }),
  'pad, one 1 GiB segment, no spare': () => ours({ tailProtection: 'pad', segmentSize: 2 ** 30, prepareSegments: false }),
  'better-sqlite3 (WAL, FULL)': sqlite,
}
const results = new Map(Object.keys(configs).map((name) => [name, []]))
for (let rep = 0; rep < reps; rep++) {
  for (const [name, run] of Object.entries(configs)) {
    const r = await run()
    results.get(name).push(r)
    console.log(`rep ${rep + 1} ${name}: ${Math.round(r.rate)} commits/s, p50 ${r.p50.toFixed(0)} µs, p99 ${r.p99.toFixed(0)} µs, max ${r.max.toFixed(0)} µs`)
  }
}
for (const [name, runs] of results) {
  const rates = runs.map((r) => r.rate).sort((a, b) => a - b)
  console.log(`${name}: median ${Math.round(rates[rates.length >> 1])} commits/s (${Math.round(rates[0])}–${Math.round(rates[rates.length - 1])})`)
}
