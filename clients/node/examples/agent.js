#!/usr/bin/env node
/**
 * An example Podium agent in Node.js, with three skills:
 *
 * - `echo`: returns `{echo: input}` (the Python example `echo` agent's contract), after
 *   sleeping `input.delay` seconds when given;
 * - `uppercase`: upper-cases `input.text`, streaming progress and one output chunk per
 *   word, recording usage (one "token" per word); returns `{text, words}`;
 * - `wait`: sleeps `input.seconds` (default 1) in ten steps with progress; stops at once
 *   when Podium cancels the call; returns `{waited: seconds}`.
 *
 * A step routed by skill runs that skill; a step routed by agent name runs
 * `input.skill`, or `echo`. Run it:
 *
 *     node examples/agent.js [--address 127.0.0.1:0] [--name node-text]
 *         [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]
 *
 * With `--tls-cert`/`--tls-key` it serves TLS only (register it as `grpcs://HOST:PORT`);
 * `--tls-client-ca` also requires Podium's client certificate (mTLS).
 * It prints `{"name": ..., "address": ...}` once serving, then serves until Ctrl-C.
 * Register it: `podium agents register node-text ADDRESS --skill echo --skill uppercase`.
 */

import { setTimeout as sleep } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

import { Agent, TaskFailed, agentServerCredentials, runAgent } from '../src/agent.js';

/**
 * @param {import('../src/agent.js').Task} task
 * @param {string} key
 * @param {number} fallback
 */
function seconds(task, key, fallback) {
  const value = task.input[key] ?? fallback;
  if (typeof value !== 'number' || !(value >= 0) || value > 3600) {
    throw new TaskFailed('INVALID_INPUT', `input.${key} must be a number of seconds (0-3600)`, false);
  }
  return value;
}

/** @type {Record<string, (task: import('../src/agent.js').Task) => Promise<import('../src/struct.js').JsonObject>>} */
const SKILLS = {
  async echo(task) {
    const delay = seconds(task, 'delay', 0);
    if (delay) await sleep(delay * 1000, undefined, { signal: task.signal });
    return { echo: task.input };
  },

  async uppercase(task) {
    const text = task.input.text;
    if (typeof text !== 'string') throw new TaskFailed('INVALID_INPUT', 'input.text must be a string', false);
    const words = text.split(/\s+/).filter(Boolean);
    await task.progress('uppercasing', 0);
    for (const [i, word] of words.entries()) {
      await task.outputChunk((i ? ' ' : '') + word.toUpperCase());
    }
    task.usage({ model: 'node-example', inputTokens: words.length, outputTokens: words.length });
    await task.progress('done', 1);
    return { text: text.toUpperCase(), words: words.length };
  },

  async wait(task) {
    const total = seconds(task, 'seconds', 1);
    await task.progress('waiting', 0);
    for (let i = 1; i <= 10; i += 1) {
      await sleep((total * 1000) / 10, undefined, { signal: task.signal });
      await task.progress('waiting', i / 10);
    }
    return { waited: total };
  },
};

/**
 * The example agent (not yet serving).
 *
 * @param {string} [name]
 * @param {{ maxConcurrency?: number, onCancel?: (task: import('../src/agent.js').Task) => void }} [options]
 */
export function createExampleAgent(name = 'node-text', options = {}) {
  return new Agent({
    name,
    version: '0.1.0',
    description: 'Node.js example agent: echo, uppercase and wait skills.',
    skills: [
      { id: 'echo', name: 'Echo', description: 'Return the input as {echo: input}', tags: ['test'] },
      { id: 'uppercase', name: 'Uppercase', description: 'Upper-case input.text', tags: ['text'] },
      { id: 'wait', name: 'Wait', description: 'Sleep input.seconds; cancellable', tags: ['test'] },
    ],
    maxConcurrency: options.maxConcurrency ?? 16,
    onCancel: options.onCancel,
    handler: async (task) => {
      const skill = task.skill || (typeof task.input.skill === 'string' ? task.input.skill : 'echo');
      const run = SKILLS[skill];
      if (!run) throw new TaskFailed('UNKNOWN_SKILL', `no skill ${JSON.stringify(skill)}`, false);
      return run(task);
    },
  });
}

/** Every skill id of the example agent. */
export const EXAMPLE_SKILLS = Object.keys(SKILLS);

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values } = parseArgs({
    options: {
      address: { type: 'string', default: '127.0.0.1:0' },
      name: { type: 'string', default: 'node-text' },
      'tls-cert': { type: 'string' },
      'tls-key': { type: 'string' },
      'tls-client-ca': { type: 'string' },
    },
  });
  const agent = createExampleAgent(values.name);
  const credentials = values['tls-cert']
    ? agentServerCredentials({
        certFile: values['tls-cert'],
        keyFile: values['tls-key'] ?? '',
        clientCaFile: values['tls-client-ca'],
      })
    : undefined;
  await runAgent(agent, values.address, {
    credentials,
    onReady: (server) => console.log(JSON.stringify({ name: agent.name, address: server.address })),
  });
}
