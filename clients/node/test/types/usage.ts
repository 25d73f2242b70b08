// Type-checked by `npm run typecheck` (never run): the agent SDK, the client and the
// errors as a TypeScript program uses them. The same program, importing
// 'podium-client', is checked against the packed types/*.d.ts by test/package.test.js.
import {
  Agent,
  NotFoundError,
  PodiumClient,
  PodiumError,
  TaskFailed,
  ValidationError,
  runAgent,
} from '../../src/index.js';

const agent = new Agent({
  name: 'shouter',
  version: '1.0.0',
  skills: [{ id: 'shout', name: 'Shout' }],
  handler: async (task) => {
    const text = task.input.text;
    if (typeof text !== 'string') throw new TaskFailed('INVALID_INPUT', 'text?', false);
    await task.progress('shouting', 0.5);
    return { text: text.toUpperCase() };
  },
});

export async function main(): Promise<string> {
  void runAgent(agent, '127.0.0.1:0', { onReady: (server) => console.log(server.address) });
  const podium = new PodiumClient('127.0.0.1:50051', { timeoutMs: 5000 });
  try {
    const run = await podium.startRun({ definition: { name: 'shout' }, input: { text: 'hi' } });
    for await (const event of podium.watchRun(run.id)) console.log(event.sequence, event.type);
    const usage = await podium.getUsage({ startTime: new Date(0), groupBy: ['agent', 'model'] });
    console.log(usage.length);
    return JSON.stringify((await podium.getRun(run.id)).output);
  } catch (error) {
    if (error instanceof ValidationError) return error.fieldViolations.map((v) => v.field).join();
    if (error instanceof NotFoundError || error instanceof PodiumError) return error.reason;
    throw error;
  } finally {
    podium.close();
  }
}
