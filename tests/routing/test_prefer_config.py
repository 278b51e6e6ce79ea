"""`prefer` in the gateway's pools and the edge's policy: read from config, refused when unknown."""

from __future__ import annotations

import pytest

from edge_agent.config import EdgeConfig
from gateway.config import GatewayConfig
from tandem.configfile import load_config
from tandem.errors import ConfigError
from tandem.routing import Prefer

POOL = {"name": "qwen3", "endpoints": [{"url": "http://127.0.0.1:9", "model": "hosted_vllm/qwen3"}]}


def test_a_pool_and_an_edge_read_their_lean_and_default_to_balanced() -> None:
    gateway = GatewayConfig.model_validate({"pools": [{**POOL, "prefer": "fast"}, {**POOL, "name": "b"}]})
    assert [p.prefer for p in gateway.pools] == [Prefer.FAST, Prefer.BALANCED]
    edge = load_config(EdgeConfig, None, {"TANDEM_POLICY__PREFER": "thinking"})
    assert edge.policy.prefer is Prefer.THINKING
    assert load_config(EdgeConfig, None, {}).policy.prefer is Prefer.BALANCED


def test_an_unknown_lean_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"policy\.prefer"):
        load_config(EdgeConfig, None, {"TANDEM_POLICY__PREFER": "quality"})
