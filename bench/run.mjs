#!/usr/bin/env node
// doublewrite benchmark: our WAL next to the device limit, a hand-written JS log and the
// libraries a Node user would pick instead, measured side by side in ONE run.
//
//   node bench/run.mjs [--seconds S] [--reps N] [--sizes 128,4096] [--json FILE]
//                      [--only ID,...] [--workloads W1,W2,W3-64,W3-256,device,baseline,recovery,jscost]
//                      [--dir DIR] [--package DIR | --package A=DIR,B=DIR] [--warmup S]
//                      [--open-bytes N] [--chart SVG] [--quick]
//   node bench/run.mjs --report FILE    (the table and target checks of a saved --json run)
//
// Prints ONE Markdown table on stdout (progress, warnings and the target check go to
// stderr); with --json FILE, writes the same figures (and every run's raw figures) as JSON.
// --package picks the built package to measure (default: the repository root, `npm run build`
// first); `--package before=DIR,after=DIR` measures several builds in the same run (A/B of a
// change: our cells appear once per build, as `dw-…@before`, `dw-…@after`).
//
// Method: every (contestant, workload, record size) is a cell. A rep runs every cell once,
// round-robin, each in a fresh child process and a fresh directory, with a warm-up before
// the timed window; reps are interleaved (rep 1 of every cell, then rep 2 of every cell, …,
// each rep starting one step further along the list), so slow drifts of the machine
// spread over all cells alike. Every figure is the median over the reps; "spread" is
// (max − min) / median of the cell's headline rate.

import { spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statfsSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import { DESCRIPTIONS, OUR_CONFIGS, peerVersions } from './lib/contestants.mjs'
import { median, spread, min, max } from './lib/stats.mjs'

const here = path.dirname(fileURLToPath(import.meta.url))

// ─── options ──────────────────────────────────────────────────────────────────────────

function parseArgs(argv) {
  const o = {
    seconds: 3,
    reps: 5,
    warmup: 0.5,
    sizes: [128, 4096],
    json: null,
    only: null,
    workloads: null,
    dir: null,
    package: path.resolve(here, '..'),
    packages: null,
    openBytes: 1 << 30,
    repairCommits: 300,
    jsCostCount: 100_000,
    settleMs: 200,
    chart: null,
    quick: false,
    report: null,
  }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const value = () => {
      const v = argv[++i]
      if (v === undefined) throw new Error(`${a} needs a value`)
      return v
    }
    const number = () => {
      const v = Number(value())
      if (!Number.isFinite(v) || v <= 0) throw new Error(`${a} needs a positive number`)
      return v
    }
    switch (a) {
      case '--seconds':
        o.seconds = number()
        break
      case '--reps':
        o.reps = Math.round(number())
        break
      case '--warmup':
        o.warmup = number()
        break
      case '--sizes':
        o.sizes = value().split(',').map(Number)
        if (o.sizes.some((s) => !Number.isInteger(s) || s < 1)) throw new Error('--sizes: positive integers')
        break
      case '--json':
        o.json = path.resolve(value())
        break
      case '--only':
        o.only = value().split(',').filter(Boolean)
        break
      case '--workloads':
        o.workloads = value().split(',').filter(Boolean)
        break
      case '--dir':
        o.dir = path.resolve(value())
        break
      case '--package': {
        const entries = value().split(',').filter(Boolean)
        o.packages = entries.map((e) => {
          const at = e.indexOf('=')
          return at > 0 ? { label: e.slice(0, at), dir: path.resolve(e.slice(at + 1)) } : { label: null, dir: path.resolve(e) }
        })
        if (o.packages.length > 1 && o.packages.some((p) => !p.label)) throw new Error('--package: label every build (A=DIR,B=DIR)')
        o.package = o.packages[0].dir
        break
      }
      case '--open-bytes':
        o.openBytes = Math.round(number())
        break
      case '--chart':
        o.chart = path.resolve(value())
        break
      case '--quick':
        o.quick = true
        break
      case '--report':
        o.report = path.resolve(value())
        break
      case '-h':
      case '--help':
        console.log(readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1, 20).join('\n'))
        process.exit(0)
        break
      default:
        throw new Error(`unknown option ${a} (see --help)`)
    }
  }
  if (!o.packages) o.packages = [{ label: null, dir: o.package }]
  if (o.quick) {
    // A smoke test of the whole pipeline: every cell, short windows, small fixtures.
    const given = new Set(argv)
    if (!given.has('--seconds')) o.seconds = 0.5
    if (!given.has('--reps')) o.reps = 2
    if (!given.has('--warmup')) o.warmup = 0.2
    if (!given.has('--open-bytes')) o.openBytes = 64 << 20
    o.jsCostCount = 20_000
    o.repairCommits = 150
    o.settleMs = 50
  }
  return o
}

// ─── the cells ────────────────────────────────────────────────────────────────────────

const BATCH = 64
const OURS_ALL = Object.keys(OUR_CONFIGS)
const OURS_CONCURRENT = ['dw-mirror', 'dw-buffered-mirror', 'dw-direct-mirror', 'dw-pad', 'dw-buffered-pad', 'dw-off', 'dw-encrypted']
/** With 64 appenders only: what the busy poll costs or buys when commits are always in flight. */
const OURS_BUSY = ['dw-pad-busy', 'dw-mirror-busy']
const SERIAL_PEERS = ['js-wal', 'js-dwb', 'sqlite-wal-full', 'lmdb', 'classic-level-sync']
const CONCURRENT_PEERS = ['lmdb', 'classic-level-sync']
const DEVICE = [
  { id: 'device-1file', files: 1, direct: false, note: 'write+fdatasync, 1 preallocated file' },
  { id: 'device-2file', files: 2, direct: false, note: 'two-file cycle (least a DWB commit costs)' },
  { id: 'device-2file-overlap', files: 2, direct: false, overlap: true, note: 'two-file cycle, both fdatasyncs at once (as a steady-state mirror commit)' },
  { id: 'device-1file-odirect', files: 1, direct: true, note: 'as device-1file, O_DIRECT' },
  { id: 'device-2file-odirect', files: 2, direct: true, note: 'as device-2file, O_DIRECT' },
]

function buildCells(o) {
  const cells = []
  const add = (cell) => cells.push(cell)
  for (const d of DEVICE) {
    add({ id: d.id, group: 'device', kind: 'device', contestant: d.id, workload: 'device', size: 4096, files: d.files, direct: d.direct, overlap: d.overlap ?? false, blockSize: 4096, note: d.note })
  }
  for (const size of o.sizes) {
    for (const c of [...OURS_ALL, ...SERIAL_PEERS]) {
      add({ id: `${c}/W1/${size}`, group: 'W1', kind: 'workload', contestant: c, workload: 'W1', size })
    }
    for (const c of [...OURS_ALL, ...SERIAL_PEERS]) {
      add({ id: `${c}/W2/${size}`, group: 'W2', kind: 'workload', contestant: c, workload: 'W2', size, batch: BATCH })
    }
    for (const n of [64, 256]) {
      for (const c of [...OURS_CONCURRENT, ...(n === 64 ? OURS_BUSY : []), ...CONCURRENT_PEERS]) {
        add({ id: `${c}/W3-${n}/${size}`, group: `W3-${n}`, kind: 'workload', contestant: c, workload: 'W3', concurrency: n, size })
      }
    }
  }
  add({ id: 'baseline-idle', group: 'baseline', kind: 'idle', contestant: 'idle event loop', workload: 'idle', size: 0 })
  add({ id: 'recovery-open', group: 'recovery', kind: 'open', contestant: 'dw-buffered-mirror', workload: 'open', size: 4096 })
  add({ id: 'recovery-repair', group: 'recovery', kind: 'repair', contestant: 'dw-buffered-mirror', workload: 'repair', size: 0 })
  for (const size of o.sizes) {
    add({ id: `jscost/${size}`, group: 'jscost', kind: 'jscost', contestant: 'dw-buffered-mirror', workload: 'jscost', size })
  }
  // Our cells once per build when several are compared; everything else uses the first.
  const expanded = []
  for (const cell of cells) {
    if (o.packages.length > 1 && OUR_CONFIGS[cell.contestant]) {
      for (const p of o.packages) {
        const contestant = `${cell.contestant}@${p.label}`
        // The append-cost cells' ids (`jscost/SIZE`) do not name the contestant: label them.
        const id = cell.kind === 'jscost' ? `${cell.id}@${p.label}` : cell.id.replace(cell.contestant, contestant)
        expanded.push({ ...cell, id, contestant, packageDir: p.dir })
      }
    } else expanded.push({ ...cell, packageDir: o.package })
  }
  return expanded.filter(
    (cell) =>
      (!o.workloads || o.workloads.includes(cell.group)) &&
      (!o.only || o.only.some((s) => cell.id.includes(s))),
  )
}

// ─── environment ──────────────────────────────────────────────────────────────────────

const FS_NAMES = {
  0xef53: 'ext4',
  0x58465342: 'xfs',
  0x9123683e: 'btrfs',
  0x01021994: 'tmpfs',
  0x858458f6: 'ramfs',
  0x2fc12fc1: 'zfs',
  0x65735546: 'fuse',
  0x794c7630: 'overlayfs',
  0x6969: 'nfs',
}

function fsType(dir) {
  try {
    const t = statfsSync(dir).type
    return FS_NAMES[t] ?? `0x${t.toString(16)}`
  } catch {
    return 'unknown'
  }
}

function sh(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' })
  return r.status === 0 ? r.stdout.trim() : null
}

/** /sys/class/block/<dev>/stat of the device holding `dir`, or null. */
function diskStatPath(dir) {
  const source = sh('findmnt', ['-n', '-o', 'SOURCE', '-T', dir])
  if (!source?.startsWith('/dev/')) return null
  const file = `/sys/class/block/${path.basename(source)}/stat`
  try {
    readFileSync(file)
    return file
  } catch {
    return null
  }
}

function machine(dir, o) {
  const mount = sh('findmnt', ['-n', '-o', 'SOURCE,FSTYPE,OPTIONS', '-T', dir])
  const source = mount?.split(/\s+/)[0] ?? ''
  const dev = path.basename(source).replace(/[0-9]+$/, '').replace(/p$/, '')
  let writeCache = null
  try {
    writeCache = readFileSync(`/sys/block/${path.basename(source)}/queue/write_cache`, 'utf8').trim()
  } catch {
    try {
      writeCache = readFileSync(`/sys/block/${dev}/queue/write_cache`, 'utf8').trim()
    } catch {
      writeCache = null
    }
  }
  let pkgVersion = null
  try {
    pkgVersion = JSON.parse(readFileSync(path.join(o.package, 'package.json'), 'utf8')).version
  } catch {
    pkgVersion = null
  }
  const commit = sh('git', ['-C', o.package, 'rev-parse', '--short', 'HEAD'])
  const dirty = sh('git', ['-C', o.package, 'status', '--porcelain', '--untracked-files=no'])
  return {
    date: new Date().toISOString(),
    host: os.hostname(),
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? null,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    kernel: os.release(),
    node: process.version,
    dir,
    fsType: fsType(dir),
    mount,
    writeCache,
    diskStat: diskStatPath(dir),
    loadAvgAtStart: os.loadavg(),
    package: { dir: o.package, version: pkgVersion, commit: commit ? `${commit}${dirty ? '+dirty' : ''}` : null },
    packages: o.packages,
    peers: peerVersions(),
  }
}

// ─── running ──────────────────────────────────────────────────────────────────────────

function runChild(spec, timeoutMs) {
  const r = spawnSync(process.execPath, [path.join(here, 'cell.mjs'), JSON.stringify(spec)], {
    encoding: 'utf8',
    timeout: timeoutMs,
    maxBuffer: 64 << 20,
  })
  if (r.status !== 0) {
    const why = r.error ? r.error.message : (r.stderr || `exit ${r.status}`).trim().split('\n').slice(0, 4).join(' | ')
    return { error: why }
  }
  const last = r.stdout.trim().split('\n').pop()
  try {
    return JSON.parse(last)
  } catch {
    return { error: `bad output: ${last?.slice(0, 200)}` }
  }
}

function settle(ms) {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)
}

function log(line) {
  process.stderr.write(`${line}\n`)
}

// ─── summary ──────────────────────────────────────────────────────────────────────────

const REFERENCE_SLOT_BYTES = 69_632 // the reference design writes a whole slot per record

function summarize(cell, runs) {
  const ok = runs.filter((r) => !r.error)
  const pick = (f) => ok.map(f).filter((v) => v !== null && v !== undefined && Number.isFinite(v))
  const med = (f) => median(pick(f))
  const s = {
    id: cell.id,
    contestant: cell.contestant,
    workload: cell.workload === 'W3' ? `W3-${cell.concurrency}` : cell.workload,
    size: cell.size,
    runs: ok.length,
    errors: runs.filter((r) => r.error).map((r) => r.error),
  }
  if (ok.length === 0) return s
  if (cell.kind === 'open') {
    s.gbPerSec = med((r) => r.gbPerSec)
    s.spread = spread(pick((r) => r.gbPerSec))
    s.openMs = med((r) => r.openMs)
    s.coreMs = med((r) => r.coreMs)
    s.recordBytes = ok[0].recordBytes
    s.segmentBytes = ok[0].segmentBytes
    s.records = ok[0].records
    s.pageCacheResident = min(pick((r) => r.pageCacheResident))
    const cached = s.pageCacheResident === null ? 'read once before timing' : `${pct(s.pageCacheResident)} resident per fincore`
    s.note = `open ${(s.recordBytes / 2 ** 30).toFixed(2)} GiB of records (${ok[0].segments} segments) from the page cache (${cached}): ${fmt(s.openMs, 0)} ms = ${fmt(s.gbPerSec, 2)} GB/s (core ${fmt(s.coreMs, 0)} ms)`
    return s
  }
  if (cell.kind === 'repair') {
    s.openMs = med((r) => r.openMs)
    s.coreMs = med((r) => r.coreMs)
    s.spread = spread(pick((r) => r.openMs))
    s.repaired = ok[0].repairedFromDwb
    s.note = `open + repair of a torn acknowledged record from a full ${ok[0].dwbSlots}-slot DWB (${ok[0].commits} commits): ${fmt(s.openMs, 1)} ms (core ${fmt(s.coreMs, 1)} ms), ${s.repaired} repaired`
    return s
  }
  if (cell.kind === 'idle') {
    s.eldP99Ms = med((r) => r.eldP99Ms)
    s.ioWaitP99Ms = med((r) => r.ioWaitP99Ms)
    s.spread = spread(pick((r) => r.eldP99Ms))
    s.note = 'event-loop delay p99 of an idle Node process (1 ms monitor, delay beyond its period) and the I/O wait p99 (a pipe message, write to callback): the floors of this machine'
    return s
  }
  if (cell.kind === 'jscost') {
    s.jsUsPerRecord = med((r) => r.syncUsPerAppend)
    s.spread = spread(pick((r) => r.syncUsPerAppend))
    s.submitUsPerAppend = med((r) => r.submitUsPerAppend)
    s.allInUsPerAppend = med((r) => r.allInUsPerAppend)
    s.commits = med((r) => r.commits)
    s.wallSyncUsPerAppend = med((r) => r.wallSyncUsPerAppend)
    s.againUsPerAppend = med((r) => r.againSyncUsPerAppend)
    s.note = `${ok[0].records} appends issued in one loop, JS-thread CPU: ${fmt(s.jsUsPerRecord, 2)} µs each (sync part; wall ${fmt(s.wallSyncUsPerAppend, 2)}) + ${fmt(s.submitUsPerAppend, 2)} µs (the tick's native submit); ${fmt(s.allInUsPerAppend, 2)} µs/append all-in until all resolved (${fmt(s.commits, 0)} commits); the same burst again in the process: ${fmt(s.againUsPerAppend, 2)} µs sync part`
    return s
  }
  const recordsPerSec = pick((r) => r.records / r.seconds)
  s.recordsPerSec = median(recordsPerSec)
  s.recordsPerSecMin = min(recordsPerSec)
  s.recordsPerSecMax = max(recordsPerSec)
  s.commitsPerSec = med((r) => (r.commits === null || r.commits === undefined ? null : r.commits / r.seconds))
  s.spread = spread(recordsPerSec)
  s.p50Us = med((r) => r.latencyUs?.p50)
  s.p99Us = med((r) => r.latencyUs?.p99)
  s.maxUs = med((r) => r.latencyUs?.max)
  if (cell.kind === 'device') {
    s.meanWriteUs = med((r) => r.meanWriteUs)
    s.meanSyncUs = med((r) => r.meanSyncUs)
    s.syncsPerCommit = cell.files
    s.note = `${cell.note}; ${cell.blockSize} B; write ${fmt(s.meanWriteUs, 0)} µs + fdatasync ${fmt(s.meanSyncUs, 0)} µs`
    return s
  }
  s.eldP99Ms = med((r) => r.eldP99Ms)
  s.ioWaitP99Ms = med((r) => r.ioWaitP99Ms)
  s.elu = med((r) => r.elu)
  s.jsUsPerRecord = med((r) => r.jsCpuUsPerRecord)
  s.jsCpuUtilization = med((r) => r.jsCpuUtilization)
  s.ioBytesPerRecord = med((r) => (r.ioWriteBytes === null ? null : r.ioWriteBytes / r.records))
  s.deviceBytesPerRecord = med((r) => (r.deviceWriteBytes == null ? null : r.deviceWriteBytes / r.records))
  if (ok[0].stats && 'walBytesWritten' in ok[0].stats) {
    s.dwbBytesPerRecord = med((r) => r.stats.dwbBytesWritten / r.stats.records)
    s.walBytesPerRecord = med((r) => r.stats.walBytesWritten / r.stats.records)
    s.paddingBytesPerRecord = med((r) => r.stats.paddingBytes / r.stats.records)
    s.syncsPerCommit = med((r) => (r.stats.walSyncs + r.stats.dwbSyncs) / r.stats.commits)
    s.recordsPerCommit = med((r) => r.stats.records / r.stats.commits)
    s.segmentRolls = med((r) => r.stats.segmentRolls)
    s.protection = ok[0].protection
    const notes = []
    if (s.workload.startsWith('W3')) notes.push(`${fmt(s.recordsPerCommit, 1)} rec/commit`)
    if (s.paddingBytesPerRecord > 0) notes.push(`pad ${fmt(s.paddingBytesPerRecord, 0)} B/rec`)
    if (s.segmentRolls > 0) notes.push(`${fmt(s.segmentRolls, 0)} segment rolls/run`)
    if (s.contestant === 'dw-direct-mirror' && s.workload === 'W2' && s.size === 128) {
      const ratio = REFERENCE_SLOT_BYTES / (s.dwbBytesPerRecord + s.walBytesPerRecord)
      s.referenceRatio = ratio
      notes.push(`1/${fmt(ratio, 0)} of the reference's bytes/record`)
    }
    s.note = notes.join('; ')
  } else if (ok[0].stats?.syncsPerCommit) {
    s.syncsPerCommit = ok[0].stats.syncsPerCommit
  }
  if (s.workload.startsWith('W3') && s.commitsPerSec === null) s.note = 'commits: decided by the library'
  return s
}

function fmt(v, digits = 0) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–'
  return v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
}

function pct(v) {
  return v === null || v === undefined ? '–' : `${Math.round(v * 100)}%`
}

function sig(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–'
  if (Math.abs(v) >= 100) return fmt(v, 0)
  if (Math.abs(v) >= 10) return fmt(v, 1)
  return fmt(v, 2)
}

const COLUMNS = [
  'contestant',
  'rec B',
  'workload',
  'records/s',
  'commits/s',
  'spread',
  'p50 µs',
  'p99 µs',
  'max µs',
  'ELD p99 ms',
  'I/O wait p99 ms',
  'JS CPU µs/rec',
  'DWB B/rec',
  'WAL B/rec',
  'dev B/rec',
  'syncs/commit',
  'note',
]

function tableRow(s) {
  if (s.runs === 0) {
    return [s.contestant, s.size || '–', s.workload, 'error', '', '', '', '', '', '', '', '', '', '', '', '', s.errors[0]?.slice(0, 120) ?? '']
  }
  if (s.workload === 'open' || s.workload === 'repair') {
    const rate = s.workload === 'open' ? `${fmt(s.gbPerSec, 2)} GB/s` : `${fmt(s.openMs, 1)} ms`
    return ['recovery', s.size || '–', s.workload, rate, '–', pct(s.spread), '', '', '', '', '', '', '', '', '', '', s.note]
  }
  if (s.workload === 'idle') {
    return ['baseline', '–', 'idle', '–', '–', pct(s.spread), '', '', '', sig(s.eldP99Ms), sig(s.ioWaitP99Ms), '', '', '', '', '', s.note]
  }
  if (s.workload === 'jscost') {
    return [s.contestant, s.size, 'append cost', '–', '–', pct(s.spread), '', '', '', '', '', sig(s.jsUsPerRecord), '', '', '', '', s.note]
  }
  return [
    s.contestant,
    s.size,
    s.workload,
    fmt(s.recordsPerSec),
    fmt(s.commitsPerSec),
    pct(s.spread),
    fmt(s.p50Us),
    fmt(s.p99Us),
    fmt(s.maxUs),
    s.eldP99Ms === undefined ? '' : sig(s.eldP99Ms),
    s.ioWaitP99Ms == null ? '' : sig(s.ioWaitP99Ms),
    s.jsUsPerRecord === undefined ? '' : sig(s.jsUsPerRecord),
    s.dwbBytesPerRecord === undefined ? '' : fmt(s.dwbBytesPerRecord),
    s.walBytesPerRecord === undefined ? '' : fmt(s.walBytesPerRecord),
    s.deviceBytesPerRecord == null ? '' : fmt(s.deviceBytesPerRecord),
    s.syncsPerCommit === undefined ? '' : sig(s.syncsPerCommit),
    s.note ?? '',
  ]
}

export function markdownTable(summaries) {
  const lines = [`| ${COLUMNS.join(' | ')} |`, `|${COLUMNS.map((c, i) => (i < 3 || i === COLUMNS.length - 1 ? '---' : '---:')).join('|')}|`]
  for (const s of summaries) lines.push(`| ${tableRow(s).join(' | ')} |`)
  return lines.join('\n')
}

// ─── targets of issue 6 (ratios in the same run) ──────────────────────────────────────

function targets(summaries) {
  const get = (id) => summaries.find((s) => s.id === id && s.runs > 0)
  const out = []
  const check = (name, value, goal, pass, detail) => out.push({ name, value, goal, pass, detail })
  const dev2 = get('device-2file')
  const sq1 = get('sqlite-wal-full/W1/128')
  // W1: `mirror` against the two-file cycle, `pad` against better-sqlite3. Besides the
  // issue's rows (awaited appends, each DWB mode for the default), the like-for-like
  // blocking ones (the device loop and better-sqlite3 block, as appendSync does) and the
  // awaited ones with the event loop turning while a commit is in flight (busyPoll).
  const cycle = { base: dev2, goal: 0.9, against: '0.9 × two-file cycle', unit: 'cycles/s' }
  const sqlite = { base: sq1, goal: 1, against: 'better-sqlite3 (WAL, FULL)', unit: 'commits/s' }
  const w1 = [
    ['dw-mirror', " (awaited, the defaults: O_DIRECT, kernelCompletion)", cycle],
    ['dw-buffered-mirror', ' (awaited, directIo: false)', cycle],
    ['dw-direct-mirror', ' (awaited, directIo: false)', cycle],
    ['dw-mirror-sync', ' (appendSync, blocking as the device loop)', cycle],
    ['dw-mirror-busy', ' (awaited, busyPoll)', cycle],
    ['dw-pad-busy', ' (awaited, busyPoll)', sqlite],
    ['dw-pad', " (awaited, 'pad' defaults: O_DIRECT, kernelCompletion)", sqlite],
    ['dw-buffered-pad', ' (awaited, directIo: false)', sqlite],
    ['dw-pad-sync', ' (appendSync, blocking as better-sqlite3)', { ...sqlite, against: 'better-sqlite3' }],
  ]
  for (const [config, how, { base, goal, against, unit }] of w1) {
    const own = get(`${config}/W1/128`)
    if (!own || !base) continue
    // A device cell's commits are its cycles (one record each).
    const r = own.commitsPerSec / base.commitsPerSec
    check(`W1 ${config}${how} ≥ ${against}`, r, goal, r >= goal, `${fmt(own.commitsPerSec)} vs ${fmt(base.commitsPerSec)} ${unit}`)
  }
  for (const config of ['dw-mirror', 'dw-buffered-mirror', 'dw-direct-mirror', 'dw-pad', 'dw-buffered-pad', 'dw-mirror-busy', 'dw-pad-busy']) {
    const w2 = get(`${config}/W2/128`)
    for (const peer of ['js-wal', 'sqlite-wal-full']) {
      const p = get(`${peer}/W2/128`)
      if (w2 && p) {
        const r = w2.recordsPerSec / p.recordsPerSec
        check(`W2 ${config} ≥ ${peer} (records/s)`, r, 1, r >= 1, `${fmt(w2.recordsPerSec)} vs ${fmt(p.recordsPerSec)}`)
      }
    }
    const w3 = get(`${config}/W3-64/128`)
    const l3 = get('lmdb/W3-64/128')
    if (w3 && l3) {
      const r = w3.recordsPerSec / l3.recordsPerSec
      check(`W3-64 ${config} ≥ 2 × lmdb (records/s)`, r, 2, r >= 2, `${fmt(w3.recordsPerSec)} vs ${fmt(l3.recordsPerSec)}`)
    }
    // Group commit's gain over one writer; not for busyPoll, which raises that one writer.
    const own1 = OURS_BUSY.includes(config) ? undefined : get(`${config}/W1/128`)
    if (w3 && own1) {
      const r = w3.recordsPerSec / own1.recordsPerSec
      check(`W3-64 ${config} ≥ 40 × own W1`, r, 40, r >= 40, `${fmt(w3.recordsPerSec)} vs ${fmt(own1.recordsPerSec)}`)
    }
  }
  const d2 = get('dw-direct-mirror/W2/128')
  if (d2?.referenceRatio) {
    check('direct DWB, W2 128 B: bytes/record ≤ 1/50 of the reference', d2.referenceRatio, 50, d2.referenceRatio >= 50, `${fmt(d2.dwbBytesPerRecord + d2.walBytesPerRecord)} vs ${REFERENCE_SLOT_BYTES} B/record`)
  }
  const ours = summaries.filter((s) => s.runs > 0 && s.contestant.startsWith('dw-') && s.workload.startsWith('W3'))
  if (ours.length) {
    const worst = ours.reduce((a, b) => ((b.eldP99Ms ?? 0) > (a.eldP99Ms ?? 0) ? b : a))
    const io = ours.reduce((a, b) => ((b.ioWaitP99Ms ?? 0) > (a.ioWaitP99Ms ?? 0) ? b : a))
    check('event-loop delay p99 ≤ 1 ms under full load (worst W3 cell of ours)', worst.eldP99Ms, 1, worst.eldP99Ms <= 1, `${worst.id}; worst I/O wait p99 ${sig(io.ioWaitP99Ms)} ms (${io.id})`)
  }
  for (const s of summaries.filter((x) => x.workload === 'jscost' && x.runs > 0)) {
    const build = s.contestant.includes('@') ? `, ${s.contestant.split('@')[1]}` : ''
    check(`JS-side cost of an append ≤ 2 µs (${s.size} B, sync part${build})`, s.jsUsPerRecord, 2, s.jsUsPerRecord <= 2, `all-in ${fmt(s.allInUsPerAppend, 2)} µs incl. submit and completions; ${fmt(s.againUsPerAppend, 2)} µs for the same burst again in the process`)
  }
  const open = get('recovery-open')
  if (open) check('open a 1 GiB WAL ≥ 1 GB/s (page cache)', open.gbPerSec, 1, open.gbPerSec >= 1, open.note)
  return out
}

// ─── main ─────────────────────────────────────────────────────────────────────────────

async function main() {
  const o = parseArgs(process.argv.slice(2))
  if (o.report) return report(o)
  const root = o.dir ?? os.tmpdir()
  const type = fsType(root)
  if (type === 'tmpfs' || type === 'ramfs') {
    log(`WARNING: ${root} is on ${type}: fdatasync is free there and nothing measured is durable. Use --dir on a real disk.`)
  }
  mkdirSync(root, { recursive: true })
  const base = mkdtempSync(path.join(root, 'doublewrite-bench-'))
  const env = machine(base, o)
  const cells = buildCells(o)
  if (cells.length === 0) throw new Error('no cell matches --only / --workloads')
  log(`doublewrite bench: ${cells.length} cells × ${o.reps} reps, ${o.seconds} s each (+${o.warmup} s warm-up), in ${base} (${env.fsType}); package ${env.package.dir} @ ${env.package.commit}`)
  if (o.quick) log('--quick: a smoke test — short windows, small fixtures; do not quote these figures')
  const missing = ['better-sqlite3', 'lmdb', 'classic-level'].filter((name) => env.peers[name] === null)
  if (missing.length) log(`WARNING: ${missing.join(', ')} not installed: run \`npm --prefix bench ci\` (their cells will fail)`)
  if (o.chart && !o.json) o.json = path.join(here, 'results', 'latest.json')

  const timeoutMs = (o.seconds + o.warmup) * 1000 * 10 + 120_000
  const fixtures = {}
  try {
    // Recovery fixtures, built once (the open is read-only: the same WAL serves every rep).
    if (cells.some((c) => c.kind === 'open')) {
      const fixtureDir = path.join(base, 'fixture-open')
      mkdirSync(fixtureDir)
      log(`building the ${(o.openBytes / 2 ** 20).toFixed(0)} MiB WAL for the open benchmark…`)
      const r = runChild({ kind: 'fixture-open', fixtureDir, bytes: o.openBytes, packageDir: o.package }, 3_600_000)
      if (r.error) log(`  failed: ${r.error}`)
      else fixtures.open = { fixtureDir, ...r }
    }
    if (cells.some((c) => c.kind === 'repair')) {
      const fixtureDir = path.join(base, 'fixture-repair')
      mkdirSync(fixtureDir)
      log('building the torn WAL with a full DWB for the repair benchmark…')
      const r = runChild({ kind: 'fixture-repair', fixtureDir, commits: o.repairCommits, packageDir: o.package }, 600_000)
      if (r.error) log(`  failed: ${r.error}`)
      else fixtures.repair = { fixtureDir, ...r }
    }
    if (fixtures.open) env.openFixture = fixtures.open
    if (fixtures.repair) env.repairFixture = fixtures.repair

    const runs = new Map(cells.map((c) => [c.id, []]))
    const started = Date.now()
    const step = Math.max(1, Math.ceil(cells.length / o.reps))
    for (let rep = 0; rep < o.reps; rep++) {
      const offset = (rep * step) % cells.length
      for (let j = 0; j < cells.length; j++) {
        const cell = cells[(offset + j) % cells.length]
        const dir = path.join(base, `r${rep}-${cell.id.replaceAll('/', '_')}`)
        mkdirSync(dir)
        const spec = {
          ...cell,
          contestant: cell.contestant.replace(/@.*$/, ''),
          dir,
          seconds: o.seconds,
          warmup: o.warmup,
          diskStat: env.diskStat,
        }
        if (cell.kind === 'open' || cell.kind === 'repair') {
          const f = fixtures[cell.kind]
          if (!f) {
            runs.get(cell.id).push({ error: 'fixture missing' })
            continue
          }
          spec.fixtureDir = f.fixtureDir
        }
        if (cell.kind === 'jscost') spec.count = o.jsCostCount
        const r = runChild(spec, timeoutMs)
        runs.get(cell.id).push(r)
        rmSync(dir, { recursive: true, force: true })
        const done = rep * cells.length + j + 1
        const eta = ((Date.now() - started) / done) * (cells.length * o.reps - done)
        log(`[${rep + 1}/${o.reps}] ${cell.id}: ${r.error ? `ERROR ${r.error}` : brief(r)}  (eta ${Math.round(eta / 1000)} s)`)
        settle(o.settleMs)
      }
    }

    const summaries = cells.map((c) => summarize(c, runs.get(c.id)))
    const checks = targets(summaries)
    console.log(markdownTable(summaries))
    log('\ntargets of issue 6 (ratios from this run):')
    for (const t of checks) log(`  ${t.pass ? 'PASS' : 'MISS'}  ${t.name}: ${sig(t.value)} (goal ${t.goal}) — ${t.detail}`)
    env.loadAvgAtEnd = os.loadavg()
    env.elapsedSeconds = (Date.now() - started) / 1000
    if (o.json) {
      const out = {
        tool: 'doublewrite bench/run.mjs',
        options: { ...o, json: undefined },
        machine: env,
        contestants: DESCRIPTIONS,
        summaries,
        targets: checks,
        runs: Object.fromEntries([...runs].map(([id, rs]) => [id, rs])),
      }
      mkdirSync(path.dirname(o.json), { recursive: true })
      writeFileSync(o.json, `${JSON.stringify(out, null, 1)}\n`)
      log(`wrote ${o.json}`)
    }
    if (o.chart) {
      const r = spawnSync(process.execPath, [path.join(here, 'chart.mjs'), o.json, '--out', o.chart], { stdio: 'inherit' })
      if (r.status !== 0) log('chart: failed')
    }
  } finally {
    rmSync(base, { recursive: true, force: true })
  }
}

/** `--report FILE`: the table and the target checks of a saved run, measured again from
 * nothing (the summaries are kept, the targets recomputed with this version's list). */
function report(o) {
  const saved = JSON.parse(readFileSync(o.report, 'utf8'))
  console.log(markdownTable(saved.summaries))
  log('\ntargets of issue 6 (ratios from that run):')
  for (const t of targets(saved.summaries)) log(`  ${t.pass ? 'PASS' : 'MISS'}  ${t.name}: ${sig(t.value)} (goal ${t.goal}) — ${t.detail}`)
}

function brief(r) {
  if (r.gbPerSec !== undefined) return `${r.gbPerSec.toFixed(2)} GB/s (${r.openMs.toFixed(0)} ms)`
  if (r.repairedFromDwb !== undefined) return `${r.openMs.toFixed(1)} ms, ${r.repairedFromDwb} repaired`
  if (r.syncUsPerAppend !== undefined) return `${r.syncUsPerAppend.toFixed(2)} µs/append sync part, ${r.allInUsPerAppend.toFixed(2)} all-in`
  const rate = r.records / r.seconds
  return `${Math.round(rate)} rec/s, p99 ${Math.round(r.latencyUs?.p99 ?? 0)} µs${r.eldP99Ms != null ? `, ELD p99 ${r.eldP99Ms.toFixed(2)} ms` : ''}`
}

main().catch((error) => {
  log(error?.stack ?? String(error))
  process.exit(1)
})
