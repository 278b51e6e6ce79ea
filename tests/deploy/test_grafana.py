"""The Grafana dashboard in deploy/grafana reads only series the processes export: every metric
name in its queries is one that the gateway's or an edge's registry has (a renamed metric would
otherwise leave a panel silently empty)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from edge_agent.config import EdgeConfig
from edge_agent.service import EdgeService
from gateway.config import GatewayConfig
from gateway.server import GatewayServer

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "tandem-dashboard.json"
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def exported(registry: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in SUFFIXES)
    return names


def test_every_query_names_a_metric_the_processes_export() -> None:
    gateway = GatewayServer(
        GatewayConfig.model_validate(
            {"pools": [{"name": "qwen3", "endpoints": [{"url": "http://127.0.0.1:9/v1", "model": "m"}]}]}
        )
    )
    edge = EdgeService(EdgeConfig())
    names = exported(gateway.service.metrics.registry) | exported(edge.metrics.registry)
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for q in queries for name in re.findall(r"\btandem_[a-z_]+", q)}
    assert len(queries) >= 15 and used
    assert used <= names, f"not exported: {sorted(used - names)}"
