"""The benchmarks' harness: what ``bench/engine.py``, ``bench/cache.py`` and
``bench/watch.py`` share, kept apart from their scenarios.

- ``common``: progress lines, channel options, terminal event types, percentiles;
- ``server``: the benchmark database (created and dropped), ``PodiumServer`` settings,
  the machine's description;
- ``agent``: the no-op agent and the example agents in child processes;
- ``watchers``: WatchRun clients in a child process;
- ``baseline``: the grpc.aio ceiling (bare client -> no-op agent);
- ``runs``: start runs, detect their completion, measure a scenario;
- ``probes``: timing of the engine's repository calls and agent calls;
- ``cpu``: CPU and memory of this process, the agent and the database backends;
- ``postgres``: sampled backend activity and cumulative database statistics;
- ``profiling``: cProfile summaries.
"""
