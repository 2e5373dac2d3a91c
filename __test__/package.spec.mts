// The package's shape, checked against itself: every napi target has its platform
// package in npm/ with the right os/cpu/libc and version, the root lists each as an
// exact-version optional dependency, the lockfile has the entries `npm ci` needs, the
// loader knows the same platforms, nothing has an install script, and every path that
// package.json points to is built and published.

import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import test from 'ava'

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..')
const require = createRequire(import.meta.url)

interface PackageJson {
  name: string
  version: string
  main?: string
  types?: string
  bin?: Record<string, string>
  files?: string[]
  os?: string[]
  cpu?: string[]
  libc?: string[]
  engines?: Record<string, string>
  scripts?: Record<string, string>
  exports?: Record<string, unknown>
  optionalDependencies?: Record<string, string>
  napi?: { binaryName: string; targets: string[] }
}

const readJson = <T,>(file: string): T => JSON.parse(readFileSync(path.join(root, file), 'utf8')) as T
const pkg = readJson<PackageJson>('package.json')
const napi = pkg.napi ?? { binaryName: '', targets: [] }

/** The npm platform fields of a napi-rs target triple (the CLI's own mapping). */
const { parseTriple } = (await import('@napi-rs/cli')) as {
  parseTriple(triple: string): { platformArchABI: string; platform: string; arch: string; abi: string | null }
}
const expected = napi.targets.map((triple) => {
  const target = parseTriple(triple)
  const libc = target.platform === 'linux' ? [target.abi?.startsWith('musl') === true ? 'musl' : 'glibc'] : undefined
  return { triple, suffix: target.platformArchABI, os: [target.platform], cpu: [target.arch], libc }
})

const INSTALL_SCRIPTS = ['preinstall', 'install', 'postinstall']

test('the targets cover Linux gnu and musl, macOS and Windows, each on x64 and arm64', (t) => {
  t.deepEqual(expected.map((e) => e.suffix).sort(), [
    'darwin-arm64',
    'darwin-x64',
    'linux-arm64-gnu',
    'linux-arm64-musl',
    'linux-x64-gnu',
    'linux-x64-musl',
    'win32-arm64-msvc',
    'win32-x64-msvc',
  ])
})

test('npm/<target>/package.json: name, exact root version, os/cpu/libc, main and files = the addon, no install script', (t) => {
  t.deepEqual(readdirSync(path.join(root, 'npm')).sort(), expected.map((e) => e.suffix).sort(), 'one directory per target, no other')
  for (const target of expected) {
    const platform = readJson<PackageJson>(`npm/${target.suffix}/package.json`)
    const addon = `${napi.binaryName}.${target.suffix}.node`
    t.is(platform.name, `${pkg.name}-${target.suffix}`)
    t.is(platform.version, pkg.version, `${target.suffix}: version follows the root (npm run version keeps it so)`)
    t.deepEqual(platform.os, target.os, target.suffix)
    t.deepEqual(platform.cpu, target.cpu, target.suffix)
    t.deepEqual(platform.libc, target.libc, target.suffix)
    t.is(platform.main, addon)
    t.deepEqual(platform.files, [addon])
    t.deepEqual(platform.engines, pkg.engines)
    for (const script of INSTALL_SCRIPTS) t.is(platform.scripts?.[script], undefined)
    t.true(existsSync(path.join(root, 'npm', target.suffix, 'README.md')))
  }
})

test('the root lists every platform package as an exact-version optional dependency, and has no install script', (t) => {
  t.deepEqual(pkg.optionalDependencies, Object.fromEntries(expected.map((e) => [`${pkg.name}-${e.suffix}`, pkg.version]).sort()))
  for (const script of INSTALL_SCRIPTS) t.is(pkg.scripts?.[script], undefined, `no ${script} script: npm 11 blocks them in dependencies`)
})

test('package-lock.json has an entry for every platform package, so `npm ci` accepts it on any platform', (t) => {
  interface Lock {
    packages: Record<string, { version?: string; optional?: boolean; os?: string[]; cpu?: string[]; libc?: string[]; optionalDependencies?: Record<string, string> }>
  }
  const lock = readJson<Lock>('package-lock.json')
  t.deepEqual(lock.packages['']?.optionalDependencies, pkg.optionalDependencies)
  for (const target of expected) {
    const entry = lock.packages[`node_modules/${pkg.name}-${target.suffix}`]
    t.like(entry, { version: pkg.version, optional: true, os: target.os, cpu: target.cpu }, `${target.suffix} (run node .ci/complete-lockfile.mjs)`)
    t.deepEqual(entry?.libc, target.libc)
  }
})

test("the loader's list of prebuilt platforms is napi.targets", (t) => {
  const loader = require('../loader.js') as { PREBUILT_PLATFORMS: readonly string[] }
  t.deepEqual([...loader.PREBUILT_PLATFORMS].sort(), expected.map((e) => e.suffix).sort())
})

test('every file package.json points to (main, types, bin, exports) is built and inside `files`', (t) => {
  const targets = new Set<string>()
  const collect = (value: unknown): void => {
    if (typeof value === 'string') targets.add(value.replace(/^\.\//, ''))
    else if (value !== null && typeof value === 'object') for (const v of Object.values(value)) collect(v)
  }
  collect([pkg.main, pkg.types, pkg.bin, pkg.exports])
  const files = pkg.files ?? []
  const covered = (file: string): boolean =>
    file === 'package.json' ||
    files.some((pattern) => pattern === file || (pattern.endsWith('/*.js') && file.startsWith(pattern.slice(0, -4)) && file.endsWith('.js')))
  for (const file of targets) {
    t.true(existsSync(path.join(root, file)), `${file} exists (npm run build)`)
    t.true(covered(file), `${file} is published`)
  }
  t.deepEqual(pkg.bin, { doublewrite: 'cli/main.js' })
  t.true(readFileSync(path.join(root, 'cli/main.js'), 'utf8').startsWith('#!/usr/bin/env node\n'))
})

test('the release workflow builds every napi target and tests each of them on Node 20, 22 and 24', (t) => {
  const workflow = readFileSync(path.join(root, '.github', 'workflows', 'release.yml'), 'utf8')
  const jobs = workflow.split(/^ {2}(?=[a-z-]+:$)/m)
  const job = (name: string): string => jobs.find((j) => j.startsWith(`${name}:`)) ?? ''
  const targetsIn = (text: string): string[] => [...text.matchAll(/^\s+(?:- )?target: ([\w-]+)$/gm)].map((m) => m[1] ?? '').sort()
  const targets = [...napi.targets].sort()
  t.deepEqual(targetsIn(job('build')), targets)
  t.deepEqual([...targetsIn(job('test-macos-windows')), ...[...job('test-linux').matchAll(/^ {10}- ([\w-]+-linux-[\w-]+)$/gm)].map((m) => m[1] ?? '')].sort(), targets)
  for (const name of ['test-macos-windows', 'test-linux']) t.regex(job(name), /node: \['20', '22', '24'\]/, name)
  t.regex(job('publish'), /npm run artifacts -- --from artifacts/)
  t.regex(job('publish'), /napi pre-publish -t npm/)
  t.regex(job('publish'), /id-token: write/)
})
