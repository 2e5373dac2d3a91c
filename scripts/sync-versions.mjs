// Keeps every version in step with package.json's: the platform packages in npm/, the
// root's exact-version optionalDependencies on them, and their package-lock.json entries.
//
//   node scripts/sync-versions.mjs           rewrite them (npm's `version` lifecycle runs it:
//                                            `npm version 0.2.0` then commits all of it)
//   node scripts/sync-versions.mjs --check   only check (`prepublishOnly`); exit 1 if out of step

import { readdirSync, readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..')
const check = process.argv.includes('--check')
/** @type {string[]} */
const problems = []

/**
 * @param {string} file
 * @param {(json: any) => void} update
 */
function edit(file, update) {
  const full = path.join(root, file)
  const before = readFileSync(full, 'utf8')
  const json = JSON.parse(before)
  update(json)
  const after = `${JSON.stringify(json, null, 2)}\n`
  if (after === before) return
  if (check) problems.push(`${file} is out of step with package.json's version`)
  else {
    writeFileSync(full, after)
    console.log(`sync-versions: updated ${file}`)
  }
}

const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'))
const { name, version } = pkg
const platforms = readdirSync(path.join(root, 'npm')).sort()

for (const platform of platforms) {
  edit(`npm/${platform}/package.json`, (json) => {
    json.version = version
  })
}
edit('package.json', (json) => {
  json.optionalDependencies = Object.fromEntries(platforms.map((platform) => [`${name}-${platform}`, version]))
})
edit('package-lock.json', (lock) => {
  lock.packages[''].optionalDependencies = Object.fromEntries(platforms.map((platform) => [`${name}-${platform}`, version]))
  for (const platform of platforms) {
    const entry = lock.packages[`node_modules/${name}-${platform}`]
    if (entry === undefined) problems.push(`package-lock.json has no entry for ${name}-${platform}: run node .ci/complete-lockfile.mjs`)
    else entry.version = version
  }
})

if (problems.length > 0) {
  for (const problem of problems) console.error(`sync-versions: ${problem}`)
  if (check) console.error('sync-versions: run `node scripts/sync-versions.mjs` (npm version does it)')
  process.exit(1)
}
if (check) console.log(`sync-versions: everything is at ${version}`)
