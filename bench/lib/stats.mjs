// Small statistics helpers shared by the cell runner, the orchestrator and the chart.

/** Nearest-rank percentile (p in 0..100) of an ascending array; NaN when empty. */
export function percentileSorted(sorted, p) {
  if (sorted.length === 0) return Number.NaN
  const rank = Math.ceil((p / 100) * sorted.length)
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]
}

/**
 * Latency samples recorded during a timed window, in fixed-size Float64Array chunks: a
 * plain array of ~500,000 numbers would grow (allocate and copy) on the JS thread and add
 * old-generation GC work to the very event loop whose delay the window measures (measured:
 * it doubled the share of 1 ms timer ticks late by over 1 ms at 4 KiB x 256 appenders).
 */
export class LatencyLog {
  static CHUNK = 1 << 16
  #chunks = [new Float64Array(LatencyLog.CHUNK)]
  #used = 0

  push(value) {
    if (this.#used === LatencyLog.CHUNK) {
      this.#chunks.push(new Float64Array(LatencyLog.CHUNK))
      this.#used = 0
    }
    this.#chunks[this.#chunks.length - 1][this.#used++] = value
  }

  /** Every sample, in recording order. */
  values() {
    const full = this.#chunks.length - 1
    const out = new Float64Array(full * LatencyLog.CHUNK + this.#used)
    for (let i = 0; i < full; i++) out.set(this.#chunks[i], i * LatencyLog.CHUNK)
    out.set(this.#chunks[full].subarray(0, this.#used), full * LatencyLog.CHUNK)
    return out
  }
}

/** p50 / p99 / max of latency samples (any unit; returned in the same unit). */
export function latencySummary(samples) {
  const sorted = Float64Array.from(samples).sort()
  return {
    n: sorted.length,
    p50: percentileSorted(sorted, 50),
    p99: percentileSorted(sorted, 99),
    max: sorted.length ? sorted[sorted.length - 1] : Number.NaN,
  }
}

/** Median of the finite numbers in `values` (the mean of the middle two for an even count); null if none. */
export function median(values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b)
  if (v.length === 0) return null
  const mid = v.length >> 1
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2
}

/** (max − min) / median of the finite numbers in `values`; null with fewer than two. */
export function spread(values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x))
  if (v.length < 2) return null
  const m = median(v)
  if (!m) return null
  return (Math.max(...v) - Math.min(...v)) / m
}

export function min(values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x))
  return v.length ? Math.min(...v) : null
}

export function max(values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x))
  return v.length ? Math.max(...v) : null
}
