#!/usr/bin/env node
/**
 * `npm pack` / `npm publish` hooks (package.json `prepack` and `postpack`).
 *
 * prepack: copy the contracts (`../../protos/podium/**.proto`) into `protos/` so the
 * package works outside the repository (src/protos.js reads its own `protos/` first),
 * and write the TypeScript declarations `types/*.d.ts` from the JSDoc of `src/` (tsc).
 * postpack (`node scripts/prepack.js --clean`): remove both again, so a checkout keeps
 * reading the repository's `protos/` and no stale copy outlives a proto change.
 */

import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const PACKAGE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const REPO_PROTOS = path.resolve(PACKAGE_DIR, '..', '..', 'protos', 'podium');
const PROTOS = path.join(PACKAGE_DIR, 'protos');
const TYPES = path.join(PACKAGE_DIR, 'types');

function clean() {
  rmSync(PROTOS, { recursive: true, force: true });
  rmSync(TYPES, { recursive: true, force: true });
}

clean();
if (!process.argv.includes('--clean')) {
  if (!existsSync(REPO_PROTOS)) throw new Error(`no contracts at ${REPO_PROTOS}`);
  cpSync(REPO_PROTOS, path.join(PROTOS, 'podium'), {
    recursive: true,
    filter: (source) => !source.endsWith('.binpb'),
  });
  const tsc = path.join(PACKAGE_DIR, 'node_modules', 'typescript', 'bin', 'tsc');
  execFileSync(process.execPath, [tsc, '-p', path.join(PACKAGE_DIR, 'tsconfig.json')], {
    stdio: 'inherit',
  });
}
