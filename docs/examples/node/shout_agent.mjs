// A Podium agent in Node.js with one skill, `shout` (docs/agents.md).
//
//     npm install podium-client
//     node shout_agent.mjs 127.0.0.1:50061
//
// Prints {"address": ...} once serving, then serves until Ctrl-C or SIGTERM.
import { Agent, TaskFailed, runAgent } from 'podium-client';

const agent = new Agent({
  name: 'shouter',
  version: '1.0.0',
  skills: [{ id: 'shout', name: 'Shout' }],
  handler: async (task) => {
    const text = task.input.text;
    if (typeof text !== 'string') throw new TaskFailed('INVALID_INPUT', 'input.text must be a string', false);
    await task.progress('shouting', 0.5); // a step.progress event of the run
    return { text: `${text.toUpperCase()}!` }; // the step's output
  },
});

await runAgent(agent, process.argv[2] ?? '127.0.0.1:50061', {
  onReady: (server) => console.log(JSON.stringify({ address: server.address })),
});
