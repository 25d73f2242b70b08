"""Forward-only SQL migrations, applied in order by podium.server.storage.migrations."""
