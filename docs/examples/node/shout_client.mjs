// Call Podium from Node.js (docs/clients.md): register the `shout` agent, store a
// one-step definition, run it and print the run's output.
//
//     npm install podium-client
//     node shout_client.mjs 127.0.0.1:50051 127.0.0.1:50061
//
// The first address is Podium's, the second the agent's (shout_agent.mjs).
import { NotFoundError, PodiumClient } from 'podium-client';

const [podiumAddress, agentAddress] = process.argv.slice(2);
const podium = new PodiumClient(podiumAddress, { timeoutMs: 10_000 });
try {
  await podium.registerAgent({ name: 'shouter', endpoint: agentAddress, skills: ['shout'] });
  await podium.createDefinition({
    name: 'shout',
    steps: [{ id: 'loud', skill: 'shout', input: { text: '${run.input.text}' } }],
  });
  const started = await podium.startRun({ definition: { name: 'shout' }, input: { text: 'hello' } });
  for await (const event of podium.watchRun(started.id)) console.error(event.sequence, event.type);
  const run = await podium.getRun(started.id);
  console.log(JSON.stringify({ state: run.state, output: run.output }));

  try { // refusals are typed errors carrying the server's google.rpc details
    await podium.getRun('00000000-0000-4000-8000-000000000000'); // no such run
  } catch (error) {
    if (!(error instanceof NotFoundError)) throw error;
    console.log(JSON.stringify({ refused: error.name, reason: error.reason }));
  }
} finally {
  podium.close();
}
