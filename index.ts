/**
 * doublewrite: torn-write protection for Node.js. A double-write buffer (DWB) and a
 * write-ahead log (WAL) whose commits are protected by it, implemented in Rust
 * (`crates/doublewrite`) and exposed through a thin napi-rs binding (`src/`).
 *
 * This file is the whole TypeScript API. Its sections mirror the binding's files:
 *
 * | section   | binding file      | what                                               |
 * |-----------|-------------------|----------------------------------------------------|
 * | errors    | `src/error.rs`    | `[ERR_CODE] message` → `Error` with `code`         |
 * | records   | `src/record.rs`   | {@link WalRecord}, {@link RecordType}              |
 * | dwb       | `src/dwb.rs`      | {@link DoubleWriteBuffer}, {@link DwbMode}         |
 * | wal       | `src/wal.rs`      | {@link Wal}: group commit, recovery, replay        |
 *
 * Number conventions:
 * - LSNs and ids declared u64 (`tenantId`, `databaseId`) are `bigint`.
 * - Counters that accumulate over the life of a handle or the process
 *   ({@link Wal.stats}, {@link ProtectionStatus.unprotectedRecords},
 *   {@link DoubleWriteBuffer.skippedRecords}, {@link DoubleWriteBuffer.bytesWritten},
 *   {@link dwbBytesWrittenTotal}) are `bigint`: they grow without bound.
 * - Sizes, geometry and the one-off figures of a report ({@link RecoveryReport} counts,
 *   durations, {@link Wal.truncateBefore}'s result) are `number`.
 *
 * Errors: every error thrown or rejected by this package has a string `code`. Wrong
 * argument types are `TypeError`s with code `ERR_INVALID_ARG_TYPE`; values out of range
 * are `RangeError`s with `ERR_OUT_OF_RANGE`; unknown option values are `RangeError`s
 * with `ERR_INVALID_ARG_VALUE`. Errors of the core carry its stable codes
 * (see {@link ErrorCode}).
 *
 * @packageDocumentation
 */

// First: loads the addon with an error that names the missing platform package.
import './loader.js'
import * as native from './binding.js'

// ─── errors (src/error.rs) ─────────────────────────────────────────────────────────────

/**
 * The stable codes of errors raised by this package. The list can grow; compare with
 * string literals.
 */
export type ErrorCode =
  /** A wrong JavaScript type was passed (`TypeError`). */
  | 'ERR_INVALID_ARG_TYPE'
  /** A number or bigint is outside its range (`RangeError`). */
  | 'ERR_OUT_OF_RANGE'
  /** An option has an unknown value (`RangeError`). */
  | 'ERR_INVALID_ARG_VALUE'
  /** Options contradict each other or are out of the core's bounds. */
  | 'ERR_INVALID_OPTIONS'
  /** An I/O call failed; the message says which, on what path. */
  | 'ERR_IO'
  /** The device is full; nothing partial was acknowledged. */
  | 'ERR_NO_SPACE'
  /** Direct I/O was asked for where it is not available. */
  | 'ERR_DIRECT_IO_UNSUPPORTED'
  /** A double-write buffer was opened with mode `'off'`. */
  | 'ERR_DWB_OFF'
  /** The DWB file is not a DWB or its header is damaged. */
  | 'ERR_DWB_CORRUPT'
  /** Options conflict with the geometry stored in an existing DWB file. */
  | 'ERR_DWB_GEOMETRY'
  /** The DWB could not protect a commit under the `'strict'` policy. */
  | 'ERR_DWB_UNAVAILABLE'
  /** A path names a directory where a file is expected (or the reverse). */
  | 'ERR_PATH_IS_DIRECTORY'
  /** Acknowledged records cannot be recovered; nothing was changed on disk. */
  | 'ERR_WAL_CORRUPT'
  /** A sync failed earlier; reopen the WAL so recovery decides what survived. */
  | 'ERR_WAL_POISONED'
  /** Another handle (this process, a worker or another process) holds the WAL. */
  | 'ERR_LOCKED'
  /** The WAL handle is closed. */
  | 'ERR_WAL_CLOSED'
  /** The double-write buffer handle is closed. */
  | 'ERR_DWB_CLOSED'
  /** Replay met a required record type the reader does not know. */
  | 'ERR_WAL_UNKNOWN_RECORD_TYPE'
  /** A record is encrypted with a key id the key ring does not hold; the message names it. */
  | 'ERR_WAL_KEY_MISSING'
  /** An encrypted record does not decrypt under the key with its id (wrong key, or altered). */
  | 'ERR_WAL_DECRYPT'
  /** A payload is larger than {@link MAX_PAYLOAD_BYTES}. */
  | 'ERR_RECORD_TOO_LARGE'
  /** A record type sets a reserved bit (14: encrypted, 31: framing). */
  | 'ERR_RECORD_TYPE'
  /** A record's checksum does not match its bytes. */
  | 'ERR_RECORD_CHECKSUM'
  /** Bytes are not exactly one valid record. */
  | 'ERR_RECORD_CORRUPT'
  /** Thrown by `require`/`import` of this package: no native addon for this platform is installed (the message names the package to install). */
  | 'ERR_BINDING_NOT_FOUND'
  /** Thrown by `require`/`import` of this package: the platform package is installed but its addon does not load (wrong version, damaged file). */
  | 'ERR_BINDING_LOAD'

/** An error raised by this package: an `Error` (or `TypeError` / `RangeError`) with a `code`. */
export type DoublewriteError = Error & { code: ErrorCode }

const CODED_MESSAGE = /^\[([A-Z][A-Z0-9_]*)\] ([\s\S]*)$/

type ErrorClass = ErrorConstructor | TypeErrorConstructor | RangeErrorConstructor

function errorClassFor(code: string): ErrorClass {
  switch (code) {
    case 'ERR_INVALID_ARG_TYPE':
      return TypeError
    case 'ERR_OUT_OF_RANGE':
    case 'ERR_INVALID_ARG_VALUE':
      return RangeError
    default:
      return Error
  }
}

/** The argument checks of this file: their frames are left out of error stacks. */
const CHECK_FRAME = new RegExp(
  `^\\s+at (?:codedError|invalidType|outOfRange|invalidValue|check\\w+|recordInput|batchInputs|dwbOptions|walOptions) \\(${__filename.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:`,
)

/**
 * Builds a coded error the way Node's own errors look: `TypeError [ERR_X]: message`.
 * `frames` replaces the stack frames (those of an error from the binding); without it the
 * stack starts at the public method that rejected the argument.
 */
function codedError(code: string, message: string, frames?: string): DoublewriteError {
  const error = new (errorClassFor(code))(message) as DoublewriteError
  Object.defineProperty(error, 'code', {
    value: code,
    enumerable: true,
    writable: true,
    configurable: true,
  })
  const ownHead = `${error.name}: ${message}`
  const stack = error.stack ?? ownHead
  let ownFrames = stack.startsWith(ownHead) ? stack.slice(ownHead.length) : ''
  if (frames === undefined) {
    const lines = ownFrames.split('\n')
    let first = 1
    while (first < lines.length && CHECK_FRAME.test(lines[first] ?? '')) first += 1
    ownFrames = ['', ...lines.slice(first)].join('\n')
  }
  error.stack = `${error.name} [${code}]: ${message}${frames ?? ownFrames}`
  return error
}

/**
 * Turns an error thrown by the binding (`[ERR_CODE] message`) into a coded error, keeping
 * the stack frames of the original. Anything else passes through unchanged.
 */
function fromNative(error: unknown): unknown {
  if (!(error instanceof Error)) return error
  const match = CODED_MESSAGE.exec(error.message)
  if (match === null) return error
  const [, code = 'ERR_IO', message = ''] = match
  const head = `${error.name}: ${error.message}`
  const stack = error.stack ?? head
  const frames = stack.startsWith(head) ? stack.slice(head.length) : ''
  return codedError(code, message, frames)
}

/**
 * For errors that arrive asynchronously (a pool task or the commit thread), whose own
 * stack is empty: convert, then capture the stack of the `await` that received it, which
 * V8 extends with the async callers.
 */
function fromNativeAsync(error: unknown): unknown {
  const converted = fromNative(error)
  if (converted instanceof Error) {
    const code = (converted as Partial<DoublewriteError>).code
    const holder: { stack?: string } = {}
    Error.captureStackTrace(holder, fromNativeAsync)
    const frames = (holder.stack ?? '').replace(/^Error\n?/, '\n')
    const head = code === undefined ? `${converted.name}: ${converted.message}` : `${converted.name} [${code}]: ${converted.message}`
    converted.stack = head + (frames === '\n' ? '' : frames)
  }
  return converted
}

/** Calls into the binding, converting its errors. */
function call<T>(fn: () => T): T {
  try {
    return fn()
  } catch (error) {
    throw fromNative(error)
  }
}

/** Awaits a promise of the binding, converting its rejection. */
async function callAsync<T>(promise: () => Promise<T>): Promise<T> {
  let pending: Promise<T>
  try {
    pending = promise()
  } catch (error) {
    throw fromNative(error)
  }
  try {
    return await pending
  } catch (error) {
    throw fromNativeAsync(error)
  }
}

function describe(value: unknown): string {
  if (value === null) return 'null'
  if (value === undefined) return 'undefined'
  if (typeof value === 'function') return `function ${value.name || '<anonymous>'}`
  if (typeof value === 'object') {
    const name = (value as object).constructor?.name
    return name ? `an instance of ${name}` : 'an object'
  }
  let shown = typeof value === 'bigint' ? `${value}n` : String(value)
  if (shown.length > 28) shown = `${shown.slice(0, 25)}...`
  if (typeof value === 'string') shown = `'${shown}'`
  return `type ${typeof value} (${shown})`
}

function invalidType(name: string, expected: string, value: unknown): DoublewriteError {
  return codedError('ERR_INVALID_ARG_TYPE', `The "${name}" argument must be ${expected}. Received ${describe(value)}`)
}

function outOfRange(name: string, range: string, value: unknown): DoublewriteError {
  return codedError(
    'ERR_OUT_OF_RANGE',
    `The value of "${name}" is out of range. It must be ${range}. Received ${typeof value === 'bigint' ? `${value}n` : String(value)}`,
  )
}

function invalidValue(name: string, allowed: readonly string[], value: unknown): DoublewriteError {
  return codedError(
    'ERR_INVALID_ARG_VALUE',
    `The "${name}" argument must be one of ${allowed.map((v) => `'${v}'`).join(', ')}. Received ${describe(value)}`,
  )
}

/** Largest value of a u64, the range of LSNs and ids. */
const U64_MAX = (1n << 64n) - 1n
const U32_MAX = 0xffff_ffff

function checkU64(name: string, value: unknown, min = 0n, max = U64_MAX): bigint {
  if (typeof value !== 'bigint') throw invalidType(name, 'of type bigint', value)
  if (value < min || value > max) {
    throw outOfRange(name, `>= ${min}n and <= ${max === U64_MAX ? '2n ** 64n - 1n' : '2n ** 64n - 2n'}`, value)
  }
  return value
}

/** Largest LSN a record may have: `u64::MAX` is reserved (the LSN after the last). */
const MAX_LSN = U64_MAX - 1n

function checkOptionalU64(name: string, value: unknown): bigint | undefined {
  return value === undefined ? undefined : checkU64(name, value)
}

function checkInteger(name: string, value: unknown, max: number, min = 0): number {
  if (typeof value !== 'number') throw invalidType(name, 'of type number', value)
  if (!Number.isInteger(value) || value < min || value > max) {
    throw outOfRange(name, `an integer >= ${min} and <= ${max}`, value)
  }
  return value
}

function checkOptionalInteger(name: string, value: unknown, max: number, min = 0): number | undefined {
  return value === undefined ? undefined : checkInteger(name, value, max, min)
}

function checkBytes(name: string, value: unknown): Uint8Array {
  if (!(value instanceof Uint8Array)) throw invalidType(name, 'an instance of Uint8Array or Buffer', value)
  return value
}

function checkBoolean(name: string, value: unknown): boolean {
  if (typeof value !== 'boolean') throw invalidType(name, 'of type boolean', value)
  return value
}

function checkOneOf<T extends string>(name: string, value: unknown, allowed: readonly T[]): T {
  if (typeof value !== 'string') throw invalidType(name, 'of type string', value)
  if (!(allowed as readonly string[]).includes(value)) throw invalidValue(name, allowed, value)
  return value as T
}

function checkOptions(name: string, value: unknown, required: boolean): Record<string, unknown> {
  if (value === undefined && !required) return {}
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw invalidType(name, 'of type object', value)
  }
  return value as Record<string, unknown>
}

function checkPath(name: string, value: unknown): string {
  if (value instanceof URL) {
    if (value.protocol !== 'file:') throw invalidValue(name, ['a file: URL'], value.href)
    return decodeURIComponent(value.pathname)
  }
  if (typeof value !== 'string') throw invalidType(name, 'of type string or an instance of URL', value)
  if (value.length === 0) throw invalidValue(name, ['a non-empty path'], value)
  return value
}

const disposeSymbol: typeof Symbol.dispose =
  (Symbol as { dispose?: typeof Symbol.dispose }).dispose ?? (Symbol.for('nodejs.dispose') as typeof Symbol.dispose)
const asyncDisposeSymbol: typeof Symbol.asyncDispose =
  (Symbol as { asyncDispose?: typeof Symbol.asyncDispose }).asyncDispose ??
  (Symbol.for('nodejs.asyncDispose') as typeof Symbol.asyncDispose)

// ─── records (src/record.rs) ───────────────────────────────────────────────────────────

/** Bit 15 of a record type: a reader that does not know the type must fail. */
export const REQUIRED_FLAG: number = native.REQUIRED_FLAG
/** Bytes of the header in front of every payload (the encoded size is `HEADER_SIZE + payload.length`). */
export const HEADER_SIZE: number = native.HEADER_SIZE
/** Largest payload of one record: 64 MiB. */
export const MAX_PAYLOAD_BYTES: number = native.MAX_PAYLOAD_BYTES

/**
 * The record types this package defines. Any other `u32` type is allowed as long as it
 * sets neither bit 14 (encrypted) nor bit 31 (WAL framing); set bit 15
 * ({@link RecordType.REQUIRED_FLAG}) on a type that a reader must understand.
 */
export const RecordType = Object.freeze({
  /** Does nothing; optional. */
  Noop: native.RECORD_TYPE_NOOP,
  /** Insert or replace a value; required. */
  Put: native.RECORD_TYPE_PUT,
  /** Remove a value; required. */
  Delete: native.RECORD_TYPE_DELETE,
  /** Several operations applied atomically; required. */
  Transaction: native.RECORD_TYPE_TRANSACTION,
  /** Everything before this LSN is applied elsewhere; required. */
  Checkpoint: native.RECORD_TYPE_CHECKPOINT,
  /** Metadata a reader may ignore; optional. */
  Metadata: native.RECORD_TYPE_METADATA,
  /** Bit 15: a reader that does not know a type with this bit must fail. */
  REQUIRED_FLAG: native.REQUIRED_FLAG,
  /** Whether a reader that does not know `recordType` must refuse to go on. */
  isRequired(recordType: number): boolean {
    return (checkInteger('recordType', recordType, U32_MAX) & native.REQUIRED_FLAG) !== 0
  },
})

/** Fields of {@link WalRecord.create}. */
export interface WalRecordInit {
  /** A `u32` record type, e.g. {@link RecordType.Put}. */
  recordType: number
  /** The record's LSN: a bigint from `1n` to `2n ** 64n - 1n`. */
  lsn: bigint
  /** Tenant id (u64); default `0n`. */
  tenantId?: bigint
  /** Virtual shard id (u32); default `0`. */
  vshardId?: number
  /** Database id (u64); default `0n`. */
  databaseId?: bigint
  /** The payload, copied; at most {@link MAX_PAYLOAD_BYTES}. */
  payload: Uint8Array
}

let wrapRecord: (handle: native.NativeWalRecord) => WalRecord
let recordHandle: (record: WalRecord) => native.NativeWalRecord

/**
 * A WAL record: a 56-byte little-endian header (magic, version, type, LSN, commit LSN,
 * tenant, vshard, database, payload length, CRC-32C) and its payload. Immutable.
 */
export class WalRecord {
  readonly #handle: native.NativeWalRecord

  private constructor(handle: native.NativeWalRecord) {
    this.#handle = handle
  }

  static {
    wrapRecord = (handle) => new WalRecord(handle)
    recordHandle = (record) => record.#handle
  }

  /**
   * Builds a record and computes its CRC.
   *
   * @throws {TypeError} `ERR_INVALID_ARG_TYPE` when `lsn`, `tenantId` or `databaseId` is
   *   not a bigint, `recordType` or `vshardId` not a number, or `payload` not a Uint8Array.
   * @throws {RangeError} `ERR_OUT_OF_RANGE` when `lsn` is below 1n or above 2n ** 64n - 1n,
   *   or another field is outside its range.
   * @throws {Error} `ERR_RECORD_TYPE` when the type sets a reserved bit;
   *   `ERR_RECORD_TOO_LARGE` above {@link MAX_PAYLOAD_BYTES}.
   */
  static create(init: WalRecordInit): WalRecord {
    const fields = checkOptions('init', init, true)
    const recordType = checkInteger('recordType', fields.recordType, U32_MAX)
    const lsn = checkU64('lsn', fields.lsn, 1n, MAX_LSN)
    const tenantId = checkOptionalU64('tenantId', fields.tenantId) ?? 0n
    const vshardId = checkOptionalInteger('vshardId', fields.vshardId, U32_MAX) ?? 0
    const databaseId = checkOptionalU64('databaseId', fields.databaseId) ?? 0n
    const payload = checkBytes('payload', fields.payload)
    return new WalRecord(
      call(() => native.NativeWalRecord.create(recordType, lsn, tenantId, vshardId, databaseId, payload)),
    )
  }

  /**
   * Decodes exactly one encoded record and verifies its checksum.
   *
   * @throws {TypeError} `ERR_INVALID_ARG_TYPE` when `bytes` is not a Uint8Array.
   * @throws {Error} `ERR_RECORD_CHECKSUM` when the CRC does not match; `ERR_RECORD_CORRUPT`
   *   when the bytes are cut short, have a bad magic, version or length, or trail extra bytes.
   */
  static decode(bytes: Uint8Array): WalRecord {
    const checked = checkBytes('bytes', bytes)
    return new WalRecord(call(() => native.NativeWalRecord.decode(checked)))
  }

  /** The encoded record (header then payload), in a new Uint8Array. */
  encode(): Uint8Array {
    return this.#handle.encode()
  }

  /** The `u32` record type. */
  get recordType(): number {
    return this.#handle.recordType
  }
  /** The record's LSN. */
  get lsn(): bigint {
    return this.#handle.lsn
  }
  /** LSN of the first record of the commit that wrote this record (its own LSN when built alone). */
  get commitLsn(): bigint {
    return this.#handle.commitLsn
  }
  get tenantId(): bigint {
    return this.#handle.tenantId
  }
  get vshardId(): number {
    return this.#handle.vshardId
  }
  get databaseId(): bigint {
    return this.#handle.databaseId
  }
  /** A copy of the payload (a new Uint8Array on every read). */
  get payload(): Uint8Array {
    return this.#handle.payload
  }
  /** CRC-32C of the header fields and the payload. */
  get crc(): number {
    return this.#handle.crc
  }
  /** Bytes of the encoded record: {@link HEADER_SIZE} + payload length. */
  get encodedLength(): number {
    return this.#handle.encodedLen
  }

  get [Symbol.toStringTag](): string {
    return 'WalRecord'
  }

  /** What `console.log` and `util.inspect` show. */
  [Symbol.for('nodejs.util.inspect.custom')](): object {
    return {
      recordType: this.recordType,
      lsn: this.lsn,
      commitLsn: this.commitLsn,
      tenantId: this.tenantId,
      vshardId: this.vshardId,
      databaseId: this.databaseId,
      payloadLength: this.encodedLength - HEADER_SIZE,
      crc: this.crc,
    }
  }
}

// ─── dwb (src/dwb.rs) ──────────────────────────────────────────────────────────────────

/** How a double-write buffer file is written. */
export type DwbMode = 'off' | 'buffered' | 'direct'

const DWB_MODES: readonly DwbMode[] = ['off', 'buffered', 'direct']

/** The {@link DwbMode} values, and the default for a parent WAL. */
export const DwbMode = Object.freeze({
  /** No double-write buffer. A {@link DoubleWriteBuffer} refuses it (`ERR_DWB_OFF`); a {@link Wal} then protects its tail by padding. */
  Off: 'off',
  /** Through the page cache, made durable with fdatasync. */
  Buffered: 'buffered',
  /** Bypassing the page cache (O_DIRECT on Linux, F_NOCACHE on macOS); elsewhere `ERR_DIRECT_IO_UNSUPPORTED`, never a silent fallback. */
  Direct: 'direct',
  /**
   * The mode that matches a parent WAL: `'direct'` when it uses direct I/O, else `'buffered'`.
   *
   * @throws {TypeError} `ERR_INVALID_ARG_TYPE` when the argument is not a boolean.
   */
  defaultForParent(parentUsesDirectIo: boolean): DwbMode {
    return native.dwbModeDefaultForParent(checkBoolean('parentUsesDirectIo', parentUsesDirectIo)) as DwbMode
  },
} as const)

/** Options of {@link DoubleWriteBuffer.open}. */
export interface DwbOptions {
  /** `'buffered'` or `'direct'`; the on-disk layout is the same, so either reads the other's file. */
  mode: DwbMode
  /** Slots in the ring (default 64), used when the file is created; an existing file keeps its own (a different value is `ERR_DWB_GEOMETRY`). */
  capacity?: number
  /** Largest encoded record (header + payload) a slot holds, in bytes (default 65536), used when the file is created; larger records are not mirrored. */
  maxRecordSize?: number
}

/** What staging a copy did: mirrored, or refused because the record is larger than a slot. */
export type MirrorResult =
  | { readonly mirrored: true }
  | {
      readonly mirrored: false
      /** The only reason today: the encoded record is larger than {@link DoubleWriteBuffer.maxRecordSize}. */
      readonly reason: 'too-large'
      /** Encoded size of the record, in bytes. */
      readonly size: number
      /** Largest encoded record the buffer holds, in bytes. */
      readonly max: number
    }

function mirrorResult(outcome: native.MirrorOutcome): MirrorResult {
  if (outcome.mirrored) return { mirrored: true }
  return { mirrored: false, reason: 'too-large', size: outcome.size ?? 0, max: outcome.max ?? 0 }
}

function dwbOptions(options: unknown): native.DwbOpenOptions {
  const fields = checkOptions('options', options, true)
  const capacity = checkOptionalInteger('options.capacity', fields.capacity, U32_MAX)
  const maxRecordSize = checkOptionalInteger('options.maxRecordSize', fields.maxRecordSize, U32_MAX)
  return {
    mode: checkOneOf('options.mode', fields.mode, DWB_MODES),
    ...(capacity === undefined ? {} : { capacity }),
    ...(maxRecordSize === undefined ? {} : { maxRecordSize }),
  }
}

function checkRecord(name: string, record: unknown): native.NativeWalRecord {
  if (!(record instanceof WalRecord)) throw invalidType(name, 'an instance of WalRecord', record)
  return recordHandle(record)
}

/**
 * A double-write buffer: a fixed-size, block-aligned ring of checksummed record copies in
 * one file. Write copies (deferred), make them durable with one {@link flush} per batch,
 * and after a crash recover a record by its LSN.
 *
 * Staging with {@link writeRecordDeferred} never waits for a flush in progress, and a copy
 * staged while a flush runs is kept for the next one.
 *
 * After {@link close}, every method and getter throws `ERR_DWB_CLOSED`.
 */
export class DoubleWriteBuffer {
  readonly #handle: native.NativeDoubleWriteBuffer

  private constructor(handle: native.NativeDoubleWriteBuffer) {
    this.#handle = handle
  }

  /**
   * Opens (or creates, preallocated) the buffer at `path`, on the libuv pool.
   *
   * @param path - path of the DWB file (a string or a `file:` URL).
   * @throws {TypeError} `ERR_INVALID_ARG_TYPE` for a wrong argument type.
   * @throws {RangeError} `ERR_INVALID_ARG_VALUE` for an unknown `mode`;
   *   `ERR_OUT_OF_RANGE` for a negative or fractional size.
   * @throws {Error} `ERR_PATH_IS_DIRECTORY` when `path` is a directory; `ERR_DWB_OFF` for
   *   mode `'off'`; `ERR_DWB_CORRUPT` when the file is not a DWB or its header is damaged
   *   (damaged slots are not an error: they read as empty); `ERR_DWB_GEOMETRY`;
   *   `ERR_DIRECT_IO_UNSUPPORTED`; `ERR_IO`.
   */
  static async open(path: string | URL, options: DwbOptions): Promise<DoubleWriteBuffer> {
    const checkedPath = checkPath('path', path)
    const checked = dwbOptions(options)
    return new DoubleWriteBuffer(await callAsync(() => native.NativeDoubleWriteBuffer.open(checkedPath, checked)))
  }

  /** {@link open} on the JS thread (it creates and syncs the file there). Same errors. */
  static openSync(path: string | URL, options: DwbOptions): DoubleWriteBuffer {
    const checkedPath = checkPath('path', path)
    const checked = dwbOptions(options)
    return new DoubleWriteBuffer(call(() => native.NativeDoubleWriteBuffer.openSync(checkedPath, checked)))
  }

  /**
   * Stages a copy of `record` (verifying its checksum first); it is durable after the next
   * {@link flush}. Does no I/O unless the staged copies would overflow the ring, in which
   * case the earlier ones are flushed first.
   *
   * @returns `{ mirrored: false, reason: 'too-large', size, max }` when the record is
   *   larger than a slot (it is counted in {@link skippedRecords}), else `{ mirrored: true }`.
   * @throws {TypeError} `ERR_INVALID_ARG_TYPE` when `record` is not a {@link WalRecord}.
   */
  writeRecordDeferred(record: WalRecord): MirrorResult {
    const handle = checkRecord('record', record)
    return mirrorResult(call(() => this.#handle.writeRecordDeferred(handle)))
  }

  /** Stages a copy and flushes, on the libuv pool. See {@link writeRecordDeferred}. */
  async writeRecord(record: WalRecord): Promise<MirrorResult> {
    const handle = checkRecord('record', record)
    return mirrorResult(await callAsync(() => this.#handle.writeRecord(handle)))
  }

  /** {@link writeRecord} on the JS thread. */
  writeRecordSync(record: WalRecord): MirrorResult {
    const handle = checkRecord('record', record)
    return mirrorResult(call(() => this.#handle.writeRecordSync(handle)))
  }

  /**
   * Writes every staged copy in one write and makes them durable with one sync, on the
   * libuv pool. Does nothing when nothing is staged. On failure the copies stay staged.
   */
  async flush(): Promise<void> {
    await callAsync(() => this.#handle.flush())
  }

  /** {@link flush} on the JS thread. */
  flushSync(): void {
    call(() => this.#handle.flushSync())
  }

  /**
   * The newest copy of `lsn` whose checksum is valid, or `null`; read on the libuv pool.
   *
   * @throws {TypeError} `ERR_INVALID_ARG_TYPE` when `lsn` is not a bigint.
   * @throws {RangeError} `ERR_OUT_OF_RANGE` when `lsn` is negative or above 2n ** 64n - 1n.
   */
  async recoverRecord(lsn: bigint): Promise<WalRecord | null> {
    const checked = checkU64('lsn', lsn)
    const handle = await callAsync(() => this.#handle.recoverRecord(checked))
    return handle === null ? null : wrapRecord(handle)
  }

  /** {@link recoverRecord} on the JS thread. */
  recoverRecordSync(lsn: bigint): WalRecord | null {
    const checked = checkU64('lsn', lsn)
    const handle = call(() => this.#handle.recoverRecordSync(checked))
    return handle === null ? null : wrapRecord(handle)
  }

  /** `'buffered'` or `'direct'`. */
  get mode(): DwbMode {
    return call(() => this.#handle.mode) as DwbMode
  }
  get path(): string {
    return call(() => this.#handle.path)
  }
  /** Slots in the ring (from the file). */
  get capacity(): number {
    return call(() => this.#handle.capacity)
  }
  /** Bytes between slot starts: a multiple of the block size. */
  get slotStride(): number {
    return call(() => this.#handle.slotStride)
  }
  /** Largest encoded record (header + payload) that is mirrored, in bytes. */
  get maxRecordSize(): number {
    return call(() => this.#handle.maxRecordSize)
  }
  /** Records refused (not mirrored) because they were larger than {@link maxRecordSize}. */
  get skippedRecords(): bigint {
    return call(() => this.#handle.skippedRecords)
  }
  /** Bytes this handle's flushes wrote (padding included in direct mode). */
  get bytesWritten(): bigint {
    return call(() => this.#handle.bytesWritten)
  }
  /** Copies staged and not yet flushed. */
  get pendingRecords(): number {
    return call(() => this.#handle.pendingRecords)
  }

  /**
   * Releases the handle. Staged copies that were not flushed are dropped; an operation
   * already running on the pool finishes first. Idempotent.
   */
  close(): void {
    this.#handle.close()
  }

  /** Whether {@link close} has not been called. */
  isOpen(): boolean {
    return this.#handle.isOpen()
  }

  /** {@link close}, for `using`. */
  [disposeSymbol](): void {
    this.close()
  }

  /** {@link close}, for `await using`. */
  async [asyncDisposeSymbol](): Promise<void> {
    this.close()
  }
}

/**
 * Bytes written to double-write buffer files by this process: every buffer (those of
 * WALs included) and every worker thread, padding and preallocation included.
 */
export function dwbBytesWrittenTotal(): bigint {
  return native.dwbBytesWrittenTotal()
}

// ─── wal (src/wal.rs) ──────────────────────────────────────────────────────────────────

/** What to do when the DWB cannot be written. */
export type Protection =
  /** Refuse a commit whose at-risk records cannot get durable DWB copies (`ERR_DWB_UNAVAILABLE`) before any of its WAL bytes is written: an acknowledged record is never unprotected. */
  | 'strict'
  /** Acknowledge anyway, count the records that were at risk without a copy, and pad every later commit. */
  | 'degraded'

/** What protects acknowledged records from the next commit's write. */
export type TailProtection =
  /**
   * Commits are packed; the records a commit leaves in the partial last block get DWB
   * copies, synced alongside its WAL sync, so they are durable before the next commit
   * rewrites that block. A commit that would end within a quarter of its own bytes of a
   * block boundary pads to it instead (one sync, and at most that quarter of space); a
   * commit under 224 bytes (four padding-record headers) never does. Its segments and DWB default to O_DIRECT where
   * the file system takes it, and then an awaited append that finds the WAL idle is
   * committed through the kernel: its DWB copies and its WAL write go as one submission,
   * both flushes at once ({@link WalOptions.kernelCompletion}).
   */
  | 'mirror'
  /**
   * Every commit ends on a block boundary with a padding record, so no block holding
   * acknowledged bytes is written again. One sync per commit. Its segments default to
   * O_DIRECT where the file system takes it, and then an awaited append that finds the
   * WAL idle is committed through the kernel ({@link WalOptions.kernelCompletion}).
   */
  | 'pad'

/** How acknowledged records are protected right now. */
export type ProtectionState =
  /** The DWB works and holds the at-risk records of every commit. */
  | 'active'
  /** No DWB by choice (`dwbMode: 'off'`) or `tailProtection: 'pad'`: protected by padding. */
  | 'padding'
  /** The DWB failed under the `'degraded'` policy: padded since; see {@link ProtectionStatus.unprotectedRecords}. */
  | 'degraded'

const PROTECTIONS: readonly Protection[] = ['strict', 'degraded']
const TAIL_PROTECTIONS: readonly TailProtection[] = ['mirror', 'pad']

/** Options of {@link Wal.open}. */
export interface WalOptions {
  /**
   * Mode of the WAL's double-write buffer; default {@link DwbMode.defaultForParent}(`directIo`)
   * when `directIo` is given; without it, `'direct'` under `'mirror'` where the
   * directory's file system takes O_DIRECT (as for `directIo`), else `'buffered'`.
   * {@link Wal.io} tells which was chosen. `'off'` protects the tail by padding instead.
   */
  dwbMode?: DwbMode
  /**
   * Open segments with O_DIRECT. Default: O_DIRECT where the directory's file system
   * takes it and reports its alignment (Linux ≥ 6.1 with `statx`'s `STATX_DIOALIGN`:
   * ext4, XFS, …; not tmpfs, older kernels or other systems, which stay buffered — never
   * an error): a commit writes whole blocks either way, and with O_DIRECT an idle awaited
   * append can be committed through the kernel ({@link WalOptions.kernelCompletion}).
   * {@link Wal.io} tells which was chosen. With O_DIRECT the log's pages do not stay in
   * the page cache, so a replay reads from the device.
   */
  directIo?: boolean
  /** Size of a new segment file in bytes (preallocated); default 64 MiB, minimum 16 KiB. */
  segmentSize?: number
  /** Slots of the DWB when it is created (default 64). */
  dwbCapacity?: number
  /** Largest encoded record the DWB holds when it is created (default 65536); larger records are protected by padding their commit. */
  dwbMaxRecordSize?: number
  /** What to do when the DWB cannot be written; default `'strict'`. */
  protection?: Protection
  /** How the tail of the log is protected; default `'mirror'`. */
  tailProtection?: TailProtection
  /** Group commit merges queued appends up to this many payload bytes (default 16 MiB). */
  maxCommitBytes?: number
  /** Prepare the next segment file in the background so a segment roll never stalls a commit (default `true`). */
  prepareSegments?: boolean
  /**
   * While an append of this WAL awaits its commit, keep the event loop turning
   * (`setImmediate`) instead of letting it sleep, for at most 1 ms without an append or an
   * outcome, so the commit's completion is picked up at once rather than after the thread
   * wakes (33–55 µs per awaited commit on a VM whose idle vCPUs halt). It trades CPU for latency: the JS
   * thread stays busy while commits are in flight (a whole core for one writer awaiting
   * each append), though never blocked. Worth it on a server with a core to spare; not on
   * a laptop or in an Electron app. Default `false`.
   */
  busyPoll?: boolean
  /**
   * Let an awaited append whose WAL is idle commit on the JS thread, through the kernel:
   * one `O_DIRECT` write with `RWF_DSYNC` submitted by Linux AIO (under `'mirror'`, two
   * in one submission: its DWB copies and its WAL write, which the last flush's copies
   * already protect), whose completion the
   * kernel signals to a descriptor the event loop watches — the JS thread sleeps while
   * the device works and is woken once, by the kernel, instead of twice through the commit
   * thread. The JS thread does not wait for the device: the submission returns before the
   * write is durable (it costs the JS thread some µs: 20–36 µs of `io_submit` for an
   * `O_DIRECT` write on the development VM, more if the device's queue is full). Appends that find a commit in
   * flight, commits that roll a segment, and everything where AIO or libuv's poll handle is
   * unavailable (not Linux, a seccomp profile) take the commit thread as before; the log's
   * bytes are the same either way. Takes effect only where the segments are written with
   * O_DIRECT (`directIo`, or the default where the file system takes it) and, under
   * `'mirror'`, the DWB too; {@link Wal.io} tells whether it did.
   * Default `true`; `false` commits every append on the commit thread.
   */
  kernelCompletion?: boolean
  /**
   * Encrypt records at rest with AES-256-GCM. New records are sealed with `activeKeyId`;
   * records written under any key of `keys` stay readable (rotate by adding a key and
   * making it active). The DWB only ever holds ciphertext. Each open of an encrypted WAL
   * starts a new segment, so a nonce is never reused for a key. The key bytes are copied
   * into native memory at open (and wiped there when the WAL closes); this object is not
   * kept.
   */
  encryption?: EncryptionOptions
}

/** One AES-256 key of an {@link EncryptionOptions} key ring. */
export interface EncryptionKey {
  /** Key id, 1 to 65535; stored in every record it encrypts. */
  id: number
  /** Exactly 32 bytes. */
  key: Uint8Array
}

/** The key ring of an encrypted WAL. */
export interface EncryptionOptions {
  /** Every key the WAL may need to read its records; ids are unique. */
  keys: readonly EncryptionKey[]
  /** The id of the key new records are written with; must be among `keys`. */
  activeKeyId: number
}

/** Ids of a record; all default to zero. */
export interface AppendOptions {
  /** Tenant id (u64). */
  tenantId?: bigint
  /** Virtual shard id (u32). */
  vshardId?: number
  /** Database id (u64). */
  databaseId?: bigint
}

/** One record of {@link Wal.appendBatch}. */
export interface RecordInput extends AppendOptions {
  /** A `u32` record type without the reserved bits 14 and 31, e.g. {@link RecordType.Put}. */
  recordType: number
  /** The payload; copied before the call returns, at most {@link MAX_PAYLOAD_BYTES}. */
  payload: Uint8Array
}

/** What recovery found and did when the WAL was opened. */
export interface RecoveryReport {
  /** LSN of the oldest retained record (the next LSN when the log is empty). */
  readonly firstLsn: bigint
  /** LSN of the newest record; `0n` when the log is empty. */
  readonly lastLsn: bigint
  /** Records found. */
  readonly records: number
  /** Segment files. */
  readonly segments: number
  /** Damaged records restored from their DWB copy (and written back into the WAL). */
  readonly repairedFromDwb: number
  /** Bytes of a torn, never-acknowledged tail that were cut off. */
  readonly tornTailBytes: number
  /** Time the open and recovery took, in milliseconds. */
  readonly durationMs: number
}

/** Counters of an open WAL, since it was opened. All are bigints. */
export interface WalStats {
  readonly commits: bigint
  readonly records: bigint
  readonly walBytesWritten: bigint
  readonly dwbBytesWritten: bigint
  readonly walSyncs: bigint
  readonly dwbSyncs: bigint
  /** DWB syncs that ran alongside their commit's WAL sync rather than before its WAL write (`'mirror'`: all but a session's first commit and the rare one whose copies would land on the previous commit's; a commit padded to a block boundary while the last flush stands has no DWB sync). */
  readonly overlappedSyncs: bigint
  /** Commits the kernel completed on its own (`kernelCompletion`); each is also a WAL sync. */
  readonly durableCommits: bigint
  readonly paddingBytes: bigint
  readonly segmentRolls: bigint
  /** Records acknowledged while at risk without a DWB copy: `0n` unless the DWB failed under `'degraded'`. */
  readonly unprotectedRecords: bigint
}

/** How commits reach the disk ({@link Wal.io}). */
export interface IoStatus {
  /** Segments are written with O_DIRECT (`directIo`, or the default where the file system takes it). */
  readonly directIo: boolean
  /** An awaited append that finds the WAL idle commits on the JS thread through the kernel (`kernelCompletion`): needs O_DIRECT segments and, under `'mirror'`, an O_DIRECT DWB. */
  readonly kernelCompletion: boolean
  /** The DWB's mode as opened (`dwbMode`, or the default). */
  readonly dwbMode: DwbMode
}

/** The protection policy and its state. */
export interface ProtectionStatus {
  readonly policy: Protection
  readonly tailProtection: TailProtection
  readonly state: ProtectionState
  /** Records acknowledged while at risk without a DWB copy: `0n` unless the DWB failed under `'degraded'`. */
  readonly unprotectedRecords: bigint
}

/** Options of {@link Wal.replay} and {@link Wal.replaySync}. */
export interface ReplayOptions {
  /** First LSN to return; default: the oldest retained record. Below the oldest retained one: `ERR_INVALID_OPTIONS`. */
  fromLsn?: bigint
  /**
   * Record types the reader understands in addition to the built-in {@link RecordType}s.
   * A record of another type is skipped when optional and ends the replay with
   * `ERR_WAL_UNKNOWN_RECORD_TYPE` when required (bit 15 set).
   */
  knownTypes?: Iterable<number>
  /** Records read per native call (default 256). */
  batchSize?: number
}

/** What {@link walOptions} checked: the native side's options and the TS layer's own. */
interface CheckedWalOptions {
  native: native.WalOpenOptions
  busyPoll: boolean
}

function walOptions(options: unknown): CheckedWalOptions {
  const fields = checkOptions('options', options, false)
  const busyPoll = fields.busyPoll === undefined ? false : checkBoolean('options.busyPoll', fields.busyPoll)
  const out: native.WalOpenOptions = {}
  if (fields.dwbMode !== undefined) out.dwbMode = checkOneOf('options.dwbMode', fields.dwbMode, DWB_MODES)
  if (fields.directIo !== undefined) out.directIo = checkBoolean('options.directIo', fields.directIo)
  if (fields.segmentSize !== undefined) {
    out.segmentSize = checkInteger('options.segmentSize', fields.segmentSize, Number.MAX_SAFE_INTEGER)
  }
  if (fields.dwbCapacity !== undefined) out.dwbCapacity = checkInteger('options.dwbCapacity', fields.dwbCapacity, U32_MAX)
  if (fields.dwbMaxRecordSize !== undefined) {
    out.dwbMaxRecordSize = checkInteger('options.dwbMaxRecordSize', fields.dwbMaxRecordSize, U32_MAX)
  }
  if (fields.protection !== undefined) out.protection = checkOneOf('options.protection', fields.protection, PROTECTIONS)
  if (fields.tailProtection !== undefined) {
    out.tailProtection = checkOneOf('options.tailProtection', fields.tailProtection, TAIL_PROTECTIONS)
  }
  if (fields.maxCommitBytes !== undefined) {
    out.maxCommitBytes = checkInteger('options.maxCommitBytes', fields.maxCommitBytes, Number.MAX_SAFE_INTEGER)
  }
  if (fields.prepareSegments !== undefined) {
    out.prepareSegments = checkBoolean('options.prepareSegments', fields.prepareSegments)
  }
  if (fields.kernelCompletion !== undefined) {
    out.kernelCompletion = checkBoolean('options.kernelCompletion', fields.kernelCompletion)
    if (out.kernelCompletion && out.directIo === false) {
      throw codedError(
        'ERR_INVALID_ARG_VALUE',
        'The "options.kernelCompletion" argument needs O_DIRECT segments: leave out "options.directIo": false (the kernel completes O_DIRECT writes only)',
      )
    }
  }
  if (fields.encryption !== undefined) out.encryption = encryptionOptions(fields.encryption)
  return { native: out, busyPoll }
}

const KEY_BYTES = 32

/**
 * Checks a key ring. The key bytes are copied (the native side copies them again into
 * memory it wipes); {@link wipeKeys} zeroes these copies once the open call returned.
 */
function encryptionOptions(value: unknown): native.NativeEncryption {
  const fields = checkOptions('options.encryption', value, true)
  if (!Array.isArray(fields.keys)) throw invalidType('options.encryption.keys', 'an array', fields.keys)
  if (fields.keys.length === 0) throw invalidValue('options.encryption.keys', ['a non-empty array of keys'], fields.keys)
  const ids = new Set<number>()
  const keys = fields.keys.map((entry: unknown, i: number) => {
    const key = checkOptions(`options.encryption.keys[${i}]`, entry, true)
    const id = checkInteger(`options.encryption.keys[${i}].id`, key.id, 0xffff, 1)
    if (ids.has(id)) throw invalidValue(`options.encryption.keys[${i}].id`, ['an id not used by another key'], id)
    ids.add(id)
    const bytes = checkBytes(`options.encryption.keys[${i}].key`, key.key)
    if (bytes.length !== KEY_BYTES) {
      throw codedError(
        'ERR_INVALID_ARG_VALUE',
        `The "options.encryption.keys[${i}].key" argument must be exactly ${KEY_BYTES} bytes (an AES-256 key). Received ${bytes.length} bytes`,
      )
    }
    return { id, key: new Uint8Array(bytes) }
  })
  const activeKeyId = checkInteger('options.encryption.activeKeyId', fields.activeKeyId, 0xffff, 1)
  if (!ids.has(activeKeyId)) {
    throw codedError(
      'ERR_INVALID_ARG_VALUE',
      `The "options.encryption.activeKeyId" argument must be the id of one of the keys (${[...ids].join(', ')}). Received ${activeKeyId}`,
    )
  }
  return { keys, activeKeyId }
}

/** Zeroes the key copies made by {@link encryptionOptions}. */
function wipeKeys(options: native.WalOpenOptions): void {
  for (const entry of options.encryption?.keys ?? []) entry.key.fill(0)
}

/** One record of an append, checked; its payload is copied when it is staged. */
interface CheckedRecord {
  recordType: number
  payload: Uint8Array
  tenantId: bigint
  vshardId: number
  databaseId: bigint
}

function recordInput(name: string, recordType: unknown, payload: unknown, options: unknown): CheckedRecord {
  const ids = checkOptions(`${name}options`, options, false)
  const checkedType = checkInteger(`${name}recordType`, recordType, U32_MAX)
  const bytes = checkBytes(`${name}payload`, payload)
  return {
    recordType: checkedType,
    payload: bytes,
    tenantId: checkOptionalU64(`${name}tenantId`, ids.tenantId) ?? 0n,
    vshardId: checkOptionalInteger(`${name}vshardId`, ids.vshardId, U32_MAX) ?? 0,
    databaseId: checkOptionalU64(`${name}databaseId`, ids.databaseId) ?? 0n,
  }
}

// The packed form of appends (`unpack` in src/wal.rs): per job `[ticket, recordCount]`, then
// per record `[recordType, payloadLength, vshardId, flags]`; the payloads back to back.
const JOB_WORDS = 2
const RECORD_WORDS = 4
/** The record's tenant and database ids are in `ids` at twice its index in the call. */
const FLAG_IDS = 1
/** The payload is over {@link MAX_PAYLOAD_BYTES}: not copied, the core's error is reported. */
const FLAG_OVERSIZE = 2
/** Bit 31 of a ticket from `takeCompletions`: that job failed. */
const TICKET_FAILED = 0x8000_0000

/** Initial sizes of a WAL's staging buffers (they grow as a tick needs). */
const STAGE_WORDS = 1024
const STAGE_BYTES = 64 * 1024
/** A tick's appends are handed over at once, not at the end of the tick, beyond this. */
const STAGE_FLUSH_BYTES = 1 << 20
const STAGE_FLUSH_WORDS = 1 << 16

/**
 * The appends of one tick, packed for one native call: metadata words, the payloads
 * copied back to back (the caller may reuse its buffer once `append` returns), and the
 * ids when a record has any. The buffers are reused from tick to tick.
 */
class Staging {
  meta = new Uint32Array(STAGE_WORDS)
  words = 0
  bytes = new Uint8Array(STAGE_BYTES)
  used = 0
  ids: BigUint64Array | null = null
  hasIds = false
  records = 0
  jobs = 0

  /** Stages a job of one record without ids (the common append). */
  single(ticket: number, recordType: number, payload: Uint8Array): void {
    const length = payload.length
    let flags = 0
    if (length > MAX_PAYLOAD_BYTES) {
      flags = FLAG_OVERSIZE
    } else {
      if (this.used + length > this.bytes.length) this.#growBytes(length)
      this.bytes.set(payload, this.used)
      this.used += length
    }
    if (this.words + JOB_WORDS + RECORD_WORDS > this.meta.length) this.#growMeta(JOB_WORDS + RECORD_WORDS)
    const meta = this.meta
    const w = this.words
    meta[w] = ticket
    meta[w + 1] = 1
    meta[w + 2] = recordType
    meta[w + 3] = Math.min(length, U32_MAX)
    meta[w + 4] = 0
    meta[w + 5] = flags
    this.words = w + JOB_WORDS + RECORD_WORDS
    this.records += 1
    this.jobs += 1
  }

  /** Stages a job of any number of records; on failure (out of memory) stages nothing. */
  job(ticket: number, records: readonly CheckedRecord[]): void {
    const { words, used, records: count, hasIds } = this
    try {
      if (this.words + JOB_WORDS + records.length * RECORD_WORDS > this.meta.length) {
        this.#growMeta(JOB_WORDS + records.length * RECORD_WORDS)
      }
      this.meta[this.words] = ticket
      this.meta[this.words + 1] = records.length
      this.words += JOB_WORDS
      for (const record of records) this.#record(record)
      this.jobs += 1
    } catch (error) {
      this.words = words
      this.used = used
      this.records = count
      this.hasIds = hasIds
      throw error
    }
  }

  /** Whether the tick holds enough to hand over now. */
  get full(): boolean {
    return this.used >= STAGE_FLUSH_BYTES || this.words >= STAGE_FLUSH_WORDS
  }

  /** The staged payload bytes (a view: the native side copies exactly these). */
  packedBytes(): Uint8Array {
    return this.bytes.subarray(0, this.used)
  }

  /** The tickets of the staged jobs. */
  tickets(): number[] {
    const out: number[] = []
    for (let w = 0; w < this.words; w += JOB_WORDS + (this.meta[w + 1] ?? 0) * RECORD_WORDS) out.push(this.meta[w] ?? 0)
    return out
  }

  /** Empties the tick, dropping buffers a large job grew far past their usual size. */
  reset(): void {
    this.words = 0
    this.used = 0
    this.records = 0
    this.jobs = 0
    this.hasIds = false
    if (this.bytes.length > 2 * STAGE_FLUSH_BYTES) this.bytes = new Uint8Array(STAGE_BYTES)
    if (this.meta.length > 2 * STAGE_FLUSH_WORDS) this.meta = new Uint32Array(STAGE_WORDS)
    if (this.ids !== null && this.ids.length > STAGE_FLUSH_WORDS) this.ids = null
  }

  #record(record: CheckedRecord): void {
    const { payload, tenantId, databaseId } = record
    const length = payload.length
    let flags = 0
    if (tenantId !== 0n || databaseId !== 0n) {
      const at = 2 * this.records
      if (this.ids === null || at + 2 > this.ids.length) this.#growIds(at + 2)
      const ids = this.ids as BigUint64Array
      ids[at] = tenantId
      ids[at + 1] = databaseId
      this.hasIds = true
      flags = FLAG_IDS
    }
    if (length > MAX_PAYLOAD_BYTES) {
      flags |= FLAG_OVERSIZE
    } else {
      if (this.used + length > this.bytes.length) this.#growBytes(length)
      this.bytes.set(payload, this.used)
      this.used += length
    }
    const w = this.words
    this.meta[w] = record.recordType
    this.meta[w + 1] = Math.min(length, U32_MAX)
    this.meta[w + 2] = record.vshardId
    this.meta[w + 3] = flags
    this.words = w + RECORD_WORDS
    this.records += 1
  }

  #growBytes(more: number): void {
    const next = new Uint8Array(Math.max(2 * this.bytes.length, this.used + more))
    next.set(this.bytes.subarray(0, this.used))
    this.bytes = next
  }

  #growMeta(more: number): void {
    const next = new Uint32Array(Math.max(2 * this.meta.length, this.words + more))
    next.set(this.meta.subarray(0, this.words))
    this.meta = next
  }

  #growIds(needed: number): void {
    const next = new BigUint64Array(Math.max(2 * (this.ids?.length ?? 0), needed, 64))
    if (this.ids !== null) next.set(this.ids)
    this.ids = next
  }
}

/** Outcomes settled per macrotask (see `Inflight.#outcomes`). */
const SETTLE_CHUNK = 64
/** Under `busyPoll`, the event loop stops turning after this long without an append or an outcome. */
const BUSY_POLL_MS = 1

/** One `takeCompletions` answer and how far it has been settled. */
interface TakenOutcomes {
  tickets: Uint32Array
  lsns: BigUint64Array
  errors: string[] | null
  /** Index of the next outcome to settle. */
  next: number
  /** Failed outcomes settled so far (the index of the next message in `errors`). */
  failures: number
}

type Resolve = (firstLsn: bigint) => void
type Reject = (error: unknown) => void

/**
 * The appends of one WAL that wait for the commit thread, in slots indexed by ticket (a
 * free list reuses them). The native side reports each ticket once, in batches taken when
 * its threadsafe function calls {@link complete}; that function does not keep the event
 * loop alive, so this does (a ref'd timer) exactly while a ticket is outstanding. Under
 * `busyPoll` it also keeps the loop from sleeping while a ticket is outstanding and the
 * last append or outcome came less than {@link BUSY_POLL_MS} ago (a chain of
 * `setImmediate` callbacks).
 */
class Inflight {
  readonly #resolvers: Array<Resolve | undefined> = []
  readonly #rejecters: Array<Reject | undefined> = []
  readonly #free: number[] = []
  #size = 0
  /** The ticket {@link add} handed out last. */
  ticket = 0
  #idle: Array<() => void> = []
  readonly #keepAlive: ReturnType<typeof setInterval>
  #handle: native.NativeWal | undefined
  readonly #busyPoll: boolean
  /** Whether a `setImmediate` of {@link #spin} is pending. */
  #spinning = false
  /** `performance.now()` of the last append or outcome while busy-polling. */
  #progressAt = 0

  constructor(busyPoll: boolean) {
    this.#busyPoll = busyPoll
    this.#keepAlive = setInterval(() => {}, 0x3fff_ffff)
    this.#keepAlive.unref()
  }

  /** The handle whose outcomes {@link complete} takes; set once open returned it. */
  attach(handle: native.NativeWal): void {
    this.#handle = handle
  }

  get size(): number {
    return this.#size
  }

  /** Fills the slot of {@link ticket}: one function for every promise, no closure each. */
  readonly #executor = (resolve: Resolve, reject: Reject): void => {
    this.#resolvers[this.ticket] = resolve
    this.#rejecters[this.ticket] = reject
  }

  /** Takes a ticket (then in {@link ticket}) and returns the promise its outcome settles. */
  add(): Promise<bigint> {
    this.ticket = this.#free.length > 0 ? (this.#free.pop() as number) : this.#resolvers.length
    const promise = new Promise<bigint>(this.#executor)
    if (this.#size === 0) this.#keepAlive.ref()
    this.#size += 1
    if (this.#busyPoll) {
      // A new append is progress too: JS work longer than the limit between two appends
      // must not end the spin just as the next commit starts.
      this.#progressAt = performance.now()
      if (!this.#spinning) {
        this.#spinning = true
        setImmediate(this.#spin)
      }
    }
    return promise
  }

  /**
   * One turn of the busy poll: while it is pending, libuv polls for events without
   * sleeping, so the completion's wake-up finds the JS thread running.
   */
  readonly #spin = (): void => {
    if (this.#size > 0 && performance.now() - this.#progressAt < BUSY_POLL_MS) setImmediate(this.#spin)
    else this.#spinning = false
  }

  /** Called by the binding when outcomes wait; takes them all. Must never throw. */
  readonly complete = (): void => {
    // With a later turn already scheduled, that turn settles these too, in order.
    if (this.#take() && !this.#settleScheduled) this.#settle(SETTLE_CHUNK)
  }

  /**
   * Settles every outcome the commit thread has reported so far, at once. A unit of work
   * reports its appends before anything that follows it (a sync): calling this when such
   * a later call returns resolves the earlier appends first.
   */
  settleReported(): void {
    this.#take()
    this.#settle(Number.POSITIVE_INFINITY)
  }

  /** Moves the outcomes waiting in the binding to {@link #outcomes}; whether there were any. */
  #take(): boolean {
    const taken = this.#handle?.takeCompletions() ?? null
    if (taken === null) return false
    const [tickets, lsns, errors] = taken
    this.#outcomes.push({ tickets, lsns, errors, next: 0, failures: 0 })
    return true
  }

  /**
   * Outcomes taken but not yet settled, oldest first. They are settled at most
   * {@link SETTLE_CHUNK} per macrotask: every resolved caller's continuation (often its
   * next append) runs in the microtask checkpoint after the chunk, so an unbounded chunk
   * would hold the event loop for the whole group commit (256 appenders re-appending 4 KiB
   * each: ~1.5 ms).
   */
  readonly #outcomes: TakenOutcomes[] = []

  #settle(limit: number): void {
    const resolvers = this.#resolvers
    const rejecters = this.#rejecters
    let budget = limit
    let settled = 0
    while (budget > 0 && this.#outcomes.length > 0) {
      const batch = this.#outcomes[0] as TakenOutcomes
      const { tickets, lsns, errors } = batch
      const end = Math.min(tickets.length, batch.next + budget)
      for (let i = batch.next; i < end; i++) {
        const word = tickets[i] as number
        const failed = word >= TICKET_FAILED
        const slot = failed ? word - TICKET_FAILED : word
        const message = failed ? errors?.[batch.failures++] : undefined
        const resolve = resolvers[slot]
        const reject = rejecters[slot]
        if (resolve === undefined || reject === undefined) continue
        resolvers[slot] = undefined
        rejecters[slot] = undefined
        this.#free.push(slot)
        settled += 1
        if (failed) reject(fromNative(new Error(message ?? '[ERR_IO] the commit thread reported no outcome')))
        else resolve(lsns[i] as bigint)
      }
      budget -= end - batch.next
      batch.next = end
      if (end === tickets.length) this.#outcomes.shift()
    }
    if (this.#outcomes.length > 0 && !this.#settleScheduled) {
      this.#settleScheduled = true
      setImmediate(this.#settleLater)
    }
    this.#settled(settled)
  }

  #settleScheduled = false
  readonly #settleLater = (): void => {
    this.#settleScheduled = false
    this.#settle(SETTLE_CHUNK)
  }

  fail(ticket: number, error: unknown): void {
    const reject = this.#rejecters[ticket]
    if (reject === undefined) return
    this.#resolvers[ticket] = undefined
    this.#rejecters[ticket] = undefined
    this.#free.push(ticket)
    reject(error)
    this.#settled(1)
  }

  failAll(makeError: () => unknown): void {
    for (let ticket = 0; ticket < this.#rejecters.length; ticket++) {
      if (this.#rejecters[ticket] !== undefined) this.fail(ticket, makeError())
    }
  }

  whenIdle(): Promise<void> {
    if (this.#size === 0) return Promise.resolve()
    return new Promise((resolve) => this.#idle.push(resolve))
  }

  dispose(): void {
    clearInterval(this.#keepAlive)
  }

  #settled(count: number): void {
    if (this.#spinning && count > 0) this.#progressAt = performance.now()
    this.#size -= count
    if (count === 0 || this.#size !== 0) return
    this.#keepAlive.unref()
    const idle = this.#idle
    this.#idle = []
    for (const resolve of idle) resolve()
  }
}

/**
 * A write-ahead log protected by a double-write buffer, in a directory of segment files
 * (`wal-<first LSN, 20 digits>.seg`), its DWB (`wal.dwb`) and a lock file.
 *
 * Appends are group-committed: every append made while a commit is in flight joins the
 * next one, which makes the DWB copies of the at-risk records durable first, then the WAL
 * bytes, then resolves each caller with its own LSN. A failed commit rejects every caller
 * in it; no caller is ever told "durable" for a record that was not synced.
 *
 * Appends never block the JS thread nor hold a libuv pool thread: the commit runs on the
 * WAL's own thread. Opening, syncing, truncating, replaying and closing run on the libuv
 * pool; each has a `*Sync` twin that blocks the JS thread until it is done.
 *
 * After {@link close}, every method and getter throws (or rejects with) `ERR_WAL_CLOSED`.
 */
export class Wal {
  readonly #handle: native.NativeWal
  readonly #inflight: Inflight
  /** Appends of the current tick, handed to the commit thread together in a microtask. */
  readonly #staging = new Staging()
  #closing: Promise<void> | undefined

  private constructor(handle: native.NativeWal, inflight: Inflight) {
    this.#handle = handle
    this.#inflight = inflight
    inflight.attach(handle)
  }

  /**
   * Opens (creating it if needed) and recovers the WAL in `dir`, on the libuv pool.
   * Recovery restores damaged records from their DWB copies and writes them back, cuts off
   * a torn tail that was never acknowledged, and fails rather than drop acknowledged data.
   *
   * @throws {TypeError} `ERR_INVALID_ARG_TYPE` for a wrong argument type.
   * @throws {RangeError} `ERR_INVALID_ARG_VALUE` for an unknown `dwbMode`, `protection` or
   *   `tailProtection`, or `kernelCompletion: true` without O_DIRECT segments; `ERR_OUT_OF_RANGE` for a
   *   negative or fractional size.
   * @throws {Error} `ERR_LOCKED` when another handle holds the directory (in this process,
   *   a worker thread or another process); `ERR_WAL_CORRUPT` when acknowledged records
   *   cannot be recovered (nothing is changed then); `ERR_INVALID_OPTIONS`;
   *   `ERR_DIRECT_IO_UNSUPPORTED`; `ERR_DWB_GEOMETRY`; `ERR_DWB_UNAVAILABLE`; `ERR_IO`.
   */
  static async open(dir: string | URL, options?: WalOptions): Promise<Wal> {
    const checkedDir = checkPath('dir', dir)
    const checked = walOptions(options)
    const inflight = new Inflight(checked.busyPoll)
    try {
      const handle = await callAsync(() => native.NativeWal.open(checkedDir, checked.native, inflight.complete))
      if (checked.native.kernelCompletion !== false) call(() => handle.watchKernelCompletions(inflight.complete))
      return new Wal(handle, inflight)
    } catch (error) {
      inflight.dispose()
      throw error
    } finally {
      wipeKeys(checked.native)
    }
  }

  /** {@link open} on the JS thread. Same errors. */
  static openSync(dir: string | URL, options?: WalOptions): Wal {
    const checkedDir = checkPath('dir', dir)
    const checked = walOptions(options)
    const inflight = new Inflight(checked.busyPoll)
    try {
      const handle = call(() => native.NativeWal.openSync(checkedDir, checked.native, inflight.complete))
      if (checked.native.kernelCompletion !== false) call(() => handle.watchKernelCompletions(inflight.complete))
      return new Wal(handle, inflight)
    } catch (error) {
      inflight.dispose()
      throw error
    } finally {
      wipeKeys(checked.native)
    }
  }

  /**
   * Appends one record. Resolves with its LSN once it is durable (its commit's WAL sync
   * returned success); rejects if its commit failed. The payload is copied before this
   * returns.
   *
   * @throws {TypeError} `ERR_INVALID_ARG_TYPE` when `payload` is not a Uint8Array, an id
   *   has the wrong type. (Rejections, like every error of this method.)
   * @throws {RangeError} `ERR_OUT_OF_RANGE` for a `recordType` or id out of range.
   * @throws {Error} `ERR_RECORD_TYPE` (reserved bit), `ERR_RECORD_TOO_LARGE`,
   *   `ERR_WAL_CLOSED`, `ERR_WAL_POISONED`, `ERR_NO_SPACE` (no LSN consumed),
   *   `ERR_DWB_UNAVAILABLE`, `ERR_IO`.
   */
  append(recordType: number, payload: Uint8Array, options?: AppendOptions): Promise<bigint> {
    // The common case without ids, checked inline; anything else takes the full checks.
    if (options === undefined && typeof recordType === 'number' && recordType >>> 0 === recordType && payload instanceof Uint8Array) {
      const promise = this.#inflight.add()
      const ticket = this.#inflight.ticket
      try {
        this.#staging.single(ticket, recordType, payload)
      } catch (error) {
        this.#inflight.fail(ticket, error)
        return promise
      }
      this.#staged()
      return promise
    }
    let input: CheckedRecord
    try {
      input = recordInput('', recordType, payload, options)
    } catch (error) {
      return Promise.reject(error)
    }
    return this.#stage([input])
  }

  /**
   * Appends the records as one commit with consecutive LSNs; resolves with them, in
   * order, once all are durable. Same errors as {@link append}.
   */
  async appendBatch(records: readonly RecordInput[]): Promise<bigint[]> {
    const inputs = batchInputs(records)
    let first: bigint
    try {
      first = await this.#stage(inputs)
    } catch (error) {
      throw fromNativeAsync(error)
    }
    return inputs.map((_, i) => first + BigInt(i))
  }

  /**
   * {@link append} that blocks the JS thread until the record is durable. When no append is
   * staged, queued or committing, the commit (write and fdatasync) runs on the JS thread
   * itself, as better-sqlite3's does, with no hand-off to the commit thread and back;
   * otherwise it waits behind that work, so LSNs follow the order of the calls.
   */
  appendSync(recordType: number, payload: Uint8Array, options?: AppendOptions): bigint {
    return this.#appendNow([recordInput('', recordType, payload, options)])
  }

  /** {@link appendBatch} that blocks the JS thread; commits like {@link appendSync}. */
  appendBatchSync(records: readonly RecordInput[]): bigint[] {
    const inputs = batchInputs(records)
    const first = this.#appendNow(inputs)
    return inputs.map((_, i) => first + BigInt(i))
  }

  /**
   * Resolves once every append made before it is durable (every commit is synced before
   * it is acknowledged, so this is a barrier). Rejects with `ERR_WAL_POISONED` after a
   * failed sync.
   */
  async sync(): Promise<void> {
    this.#submitStaged()
    await callAsync(() => this.#handle.sync())
    this.#inflight.settleReported()
  }

  /** {@link sync} on the JS thread. */
  syncSync(): void {
    this.#submitStaged()
    call(() => this.#handle.syncSync())
  }

  /**
   * Checkpoint: removes the whole segments (and their DWB copies) that hold only records
   * below `lsn`, then syncs the directory. Resolves with the number of segments removed.
   *
   * @throws {TypeError} `ERR_INVALID_ARG_TYPE` when `lsn` is not a bigint.
   * @throws {RangeError} `ERR_OUT_OF_RANGE` when `lsn` is negative or above 2n ** 64n - 1n.
   */
  async truncateBefore(lsn: bigint): Promise<number> {
    const checked = checkU64('lsn', lsn)
    this.#submitStaged()
    return callAsync(() => this.#handle.truncateBefore(checked))
  }

  /** {@link truncateBefore} on the JS thread. */
  truncateBeforeSync(lsn: bigint): number {
    const checked = checkU64('lsn', lsn)
    this.#submitStaged()
    return call(() => this.#handle.truncateBeforeSync(checked))
  }

  /**
   * The durable records, in LSN order, from `fromLsn` to the newest acknowledged when
   * this is called; read off the JS thread in batches. Arguments are checked (and the
   * snapshot taken) when this is called; read errors reject the iteration. An open WAL
   * hands the page cache back its synced pages as it goes (all but the last 256 KiB or
   * so; none with `directIo`), so a replay of a running log reads from the device.
   *
   * @throws {TypeError} `ERR_INVALID_ARG_TYPE` when `fromLsn` is not a bigint.
   * @throws {RangeError} `ERR_OUT_OF_RANGE` when `fromLsn` or a type is out of range.
   * @throws {Error} `ERR_INVALID_OPTIONS` when `fromLsn` is below the oldest retained
   *   record. The iteration rejects with `ERR_WAL_UNKNOWN_RECORD_TYPE` at an unknown
   *   required type and `ERR_WAL_CORRUPT` if the files changed underneath.
   */
  replay(options?: ReplayOptions): AsyncGenerator<WalRecord, void, undefined> {
    const { reader, batchSize } = this.#openReplay(options)
    return replayAsync(reader, batchSize)
  }

  /** {@link replay} on the JS thread: a synchronous iterator. */
  replaySync(options?: ReplayOptions): Generator<WalRecord, void, undefined> {
    const { reader, batchSize } = this.#openReplay(options)
    return replaySync(reader, batchSize)
  }

  /** What recovery found and did when this WAL was opened. */
  get recovery(): RecoveryReport {
    return call(() => this.#handle.recovery)
  }

  /** Counters since open (bigints). */
  get stats(): WalStats {
    return call(() => this.#handle.stats)
  }

  /** How commits reach the disk, as decided at open (see {@link WalOptions.directIo}). */
  get io(): IoStatus {
    const status = call(() => this.#handle.io)
    return { ...status, dwbMode: status.dwbMode as DwbMode }
  }

  /** The protection policy and its current state. */
  get protection(): ProtectionStatus {
    const status = call(() => this.#handle.protection)
    return {
      policy: status.policy as Protection,
      tailProtection: status.tailProtection as TailProtection,
      state: status.state as ProtectionState,
      unprotectedRecords: status.unprotectedRecords,
    }
  }

  /** LSN of the newest durable record (`0n` when the log is empty). */
  get lastLsn(): bigint {
    return call(() => this.#handle.lastLsn)
  }

  /** LSN the next record will get once everything queued has committed. */
  get nextLsn(): bigint {
    return call(() => this.#handle.nextLsn)
  }

  /** The WAL directory. */
  get dir(): string {
    return call(() => this.#handle.dir)
  }

  /** Whether {@link close} has not been called. */
  isOpen(): boolean {
    return this.#closing === undefined && this.#handle.isOpen()
  }

  /**
   * Closes the WAL: appends already made complete (resolve or reject; they never hang),
   * then the commit thread stops and the directory lock is released. Appends made after
   * this call reject with `ERR_WAL_CLOSED`. Idempotent: every call returns the same promise.
   */
  close(): Promise<void> {
    if (this.#closing === undefined) {
      this.#submitStaged()
      this.#closing = this.#close()
    }
    return this.#closing
  }

  /** {@link close} on the JS thread (it waits for queued commits there). */
  closeSync(): void {
    if (this.#closing !== undefined) return
    this.#submitStaged()
    try {
      call(() => this.#handle.closeSync())
      this.#closing = this.#inflight.whenIdle().finally(() => this.#inflight.dispose())
    } catch (error) {
      this.#closing = Promise.resolve()
      this.#abandonInflight(error)
      throw error
    }
  }

  /** {@link close}, for `await using`. */
  async [asyncDisposeSymbol](): Promise<void> {
    await this.close()
  }

  /** {@link closeSync}, for `using`. */
  [disposeSymbol](): void {
    this.closeSync()
  }

  async #close(): Promise<void> {
    try {
      await callAsync(() => this.#handle.close())
    } catch (error) {
      // The commit thread died: outcomes it did not report will never come.
      this.#abandonInflight(error)
      throw error
    }
    // Every outcome was handed to the event loop before the native close returned.
    await this.#inflight.whenIdle()
    this.#inflight.dispose()
  }

  #abandonInflight(error: unknown): void {
    const message = error instanceof Error ? error.message : String(error)
    this.#inflight.failAll(() =>
      codedError('ERR_WAL_POISONED', `the WAL closed with an error before this append was acknowledged: ${message}`),
    )
    this.#inflight.dispose()
  }

  /** Stages the records of one caller; its promise settles with the first LSN. */
  #stage(records: readonly CheckedRecord[]): Promise<bigint> {
    const promise = this.#inflight.add()
    const ticket = this.#inflight.ticket
    try {
      this.#staging.job(ticket, records)
    } catch (error) {
      this.#inflight.fail(ticket, error)
      return promise
    }
    this.#staged()
    return promise
  }

  /** After a job was staged: hand the tick over in a microtask, or now if it is large. */
  #staged(): void {
    const staging = this.#staging
    if (staging.full) this.#submitStaged()
    else if (staging.jobs === 1) queueMicrotask(this.#submitStaged)
  }

  /** Hands the appends of this tick to the commit thread in one native call. */
  readonly #submitStaged = (): void => {
    const staging = this.#staging
    if (staging.jobs === 0) return
    try {
      this.#handle.submitPacked(staging.meta, staging.words, staging.packedBytes(), staging.hasIds ? staging.ids : null)
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error)
      for (const ticket of staging.tickets()) this.#inflight.fail(ticket, fromNative(new Error(message)))
    } finally {
      staging.reset()
    }
  }

  /** Appends one caller's records as one commit on the JS thread, after the staged ones. */
  #appendNow(records: readonly CheckedRecord[]): bigint {
    this.#submitStaged()
    const staging = this.#staging
    try {
      staging.job(0, records)
      return call(() => this.#handle.appendPackedSync(staging.meta, staging.words, staging.packedBytes(), staging.hasIds ? staging.ids : null))
    } finally {
      staging.reset()
    }
  }

  #openReplay(options: unknown): { reader: native.NativeReplay; batchSize: number } {
    const fields = checkOptions('options', options, false)
    const fromLsn = fields.fromLsn === undefined ? 0n : checkU64('options.fromLsn', fields.fromLsn)
    let knownTypes: number[] | undefined
    if (fields.knownTypes !== undefined) {
      const types = fields.knownTypes
      if (typeof types !== 'object' || types === null || !(Symbol.iterator in types)) {
        throw invalidType('options.knownTypes', 'an iterable of numbers', types)
      }
      knownTypes = [...(types as Iterable<unknown>)].map((t) => checkInteger('options.knownTypes[]', t, U32_MAX))
    }
    const batchSize = checkOptionalInteger('options.batchSize', fields.batchSize, 1 << 20, 1) ?? 256
    this.#submitStaged()
    const reader = call(() => this.#handle.replay(fromLsn, knownTypes))
    return { reader, batchSize }
  }
}

function batchInputs(records: unknown): CheckedRecord[] {
  if (!Array.isArray(records)) throw invalidType('records', 'an array of records', records)
  const out: CheckedRecord[] = new Array(records.length)
  for (let i = 0; i < records.length; i++) {
    const record: unknown = records[i]
    if (typeof record !== 'object' || record === null || Array.isArray(record)) {
      throw invalidType(`records[${i}]`, 'of type object', record)
    }
    // Each field is read once (a getter runs once), in the order the checks take them.
    const { recordType, payload, tenantId, vshardId, databaseId } = record as Record<string, unknown>
    // The common record (a u32 type, a Uint8Array payload, no ids) is checked inline,
    // without building the names the full checks put in their errors.
    if (
      typeof recordType === 'number' &&
      recordType >>> 0 === recordType &&
      payload instanceof Uint8Array &&
      tenantId === undefined &&
      vshardId === undefined &&
      databaseId === undefined
    ) {
      out[i] = { recordType, payload, tenantId: 0n, vshardId: 0, databaseId: 0n }
    } else {
      out[i] = recordInput(`records[${i}].`, recordType, payload, { tenantId, vshardId, databaseId })
    }
  }
  return out
}

/** Payload bytes per native replay batch (besides the record count). */
const REPLAY_BATCH_BYTES = 4 << 20

async function* replayAsync(reader: native.NativeReplay, batchSize: number): AsyncGenerator<WalRecord, void, undefined> {
  try {
    for (;;) {
      const batch = await callAsync(() => reader.nextBatch(batchSize, REPLAY_BATCH_BYTES))
      if (batch.length === 0) return
      for (const handle of batch) yield wrapRecord(handle)
    }
  } finally {
    reader.close()
  }
}

function* replaySync(reader: native.NativeReplay, batchSize: number): Generator<WalRecord, void, undefined> {
  try {
    for (;;) {
      const batch = call(() => reader.nextBatchSync(batchSize, REPLAY_BATCH_BYTES))
      if (batch.length === 0) return
      for (const handle of batch) yield wrapRecord(handle)
    }
  } finally {
    reader.close()
  }
}
