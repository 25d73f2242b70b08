/**
 * Write a Podium agent in Node.js: an async function becomes a `podium.agent.v1.AgentService`
 * server (the Node twin of `podium.client.agent` in Python).
 *
 * ```js
 * import { Agent, TaskFailed } from 'podium-client/agent';
 *
 * const agent = new Agent({
 *   name: 'shouter',
 *   version: '1.0.0',
 *   skills: [{ id: 'uppercase', name: 'Uppercase' }],
 *   maxConcurrency: 8,
 *   handler: async (task) => {
 *     await task.progress('shouting', 0.5);
 *     await task.outputChunk(String(task.input.text).toUpperCase());
 *     task.usage({ model: 'none', inputTokens: 1, outputTokens: 1 });
 *     return { text: String(task.input.text).toUpperCase() };
 *   },
 * });
 * const server = await agent.serve('127.0.0.1:0');   // server.address is host:port
 * ```
 *
 * How a call runs:
 *
 * - `ExecuteTask` calls the handler with a {@link Task}. `task.progress`,
 *   `task.outputChunk` and `task.artifact` write into the response stream in call order
 *   and resolve once gRPC has taken the message (they wait for `drain` when the stream
 *   is full: backpressure, no unbounded buffering).
 * - The stream always ends with exactly one `result`: the object the handler returned as
 *   `output`, or an `error`. Throw {@link TaskFailed} for a chosen `{code, message,
 *   retryable}`; any other exception becomes `AGENT_EXCEPTION` (its message, retryable);
 *   a return value that is not a plain object is `INVALID_OUTPUT` (not retryable). Usage
 *   recorded with `task.usage()` rides on the result either way.
 * - When Podium cancels the call (CancelRun, the step deadline, shutdown), `task.signal`
 *   aborts, `task.cancelled` turns true, the `onCancel` hook runs and
 *   `agent.cancelledTasks` grows. Streaming helpers then reject with an `AbortError`, and
 *   whatever the handler returns afterwards is dropped. Pass `task.signal` to `fetch`,
 *   timers and child processes so the work stops with the call.
 * - `maxConcurrency` bounds the handlers running at once per server; extra calls wait for
 *   a slot (their deadline keeps running). The agent card announces the limit.
 * - Each server also serves `grpc.health.v1.Health` (`""` and the AgentService are
 *   SERVING until `stop()`).
 *
 * @module
 */

import { readFileSync } from 'node:fs';

import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';

import { PodiumClient } from './client.js';
import { AGENT_PROTOCOL_VERSION, agentPackage } from './protos.js';
import { fromStruct, toStruct } from './struct.js';

/** Full name of the gRPC service agents implement. */
export const SERVICE_NAME = 'podium.agent.v1.AgentService';

/** Default gRPC message limit in both directions, the same as Podium's (4 MiB). */
export const DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024;

/** Longest error message sent for an unexpected exception. */
export const MAX_ERROR_MESSAGE_CHARS = 500;

const ERROR_CODE = /^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*$/;

/**
 * @typedef {import('./struct.js').JsonObject} JsonObject
 *
 * @typedef {object} Skill A capability announced in the agent card.
 * @property {string} id stable id used for routing, e.g. `"summarize"`
 * @property {string} [name] display name
 * @property {string} [description] what the skill does
 * @property {string[]} [tags] free-form tags
 *
 * @typedef {(task: Task) => Promise<JsonObject> | JsonObject} Handler
 *
 * @typedef {object} AgentOptions
 * @property {string} name agent name (the name it is registered under by default)
 * @property {string} [version] implementation version (default `"0.0.0"`)
 * @property {string} [description] what the agent does
 * @property {Skill[]} [skills] skills offered
 * @property {number} [maxConcurrency] handlers running at once per server; 0 = no limit
 * @property {Handler} [handler] the task function (or set it with {@link Agent#task})
 * @property {(task: Task) => void} [onCancel] called when a task's call is cancelled
 * @property {number} [maxMessageBytes] gRPC message limit (default 4 MiB)
 *
 * @typedef {object} Usage model usage of one task, as recorded with `task.usage()`
 * @property {string} [model]
 * @property {number} [inputTokens]
 * @property {number} [outputTokens]
 * @property {number} [costUsd]
 */

/** Throw from a handler to end the task with `result.error`. */
export class TaskFailed extends Error {
  /**
   * @param {string} code stable UPPER_SNAKE identifier, e.g. `"UPSTREAM_TIMEOUT"`
   * @param {string} message human-readable message
   * @param {boolean} [retryable] whether another attempt may succeed (default true)
   */
  constructor(code, message, retryable = true) {
    if (!ERROR_CODE.test(code)) {
      throw new TypeError(`TaskFailed code must be UPPER_SNAKE case, got ${JSON.stringify(code)}`);
    }
    super(`${code}: ${message}`);
    this.name = 'TaskFailed';
    this.code = code;
    this.detail = message;
    this.retryable = retryable;
  }
}

/**
 * One step attempt as seen by a handler: the request fields, the plain-object input,
 * and helpers that stream into the response.
 */
export class Task {
  /** @type {Usage | null} */
  #usage = null;
  #finished = false;
  /** @type {Promise<void>} serializes writes, in call order */
  #writes = Promise.resolve();
  /** @type {string} the step credential, off the object's enumerable fields */
  #credential;

  /**
   * @param {any} request the decoded `ExecuteTaskRequest`
   * @param {grpc.ServerWritableStream<any, any>} call
   * @param {Agent} agent
   * @param {AbortController} controller aborted when the call is cancelled
   */
  constructor(request, call, agent, controller) {
    /** The raw `ExecuteTaskRequest` (proto field names). */
    this.request = request;
    /** @type {grpc.ServerWritableStream<any, any>} */
    this.call = call;
    /** @type {Agent} */
    this.agent = agent;
    /** Aborted when the call is cancelled (by Podium, the deadline or shutdown). */
    this.signal = controller.signal;
    /** Unique id of this step attempt (a retry gets a new one). */
    this.taskId = /** @type {string} */ (request.task_id);
    /** Id of the run. */
    this.runId = /** @type {string} */ (request.run_id);
    /** Id of the step inside its definition. */
    this.stepId = /** @type {string} */ (request.step_id);
    /** Attempt number, starting at 1. */
    this.attempt = /** @type {number} */ (request.attempt);
    /** Conversation id, stable across attempts and ContinueRun. */
    this.conversationId = /** @type {string} */ (request.conversation_id);
    /** Organization that owns the run. */
    this.organizationId = /** @type {string} */ (request.organization_id);
    /** The step input as a plain object (every number is a JS number). */
    this.input = /** @type {JsonObject} */ (fromStruct(request.input) ?? {});
    /** Labels of the run. */
    this.labels = /** @type {Record<string, string>} */ ({ ...request.labels });
    /** Definition name; empty for an inline plan. */
    this.definitionName = /** @type {string} */ (request.definition_name);
    /** Definition version; 0 for an inline plan. */
    this.definitionVersion = /** @type {number} */ (request.definition_version);
    /** The skill the step was routed by; empty when routed by agent name. */
    this.skill = /** @type {string} */ (request.skill);
    this.#credential = /** @type {string} */ (request.credential ?? '');
    /**
     * Where Podium's API is reached with {@link Task#credential}; empty when the server
     * does not know an address agents can reach (it then needs
     * `PODIUM_AGENT_CALLBACK_ADDRESS`).
     */
    this.podiumAddress = /** @type {string} */ (request.podium_address ?? '');
  }

  /**
   * The step credential: a bearer token for Podium's API, valid while this attempt runs.
   * Runs started with it are child runs of this step (cancelled with it, on its run's
   * budget). A secret: never log it. Empty from a server that sends none.
   */
  get credential() {
    return this.#credential;
  }

  /**
   * A {@link PodiumClient} acting with the step credential, at {@link Task#podiumAddress}.
   * The caller closes it.
   *
   * @param {import('./client.js').ClientOptions} [options] e.g. `credentials` for TLS
   * @returns {PodiumClient}
   */
  podium(options = {}) {
    if (!this.#credential) throw new Error('this task has no step credential (an older Podium server?)');
    if (!this.podiumAddress) {
      throw new Error('Podium sent no address to reach it: set PODIUM_AGENT_CALLBACK_ADDRESS on the server');
    }
    return new PodiumClient(this.podiumAddress, { ...options, apiKey: this.#credential });
  }

  /** The call metadata (e.g. `traceparent`), last value per key. */
  get metadata() {
    return this.call.metadata.getMap();
  }

  /** The call's deadline (a `Date`), or `null` without one. */
  get deadline() {
    const deadline = this.call.getDeadline();
    if (deadline === Infinity) return null;
    return deadline instanceof Date ? deadline : new Date(deadline);
  }

  /** Whether the call has been cancelled. */
  get cancelled() {
    return this.signal.aborted;
  }

  /**
   * Report progress: a status line and the completed fraction in [0, 1]
   * (`undefined`/negative: unknown; above 1: clamped to 1).
   *
   * @param {string} message
   * @param {number} [fraction]
   */
  progress(message, fraction) {
    let value = fraction === undefined || Number.isNaN(fraction) || fraction < 0 ? -1 : fraction;
    if (value > 1) value = 1;
    return this.#emit({ progress: { message, fraction: value } });
  }

  /**
   * Stream a piece of incremental output, such as generated text.
   *
   * @param {string} text
   */
  outputChunk(text) {
    return this.#emit({ output_chunk: { text } });
  }

  /**
   * Send an artifact: inline `data` (a string is sent as UTF-8) or a `uri`.
   *
   * @param {string} name e.g. `"report.md"`
   * @param {string | Uint8Array | null} [data]
   * @param {{ mediaType?: string, uri?: string, metadata?: JsonObject }} [options]
   */
  artifact(name, data, options = {}) {
    if (!name) throw new TypeError('an artifact needs a name');
    if ((data === undefined || data === null) && !options.uri) {
      throw new TypeError('an artifact needs data or a uri');
    }
    let mediaType = options.mediaType ?? '';
    /** @type {Buffer} */
    let bytes;
    if (typeof data === 'string') {
      bytes = Buffer.from(data, 'utf8');
      mediaType ||= 'text/plain; charset=utf-8';
    } else {
      bytes = data ? Buffer.from(data) : Buffer.alloc(0);
    }
    if (bytes.length > this.agent.maxMessageBytes - 1024) {
      throw new RangeError(
        `artifact ${JSON.stringify(name)} is ${bytes.length} bytes, over the message limit:` +
          ' store it elsewhere and pass its uri',
      );
    }
    return this.#emit({
      artifact: {
        name,
        media_type: mediaType || 'application/octet-stream',
        data: bytes,
        uri: options.uri ?? '',
        metadata: options.metadata ? toStruct(options.metadata, 'metadata') : null,
      },
    });
  }

  /**
   * Record model usage, sent with the result; repeated calls add up (`model` keeps the
   * last non-empty value).
   *
   * @param {Usage} usage
   */
  usage({ model = '', inputTokens = 0, outputTokens = 0, costUsd = 0 }) {
    if (inputTokens < 0 || outputTokens < 0 || costUsd < 0) {
      throw new RangeError('usage cannot be negative');
    }
    const total = (this.#usage ??= { model: '', inputTokens: 0, outputTokens: 0, costUsd: 0 });
    if (model) total.model = model;
    total.inputTokens = /** @type {number} */ (total.inputTokens) + inputTokens;
    total.outputTokens = /** @type {number} */ (total.outputTokens) + outputTokens;
    total.costUsd = /** @type {number} */ (total.costUsd) + costUsd;
  }

  /** @returns {any} the usage message for the result, or null */
  get usageMessage() {
    const usage = this.#usage;
    if (!usage) return null;
    return {
      model: usage.model,
      input_tokens: usage.inputTokens,
      output_tokens: usage.outputTokens,
      cost_usd: usage.costUsd,
    };
  }

  /**
   * Write one response message, after the ones before it; resolves once gRPC took it.
   *
   * @param {object} message
   * @returns {Promise<void>}
   */
  #emit(message) {
    if (this.#finished) {
      return Promise.reject(new Error('the task has ended: nothing more can be streamed'));
    }
    return this.#write(message);
  }

  /**
   * End the stream with its result (once).
   *
   * @param {object} result the `TaskResult` message
   * @returns {Promise<void>}
   */
  finish(result) {
    this.#finished = true;
    return this.#write({ result }).then(() => {
      if (!this.cancelled) this.call.end();
    });
  }

  /**
   * @param {object} message
   * @returns {Promise<void>}
   */
  #write(message) {
    const write = this.#writes.then(
      () =>
        new Promise((resolve, reject) => {
          if (this.cancelled) {
            reject(abortError());
            return;
          }
          if (this.call.write(message)) {
            resolve(undefined);
            return;
          }
          // The stream is full: wait until it drains, or the call is cancelled.
          const onDrain = () => {
            this.signal.removeEventListener('abort', onAbort);
            resolve(undefined);
          };
          const onAbort = () => {
            this.call.off('drain', onDrain);
            reject(abortError());
          };
          this.call.once('drain', onDrain);
          this.signal.addEventListener('abort', onAbort, { once: true });
        }),
    );
    // A failed write does not block the ones after it (they fail on their own).
    this.#writes = write.catch(() => undefined);
    return write;
  }
}

function abortError() {
  return new DOMException('the task was cancelled', 'AbortError');
}

/** A counting semaphore: extra acquirers wait in FIFO order. */
class Semaphore {
  /** @param {number} slots */
  constructor(slots) {
    this.free = slots;
    /** @type {Array<() => void>} */
    this.waiters = [];
  }

  /**
   * @param {AbortSignal} signal gives up waiting when aborted
   * @returns {Promise<void>}
   */
  acquire(signal) {
    if (this.free > 0) {
      this.free -= 1;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const grant = () => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      };
      const onAbort = () => {
        this.waiters.splice(this.waiters.indexOf(grant), 1);
        reject(abortError());
      };
      this.waiters.push(grant);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  release() {
    const next = this.waiters.shift();
    if (next) next();
    else this.free += 1;
  }
}

/**
 * @param {string} code
 * @param {string} message
 * @param {boolean} retryable
 */
function errorResult(code, message, retryable) {
  return { error: { code, message, retryable } };
}

/**
 * @param {unknown} output
 */
function outputResult(output) {
  if (output === null || typeof output !== 'object' || Array.isArray(output)) {
    const kind = output === null ? 'null' : Array.isArray(output) ? 'an array' : typeof output;
    return errorResult('INVALID_OUTPUT', `the task returned ${kind}, not an object`, false);
  }
  try {
    return { output: toStruct(/** @type {Record<string, unknown>} */ (output), 'output') };
  } catch (error) {
    const message = `the task output is not JSON-compatible: ${/** @type {Error} */ (error).message}`;
    return errorResult('INVALID_OUTPUT', message.slice(0, MAX_ERROR_MESSAGE_CHARS), false);
  }
}

/** An agent: its card, its handler and counters; {@link Agent#serve} makes it a server. */
export class Agent {
  /** @type {Handler | null} */
  #handler = null;

  /** @param {AgentOptions} options */
  constructor({
    name,
    version = '0.0.0',
    description = '',
    skills = [],
    maxConcurrency = 0,
    handler,
    onCancel,
    maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES,
  }) {
    if (!name) throw new TypeError('an agent needs a name');
    if (!(maxConcurrency >= 0)) throw new RangeError('maxConcurrency cannot be negative');
    if (!(maxMessageBytes >= 1024)) throw new RangeError('maxMessageBytes must be >= 1024');
    this.name = name;
    this.version = version;
    this.description = description;
    this.skills = skills.map((skill) => ({
      id: skill.id,
      name: skill.name ?? '',
      description: skill.description ?? '',
      tags: skill.tags ?? [],
    }));
    this.maxConcurrency = maxConcurrency;
    this.maxMessageBytes = maxMessageBytes;
    this.onCancel = onCancel ?? null;
    /** Handlers running right now, across this agent's servers. */
    this.inFlight = 0;
    /** Handlers whose call was cancelled so far. */
    this.cancelledTasks = 0;
    /** Tasks finished with a result (output or error) so far. */
    this.completedTasks = 0;
    if (handler) this.task(handler);
  }

  /** The task function, once set. */
  get handler() {
    return this.#handler;
  }

  /**
   * Set the task function: receives a {@link Task}, returns (or resolves to) the output.
   *
   * @template {Handler} H
   * @param {H} handler
   * @returns {H}
   */
  task(handler) {
    if (this.#handler) throw new Error(`agent ${this.name} already has a task function`);
    if (typeof handler !== 'function') throw new TypeError('the task function must be a function');
    this.#handler = handler;
    return handler;
  }

  /** The agent card returned by `GetAgentCard`. */
  card() {
    return {
      name: this.name,
      version: this.version,
      description: this.description,
      skills: this.skills,
      max_concurrency: this.maxConcurrency,
      protocol_version: AGENT_PROTOCOL_VERSION,
    };
  }

  /** gRPC server options: message limits and keepalive, as the Python SDK sets them. */
  serverOptions() {
    return {
      'grpc.max_receive_message_length': this.maxMessageBytes,
      'grpc.max_send_message_length': this.maxMessageBytes,
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      'grpc.keepalive_permit_without_calls': 1,
      'grpc.http2.min_ping_interval_without_data_ms': 10_000,
      'grpc.http2.max_pings_without_data': 0,
    };
  }

  /**
   * Start a gRPC server for this agent (port 0 picks a free port); resolves once it
   * accepts calls.
   *
   * @param {string} [address] `host:port`, default `127.0.0.1:0`
   * @param {{ credentials?: grpc.ServerCredentials }} [options] `credentials`: serve TLS
   *   only ({@link agentServerCredentials}; register the agent as `grpcs://HOST:PORT`);
   *   default plaintext
   * @returns {Promise<AgentServer>}
   */
  async serve(address = '127.0.0.1:0', { credentials } = {}) {
    const handler = this.#handler;
    if (!handler) throw new Error(`agent ${this.name} has no task function`);
    const server = new grpc.Server(this.serverOptions());
    const semaphore = this.maxConcurrency ? new Semaphore(this.maxConcurrency) : null;
    const card = { card: this.card() };
    server.addService(agentPackage().AgentService.service, {
      ExecuteTask: (/** @type {grpc.ServerWritableStream<any, any>} */ call) => {
        this.#execute(call, handler, semaphore).catch(() => undefined);
      },
      GetAgentCard: (
        /** @type {unknown} */ _call,
        /** @type {grpc.sendUnaryData<any>} */ callback,
      ) => callback(null, card),
    });
    const health = new HealthImplementation({ '': 'SERVING', [SERVICE_NAME]: 'SERVING' });
    health.addToServer(server);
    const port = await new Promise((resolve, reject) => {
      server.bindAsync(address, credentials ?? grpc.ServerCredentials.createInsecure(), (error, bound) =>
        error ? reject(new Error(`agent ${this.name} cannot listen on ${address}: ${error.message}`)) : resolve(bound),
      );
    });
    const host = address.slice(0, address.lastIndexOf(':'));
    return new AgentServer(this, server, health, `${host}:${port}`, /** @type {number} */ (port));
  }

  /**
   * Run one ExecuteTask call to its single result.
   *
   * @param {grpc.ServerWritableStream<any, any>} call
   * @param {Handler} handler
   * @param {Semaphore | null} semaphore
   */
  async #execute(call, handler, semaphore) {
    const controller = new AbortController();
    const task = new Task(call.request, call, this, controller);
    call.on('cancelled', () => {
      if (controller.signal.aborted) return;
      controller.abort(abortError());
      this.cancelledTasks += 1;
      if (this.onCancel) {
        try {
          this.onCancel(task);
        } catch (error) {
          console.error(`agent ${this.name}: onCancel hook failed`, error);
        }
      }
    });
    if (semaphore) await semaphore.acquire(task.signal);
    /** @type {any} */
    let result;
    this.inFlight += 1;
    try {
      result = outputResult(await handler(task));
    } catch (error) {
      if (task.cancelled) return;
      if (error instanceof TaskFailed) {
        result = errorResult(error.code, error.detail, error.retryable);
      } else {
        console.error(`agent ${this.name}: task ${task.taskId} threw`, error);
        const text = error instanceof Error ? error.message || error.name : String(error);
        result = errorResult('AGENT_EXCEPTION', text.slice(0, MAX_ERROR_MESSAGE_CHARS), true);
      }
    } finally {
      this.inFlight -= 1;
      semaphore?.release();
    }
    // A handler that ignored the cancellation: the call is gone, drop its result.
    if (task.cancelled) return;
    result.usage = task.usageMessage;
    this.completedTasks += 1;
    await task.finish(result);
  }
}

/** A running agent server: its bound `address` and `port`, and `stop()`. */
export class AgentServer {
  /**
   * @param {Agent} agent
   * @param {grpc.Server} server
   * @param {HealthImplementation} health
   * @param {string} address
   * @param {number} port
   */
  constructor(agent, server, health, address, port) {
    this.agent = agent;
    this.server = server;
    this.health = health;
    /** `host:port` with the real port. */
    this.address = address;
    this.port = port;
  }

  /**
   * Report NOT_SERVING, let in-flight calls finish for `graceMs`, then cancel the rest
   * (their handlers see `task.signal` abort) and close.
   *
   * @param {number} [graceMs] default 5000; 0 cancels at once
   * @returns {Promise<void>}
   */
  async stop(graceMs = 5000) {
    this.health.setStatus('', 'NOT_SERVING');
    this.health.setStatus(SERVICE_NAME, 'NOT_SERVING');
    await new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.server.forceShutdown();
        resolve(undefined);
      }, graceMs);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve(undefined);
      });
    });
  }
}

/**
 * Serve `agent` until SIGTERM or SIGINT, then stop gracefully (for scripts).
 *
 * @param {Agent} agent
 * @param {string} [address]
 * @param {{ graceMs?: number, onReady?: (server: AgentServer) => void, credentials?: grpc.ServerCredentials }} [options]
 * @returns {Promise<void>}
 */
export async function runAgent(
  agent,
  address = '127.0.0.1:0',
  { graceMs = 5000, onReady, credentials } = {},
) {
  const server = await agent.serve(address, { credentials });
  onReady?.(server);
  await new Promise((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  await server.stop(graceMs);
}

/**
 * TLS credentials of an agent server, from PEM files: its certificate chain (naming the
 * host Podium calls) and unencrypted key; with `clientCaFile`, mTLS: only clients
 * (Podium) presenting a certificate of that CA complete the handshake.
 *
 * @param {{ certFile: string, keyFile: string, clientCaFile?: string }} files
 * @returns {grpc.ServerCredentials}
 */
export function agentServerCredentials({ certFile, keyFile, clientCaFile }) {
  if (!certFile || !keyFile) throw new TypeError('agentServerCredentials: certFile and keyFile are required');
  const clientCa = clientCaFile ? readFileSync(clientCaFile) : null;
  return grpc.ServerCredentials.createSsl(
    clientCa,
    [{ private_key: readFileSync(keyFile), cert_chain: readFileSync(certFile) }],
    clientCa !== null,
  );
}
