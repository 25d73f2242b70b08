// The published package as a user gets it: `npm pack` (its prepack copies the protos
// and writes the .d.ts), the tarball installed into a scratch project in a temporary
// directory (`npm install --offline`: its dependencies come from the npm cache that
// `npm ci` filled), then the agent and the client of docs/agents.md and docs/clients.md,
// importing 'podium-client', run from there against a live Podium; `require` and a
// TypeScript program (against the shipped declarations) work too.

import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';

import { Podium, REPO } from './support/podium.js';

const run = promisify(execFile);
const NODE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const EXAMPLES = path.join(REPO, 'docs', 'examples', 'node');
const VERSION = JSON.parse(readFileSync(path.join(NODE_DIR, 'package.json'), 'utf8')).version;

/**
 * @param {string} file
 * @param {string[]} args
 * @param {string} cwd
 */
async function node(file, args, cwd) {
  const { stdout } = await run(process.execPath, [file, ...args], { cwd, timeout: 60_000 });
  return stdout;
}

describe('the packed package podium-client', { timeout: 300_000 }, () => {
  /** @type {string} */ let dir;
  /** @type {string} */ let app;
  /** @type {{ files: { path: string }[], filename: string }} */ let packed;
  /** @type {Podium} */ let podium;

  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'podium-node-package-'));
    const [pack, server] = await Promise.all([
      run('npm', ['pack', '--json', '--loglevel=error', '--pack-destination', dir], {
        cwd: NODE_DIR,
        timeout: 120_000,
      }),
      Podium.start(),
    ]);
    podium = server;
    packed = JSON.parse(pack.stdout.slice(pack.stdout.indexOf('[')))[0];
    app = path.join(dir, 'app');
    mkdirSync(app);
    const dependency = `file:${path.join(dir, packed.filename)}`;
    writeFileSync(
      path.join(app, 'package.json'),
      JSON.stringify({ name: 'scratch', private: true, type: 'module', dependencies: { 'podium-client': dependency } }),
    );
    // Offline from the npm cache when it holds the registry metadata of the
    // dependencies; `npm ci` caches only their tarballs, so the first time (or on a fresh
    // machine) the metadata comes from the registry, tarballs still from the cache.
    const install = ['install', '--no-audit', '--no-fund', '--loglevel=error'];
    try {
      await run('npm', [...install, '--offline'], { cwd: app, timeout: 120_000 });
    } catch {
      await run('npm', [...install, '--prefer-offline'], { cwd: app, timeout: 120_000 });
    }
    for (const file of ['shout_agent.mjs', 'shout_client.mjs']) {
      copyFileSync(path.join(EXAMPLES, file), path.join(app, file));
    }
  });

  after(async () => {
    await podium?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('holds the sources, the contracts and the declarations, and nothing of the checkout', () => {
    const files = packed.files.map((f) => f.path);
    assert.equal(packed.filename, `podium-client-${VERSION}.tgz`);
    for (const file of [
      'src/index.js',
      'protos/podium/agent/v1/agent.proto',
      'protos/podium/orchestration/v1/orchestration_service.proto',
      'types/index.d.ts',
      'types/agent.d.ts',
      'types/client.d.ts',
      'types/errors.d.ts',
    ]) {
      assert.ok(files.includes(file), `${file} missing from ${files.join(' ')}`);
    }
    assert.ok(!files.some((f) => f.startsWith('test/') || f.startsWith('node_modules/')), files.join(' '));
    // postpack removed the copies: the checkout keeps reading the repository's protos/.
    assert.ok(!existsSync(path.join(NODE_DIR, 'protos')));
    assert.ok(!existsSync(path.join(NODE_DIR, 'types')));
  });

  it('runs the documented agent and client from the installed package', async () => {
    const agent = spawn(process.execPath, ['shout_agent.mjs', '127.0.0.1:0'], {
      cwd: app,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      const [line] = await Promise.race([
        readline.createInterface({ input: /** @type {any} */ (agent.stdout) })[Symbol.asyncIterator]().next().then((r) => [r.value]),
        new Promise((_, reject) => agent.once('exit', (code) => reject(new Error(`agent exited (${code})`)))),
      ]);
      const { address } = JSON.parse(line);
      const output = await node('shout_client.mjs', [podium.address, address], app);
      const [result, refusal] = output.trim().split('\n').map((l) => JSON.parse(l));
      assert.deepEqual(result, { state: 'STATE_SUCCEEDED', output: { loud: { text: 'HELLO!' } } });
      assert.deepEqual(refusal, { refused: 'NotFoundError', reason: 'RUN_NOT_FOUND' });
    } finally {
      agent.kill('SIGTERM');
    }
  });

  it('loads with require() too, with the contracts of the package', async () => {
    const script =
      "const p = require('podium-client'); const { PROTOS_DIR } = require('podium-client');" +
      'console.log(JSON.stringify([typeof p.PodiumClient, typeof p.Agent, typeof p.ValidationError, PROTOS_DIR]))';
    const { stdout } = await run(process.execPath, ['--input-type=commonjs', '-e', script], { cwd: app });
    const [client, agent, error, protos] = JSON.parse(stdout);
    assert.deepEqual([client, agent, error], ['function', 'function', 'function']);
    assert.equal(protos, path.join(app, 'node_modules', 'podium-client', 'protos'));
  });

  it('type-checks a TypeScript program against the shipped declarations', async () => {
    const usage = readFileSync(path.join(NODE_DIR, 'test', 'types', 'usage.ts'), 'utf8');
    assert.ok(usage.includes("from '../../src/index.js'"));
    writeFileSync(path.join(app, 'usage.ts'), usage.replace("'../../src/index.js'", "'podium-client'"));
    writeFileSync(
      path.join(app, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          noEmit: true,
          module: 'nodenext',
          moduleResolution: 'nodenext',
          target: 'es2022',
          strict: true,
          types: ['node'],
          typeRoots: [path.join(NODE_DIR, 'node_modules', '@types')],
        },
        files: ['usage.ts'],
      }),
    );
    const tsc = path.join(NODE_DIR, 'node_modules', 'typescript', 'bin', 'tsc');
    await node(tsc, ['-p', 'tsconfig.json'], app);
  });
});
