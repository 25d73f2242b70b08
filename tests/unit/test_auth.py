"""The permission table, bearer metadata parsing, key format and the mTLS identity hook."""

from __future__ import annotations

import hashlib

import pytest
from a2a.types import a2a_pb2

from podium.orchestration.v1 import orchestration_service_pb2 as pb
from podium.server.api.auth import (
    PERMISSIONS,
    Principal,
    bearer_key,
    certificate_principal,
    organization_of,
)
from podium.server.config import ConfigError, Settings
from podium.server.engine.api_keys import KEY_PATTERN, hash_key, make_key
from podium.server.storage.api_keys import ROLES

RPCS = [
    *(m.name for m in pb.DESCRIPTOR.services_by_name["OrchestrationService"].methods),
    *(m.name for m in a2a_pb2.DESCRIPTOR.services_by_name["A2AService"].methods),
]


def test_every_rpc_has_a_permission_entry() -> None:
    assert sorted(PERMISSIONS) == sorted(RPCS), "give each new RPC its roles in PERMISSIONS"
    for rpc, roles in PERMISSIONS.items():
        assert "admin" in roles or roles == {"agent"}, rpc
        assert roles <= {*ROLES, "step"}, rpc
    # A step credential (role step, never stored as a key's role) starts runs and reads
    # them (the servicer limits it to its step's child runs).
    assert {rpc for rpc, roles in PERMISSIONS.items() if "step" in roles} == {
        "StartRun",
        "GetRun",
        "GetRunPayload",
        "ListRuns",
        "ListRunEvents",
        "WatchRun",
    }
    # Viewers only read: nothing that changes state.
    viewer = {rpc for rpc, roles in PERMISSIONS.items() if "viewer" in roles}
    reads = ("Get", "List", "Watch", "Validate", "Subscribe")
    assert all(rpc.startswith(reads) for rpc in viewer), viewer
    # Operators can do all a viewer can, admins all an operator can.
    for rpc, roles in PERMISSIONS.items():
        assert "viewer" not in roles or "operator" in roles, rpc
        assert "operator" not in roles or "admin" in roles, rpc
    assert {rpc for rpc, roles in PERMISSIONS.items() if roles == {"admin"}} == {
        "CreateDefinition",
        "ArchiveDefinition",
        "RegisterAgent",
        "DeregisterAgent",
        "UpdateRoutingPolicy",
    }


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((), (None, 0)),
        ((("authorization", "Bearer k1"),), ("k1", 1)),
        ((("authorization", "bearer  k1 "),), ("k1", 1)),
        ((("authorization", "Basic k1"),), (None, 1)),
        ((("authorization", "Bearer a"), ("authorization", "Bearer b")), (None, 2)),
        ((("x-other", "Bearer k1"),), (None, 0)),
    ],
)
def test_bearer_key(metadata: tuple[tuple[str, str], ...], expected: tuple[object, int]) -> None:
    assert bearer_key(metadata) == expected


def test_keys_are_random_and_hashed_with_sha256() -> None:
    keys = {make_key() for _ in range(50)}
    assert len(keys) == 50
    for key, prefix, digest in keys:
        assert KEY_PATTERN.fullmatch(key) and key.startswith(f"pdm_{prefix}_")
        assert digest == hash_key(key) == hashlib.sha256(key.encode()).hexdigest()
        assert key not in digest


def test_mtls_identities_map_a_verified_common_name_to_org_and_role() -> None:
    settings = Settings.from_env({"PODIUM_MTLS_IDENTITIES": "worker-1=acme:agent, ops=acme:admin"})
    identities = {cn: (org, role) for cn, org, role in settings.mtls_identities}
    assert identities == {"worker-1": ("acme", "agent"), "ops": ("acme", "admin")}
    tls = {"transport_security_type": [b"ssl"], "x509_common_name": [b"worker-1"]}
    assert certificate_principal(tls, identities) == Principal("acme", "agent", "certificate")
    # Not over TLS, unknown name, or no identities configured: no principal.
    assert (
        certificate_principal({**tls, "transport_security_type": [b"insecure"]}, identities) is None
    )
    assert certificate_principal({**tls, "x509_common_name": [b"other"]}, identities) is None
    assert certificate_principal(tls, {}) is None


@pytest.mark.parametrize(
    "raw", ["worker", "worker=acme", "worker=acme:root", "=acme:admin", "a=o:admin,a=o:viewer"]
)
def test_bad_mtls_identities_are_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="PODIUM_MTLS_IDENTITIES"):
        Settings.from_env({"PODIUM_MTLS_IDENTITIES": raw})


def test_auth_is_on_with_a_database_url_unless_told_otherwise() -> None:
    url = {"PODIUM_DATABASE_URL": "postgresql://db/podium"}
    assert Settings.from_env(url).auth_required
    assert not Settings.from_env({}).auth_required
    assert not Settings.from_env({**url, "PODIUM_AUTH": "disabled"}).auth_required
    assert Settings.from_env({"PODIUM_AUTH": "required"}).auth_required
    with pytest.raises(ConfigError, match="PODIUM_AUTH"):
        Settings.from_env({"PODIUM_AUTH": "maybe"})


def test_without_a_principal_the_default_organization_is_used() -> None:
    assert organization_of("default") == "default"
