/**
 * A Node.js client of Podium's `podium.orchestration.v1.OrchestrationService`.
 *
 * ```js
 * import { PodiumClient } from 'podium-client/client';
 *
 * const podium = new PodiumClient('127.0.0.1:50051');
 * await podium.registerAgent({ name: 'shouter', endpoint: '127.0.0.1:50061', skills: ['uppercase'] });
 * await podium.createDefinition({ name: 'shout', steps: [
 *   { id: 'a', skill: 'uppercase', input: { text: '${run.input.text}' } },
 * ] });
 * const run = await podium.startRun({ definition: { name: 'shout' }, input: { text: 'hi' } });
 * for await (const event of podium.watchRun(run.id)) console.log(event.sequence, event.type);
 * const done = await podium.getRun(run.id);   // done.state === 'STATE_SUCCEEDED', done.output
 * podium.close();
 * ```
 *
 * Messages are the protos' messages as `@grpc/proto-loader` decodes them (see
 * `protos.js`: proto field names, enums as names, int64 as numbers), with one
 * convenience: every `google.protobuf.Struct` field (step and run input/output, run
 * metadata, event data, approval subject, decision input) is a plain JS object in both
 * directions. Methods return the resource (`startRun` -> the Run), not the response
 * wrapper.
 *
 * Errors: every method rejects (and `watchRun` throws) a {@link PodiumError} subclass
 * chosen by the status code (`ValidationError` for INVALID_ARGUMENT, `NotFoundError`,
 * `FailedPreconditionError`, ...; see `errors.js`) with the `google.rpc` details of the
 * `grpc-status-details-bin` trailer decoded: `code` (a `grpc.status`), `codeName`,
 * `message`, `reason`, `domain`, `metadata` and `fieldViolations`. The grpc-js
 * `ServiceError` is its `cause`.
 *
 * ```js
 * try {
 *   await podium.createDefinition(definition);
 * } catch (error) {
 *   if (!(error instanceof ValidationError)) throw error;
 *   for (const v of error.fieldViolations) console.error(`${v.field}: ${v.description}`);
 * }
 * ```
 *
 * @module
 */

import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

import * as grpc from '@grpc/grpc-js';

import { fromServiceError } from './errors.js';
import { orchestrationPackage } from './protos.js';
import { fromStruct, toStruct } from './struct.js';

/** Event types after which the server ends a WatchRun stream. */
export const TERMINAL_EVENT_TYPES = Object.freeze(
  new Set(['TYPE_RUN_COMPLETED', 'TYPE_RUN_FAILED', 'TYPE_RUN_CANCELLED']),
);

/** Run states that never change (except through ResumeRun). */
export const TERMINAL_RUN_STATES = Object.freeze(
  new Set(['STATE_SUCCEEDED', 'STATE_FAILED', 'STATE_CANCELLED']),
);

/** Status codes after which {@link PodiumClient#watchRun} reconnects. */
export const RECONNECT_CODES = Object.freeze(
  new Set([grpc.status.UNAVAILABLE, grpc.status.CANCELLED, grpc.status.INTERNAL, grpc.status.UNKNOWN]),
);

/**
 * TLS credentials of a channel to Podium (`new PodiumClient(address, { credentials })`),
 * from PEM files: the CA bundle the server's certificate chains to (default: the
 * system's CA roots) and, for mTLS, a client certificate and its unencrypted key.
 *
 * @param {{ caFile?: string, certFile?: string, keyFile?: string }} [files]
 * @returns {grpc.ChannelCredentials}
 */
export function tlsCredentials({ caFile, certFile, keyFile } = {}) {
  if (Boolean(certFile) !== Boolean(keyFile)) {
    throw new TypeError('tlsCredentials: certFile and keyFile go together');
  }
  const read = (/** @type {string | undefined} */ file) => (file ? readFileSync(file) : null);
  return grpc.credentials.createSsl(read(caFile), read(keyFile), read(certFile));
}

/**
 * @typedef {import('./struct.js').JsonObject} JsonObject
 * @typedef {import('./errors.js').PodiumError} PodiumError
 *
 * @typedef {object} ClientOptions
 * @property {grpc.ChannelCredentials} [credentials] default: insecure (plaintext); over
 *   TLS: `tlsCredentials({ caFile, certFile, keyFile })`
 * @property {grpc.ChannelOptions} [channelOptions] extra channel options
 * @property {number} [timeoutMs] deadline of each unary call (default 30 s)
 * @property {grpc.Metadata} [metadata] sent with every call
 * @property {string} [apiKey] a Podium API key, sent with every call as
 *   `authorization: Bearer <key>`; default: the `PODIUM_API_KEY` environment variable
 *   (unset: no key, for servers with authentication off)
 *
 * @typedef {object} CallOptions
 * @property {number} [timeoutMs] deadline of this call, overriding the client's
 * @property {AbortSignal} [signal] cancels the call when aborted
 *
 * @typedef {object} WatchOptions
 * @property {number} [afterSequence] replay events after this sequence (default 0: all)
 * @property {AbortSignal} [signal] ends the iteration (the call is cancelled)
 * @property {number} [maxReconnects] reconnections in a row without a new event before
 *   giving up and throwing the last error (default 8)
 * @property {number} [initialBackoffMs] first delay before reconnecting (default 200 ms,
 *   doubled each time, capped at 5 s, reset by every received event)
 * @property {(info: { attempt: number, afterSequence: number, error: PodiumError | null }) => void} [onReconnect]
 *   called before each reconnection (`error`: the status that broke the stream, null
 *   when it ended cleanly before the terminal event)
 */

/**
 * Convert every Struct inside a step list, in place, from plain objects.
 *
 * @param {any} definition
 * @returns {any}
 */
function encodeDefinition(definition) {
  if (!definition) return definition;
  return {
    ...definition,
    steps: (definition.steps ?? []).map((/** @type {any} */ step, /** @type {number} */ i) => ({
      ...step,
      input: step.input === undefined ? undefined : toStruct(step.input, `steps[${i}].input`),
    })),
  };
}

/** @param {any} definition */
function decodeDefinition(definition) {
  if (!definition) return definition;
  for (const step of definition.steps ?? []) step.input = fromStruct(step.input);
  return definition;
}

/** @param {any} run */
function decodeRun(run) {
  if (!run) return run;
  run.input = fromStruct(run.input);
  run.output = fromStruct(run.output);
  run.metadata = fromStruct(run.metadata);
  for (const step of run.steps ?? []) {
    step.input = fromStruct(step.input);
    step.output = fromStruct(step.output);
  }
  decodeDefinition(run.plan);
  return run;
}

/** @param {any} event */
function decodeEvent(event) {
  if (event) event.data = fromStruct(event.data);
  return event;
}

/** @param {any} approval */
function decodeApproval(approval) {
  if (approval) approval.subject = fromStruct(approval.subject);
  return approval;
}

/** @param {any} schedule */
function decodeSchedule(schedule) {
  if (schedule) schedule.input = fromStruct(schedule.input);
  return schedule;
}

/**
 * A `google.protobuf.Timestamp` for a Date (undefined leaves the field unset).
 *
 * @param {Date | undefined} date
 */
function optionalTimestamp(date) {
  if (date === undefined) return undefined;
  const ms = date.getTime();
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: (ms - seconds * 1000) * 1_000_000 };
}

/** @param {any} value */
function optionalStruct(value, /** @type {string} */ path) {
  return value === undefined || value === null ? undefined : toStruct(value, path);
}

/** A client of one Podium server (or load balancer); cheap to share, close once. */
export class PodiumClient {
  /**
   * @param {string} address `host:port` of Podium
   * @param {ClientOptions} [options]
   */
  constructor(address, options = {}) {
    const Service = orchestrationPackage().OrchestrationService;
    this.address = address;
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.metadata = options.metadata?.clone() ?? new grpc.Metadata();
    // Per-call metadata, not call credentials: grpc refuses those on plaintext channels.
    const apiKey = (options.apiKey ?? process.env.PODIUM_API_KEY ?? '').trim();
    if (apiKey) this.metadata.set('authorization', `Bearer ${apiKey}`);
    /** The underlying grpc-js client (every RPC, raw). */
    this.stub = new Service(address, options.credentials ?? grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': 4 * 1024 * 1024,
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      ...options.channelOptions,
    });
  }

  /** Close the channel; calls in flight are cancelled. */
  close() {
    this.stub.close();
  }

  /**
   * Call a unary RPC with the client's deadline and metadata. Every method below goes
   * through here, so they all reject with a {@link PodiumError} subclass (the aborted
   * `signal` of a call too: a PodiumError with code CANCELLED).
   *
   * @param {string} method e.g. `"GetRun"`
   * @param {object} request
   * @param {CallOptions} [options]
   * @returns {Promise<any>}
   * @throws {PodiumError} (as a rejection) when the call fails
   */
  call(method, request, options = {}) {
    const deadline = new Date(Date.now() + (options.timeoutMs ?? this.timeoutMs));
    return new Promise((resolve, reject) => {
      const call = this.stub[method](request, this.metadata, { deadline }, (
        /** @type {grpc.ServiceError | null} */ error,
        /** @type {any} */ response,
      ) => (error ? reject(fromServiceError(error)) : resolve(response)));
      options.signal?.addEventListener('abort', () => call.cancel(), { once: true });
    });
  }

  // -- definitions

  /**
   * Store a new version of a named definition (`Definition` message; step `input`s are
   * plain objects). Returns the stored definition with its version. An invalid one
   * rejects with a `ValidationError` (reason `INVALID_DEFINITION`, every problem in
   * `fieldViolations`, e.g. `{ field: 'steps[1].depends_on[0]', ... }`).
   *
   * Idempotent: when the latest version has the same content, the server returns it
   * instead of storing a new one; `options.forceNewVersion` stores one anyway.
   *
   * @param {any} definition
   * @param {CallOptions & { forceNewVersion?: boolean }} [options]
   */
  async createDefinition(definition, options = {}) {
    const response = await this.call(
      'CreateDefinition',
      {
        definition: encodeDefinition(definition),
        force_new_version: Boolean(options.forceNewVersion),
      },
      options,
    );
    return decodeDefinition(response.definition);
  }

  /**
   * Check a definition without storing it; rejects with a `ValidationError` (reason
   * `INVALID_DEFINITION`, one `fieldViolations` entry per problem) when invalid.
   *
   * @param {any} definition
   * @param {CallOptions} [options]
   */
  async validateDefinition(definition, options) {
    const response = await this.call(
      'ValidateDefinition',
      { definition: encodeDefinition(definition) },
      options,
    );
    return decodeDefinition(response.definition);
  }

  /**
   * @param {string} name
   * @param {number} [version] 0 (default): the latest
   * @param {CallOptions} [options]
   */
  async getDefinition(name, version = 0, options) {
    const response = await this.call('GetDefinition', { name, version }, options);
    return decodeDefinition(response.definition);
  }

  // -- runs

  /**
   * Create and (unless `start: false`) start a run. `request` is a `StartRunRequest`
   * with `definition: {name, version}` or an inline `plan`, and plain-object `input` and
   * `metadata`. `start` defaults to true here (the proto default is false).
   * Returns the Run.
   *
   * @param {any} request
   * @param {CallOptions} [options]
   */
  async startRun(request, options) {
    const response = await this.call(
      'StartRun',
      {
        ...request,
        start: request.start ?? true,
        plan: request.plan ? encodeDefinition(request.plan) : undefined,
        input: optionalStruct(request.input, 'input'),
        metadata: optionalStruct(request.metadata, 'metadata'),
      },
      options,
    );
    return decodeRun(response.run);
  }

  /**
   * A run with its steps. An unknown run rejects with a `NotFoundError` (reason
   * `RUN_NOT_FOUND`, `metadata.run_id`).
   *
   * `options.view`: `"RUN_VIEW_FULL"` (the default) or `"RUN_VIEW_BASIC"` (no inputs,
   * outputs, metadata or plan). A full run larger than the server's message limit comes
   * without its largest payloads, named in `omitted` of the run and of each step;
   * `options.fillOmitted` reads them back with {@link PodiumClient#getRunPayload}.
   *
   * @param {string} runId
   * @param {CallOptions & { view?: string, fillOmitted?: boolean }} [options]
   */
  async getRun(runId, options = {}) {
    const { view = 'RUN_VIEW_UNSPECIFIED', fillOmitted = false, ...callOptions } = options;
    const run = decodeRun((await this.call('GetRun', { run_id: runId, view }, callOptions)).run);
    return fillOmitted ? this.fillOmitted(run, callOptions) : run;
  }

  /**
   * A page of runs, newest first: `{runs, next_page_token}`. `view` defaults to
   * `"RUN_VIEW_BASIC"` (no input, output, metadata or plan); a page may hold fewer than
   * `pageSize` runs when more would exceed the server's message limit.
   *
   * @param {{ states?: string[], definitionName?: string, labels?: Record<string, string>,
   *   parentRunId?: string, pageSize?: number, pageToken?: string, view?: string }} [filter]
   * @param {CallOptions} [options]
   */
  async listRuns(
    {
      states = [],
      definitionName = '',
      labels = {},
      parentRunId = '',
      pageSize = 0,
      pageToken = '',
      view = 'RUN_VIEW_UNSPECIFIED',
    } = {},
    options,
  ) {
    const response = await this.call(
      'ListRuns',
      {
        states,
        definition_name: definitionName,
        labels,
        parent_run_id: parentRunId,
        page_size: pageSize,
        page_token: pageToken,
        view,
      },
      options,
    );
    response.runs.forEach(decodeRun);
    return response;
  }

  /**
   * One payload of a run (no `stepId`) or of a step, read whole with GetRunPayload
   * range by range, as its JSON value (null when unset). `payload`: `"PAYLOAD_INPUT"`,
   * `"PAYLOAD_OUTPUT"`, `"PAYLOAD_METADATA"` or `"PAYLOAD_PLAN"` (the last two for runs).
   *
   * @param {string} runId
   * @param {string} payload
   * @param {{ stepId?: string }} [where]
   * @param {CallOptions} [options]
   * @returns {Promise<any>}
   */
  async getRunPayload(runId, payload, { stepId = '' } = {}, options) {
    /** @type {Buffer[]} */
    const parts = [];
    let offset = 0;
    for (;;) {
      const response = await this.call(
        'GetRunPayload',
        { run_id: runId, step_id: stepId, payload, offset },
        options,
      );
      parts.push(response.data);
      if (!response.next_offset) break;
      offset = response.next_offset;
    }
    return JSON.parse(Buffer.concat(parts).toString('utf8'));
  }

  /**
   * `run` (from getRun) with the payloads the server left out for its size read back
   * and put in place; the `omitted` lists are emptied.
   *
   * @param {any} run
   * @param {CallOptions} [options]
   */
  async fillOmitted(run, options) {
    const kinds = /** @type {Record<string, string>} */ ({
      input: 'PAYLOAD_INPUT',
      output: 'PAYLOAD_OUTPUT',
      metadata: 'PAYLOAD_METADATA',
      plan: 'PAYLOAD_PLAN',
    });
    for (const omitted of run.omitted ?? []) {
      run[omitted.field] = await this.getRunPayload(run.id, kinds[omitted.field], {}, options);
    }
    run.omitted = [];
    for (const step of run.steps ?? []) {
      for (const omitted of step.omitted ?? []) {
        step[omitted.field] = await this.getRunPayload(
          run.id,
          kinds[omitted.field],
          { stepId: step.step_id },
          options,
        );
      }
      step.omitted = [];
    }
    return run;
  }

  /**
   * Start a created run, or feed input to a waiting one.
   *
   * @param {string} runId
   * @param {JsonObject} [input]
   * @param {CallOptions} [options]
   */
  async continueRun(runId, input, options) {
    const request = { run_id: runId, input: optionalStruct(input, 'input') };
    return decodeRun((await this.call('ContinueRun', request, options)).run);
  }

  /**
   * @param {string} runId
   * @param {string} [reason]
   * @param {CallOptions} [options]
   */
  async cancelRun(runId, reason = '', options) {
    return decodeRun((await this.call('CancelRun', { run_id: runId, reason }, options)).run);
  }

  /**
   * Follow a run: yields its `RunEvent`s (replayed after `afterSequence`, then live) and
   * returns after the terminal event (`run.completed`, `run.failed`, `run.cancelled`).
   *
   * The stream is resumable: when it breaks (server restart, network, a load balancer
   * closing it) or ends before the terminal event, the iterator reconnects with the last
   * sequence it yielded, so no event is missed or yielded twice. Breaking out of the
   * `for await` loop (or aborting `signal`) cancels the call.
   *
   * A status that is not worth a reconnection (NOT_FOUND for an unknown run,
   * PERMISSION_DENIED, ...) is thrown at once as a {@link PodiumError} subclass; after
   * `maxReconnects` failed attempts in a row the last one is thrown (typically an
   * `UnavailableError`). Aborting `signal` throws `signal.reason`.
   *
   * @param {string} runId
   * @param {WatchOptions} [options]
   * @returns {AsyncGenerator<any, void, undefined>}
   */
  async *watchRun(runId, options = {}) {
    const { signal, maxReconnects = 8, initialBackoffMs = 200, onReconnect } = options;
    let afterSequence = options.afterSequence ?? 0;
    let failures = 0;
    for (;;) {
      signal?.throwIfAborted();
      /** @type {PodiumError | null} */
      let lastError = null;
      const call = this.stub.WatchRun(
        { run_id: runId, after_sequence: afterSequence },
        this.metadata,
        // Reconnections wait for the channel to be ready instead of failing fast.
        { waitForReady: failures > 0 },
      );
      // The iterator below reports errors; this listener only keeps a late error (after
      // a cancel) from becoming an unhandled 'error' event.
      call.on('error', () => undefined);
      const onAbort = () => call.cancel();
      signal?.addEventListener('abort', onAbort, { once: true });
      try {
        for await (const message of call) {
          const event = decodeEvent(message.event);
          if (event.sequence <= afterSequence) continue; // never yield an event twice
          afterSequence = event.sequence;
          failures = 0;
          yield event;
          if (TERMINAL_EVENT_TYPES.has(event.type)) return;
        }
      } catch (error) {
        if (signal?.aborted) throw signal.reason ?? fromServiceError(error);
        // Not a gRPC status (e.g. a Struct that cannot be decoded): not a broken stream.
        if (typeof (/** @type {any} */ (error)?.code) !== 'number') throw error;
        const typed = fromServiceError(error);
        if (!RECONNECT_CODES.has(typed.code)) throw typed;
        lastError = typed;
      } finally {
        signal?.removeEventListener('abort', onAbort);
        call.cancel(); // no-op when the call has ended; stops it when the consumer left
      }
      // The stream ended or broke before the terminal event: resume after the last one.
      failures += 1;
      if (failures > maxReconnects) {
        throw lastError ?? new Error(`WatchRun of ${runId} kept ending before the run ended`);
      }
      onReconnect?.({ attempt: failures, afterSequence, error: lastError });
      const delay = Math.min(initialBackoffMs * 2 ** (failures - 1), 5000);
      await sleep(delay, undefined, signal ? { signal } : undefined);
    }
  }

  /**
   * A page of a run's event log.
   *
   * @param {string} runId
   * @param {{ afterSequence?: number, pageSize?: number }} [page]
   * @param {CallOptions} [options]
   */
  async listRunEvents(runId, { afterSequence = 0, pageSize = 0 } = {}, options) {
    const response = await this.call(
      'ListRunEvents',
      { run_id: runId, after_sequence: afterSequence, page_size: pageSize },
      options,
    );
    response.events.forEach(decodeEvent);
    return response;
  }

  // -- agents

  /**
   * Register or update an agent (`Agent` message: `name`, `endpoint`, `skills`,
   * `max_concurrency`, `default_timeout_seconds`, `labels`). Returns the stored agent.
   * A podium.agent.v1 agent must answer (what is not given comes from its card);
   * `{ lazy: true }` registers one that does not answer yet.
   *
   * @param {any} agent
   * @param {CallOptions & { lazy?: boolean }} [options]
   */
  async registerAgent(agent, options) {
    const { lazy = false, ...callOptions } = options ?? {};
    return (await this.call('RegisterAgent', { agent, lazy }, callOptions)).agent;
  }

  /**
   * One agent, with its health (`health.state`, `health.since_time`, `health.message`).
   *
   * @param {string} name
   * @param {CallOptions} [options]
   */
  async getAgent(name, options) {
    return (await this.call('GetAgent', { name }, options)).agent;
  }

  /**
   * @param {{ skill?: string, pageSize?: number, pageToken?: string }} [filter]
   * @param {CallOptions} [options]
   */
  async listAgents({ skill = '', pageSize = 0, pageToken = '' } = {}, options) {
    return this.call(
      'ListAgents',
      { skill, page_size: pageSize, page_token: pageToken },
      options,
    );
  }

  /**
   * @param {string} name
   * @param {CallOptions} [options]
   */
  async deregisterAgent(name, options) {
    await this.call('DeregisterAgent', { name }, options);
  }

  // -- external events

  /**
   * Send an external event to the `wait_for_event` steps waiting for its name and key
   * (and to steps that start waiting within the server's retention window). Idempotent
   * by `eventId`: a resend delivers nothing and resolves `{duplicate: true, ...}`.
   * Resolves `{duplicate, delivered_steps, expire_time}`.
   *
   * @param {string} name
   * @param {{ eventId: string, key?: string, payload?: JsonObject }} event
   * @param {CallOptions} [options]
   */
  async sendEvent(name, { eventId, key = '', payload } = { eventId: '' }, options) {
    return this.call(
      'SendEvent',
      { event_id: eventId, name, key, payload: optionalStruct(payload, 'payload') },
      options,
    );
  }

  // -- usage

  /**
   * The organization's model usage (GetUsage): the attempts started in
   * [`startTime`, `endTime`) (default: the last 30 days), filtered by definition, agent
   * or model, grouped by `groupBy` (`'day'`, `'definition'`, `'agent'`, `'model'`).
   * Resolves the rows (`UsageRow`: the group's `day` / `definition_name` / `agent` /
   * `model`, `usage`, `step_attempts`, `cache_hits`, `saved`). A bad range or
   * dimension rejects with a `ValidationError`.
   *
   * @param {{ startTime?: Date, endTime?: Date, definitionName?: string, agent?: string,
   *   model?: string, groupBy?: ('day' | 'definition' | 'agent' | 'model')[] }} [query]
   * @param {CallOptions} [options]
   */
  async getUsage(
    { startTime, endTime, definitionName = '', agent = '', model = '', groupBy = [] } = {},
    options,
  ) {
    const request = {
      start_time: optionalTimestamp(startTime),
      end_time: optionalTimestamp(endTime),
      definition_name: definitionName,
      agent,
      model,
      group_by: groupBy.map((dimension) => `DIMENSION_${dimension.toUpperCase()}`),
    };
    return (await this.call('GetUsage', request, options)).rows ?? [];
  }

  // -- schedules

  /**
   * Create a schedule (a `Schedule` with `definition_name` and `cron` + `time_zone`, or
   * `interval_seconds`; `input` is a plain object); returns it with its id and
   * `upcoming_fire_times`. Bad fields reject with a `ValidationError`.
   *
   * @param {any} schedule
   * @param {CallOptions} [options]
   */
  async createSchedule(schedule, options) {
    const request = { schedule: { ...schedule, input: optionalStruct(schedule.input, 'schedule.input') } };
    return decodeSchedule((await this.call('CreateSchedule', request, options)).schedule);
  }

  /**
   * @param {string} scheduleId
   * @param {CallOptions} [options]
   */
  async getSchedule(scheduleId, options) {
    return decodeSchedule((await this.call('GetSchedule', { schedule_id: scheduleId }, options)).schedule);
  }

  /**
   * One page of schedules, oldest first: `{schedules, next_page_token}`.
   *
   * @param {{ definitionName?: string, pageSize?: number, pageToken?: string }} [filter]
   * @param {CallOptions} [options]
   */
  async listSchedules({ definitionName = '', pageSize = 0, pageToken = '' } = {}, options) {
    const request = { definition_name: definitionName, page_size: pageSize, page_token: pageToken };
    const response = await this.call('ListSchedules', request, options);
    response.schedules = (response.schedules ?? []).map(decodeSchedule);
    return response;
  }

  /**
   * @param {string} scheduleId
   * @param {CallOptions} [options]
   */
  async pauseSchedule(scheduleId, options) {
    return decodeSchedule((await this.call('PauseSchedule', { schedule_id: scheduleId }, options)).schedule);
  }

  /**
   * Resume a paused schedule (from its next tick after now).
   *
   * @param {string} scheduleId
   * @param {CallOptions} [options]
   */
  async resumeSchedule(scheduleId, options) {
    return decodeSchedule((await this.call('ResumeSchedule', { schedule_id: scheduleId }, options)).schedule);
  }

  /**
   * Delete a schedule; the runs it started are kept.
   *
   * @param {string} scheduleId
   * @param {CallOptions} [options]
   */
  async deleteSchedule(scheduleId, options) {
    await this.call('DeleteSchedule', { schedule_id: scheduleId }, options);
  }

  // -- routing policy

  /**
   * The organization's routing policy: `allowed_agents`, `denied_agents`,
   * `allowed_skills`, `denied_skills`, `approval_agents` (empty when never set),
   * `revision` and `update_time`.
   *
   * @param {CallOptions} [options]
   */
  async getRoutingPolicy(options) {
    return (await this.call('GetRoutingPolicy', {}, options)).policy;
  }

  /**
   * Replace the lists given, by their proto names (an empty array clears one, a list
   * left out is kept); admins only. Returns the policy; bad names reject with a
   * `ValidationError`.
   *
   * @param {{ allowed_agents?: string[], denied_agents?: string[], allowed_skills?: string[],
   *   denied_skills?: string[], approval_agents?: string[] }} lists
   * @param {CallOptions} [options]
   */
  async updateRoutingPolicy(lists, options) {
    const paths = Object.entries(lists)
      .filter(([, value]) => value !== undefined)
      .map(([name]) => name);
    if (paths.length === 0) throw new TypeError('updateRoutingPolicy: give at least one list');
    const request = { policy: lists, update_mask: { paths } };
    return (await this.call('UpdateRoutingPolicy', request, options)).policy;
  }

  // -- approvals

  /**
   * List approvals (pending by default): `{approvals, next_page_token}`.
   *
   * @param {{ runId?: string, states?: string[], pageSize?: number, pageToken?: string }} [filter]
   * @param {CallOptions} [options]
   */
  async listApprovals({ runId = '', states = [], pageSize = 0, pageToken = '' } = {}, options) {
    const response = await this.call(
      'ListApprovals',
      { run_id: runId, states, page_size: pageSize, page_token: pageToken },
      options,
    );
    response.approvals.forEach(decodeApproval);
    return response;
  }

  /**
   * Record a decision on an approval. `decision` is a `Decision` name
   * (`"DECISION_APPROVE"`, `"DECISION_REJECT"`, ...); `input` a plain object.
   * Returns the decided Approval. Deciding an approval that is no longer pending
   * rejects with a `FailedPreconditionError` (reason `APPROVAL_NOT_PENDING`,
   * `metadata.state` its state); an unknown one with a `NotFoundError`
   * (`APPROVAL_NOT_FOUND`).
   *
   * @param {string} approvalId
   * @param {string} decision
   * @param {{ comment?: string, actor?: string, requestId?: string, input?: JsonObject }} [details]
   * @param {CallOptions} [options]
   */
  async decideApproval(approvalId, decision, details = {}, options) {
    const response = await this.call(
      'DecideApproval',
      {
        approval_id: approvalId,
        decision,
        comment: details.comment ?? '',
        actor: details.actor ?? '',
        request_id: details.requestId ?? '',
        input: optionalStruct(details.input, 'input'),
      },
      options,
    );
    return decodeApproval(response.approval);
  }
}
