// `npm run docs`: the API reference in docs/api/, Markdown generated from the TypeScript
// types (index.ts, and cli/main.ts for `doublewrite/cli`) by typedoc with
// typedoc-plugin-markdown. The output is committed; rerun this after changing the API.
//
// typedoc needs TypeScript's compiler API, which TypeScript 7 (the project's compiler)
// does not have, so it runs with its own pinned TypeScript 6 through `npm exec`, outside
// the project's dependencies (nothing of it goes into package-lock.json or CI installs).
// Needs a built package (binding.d.ts comes from `npm run build`).

import { spawnSync } from 'node:child_process'
import { rmSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..')
const out = path.join(root, 'docs', 'api')

const TOOLS = ['typedoc@0.28.20', 'typedoc-plugin-markdown@4.14.1', 'typescript@6.0.3']

rmSync(out, { recursive: true, force: true })
const result = spawnSync(
  process.platform === 'win32' ? 'npm.cmd' : 'npm',
  [
    'exec',
    '--yes',
    ...TOOLS.map((tool) => `--package=${tool}`),
    '--',
    'typedoc',
    '--plugin',
    'typedoc-plugin-markdown',
    '--tsconfig',
    'tsconfig.build.json',
    '--entryPoints',
    'index.ts',
    '--entryPoints',
    'cli/main.ts',
    '--name',
    'doublewrite',
    '--readme',
    'none',
    '--out',
    out,
    '--excludePrivate',
    '--excludeInternal',
    '--disableSources',
    '--hideGenerator',
    '--sort',
    'source-order',
    '--outputFileStrategy',
    'modules',
    '--entryFileName',
    'README.md',
    '--useCodeBlocks',
    '--parametersFormat',
    'table',
    '--interfacePropertiesFormat',
    'table',
    '--enumMembersFormat',
    'table',
    '--hidePageHeader',
    '--validation.notExported',
    'false',
  ],
  { cwd: root, stdio: 'inherit' },
)
process.exitCode = result.status ?? 1
