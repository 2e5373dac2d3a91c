// `npm run artifacts`: puts freshly built addons into their platform packages
// (npm/<platform>/doublewrite.<platform>.node), through `napi artifacts`.
//
//   npm run artifacts                 the addons `npm run build` left in the package root:
//                                     at least this machine's, each newer than every Rust
//                                     source it is built from (a stale one is refused)
//   npm run artifacts -- --from DIR   the release workflow: every target of napi.targets
//                                     must be in DIR (the build jobs' downloads)
//
// `napi artifacts` itself insists on an addon for every configured target, so the local
// form hands it a config listing only the targets that were built here.

import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import { NapiCli, parseTriple } from '@napi-rs/cli'

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..')
const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'))
const { binaryName, targets } = pkg.napi
const args = process.argv.slice(2)
const fromIndex = args.indexOf('--from')

if (fromIndex >= 0) {
  const from = args[fromIndex + 1]
  if (from === undefined) throw new Error('--from needs a directory')
  await new NapiCli().artifacts({ cwd: root, outputDir: path.resolve(from), npmDir: 'npm' })
  for (const triple of /** @type {string[]} */ (targets)) copyLicense(parseTriple(triple).platformArchABI)
  console.log(`artifacts: every target of napi.targets copied from ${from} into npm/`)
} else {
  const built = /** @type {string[]} */ (targets)
    .map((triple) => ({ triple, file: `${binaryName}.${parseTriple(triple).platformArchABI}.node` }))
    .filter(({ file }) => exists(path.join(root, file)))
  const host = `${binaryName}.${hostSuffix()}.node`
  if (!built.some(({ file }) => file === host)) {
    fail(`no ${host} in ${root}: run \`npm run build\` first`)
  }
  const newestSource = newestMtime(['src', 'crates/doublewrite/src', 'Cargo.toml', 'Cargo.lock', 'crates/doublewrite/Cargo.toml'])
  for (const { file } of built) {
    const age = statSync(path.join(root, file)).mtimeMs
    if (age < newestSource.mtimeMs) {
      fail(`${file} is older than ${path.relative(root, newestSource.file)}: run \`npm run build\` first`)
    }
  }
  // `napi artifacts` copies every addon it finds under outputDir: give it just these.
  const staging = mkdtempSync(path.join(tmpdir(), 'doublewrite-artifacts-'))
  try {
    for (const { file } of built) copyFileSync(path.join(root, file), path.join(staging, file))
    const config = path.join(staging, 'napi.json')
    writeFileSync(config, JSON.stringify({ binaryName, targets: built.map(({ triple }) => triple) }))
    await new NapiCli().artifacts({ cwd: root, outputDir: staging, npmDir: 'npm', configPath: config })
  } finally {
    rmSync(staging, { recursive: true, force: true })
  }
  for (const { file } of built) {
    copyLicense(file.slice(binaryName.length + 1, -'.node'.length))
    console.log(`artifacts: npm/${file.slice(binaryName.length + 1, -'.node'.length)}/${file} (${statSync(path.join(root, file)).size} bytes)`)
  }
}

/**
 * Every platform package carries the license (npm/<platform>/LICENSE: a copy, ignored by git).
 * @param {string} platformArchABI
 */
function copyLicense(platformArchABI) {
  copyFileSync(path.join(root, 'LICENSE'), path.join(root, 'npm', platformArchABI, 'LICENSE'))
}

function hostSuffix() {
  const { platform, arch } = process
  if (platform === 'win32') return `win32-${arch}-msvc`
  if (platform !== 'linux') return `${platform}-${arch}`
  const report = /** @type {{ header?: { glibcVersionRuntime?: string } } | undefined} */ (process.report?.getReport())
  const glibc = report?.header?.glibcVersionRuntime !== undefined
  return `linux-${arch}-${glibc ? 'gnu' : 'musl'}`
}

/** @param {string} file */
function exists(file) {
  try {
    statSync(file)
    return true
  } catch {
    return false
  }
}

/**
 * The most recently modified file under the given paths (relative to the root).
 * @param {string[]} paths
 */
function newestMtime(paths) {
  let newest = { file: '', mtimeMs: 0 }
  /** @param {string} file */
  const visit = (file) => {
    const stat = statSync(file, { throwIfNoEntry: false })
    if (stat === undefined) return
    if (stat.isDirectory()) {
      for (const name of readdirSync(file)) visit(path.join(file, name))
    } else if (stat.mtimeMs > newest.mtimeMs) {
      newest = { file, mtimeMs: stat.mtimeMs }
    }
  }
  for (const p of paths) visit(path.join(root, p))
  return newest
}

/**
 * @param {string} message
 * @returns {never}
 */
function fail(message) {
  console.error(`artifacts: ${message}`)
  process.exit(1)
}
