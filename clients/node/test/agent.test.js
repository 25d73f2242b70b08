// The Node agent SDK against a live Podium: the example agent is registered with
// RegisterAgent and executes steps of real runs started by the Node client.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';

import { createExampleAgent } from '../examples/agent.js';
import { Agent, agentPackage, PodiumClient } from '../src/index.js';
import { Podium } from './support/podium.js';
import { collect, assertWellFormedLog } from './support/events.js';

describe('Node agent served by the SDK, driven by a live Podium', () => {
  /** @type {Podium} */ let podium;
  /** @type {PodiumClient} */ let client;
  /** @type {import('../src/agent.js').AgentServer} */ let server;
  /** @type {Array<import('../src/agent.js').Task>} */ const cancelled = [];
  /** @type {(task: import('../src/agent.js').Task) => void} */ let onCancelled = () => {};
  const agent = createExampleAgent('node-text', {
    onCancel: (task) => {
      cancelled.push(task);
      onCancelled(task);
    },
  });

  before(async () => {
    podium = await Podium.start();
    client = new PodiumClient(podium.address);
    server = await agent.serve('127.0.0.1:0');
    const registered = await client.registerAgent({
      name: 'node-text',
      endpoint: server.address,
      skills: ['echo', 'uppercase', 'wait'],
      max_concurrency: 16,
    });
    assert.equal(registered.source, 'SOURCE_REGISTERED');
  });

  after(async () => {
    client?.close();
    await server?.stop(0);
    await podium?.stop();
  });

  it('answers GetAgentCard and grpc.health.v1.Health', async () => {
    const stub = new (agentPackage().AgentService)(server.address, grpc.credentials.createInsecure());
    const response = await new Promise((resolve, reject) =>
      stub.GetAgentCard({}, (/** @type {any} */ e, /** @type {any} */ r) => (e ? reject(e) : resolve(r))),
    );
    stub.close();
    assert.equal(response.card.name, 'node-text');
    assert.equal(response.card.protocol_version, 'podium.agent.v1');
    assert.deepEqual(response.card.skills.map((/** @type {any} */ s) => s.id), ['echo', 'uppercase', 'wait']);
    assert.equal(response.card.max_concurrency, 16);

    const health = /** @type {any} */ (
      grpc.loadPackageDefinition(protoLoader.loadSync(healthProtoPath, { keepCase: true, enums: String }))
    ).grpc.health.v1;
    const healthStub = new health.Health(server.address, grpc.credentials.createInsecure());
    for (const service of ['', 'podium.agent.v1.AgentService']) {
      const status = await new Promise((resolve, reject) =>
        healthStub.Check({ service }, (/** @type {any} */ e, /** @type {any} */ r) => (e ? reject(e) : resolve(r))),
      );
      assert.deepEqual(status, { status: 'SERVING' });
    }
    healthStub.close();
  });

  it('executes fanned-out steps by skill and by name, streaming progress and chunks', async () => {
    await client.createDefinition({
      name: 'node-fan-out',
      execution: { concurrency: { max_parallel: 3 } },
      steps: [
        { id: 'shout-a', skill: 'uppercase', input: { text: '${run.input.a}' } },
        { id: 'shout-b', skill: 'uppercase', input: { text: '${run.input.b}' } },
        { id: 'shout-c', skill: 'uppercase', input: { text: 'third one' } },
        {
          id: 'join',
          agent: 'node-text',
          depends_on: ['shout-a', 'shout-b', 'shout-c'],
          input: {
            texts: ['${steps.shout-a.output.text}', '${steps.shout-b.output.text}', '${steps.shout-c.output.text}'],
            words: '${steps.shout-a.output.words}',
          },
        },
      ],
    });
    const started = await client.startRun({
      definition: { name: 'node-fan-out' },
      input: { a: 'hello node', b: 'from podium' },
      labels: { suite: 'node' },
    });
    assert.equal(started.state, 'STATE_RUNNING');
    const events = await collect(client.watchRun(started.id));
    assertWellFormedLog(events, 'TYPE_RUN_COMPLETED');
    const types = events.map((e) => e.type);
    assert.ok(types.includes('TYPE_STEP_OUTPUT_CHUNK'), 'output chunks of the Node agent are relayed');
    assert.ok(types.includes('TYPE_STEP_PROGRESS'), 'progress of the Node agent is relayed');
    const completed = events.filter((e) => e.type === 'TYPE_STEP_COMPLETED').map((e) => e.step_id);
    assert.deepEqual(completed.slice().sort(), ['join', 'shout-a', 'shout-b', 'shout-c']);
    assert.equal(completed.at(-1), 'join');

    const run = await client.getRun(started.id);
    assert.equal(run.state, 'STATE_SUCCEEDED');
    const steps = Object.fromEntries(run.steps.map((/** @type {any} */ s) => [s.step_id, s]));
    assert.deepEqual(steps['shout-a'].output, { text: 'HELLO NODE', words: 2 });
    assert.equal(steps['shout-a'].agent, 'node-text');
    assert.deepEqual(run.output, {
      join: { echo: { texts: ['HELLO NODE', 'FROM PODIUM', 'THIRD ONE'], words: 2 } },
    });
    // Usage recorded by the agent (one "token" per word) is accounted on the run.
    assert.equal(run.usage.input_tokens, 6);
  });

  it('ends a step with the TaskFailed code; not retryable fails the run at once', async () => {
    const started = await client.startRun({
      plan: {
        name: 'node-bad-skill',
        error_handling: { on_step_failure: { max_attempts: 3 } },
        steps: [{ id: 'bad', agent: 'node-text', input: { skill: 'nope' } }],
      },
    });
    const events = await collect(client.watchRun(started.id));
    assertWellFormedLog(events, 'TYPE_RUN_FAILED');
    const run = await client.getRun(started.id);
    assert.equal(run.state, 'STATE_FAILED');
    assert.equal(run.steps[0].error.code, 'UNKNOWN_SKILL');
    assert.equal(run.steps[0].attempt, 1, 'a non-retryable error is not retried');
  });

  it('gives each task a step credential with which it starts child runs of its step', async () => {
    /** @type {string[]} */ const seen = [];
    const parent = new Agent({
      name: 'node-parent',
      skills: [{ id: 'spawn' }],
      handler: async (task) => {
        seen.push(task.credential.slice(0, 4), Object.keys(task).join(','));
        const podium = task.podium();
        try {
          const child = await podium.startRun({
            plan: { name: 'node-child', steps: [{ id: 'e', skill: 'echo', input: { n: 1 } }] },
          });
          return { child: child.id };
        } finally {
          podium.close();
        }
      },
    });
    const parentServer = await parent.serve('127.0.0.1:0');
    try {
      await client.registerAgent({ name: 'node-parent', endpoint: parentServer.address, skills: ['spawn'] });
      const started = await client.startRun({
        plan: { name: 'node-spawner', steps: [{ id: 'p', agent: 'node-parent' }] },
      });
      const events = await collect(client.watchRun(started.id));
      assertWellFormedLog(events, 'TYPE_RUN_COMPLETED');
      const run = await client.getRun(started.id);
      const childId = /** @type {string} */ (run.steps[0].output?.child);
      const child = await client.getRun(childId);
      assert.equal(child.parent_run_id, started.id);
      assert.equal(child.parent_step_id, 'p');
      assert.equal(seen[0], 'pds_');
      assert.ok(!seen[1].split(',').includes('credential'), 'the credential is not an enumerable field');
    } finally {
      await parentServer.stop(0);
    }
  });

  it('cancels the running task when the run is cancelled', async () => {
    const taskCancelled = new Promise((resolve) => {
      onCancelled = resolve;
    });
    const started = await client.startRun({
      plan: { name: 'node-cancel', steps: [{ id: 'slow', skill: 'wait', input: { seconds: 600 } }] },
    });
    const events = [];
    let cancelSent = false;
    for await (const event of client.watchRun(started.id)) {
      events.push(event);
      // The agent's first progress: the task is running inside the handler.
      if (event.type === 'TYPE_STEP_PROGRESS' && !cancelSent) {
        cancelSent = true;
        await client.cancelRun(started.id, 'test');
      }
    }
    assertWellFormedLog(events, 'TYPE_RUN_CANCELLED');
    const task = /** @type {import('../src/agent.js').Task} */ (await taskCancelled);
    assert.equal(task.runId, started.id);
    assert.equal(task.stepId, 'slow');
    assert.ok(task.signal.aborted);
    assert.equal((await client.getRun(started.id)).state, 'STATE_CANCELLED');
  });
});
