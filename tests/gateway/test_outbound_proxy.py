"""The gateway's calls to its engines follow its `http_client` settings: through a real
forward proxy when one is configured."""

from __future__ import annotations

from openai import AsyncOpenAI
from yarl import URL

from simulators.vllm import VllmSimulator
from tests.conftest import Proxy
from tests.gateway.conftest import StartGateway


async def test_engine_calls_go_through_the_configured_proxy(
    start_gateway: StartGateway, engines: list[VllmSimulator], proxy: Proxy
) -> None:
    gateway = await start_gateway(http_client={"proxy": proxy.url, "no_proxy": ""})
    async with AsyncOpenAI(
        base_url=f"http://127.0.0.1:{gateway.http_port}/v1", api_key="unused", max_retries=0
    ) as client:
        for _ in range(4):
            answer = await client.chat.completions.create(
                model="qwen3", messages=[{"role": "user", "content": "Say hello. /no_think"}]
            )
            assert answer.choices[0].message.content
    answered = [e for e in engines if e.requests]
    assert answered and all(proxy.saw(URL(e.url).port or 0) for e in answered)
