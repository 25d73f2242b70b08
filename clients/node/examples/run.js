#!/usr/bin/env node
/**
 * Start a Podium run and print its progress until it ends (the Node twin of
 * `podium runs start NAME --wait`).
 *
 *     node examples/run.js --address 127.0.0.1:50051 --definition demo-research \
 *         --input '{"topic": "tea", "language": "fr"}'
 *     node examples/run.js --plan plan.json --input '{"text": "hello"}'
 *
 * `--plan` is a JSON file holding a `Definition` message (proto field names, enum names
 * in full, step inputs as plain objects), run inline without being stored. Prints one
 * line per event, then the run's state and output. Exit code: 0 when the run
 * succeeded, 4 when it did not, 1 when Podium refused the request, 2 for bad usage.
 */

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import { PodiumClient } from '../src/client.js';
import { PodiumError } from '../src/errors.js';

/** @param {any} event */
function describe(event) {
  const parts = [String(event.sequence).padStart(4), event.type.replace(/^TYPE_/, '').toLowerCase()];
  if (event.step_id) parts.push(event.step_id);
  if (event.progress) {
    const fraction = event.progress.fraction >= 0 ? ` ${Math.round(event.progress.fraction * 100)}%` : '';
    parts.push(`${event.progress.message}${fraction}`);
  }
  if (event.output_chunk) parts.push(JSON.stringify(event.output_chunk.text));
  if (event.error) parts.push(`${event.error.code}: ${event.error.message}`);
  return parts.join('  ');
}

async function main() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        address: { type: 'string', default: process.env.PODIUM_ADDRESS || '127.0.0.1:50051' },
        definition: { type: 'string' },
        version: { type: 'string', default: '0' },
        plan: { type: 'string' },
        input: { type: 'string', default: '{}' },
      },
    }));
    if (!values.definition === !values.plan) throw new Error('give --definition NAME or --plan FILE');
  } catch (error) {
    console.error(`usage: node examples/run.js (--definition NAME | --plan FILE) [--input JSON] [--address HOST:PORT]\n${/** @type {Error} */ (error).message}`);
    return 2;
  }
  const podium = new PodiumClient(values.address);
  try {
    const input = JSON.parse(values.input);
    const source = values.plan
      ? { plan: JSON.parse(readFileSync(values.plan, 'utf8')) }
      : { definition: { name: values.definition, version: Number(values.version) } };
    const started = await podium.startRun({ ...source, input });
    console.log(`run ${started.id} started`);
    for await (const event of podium.watchRun(started.id, {
      onReconnect: ({ afterSequence }) => console.log(`(reconnecting after event ${afterSequence})`),
    })) {
      console.log(describe(event));
    }
    const run = await podium.getRun(started.id);
    console.log(`run ${run.id}: ${run.state.replace(/^STATE_/, '').toLowerCase()}`);
    if (run.output) console.log(JSON.stringify(run.output, null, 2));
    if (run.error) console.log(`error: ${run.error.code}: ${run.error.message}`);
    return run.state === 'STATE_SUCCEEDED' ? 0 : 4;
  } catch (error) {
    if (!(error instanceof PodiumError)) {
      console.error(/** @type {Error} */ (error).message);
      return 2;
    }
    // e.g. "INVALID_ARGUMENT: plan is invalid: 1 problem(s) [INVALID_DEFINITION]" and a
    // line per field violation.
    console.error(`podium refused: ${error.describe()}`);
    return 1;
  } finally {
    podium.close();
  }
}

process.exitCode = await main();
