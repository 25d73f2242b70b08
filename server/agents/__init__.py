"""Agents: the gRPC client Podium uses to call agents (:mod:`.client`) and the agent
entry rules plus the ``PODIUM_AGENTS`` parser (:mod:`.static`).

This package never imports the engine or the API; the registry's repository lives in
``podium.server.storage.agents`` and its use cases in ``podium.server.engine.agents``.
"""
