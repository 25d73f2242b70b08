import assert from 'node:assert/strict';

/**
 * Drain an async iterator of events into an array.
 *
 * @param {AsyncIterable<any>} events
 * @returns {Promise<any[]>}
 */
export async function collect(events) {
  const all = [];
  for await (const event of events) all.push(event);
  return all;
}

/**
 * A whole run log as WatchRun gives it: sequences 1..n without gaps or repeats, every
 * event of the run, one terminal event and it is the last.
 *
 * @param {any[]} events
 * @param {string} terminal expected last event type
 * @param {number} [first] sequence of the first event (afterSequence + 1)
 */
export function assertWellFormedLog(events, terminal, first = 1) {
  assert.ok(events.length > 0, 'no events');
  events.forEach((event, i) => assert.equal(event.sequence, first + i, 'sequences are contiguous'));
  const runId = events[0].run_id;
  assert.ok(events.every((e) => e.run_id === runId));
  assert.equal(events.at(-1).type, terminal);
  const terminals = events.filter((e) =>
    ['TYPE_RUN_COMPLETED', 'TYPE_RUN_FAILED', 'TYPE_RUN_CANCELLED'].includes(e.type),
  );
  assert.equal(terminals.length, 1);
}
