/**
 * `doublewrite verify <wal-dir>`: checks every record and every DWB copy of a WAL without
 * writing (binding: `verifyWal` in `src/tools.rs`, the core's dry run of recovery), says
 * what is torn, what the DWB can repair and what is lost, and exits with the verdict's
 * code ({@link EXIT}). `--repair` opens the WAL normally — recovery repairs — closes it,
 * and verifies again.
 *
 * @internal
 * @module
 */

import { existsSync, statSync } from 'node:fs'
import path from 'node:path'

import '../loader.js'
import * as binding from '../binding.js'
import { Wal, type WalOptions } from '../index.js'

import { CliError, EXIT, type Io, ProgressBar, bytes, int, json, native, plural, print } from './output.js'

export type ProgressMode = 'auto' | 'on' | 'off'

export interface VerifyOptions {
  json: boolean
  repair: boolean
  progress: ProgressMode
}

export type Verdict = 'clean' | 'repairable' | 'torn-tail' | 'lost'

/** A DWB copy that does not verify. */
export interface DamagedCopy {
  seq: bigint
  lsn: bigint
  ringOffset: number
}

/** What `verify` reports (also its `--json` output, with `repair` when `--repair` ran). */
export interface VerifyResult {
  dir: string
  verdict: Verdict
  exitCode: number
  segments: string[]
  firstLsn: bigint
  lastLsn: bigint
  records: number
  /** Damaged records the DWB holds a valid copy of: recovery writes the copy back. */
  repairable: { segment: string; offset: number; lsn: bigint }[]
  /** An interrupted commit at the end of the log (never acknowledged): recovery cuts it. */
  tornTail: { segment: string; offset: number; bytes: number } | null
  /** Acknowledged records damaged beyond repair: the error recovery fails with. */
  lost: { code: string; message: string; segment: string | null; offset: number | null; lsn: bigint | null } | null
  /** The WAL's DWB: `null` when there is none. */
  dwb:
    | { readable: true; copies: number; valid: number; damaged: number; damagedCopies: DamagedCopy[] }
    | { readable: false; code: string; message: string }
    | null
  repair?: {
    /** Records restored from their DWB copies and written back. */
    repairedFromDwb: number
    /** Bytes of torn tail cut off. */
    tornTailBytes: number
    durationMs: number
    after: Omit<VerifyResult, 'repair'>
  }
}

const EXIT_OF: Record<Verdict, number> = {
  clean: EXIT.ok,
  repairable: EXIT.repairable,
  'torn-tail': EXIT.tornTail,
  lost: EXIT.lost,
}

export async function verifyCommand(dir: string, options: VerifyOptions, io: Io): Promise<number> {
  const before = await check(dir, options, io)
  let result: VerifyResult = before
  if (options.repair && (before.verdict === 'repairable' || before.verdict === 'torn-tail')) {
    const recovery = await repair(dir, before)
    const after = await check(dir, options, io)
    result = { ...before, exitCode: after.exitCode, repair: { ...recovery, after } }
  }
  if (options.json) {
    print(io.stdout, json(result))
  } else {
    print(io.stdout, ...describe(result, options.repair))
  }
  return result.exitCode
}

async function check(dir: string, options: VerifyOptions, io: Io): Promise<VerifyResult> {
  const progress = new binding.NativeProgress()
  const show = options.progress === 'on' || (options.progress === 'auto' && io.stderr.isTTY === true)
  const bar = show ? new ProgressBar(io.stderr, 'verifying', 'segments') : undefined
  // A short verification shows no bar (unless forced): the first draw waits 300 ms.
  const started = performance.now()
  const timer =
    bar === undefined
      ? undefined
      : setInterval(() => {
          if (options.progress === 'on' || performance.now() - started >= 300) bar.update(progress.done, progress.total)
        }, 100)
  try {
    const report = await native(() => binding.verifyWal(dir, progress))
    if (bar !== undefined && options.progress === 'on') bar.update(progress.done, progress.total)
    return toResult(report)
  } finally {
    if (timer !== undefined) clearInterval(timer)
    bar?.finish()
  }
}

function toResult(report: binding.NativeVerifyReport): VerifyResult {
  const verdict = report.verdict as Verdict
  let dwb: VerifyResult['dwb'] = null
  if (report.dwb !== undefined && report.dwb !== null) {
    const frames = report.dwb.frames
    if (frames !== undefined && frames !== null) {
      const damagedCopies = frames.filter((f) => !f.valid).map((f) => ({ seq: f.seq, lsn: f.lsn, ringOffset: f.ringOffset }))
      dwb = { readable: true, copies: frames.length, valid: frames.length - damagedCopies.length, damaged: damagedCopies.length, damagedCopies }
    } else {
      dwb = { readable: false, code: report.dwb.error?.code ?? 'ERR_IO', message: report.dwb.error?.message ?? 'unreadable' }
    }
  }
  const lost = report.lost ?? null
  return {
    dir: report.dir,
    verdict,
    exitCode: EXIT_OF[verdict] ?? EXIT.error,
    segments: report.segments,
    firstLsn: report.firstLsn,
    lastLsn: report.lastLsn,
    records: report.records,
    repairable: report.repairable.map((r) => ({ segment: r.segment, offset: r.offset, lsn: r.lsn })),
    tornTail: report.tornTail ?? null,
    lost:
      lost === null
        ? null
        : { code: lost.code, message: lost.message, segment: lost.segment ?? null, offset: lost.offset ?? null, lsn: lost.lsn ?? null },
    dwb,
  }
}

/**
 * Opens the WAL the normal way, so recovery repairs what the dry run found, and closes it.
 * New segments would get the size of the newest existing one, and a WAL without a DWB
 * stays without one.
 */
async function repair(dir: string, before: VerifyResult): Promise<{ repairedFromDwb: number; tornTailBytes: number; durationMs: number }> {
  const newest = before.segments[before.segments.length - 1]
  // No spare segment prepared in the background: the WAL is closed right away.
  const options: WalOptions = { prepareSegments: false }
  if (newest !== undefined) options.segmentSize = statSync(newest).size
  if (before.dwb === null && !existsSync(path.join(dir, 'wal.dwb'))) options.dwbMode = 'off'
  let wal: Wal
  try {
    wal = await Wal.open(dir, options)
  } catch (error) {
    const { code, message } = error as { code?: string; message: string }
    throw new CliError(`--repair: opening the WAL failed: ${message}`, EXIT.error, code ?? 'ERR_IO')
  }
  const { repairedFromDwb, tornTailBytes, durationMs } = wal.recovery
  await wal.close()
  return { repairedFromDwb, tornTailBytes, durationMs }
}

function describe(result: VerifyResult, repairAsked: boolean): string[] {
  const lines = [`WAL ${result.dir}`, ...body(result)]
  const verdictLine = `verdict: ${result.verdict} (exit code ${EXIT_OF[result.verdict]})`
  if (result.repair !== undefined) {
    const { repairedFromDwb, tornTailBytes, durationMs, after } = result.repair
    lines.push(
      verdictLine,
      '',
      `repair: opened the WAL (recovery took ${durationMs.toFixed(1)} ms): ${plural(repairedFromDwb, 'record')} restored from the DWB, ` +
        `${plural(tornTailBytes, 'byte')} of torn tail cut; closed it`,
      'verified again:',
      ...body(after).map((line) => `  ${line}`),
      `verdict after repair: ${after.verdict} (exit code ${after.exitCode})`,
    )
    return lines
  }
  lines.push(`${verdictLine}: ${advice(result, repairAsked)}`)
  return lines
}

function advice(result: VerifyResult, repairAsked: boolean): string {
  switch (result.verdict) {
    case 'clean':
      return repairAsked ? 'every record verifies; nothing to repair' : 'every record verifies'
    case 'repairable':
      return 'nothing is lost. Opening the WAL (or `doublewrite verify --repair`) writes the copies back'
    case 'torn-tail':
      return 'nothing acknowledged is lost. Opening the WAL (or `doublewrite verify --repair`) cuts the torn tail'
    case 'lost':
      return (
        'acknowledged records are damaged and no valid copy is left. Opening the WAL fails with ' +
        `${result.lost?.code ?? 'ERR_WAL_CORRUPT'} and changes nothing${repairAsked ? '; --repair cannot help (nothing was changed)' : ''}`
      )
  }
}

function body(result: Omit<VerifyResult, 'repair'>): string[] {
  const name = (file: string): string => path.basename(file)
  const lines: string[] = []
  const segments = result.segments
  lines.push(
    segments.length === 0
      ? 'segments   none (an empty directory: the WAL was never opened)'
      : `segments   ${segments.length}: ${name(segments[0] ?? '')}${segments.length > 1 ? ` … ${name(segments[segments.length - 1] ?? '')}` : ''}`,
  )
  if (result.lost === null) {
    lines.push(
      result.records === 0
        ? `records    none (next LSN ${int(result.firstLsn)})`
        : `records    ${int(result.records)} that recovery keeps, LSN ${int(result.firstLsn)} to ${int(result.lastLsn)}`,
    )
  }
  const dwb = result.dwb
  if (dwb === null) {
    lines.push('DWB        none (this WAL runs without a double-write buffer)')
  } else if (!dwb.readable) {
    lines.push(`DWB        unreadable: ${dwb.code}: ${dwb.message}`)
  } else {
    lines.push(
      `DWB        ${int(dwb.copies)} copies: ${int(dwb.valid)} valid, ${int(dwb.damaged)} damaged` +
        (dwb.damaged > 0 ? ' (interrupted DWB writes; never used)' : ''),
    )
  }
  if (result.repairable.length > 0) {
    lines.push(`repairable ${plural(result.repairable.length, 'damaged record')}; the DWB holds a valid copy of ${result.repairable.length === 1 ? 'it' : 'each'}:`)
    for (const r of result.repairable) lines.push(`             LSN ${int(r.lsn)} in ${name(r.segment)} at offset ${int(r.offset)}`)
  }
  if (result.tornTail !== null) {
    const t = result.tornTail
    lines.push(
      `torn tail  ${bytes(t.bytes)} in ${name(t.segment)} from offset ${int(t.offset)}: ` +
        'a commit the crash interrupted, never acknowledged; recovery cuts it',
    )
  }
  if (result.lost !== null) {
    const l = result.lost
    const where = l.segment === null ? '' : ` (LSN ${int(l.lsn ?? 0n)} in ${name(l.segment)} at offset ${int(l.offset ?? 0)})`
    lines.push(`LOST       ${l.code}${where}: ${l.message}`)
  }
  return lines
}
