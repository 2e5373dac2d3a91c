// ES module entry point. The package is CommonJS (index.js, compiled from index.ts); this
// re-exports that same instance, so `import` and `require` share one module state (no
// dual-package hazard). __test__/record.spec.mts checks that the two export lists match.
import cjs from './index.js'

export const {
  DoubleWriteBuffer,
  DwbMode,
  HEADER_SIZE,
  MAX_PAYLOAD_BYTES,
  REQUIRED_FLAG,
  RecordType,
  Wal,
  WalRecord,
  dwbBytesWrittenTotal,
} = cjs
