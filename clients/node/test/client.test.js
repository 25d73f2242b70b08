// The Node client against a live Podium and the Python example agents
// (python -m podium.client.examples.agents): definitions, runs, WatchRun with resume.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import * as grpc from '@grpc/grpc-js';

import { PodiumClient } from '../src/index.js';
import { Podium, PythonAgents } from './support/podium.js';
import { collect, assertWellFormedLog } from './support/events.js';

const RESEARCH = {
  name: 'node-research',
  description: 'plan -> three searches in parallel -> summary by skill -> translation',
  execution: { concurrency: { max_parallel: 3 } },
  steps: [
    { id: 'plan', agent: 'echo', input: { topic: '${run.input.topic}' } },
    ...['history', 'economics', 'future'].map((angle) => ({
      id: `search-${angle}`,
      agent: 'web-search',
      depends_on: ['plan'],
      input: { query: `${angle} of \${steps.plan.output.echo.topic}`, limit: 2 },
    })),
    {
      id: 'summarize',
      skill: 'summarize',
      depends_on: ['search-history', 'search-economics', 'search-future'],
      input: {
        text: [
          '${steps.search-history.output.results[0]}',
          '${steps.search-economics.output.results[0]}',
          '${steps.search-future.output.results[0]}',
        ],
        max_words: 6,
      },
    },
    {
      id: 'translate',
      agent: 'translator',
      depends_on: ['summarize'],
      input: { text: '${steps.summarize.output.summary}', target: 'fr' },
    },
  ],
};

describe('Node client with the Python example agents', () => {
  /** @type {Podium} */ let podium;
  /** @type {PythonAgents} */ let agents;
  /** @type {PodiumClient} */ let client;

  before(async () => {
    [podium, agents] = await Promise.all([
      Podium.start(),
      PythonAgents.start(['echo', 'web-search', 'summarizer', 'translator']),
    ]);
    client = new PodiumClient(podium.address);
    const skills = { echo: ['echo'], 'web-search': ['search'], summarizer: ['summarize'], translator: ['translate'] };
    for (const [name, address] of Object.entries(agents.addresses)) {
      await client.registerAgent({ name, endpoint: address, skills: skills[/** @type {keyof skills} */ (name)] });
    }
  });

  after(async () => {
    client?.close();
    await agents?.stop();
    await podium?.stop();
  });

  it('runs a fan-out definition to its result and streams every event', async () => {
    const stored = await client.createDefinition(RESEARCH);
    assert.equal(stored.version, 1);
    assert.deepEqual(stored.steps[1].input, { query: 'history of ${steps.plan.output.echo.topic}', limit: 2 });

    const started = await client.startRun({
      definition: { name: 'node-research' },
      input: { topic: 'tea' },
      request_id: 'node-research-1',
    });
    const again = await client.startRun({ definition: { name: 'node-research' }, request_id: 'node-research-1' });
    assert.equal(again.id, started.id, 'request_id makes StartRun idempotent');

    const events = await collect(client.watchRun(started.id));
    assertWellFormedLog(events, 'TYPE_RUN_COMPLETED');
    const summarizerChunks = events.filter((e) => e.type === 'TYPE_STEP_OUTPUT_CHUNK' && e.step_id === 'summarize');
    assert.ok(summarizerChunks.length > 0, 'the Python summarizer streams chunks');

    const run = await client.getRun(started.id);
    assert.equal(run.state, 'STATE_SUCCEEDED');
    assert.equal(run.last_event_sequence, events.at(-1).sequence);
    assert.deepEqual(run.input, { topic: 'tea' });
    const summary = run.steps.find((/** @type {any} */ s) => s.step_id === 'summarize');
    assert.equal(summary.agent, 'summarizer', 'routed by skill');
    assert.deepEqual(run.output, {
      translate: { text: `[fr] ${summary.output.summary}`, target: 'fr' },
    });
    assert.equal(summary.output.sources, 3);
  });

  it('resumes a watch after a given sequence without repeating events', async () => {
    const started = await client.startRun({ definition: { name: 'node-research' }, input: { topic: 'rice' } });
    const all = await collect(client.watchRun(started.id));
    const middle = all[Math.floor(all.length / 2)].sequence;
    const rest = await collect(client.watchRun(started.id, { afterSequence: middle }));
    assertWellFormedLog(rest, 'TYPE_RUN_COMPLETED', middle + 1);
    assert.deepEqual(rest, all.slice(middle));

    const page = await client.listRunEvents(started.id, { afterSequence: 0, pageSize: 3 });
    assert.deepEqual(page.events, all.slice(0, 3));
  });

  it('reconnects a watch across a Podium restart and misses nothing', async () => {
    const started = await client.startRun({
      definition: { name: 'node-research' },
      input: { topic: 'salt' },
      start: false,
    });
    assert.equal(started.state, 'STATE_CREATED');
    const reconnects = [];
    const events = [];
    const watcher = client.watchRun(started.id, {
      onReconnect: (info) => reconnects.push(info),
      initialBackoffMs: 50,
      maxReconnects: 40,
    });
    for await (const event of watcher) {
      events.push(event);
      if (event.type === 'TYPE_RUN_CREATED') {
        // The stream breaks while the run waits; Podium comes back on the same address.
        await podium.restart();
        await client.continueRun(started.id);
      }
    }
    assert.ok(reconnects.length >= 1, 'the watch reconnected');
    assert.equal(reconnects[0].afterSequence, 1);
    assertWellFormedLog(events, 'TYPE_RUN_COMPLETED');
    assert.equal((await client.getRun(started.id)).state, 'STATE_SUCCEEDED');
  });

  it('rejects an invalid definition with INVALID_ARGUMENT and an unknown run with NOT_FOUND', async () => {
    await assert.rejects(
      client.createDefinition({
        name: 'node-loop',
        steps: [
          { id: 'a', agent: 'echo', depends_on: ['b'] },
          { id: 'b', agent: 'echo', depends_on: ['a'] },
        ],
      }),
      (/** @type {any} */ error) => {
        assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
        assert.match(error.details, /node-loop.*invalid/);
        // The field violations travel as google.rpc.Status details (BadRequest).
        assert.equal(error.metadata.get('grpc-status-details-bin').length, 1);
        return true;
      },
    );
    await assert.rejects(client.getRun('00000000-0000-0000-0000-000000000000'), { code: grpc.status.NOT_FOUND });
  });
});
