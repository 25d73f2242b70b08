// The Node client against a live Podium and the Python example agents
// (python -m podium.client.examples.agents): definitions, runs, WatchRun with resume.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import * as grpc from '@grpc/grpc-js';

import {
  FailedPreconditionError,
  NotFoundError,
  PodiumClient,
  PodiumError,
  ValidationError,
} from '../src/index.js';
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
    // Idempotent by content; forceNewVersion stores a new version anyway.
    assert.equal((await client.createDefinition(RESEARCH)).version, 1);
    assert.equal((await client.createDefinition(RESEARCH, { forceNewVersion: true })).version, 2);

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

    // Views: BASIC leaves the payloads out; GetRunPayload reads any of them whole.
    const basic = await client.getRun(started.id, { view: 'RUN_VIEW_BASIC' });
    assert.equal(basic.input, null);
    assert.equal(basic.steps.find((/** @type {any} */ s) => s.step_id === 'summarize').output, null);
    assert.deepEqual(basic.omitted, []);
    assert.deepEqual(await client.getRunPayload(started.id, 'PAYLOAD_INPUT'), { topic: 'tea' });
    assert.deepEqual(
      await client.getRunPayload(started.id, 'PAYLOAD_OUTPUT', { stepId: 'summarize' }),
      summary.output,
    );
    const listed = await client.listRuns({ pageSize: 10 });
    assert.ok(listed.runs.some((/** @type {any} */ r) => r.id === started.id));
    assert.ok(listed.runs.every((/** @type {any} */ r) => r.input === null), 'BASIC by default');
    const full = await client.listRuns({ pageSize: 10, view: 'RUN_VIEW_FULL' });
    assert.deepEqual(full.runs.find((/** @type {any} */ r) => r.id === started.id).input, { topic: 'tea' });
  });

  it('reads usage grouped by agent and model, and refuses a backwards range', async () => {
    await client.createDefinition({
      name: 'node-usage',
      steps: [
        {
          id: 'call',
          agent: 'echo',
          input: { usage: { input_tokens: 30, output_tokens: 12, cost_usd: 0.5, model: 'node-model' } },
        },
      ],
    });
    const started = await client.startRun({ definition: { name: 'node-usage' } });
    await collect(client.watchRun(started.id));
    const rows = await client.getUsage({ definitionName: 'node-usage', groupBy: ['agent', 'model'] });
    assert.equal(rows.length, 1);
    assert.equal(rows[0].agent, 'echo');
    assert.equal(rows[0].model, 'node-model');
    assert.equal(rows[0].definition_name, '', 'not grouped by definition');
    assert.deepEqual(
      [rows[0].usage.input_tokens, rows[0].usage.output_tokens, rows[0].usage.cost_usd],
      [30, 12, 0.5],
    );
    assert.equal(rows[0].step_attempts, 1);
    // A range that ends before now: nothing of this test's run.
    const before = await client.getUsage({
      definitionName: 'node-usage',
      endTime: new Date(Date.now() - 3_600_000),
    });
    assert.deepEqual(before, []);
    await assert.rejects(
      client.getUsage({ startTime: new Date(), endTime: new Date(Date.now() - 60_000) }),
      (error) => {
        assert.ok(error instanceof ValidationError);
        assert.deepEqual(error.fieldViolations.map((v) => v.field), ['start_time']);
        return true;
      },
    );
  });

  it('creates, lists, pauses, resumes and deletes a schedule', async () => {
    const created = await client.createSchedule({
      definition_name: 'node-research',
      cron: '0 9 * * MON-FRI',
      time_zone: 'Europe/Paris',
      overlap_policy: 'OVERLAP_POLICY_BUFFER_ONE',
      input: { topic: 'tea' },
    });
    assert.equal(created.upcoming_fire_times.length, 5);
    assert.deepEqual(created.input, { topic: 'tea' });
    assert.equal((await client.getSchedule(created.id)).overlap_policy, 'OVERLAP_POLICY_BUFFER_ONE');
    const page = await client.listSchedules({ definitionName: 'node-research' });
    assert.deepEqual(page.schedules.map((/** @type {any} */ s) => s.id), [created.id]);
    assert.equal((await client.pauseSchedule(created.id)).paused, true);
    assert.equal((await client.resumeSchedule(created.id)).paused, false);
    await client.deleteSchedule(created.id);
    await assert.rejects(client.getSchedule(created.id), NotFoundError);
    await assert.rejects(
      client.createSchedule({ definition_name: 'node-research', cron: '61 * * * *' }),
      (/** @type {any} */ error) =>
        error instanceof ValidationError && error.fieldViolations.some((v) => v.field === 'schedule.cron'),
    );
  });

  it('reads and updates the routing policy', async () => {
    const set = await client.updateRoutingPolicy({ denied_skills: ['shell'] });
    assert.deepEqual(set.denied_skills, ['shell']);
    assert.deepEqual(set.denied_agents, []);
    const read = await client.getRoutingPolicy();
    assert.deepEqual(read.denied_skills, ['shell']);
    await assert.rejects(
      client.updateRoutingPolicy({ denied_agents: ['Not A Name'] }),
      (/** @type {any} */ error) =>
        error instanceof ValidationError &&
        error.fieldViolations.some((v) => v.field === 'policy.denied_agents[0]'),
    );
    await client.updateRoutingPolicy({ denied_skills: [] });
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

  it('rejects an invalid definition with a ValidationError naming every field', async () => {
    const invalid = {
      name: 'node-invalid',
      steps: [
        { id: 'a', agent: 'echo' },
        { id: 'b', agent: 'echo', depends_on: ['nope'] },
        { id: 'c', agent: 'echo', depends_on: ['a', 'c'] },
      ],
    };
    // Functions, not promises: a second promise rejecting before it is awaited would be
    // an unhandled rejection.
    for (const attempt of [() => client.createDefinition(invalid), () => client.validateDefinition(invalid)]) {
      await assert.rejects(attempt, (/** @type {any} */ error) => {
        assert.ok(error instanceof ValidationError, `a ValidationError, not ${error?.name}`);
        assert.ok(error instanceof PodiumError);
        assert.ok(error instanceof Error);
        assert.equal(error.name, 'ValidationError');
        assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
        assert.equal(error.codeName, 'INVALID_ARGUMENT');
        assert.match(error.message, /^definition 'node-invalid' is invalid: 2 problem\(s\)$/);
        assert.equal(error.details, error.message, 'details: the grpc-js name of the message');
        assert.equal(error.reason, 'INVALID_DEFINITION');
        assert.equal(error.domain, 'podium.orchestration.v1');
        assert.deepEqual(
          error.fieldViolations.map((/** @type {any} */ v) => v.field),
          ['steps[1].depends_on[0]', 'steps[2].depends_on[1]'],
        );
        assert.match(error.fieldViolations[0].description, /unknown step 'nope'/);
        assert.equal(error.fieldViolations[0].reason, 'UNKNOWN_DEPENDENCY');
        assert.match(error.describe(), /^INVALID_ARGUMENT: .* \[INVALID_DEFINITION\]\n  - steps\[1\]\.depends_on\[0\]: /);
        // The grpc-js error is kept, trailers and all.
        assert.equal(error.cause.code, grpc.status.INVALID_ARGUMENT);
        assert.equal(error.cause.metadata.get('grpc-status-details-bin').length, 1);
        return true;
      });
    }
    // An inline plan's paths start at the request field.
    await assert.rejects(
      client.startRun({ plan: { name: 'node-plan', steps: [{ id: 'a', agent: 'echo', depends_on: ['z'] }] } }),
      (/** @type {any} */ error) => {
        assert.ok(error instanceof ValidationError);
        assert.deepEqual(error.fieldViolations.map((/** @type {any} */ v) => v.field), ['plan.steps[0].depends_on[0]']);
        return true;
      },
    );
  });

  it('sends an event that wakes a waiting step once, idempotent by event id', async () => {
    const run = await client.startRun({
      plan: { steps: [{ id: 'reply', wait_for_event: { name: 'node.reply', key: '${run.input.ticket}' } }] },
      input: { ticket: 'N-1' },
    });
    for (;;) {
      const step = (await client.getRun(run.id)).steps.find((s) => s.step_id === 'reply');
      if (step.state === 'STATE_WAITING_RETRY') break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const first = await client.sendEvent('node.reply', { eventId: 'node-e1', key: 'N-1', payload: { ok: true } });
    assert.equal(first.duplicate, false);
    assert.equal(first.delivered_steps, 1);
    const again = await client.sendEvent('node.reply', { eventId: 'node-e1', key: 'N-1' });
    assert.equal(again.duplicate, true);
    for await (const event of client.watchRun(run.id)) void event;
    const done = await client.getRun(run.id);
    assert.equal(done.state, 'STATE_SUCCEEDED');
    assert.deepEqual(done.steps[0].output.payload, { ok: true });
    await assert.rejects(client.sendEvent('', { eventId: '' }), ValidationError);
  });

  it('rejects an unknown run with a NotFoundError, from unary calls and watchRun', async () => {
    const unknown = '00000000-0000-0000-0000-000000000000';
    const expected = (/** @type {any} */ error) => {
      assert.ok(error instanceof NotFoundError, `a NotFoundError, not ${error?.name}`);
      assert.equal(error.code, grpc.status.NOT_FOUND);
      assert.equal(error.codeName, 'NOT_FOUND');
      assert.equal(error.reason, 'RUN_NOT_FOUND');
      assert.equal(error.domain, 'podium.orchestration.v1');
      assert.deepEqual(error.metadata, { run_id: unknown });
      assert.deepEqual(error.fieldViolations, []);
      assert.ok(error.cause, 'the grpc-js error is the cause');
      return true;
    };
    await assert.rejects(client.getRun(unknown), expected);
    await assert.rejects(client.cancelRun(unknown), expected);
    /** @type {unknown[]} */
    const reconnects = [];
    await assert.rejects(collect(client.watchRun(unknown, { onReconnect: (i) => reconnects.push(i) })), expected);
    assert.deepEqual(reconnects, [], 'NOT_FOUND is not retried');
  });

  it('rejects a second decision on an approval with a FailedPreconditionError', async () => {
    const started = await client.startRun({
      plan: {
        name: 'node-checkpoint',
        steps: [{ id: 'gate', agent: 'echo', input: { text: 'hi' }, checkpoint: { when: 'WHEN_BEFORE' } }],
      },
    });
    const events = [];
    for await (const event of client.watchRun(started.id)) {
      events.push(event);
      if (event.type !== 'TYPE_STEP_AWAITING_APPROVAL') continue;
      const { approvals } = await client.listApprovals({ runId: started.id });
      assert.equal(approvals.length, 1);
      const [approval] = approvals;
      const decided = await client.decideApproval(approval.id, 'DECISION_APPROVE', { actor: 'node-test' });
      assert.equal(decided.state, 'STATE_DECIDED');
      assert.equal(decided.decision, 'DECISION_APPROVE');
      await assert.rejects(
        client.decideApproval(approval.id, 'DECISION_REJECT', { actor: 'node-test' }),
        (/** @type {any} */ error) => {
          assert.ok(error instanceof FailedPreconditionError, `a FailedPreconditionError, not ${error?.name}`);
          assert.equal(error.code, grpc.status.FAILED_PRECONDITION);
          assert.equal(error.codeName, 'FAILED_PRECONDITION');
          assert.equal(error.reason, 'APPROVAL_NOT_PENDING');
          assert.deepEqual(error.metadata, { approval_id: approval.id, state: 'decided' });
          assert.match(error.message, /is already decided \(approve by node-test\)$/);
          return true;
        },
      );
    }
    assertWellFormedLog(events, 'TYPE_RUN_COMPLETED');
    assert.ok(events.some((e) => e.type === 'TYPE_STEP_AWAITING_APPROVAL'), 'the step waited for the approval');
    assert.equal((await client.getRun(started.id)).state, 'STATE_SUCCEEDED');
  });

  it('maps a status without details to its class (an aborted call is CANCELLED)', async () => {
    const controller = new AbortController();
    const pending = client.getRun('00000000-0000-0000-0000-000000000000', { signal: controller.signal });
    controller.abort();
    await assert.rejects(pending, (/** @type {any} */ error) => {
      assert.ok(error instanceof PodiumError);
      assert.equal(error.codeName, 'CANCELLED');
      assert.equal(error.reason, '');
      return true;
    });
  });
});
