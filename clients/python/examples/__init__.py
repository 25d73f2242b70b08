"""Built-in example agents (echo, summarizer, sleeper, flaky, noop, ...) for tests and demos.

The agents live in :mod:`podium.client.examples.agents`; run them all as one process with
``python -m podium.client.examples.agents``. This package deliberately imports nothing,
so that running the module with ``-m`` does not import it twice.
"""
