/**
 * `doublewrite bench`: a short benchmark of this package on the machine it runs on —
 * durable appends per second for one writer (each append waits for the previous one:
 * one commit, one DWB sync and one WAL sync each) and for many concurrent appenders
 * (group commit shares each commit among the appends waiting for it).
 *
 * Only the package's public API is measured. The comparison with other stores and the
 * raw device limit live in `bench/` of the repository.
 *
 * @internal
 * @module
 */

import { mkdtempSync, rmSync, statfsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'

import { type DwbMode, RecordType, type TailProtection, Wal } from '../index.js'

import { EXIT, type Io, fixed, int, json, print, table } from './output.js'

export interface BenchOptions {
  json: boolean
  /** Seconds each scenario runs. */
  seconds: number
  /** Appenders of the concurrent scenario. */
  appenders: number
  /** Payload bytes of every record. */
  payloadBytes: number
  /** The WAL's `dwbMode`; `undefined`: the library's default (O_DIRECT under `'mirror'` where the file system takes it). */
  dwbMode: DwbMode | undefined
  tailProtection: TailProtection
  /** The WAL's `busyPoll`: the event loop turns instead of sleeping while a commit is in flight. */
  busyPoll: boolean
  /** Where the WALs are created (default: the OS temp directory). */
  dir: string | undefined
}

export interface ScenarioResult {
  scenario: string
  appenders: number
  appends: number
  commits: number
  seconds: number
  appendsPerSecond: number
  commitsPerSecond: number
  recordsPerCommit: number
  /** Latency of one append (call to durable), in milliseconds. */
  p50Ms: number
  p99Ms: number
  walSyncs: number
  dwbSyncs: number
  /** DWB bytes written per record appended. */
  dwbBytesPerRecord: number
  /** CPU time of the whole process (every thread, user + system) per append, in µs. */
  cpuUsPerAppend: number
  /** The segments were written with O_DIRECT (`wal.io`: `'pad'` takes it where the file system does). */
  directIo: boolean
  /** Idle awaited appends were committed through the kernel (`wal.io.kernelCompletion`). */
  kernelCompletion: boolean
  /** Commits the kernel completed on its own (`kernelCompletion`), of `commits`. */
  durableCommits: number
}

/** `statfs` magic numbers of the file systems worth naming (see statfs(2)). */
const FILE_SYSTEMS: Record<number, string> = {
  0x01021994: 'tmpfs',
  0xef53: 'ext4',
  0x58465342: 'xfs',
  0x9123683e: 'btrfs',
  0x2fc12fc1: 'zfs',
  0x6969: 'nfs',
  0x794c7630: 'overlayfs',
  0x65735546: 'fuse',
  0xf15f: 'ecryptfs',
  0x5346544e: 'ntfs',
  0x4d44: 'vfat',
}

export async function benchCommand(options: BenchOptions, io: Io): Promise<number> {
  const parent = options.dir ?? tmpdir()
  const fileSystem = fileSystemOf(parent)
  const root = mkdtempSync(path.join(parent, 'doublewrite-bench-'))
  const header =
    `doublewrite bench: ${options.seconds} s per scenario, ${int(options.payloadBytes)}-byte payloads, DWB ${options.dwbMode ?? 'default'}, ` +
    `tail protection ${options.tailProtection}${options.busyPoll ? ', busy poll' : ''}, ` +
    `in ${parent}${fileSystem === undefined ? '' : ` (${fileSystem})`}`
  if (!options.json) {
    print(io.stdout, header)
    if (fileSystem === 'tmpfs') {
      print(io.stdout, 'note: on tmpfs an fsync costs nothing, so this measures CPU, not a disk; use --dir on the disk you care about')
    }
  }
  const results: ScenarioResult[] = []
  try {
    for (const appenders of [1, options.appenders]) {
      const name = appenders === 1 ? '1 writer' : `${appenders} appenders`
      results.push(await scenario(name, appenders, path.join(root, `wal-${appenders}`), options))
    }
  } finally {
    rmSync(root, { recursive: true, force: true })
  }
  if (options.json) {
    print(io.stdout, json({ dir: parent, fileSystem: fileSystem ?? null, ...settings(options), node: process.version, results }))
    return EXIT.ok
  }
  const rows = results.map((r) => [
    r.scenario,
    int(Math.round(r.appendsPerSecond)),
    int(Math.round(r.commitsPerSecond)),
    fixed(r.recordsPerCommit, 1),
    fixed(r.p50Ms, 2),
    fixed(r.p99Ms, 2),
    int(Math.round(r.dwbBytesPerRecord)),
    fixed(r.cpuUsPerAppend, 1),
  ])
  print(io.stdout, '', ...table(['scenario', 'appends/s', 'commits/s', 'records/commit', 'p50 ms', 'p99 ms', 'DWB B/record', 'CPU µs/append'], rows, [0]))
  for (const r of results) {
    const through = r.durableCommits > 0 ? `, ${int(r.durableCommits)} of ${int(r.commits)} commits completed by the kernel` : ''
    print(io.stdout, `${r.scenario}: ${r.directIo ? 'O_DIRECT' : 'buffered'} segments${through}`)
  }
  return EXIT.ok
}

function settings(options: BenchOptions): object {
  const { seconds, appenders, payloadBytes, dwbMode, tailProtection, busyPoll } = options
  return { seconds, appenders, payloadBytes, dwbMode, tailProtection, busyPoll }
}

function fileSystemOf(dir: string): string | undefined {
  try {
    const type = statfsSync(dir).type
    return FILE_SYSTEMS[type] ?? `file system type 0x${type.toString(16)}`
  } catch {
    return undefined
  }
}

async function scenario(name: string, appenders: number, dir: string, options: BenchOptions): Promise<ScenarioResult> {
  // No spare segment prepared in the background: its zero-fill and sync would overlap the
  // timed window. A run of a few seconds does not fill a 64 MiB segment, so it times no
  // roll either; a long, fast run does (and then pays for creating the next segment inline).
  const { dwbMode, tailProtection, busyPoll } = options
  const wal = await Wal.open(dir, { segmentSize: 64 << 20, ...(dwbMode === undefined ? {} : { dwbMode }), tailProtection, busyPoll, prepareSegments: false })
  try {
    const payload = new Uint8Array(options.payloadBytes).fill(0x61)
    // Warm-up: the first commits create files and fault pages in.
    await Promise.all(Array.from({ length: Math.min(appenders, 16) }, () => wal.append(RecordType.Put, payload)))
    const before = wal.stats
    const latenciesMs: number[] = []
    const cpuBefore = process.cpuUsage()
    const started = performance.now()
    const deadline = started + options.seconds * 1000
    const appender = async (): Promise<void> => {
      while (performance.now() < deadline) {
        const t0 = performance.now()
        await wal.append(RecordType.Put, payload)
        latenciesMs.push(performance.now() - t0)
      }
    }
    await Promise.all(Array.from({ length: appenders }, appender))
    const seconds = (performance.now() - started) / 1000
    const cpu = process.cpuUsage(cpuBefore)
    const after = wal.stats
    const commits = Number(after.commits - before.commits)
    const appends = latenciesMs.length
    latenciesMs.sort((a, b) => a - b)
    return {
      scenario: name,
      appenders,
      appends,
      commits,
      seconds,
      appendsPerSecond: appends / seconds,
      commitsPerSecond: commits / seconds,
      recordsPerCommit: commits === 0 ? 0 : appends / commits,
      p50Ms: quantile(latenciesMs, 0.5),
      p99Ms: quantile(latenciesMs, 0.99),
      walSyncs: Number(after.walSyncs - before.walSyncs),
      dwbSyncs: Number(after.dwbSyncs - before.dwbSyncs),
      dwbBytesPerRecord: appends === 0 ? 0 : Number(after.dwbBytesWritten - before.dwbBytesWritten) / appends,
      cpuUsPerAppend: appends === 0 ? 0 : (cpu.user + cpu.system) / appends,
      directIo: wal.io.directIo,
      kernelCompletion: wal.io.kernelCompletion,
      durableCommits: Number(after.durableCommits - before.durableCommits),
    }
  } finally {
    await wal.close()
  }
}

function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return 0
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0
}
