// `npm run test:pack`: proves the install a user gets.
//
// 1. `npm run artifacts` puts the freshly built addon into npm/linux-x64-gnu/ (this
//    machine's platform package), then `npm pack` packs the root package and that one;
//    their file lists are checked against what users need, and their sizes reported.
// 2. Both tarballs are installed into an empty directory by an npm that has a PATH of
//    only `node` (no compiler, no cargo, no python, no make), `--offline` with an empty
//    cache (no registry at all) and `--ignore-scripts`.
// 3. There, a consumer TypeScript file per module kind (__test__/consumer/consumer.cts
//    and .mts) is compiled with `strict` against the published types and run: commit,
//    recovery, replay, the DWB, `import` and `require` sharing one instance, the addon
//    coming from the platform package. The `doublewrite` bin runs `demo` (a torn write
//    repaired) and `verify`.
// 4. Without the platform package, `require('doublewrite')` fails with
//    ERR_BINDING_NOT_FOUND naming the package to install, and `doublewrite --help` works.
//
// Needs a built package (`npm run build`). Options: --keep (keep the temporary directory).

import { spawnSync } from 'node:child_process'
import { cpSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..')
const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'))
const keep = process.argv.includes('--keep')
const started = performance.now()

/** What the root tarball holds: the API, the loader, the CLI, types, docs. Nothing else. */
const ROOT_FILES = [
  'CHANGELOG.md',
  'LICENSE',
  'README.md',
  'binding.js',
  'cli/bench.js',
  'cli/demo.js',
  'cli/inspect.js',
  'cli/main.d.ts',
  'cli/main.js',
  'cli/output.js',
  'cli/verify.js',
  'index.d.mts',
  'index.d.ts',
  'index.js',
  'index.mjs',
  'loader.d.ts',
  'loader.js',
  'package.json',
]
/** Packed-size budgets: a failure means something unexpected got in. */
const ROOT_PACKED_MAX_BYTES = 120_000
const PLATFORM_PACKED_MAX_BYTES = 2_000_000

const suffix = hostSuffix()
const platformName = `${pkg.name}-${suffix}`
const platformDir = path.join(root, 'npm', suffix)
const npmCli = findNpmCli()
const work = realpathSync(mkdtempSync(path.join(tmpdir(), 'doublewrite-pack-')))

try {
  // ── 1. artifacts and tarballs ─────────────────────────────────────────────────────────
  step('artifacts', () => run(process.execPath, [path.join(root, 'scripts/artifacts.mjs')], { cwd: root }))
  const tarballs = path.join(work, 'tarballs')
  mkdirSync(tarballs)
  const rootPack = pack(root, tarballs)
  const platformPack = pack(platformDir, tarballs)
  checkFiles(rootPack, ROOT_FILES)
  checkFiles(platformPack, ['LICENSE', 'README.md', `${pkg.napi.binaryName}.${suffix}.node`, 'package.json'])
  budget(rootPack, ROOT_PACKED_MAX_BYTES)
  budget(platformPack, PLATFORM_PACKED_MAX_BYTES)
  for (const p of [rootPack, platformPack]) {
    console.log(`test:pack: ${p.filename}: ${kb(p.size)} packed, ${kb(p.unpackedSize)} unpacked, ${p.files.length} files`)
  }

  // ── 2. a clean install: no compiler, no network ───────────────────────────────────────
  const bin = path.join(work, 'bin')
  mkdirSync(bin)
  symlinkSync(process.execPath, path.join(bin, 'node'))
  const env = {
    PATH: bin,
    HOME: path.join(work, 'home'),
    TMPDIR: path.join(work, 'tmp'),
    npm_config_cache: path.join(work, 'npm-cache'),
    npm_config_userconfig: path.join(work, 'npmrc'),
    npm_config_update_notifier: 'false',
  }
  for (const dir of [env.HOME, env.TMPDIR]) mkdirSync(dir)
  writeFileSync(env.npm_config_userconfig, '')
  for (const tool of ['cc', 'gcc', 'clang', 'cargo', 'rustc', 'make', 'python3', 'npm']) {
    const found = spawnSync('/bin/sh', ['-c', `command -v ${tool}`], { env, encoding: 'utf8' })
    if (found.status === 0) fail(`${tool} is on the clean PATH (${found.stdout.trim()})`)
  }
  const consumer = path.join(work, 'consumer')
  mkdirSync(consumer)
  writeFileSync(path.join(consumer, 'package.json'), `${JSON.stringify({ name: 'consumer', version: '1.0.0', private: true }, null, 2)}\n`)
  /** @param {string} dir @param {string[]} files */
  const install = (dir, files) =>
    run(process.execPath, [npmCli, 'install', '--offline', '--ignore-scripts', '--no-audit', '--no-fund', '--loglevel=error', ...files], { cwd: dir, env })
  step('npm install --offline --ignore-scripts (both tarballs)', () =>
    install(consumer, [path.join(tarballs, platformPack.filename), path.join(tarballs, rootPack.filename)]),
  )
  const installed = JSON.parse(readFileSync(path.join(consumer, 'node_modules', platformName, 'package.json'), 'utf8'))
  if (installed.version !== pkg.version) fail(`${platformName} installed at ${installed.version}, expected ${pkg.version}`)

  // ── 3. strict TypeScript consumers, CJS and ESM, compiled and run ─────────────────────
  for (const file of ['consumer.cts', 'consumer.mts']) cpSync(path.join(root, '__test__', 'consumer', file), path.join(consumer, file))
  writeFileSync(
    path.join(consumer, 'tsconfig.json'),
    JSON.stringify(
      {
        compilerOptions: {
          strict: true,
          module: 'NodeNext',
          moduleResolution: 'NodeNext',
          target: 'ES2022',
          lib: ['ES2022', 'ESNext.Disposable'],
          types: ['node'],
          typeRoots: [path.join(root, 'node_modules', '@types')],
          skipLibCheck: false,
          noEmitOnError: true,
          outDir: 'out',
        },
        files: ['consumer.cts', 'consumer.mts'],
      },
      null,
      2,
    ),
  )
  step('tsc --strict: consumer.cts (CommonJS) and consumer.mts (ESM)', () =>
    run(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', consumer], { cwd: consumer, env }),
  )
  // The CommonJS consumer again with only ES2022 + @types/node (no ESNext.Disposable lib),
  // as many existing projects have it: the published types must not need more.
  writeFileSync(
    path.join(consumer, 'tsconfig.plain.json'),
    JSON.stringify({ extends: './tsconfig.json', compilerOptions: { lib: ['ES2022'], noEmit: true }, files: ['consumer.cts'] }),
  )
  step('tsc --strict, lib ES2022 only: consumer.cts', () =>
    run(process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', path.join(consumer, 'tsconfig.plain.json')], {
      cwd: consumer,
      env,
    }),
  )
  const platformAddon = path.join(consumer, 'node_modules', platformName, `${pkg.napi.binaryName}.${suffix}.node`)
  for (const file of ['out/consumer.cjs', 'out/consumer.mjs']) {
    const output = step(`node ${file}: commit + recovery`, () => run(process.execPath, [file], { cwd: consumer, env }))
    const result = JSON.parse(output.trim().split('\n').pop() ?? '{}')
    if (result.addons !== undefined && !(result.addons.length === 1 && result.addons[0] === platformAddon)) {
      fail(`the addon was not loaded from the platform package: ${JSON.stringify(result.addons)}`)
    }
  }
  const cli = path.join(consumer, 'node_modules', '.bin', 'doublewrite')
  const demo = JSON.parse(
    step('doublewrite demo (a torn write repaired from the DWB)', () =>
      run(cli, ['demo', '--json', '--records', '400', '--in-flight', '20'], { cwd: consumer, env }),
    ),
  )
  if (demo.recovery.repairedFromDwb < 1 || !demo.recovery.everyRecordBack) fail(`demo: ${JSON.stringify(demo.recovery)}`)
  const version = step('doublewrite --version', () => run(cli, ['--version'], { cwd: consumer, env })).trim()
  if (version !== pkg.version) fail(`doublewrite --version printed ${version}`)

  // ── 4. without the platform package: the loader names it ──────────────────────────────
  const bare = path.join(work, 'without-platform-package')
  mkdirSync(bare)
  writeFileSync(path.join(bare, 'package.json'), '{ "name": "bare", "version": "1.0.0", "private": true }\n')
  step('npm install --offline --ignore-scripts (root tarball only)', () => install(bare, [path.join(tarballs, rootPack.filename)]))
  const missing = spawnSync(
    process.execPath,
    ['-e', "try { require('doublewrite') } catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })) }"],
    { cwd: bare, env, encoding: 'utf8' },
  )
  const loadError = JSON.parse(missing.stdout || '{}')
  if (loadError.code !== 'ERR_BINDING_NOT_FOUND' || !loadError.message.includes(`${platformName}@${pkg.version}`)) {
    fail(`require without the platform package: ${missing.stdout}${missing.stderr}`)
  }
  const bareCli = path.join(bare, 'node_modules', '.bin', 'doublewrite')
  step('doublewrite --help without the addon', () => run(bareCli, ['--help'], { cwd: bare, env }))
  const verifyBare = spawnSync(bareCli, ['verify', bare], { cwd: bare, env, encoding: 'utf8' })
  if (verifyBare.status !== 1 || !verifyBare.stderr.includes(platformName)) {
    fail(`doublewrite verify without the addon: exit ${verifyBare.status}: ${verifyBare.stderr}`)
  }
  console.log(`test:pack: without ${platformName}: ${loadError.code}, the message names ${platformName}@${pkg.version}`)
  console.log(`test:pack: passed in ${((performance.now() - started) / 1000).toFixed(1)} s`)
} finally {
  if (keep) console.log(`test:pack: kept ${work}`)
  else rmSync(work, { recursive: true, force: true })
}

/**
 * @template T
 * @param {string} label
 * @param {() => T} fn
 * @returns {T}
 */
function step(label, fn) {
  const t0 = performance.now()
  const out = fn()
  console.log(`test:pack: ${label} (${((performance.now() - t0) / 1000).toFixed(1)} s)`)
  return out
}

/**
 * Runs a command; fails the test unless it exits with 0. Returns its stdout.
 * @param {string} command
 * @param {string[]} args
 * @param {import('node:child_process').SpawnSyncOptions} options
 * @returns {string}
 */
function run(command, args, options) {
  const result = spawnSync(command, args, { ...options, encoding: 'utf8' })
  if (result.status !== 0) {
    fail(`${path.basename(command)} ${args.join(' ')} exited with ${result.status ?? result.signal}\n${result.stdout}\n${result.stderr}`)
  }
  return result.stdout
}

/**
 * @typedef {{ filename: string, size: number, unpackedSize: number, files: string[] }} Packed
 */

/**
 * `npm pack` of `dir` into `destination`, without lifecycle scripts.
 * @param {string} dir
 * @param {string} destination
 * @returns {Packed}
 */
function pack(dir, destination) {
  const out = run(process.execPath, [npmCli, 'pack', '--json', '--ignore-scripts', '--loglevel=error', '--pack-destination', destination], {
    cwd: dir,
  })
  const [info] = JSON.parse(out)
  return { ...info, files: info.files.map((/** @type {{ path: string }} */ f) => f.path).sort() }
}

/**
 * @param {Packed} packed
 * @param {string[]} expected
 */
function checkFiles(packed, expected) {
  const extra = packed.files.filter((f) => !expected.includes(f))
  const absent = expected.filter((f) => !packed.files.includes(f))
  if (extra.length > 0 || absent.length > 0) {
    fail(`${packed.filename}: unexpected files ${JSON.stringify(extra)}, missing ${JSON.stringify(absent)}`)
  }
}

/**
 * @param {Packed} packed
 * @param {number} max
 */
function budget(packed, max) {
  if (packed.size > max) fail(`${packed.filename} is ${packed.size} bytes packed, over its budget of ${max}`)
}

/** @param {number} bytes */
function kb(bytes) {
  return `${(bytes / 1000).toFixed(1)} kB`
}

function hostSuffix() {
  const { platform, arch } = process
  if (platform === 'win32') return `win32-${arch}-msvc`
  if (platform !== 'linux') return `${platform}-${arch}`
  const report = /** @type {{ header?: { glibcVersionRuntime?: string } } | undefined} */ (process.report?.getReport())
  const glibc = report?.header?.glibcVersionRuntime !== undefined
  return `linux-${arch}-${glibc ? 'gnu' : 'musl'}`
}

/** npm's own entry script: the one running this (under `npm run`), else the one on PATH. */
function findNpmCli() {
  const fromEnv = process.env.npm_execpath
  if (fromEnv !== undefined && fromEnv.endsWith('.js')) return fromEnv
  const which = spawnSync('/bin/sh', ['-c', 'command -v npm'], { encoding: 'utf8' }).stdout.trim()
  if (which === '') fail('npm not found')
  const real = realpathSync(which)
  statSync(real)
  return real
}

/**
 * @param {string} message
 * @returns {never}
 */
function fail(message) {
  console.error(`test:pack: FAILED: ${message}`)
  if (!keep) rmSync(work, { recursive: true, force: true })
  process.exit(1)
}
