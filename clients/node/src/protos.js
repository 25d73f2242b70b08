/**
 * Loading Podium's contracts (the `.proto` files) at run time.
 *
 * The `.proto` files are the single source of truth (the Python code is generated from
 * the same files). In the repository they are read from `protos/`; the published package
 * carries a copy in its own `protos/` directory (copied by `npm pack`, see
 * `scripts/prepack.js`). `@grpc/proto-loader` parses
 * them with these options, which shape every message this library sends or receives:
 *
 * - `keepCase: true`: fields keep their proto names (`run_id`, `after_sequence`), the
 *   names used by the protos, grpcurl and the API's JSON.
 * - `longs: Number`: int64 fields (`sequence`, token counts) are JS numbers; they stay
 *   exact below 2**53.
 * - `enums: String`: enums are their names (`"STATE_SUCCEEDED"`, `"TYPE_RUN_COMPLETED"`);
 *   requests may use names or numbers.
 * - `defaults: true`: unset scalar, repeated and map fields read as their proto3 default
 *   (`""`, `0`, `[]`, `{}`); unset message fields are `null`.
 * - `oneofs: true`: each oneof gets a virtual field naming the member that is set
 *   (`response.event === "result"`, `step.target === "agent"`).
 *
 * `google/protobuf/*.proto` (Struct, Timestamp, Duration) come bundled with protobufjs,
 * so no include directory is needed for them. Set `PODIUM_PROTOS_DIR` to load the
 * contracts from somewhere else.
 *
 * @module
 */

import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

const PACKAGE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/**
 * Directory holding `podium/...` protos: `PODIUM_PROTOS_DIR`, else the package's own
 * `protos/` (an installed package), else the repository's `protos/` (a checkout).
 */
export const PROTOS_DIR =
  process.env.PODIUM_PROTOS_DIR ||
  [path.join(PACKAGE_DIR, 'protos'), path.resolve(PACKAGE_DIR, '..', '..', 'protos')].find(
    (dir) => existsSync(path.join(dir, 'podium', 'agent', 'v1', 'agent.proto')),
  ) ||
  path.resolve(PACKAGE_DIR, '..', '..', 'protos');

/** The proto-loader options every message of this library follows (see the module doc). */
export const LOADER_OPTIONS = Object.freeze({
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTOS_DIR],
});

/** The protocol version agents announce in their card. */
export const AGENT_PROTOCOL_VERSION = 'podium.agent.v1';

/** @type {Map<string, grpc.GrpcObject>} */
const loaded = new Map();

/**
 * Load one proto file (relative to {@link PROTOS_DIR}) once, as a gRPC object tree.
 *
 * @param {string} file e.g. `podium/agent/v1/agent.proto`
 * @returns {grpc.GrpcObject}
 */
export function loadProto(file) {
  let object = loaded.get(file);
  if (object === undefined) {
    const definition = protoLoader.loadSync(file, LOADER_OPTIONS);
    object = grpc.loadPackageDefinition(definition);
    loaded.set(file, object);
  }
  return object;
}

/**
 * `podium.agent.v1`: `AgentService` and its messages.
 *
 * @returns {any}
 */
export function agentPackage() {
  return /** @type {any} */ (loadProto('podium/agent/v1/agent.proto')).podium.agent.v1;
}

/**
 * `podium.orchestration.v1`: `OrchestrationService` and its messages.
 *
 * @returns {any}
 */
export function orchestrationPackage() {
  return /** @type {any} */ (loadProto('podium/orchestration/v1/orchestration_service.proto'))
    .podium.orchestration.v1;
}
