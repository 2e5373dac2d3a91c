// Adds the lockfile entries npm leaves out when the registry it talks to cannot serve
// the per-platform optional packages of other platforms (the mirror on our build machines
// answers 404 for them; see npm/cli#4828 for the same symptom on the public registry).
// Without them `npm ci` refuses the lockfile ("Missing: <pkg>@ from lock file").
//
// Each added entry records what npm needs to skip the package on a platform it does not
// fit: the exact version its parent pins, `optional`, `dev`, and `os` / `cpu` / `libc`
// read from the napi-rs platform suffix of its name. On a machine of that platform
// `npm ci` fetches it like any other package (there is no integrity to check against).
//
// Usage, after every `npm install` that rewrites package-lock.json:
//   node .ci/complete-lockfile.mjs [package-lock.json]

import { readFileSync, writeFileSync } from 'node:fs'

const file = process.argv[2] ?? 'package-lock.json'
const lock = JSON.parse(readFileSync(file, 'utf8'))
const packages = lock.packages

/** napi-rs platform suffixes → the npm platform fields of such a package. */
const PLATFORMS = {
  'android-arm-eabi': { os: ['android'], cpu: ['arm'] },
  'android-arm64': { os: ['android'], cpu: ['arm64'] },
  'darwin-arm64': { os: ['darwin'], cpu: ['arm64'] },
  'darwin-x64': { os: ['darwin'], cpu: ['x64'] },
  'darwin-universal': { os: ['darwin'] },
  'freebsd-arm64': { os: ['freebsd'], cpu: ['arm64'] },
  'freebsd-x64': { os: ['freebsd'], cpu: ['x64'] },
  'linux-arm-gnueabihf': { os: ['linux'], cpu: ['arm'], libc: ['glibc'] },
  'linux-arm-musleabihf': { os: ['linux'], cpu: ['arm'], libc: ['musl'] },
  'linux-arm64-gnu': { os: ['linux'], cpu: ['arm64'], libc: ['glibc'] },
  'linux-arm64-musl': { os: ['linux'], cpu: ['arm64'], libc: ['musl'] },
  'linux-ppc64-gnu': { os: ['linux'], cpu: ['ppc64'], libc: ['glibc'] },
  'linux-riscv64-gnu': { os: ['linux'], cpu: ['riscv64'], libc: ['glibc'] },
  'linux-riscv64-musl': { os: ['linux'], cpu: ['riscv64'], libc: ['musl'] },
  'linux-s390x-gnu': { os: ['linux'], cpu: ['s390x'], libc: ['glibc'] },
  'linux-x64-gnu': { os: ['linux'], cpu: ['x64'], libc: ['glibc'] },
  'linux-x64-musl': { os: ['linux'], cpu: ['x64'], libc: ['musl'] },
  'openharmony-arm64': { os: ['openharmony'], cpu: ['arm64'] },
  'wasm32-wasi': { cpu: ['wasm32'] },
  'win32-arm64-msvc': { os: ['win32'], cpu: ['arm64'] },
  'win32-ia32-msvc': { os: ['win32'], cpu: ['ia32'] },
  'win32-x64-msvc': { os: ['win32'], cpu: ['x64'] },
  // Suffixes without an ABI (prebuildify-style packages such as @msgpackr-extract/*).
  'linux-arm': { os: ['linux'], cpu: ['arm'] },
  'linux-arm64': { os: ['linux'], cpu: ['arm64'] },
  'linux-x64': { os: ['linux'], cpu: ['x64'] },
  'win32-x64': { os: ['win32'], cpu: ['x64'] },
  'win32-arm64': { os: ['win32'], cpu: ['arm64'] },
}

function platformOf(name) {
  for (const [suffix, fields] of Object.entries(PLATFORMS)) {
    if (name.endsWith(`-${suffix}`)) return fields
  }
  return undefined
}

let added = 0
for (const [location, entry] of Object.entries(packages)) {
  for (const [name, spec] of Object.entries(entry.optionalDependencies ?? {})) {
    const nested = `${location}/node_modules/${name}`.replace(/^\//, '')
    const hoisted = `node_modules/${name}`
    if (packages[nested] !== undefined || packages[hoisted] !== undefined) continue
    const platform = platformOf(name)
    if (platform === undefined || !/^\d+\.\d+\.\d+(-[\w.]+)?$/.test(spec)) {
      console.warn(`left out ${name}@${spec} (needed by ${location || 'the root'}): not an exact-version platform package`)
      continue
    }
    // Fields in npm's order: version first, then alphabetical.
    const fields = { ...(entry.dev ? { dev: true } : {}), optional: true, ...platform }
    packages[hoisted] = {
      version: spec,
      ...Object.fromEntries(Object.entries(fields).sort(([a], [b]) => a.localeCompare(b, 'en'))),
    }
    added += 1
  }
}

// npm's own order: the root first, then by location (localeCompare 'en').
lock.packages = Object.fromEntries(Object.entries(packages).sort(([a], [b]) => (a === '' ? -1 : b === '' ? 1 : a.localeCompare(b, 'en'))))
writeFileSync(file, `${JSON.stringify(lock, null, 2)}\n`)
console.log(`${file}: added ${added} platform package entries`)
