/**
 * Test harness: a real `podium serve` process and the Python example agents, started
 * from the repository's virtualenv (`make .venv/.installed`).
 *
 * Database: with `PODIUM_TEST_DATABASE_URL` (a superuser URL), each Podium gets a fresh
 * database created by `database.py` and dropped at the end; without it, Podium starts its
 * embedded PostgreSQL in a temporary `PODIUM_DATA_DIR`. Readiness: Podium logs JSON on
 * stderr (`PODIUM_LOG_FORMAT=json`); the line `{"message": "Podium serving", "address":
 * ...}` comes once the database is migrated and the Health service is SERVING, and
 * carries the real port (the harness asks for port 0).
 */

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '..', '..', '..', '..');
const VENV_BIN = process.env.PODIUM_VENV_BIN || path.join(REPO, '.venv', 'bin');
export const PODIUM = path.join(VENV_BIN, 'podium');
export const PYTHON = path.join(VENV_BIN, 'python');
const STARTUP_TIMEOUT_MS = 180_000;

/**
 * Wait for a line of `stream` matching `predicate`; reject when the process exits first.
 *
 * @param {import('node:child_process').ChildProcess} child
 * @param {NodeJS.ReadableStream} stream
 * @param {(line: string) => any} predicate returns a truthy value to resolve with
 * @param {string[]} lines every line read is appended here (diagnostics)
 * @param {string} what
 * @returns {Promise<any>}
 */
function waitForLine(child, stream, predicate, lines, what) {
  return new Promise((resolve, reject) => {
    const reader = readline.createInterface({ input: stream });
    let done = false;
    const timer = setTimeout(() => finish(new Error(`no ${what} within ${STARTUP_TIMEOUT_MS} ms:\n${lines.join('\n')}`)), STARTUP_TIMEOUT_MS);
    /** @param {Error | null} error @param {any} [value] */
    function finish(error, value) {
      if (done) return;
      done = true;
      clearTimeout(timer);
      child.off('exit', onExit);
      if (error) reject(error);
      else resolve(value);
    }
    /** @param {number | null} code */
    function onExit(code) {
      finish(new Error(`${what}: process exited (${code}) first:\n${lines.join('\n')}`));
    }
    child.on('exit', onExit);
    reader.on('line', (line) => {
      lines.push(line);
      if (lines.length > 2000) lines.splice(0, 1000);
      if (done) return;
      const value = predicate(line);
      if (value) finish(null, value);
    });
  });
}

/** @param {import('node:child_process').ChildProcess} child */
function stopProcess(child, timeoutMs = 60_000) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
    child.kill('SIGTERM');
  });
}

/** A running `podium serve` child process. */
export class Podium {
  /** @type {import('node:child_process').ChildProcess | null} */
  child = null;
  /** Every stderr line of the current process (JSON logs). */
  /** @type {string[]} */
  logs = [];
  address = '';

  /** @param {{ env: Record<string, string>, cleanup: () => void }} setup */
  constructor(setup) {
    this.env = setup.env;
    this.cleanup = setup.cleanup;
  }

  /**
   * Start a Podium on a fresh database; `extraArgs` are `podium serve` flags.
   *
   * @param {string[]} [extraArgs]
   */
  static async start(extraArgs = []) {
    // The test agents listen on loopback, which the outbound guard refuses unless allowed.
    /** @type {Record<string, string>} */
    const env = {
      PODIUM_LOG_FORMAT: 'json',
      PODIUM_LOG_LEVEL: 'info',
      PODIUM_AGENT_ALLOWED_NETWORKS: 'loopback',
      // Tests call without keys; the auth test passes `--auth required` (the flag wins).
      PODIUM_AUTH: 'disabled',
    };
    let cleanup = () => {};
    const server = process.env.PODIUM_TEST_DATABASE_URL;
    if (server) {
      const url = execFileSync(PYTHON, [path.join(HERE, 'database.py'), 'create', server], {
        encoding: 'utf8',
      }).trim();
      env.PODIUM_DATABASE_URL = url;
      cleanup = () => execFileSync(PYTHON, [path.join(HERE, 'database.py'), 'drop', url]);
    } else {
      const dataDir = mkdtempSync(path.join(tmpdir(), 'podium-node-test-'));
      env.PODIUM_DATA_DIR = dataDir;
      env.PODIUM_DATABASE_URL = '';
      cleanup = () => rmSync(dataDir, { recursive: true, force: true });
    }
    const podium = new Podium({ env, cleanup });
    try {
      await podium.#spawn('127.0.0.1:0', extraArgs);
    } catch (error) {
      cleanup();
      throw error;
    }
    return podium;
  }

  /**
   * @param {string} listenAddress
   * @param {string[]} extraArgs
   */
  async #spawn(listenAddress, extraArgs) {
    this.extraArgs = extraArgs;
    this.logs = [];
    const child = spawn(PODIUM, ['serve', '--listen-address', listenAddress, ...extraArgs], {
      env: { ...process.env, ...this.env },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    this.child = child;
    const ready = await waitForLine(
      child,
      /** @type {NodeJS.ReadableStream} */ (child.stderr),
      (line) => {
        try {
          const entry = JSON.parse(line);
          return entry.message === 'Podium serving' ? entry : null;
        } catch {
          return null;
        }
      },
      this.logs,
      '"Podium serving" log line',
    );
    this.address = ready.address;
  }

  /**
   * Make an API key with `podium keys create` (straight in the database; needs
   * `PODIUM_TEST_DATABASE_URL`) and return it.
   *
   * @param {string} org
   * @param {string} role
   */
  createKey(org, role) {
    return execFileSync(PODIUM, ['keys', 'create', '--org', org, '--role', role], {
      env: { ...process.env, ...this.env },
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
  }

  /** SIGTERM the server and start it again on the same address and database. */
  async restart() {
    await stopProcess(/** @type {any} */ (this.child));
    await this.#spawn(this.address, this.extraArgs ?? []);
  }

  /** SIGTERM the server, wait for it, and drop its database (or data directory). */
  async stop() {
    if (this.child) await stopProcess(this.child);
    this.child = null;
    this.cleanup();
  }
}

/**
 * The Python example agents (`python -m podium.client.examples.agents`), each on a free
 * port; `addresses` maps agent name -> `host:port`.
 */
export class PythonAgents {
  /**
   * @param {import('node:child_process').ChildProcess} child
   * @param {Record<string, string>} addresses
   */
  constructor(child, addresses) {
    this.child = child;
    this.addresses = addresses;
  }

  /** @param {string[]} names e.g. `["echo", "summarizer"]` */
  static async start(names) {
    const child = spawn(
      PYTHON,
      ['-m', 'podium.client.examples.agents', '--only', names.join(',')],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    /** @type {string[]} */
    const lines = [];
    child.stderr?.on('data', (chunk) => lines.push(String(chunk)));
    const addresses = await waitForLine(
      child,
      /** @type {NodeJS.ReadableStream} */ (child.stdout),
      (line) => (line.startsWith('{') ? JSON.parse(line) : null),
      lines,
      'Python example agents addresses',
    );
    return new PythonAgents(child, addresses);
  }

  async stop() {
    await stopProcess(this.child);
  }
}
