#!/usr/bin/env node
// Does the spare segment's zero-fill slow one writer awaiting each append under 'pad'?
//
//   node bench/experiments/w1-spare.mjs [seconds=3] [reps=5] [dir=os.tmpdir()]
//
// Under 'pad' every 128 B commit takes a 4 KiB block, so a 64 MiB segment fills in ~2 s and
// the next spare is zero-filled in the background while commits run. Three configurations,
// alternated rep by rep in one process, each opened as the benchmark opens it
// (bench/lib/contestants.mjs): 'pad' with its defaults (64 MiB segments, spares prepared);
// 'pad' with one 1 GiB segment and `prepareSegments: false` (nothing but the commits reaches
// the device in the window); and better-sqlite3 (WAL, synchronous=FULL), the row's peer.
// Prints commits/s and latencies per rep, then the median and range of each.
// Needs `npm run build` and `npm --prefix bench ci`.

import { randomFillSync } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import { OUR_CONFIGS, makeContestant, makeOurs } from '../lib/contestants.mjs'
import { LatencyLog, latencySummary, median } from '../lib/stats.mjs'

const packageDir = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
const seconds = Number(process.argv[2] ?? 3)
const reps = Number(process.argv[3] ?? 5)
const base = process.argv[4] ?? os.tmpdir()
const payload = randomFillSync(Buffer.allocUnsafe(128))
const now = () => performance.now()
const immediate = () => new Promise(setImmediate)

const configs = {
  "'pad', 64 MiB segments + spares (defaults)": () => makeContestant('dw-pad', { packageDir }),
  "'pad', one 1 GiB segment, no spare": () =>
    makeOurs('dw-pad', { ...OUR_CONFIGS['dw-pad'], segmentSize: 2 ** 30, prepareSegments: false }, { packageDir }),
  'better-sqlite3 (WAL, FULL)': () => makeContestant('sqlite-wal-full', { packageDir }),
}

/** One timed window of awaited single-record commits, as the benchmark's W1. */
async function run(make) {
  const dir = mkdtempSync(path.join(base, 'w1-spare-'))
  const c = make()
  try {
    await c.open(dir)
    const commit = async () => {
      await c.commitOne(payload)
      if (c.sync) await immediate() // a blocking peer yields after each commit, as in the benchmark
    }
    for (let i = 0; i < 200; i++) await commit()
    const latencies = new LatencyLog()
    let commits = 0
    const end = now() + seconds * 1000
    for (let t = now(); t < end; t = now()) {
      await commit()
      latencies.push((now() - t) * 1000)
      commits++
    }
    return { rate: commits / seconds, ...latencySummary(latencies.values()) }
  } finally {
    await c.close()
    rmSync(dir, { recursive: true, force: true })
  }
}

const rates = new Map(Object.keys(configs).map((name) => [name, []]))
for (let rep = 1; rep <= reps; rep++) {
  for (const [name, make] of Object.entries(configs)) {
    const r = await run(make)
    rates.get(name).push(r.rate)
    console.log(`rep ${rep} ${name}: ${Math.round(r.rate)} commits/s, p50 ${r.p50.toFixed(0)} µs, p99 ${r.p99.toFixed(0)} µs, max ${r.max.toFixed(0)} µs`)
  }
}
for (const [name, values] of rates) {
  console.log(`${name}: median ${Math.round(median(values))} commits/s (${Math.round(Math.min(...values))}–${Math.round(Math.max(...values))})`)
}
