// How long an I/O event waits for the JS thread: what a request arriving at a server would
// see. A child process writes its CLOCK_MONOTONIC time to a pipe about every millisecond;
// the 'data' callback records, for each message, the time from its write to the callback.
//
// monitorEventLoopDelay cannot show this by itself: libuv's loop clock counts whole
// milliseconds, so an event loop that woke for other work within the millisecond before
// the monitor's timer is due goes back to sleep with a 1 ms timeout and fires the timer up
// to ~1 ms late while the thread sits idle in epoll_wait (docs/PERFORMANCE.md §6). An event
// that arrives wakes the loop at once; its wait is the JS thread's real availability.

import { spawn } from 'node:child_process'

import { LatencyLog, latencySummary } from './stats.mjs'

// The sender writes only between a 'g' and an 's' on its stdin: outside the probe's half of
// a window it neither wakes the measured event loop nor takes CPU.
const SENDER = `
const b = Buffer.alloc(8)
let timer = null
const send = () => { b.writeBigUInt64LE(process.hrtime.bigint()); process.stdout.write(b) }
process.stdin.on('data', (d) => {
  for (const c of d) {
    if (c === 0x67 && timer === null) timer = setInterval(send, 1)
    if (c === 0x73 && timer !== null) { clearInterval(timer); timer = null }
  }
})
process.stdin.on('end', () => process.exit(0))`

/** Starts the sender (before the warm-up: spawning costs the JS thread milliseconds). */
export function startIoProbe() {
  const child = spawn(process.execPath, ['-e', SENDER], { stdio: ['pipe', 'pipe', 'ignore'] })
  const waits = new LatencyLog()
  let recording = false
  let rest = Buffer.alloc(0)
  child.stdout.on('data', (chunk) => {
    const t = process.hrtime.bigint()
    const buf = rest.length > 0 ? Buffer.concat([rest, chunk]) : chunk
    let i = 0
    for (; i + 8 <= buf.length; i += 8) if (recording) waits.push(Number(t - buf.readBigUInt64LE(i)) / 1e6)
    rest = buf.subarray(i)
  })
  child.on('error', () => {})
  return {
    /** Starts the sender and records the waits. */
    start() {
      child.stdin.write('g')
      recording = true
    },
    /** Stops recording; p99 and max of the waits in ms (null if none). */
    stop() {
      child.stdin.write('s')
      recording = false
      const { n, p99, max } = latencySummary(waits.values())
      return { ioWaitP99Ms: n ? p99 : null, ioWaitMaxMs: n ? max : null, ioWaitSamples: n }
    },
    /** Ends the sender. */
    close() {
      child.stdin.end()
      child.stdout.destroy()
    },
  }
}
