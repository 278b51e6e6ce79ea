"""An engine refusing a request because of the request: the caller gets the error, the endpoint
is not counted against, and the request goes elsewhere at most once."""

from __future__ import annotations

import openai
import pytest
from openai import AsyncOpenAI

from gateway.relay import request_fault_of
from simulators.faults import Faults
from simulators.vllm import VllmSimulator
from tests.gateway.conftest import chat_requests

PROMPT = [{"role": "user", "content": "Say hello. /no_think"}]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}
UNSUPPORTED = {"response_format": SCHEMA}


def refuse_response_format(engines: list[VllmSimulator], status: int) -> None:
    for engine in engines:
        engine.set_faults(Faults(reject_field="response_format", reject_status=status))


async def ask(client: AsyncOpenAI, **extra: object) -> str:
    answer = await client.chat.completions.create(model="qwen3", messages=PROMPT, extra_body=extra)  # type: ignore[arg-type]
    return answer.choices[0].message.content or ""


async def test_a_4xx_refusal_reaches_the_caller_as_400_without_a_retry(
    client: AsyncOpenAI, engines: list[VllmSimulator]
) -> None:
    refuse_response_format(engines, 422)
    with pytest.raises(openai.BadRequestError) as err:
        await ask(client, **UNSUPPORTED)
    assert "response_format is not supported" in err.value.message
    assert len(chat_requests(engines)) == 1


async def test_a_500_naming_the_request_goes_to_one_other_endpoint_then_to_the_caller_as_400(
    client: AsyncOpenAI, engines: list[VllmSimulator]
) -> None:
    refuse_response_format(engines, 500)
    with pytest.raises(openai.BadRequestError) as err:
        await ask(client, **UNSUPPORTED)
    assert "response_format is not supported" in err.value.message
    assert [len(e.requests) for e in engines] == [1, 1]


async def test_a_500_naming_the_request_is_answered_by_an_endpoint_that_supports_it(
    client: AsyncOpenAI, engines: list[VllmSimulator]
) -> None:
    refuse_response_format(engines[:1], 500)
    for _ in range(6):
        assert await ask(client, **UNSUPPORTED)
    assert len(engines[1].requests) == 6


async def test_requests_the_engines_refuse_do_not_cool_the_pool_down(
    client: AsyncOpenAI, engines: list[VllmSimulator]
) -> None:
    # allowed_fails=1 here: two failures counted against an endpoint would cool it down.
    refuse_response_format(engines, 500)
    for _ in range(4):
        with pytest.raises(openai.BadRequestError):
            await ask(client, **UNSUPPORTED)
    seen = [len(e.requests) for e in engines]
    for _ in range(30):
        assert await ask(client)
    assert all(len(e.requests) > n for e, n in zip(engines, seen, strict=True))


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (400, "This model's maximum context length is 4096 tokens", True),
        (422, "Field required", True),
        (413, "Request Entity Too Large", True),
        (500, "response_format type json_schema is not supported", True),
        (500, "Invalid 'tools': unknown type", True),
        (500, "EngineCore encountered an issue. See stack trace (above) for the root cause.", False),
        (503, "Service Unavailable", False),
        (429, "Too Many Requests", False),
        (408, "Request Timeout", False),
        (401, "Unauthorized", False),
        (404, "The model `Qwen/Qwen3-14B` does not exist.", False),
    ],
)
def test_which_engine_answers_are_the_requests_own_fault(status: int, message: str, expected: bool) -> None:
    assert request_fault_of(status, message) is expected
