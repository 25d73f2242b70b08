// Conformance scenario tests/conformance/fan-out-approval.json: the Node client with
// the Python example echo agent and the Node example agent.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';


import { createExampleAgent } from '../examples/agent.js';
import { PodiumClient } from '../src/index.js';
import { assertWellFormedLog } from './support/events.js';
import { Podium, PythonAgents, REPO } from './support/podium.js';

const SCENARIO_FILE = path.join(REPO, 'tests', 'conformance', 'fan-out-approval.json');
const scenario = JSON.parse(readFileSync(SCENARIO_FILE, 'utf8'));

/**
 * The scenario with `{impl}` replaced everywhere.
 *
 * @param {string} impl
 */
function instantiate(impl) {
  return JSON.parse(JSON.stringify(scenario).replaceAll('{impl}', impl));
}

describe(`conformance ${scenario.scenario}: Node client`, () => {
  /** @type {Podium} */ let podium;
  /** @type {PythonAgents} */ let python;
  /** @type {import('../src/agent.js').AgentServer} */ let node;
  /** @type {PodiumClient} */ let client;

  before(async () => {
    [podium, python] = await Promise.all([Podium.start(), PythonAgents.start(['echo'])]);
    node = await createExampleAgent('conformance-node').serve('127.0.0.1:0');
    client = new PodiumClient(podium.address);
  });

  after(async () => {
    client?.close();
    await node?.stop(0);
    await python?.stop();
    await podium?.stop();
  });

  for (const impl of ['python', 'node']) {
    describe(`with the ${impl} agent`, () => {
      const s = instantiate(impl);
      /** @type {any} */ let run;
      /** @type {any[]} */ let events = [];
      /** @type {any} */ let decided = null;

      it('registers the agent, stores the definition, runs and watches it to the end', async () => {
        const endpoint = impl === 'python' ? python.addresses.echo : node.address;
        const agent = await client.registerAgent({ name: s.agent.name, endpoint, skills: s.agent.skills });
        assert.equal(agent.name, s.agent.name);

        const definition = structuredClone(s.definition);
        const stored = await client.createDefinition(definition);

        const started = await client.startRun({
          definition: { name: stored.name, version: stored.version },
          input: s.run.input,
          labels: s.run.labels,
        });
        for await (const event of client.watchRun(started.id)) {
          events.push(event);
          if (event.type === 'TYPE_STEP_AWAITING_APPROVAL') {
            assert.equal(event.step_id, s.approval.step_id);
            const pending = await client.listApprovals({ runId: started.id });
            assert.equal(pending.approvals.length, 1);
            const [approval] = pending.approvals;
            assert.equal(approval.id, event.approval.approval_id);
            assert.equal(approval.kind, s.approval.kind);
            assert.equal(approval.state, 'STATE_PENDING');
            decided = await client.decideApproval(approval.id, s.approval.decision, {
              actor: s.approval.actor,
              comment: s.approval.comment,
              requestId: `conformance-${impl}`,
            });
          }
        }
        run = await client.getRun(started.id);
      });

      it('ends with the expected event log, step outputs and run output', () => {
        assert.ok(run, 'the run completed');
        assertWellFormedLog(events, s.expect.last_event);
        const types = new Set(events.map((e) => e.type));
        for (const type of s.expect.events_include) assert.ok(types.has(type), `an event ${type}`);
        // Fan-out: both branches are queued by the completion of their dependency,
        // before either of them completes.
        for (const [upstream, branches] of Object.entries(s.expect.parallel_after)) {
          const done = events.findIndex((e) => e.type === 'TYPE_STEP_COMPLETED' && e.step_id === upstream);
          const firstBranchDone = events.findIndex(
            (e) => e.type === 'TYPE_STEP_COMPLETED' && branches.includes(e.step_id),
          );
          for (const branch of branches) {
            const queued = events.findIndex((e) => e.type === 'TYPE_STEP_QUEUED' && e.step_id === branch);
            assert.ok(queued > done && queued < firstBranchDone, `${branch} queued with its sibling`);
          }
        }
        assert.equal(run.state, s.expect.run_state);
        for (const [id, expected] of Object.entries(s.expect.steps)) {
          const step = run.steps.find((/** @type {any} */ x) => x.step_id === id);
          assert.equal(step.state, expected.state, `step ${id} state`);
          assert.deepEqual(step.output, expected.output, `step ${id} output`);
          assert.equal(step.agent, s.agent.name);
        }
        assert.deepEqual(run.output, s.expect.run_output);
      });

      it('pauses on the checkpoint until the approval is decided', () => {
        const types = events.map((e) => e.type);
        for (const type of s.expect.approval_events) assert.ok(types.includes(type), `an event ${type}`);
        const awaiting = types.indexOf('TYPE_STEP_AWAITING_APPROVAL');
        const decidedAt = types.indexOf('TYPE_APPROVAL_DECIDED');
        assert.ok(awaiting < decidedAt && decidedAt < types.lastIndexOf('TYPE_STEP_COMPLETED'));
        assert.equal(decided.state, 'STATE_DECIDED');
        assert.equal(decided.decision, s.approval.decision);
        assert.equal(decided.actor, s.approval.actor);
        // StepRun.approval_id names a *pending* approval: cleared once decided.
        const step = run.steps.find((/** @type {any} */ x) => x.step_id === s.approval.step_id);
        assert.equal(decided.step_id, step.step_id);
        assert.equal(step.approval_id, '');
      });
    });
  }
});
