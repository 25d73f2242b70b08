"""Step credentials: the bearer token each agent call of a step attempt carries.

A credential is ``pds_<secret>`` (32 random bytes, URL-safe base64). The executor makes
one per agent call (:meth:`StepCredentials.issue`), stores only its SHA-256 on the
attempt's ``step_attempts`` row (fenced on the attempt) and sends it in
``ExecuteTaskRequest.credential``. The API layer's interceptor accepts it
(:meth:`StepCredentials.check`) while that attempt is the step's running attempt: the
answer is read from the database on every call, never cached, so the credential is
refused as soon as the attempt ends (result, retry, lost lease, cancelled run) on every
replica. Its holder acts for the run's organization with the role ``step``: it starts
runs, which become child runs of the step (``RunService.start`` with ``parent``), and
reads only those. As for API keys, a 256-bit random secret needs no slow hash.
"""

from __future__ import annotations

import re
import secrets

from podium.server.engine.api_keys import hash_key
from podium.server.engine.storage_errors import storage_errors
from podium.server.storage.api_keys import ApiKeysRepository, StepAttemptRef

__all__ = ["CREDENTIAL_PATTERN", "StepAttemptRef", "StepCredentials", "is_step_credential"]

CREDENTIAL_PATTERN = re.compile(r"pds_[A-Za-z0-9_-]{43}")
"""The shape of a step credential; anything else is refused without a lookup."""


def is_step_credential(token: str) -> bool:
    """Whether a bearer token is meant as a step credential (``pds_`` prefix)."""
    return token.startswith("pds_")


class StepCredentials:
    """Issues and checks step credentials (module docstring)."""

    def __init__(self, repository: ApiKeysRepository) -> None:
        self._repository = repository

    async def issue(self, step: StepAttemptRef) -> str | None:
        """A new credential for the attempt, its hash stored; None when the step no longer
        runs that attempt (the attempt is stale: nothing is sent)."""
        credential = f"pds_{secrets.token_urlsafe(32)}"
        async with storage_errors():
            stored = await self._repository.set_step_credential(
                step.run_id, step.step_id, step.attempt, hash_key(credential)
            )
        return credential if stored else None

    async def check(self, credential: str) -> StepAttemptRef | None:
        """The running attempt the credential belongs to; None when it is malformed,
        unknown, or its attempt has ended."""
        if not CREDENTIAL_PATTERN.fullmatch(credential):
            return None
        async with storage_errors():
            return await self._repository.find_step_credential(hash_key(credential))
