"""The edge's calls to its Ollama follow its `http_client` settings: through a real forward
proxy when one is configured (loopback is reached directly unless `no_proxy` says otherwise)."""

from __future__ import annotations

import ollama
import pytest
from yarl import URL

from simulators.ollama import OllamaSimulator
from tests.conftest import Proxy
from tests.edge.conftest import StartEdge


async def test_ollama_calls_go_through_the_configured_proxy(
    start_edge: StartEdge, local_ollama: OllamaSimulator, proxy: Proxy
) -> None:
    edge = await start_edge(http_client={"proxy": proxy.url, "no_proxy": ""})
    answer = await ollama.AsyncClient(host=edge.url).chat(
        model="qwen3:14b", messages=[{"role": "user", "content": "Say hello /no_think"}]
    )
    assert answer.message.content
    assert proxy.saw(URL(local_ollama.url).port or 0)


async def test_loopback_ollama_skips_a_proxy_from_the_environment(
    start_edge: StartEdge, local_ollama: OllamaSimulator, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    edge = await start_edge()
    answer = await ollama.AsyncClient(host=edge.url).chat(
        model="qwen3:14b", messages=[{"role": "user", "content": "Say hello /no_think"}]
    )
    assert answer.message.content
    assert not proxy.saw(URL(local_ollama.url).port or 0)
