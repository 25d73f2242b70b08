"""The budget every system of the side-by-side benchmark gets (standard library only:
``podium_serve`` imports it under another checkout's interpreter)."""

# Steps in flight at once, connections to PostgreSQL.
INFLIGHT = 100
POOL_SIZE = 10
