/**
 * What every command of the `doublewrite` command line shares: exit codes, coded errors,
 * number formatting, plain-text tables, JSON that keeps bigints exact, and the progress bar.
 *
 * @internal
 * @module
 */

/**
 * Exit codes. `verify` uses 3–5 for its verdict; every command uses 0, 1 and 2.
 * (README "Command line" lists them; keep the two in sync.)
 */
export const EXIT = Object.freeze({
  /** Done; for `verify`: every record verifies. */
  ok: 0,
  /** The command could not do its job (I/O error, not a WAL or DWB, the WAL is open: `ERR_LOCKED`, …). */
  error: 1,
  /** Wrong arguments. */
  usage: 2,
  /** `verify`: damaged records, and the DWB holds a valid copy of each (opening the WAL repairs them). */
  repairable: 3,
  /** `verify`: the log ends in an interrupted commit that was never acknowledged (opening the WAL cuts it). */
  tornTail: 4,
  /** `verify`: acknowledged records are damaged beyond repair (opening the WAL fails with `ERR_WAL_CORRUPT`). */
  lost: 5,
})

/** Where a command writes: stdout for results, stderr for diagnostics and progress. */
export interface Io {
  readonly stdout: NodeJS.WritableStream & { isTTY?: boolean; columns?: number }
  readonly stderr: NodeJS.WritableStream & { isTTY?: boolean; columns?: number }
}

/** An error that ends the command with `exitCode` and prints only its message. */
export class CliError extends Error {
  readonly exitCode: number
  readonly code: string

  constructor(message: string, exitCode: number = EXIT.error, code = 'ERR_CLI') {
    super(message)
    this.name = 'CliError'
    this.exitCode = exitCode
    this.code = code
  }
}

/** A usage error (exit code 2). */
export function usageError(message: string): CliError {
  return new CliError(message, EXIT.usage, 'ERR_USAGE')
}

const CODED_MESSAGE = /^\[([A-Z][A-Z0-9_]*)\] ([\s\S]*)$/

/** `code` and `message` of any error: the package's coded errors, the binding's `[CODE] message`, or others. */
export function codeAndMessage(error: unknown): { code: string; message: string } {
  if (error instanceof Error) {
    // The binding's errors say `[CODE] message` (their own `code` is napi's status).
    const match = CODED_MESSAGE.exec(error.message)
    if (match !== null) return { code: match[1] ?? 'ERR_IO', message: match[2] ?? '' }
    const own = (error as { code?: unknown }).code
    if (typeof own === 'string') return { code: own, message: error.message }
    return { code: 'ERR_UNEXPECTED', message: error.message }
  }
  return { code: 'ERR_UNEXPECTED', message: String(error) }
}

/** Awaits a call into the binding, turning `[CODE] message` rejections into {@link CliError}s. */
export async function native<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call()
  } catch (error) {
    const { code, message } = codeAndMessage(error)
    throw new CliError(message, EXIT.error, code)
  }
}

/** `1234567` → `1,234,567`. */
export function int(value: number | bigint): string {
  return value.toLocaleString('en-US')
}

/** `1 record`, `2 records` (with thousands separators). */
export function plural(count: number, noun: string): string {
  return `${int(count)} ${noun}${count === 1 ? '' : 's'}`
}

/** A fixed number of decimals, with thousands separators. */
export function fixed(value: number, digits: number): string {
  return value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
}

/** `0x1a2b3c4d`. */
export function hex32(value: number): string {
  return `0x${(value >>> 0).toString(16).padStart(8, '0')}`
}

/** `4227584` → `4.0 MiB`. */
export function bytes(value: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let unit = 0
  let scaled = value
  while (scaled >= 1024 && unit < units.length - 1) {
    scaled /= 1024
    unit += 1
  }
  return unit === 0 ? `${int(value)} B` : `${scaled.toFixed(1)} ${units[unit]}`
}

/**
 * A plain-text table: a header row, then rows; columns are right-aligned unless listed
 * in `left`. Returns the lines (no trailing newline).
 */
export function table(headers: readonly string[], rows: readonly (readonly string[])[], left: readonly number[] = []): string[] {
  const widths = headers.map((header, i) => Math.max(header.length, ...rows.map((row) => (row[i] ?? '').length)))
  const line = (cells: readonly string[]): string =>
    cells
      .map((cell, i) => (left.includes(i) ? cell.padEnd(widths[i] ?? 0) : cell.padStart(widths[i] ?? 0)))
      .join('  ')
      .trimEnd()
  return [line(headers), ...rows.map(line)]
}

/**
 * JSON with bigints written as exact integers (not strings): LSNs and sequence numbers are
 * u64, and a JSON number has no size limit (`jq` keeps them exact; JavaScript's
 * `JSON.parse` rounds above 2^53, far beyond any real LSN).
 */
export function json(value: unknown): string {
  const marker = '\u0000bigint:'
  const text = JSON.stringify(value, (_key, v: unknown) => (typeof v === 'bigint' ? `${marker}${v}` : v), 2)
  return text.replace(/"\\u0000bigint:(\d+)"/g, '$1')
}

/** Writes lines to a stream. */
export function print(stream: NodeJS.WritableStream, ...lines: string[]): void {
  stream.write(`${lines.join('\n')}\n`)
}

/**
 * A one-line progress bar on a terminal: `label [██████░░░░] 12/30 segments 40% ETA 3s`,
 * redrawn in place, erased by {@link ProgressBar.finish}. On a stream that is not a
 * terminal (only when forced with `--progress`) each update is its own line, at most one
 * per second.
 */
export class ProgressBar {
  readonly #stream: Io['stderr']
  readonly #label: string
  readonly #unit: string
  readonly #started = performance.now()
  #lastPlainMs = -Infinity
  #drawn = false

  constructor(stream: Io['stderr'], label: string, unit: string) {
    this.#stream = stream
    this.#label = label
    this.#unit = unit
  }

  update(done: number, total: number): void {
    const now = performance.now()
    const line = renderProgress(this.#label, done, total, this.#unit, now - this.#started, this.#stream.columns || 80)
    if (this.#stream.isTTY === true) {
      this.#stream.write(`\r${line}\u001b[K`)
      this.#drawn = true
    } else if (now - this.#lastPlainMs >= 1000 || (total > 0 && done === total)) {
      this.#stream.write(`${line}\n`)
      this.#lastPlainMs = now
    }
  }

  /** Erases the bar (on a terminal). */
  finish(): void {
    if (this.#drawn) this.#stream.write('\r\u001b[K')
    this.#drawn = false
  }
}

/** The text of one progress line, at most `columns` wide. Exported for the tests. */
export function renderProgress(label: string, done: number, total: number, unit: string, elapsedMs: number, columns: number): string {
  const fraction = total > 0 ? Math.min(1, done / total) : 0
  const percent = `${Math.floor(fraction * 100)}%`.padStart(4)
  const counts = total > 0 ? `${done}/${total} ${unit}` : `listing ${unit}`
  const etaMs = fraction > 0 && fraction < 1 ? (elapsedMs / fraction) * (1 - fraction) : undefined
  const eta = etaMs === undefined ? '' : ` ETA ${etaMs < 60_000 ? `${Math.ceil(etaMs / 1000)}s` : `${Math.ceil(etaMs / 60_000)}m`}`
  const tail = ` ${counts} ${percent}${eta}`
  const barWidth = Math.max(10, Math.min(40, columns - label.length - tail.length - 4))
  const filled = Math.round(fraction * barWidth)
  const bar = `[${'█'.repeat(filled)}${'░'.repeat(barWidth - filled)}]`
  return `${label} ${bar}${tail}`.slice(0, Math.max(20, columns - 1))
}
