"""Standard Webhooks signing, the secret setting, the retry schedule, and header values
the HTTP client refuses (tests/integration/test_webhook_post.py: what it sends)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random

import pytest

from podium.server.config import ConfigError, SecretValue, Settings
from podium.server.events.webhooks import (
    WebhookSigner,
    parse_webhook_url,
    post_webhook,
    retry_delay,
    webhook_key,
)

# The test vector published with the Standard Webhooks reference implementations.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    signer = WebhookSigner(SPEC_SECRET)
    assert signer.sign(SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_the_whsec_prefix_is_optional() -> None:
    bare = WebhookSigner(SPEC_SECRET.removeprefix("whsec_"))
    assert bare.sign(SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_headers_verify_with_an_independent_verifier() -> None:
    secret = "whsec_" + base64.b64encode(bytes(range(32))).decode()
    body = b'{"type":"run.started","data":{"sequence":2}}'
    headers = WebhookSigner(secret).headers("delivery-1", body, timestamp=1_700_000_000)
    assert headers["webhook-id"] == "delivery-1"
    assert headers["webhook-timestamp"] == "1700000000"
    version, signature = headers["webhook-signature"].split(",", 1)
    expected = hmac.new(bytes(range(32)), b"delivery-1.1700000000." + body, hashlib.sha256)
    assert version == "v1"
    assert base64.b64decode(signature) == expected.digest()
    # Another body, id or time gives another signature.
    signer = WebhookSigner(secret)
    assert signer.sign("delivery-1", 1_700_000_000, body + b" ") != headers["webhook-signature"]
    assert signer.sign("delivery-2", 1_700_000_000, body) != headers["webhook-signature"]
    assert signer.sign("delivery-1", 1_700_000_001, body) != headers["webhook-signature"]


@pytest.mark.parametrize(
    "secret", ["", "whsec_", "whsec_not base64!", "whsec_c2hvcnQ=", "plain words here"]
)
def test_bad_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ValueError):
        webhook_key(secret)
    if secret:
        with pytest.raises(ConfigError, match="PODIUM_WEBHOOK_SECRET") as refused:
            Settings.from_env({"PODIUM_WEBHOOK_SECRET": secret})
        if len(secret) > len("whsec_"):
            assert secret not in str(refused.value)  # the value is never echoed


def test_the_secret_setting_never_prints() -> None:
    settings = Settings.from_env({"PODIUM_WEBHOOK_SECRET": SPEC_SECRET})
    assert isinstance(settings.webhook_secret, SecretValue)
    assert settings.webhook_secret.value == SPEC_SECRET
    assert settings.describe()["PODIUM_WEBHOOK_SECRET"] == "***"
    assert "MfKQ9r8" not in repr(settings)
    assert "MfKQ9r8" not in repr(WebhookSigner(SPEC_SECRET))
    assert Settings.from_env({}).webhook_secret is None


def test_retry_delays_grow_four_times_with_jitter_and_a_cap() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 5.0), (2, 20.0), (3, 80.0), (6, 3600.0), (500, 3600.0)]:
        delays = [retry_delay(attempt, initial=5, maximum=3600, rng=rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, min(delays))
        assert max(delays) - min(delays) > ceiling / 10  # jittered


async def test_header_values_cannot_inject_lines() -> None:
    with pytest.raises(ValueError, match="line breaks"):
        await post_webhook(
            parse_webhook_url("http://127.0.0.1:9/"),
            b"{}",
            {"webhook-id": "x\r\nEvil: 1"},
            allow_private=True,
            timeout_seconds=1,
        )
