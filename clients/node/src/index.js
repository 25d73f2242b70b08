/**
 * Podium for Node.js: the agent SDK and the OrchestrationService client.
 *
 * @module
 */

export { Agent, AgentServer, Task, TaskFailed, runAgent, SERVICE_NAME } from './agent.js';
export {
  PodiumClient,
  TERMINAL_EVENT_TYPES,
  TERMINAL_RUN_STATES,
  RECONNECT_CODES,
} from './client.js';
export { fromStruct, fromValue, toStruct, toValue } from './struct.js';
export {
  AGENT_PROTOCOL_VERSION,
  LOADER_OPTIONS,
  PROTOS_DIR,
  agentPackage,
  loadProto,
  orchestrationPackage,
} from './protos.js';
