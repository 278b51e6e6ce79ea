"""Fixtures for the route-decision tests: request builders and the labelled dev set."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tandem.chat import ChatRequest, Message

DEV_SET = Path(__file__).parent.parent / "data" / "routing_dev.jsonl"

Chat = Callable[..., ChatRequest]


def build_chat(*turns: str | tuple[str, str], model: str = "qwen3:14b", **fields: Any) -> ChatRequest:
    """A request from turns: a plain string is a user message, a pair is (role, content)."""
    messages = [Message("user", t) if isinstance(t, str) else Message(t[0], t[1]) for t in turns]
    return ChatRequest(model=model, messages=messages, **fields)


def dev_request(row: dict[str, Any]) -> ChatRequest:
    return ChatRequest(
        model="qwen3:14b", messages=[Message(m["role"], m["content"]) for m in row["messages"]]
    )


@pytest.fixture
def chat() -> Chat:
    return build_chat


@pytest.fixture(scope="session")
def dev_set() -> list[dict[str, Any]]:
    """tests/data/routing_dev.jsonl: 200 requests labelled thinking / non_thinking."""
    with DEV_SET.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
