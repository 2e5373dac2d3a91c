/**
 * Loads the native addon through the generated loader (`binding.js`, from
 * `napi build --js binding.js`) and, when that fails, replaces its generic "Cannot find
 * native binding" with an error that says which platform package is missing, too old or
 * failing, and how to install it. `index.ts` imports this module before `./binding.js`,
 * so the second load is a cache hit.
 *
 * Codes: `ERR_BINDING_NOT_FOUND` (no addon for this platform is installed, or none is
 * published for it) and `ERR_BINDING_LOAD` (the platform package is there but its addon
 * does not load). The generated loader's error, listing every path it tried, is `cause`.
 *
 * @internal
 * @module
 */

import { existsSync } from 'node:fs'
import { join as joinPath } from 'node:path'

/**
 * The platforms a prebuilt addon is published for: `napi.targets` of package.json as
 * napi-rs platform suffixes (`__test__/package.spec.mts` keeps the two in sync). Each is
 * the optional dependency `doublewrite-<suffix>` of this package.
 */
export const PREBUILT_PLATFORMS: readonly string[] = [
  'linux-x64-gnu',
  'linux-x64-musl',
  'linux-arm64-gnu',
  'linux-arm64-musl',
  'darwin-x64',
  'darwin-arm64',
  'win32-x64-msvc',
  'win32-arm64-msvc',
]

/** The napi-rs platform suffix of this process (the generated loader's own rules). */
function platformSuffix(): string {
  const { platform, arch } = process
  if (platform === 'win32') return `win32-${arch}-msvc`
  if (platform !== 'linux') return `${platform}-${arch}`
  let glibc = true
  if (process.report !== undefined) {
    // Skips the network interfaces, which can be slow to list (the generated loader does the same).
    ;(process.report as { excludeNetwork?: boolean }).excludeNetwork = true
    const header = (process.report.getReport() as { header?: { glibcVersionRuntime?: string } }).header
    glibc = header?.glibcVersionRuntime !== undefined
  }
  if (arch === 'arm') return `linux-arm-${glibc ? 'gnueabihf' : 'musleabihf'}`
  return `linux-${arch}-${glibc ? 'gnu' : 'musl'}`
}

/**
 * Why the generated loader could not load the addon, in terms a user can act on: which
 * platform package is missing (or too old, or failing to load) and how to install it. The
 * loader's own error (with every path it tried) is kept as `cause`.
 */
function bindingLoadError(cause: unknown): Error {
  const { name, version } = require('./package.json') as { name: string; version: string }
  const suffix = platformSuffix()
  const pkg = `${name}-${suffix}`
  const lines: string[] = []
  let code = 'ERR_BINDING_NOT_FOUND'
  let installed: string | undefined
  try {
    installed = (require(`${pkg}/package.json`) as { version: string }).version
  } catch {
    installed = undefined
  }
  if (!PREBUILT_PLATFORMS.includes(suffix)) {
    lines.push(
      `${name} has no prebuilt native addon for ${suffix} (Node.js ${process.version}).`,
      `Prebuilt addons exist for: ${PREBUILT_PLATFORMS.join(', ')}.`,
      `On another platform, build it from a checkout of the repository (needs Rust): npm install && npm run build.`,
    )
  } else if (installed === undefined) {
    lines.push(
      `${name} could not load its native addon: the package ${pkg}@${version} is not installed.`,
      `It is an optional dependency of ${name} that npm installs only on ${suffix}. It goes missing when`,
      `optional dependencies are omitted (--omit=optional, --no-optional), or when node_modules or the`,
      `lockfile were made on another platform (for example on macOS, then used in a Linux container:`,
      `npm bug https://github.com/npm/cli/issues/4828).`,
      `Fix: npm install ${pkg}@${version} (or delete node_modules and package-lock.json, then npm install).`,
    )
  } else if (installed !== version) {
    code = 'ERR_BINDING_LOAD'
    lines.push(
      `${name}@${version} needs ${pkg}@${version}, but ${pkg}@${installed} is installed.`,
      `Fix: npm install ${pkg}@${version}.`,
    )
  } else {
    code = 'ERR_BINDING_LOAD'
    const first = packageLoadMessage(cause, pkg)
    lines.push(`${name} found ${pkg}@${installed}, but loading its addon failed: ${first}`)
    if (process.versions.electron !== undefined && /\.asar[\\/]/.test(first)) {
      lines.push(`In Electron, the .node file must be unpacked from the asar archive (asarUnpack: ["**/*.node"]).`)
    }
  }
  if (existsSync(joinPath(__dirname, 'Cargo.toml'))) {
    lines.push(`In a checkout of the repository, build the addon instead: npm run build.`)
  }
  const error = new Error(lines.join('\n'), { cause }) as Error & { code: string }
  error.code = code
  return error
}

/** The loader's error about `pkg` itself, from the chain of everything it tried. */
function packageLoadMessage(error: unknown, pkg: string): string {
  const messages: string[] = []
  for (let current: unknown = error; current instanceof Error; current = current.cause) {
    messages.push(current.message.split('\n')[0] ?? current.message)
  }
  return messages.find((m) => m.includes(pkg)) ?? messages[messages.length - 1] ?? String(error)
}

try {
  require('./binding.js')
} catch (error) {
  throw bindingLoadError(error)
}
