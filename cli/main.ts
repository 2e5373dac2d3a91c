#!/usr/bin/env node
/**
 * The `doublewrite` command line (`npx doublewrite`): `inspect`, `verify`, `demo`, `bench`.
 * Arguments are parsed here; each command lives in its own module, loaded only when it
 * runs, so `--help` works even where the native addon does not load.
 *
 * Programmatic use: `require('doublewrite/cli').main(['verify', dir, '--json'])` resolves
 * with the exit code.
 *
 * @module
 */

import { parseArgs } from 'node:util'

import { usageError as usage } from './output.js'

/** Where output goes; defaults to the process's streams. */
export interface CliStreams {
  readonly stdout: NodeJS.WritableStream & { isTTY?: boolean; columns?: number }
  readonly stderr: NodeJS.WritableStream & { isTTY?: boolean; columns?: number }
}

type ParsedValues = Record<string, string | boolean | undefined>

interface Command {
  summary: string
  usage: string
  details: string
  options: Record<string, { type: 'string' | 'boolean'; short?: string }>
  positionals: number
  run(positionals: string[], values: ParsedValues, io: CliStreams): Promise<number>
}

const EXIT_CODES = `Exit codes:
  0  done; verify: every record verifies
  1  error: I/O, not a WAL or DWB, the WAL is open (ERR_LOCKED), the addon does not load
  2  wrong arguments
  3  verify: damaged records, all repairable from the DWB (nothing lost)
  4  verify: torn tail, an interrupted commit that was never acknowledged (nothing acknowledged lost)
  5  verify: acknowledged records damaged beyond repair`

const COMMON_OPTIONS = `  --json               print the result as JSON on stdout (LSNs as exact integers)
  -h, --help           show this help`

const COMMANDS: Record<string, Command> = {
  inspect: {
    summary: 'show a DWB file: header, geometry, every copy (sequence, LSN, size, valid or why not)',
    usage: 'doublewrite inspect <file.dwb> [--summary] [--json]',
    details: `Reads a double-write buffer file (a WAL's is <wal-dir>/wal.dwb) without changing it: the
header (magic, format, checksum), the geometry (block size, slots, slot stride, largest
record) and every copy the ring holds, oldest first, with its sequence number, LSN, slot,
offsets, size and whether it verifies (and if not, why). The copy recovery would use for
each LSN is marked. A damaged copy is normal after a crash during a DWB write.

Options:
  --summary            leave out the list of copies
${COMMON_OPTIONS}

Exit code 0 when the file could be read (damaged copies included), 1 when it cannot be
(not a DWB, damaged header: ERR_DWB_CORRUPT, I/O error), 2 for wrong arguments.`,
    options: { summary: { type: 'boolean' } },
    positionals: 1,
    async run([file = ''], values, io) {
      const { inspectCommand } = require('./inspect.js') as typeof import('./inspect.js')
      return inspectCommand(file, { json: values.json === true, summary: values.summary === true }, io)
    },
  },
  verify: {
    summary: 'check every record and DWB copy of a WAL, read-only; exit code = verdict',
    usage: 'doublewrite verify <wal-dir> [--repair] [--json] [--progress | --no-progress]',
    details: `Runs recovery's checks on a closed WAL without writing a byte (no lock file, no repair):
every record of every segment and every copy in the DWB. Reports what recovery would do:
keep the records, restore damaged ones from their DWB copies ("repairable"), cut an
interrupted, never-acknowledged commit at the end ("torn tail"), or refuse to open because
acknowledged records are damaged with no copy left ("lost"). A WAL that is open (in any
process) is refused with ERR_LOCKED.

Options:
  --repair             fix what can be fixed: open the WAL normally (recovery writes the
                       DWB copies back and cuts a torn tail), close it, verify again; the
                       exit code is then the verdict after the repair. Never changes a WAL
                       whose records are lost.
  --progress           always draw the progress bar on stderr (default: only on a terminal,
                       once a verification takes longer than 0.3 s)
  --no-progress        never draw it
${COMMON_OPTIONS}

${EXIT_CODES}`,
    options: { repair: { type: 'boolean' }, progress: { type: 'boolean' }, 'no-progress': { type: 'boolean' } },
    positionals: 1,
    async run([dir = ''], values, io) {
      const { verifyCommand } = require('./verify.js') as typeof import('./verify.js')
      if (values.progress === true && values['no-progress'] === true) throw usage('--progress and --no-progress contradict each other')
      const progress = values.progress === true ? 'on' : values['no-progress'] === true ? 'off' : 'auto'
      return verifyCommand(dir, { json: values.json === true, repair: values.repair === true, progress }, io)
    },
  },
  demo: {
    summary: 'write a WAL, tear a record like a power cut does, watch recovery restore it',
    usage: 'doublewrite demo [--records N] [--in-flight N] [--dir DIR] [--keep] [--json]',
    details: `In a temporary directory: appends records with group commit, overwrites part of an
acknowledged record with garbage (what a torn write leaves), reopens the WAL and shows
recovery restoring it from the double-write buffer; then uses a DoubleWriteBuffer alone.

Options:
  --records N          records to append (default 2000, at least 100)
  --in-flight N        appends in flight at a time (default 100)
  --dir DIR            where to create the temporary directory (default: the OS temp dir)
  --keep               keep the directory and print its path (then try verify and inspect on it)
${COMMON_OPTIONS}

Exit code 0 when every record came back, 1 otherwise.`,
    options: { records: { type: 'string' }, 'in-flight': { type: 'string' }, dir: { type: 'string' }, keep: { type: 'boolean' } },
    positionals: 0,
    async run(_positionals, values, io) {
      const { demoCommand } = require('./demo.js') as typeof import('./demo.js')
      return demoCommand(
        {
          json: values.json === true,
          records: integer('--records', values.records, 2000, 100, 10_000_000),
          inFlight: integer('--in-flight', values['in-flight'], 100, 1, 100_000),
          keep: values.keep === true,
          dir: typeof values.dir === 'string' ? values.dir : undefined,
        },
        io,
      )
    },
  },
  bench: {
    summary: 'durable appends/s for 1 writer and for 64 concurrent appenders',
    usage: 'doublewrite bench [--seconds S] [--appenders N] [--payload BYTES] [--dwb-mode MODE] [--tail-protection P] [--busy-poll] [--dir DIR] [--json]',
    details: `A short benchmark of this package where it runs: durable appends per second, commits per
second and append latency for one writer (each append waits for the previous one) and
for N concurrent appenders (group commit: one DWB sync + one WAL sync per commit, shared
by every append waiting for it). Run it with --dir on the disk you care about: the OS
temp directory is often tmpfs, where a sync costs nothing. The WALs use 64 MiB segments
and no background spare segment, so nothing else writes during the timed window (a run
long and fast enough to fill a segment times its roll too).

Options:
  --seconds S          seconds per scenario (default 2)
  --appenders N        appenders of the concurrent scenario (default 64)
  --payload BYTES      payload bytes per record (default 128)
  --dwb-mode MODE      buffered, direct or off (default: the library's, direct under mirror
                       where the file system takes O_DIRECT)
  --tail-protection P  mirror (default: DWB copies, two syncs per commit) or pad (one sync);
                       both write O_DIRECT, and commit through the kernel, where the file
                       system takes it
  --busy-poll          open the WALs with busyPoll: the event loop turns instead of sleeping
                       while a commit is in flight (compare the CPU column with and without)
  --dir DIR            where to create the WALs (default: the OS temp directory)
${COMMON_OPTIONS}`,
    options: {
      seconds: { type: 'string' },
      appenders: { type: 'string' },
      payload: { type: 'string' },
      'dwb-mode': { type: 'string' },
      'tail-protection': { type: 'string' },
      'busy-poll': { type: 'boolean' },
      dir: { type: 'string' },
    },
    positionals: 0,
    async run(_positionals, values, io) {
      const { benchCommand } = require('./bench.js') as typeof import('./bench.js')
      const dwbMode = values['dwb-mode']
      if (dwbMode !== undefined && dwbMode !== 'buffered' && dwbMode !== 'direct' && dwbMode !== 'off') {
        throw usage(`--dwb-mode must be buffered, direct or off, not ${String(dwbMode)}`)
      }
      const tailProtection = values['tail-protection'] ?? 'mirror'
      if (tailProtection !== 'mirror' && tailProtection !== 'pad') {
        throw usage(`--tail-protection must be mirror or pad, not ${String(tailProtection)}`)
      }
      return benchCommand(
        {
          json: values.json === true,
          seconds: decimal('--seconds', values.seconds, 2, 0.05, 3600),
          appenders: integer('--appenders', values.appenders, 64, 2, 100_000),
          payloadBytes: integer('--payload', values.payload, 128, 0, 64 << 20),
          dwbMode,
          tailProtection,
          busyPoll: values['busy-poll'] === true,
          dir: typeof values.dir === 'string' ? values.dir : undefined,
        },
        io,
      )
    },
  },
}

function mainHelp(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((name) => COMMANDS[name]?.usage.split(' ')[1]?.length ?? 0))
  const lines = Object.entries(COMMANDS).map(([name, command]) => {
    const argument = command.usage.split(' ')[2]?.startsWith('<') === true ? ` ${command.usage.split(' ')[2]}` : ''
    return `  ${`${name}${argument}`.padEnd(width + 14)} ${command.summary}`
  })
  return `doublewrite ${version()}: torn-write protection for Node.js (a double-write buffer and a WAL)

Usage: doublewrite <command> [options]

Commands:
${lines.join('\n')}

Options:
  --json                print the result as JSON on stdout (every command)
  -h, --help            this help; doublewrite <command> --help for a command's options
  -v, --version         print the version

${EXIT_CODES}

Examples:
  npx doublewrite demo --keep                 # then verify and inspect the directory it prints
  npx doublewrite verify ./data/wal           # read-only; the exit code says clean/repairable/torn/lost
  npx doublewrite verify ./data/wal --repair  # recover, then verify again
  npx doublewrite inspect ./data/wal/wal.dwb --summary
  npx doublewrite bench --dir /var/lib/myapp  # on the disk the WAL will live on`
}

function version(): string {
  return (require('../package.json') as { version: string }).version
}

function integer(name: string, value: string | boolean | undefined, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback
  const n = Number(value)
  if (typeof value !== 'string' || !/^\d+$/.test(value) || n < min || n > max) {
    throw usage(`${name} must be an integer from ${min} to ${max}, not ${String(value)}`)
  }
  return n
}

function decimal(name: string, value: string | boolean | undefined, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback
  const n = Number(value)
  if (typeof value !== 'string' || value.trim() === '' || !Number.isFinite(n) || n < min || n > max) {
    throw usage(`${name} must be a number from ${min} to ${max}, not ${String(value)}`)
  }
  return n
}

/**
 * Runs the command line with `argv` (without `node` and the script) and resolves with the
 * exit code; never rejects and never exits the process.
 */
export async function main(argv: readonly string[], io: CliStreams = process): Promise<number> {
  const wantsJson = argv.includes('--json')
  const [name, ...rest] = argv
  try {
    if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
      const topic = name === 'help' ? rest[0] : undefined
      const command = topic === undefined ? undefined : COMMANDS[topic]
      io.stdout.write(`${command === undefined ? mainHelp() : helpOf(topic ?? '', command)}\n`)
      return name === undefined ? 2 : 0
    }
    if (name === '-v' || name === '--version') {
      io.stdout.write(`${version()}\n`)
      return 0
    }
    const command = COMMANDS[name]
    if (command === undefined) throw usage(`unknown command '${name}'; commands: ${Object.keys(COMMANDS).join(', ')} (doublewrite --help)`)
    let parsed: { values: ParsedValues; positionals: string[] }
    try {
      parsed = parseArgs({
        args: [...rest],
        options: { ...command.options, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
        allowPositionals: true,
        strict: true,
      }) as { values: ParsedValues; positionals: string[] }
    } catch (error) {
      throw usage(`${(error as Error).message.split('\n')[0] ?? ''}\nusage: ${command.usage}`)
    }
    if (parsed.values.help === true) {
      io.stdout.write(`${helpOf(name, command)}\n`)
      return 0
    }
    if (parsed.positionals.length !== command.positionals) {
      throw usage(`usage: ${command.usage}`)
    }
    return await command.run(parsed.positionals, parsed.values, io)
  } catch (error) {
    return reportError(error, wantsJson, io)
  }
}

function helpOf(name: string, command: Command): string {
  return `doublewrite ${name}: ${command.summary}\n\nUsage: ${command.usage}\n\n${command.details}`
}

function reportError(error: unknown, wantsJson: boolean, io: CliStreams): number {
  const exitCode = typeof (error as { exitCode?: unknown }).exitCode === 'number' ? (error as { exitCode: number }).exitCode : 1
  const message = error instanceof Error ? error.message : String(error)
  const code = typeof (error as { code?: unknown }).code === 'string' ? (error as { code: string }).code : 'ERR_UNEXPECTED'
  if (wantsJson) {
    io.stdout.write(`${JSON.stringify({ error: { code, message }, exitCode }, null, 2)}\n`)
  } else {
    io.stderr.write(`doublewrite: ${code === 'ERR_USAGE' || code === 'ERR_CLI' ? '' : `${code}: `}${message}\n`)
  }
  if (process.env.DOUBLEWRITE_DEBUG && error instanceof Error) io.stderr.write(`${error.stack ?? ''}\n`)
  return exitCode
}

if (require.main === module) {
  void main(process.argv.slice(2)).then((code) => {
    process.exitCode = code
  })
}
