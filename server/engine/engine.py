"""The engine: the use cases behind every RPC, wired to one database."""

from __future__ import annotations

from podium.server.config import Settings
from podium.server.engine.definitions import DefinitionService
from podium.server.storage.database import Database
from podium.server.storage.definitions import DefinitionsRepository


class Engine:
    """Owns the services of one Podium replica. The API layer calls into it."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.definitions = DefinitionService(
            DefinitionsRepository(db), cache_size=settings.cache_max_definitions
        )

    async def start(self) -> None:
        """Start background work (scheduler, reapers). Nothing yet besides the pool."""

    async def stop(self) -> None:
        """Stop background work; in-flight work is left for another replica to take over."""

    async def healthy(self) -> bool:
        """Whether the database answers."""
        try:
            await self.db.ping()
        except Exception:
            return False
        return True
