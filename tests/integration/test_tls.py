"""TLS and mTLS of Podium's gRPC port with real handshakes: the Python clients, the CLI
against a ``podium serve`` process, the Node client, and the refusal of bad TLS files
before the database is touched."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from podium.client import (
    PermissionDeniedError,
    PodiumClient,
    SyncPodiumClient,
    TlsConfigError,
    UnauthenticatedError,
    UnavailableError,
    tls_credentials,
)
from podium.server.app import PodiumServer
from podium.server.config import ConfigError, Settings
from scripts.dev_certs import Issued, issue, write
from tests.integration.client_helpers import podium
from tests.integration.conftest import NODE_DIR, StartServer, public_tables
from tests.integration.processes import PODIUM, start_serve
from tests.integration.tls_certs import Certs, certs, tls_settings

__all__ = ["certs"]  # the fixture, used by name


async def reachable(address: str, credentials: grpc.ChannelCredentials | None) -> None:
    """One ListDefinitions call, without retries (a failed handshake is UNAVAILABLE)."""
    async with PodiumClient(address, credentials=credentials, retry=None, timeout=10) as client:
        await client.list_definitions()


async def test_a_client_trusting_the_ca_connects(start_server: StartServer, certs: Certs) -> None:
    server = await start_server(**tls_settings(certs))
    await reachable(server.address, tls_credentials(certs.ca))
    # The host name form: the certificate names localhost too.
    await reachable(f"localhost:{server.port}", tls_credentials(certs.ca))

    # The blocking client takes the same credentials (in a thread: the server runs on
    # this event loop).
    def blocking() -> list[object]:
        with SyncPodiumClient(server.address, credentials=tls_credentials(certs.ca)) as client:
            return list(client.list_definitions().items)

    assert await asyncio.to_thread(blocking) == []


async def test_clients_without_the_ca_or_in_plaintext_fail(
    start_server: StartServer, certs: Certs
) -> None:
    server = await start_server(**tls_settings(certs))
    # The system's roots do not know the development CA.
    with pytest.raises(UnavailableError):
        await reachable(server.address, tls_credentials())
    with pytest.raises(UnavailableError):
        await reachable(server.address, tls_credentials(certs.other_ca))
    # A plaintext client gets no answer from a TLS port.
    with pytest.raises(UnavailableError):
        await reachable(server.address, None)


async def test_mtls_requires_a_certificate_of_the_client_ca(
    start_server: StartServer, certs: Certs
) -> None:
    server = await start_server(**tls_settings(certs, mtls=True))
    await reachable(
        server.address, tls_credentials(certs.ca, certs.cert("alice"), certs.key("alice"))
    )
    with pytest.raises(UnavailableError):  # no client certificate
        await reachable(server.address, tls_credentials(certs.ca))
    with pytest.raises(UnavailableError):  # CN alice too, but signed by another CA
        await reachable(
            server.address, tls_credentials(certs.ca, certs.cert("mallory"), certs.key("mallory"))
        )


async def test_a_mapped_client_certificate_is_the_callers_principal(
    start_server: StartServer, certs: Certs
) -> None:
    """With authentication on, a verified certificate named in PODIUM_MTLS_IDENTITIES
    stands for an API key: its organization and role apply; other names need a key."""
    server = await start_server(
        **tls_settings(certs, mtls=True),
        auth="required",
        mtls_identities=(("alice", "default", "viewer"),),
    )
    alice = tls_credentials(certs.ca, certs.cert("alice"), certs.key("alice"))
    async with PodiumClient(server.address, credentials=alice, api_key="", retry=None) as client:
        await client.list_definitions()  # a viewer reads
        with pytest.raises(PermissionDeniedError):  # and starts nothing
            await client.start_run(plan={"steps": [{"id": "a", "agent": "echo"}]})
    worker = tls_credentials(certs.ca, certs.cert("worker"), certs.key("worker"))
    with pytest.raises(UnauthenticatedError):  # verified, but not mapped: a key is needed
        await reachable_with_key(server.address, worker)


async def reachable_with_key(address: str, credentials: grpc.ChannelCredentials) -> None:
    async with PodiumClient(address, credentials=credentials, api_key="", retry=None) as client:
        await client.list_definitions()


async def test_replaced_tls_files_are_served_without_a_restart(
    start_server: StartServer, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(**tls_settings(certs))
    await reachable(server.address, tls_credentials(certs.ca))
    # Rotate to a certificate of another CA: new connections get it.
    other = Issued(certs.other_ca.read_bytes(), certs.key("other-ca").read_bytes())
    write(
        certs.directory,
        "server",
        issue(other, "localhost", names=("localhost",), ips=("127.0.0.1",), server=True),
    )
    await reachable(server.address, tls_credentials(certs.other_ca))
    with pytest.raises(UnavailableError):
        await reachable(server.address, tls_credentials(certs.ca))
    assert server.tls is not None and server.tls.reloads == 1
    # A key that does not match is refused: the previous certificate stays in service.
    shutil.copy(certs.key("alice"), certs.key("server"))
    with caplog.at_level(logging.WARNING, logger="podium.server"):
        await reachable(server.address, tls_credentials(certs.other_ca))
        await reachable(server.address, tls_credentials(certs.other_ca))
    warnings = [r.getMessage() for r in caplog.records if "cannot be used" in r.getMessage()]
    assert len(warnings) == 1 and "does not belong to the certificate" in warnings[0], warnings
    assert certs.key("alice").read_text().splitlines()[1] not in caplog.text
    assert server.tls.reloads == 1


async def test_the_handler_sees_the_verified_client_identity(
    start_server: StartServer, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(**tls_settings(certs, mtls=True))
    with caplog.at_level(logging.DEBUG, logger="podium.server.api"):
        await reachable(
            server.address, tls_credentials(certs.ca, certs.cert("alice"), certs.key("alice"))
        )
        await reachable(
            server.address, tls_credentials(certs.ca, certs.cert("worker"), certs.key("worker"))
        )
    seen = [
        (r.method, r.common_name, r.alternative_names)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "client identity"
    ]
    assert seen == [
        ("ListDefinitions", "alice", []),
        ("ListDefinitions", "worker", ["worker.example"]),
    ]


async def test_tls_without_client_ca_logs_no_identity(
    start_server: StartServer, certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    # A certificate the server did not ask for is no identity.
    server = await start_server(**tls_settings(certs))
    with caplog.at_level(logging.DEBUG, logger="podium.server.api"):
        await reachable(
            server.address, tls_credentials(certs.ca, certs.cert("alice"), certs.key("alice"))
        )
    assert not [r for r in caplog.records if r.getMessage() == "client identity"]


def test_bad_tls_files_are_refused_with_the_setting_named(certs: Certs, tmp_path: Path) -> None:
    cases = [
        (
            {"tls_cert_file": tmp_path / "missing.pem", "tls_key_file": certs.key("server")},
            "PODIUM_TLS_CERT_FILE: .*missing.pem does not exist",
        ),
        (
            {"tls_cert_file": certs.cert("server"), "tls_key_file": certs.key("alice")},
            "PODIUM_TLS_KEY_FILE: the key in .*alice.key does not belong to the certificate",
        ),
        (
            {"tls_cert_file": certs.key("server"), "tls_key_file": certs.key("server")},
            "PODIUM_TLS_CERT_FILE: .* holds no PEM certificate",
        ),
        ({"tls_cert_file": certs.cert("server")}, "PODIUM_TLS_KEY_FILE is required"),
        ({"tls_client_ca_file": certs.ca}, "needs PODIUM_TLS_CERT_FILE"),
        (
            {**tls_settings(certs), "tls_client_ca_file": certs.key("alice")},
            "PODIUM_TLS_CLIENT_CA_FILE: .* holds no usable CA certificate",
        ),
        ({"agent_tls_ca_file": tmp_path}, "PODIUM_AGENT_TLS_CA_FILE: .* is a directory"),
        (
            {"agent_tls_cert_file": certs.cert("podium"), "agent_tls_key_file": certs.key("alice")},
            "PODIUM_AGENT_TLS_KEY_FILE: the key in .*alice.key does not belong",
        ),
    ]
    key = serialization.load_pem_private_key(certs.key("server").read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    cases.append(
        (
            {"tls_cert_file": certs.cert("server"), "tls_key_file": encrypted},
            "PODIUM_TLS_KEY_FILE: .*encrypted.key is an encrypted key",
        )
    )
    secret = certs.key("alice").read_text().splitlines()[1]
    for overrides, pattern in cases:
        with pytest.raises(ConfigError, match=pattern) as refused:
            Settings.from_env({}, **overrides)
        assert secret not in str(refused.value)
    unreadable = certs.directory / "unreadable.key"
    shutil.copy(certs.key("server"), unreadable)
    unreadable.chmod(0)
    if os.geteuid() != 0:  # root reads anything
        with pytest.raises(ConfigError, match="PODIUM_TLS_KEY_FILE: cannot read"):
            Settings.from_env({}, tls_cert_file=certs.cert("server"), tls_key_file=unreadable)


async def test_a_key_replaced_after_the_settings_stops_the_start(
    empty_database_url: str, certs: Certs
) -> None:
    settings = Settings.from_env(
        {}, database_url=empty_database_url, listen_address="127.0.0.1:0", **tls_settings(certs)
    )
    shutil.copy(certs.key("alice"), certs.key("server"))
    server = PodiumServer(settings)
    try:
        with pytest.raises(Exception, match="does not belong to the certificate"):
            await server.start()
    finally:
        await server.stop(0)
    assert server.port == 0  # never bound
    assert await public_tables(empty_database_url) == 0


async def test_podium_serve_refuses_bad_tls_before_migrating(
    empty_database_url: str, certs: Certs
) -> None:
    env = {
        **os.environ,
        "PODIUM_DATABASE_URL": empty_database_url,
        "PODIUM_TLS_CERT_FILE": str(certs.cert("server")),
        "PODIUM_TLS_KEY_FILE": str(certs.key("alice")),
        "PODIUM_LOG_FORMAT": "json",
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [PODIUM, "serve", "--listen-address", "127.0.0.1:0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "PODIUM_TLS_KEY_FILE: the key in" in done.stderr
    assert certs.key("alice").read_text().splitlines()[1] not in done.stderr + done.stdout
    assert await public_tables(empty_database_url) == 0


async def test_the_cli_over_tls_and_mtls_against_podium_serve(
    database_url: str, certs: Certs
) -> None:
    serve = await asyncio.to_thread(
        start_serve,
        {
            "PODIUM_DATABASE_URL": database_url,
            "PODIUM_TLS_CERT_FILE": str(certs.cert("server")),
            "PODIUM_TLS_KEY_FILE": str(certs.key("server")),
            "PODIUM_TLS_CLIENT_CA_FILE": str(certs.ca),
            "PODIUM_LOG_LEVEL": "debug",
        },
    )
    try:
        address = ["--address", serve.address]
        mtls = ["--tls-cert", str(certs.cert("alice")), "--tls-key", str(certs.key("alice"))]
        listed = await podium("definitions", "list", *address, "--tls-ca", str(certs.ca), *mtls)
        assert listed.returncode == 0, listed.stderr
        # Without the client certificate, and in plaintext: the server is not reached.
        no_cert = await podium(
            "definitions", "list", *address, "--tls-ca", str(certs.ca), "--timeout", "3"
        )
        assert no_cert.returncode == 3, no_cert.stderr
        plain = await podium("definitions", "list", *address, "--timeout", "3")
        assert plain.returncode == 3, plain.stderr
        # Half a pair is bad usage, before any call.
        half = await podium("definitions", "list", *address, "--tls-cert", mtls[1])
        assert half.returncode == 2
        assert "--tls-cert and --tls-key" in half.stderr
    finally:
        assert serve.terminate() == 0
    identities = [entry for entry in serve.logs if entry.get("message") == "client identity"]
    assert identities and identities[0]["common_name"] == "alice", identities
    key_line = certs.key("server").read_text().splitlines()[1]
    assert not any(key_line in json.dumps(entry) for entry in serve.logs)
    listening = next(entry for entry in serve.logs if entry.get("message") == "gRPC listening")
    assert listening["tls"] == "mtls"


async def test_the_cli_reads_the_tls_environment(start_server: StartServer, certs: Certs) -> None:
    server = await start_server(**tls_settings(certs))
    env = {**os.environ, "PODIUM_TLS_CA": str(certs.ca), "PODIUM_ADDRESS": server.address}
    run = await asyncio.to_thread(
        subprocess.run,
        [PODIUM, "definitions", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    shown = await asyncio.to_thread(
        subprocess.run,
        [PODIUM, "config", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    config = json.loads(shown.stdout)
    assert config["tls_ca"] == {"value": str(certs.ca), "source": "env PODIUM_TLS_CA"}


def test_client_tls_files_are_checked() -> None:
    with pytest.raises(TlsConfigError, match="nowhere.pem"):
        tls_credentials("/nowhere.pem")
    with pytest.raises(TlsConfigError, match="both"):
        tls_credentials(None, "/a.pem", None)


NODE_SCRIPT = """
import { PodiumClient, tlsCredentials } from './src/index.js';
const [address, caFile, certFile, keyFile] = process.argv.slice(1);
const client = new PodiumClient(address, {
  credentials: tlsCredentials({ caFile, certFile, keyFile }), timeoutMs: 10000,
});
try {
  const agents = await client.listAgents();
  console.log(JSON.stringify({ ok: true, agents: agents.agents.length }));
} catch (error) {
  console.log(JSON.stringify({ ok: false, code: error.code, name: error.name }));
} finally {
  client.close();
}
"""


async def test_the_node_client_over_mtls(
    start_server: StartServer, certs: Certs, node: str
) -> None:
    server = await start_server(**tls_settings(certs, mtls=True))

    async def run(*files: Path) -> dict[str, object]:
        done = await asyncio.to_thread(
            subprocess.run,
            [node, "--input-type=module", "-e", NODE_SCRIPT, server.address, *map(str, files)],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    assert await run(certs.ca, certs.cert("alice"), certs.key("alice")) == {"ok": True, "agents": 0}
    refused = await run(certs.ca, certs.cert("mallory"), certs.key("mallory"))
    assert refused["ok"] is False and refused["code"] == grpc.StatusCode.UNAVAILABLE.value[0]
