"""The HTTP/JSON gateway and the web console (``PODIUM_CONSOLE_ADDRESS``).

A browser cannot speak native gRPC, so this package serves the contract over HTTP/1.1
with JSON bodies. It holds no rule of its own: every request is forwarded to the
server's own gRPC listen address (:mod:`.upstream`), the ``Authorization`` header (or
the console's session cookie) travelling as ``authorization`` metadata, and the gRPC
status comes back as an HTTP status with a ``google.rpc.Status`` JSON body
(:mod:`.rpc`). WatchRun and WatchRuns become Server-Sent Events (:mod:`.sse`). The
console (:mod:`.console`, ``static/``) is static HTML, CSS and vanilla JS that uses
only these endpoints. :class:`.server.Gateway` runs it all under uvicorn in the gRPC
server's own event loop.
"""
