"""The systems of the side-by-side benchmark (``bench/sidebyside.py``): Podium, its
peers (DBOS, LangGraph; bench-only extras, imported only when selected) and the
ceilings (a raw SKIP LOCKED queue, a one-message gRPC call to another process)."""
