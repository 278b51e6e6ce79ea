"""The deployment files stay in step with the code: they parse, and the configuration they
embed passes the same validation the processes run at start."""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.config import GatewayConfig

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def documents() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def test_every_manifest_has_a_kind_and_a_name() -> None:
    docs = documents()
    assert docs
    for doc in docs:
        assert doc["kind"] and doc["metadata"]["name"]


def test_gateway_configmap_is_a_valid_gateway_config() -> None:
    (configmap,) = [
        d for d in documents() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "tandem-gateway"
    ]
    config = GatewayConfig.model_validate(yaml.safe_load(configmap["data"]["gateway.yaml"]))
    assert config.pools and config.redis.url


def test_gateway_pods_get_longer_to_stop_than_the_drain_grace() -> None:
    (configmap,) = [
        d for d in documents() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "tandem-gateway"
    ]
    grace = yaml.safe_load(configmap["data"]["gateway.yaml"])["shutdown_grace_seconds"]
    (deployment,) = [
        d for d in documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == "tandem-gateway"
    ]
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace


def test_edge_unit_runs_the_edge_agent_with_a_longer_stop_timeout_than_its_drain() -> None:
    unit = (DEPLOY / "edge" / "tandem-edge.service").read_text()
    assert "tandem edge serve --config" in unit
    stop = int(unit.split("TimeoutStopSec=")[1].split()[0])
    assert stop > 30  # the edge's default shutdown_grace_seconds
