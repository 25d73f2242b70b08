"""Agents: the gRPC client Podium uses to call ``podium.agent.v1`` agents
(:mod:`.client`), the A2A adapter for agents speaking A2A 1.0 or 0.3 over gRPC
(:mod:`.a2a`, the client; :mod:`.a2a_attempt`, the calls of one attempt;
:mod:`.a2a_events`, events to progress, output and outcome; :mod:`.a2a_v03`, 0.3 behind
the 1.0 calls), the one channel pool both clients share (:mod:`.channels`), the
dispatcher choosing between them by the agent's protocol (:mod:`.dispatch`), and the
agent entry rules plus the ``PODIUM_AGENTS`` parser (:mod:`.static`).

This package never imports the engine or the API; the registry's repository lives in
``podium.server.storage.agents`` and its use cases in ``podium.server.engine.agents``.
"""
