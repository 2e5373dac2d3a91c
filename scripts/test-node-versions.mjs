// `npm run test:node`: the ava suite on Node 20, 22 and 24 (or the versions given:
// `npm run test:node -- 22 24.12.0`). Each Node comes from the npm registry's `node`
// package (`npx node@<version>`, cached by npm after the first download); ava's own
// worker processes run on that same binary. The addon is a Node-API module, so the one
// build in the package root serves every version: nothing is rebuilt.
//
// ava 7 supports Node ^20.19, ^22.20 and ^24.12; the package's engines say >= 20.19.

import { spawn } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..')
const versions = process.argv.slice(2).filter((arg) => !arg.startsWith('-'))
const majors = versions.length > 0 ? versions : ['20', '22', '24']
const avaCli = path.join(root, 'node_modules', 'ava', 'entrypoints', 'cli.mjs')

/** @type {{ version: string, node: string, status: number | null, summary: string, seconds: number }[]} */
const results = []
for (const version of majors) {
  const started = performance.now()
  // This Node, when it is the version asked for; otherwise the registry's.
  const here = process.version.slice(1) === version || process.version.slice(1).split('.')[0] === version
  const [command, args] = here
    ? [process.execPath, [avaCli]]
    : [process.platform === 'win32' ? 'npx.cmd' : 'npx', ['--yes', `node@${version}`, avaCli]]
  console.log(`\n── ava on Node ${version} ${here ? `(this Node, ${process.version})` : `(npx node@${version})`} ──`)
  const { status, output } = await run(command, args)
  const node = /^node (v[\d.]+)/m.exec(output)?.[1] ?? (here ? process.version : '?')
  const passed = output.match(/^\s*✔/gm)?.length ?? 0
  const failed = output.match(/^\s*✘/gm)?.length ?? 0
  const summary = `${passed} tests passed${failed > 0 ? `, ${failed} failed` : ''}`
  results.push({ version, node, status, summary, seconds: (performance.now() - started) / 1000 })
}

console.log('\nNode     ava result                                   time')
for (const r of results) {
  console.log(`${r.node.padEnd(9)}${(r.status === 0 ? 'ok: ' : `FAILED (exit ${r.status}): `).concat(r.summary).padEnd(45)}${r.seconds.toFixed(0)} s`)
}
process.exitCode = results.every((r) => r.status === 0) ? 0 : 1

/**
 * Runs ava with a first step that prints the Node version, streaming its output.
 * @param {string} command
 * @param {string[]} args
 * @returns {Promise<{ status: number | null, output: string }>}
 */
function run(command, args) {
  return new Promise((resolve, reject) => {
    // `--node-arguments` is not needed: ava's config (package.json) carries them.
    const child = spawn(command, [...args.slice(0, -1), '-p', "'node ' + process.version"], {
      cwd: root,
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    let output = ''
    child.stdout.on('data', (/** @type {Buffer} */ chunk) => (output += chunk.toString()))
    child.once('error', reject)
    child.once('close', () => {
      const ava = spawn(command, args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, CI: 'true' } })
      ava.stdout.on('data', (/** @type {Buffer} */ chunk) => {
        output += chunk.toString()
        process.stdout.write(chunk)
      })
      ava.stderr.on('data', (/** @type {Buffer} */ chunk) => {
        output += chunk.toString()
        process.stderr.write(chunk)
      })
      ava.once('error', reject)
      ava.once('close', (status) => resolve({ status, output }))
    })
  })
}
