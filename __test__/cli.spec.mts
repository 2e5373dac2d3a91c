// The `doublewrite` command line, run as users run it (a child process of the compiled
// cli/main.js): exit codes, output, JSON, that `verify` never writes without --repair,
// and what each verdict looks like on a WAL damaged in that way.

import { spawn, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { closeSync, openSync, readdirSync, readFileSync, statSync, writeFileSync, writeSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import test, { type ExecutionContext } from 'ava'

import { DoubleWriteBuffer, RecordType, Wal, type WalOptions, WalRecord } from 'doublewrite'

import type { ScenarioResult } from '../cli/bench.js'

import { bytesOf, parseSegment, readSegment, segmentFiles, tempDir } from './helpers.mjs'

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..')
const CLI = path.join(root, 'cli', 'main.js')

/** Exit codes, as documented in `doublewrite --help` and the README. */
const EXIT = { ok: 0, error: 1, usage: 2, repairable: 3, tornTail: 4, lost: 5 }

interface Run {
  status: number | null
  stdout: string
  stderr: string
}

function cli(...args: string[]): Run {
  const result = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000 })
  return { status: result.status, stdout: result.stdout, stderr: result.stderr }
}

function cliAsync(...args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args])
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
    child.once('error', reject)
    child.once('close', (status) => resolve({ status, stdout, stderr }))
  })
}

/** Every file of a directory with its size, mtime and SHA-256: proves nothing was written. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {}
  for (const name of readdirSync(dir).sort()) {
    const file = path.join(dir, name)
    const stat = statSync(file)
    out[name] = `${stat.size} ${stat.mtimeMs} ${createHash('sha256').update(readFileSync(file)).digest('hex')}`
  }
  return out
}

/** A closed WAL with `records` records, each in its own commit. */
async function walWith(dir: string, records: number, options: WalOptions = {}): Promise<void> {
  const wal = await Wal.open(dir, { segmentSize: 1 << 20, prepareSegments: false, ...options })
  for (let i = 1; i <= records; i++) await wal.append(RecordType.Put, bytesOf(`record ${i} ${'x'.repeat(100)}`))
  await wal.close()
}

/** Overwrites bytes in the payload of the record with `lsn` (its CRC no longer verifies). */
function damagePayload(dir: string, lsn: bigint): void {
  for (const file of segmentFiles(dir)) {
    const record = parseSegment(readSegment(file)).find((r) => r.lsn === lsn && !r.padding)
    if (record === undefined) continue
    const fd = openSync(file, 'r+')
    writeSync(fd, Buffer.from('GARBAGE!'), 0, 8, record.offset + 56 + 10)
    closeSync(fd)
    return
  }
  throw new Error(`LSN ${lsn} not found`)
}

interface VerifyJson {
  verdict: string
  exitCode: number
  records: number
  lastLsn: number
  repairable: { lsn: number; segment: string; offset: number }[]
  tornTail: { bytes: number } | null
  lost: { code: string; lsn: number | null } | null
  dwb: { readable: boolean; copies?: number; damaged?: number } | null
  repair?: { repairedFromDwb: number; tornTailBytes: number; after: { verdict: string; records: number } }
}

function verifyJson(...args: string[]): { run: Run; report: VerifyJson } {
  const run = cli('verify', ...args, '--json')
  return { run, report: JSON.parse(run.stdout) as VerifyJson }
}

// ─── usage ───────────────────────────────────────────────────────────────────────────

test('--help lists the commands and the exit codes; no arguments prints it with exit code 2', (t) => {
  const help = cli('--help')
  t.is(help.status, EXIT.ok)
  for (const word of ['inspect <file.dwb>', 'verify <wal-dir>', 'demo', 'bench', 'Exit codes', '--json']) t.true(help.stdout.includes(word), word)
  const none = cli()
  t.is(none.status, EXIT.usage)
  t.is(none.stdout, help.stdout)
  const verifyHelp = cli('verify', '--help')
  t.is(verifyHelp.status, EXIT.ok)
  t.true(verifyHelp.stdout.includes('--repair'))
  t.is(cli('help', 'inspect').stdout, cli('inspect', '-h').stdout)
  t.is(cli('--version').stdout.trim(), (JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string }).version)
})

test('wrong arguments exit with 2 and say why; with --json the error is JSON on stdout', (t) => {
  for (const args of [['frobnicate'], ['verify'], ['verify', 'a', 'b'], ['inspect', '--bogus', 'x.dwb'], ['bench', '--seconds', 'soon'], ['demo', '--records', '5']]) {
    const run = cli(...args)
    t.is(run.status, EXIT.usage, args.join(' '))
    t.regex(run.stderr, /^doublewrite: /, args.join(' '))
  }
  const run = cli('bench', '--appenders', '1', '--json')
  t.is(run.status, EXIT.usage)
  t.like(JSON.parse(run.stdout), { exitCode: 2, error: { code: 'ERR_USAGE' } })
})

// ─── verify ──────────────────────────────────────────────────────────────────────────

test('verify: a clean WAL is exit code 0, and verify changes nothing (no lock file, no DWB, no repair)', async (t) => {
  const dir = tempDir(t, 'cli-verify')
  await walWith(dir, 20)
  const before = snapshot(dir)
  const { run, report } = verifyJson(dir)
  t.is(run.status, EXIT.ok, run.stderr)
  t.like(report, { verdict: 'clean', exitCode: 0, records: 20, lastLsn: 20, tornTail: null, lost: null })
  t.true((report.dwb?.copies ?? 0) > 0)
  t.deepEqual(snapshot(dir), before)
  const text = cli('verify', dir)
  t.is(text.status, EXIT.ok)
  t.regex(text.stdout, /verdict: clean \(exit code 0\)/)
  t.is(text.stderr, '', 'no progress bar when stderr is not a terminal')
})

test('verify: a damaged record with a DWB copy is "repairable" (3) and nothing is written; --repair restores it (0)', async (t) => {
  const dir = tempDir(t, 'cli-repairable')
  await walWith(dir, 20)
  damagePayload(dir, 11n)
  const before = snapshot(dir)
  const { run, report } = verifyJson(dir)
  t.is(run.status, EXIT.repairable, run.stderr)
  t.is(report.verdict, 'repairable')
  t.deepEqual(
    report.repairable.map((r) => r.lsn),
    [11],
  )
  t.deepEqual(snapshot(dir), before, 'verify wrote nothing')
  t.regex(cli('verify', dir).stdout, /LSN 11 in wal-\d{20}\.seg at offset/)

  const repaired = verifyJson(dir, '--repair')
  t.is(repaired.run.status, EXIT.ok, repaired.run.stderr)
  t.like(repaired.report, { verdict: 'repairable', exitCode: 0, repair: { repairedFromDwb: 1, after: { verdict: 'clean', records: 20 } } })
  t.is(verifyJson(dir).run.status, EXIT.ok)
  const wal = await Wal.open(dir, { segmentSize: 1 << 20, prepareSegments: false })
  t.is(wal.recovery.repairedFromDwb, 0, 'the repair was written back')
  t.is([...wal.replaySync()].length, 20)
  await wal.close()
})

test('verify: damage in the last commit with no DWB copy is a "torn tail" (4); --repair cuts it (0)', async (t) => {
  const dir = tempDir(t, 'cli-torn')
  await walWith(dir, 20, { dwbMode: 'off' })
  damagePayload(dir, 20n)
  const { run, report } = verifyJson(dir)
  t.is(run.status, EXIT.tornTail, run.stderr)
  t.is(report.verdict, 'torn-tail')
  t.true((report.tornTail?.bytes ?? 0) > 0)
  t.is(report.dwb, null, 'a WAL without a DWB')
  t.is(report.lastLsn, 19)
  const repaired = verifyJson(dir, '--repair')
  t.is(repaired.run.status, EXIT.ok, repaired.run.stderr)
  t.like(repaired.report.repair, { after: { verdict: 'clean', records: 19 } })
  t.false(readdirSync(dir).includes('wal.dwb'), '--repair kept the WAL without a DWB')
})

test('verify: damage with later commits after it and no copy is "lost" (5); --repair changes nothing', async (t) => {
  const dir = tempDir(t, 'cli-lost')
  await walWith(dir, 20, { dwbMode: 'off' })
  damagePayload(dir, 10n)
  const before = snapshot(dir)
  const { run, report } = verifyJson(dir)
  t.is(run.status, EXIT.lost, run.stderr)
  t.like(report, { verdict: 'lost', lost: { code: 'ERR_WAL_CORRUPT', lsn: 10 } })
  const repair = cli('verify', dir, '--repair')
  t.is(repair.status, EXIT.lost)
  t.regex(repair.stdout, /--repair cannot help \(nothing was changed\)/)
  t.deepEqual(snapshot(dir), before)
})

test('verify: an open WAL is refused with ERR_LOCKED (1); a path that is not a WAL directory is an error (1)', async (t) => {
  const dir = tempDir(t, 'cli-locked')
  const wal = await Wal.open(dir, { segmentSize: 1 << 20, prepareSegments: false })
  await wal.append(RecordType.Put, bytesOf('x'))
  const locked = await cliAsync('verify', dir)
  await wal.close()
  t.is(locked.status, EXIT.error)
  t.regex(locked.stderr, /ERR_LOCKED/)
  const file = path.join(dir, 'not-a-dir')
  writeFileSync(file, 'x')
  const notDir = cli('verify', file, '--json')
  t.is(notDir.status, EXIT.error)
  t.like(JSON.parse(notDir.stdout), { exitCode: 1, error: { code: 'ERR_PATH_IS_DIRECTORY' } })
})

test('verify --progress draws the bar on stderr even when it is not a terminal, ending at every segment done', async (t) => {
  const dir = tempDir(t, 'cli-progress')
  const wal = await Wal.open(dir, { segmentSize: 16 << 10, prepareSegments: false })
  for (let i = 0; i < 60; i++) await wal.append(RecordType.Put, new Uint8Array(1000).fill(i))
  await wal.close()
  const segments = segmentFiles(dir).length
  t.true(segments > 2, `${segments} segments`)
  const run = cli('verify', dir, '--progress')
  t.is(run.status, EXIT.ok, run.stderr)
  t.regex(run.stderr, new RegExp(`verifying \\[█+\\] ${segments}/${segments} segments 100%`))
  t.is(cli('verify', dir, '--no-progress').stderr, '')
  t.is(cli('verify', dir, '--progress', '--no-progress').status, EXIT.usage)
})

test('the progress line: bar proportional to the fraction, counts, percent, ETA, never wider than the terminal', async (t) => {
  const { renderProgress } = await import('../cli/output.js')
  t.is(renderProgress('verifying', 0, 0, 'segments', 0, 80), `verifying [${'░'.repeat(40)}] listing segments   0%`)
  const half = renderProgress('verifying', 5, 10, 'segments', 2000, 80)
  t.is(half, `verifying [${'█'.repeat(20)}${'░'.repeat(20)}] 5/10 segments  50% ETA 2s`)
  for (const columns of [20, 40, 60, 200]) t.true(renderProgress('verifying', 3, 7, 'segments', 100, columns).length <= Math.max(20, columns - 1))
})

// ─── inspect ─────────────────────────────────────────────────────────────────────────

test('inspect: header, geometry and every copy; a damaged copy says why and the older valid one is used', async (t) => {
  const dir = tempDir(t, 'cli-inspect')
  const file = path.join(dir, 'pages.dwb')
  const dwb = await DoubleWriteBuffer.open(file, { mode: 'buffered', capacity: 8, maxRecordSize: 4096 })
  for (const lsn of [1n, 2n, 3n]) dwb.writeRecordDeferred(WalRecord.create({ recordType: RecordType.Put, lsn, payload: bytesOf(`old ${lsn}`) }))
  await dwb.flush()
  dwb.writeRecordDeferred(WalRecord.create({ recordType: RecordType.Put, lsn: 2n, payload: bytesOf('new 2') }))
  await dwb.flush()
  dwb.close()

  interface Inspect {
    header: { magic: string; formatVersion: number }
    geometry: { capacity: number; maxRecordSize: number; blockSize: number }
    copies: { total: number; valid: number; damaged: number; distinctLsns: number }
    frames: { seq: number; lsn: number; fileOffset: number; valid: boolean; used: boolean; problem: string | null }[]
  }
  const first = cli('inspect', file, '--json')
  t.is(first.status, EXIT.ok, first.stderr)
  const report = JSON.parse(first.stdout) as Inspect
  t.like(report, { header: { magic: 'DBLW', formatVersion: 1 }, geometry: { capacity: 8, maxRecordSize: 4096 } })
  t.like(report.copies, { total: 4, valid: 4, damaged: 0, distinctLsns: 3 })
  t.deepEqual(
    report.frames.map((f) => [f.seq, f.lsn, f.used]),
    [
      [1, 1, true],
      [2, 2, false],
      [3, 3, true],
      [4, 2, true],
    ],
  )
  // Damage the newest copy of LSN 2: its payload, past the 24-byte prefix and 56-byte header.
  const newest = report.frames[3]
  if (newest === undefined) throw new Error('no 4th frame')
  const fd = openSync(file, 'r+')
  writeSync(fd, Buffer.from('XX'), 0, 2, newest.fileOffset + 24 + 56)
  closeSync(fd)
  const second = JSON.parse(cli('inspect', file, '--json').stdout) as Inspect
  t.like(second.copies, { total: 4, valid: 3, damaged: 1 })
  const damaged = second.frames[3]
  t.like(damaged, { seq: 4, lsn: 2, valid: false, used: false })
  t.regex(damaged?.problem ?? '', /^ERR_RECORD_CHECKSUM: /)
  t.like(second.frames[1], { seq: 2, lsn: 2, used: true })
  const text = cli('inspect', file)
  t.regex(text.stdout, /magic DBLW, format 1, checksum 0x[0-9a-f]{8} \(verified\)/)
  t.regex(text.stdout, /DAMAGED ERR_RECORD_CHECKSUM/)
  t.false(cli('inspect', file, '--summary').stdout.includes('DAMAGED'))
})

test('inspect: a file that is not a DWB is an error (1) with ERR_DWB_CORRUPT', (t) => {
  const dir = tempDir(t, 'cli-inspect-bad')
  const file = path.join(dir, 'x.dwb')
  writeFileSync(file, 'not a double-write buffer, just text '.repeat(100))
  const run = cli('inspect', file)
  t.is(run.status, EXIT.error)
  t.regex(run.stderr, /ERR_DWB_CORRUPT: .*not a double-write buffer/)
})

// ─── demo and bench ──────────────────────────────────────────────────────────────────

test('demo: every record comes back after a torn write, one repaired from the DWB', (t) => {
  const run = cli('demo', '--json', '--records', '300', '--in-flight', '10')
  t.is(run.status, EXIT.ok, run.stderr)
  const demo = JSON.parse(run.stdout) as { recovery: { repairedFromDwb: number; intact: number; everyRecordBack: boolean } }
  t.like(demo.recovery, { repairedFromDwb: 1, intact: 300, everyRecordBack: true })
  const text = cli('demo', '--records', '200')
  t.regex(text.stdout, /every acknowledged record is back/)
})

test('bench: one writer and N appenders, as a table and as JSON', (t) => {
  const run = cli('bench', '--seconds', '0.1', '--appenders', '4', '--json')
  t.is(run.status, EXIT.ok, run.stderr)
  const bench = JSON.parse(run.stdout) as { results: ScenarioResult[] }
  t.deepEqual(
    bench.results.map((r) => r.scenario),
    ['1 writer', '4 appenders'],
  )
  for (const r of bench.results) {
    t.true(r.appends > 0 && r.commits > 0 && r.appendsPerSecond > 0, JSON.stringify(r))
    t.true(r.commits <= r.appends)
  }
  const text = cli('bench', '--seconds', '0.05', '--appenders', '2')
  t.regex(text.stdout, /scenario\s+appends\/s\s+commits\/s\s+records\/commit\s+p50 ms\s+p99 ms\s+DWB B\/record\s+CPU µs\/append/)
  t.regex(text.stdout, /^1 writer: (buffered|O_DIRECT) segments(, \d+ of \d+ commits completed by the kernel)?$/m, 'how the defaults write')
})


/**
 * Both tail protections write O_DIRECT where the file system takes it; then, where Linux
 * AIO and libuv's poll handle are available, the one writer's idle awaited appends are
 * committed by the kernel (under 'mirror', its DWB copies and WAL write together).
 */
function checkKernelCommits(t: ExecutionContext, r: ScenarioResult): void {
  t.true(r.directIo || !r.kernelCompletion, 'the kernel completes O_DIRECT writes only')
  if (!r.kernelCompletion) t.is(r.durableCommits, 0)
  else if (r.scenario === '1 writer') t.true(r.durableCommits > r.commits / 2, JSON.stringify(r))
}

test('bench --tail-protection pad --busy-poll: the WALs are opened so (no DWB bytes under pad), and the settings are reported; a bad value is a usage error', (t) => {
  const run = cli('bench', '--seconds', '0.1', '--appenders', '4', '--tail-protection', 'pad', '--busy-poll', '--json')
  t.is(run.status, EXIT.ok, run.stderr)
  const bench = JSON.parse(run.stdout) as { tailProtection: string; busyPoll: boolean; results: ScenarioResult[] }
  t.is(bench.tailProtection, 'pad')
  t.true(bench.busyPoll)
  for (const r of bench.results) {
    t.true(r.appends > 0 && r.walSyncs > 0, JSON.stringify(r))
    t.is(r.dwbBytesPerRecord, 0, "'pad' writes no DWB copies")
    t.is(r.dwbSyncs, 0)
    t.true(r.cpuUsPerAppend > 0)
    checkKernelCommits(t, r)
  }
  const mirror = JSON.parse(cli('bench', '--seconds', '0.1', '--appenders', '2', '--json').stdout) as typeof bench
  t.is(mirror.tailProtection, 'mirror')
  t.false(mirror.busyPoll)
  t.true(mirror.results.every((r) => r.dwbBytesPerRecord > 0), "'mirror' copies the tail into the DWB")
  for (const r of mirror.results) checkKernelCommits(t, r)
  const bad = cli('bench', '--tail-protection', 'zero')
  t.is(bad.status, EXIT.usage)
  t.regex(bad.stderr, /--tail-protection must be mirror or pad/)
})
