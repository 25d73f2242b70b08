"""The deploy recipes of deploy/, checked offline (this machine has no container
daemon and no cluster): every file parses; compose.yaml validates against the vendored
compose-spec schema; the Kubernetes manifests validate strictly against the OpenAPI
schemas of real Kubernetes versions (kubernetes-validate); and the pieces agree with
each other and with the server (ports, shutdown grace, user, secret keys, selectors).
The metric names of the dashboard and rules are checked against a live server in
tests/integration/test_deploy.py."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from podium.server.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
# The oldest version the manifests need (native preStop sleep, gRPC probes) and the
# newest the validator ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def _yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every Kubernetes object of deploy/kubernetes by (kind, name)."""
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in _yaml_docs(path):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def _duration_seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)s", text)
    assert match, text
    return float(match.group(1))


def test_every_deploy_file_parses() -> None:
    files = [p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml", ".json")]
    assert len(files) >= 12
    for path in files:
        if path.suffix == ".json":
            assert isinstance(json.loads(path.read_text()), dict), path
        else:
            assert _yaml_docs(path), path


# -- compose ---------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def test_compose_file_validates_against_the_compose_spec_schema() -> None:
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    validator = jsonschema.Draft201909Validator(schema)
    doc = _compose()
    assert [e.message for e in validator.iter_errors(doc)] == []
    # The schema does reject mistakes (a misspelt key, a wrong type).
    broken = copy.deepcopy(doc)
    broken["services"]["podium"]["stop_grace"] = "30s"
    broken["services"]["postgres"]["healthcheck"]["retries"] = "ten"
    assert len(list(validator.iter_errors(broken))) == 2


def test_compose_runs_replicas_with_their_stack_and_a_graceful_stop() -> None:
    services = _compose()["services"]
    assert set(services) == {"postgres", "podium", "otel-collector", "prometheus", "grafana"}
    podium = services["podium"]
    assert podium["deploy"]["replicas"] >= 2
    assert podium["depends_on"]["postgres"]["condition"] == "service_healthy"
    env = podium["environment"]
    assert "@postgres:5432/" in env["PODIUM_DATABASE_URL"]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
    # Settings accept every PODIUM_ value given (a typo would be refused).
    podium_env = {k: v for k, v in env.items() if k.startswith("PODIUM_")}
    podium_env["PODIUM_DATABASE_URL"] = "postgresql://podium:x@postgres:5432/podium"
    settings = Settings.from_env(podium_env)
    assert settings.run_retention_days == 30
    assert podium["stop_signal"] == "SIGTERM"
    assert _duration_seconds(podium["stop_grace_period"]) > settings.shutdown_grace_seconds
    assert podium["healthcheck"]["test"][-1] == "/opt/podium/healthcheck.py"
    # Every file the stack mounts exists.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, source)
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["dns_sd_configs"][0]["port"] == 9464
    assert settings.metrics_address == "0.0.0.0:9464"


# -- Dockerfile ------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_multi_stage_non_root_with_health_check_and_sigterm() -> None:
    steps = _dockerfile()
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) == 2 and froms[0].endswith("AS build")
    runtime = steps[[i for i, (w, _) in enumerate(steps) if w == "FROM"][1] :]
    users = [args for word, args in runtime if word == "USER"]
    assert users == ["10001:10001"]
    assert ("STOPSIGNAL", "SIGTERM") in runtime
    (health,) = [args for word, args in runtime if word == "HEALTHCHECK"]
    assert "/opt/podium/healthcheck.py" in health
    # Installs the runtime lock, then Podium without resolving anything more.
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert "-r requirements/runtime.lock" in runs and "--no-deps ." in runs
    # Every COPY source exists in the repository.
    for word, args in steps:
        if word == "COPY" and "--from" not in args:
            for source in shlex.split(args)[:-1]:
                assert (ROOT / source).exists(), source
    env = " ".join(args for word, args in runtime if word == "ENV")
    grace = float(re.search(r"PODIUM_SHUTDOWN_GRACE_SECONDS=(\d+)", env).group(1))  # type: ignore[union-attr]
    k8s = _manifests()[("Deployment", "podium")]["spec"]["template"]["spec"]
    assert k8s["securityContext"]["runAsUser"] == 10001
    assert _env(k8s["containers"][0])["PODIUM_SHUTDOWN_GRACE_SECONDS"] == str(int(grace))


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_runtime_lock_is_the_runtime_part_of_the_dev_lock() -> None:
    runtime = _pins(ROOT / "requirements" / "runtime.lock")
    dev = _pins(ROOT / "requirements" / "dev.lock")
    assert {"grpcio", "asyncpg", "protobuf", "prometheus-client"} <= set(runtime)
    assert {name: dev.get(name) for name in runtime} == runtime
    # Test-only packages stay out of the image.
    assert not {"pytest", "mypy", "ruff", "kubernetes-validate"} & set(runtime)


# -- Kubernetes ------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    manifests = _manifests()
    assert {kind for kind, _ in manifests} == {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "Secret",
        "HorizontalPodAutoscaler",
    }
    for doc in manifests.values():
        kubernetes_validate.validate(doc, version, strict=True)
    # The validator rejects what a cluster would: an unknown field, a wrong type.
    broken = copy.deepcopy(manifests[("Deployment", "podium")])
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpcc"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)
    broken = copy.deepcopy(manifests[("PodDisruptionBudget", "podium")])
    broken["spec"]["selector"] = "podium"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_kubernetes_pieces_fit_together() -> None:
    m = _manifests()
    deployment = m[("Deployment", "podium")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 50051, "metrics": 9464}
    # gRPC probes on the gRPC port for start-up and readiness.
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == 50051, probe
    assert container["livenessProbe"]["tcpSocket"]["port"] == "grpc"
    # The pod outlives the drain: preStop pause + shutdown grace < termination grace.
    env = _env(container)
    grace = float(env["PODIUM_SHUTDOWN_GRACE_SECONDS"])
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pause + grace < pod["terminationGracePeriodSeconds"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # The database URL comes from the Secret, under a key the Secret has.
    ref = env["PODIUM_DATABASE_URL"]["secretKeyRef"]
    secret = m[("Secret", ref["name"])]
    assert ref["key"] in secret["stringData"]
    plain = {k: v for k, v in env.items() if isinstance(v, str) and k.startswith("PODIUM_")}
    Settings.from_env({**plain, "PODIUM_DATABASE_URL": secret["stringData"][ref["key"]]})
    # Services, the PDB and the HPA select or target this Deployment.
    for kind, name in (("Service", "podium"), ("Service", "podium-headless")):
        assert m[(kind, name)]["spec"]["selector"].items() <= labels.items()
    pdb = m[("PodDisruptionBudget", "podium")]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["replicas"] > pdb["maxUnavailable"]
    hpa = m[("HorizontalPodAutoscaler", "podium")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "podium"
    assert hpa["minReplicas"] >= 2
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


# -- Grafana ---------------------------------------------------------------------------


def test_grafana_dashboard_covers_the_operating_questions() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "podium.json").read_text())
    (datasource,) = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )["datasources"]
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("runs", "steps", "queue depth", "dispatch latency", "agent errors", "cache hit"):
        assert topic in titles, topic
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "podium.yaml").read_text()
    )["providers"][0]
    mounts = _compose()["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts
