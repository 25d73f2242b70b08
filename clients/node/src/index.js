/**
 * Podium for Node.js: the agent SDK and the OrchestrationService client.
 *
 * @module
 */

export {
  Agent,
  AgentServer,
  Task,
  TaskFailed,
  agentServerCredentials,
  runAgent,
  SERVICE_NAME,
} from './agent.js';
export {
  PodiumClient,
  TERMINAL_EVENT_TYPES,
  TERMINAL_RUN_STATES,
  RECONNECT_CODES,
  tlsCredentials,
} from './client.js';
export {
  AlreadyExistsError,
  DeadlineExceededError,
  FailedPreconditionError,
  NotFoundError,
  PermissionDeniedError,
  PodiumError,
  ResourceExhaustedError,
  STATUS_DETAILS_KEY,
  UnauthenticatedError,
  UnavailableError,
  UnimplementedError,
  ValidationError,
  decodeStatus,
  fromServiceError,
  fromStatus,
} from './errors.js';
export { fromStruct, fromValue, toStruct, toValue } from './struct.js';
export {
  AGENT_PROTOCOL_VERSION,
  LOADER_OPTIONS,
  PROTOS_DIR,
  agentPackage,
  loadProto,
  orchestrationPackage,
} from './protos.js';
