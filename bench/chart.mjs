#!/usr/bin/env node
// Draws the headline chart of the benchmark from its JSON, as plain SVG (no dependencies):
//   node bench/chart.mjs [results.json] [--out docs/performance.svg] [--title TEXT]
// One panel per workload (rows) and record size (columns): durable records/s of every
// contestant, the bar at the median over the reps and a whisker from the slowest to the
// fastest rep. W1 panels also mark the device limit measured in the same run (one file,
// and the two-file cycle a DWB commit needs), since one record is one commit there.

import { readFileSync, writeFileSync, mkdirSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))

const args = process.argv.slice(2)
let input = path.join(here, 'results', 'latest.json')
let out = path.join(here, '..', 'docs', 'performance.svg')
let title = null
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--out') out = path.resolve(args[++i])
  else if (args[i] === '--title') title = args[++i]
  else input = path.resolve(args[i])
}

const data = JSON.parse(readFileSync(input, 'utf8'))
const summaries = data.summaries.filter((s) => s.runs > 0)

const WORKLOADS = [
  ['W1', 'W1: one writer, each append awaited (1 record = 1 commit)'],
  ['W2', 'W2: batches of 64 records per commit'],
  ['W3-64', 'W3: 64 concurrent appenders (group commit)'],
  ['W3-256', 'W3: 256 concurrent appenders (group commit)'],
]
const ORDER = [
  'dw-mirror', // the defaults since 2026-11-24 (before, 'dw-buffered-mirror' measured them)
  'dw-buffered-mirror',
  'dw-direct-mirror',
  'dw-pad',
  'dw-buffered-pad',
  'dw-off',
  'dw-directio',
  'dw-kernel', // in JSON files before 2026-11-24 only ('dw-pad' measures that path since)
  'dw-encrypted',
  'dw-pad-sync',
  'dw-mirror-sync',
  'dw-pad-busy',
  'dw-mirror-busy',
  'js-wal',
  'js-dwb',
  'sqlite-wal-full',
  'lmdb',
  'classic-level-sync',
]
const COLOR = (id) =>
  id.startsWith('dw-') && id.includes('@')
    ? id.endsWith(`@${LAST_LABEL}`)
      ? '#1f5fbf'
      : '#9db8e3'
    : id.startsWith('dw-') ? (id === 'dw-mirror' ? '#1f5fbf' : '#5b8fd9') : id.startsWith('js-') ? '#e08a2c' : '#7a7a7a'

const LAST_LABEL = data.machine?.packages?.at(-1)?.label ?? null
const sizes = [...new Set(summaries.filter((s) => /^W/.test(s.workload)).map((s) => s.size))].sort((a, b) => a - b)
const rows = WORKLOADS.filter(([w]) => summaries.some((s) => s.workload === w))

const PANEL_W = 560
const LABEL_W = 150
const BAR_H = 15
const BAR_GAP = 5
const PANEL_PAD_TOP = 56
const PANEL_PAD_BOTTOM = 34
const MARGIN = 20
const HEADER_H = 92

const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')

function short(v) {
  if (!Number.isFinite(v)) return '–'
  if (v >= 1e6) return `${(v / 1e6).toFixed(v >= 1e7 ? 0 : 1)}M`
  if (v >= 1e3) return `${(v / 1e3).toFixed(v >= 1e4 ? 0 : 1)}k`
  return v.toFixed(0)
}

function niceStep(max) {
  const raw = max / 5
  const p = 10 ** Math.floor(Math.log10(raw))
  for (const m of [1, 2, 2.5, 5, 10]) if (raw <= m * p) return m * p
  return 10 * p
}

function panel(x0, y0, workload, label, size) {
  // Contestants in a fixed order; builds compared in one run (`dw-…@label`) side by side.
  const rank = (c) => {
    const i = ORDER.indexOf(c.contestant.replace(/@.*$/, ''))
    return i < 0 ? ORDER.length : i
  }
  const cells = summaries
    .filter((s) => s.workload === workload && s.size === size && !s.id.startsWith('device'))
    .sort((a, b) => rank(a) - rank(b) || (a.contestant < b.contestant ? -1 : 1))
  const limits =
    workload === 'W1'
      ? ['device-1file', 'device-2file']
          .map((id) => summaries.find((s) => s.id === id))
          .filter(Boolean)
          .map((s) => ({ id: s.id, v: s.recordsPerSec }))
      : []
  const maxV = Math.max(1, ...cells.map((c) => c.recordsPerSecMax ?? c.recordsPerSec), ...limits.map((l) => l.v))
  const step = niceStep(maxV)
  const top = Math.ceil((maxV * 1.08) / step) * step
  const plotW = PANEL_W - LABEL_W - 50
  const px = (v) => x0 + LABEL_W + (v / top) * plotW
  const h = PANEL_PAD_TOP + Math.max(1, cells.length) * (BAR_H + BAR_GAP) + PANEL_PAD_BOTTOM
  const parts = []
  parts.push(`<text x="${x0}" y="${y0 + 16}" class="ptitle">${esc(label)} — ${size} B records</text>`)
  const axisY = y0 + PANEL_PAD_TOP + cells.length * (BAR_H + BAR_GAP)
  for (let t = 0; t <= top + 1e-9; t += step) {
    const x = px(t)
    parts.push(`<line x1="${x}" y1="${y0 + PANEL_PAD_TOP - 6}" x2="${x}" y2="${axisY}" class="grid"/>`)
    parts.push(`<text x="${x}" y="${axisY + 14}" class="tick">${short(t)}</text>`)
  }
  parts.push(`<text x="${x0 + LABEL_W + plotW / 2}" y="${axisY + 28}" class="axis">durable records/s</text>`)
  cells.forEach((c, i) => {
    const y = y0 + PANEL_PAD_TOP + i * (BAR_H + BAR_GAP)
    parts.push(`<text x="${x0 + LABEL_W - 6}" y="${y + BAR_H - 3}" class="label">${esc(c.contestant)}</text>`)
    const w = Math.max(1, px(c.recordsPerSec) - px(0))
    parts.push(`<rect x="${px(0)}" y="${y}" width="${w}" height="${BAR_H}" fill="${COLOR(c.contestant)}"><title>${esc(`${c.id}: ${Math.round(c.recordsPerSec)} records/s (median of ${c.runs}; min ${Math.round(c.recordsPerSecMin)}, max ${Math.round(c.recordsPerSecMax)})`)}</title></rect>`)
    if (c.recordsPerSecMin !== null && c.recordsPerSecMax !== null && c.runs > 1) {
      const ym = y + BAR_H / 2
      parts.push(`<line x1="${px(c.recordsPerSecMin)}" y1="${ym}" x2="${px(c.recordsPerSecMax)}" y2="${ym}" class="whisker"/>`)
      parts.push(`<line x1="${px(c.recordsPerSecMin)}" y1="${ym - 4}" x2="${px(c.recordsPerSecMin)}" y2="${ym + 4}" class="whisker"/>`)
      parts.push(`<line x1="${px(c.recordsPerSecMax)}" y1="${ym - 4}" x2="${px(c.recordsPerSecMax)}" y2="${ym + 4}" class="whisker"/>`)
    }
    parts.push(`<text x="${px(c.recordsPerSecMax ?? c.recordsPerSec) + 4}" y="${y + BAR_H - 3}" class="value">${short(c.recordsPerSec)}</text>`)
  })
  if (cells.length === 0) parts.push(`<text x="${x0 + LABEL_W}" y="${y0 + PANEL_PAD_TOP + 12}" class="label-l">no data</text>`)
  limits.forEach((l, i) => {
    const x = px(l.v)
    parts.push(`<line x1="${x}" y1="${y0 + PANEL_PAD_TOP - 12}" x2="${x}" y2="${axisY}" class="limit"/>`)
    parts.push(`<text x="${x + 3}" y="${y0 + PANEL_PAD_TOP - 14 - i * 12}" class="limit-t">${l.id === 'device-2file' ? 'device: two-file cycle' : 'device: one file'} ${short(l.v)}/s</text>`)
  })
  return { svg: parts.join('\n'), h }
}

const panelsByRow = rows.map(([w, label]) => sizes.map((size) => ({ w, label, size })))
let y = HEADER_H
const body = []
for (const row of panelsByRow) {
  let rowH = 0
  row.forEach((p, col) => {
    const r = panel(MARGIN + col * (PANEL_W + MARGIN), y, p.w, p.label, p.size)
    body.push(r.svg)
    rowH = Math.max(rowH, r.h)
  })
  y += rowH + 10
}
const width = MARGIN + sizes.length * (PANEL_W + MARGIN)
const height = y + 30
const m = data.machine ?? {}
const reps = data.options?.reps
const secs = data.options?.seconds
const heading = title ?? 'doublewrite: durable records/s next to the device limit and the alternatives (one run, reps interleaved)'
const sub1 = [
  m.date?.slice(0, 10),
  `${m.cpus} vCPU`,
  m.kernel && `Linux ${m.kernel}`,
  m.fsType,
  m.node && `Node ${m.node}`,
  m.package?.commit && `doublewrite ${m.package.commit}`,
]
  .filter(Boolean)
  .join(' · ')
const sub2 = [
  reps && `median of ${reps} reps × ${secs} s; whiskers: slowest–fastest rep`,
  data.options?.quick && 'QUICK RUN (noisy: machine busy) — not for quoting',
]
  .filter(Boolean)
  .join(' · ')

const svg = `<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif">
<style>
  .title { font-size: 17px; font-weight: bold; fill: #222; }
  .sub { font-size: 11.5px; fill: #555; }
  .ptitle { font-size: 13px; font-weight: bold; fill: #333; }
  .label { font-size: 11.5px; fill: #222; text-anchor: end; }
  .label-l { font-size: 11.5px; fill: #888; }
  .value { font-size: 10.5px; fill: #333; }
  .tick { font-size: 10px; fill: #666; text-anchor: middle; }
  .axis { font-size: 10.5px; fill: #666; text-anchor: middle; }
  .grid { stroke: #e4e4e4; stroke-width: 1; }
  .whisker { stroke: #222; stroke-width: 1; }
  .limit { stroke: #c0392b; stroke-width: 1.3; stroke-dasharray: 4 3; }
  .limit-t { font-size: 10px; fill: #c0392b; }
</style>
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="${MARGIN}" y="28" class="title">${esc(heading)}</text>
<text x="${MARGIN}" y="48" class="sub">${esc(sub1)}</text>
<text x="${MARGIN}" y="64" class="sub">${esc(sub2)}</text>
<text x="${MARGIN}" y="80" class="sub">blue: doublewrite (dark: the defaults) · orange: hand-written JS logs · grey: better-sqlite3 (WAL, FULL), lmdb, classic-level (sync) · red dashes: device limit, same run</text>
${body.join('\n')}
</svg>
`
mkdirSync(path.dirname(out), { recursive: true })
writeFileSync(out, svg)
console.error(`wrote ${out} (${width}×${height})`)
