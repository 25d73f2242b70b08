"""Step credentials: the bearer token each agent call of a step attempt carries.

A credential is ``pds_`` and 64 hex digits (two random UUIDs: 244 random bits). The
claim makes one for each attempt of an agent step (``podium_claim_steps_of``,
``functions/40_claim.sql``: no round trip of its own), stores only its SHA-256 on the
attempt's ``step_attempts`` row (``credential_hash``) and hands it to the executor
(``ClaimedStep.credential``), which sends it in ``ExecuteTaskRequest.credential`` (A2A
agents get none: an A2A message has no field for it). The API layer's interceptor
accepts it (:meth:`StepCredentials.check`) while that attempt is the step's running
attempt: the answer is read from the database on every call, never cached, so the
credential is refused as soon as the attempt ends (result, retry, lost lease, cancelled
run) on every replica. Its holder acts for the run's organization with the role
``step``: it starts runs, which become child runs of the step (``RunService.start``
with ``parent``), and reads only those. As for API keys, a secret of that many random
bits needs no slow hash.
"""

from __future__ import annotations

import re

from podium.server.engine.api_keys import hash_key
from podium.server.engine.storage_errors import storage_errors
from podium.server.storage.api_keys import ApiKeysRepository, StepAttemptRef

__all__ = ["CREDENTIAL_PATTERN", "StepAttemptRef", "StepCredentials", "is_step_credential"]

CREDENTIAL_PATTERN = re.compile(r"pds_[0-9a-f]{64}")
"""The shape of a step credential; anything else is refused without a lookup."""


def is_step_credential(token: str) -> bool:
    """Whether a bearer token is meant as a step credential (``pds_`` prefix)."""
    return token.startswith("pds_")


class StepCredentials:
    """Checks step credentials (module docstring)."""

    def __init__(self, repository: ApiKeysRepository) -> None:
        self._repository = repository

    async def check(self, credential: str) -> StepAttemptRef | None:
        """The running attempt the credential belongs to; None when it is malformed,
        unknown, or its attempt has ended."""
        if not CREDENTIAL_PATTERN.fullmatch(credential):
            return None
        async with storage_errors():
            return await self._repository.find_step_credential(hash_key(credential))
