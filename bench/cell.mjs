// Runs ONE cell of the benchmark once, in its own process, and prints its figures as one
// line of JSON on stdout. Started by run.mjs (never needed by hand):
//   node bench/cell.mjs '<spec as JSON>'
// A fresh process per run keeps cells from sharing a heap, a GC state, an event loop,
// native threads or open files; the event-loop delay and utilisation are this cell's own.

import { spawnSync } from 'node:child_process'
import { randomBytes, randomFillSync } from 'node:crypto'
import {
  closeSync,
  cpSync,
  existsSync,
  fstatSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs'
import path from 'node:path'
import { monitorEventLoopDelay, performance } from 'node:perf_hooks'
import { setImmediate as immediate, setTimeout as sleep } from 'node:timers/promises'

import { isOurs, loadPackage, makeContestant } from './lib/contestants.mjs'
import { startIoProbe } from './lib/ioprobe.mjs'
import { LatencyLog, latencySummary } from './lib/stats.mjs'

const spec = JSON.parse(process.argv[2] ?? '{}')
const now = () => performance.now()

/** Bytes this process caused to be sent to the storage layer (Linux /proc/self/io). */
function ioWriteBytes() {
  try {
    const m = /^write_bytes: (\d+)$/m.exec(readFileSync('/proc/self/io', 'utf8'))
    return m ? Number(m[1]) : null
  } catch {
    return null
  }
}

/** CPU time of the calling thread (the JS thread) in ns, from the scheduler; null off Linux. */
function threadCpuNs() {
  try {
    return Number(readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[0])
  } catch {
    return null
  }
}

/**
 * Bytes written to the device holding the benchmark directory (its /sys/class/block/<dev>/stat
 * sectors), by everyone: meaningful on a quiet machine only. Unlike /proc/self/io, it is not
 * inflated by large page-cache folios (ext4 on 6.x kernels dirties up to 2 MiB at once).
 */
function deviceWriteBytes() {
  if (!spec.diskStat) return null
  try {
    return Number(readFileSync(spec.diskStat, 'utf8').trim().split(/\s+/)[6]) * 512
  } catch {
    return null
  }
}

/** 1024 random payloads of `size` bytes, used round-robin. */
function payloadPool(size) {
  const pool = []
  for (let i = 0; i < 1024; i++) pool.push(randomFillSync(Buffer.allocUnsafe(size)))
  return pool
}

/** Period of the event-loop delay monitor's timer. */
const ELD_RESOLUTION_MS = 1

/** The I/O-wait probe of workload and idle cells, started before their warm-up. */
const ioProbe = spec.kind === 'workload' || spec.kind === 'idle' ? startIoProbe() : null

/**
 * Starts the probes of a timed window, which is split in two halves under the same load.
 * The first half measures the JS thread's availability: the event-loop delay monitor (a 1
 * ms timer) and the I/O wait ({@link ioProbe}: a child process writing to a pipe every
 * millisecond). Both wake the event loop on their own, which an awaited commit pays for
 * and a blocking one does not (the 'data' callbacks wait until it yields): measured, the
 * probe alone took 8–14 % off an awaited one-writer loop (docs/PERFORMANCE.md, Method).
 * So `mid()` turns both off, and the second half measures everything else with neither
 * running: rates, latencies, the JS thread's CPU time and utilisation, device and WAL
 * counters. `stop(records)` takes the records of the second half.
 */
function probes(contestant) {
  const eld = monitorEventLoopDelay({ resolution: ELD_RESOLUTION_MS })
  eld.enable()
  ioProbe?.start()
  const t0 = now()
  let half = null
  return {
    t0,
    mid() {
      if (half) return
      eld.disable()
      const io = ioProbe?.stop() ?? {}
      half = {
        io,
        t: now(),
        cpu: threadCpuNs(),
        elu: performance.eventLoopUtilization(),
        stats: contestant?.stats?.(),
        ioBytes: ioWriteBytes(),
        devBytes: deviceWriteBytes(),
      }
    },
    stop(records) {
      if (!half) this.mid()
      const t1 = now()
      const cpu1 = threadCpuNs()
      const elu = performance.eventLoopUtilization(half.elu)
      const io1 = ioWriteBytes()
      const dev1 = deviceWriteBytes()
      const stats0 = half.stats
      const stats1 = contestant?.stats?.()
      let statsDelta = null
      if (stats0 && stats1) {
        statsDelta = {}
        for (const k of Object.keys(stats1)) statsDelta[k] = stats1[k] - (stats0[k] ?? 0)
      }
      return {
        t1,
        seconds: (t1 - half.t) / 1000,
        // The monitor records the interval between its timer's callbacks, which includes
        // the timer's own period: the delay is what exceeds it.
        eldP99Ms: eld.count > 0 ? Math.max(0, eld.percentile(99) / 1e6 - ELD_RESOLUTION_MS) : null,
        eldMaxMs: eld.count > 0 ? Math.max(0, eld.max / 1e6 - ELD_RESOLUTION_MS) : null,
        eldIntervalP99Ms: eld.count > 0 ? eld.percentile(99) / 1e6 : null,
        eldSamples: eld.count,
        ...half.io,
        elu: elu.utilization,
        jsCpuUsPerRecord: half.cpu === null || cpu1 === null || records <= 0 ? null : (cpu1 - half.cpu) / 1e3 / records,
        jsCpuUtilization: half.cpu === null || cpu1 === null ? null : (cpu1 - half.cpu) / 1e6 / (t1 - half.t),
        ioWriteBytes: half.ioBytes === null || io1 === null ? null : io1 - half.ioBytes,
        deviceWriteBytes: half.devBytes === null || dev1 === null ? null : dev1 - half.devBytes,
        stats: statsDelta,
      }
    },
  }
}

/** W1 (batch = 1) and W2 (batch = 64): one writer awaiting each commit. */
async function serial(c, { size, batch, seconds, warmup }) {
  const pool = payloadPool(size)
  let k = 0
  const op =
    batch === 1
      ? () => c.commitOne(pool[k++ & 1023])
      : () => {
          const payloads = new Array(batch)
          for (let i = 0; i < batch; i++) payloads[i] = pool[k++ & 1023]
          return c.commitBatch(payloads)
        }
  const warmEnd = now() + warmup * 1000
  for (let i = 0; i < 20 || now() < warmEnd; i++) {
    await op()
    if (c.sync) await immediate()
  }
  const latencies = new LatencyLog()
  const p = probes(c)
  const mid = p.t0 + (seconds * 1000) / 2
  const end = p.t0 + seconds * 1000
  let commits = 0
  let measuring = false
  for (let t = now(); t < end; t = now()) {
    if (!measuring && t >= mid) {
      p.mid()
      measuring = true
    }
    await op()
    if (measuring) {
      latencies.push(now() - t)
      commits++
    }
    if (c.sync) await immediate()
  }
  const w = p.stop(commits * batch)
  return { ...w, commits, records: commits * batch, latencyUs: scale(latencySummary(latencies.values()), 1000) }
}

/** W3: `n` appenders, each awaiting its own append then issuing the next (closed loop). */
async function concurrent(c, { size, concurrency, seconds, warmup }) {
  if (typeof c.append !== 'function') throw new Error(`${c.id} has no asynchronous append`)
  const pool = payloadPool(size)
  let k = 0
  let stop = false
  let timed = false
  let windowEnd = Infinity
  let records = 0
  const latencies = new LatencyLog()
  const client = async () => {
    while (!stop) {
      const t = now()
      await c.append(pool[k++ & 1023])
      if (timed) {
        const e = now()
        if (e <= windowEnd) {
          latencies.push(e - t)
          records++
        }
      }
    }
  }
  const clients = Array.from({ length: concurrency }, client)
  const failed = Promise.all(clients).then(() => null)
  const guard = async (promise) => {
    const winner = await Promise.race([promise.then(() => 'ok'), failed.then(() => 'ended')])
    if (winner === 'ended' && !stop) throw new Error('appenders ended early')
  }
  await guard(sleep(warmup * 1000))
  const p = probes(c)
  await guard(sleep((seconds * 1000) / 2))
  p.mid()
  timed = true
  await guard(sleep((seconds * 1000) / 2))
  windowEnd = now()
  const w = p.stop(records)
  stop = true
  await failed
  return {
    ...w,
    commits: w.stats ? w.stats.commits : null,
    records,
    latencyUs: scale(latencySummary(latencies.values()), 1000),
  }
}

/** The event loop with nothing to do: the floor of the event-loop delay on this machine. */
async function idle() {
  const p = probes(null)
  await sleep((spec.seconds * 1000) / 2)
  p.mid()
  await sleep((spec.seconds * 1000) / 2)
  const w = p.stop(0)
  return { ...w, records: 0, commits: 0 }
}

function scale(summary, factor) {
  return { n: summary.n, p50: summary.p50 * factor, p99: summary.p99 * factor, max: summary.max * factor }
}

async function workload() {
  const c = makeContestant(spec.contestant, { packageDir: spec.packageDir })
  await c.open(spec.dir)
  let result
  try {
    result =
      spec.workload === 'W3'
        ? await concurrent(c, spec)
        : await serial(c, { ...spec, batch: spec.workload === 'W2' ? spec.batch : 1 })
    if (isOurs(spec.contestant)) result.protection = c.protection()
  } finally {
    await c.close()
  }
  return result
}

async function device() {
  const { binding } = loadPackage(spec.packageDir)
  if (typeof binding?.benchDeviceLimit !== 'function') {
    throw new Error('the built binding has no benchDeviceLimit: rebuild the package (npm run build)')
  }
  const r = await binding.benchDeviceLimit(spec.dir, spec.files, spec.blockSize, spec.seconds, spec.direct, spec.overlap ?? false)
  return {
    seconds: r.seconds,
    commits: r.cycles,
    records: r.cycles,
    latencyUs: { n: r.cycles, p50: r.p50Us, p99: r.p99Us, max: r.maxUs },
    meanWriteUs: r.meanWriteUs,
    meanSyncUs: r.meanSyncUs,
    directIoAlignment: r.directIoAlignment,
  }
}

/** Reads every file of `dir` once (so the timed open reads from the page cache). */
function warmPageCache(dir) {
  const buf = Buffer.allocUnsafe(8 << 20)
  let bytes = 0
  for (const name of readdirSync(dir)) {
    const file = path.join(dir, name)
    if (!statSync(file).isFile()) continue
    const fd = openSync(file, 'r')
    try {
      for (let n; (n = readSync(fd, buf, 0, buf.length, null)) > 0; ) bytes += n
    } finally {
      closeSync(fd)
    }
  }
  return bytes
}

/** Fraction of the segment bytes in the page cache (util-linux fincore), or null. */
function pageCacheResidency(dir) {
  const files = readdirSync(dir)
    .filter((n) => n.endsWith('.seg'))
    .map((n) => path.join(dir, n))
  const r = spawnSync('fincore', ['--bytes', '--noheadings', '--raw', '--output', 'RES,SIZE', ...files], { encoding: 'utf8' })
  if (r.status !== 0) return null
  let res = 0
  let size = 0
  for (const line of r.stdout.trim().split('\n')) {
    const [a, b] = line.trim().split(/\s+/).map(Number)
    res += a
    size += b
  }
  return size ? res / size : null
}

function segmentBytes(dir) {
  let bytes = 0
  for (const name of readdirSync(dir)) if (name.endsWith('.seg')) bytes += statSync(path.join(dir, name)).size
  return bytes
}

/** Time to open (recover) the big WAL built by fixture-open, from the page cache. */
async function openBig() {
  const { Wal } = loadPackage(spec.packageDir).api
  const meta = JSON.parse(readFileSync(path.join(spec.fixtureDir, 'bench-meta.json'), 'utf8'))
  const walDir = path.join(spec.fixtureDir, 'wal')
  const cached = warmPageCache(walDir)
  Wal.openSync(walDir).closeSync() // warm-up: the same work, untimed
  const resident = pageCacheResidency(walDir)
  const t0 = now()
  const wal = Wal.openSync(walDir)
  const ms = now() - t0
  const report = wal.recovery
  wal.closeSync()
  if (report.records !== meta.records) throw new Error(`recovered ${report.records} records, expected ${meta.records}`)
  return {
    seconds: ms / 1000,
    openMs: ms,
    coreMs: report.durationMs,
    records: report.records,
    segments: report.segments,
    recordBytes: meta.recordBytes,
    segmentBytes: segmentBytes(walDir),
    pageCacheWarmedBytes: cached,
    pageCacheResident: resident,
    gbPerSec: meta.recordBytes / (ms / 1000) / 1e9,
  }
}

/** Time to open a WAL whose DWB ring is full and repair a damaged acknowledged record. */
async function repair() {
  const { Wal } = loadPackage(spec.packageDir).api
  const meta = JSON.parse(readFileSync(path.join(spec.fixtureDir, 'bench-meta.json'), 'utf8'))
  const walDir = path.join(spec.dir, 'wal')
  cpSync(path.join(spec.fixtureDir, 'wal'), walDir, { recursive: true })
  warmPageCache(walDir)
  const t0 = now()
  const wal = Wal.openSync(walDir)
  const ms = now() - t0
  const report = wal.recovery
  let intact = false
  for (const r of wal.replaySync({ fromLsn: BigInt(meta.damagedLsn) })) {
    intact = Buffer.from(r.payload).toString('hex') === meta.damagedPayloadHex
    break
  }
  wal.closeSync()
  if (report.repairedFromDwb < 1 || !intact) {
    throw new Error(`no repair: repairedFromDwb ${report.repairedFromDwb}, record intact ${intact}`)
  }
  return {
    seconds: ms / 1000,
    openMs: ms,
    coreMs: report.durationMs,
    repairedFromDwb: report.repairedFromDwb,
    records: report.records,
    dwbSlots: meta.dwbSlots,
    commits: meta.commits,
  }
}

/**
 * The JS-thread cost of an append, the sync excluded: `count` appends issued in a loop
 * without awaiting (the synchronous part: argument checks, the payload copy, the promise,
 * the staging), then the one native submit of the tick, then everything until every
 * promise resolved (completions included), measured as CPU time of the JS thread; then
 * the sync part of a second, identical burst.
 */
async function jsCost() {
  const c = makeContestant(spec.contestant, { packageDir: spec.packageDir })
  await c.open(spec.dir)
  try {
    const pool = payloadPool(spec.size)
    const count = spec.count
    for (let round = 0; round < 3; round++) {
      const warm = []
      for (let i = 0; i < 2000; i++) warm.push(c.append(pool[i & 1023]))
      await Promise.all(warm)
    }
    /** Issues the burst: `count` appends, none awaited; their promises. */
    const burst = () => {
      const promises = new Array(count)
      for (let i = 0; i < count; i++) promises[i] = c.append(pool[i & 1023])
      return promises
    }
    const stats0 = c.stats()
    const elu0 = performance.eventLoopUtilization()
    const cpu0 = threadCpuNs()
    // µs per append between two samples: JS-thread CPU (robust to a busy machine) where
    // the platform reports it, else wall time.
    const perAppend = (cpuFrom, cpuTo, tFrom, tTo) => (cpu0 === null ? ((tTo - tFrom) * 1000) / count : (cpuTo - cpuFrom) / 1e3 / count)
    const t0 = now()
    const promises = burst()
    const t1 = now()
    const cpuLoop = threadCpuNs()
    await null // the submit microtask was queued by the first append: it runs before this
    const t2 = now()
    const cpuSubmit = threadCpuNs()
    await Promise.all(promises)
    const t3 = now()
    const cpu1 = threadCpuNs()
    const elu = performance.eventLoopUtilization(elu0)
    const stats1 = c.stats()
    // The same burst again in this process: the memory the first one made the process
    // grow by (in flight: most of count × size) is now the allocator's to reuse, so this
    // is the cost without the kernel handing out fresh pages.
    const cpuAgain0 = threadCpuNs()
    const tAgain0 = now()
    const again = burst()
    const tAgain1 = now()
    const cpuAgain1 = threadCpuNs()
    await Promise.all(again)
    return {
      seconds: (t3 - t0) / 1000,
      records: count,
      commits: stats1.commits - stats0.commits,
      syncUsPerAppend: perAppend(cpu0, cpuLoop, t0, t1),
      submitUsPerAppend: perAppend(cpuLoop, cpuSubmit, t1, t2),
      allInUsPerAppend: cpu0 === null ? (elu.active * 1000) / count : (cpu1 - cpu0) / 1e3 / count,
      againSyncUsPerAppend: perAppend(cpuAgain0, cpuAgain1, tAgain0, tAgain1),
      wallSyncUsPerAppend: ((t1 - t0) * 1000) / count,
      wallSubmitUsPerAppend: ((t2 - t1) * 1000) / count,
      elu: elu.utilization,
    }
  } finally {
    await c.close()
  }
}

/** Builds the WAL for `open`: about `bytes` of records, in large batches, then closed. */
async function fixtureOpen() {
  const { Wal, RecordType } = loadPackage(spec.packageDir).api
  const walDir = path.join(spec.fixtureDir, 'wal')
  const wal = await Wal.open(walDir)
  const size = 4096
  const perBatch = 1024
  const pool = payloadPool(size)
  let records = 0
  let recordBytes = 0
  const batch = () => {
    const rs = new Array(perBatch)
    for (let i = 0; i < perBatch; i++) rs[i] = { recordType: RecordType.Put, payload: pool[(records + i) & 1023] }
    records += perBatch
    recordBytes += perBatch * (56 + size)
    return wal.appendBatch(rs)
  }
  const inflight = []
  while (recordBytes < spec.bytes) {
    inflight.push(batch())
    if (inflight.length >= 4) await inflight.shift()
  }
  await Promise.all(inflight)
  await wal.close()
  writeFileSync(path.join(spec.fixtureDir, 'bench-meta.json'), JSON.stringify({ records, recordBytes }))
  return { records, recordBytes, segmentBytes: segmentBytes(walDir) }
}

/**
 * Builds the WAL for `repair`: many small single-record commits (so the DWB ring wrapped
 * several times and every slot holds a valid copy), closed; then tears an acknowledged
 * record the way a torn write of the next commit's block would (random bytes over its
 * part of the block the next commit rewrote).
 */
async function fixtureRepair() {
  const { Wal, RecordType } = loadPackage(spec.packageDir).api
  const walDir = path.join(spec.fixtureDir, 'wal')
  const wal = await Wal.open(walDir)
  const commits = spec.commits
  for (let i = 1; i <= commits; i++) {
    await wal.append(RecordType.Put, randomBytes(100 + ((i * 37) % 300)))
  }
  const stats = wal.stats
  await wal.close()
  const torn = tear(walDir, 4096)
  writeFileSync(
    path.join(spec.fixtureDir, 'bench-meta.json'),
    JSON.stringify({
      commits,
      dwbSlots: 64,
      dwbSyncs: Number(stats.dwbSyncs),
      dwbBytesWritten: Number(stats.dwbBytesWritten),
      damagedLsn: torn.lsn.toString(),
      damagedPayloadHex: torn.payloadHex,
      damagedBytes: torn.bytes,
    }),
  )
  return { commits, damagedLsn: Number(torn.lsn), damagedBytes: torn.bytes }
}

/**
 * Segment layout (docs/FORMAT.md): records from offset `block`, each a 56-byte header
 * (magic "DWAL" at 0, type at 8, LSN at 12, commit LSN at 20, payload length at 48) and
 * its payload. Finds the newest acknowledged record whose block the next commit rewrote
 * and overwrites its bytes in that block.
 */
function tear(walDir, block) {
  const segments = readdirSync(walDir)
    .filter((n) => /^wal-\d{20}\.seg$/.test(n))
    .sort()
    .reverse()
  for (const name of segments) {
    const file = path.join(walDir, name)
    const bytes = readFileSync(file)
    const records = []
    for (let at = block; at + 56 <= bytes.length && bytes.toString('latin1', at, at + 4) === 'DWAL'; ) {
      const len = 56 + bytes.readUInt32LE(at + 48)
      if ((bytes.readUInt32LE(at + 8) & 0x8000_0000) === 0) {
        records.push({ at, len, lsn: bytes.readBigUInt64LE(at + 12), commitLsn: bytes.readBigUInt64LE(at + 20) })
      }
      at += len
    }
    for (let i = records.length - 1; i > 0; i--) {
      const victim = records[i - 1]
      const next = records[i]
      if (next.commitLsn === victim.commitLsn || next.at % block === 0) continue
      const start = Math.max(Math.floor(next.at / block) * block, victim.at)
      if (start >= next.at) continue
      const payloadHex = bytes.toString('hex', victim.at + 56, victim.at + victim.len)
      const fd = openSync(file, 'r+')
      try {
        if (fstatSync(fd).size < next.at) throw new Error('segment shorter than expected')
        writeSync(fd, randomBytes(next.at - start), 0, next.at - start, start)
      } finally {
        closeSync(fd)
      }
      return { lsn: victim.lsn, payloadHex, bytes: next.at - start }
    }
  }
  throw new Error(`no record to tear in ${walDir}`)
}

const kinds = {
  workload,
  device,
  open: openBig,
  repair,
  jscost: jsCost,
  idle,
  'fixture-open': fixtureOpen,
  'fixture-repair': fixtureRepair,
}

try {
  if (!kinds[spec.kind]) throw new Error(`unknown cell kind ${spec.kind}`)
  if (spec.dir && !existsSync(spec.dir)) throw new Error(`no directory ${spec.dir}`)
  const result = await kinds[spec.kind]()
  ioProbe?.close()
  process.stdout.write(`${JSON.stringify(result)}\n`)
  // Native libraries may keep threads alive; the result is out, so leave now.
  process.exit(0)
} catch (error) {
  process.stderr.write(`${error?.stack ?? error}\n`)
  process.exit(1)
}
