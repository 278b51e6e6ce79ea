"""Simulators on loopback, one per test, small and fast by default."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from simulators import (
    OllamaModel,
    OllamaSimConfig,
    OllamaSimulator,
    VllmModel,
    VllmSimConfig,
    VllmSimulator,
)

QWEN = "qwen3:14b"
LLAMA = "llama3.2:3b"  # no thinking, no tools
VLLM_MODEL = "Qwen/Qwen3-14B"
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]


def ollama_config(**overrides: object) -> OllamaSimConfig:
    models: list[OllamaModel | str] = [
        OllamaModel(name=QWEN),
        OllamaModel(name=LLAMA, capabilities=("completion",), family="llama", parameter_size="3.2B"),
    ]
    fields: dict[str, object] = {"models": models, "output_tokens": 8, "reasoning_tokens": 4}
    fields.update(overrides)
    return OllamaSimConfig(**fields)  # type: ignore[arg-type]


def vllm_config(**overrides: object) -> VllmSimConfig:
    models: list[VllmModel | str] = [
        VllmModel(name=VLLM_MODEL, max_model_len=4096),
        VllmModel(name="Qwen/Qwen3-4B-Instruct-2507", max_model_len=4096, thinking="never"),
        VllmModel(name="Qwen/Qwen3-4B-Thinking-2507", max_model_len=4096, thinking="always"),
    ]
    fields: dict[str, object] = {"models": models, "output_tokens": 8, "reasoning_tokens": 4}
    fields.update(overrides)
    return VllmSimConfig(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def ollama_sim() -> AsyncIterator[OllamaSimulator]:
    async with OllamaSimulator(ollama_config()) as sim:
        yield sim


@pytest.fixture
async def vllm_sim() -> AsyncIterator[VllmSimulator]:
    async with VllmSimulator(vllm_config()) as sim:
        yield sim


async def until(condition: Callable[[], bool]) -> None:
    """Waits until a simulator reaches a state (a request running, one queued)."""
    while not condition():  # noqa: ASYNC110 (the state is plain counters, not an event)
        await asyncio.sleep(0.005)
