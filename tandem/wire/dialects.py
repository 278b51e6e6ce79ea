"""Engine dialects: what differs between the OpenAI-compatible engines a pool may hold.

Every endpoint declares its `kind` (`gateway/config.py`); the gateway builds one vLLM-shaped
body (`tandem.wire.openai.engine_body`) and this module maps it for the engine that gets it.

- `vllm` (the default): the body as built.
- `llama-cpp`: llama.cpp's servers, both the C++ `llama-server` and llama-cpp-python's
  `llama_cpp.server`. Structured output is `{"type": "json_object", "schema": ...}` (the Python
  server has no `json_schema` type and answers it with 500); the repetition penalty is
  `repeat_penalty`; Qwen3's thinking switch goes into the prompt as the `/no_think` soft switch
  (the Python server has no per-request `chat_template_kwargs`; `llama-server` reads them, and
  keeps getting them).

Engines also differ in how they say a prompt is over the model's context:
`over_context` recognises each one's words, so that the caller gets OpenAI's 400 with
`code: "context_length_exceeded"` whatever the engine's shape.
"""

from __future__ import annotations

import re
from typing import Any, Literal

EngineKind = Literal["vllm", "llama-cpp"]
ENGINE_KINDS: tuple[EngineKind, ...] = ("vllm", "llama-cpp")

# Sampling parameters whose names differ from vLLM's, per dialect.
_LLAMA_CPP_NAMES = {"repetition_penalty": "repeat_penalty"}

# How engines word an over-context refusal:
#   vLLM:             "This model's maximum context length is 32768 tokens. However, you requested ..."
#   llama-cpp-python: the same sentence, code "context_length_exceeded"
#                     (or, unwrapped, "Requested tokens (N) exceed context window of M")
#   llama-server:     type "exceed_context_size_error", "the request exceeds the available context size"
#   Ollama / others:  "input length exceeds the context length", "prompt is too long"
_OVER_CONTEXT = re.compile(
    r"maximum context length|context_length_exceeded|exceed(s|ed)? (the )?(available )?context"
    r"|exceed_context_size|context window of|exceeds the context length|prompt is too long",
    re.IGNORECASE,
)


def for_engine(body: dict[str, Any], kind: EngineKind, *, served_model: str) -> dict[str, Any]:
    """`body` (vLLM's shape, as `engine_body` builds it) mapped for an engine of `kind`.

    The body is changed in place and returned; it is built per attempt, so nothing else sees it.
    """
    if kind == "vllm":
        return body
    for ours, theirs in _LLAMA_CPP_NAMES.items():
        if ours in body:
            body[theirs] = body.pop(ours)
    rf = body.get("response_format")
    if rf is not None and rf.get("type") == "json_schema":
        body["response_format"] = {"type": "json_object", "schema": rf["json_schema"]["schema"]}
    kwargs = body.get("chat_template_kwargs") or {}
    if kwargs.get("enable_thinking") is False and is_qwen3(served_model):
        _append_to_last_user(body["messages"], " /no_think")
    return body


def is_qwen3(served_model: str) -> bool:
    """Whether a served model name is a Qwen3 hybrid model (one that reads the soft switches)."""
    name = served_model.lower()
    return "qwen3" in name and "2507" not in name  # the 2507 releases cannot switch


def _append_to_last_user(messages: list[dict[str, Any]], text: str) -> None:
    for m in reversed(messages):
        if m.get("role") != "user":
            continue
        content = m.get("content")
        if isinstance(content, str):
            m["content"] = content + text
        elif isinstance(content, list):
            m["content"] = [*content, {"type": "text", "text": text}]
        return


def over_context(message: str, code: object = None, kind: object = None) -> bool:
    """Whether an engine's error (its message, and its body's `code` and `type`) says the
    prompt does not fit the model's context."""
    if code == "context_length_exceeded" or kind == "exceed_context_size_error":
        return True
    return _OVER_CONTEXT.search(message) is not None
