"""deploy/ examples: valid YAML, and every probe, scrape path and port points at the real server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import ServerSettings
from tests.server.bundles import write_test_bundle

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
YAML_FILES = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))


@pytest.fixture(scope="module")
def server_paths(tmp_path_factory) -> set[str]:
    """Every GET path the manifests name, kept only if the real app answers it with 200 once ready."""
    repository = tmp_path_factory.mktemp("repository")
    write_test_bundle(repository / "cube" / "1")
    app = create_app(ServerSettings(model_repository=repository))
    candidates = {"/metrics", "/v2/health/ready", "/v2/health/live", "/healthz", "/v1/models"}
    with TestClient(app) as client:
        deadline = time.monotonic() + 30
        while client.get("/v2/health/ready").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        return {path for path in candidates if client.get(path).status_code == 200}


def test_the_health_and_metrics_endpoints_answer(server_paths):
    assert {"/metrics", "/v2/health/ready", "/v2/health/live"} <= server_paths


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_example_is_valid_yaml(path):
    assert documents(path), f"{path} holds no YAML document"


def test_kubernetes_probes_and_scrape_annotations_hit_real_endpoints(server_paths):
    docs = {doc["kind"]: doc for doc in documents(DEPLOY / "kubernetes" / "mfql.yaml")}
    assert {"Deployment", "Service"} <= set(docs)
    template = docs["Deployment"]["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] in server_paths
    port = ServerSettings().port
    assert int(annotations["prometheus.io/port"]) == port
    (container,) = template["spec"]["containers"]
    named_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named_ports["http"] == port
    probes = [
        container[key] for key in ("readinessProbe", "livenessProbe", "startupProbe") if key in container
    ]
    assert len(probes) >= 2
    for probe in probes:
        assert probe["httpGet"]["path"] in server_paths
        assert probe["httpGet"]["port"] in ("http", port)
    selector = docs["Service"]["spec"]["selector"]
    labels = template["metadata"]["labels"]
    assert all(labels.get(key) == value for key, value in selector.items())


def test_kserve_example_serves_the_triton_repository_over_v2():
    (service,) = documents(DEPLOY / "kserve" / "inferenceservice.yaml")
    assert service["kind"] == "InferenceService"
    model = service["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] in ("triton", "onnx")
    assert model.get("protocolVersion", "v2") == "v2"
    assert model["storageUri"]


def test_compose_prometheus_scrapes_the_server_metrics(server_paths):
    compose = documents(DEPLOY / "compose" / "docker-compose.yaml")[0]
    prometheus = documents(DEPLOY / "compose" / "prometheus.yml")[0]
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] in server_paths
    targets = job["static_configs"][0]["targets"]
    services = compose["services"]
    for target in targets:
        host, port = target.rsplit(":", 1)
        assert host in services, f"scrape target {target} is not a compose service"
        assert f"{port}:{port}" in services[host]["ports"] or any(
            str(p).endswith(f":{port}") for p in services[host]["ports"]
        )
    healthcheck = " ".join(services[next(iter(services))].get("healthcheck", {}).get("test", []))
    if healthcheck:
        assert any(path in healthcheck for path in server_paths if path.startswith("/v2/health"))
