"""OpenAI's legacy text completions (`POST /v1/completions`) as Ollama serves them: one prompt
in, `text_completion` objects out (one whole object, or SSE chunks ending `data: [DONE]`).

A request becomes the same `GenerateRequest` an Ollama `/api/generate` call does, so the edge
routes it like one (a local Ollama runs it as a generate; the gateway as a one-turn chat).
Wire facts: ollama/ollama `openai/openai.go` (`CompletionRequest`, `ToCompletion`,
`ToCompleteChunk`): a single string prompt, `system_fingerprint: "fp_ollama"`, `finish_reason`
"stop" or "length", usage in a last chunk with no choices when `stream_options.include_usage`.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tandem import bounds
from tandem.chat import ChatRequest, ChatResult, Chunk, Message, Sampling, Usage
from tandem.errors import BadRequest
from tandem.wire.ollama import GenerateRequest, explicit_mode, validate_body
from tandem.wire.openai import WireStreamOptions, usage_body

OBJECT = "text_completion"
FINGERPRINT = "fp_ollama"


class WireCompletionRequest(BaseModel):
    # Unknown fields (echo, n, logprobs, user, ...) are ignored, as Ollama ignores them.
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    # Ollama takes one string: a list of prompts or token ids is refused (ollama issue 5259).
    prompt: str
    suffix: str = ""
    stream: bool = False
    stream_options: WireStreamOptions | None = None
    # Ranges: `tandem.bounds`, the same on every face.
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: str | list[str] | None = None

    @field_validator("stop")
    @classmethod
    def _bounded_stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 16:
            raise ValueError("at most 16 stop sequences")
        return v


def parse_completion(
    body: bytes, *, mode_header: str | None = None, max_bytes: int | None = None
) -> GenerateRequest:
    """Validates a `/v1/completions` body; raises `BadRequest` naming the field, or
    `PayloadTooLarge`. The mode is the `x-tandem-mode` header's, else Tandem decides."""
    wire = validate_body(WireCompletionRequest, body, max_bytes)
    if not wire.prompt:
        raise BadRequest("prompt is required", param="prompt")
    mode, source = explicit_mode(None, mode_header)
    stop = [wire.stop] if isinstance(wire.stop, str) else list(wire.stop or [])
    req = ChatRequest(
        model=wire.model,
        messages=[Message(role="user", content=wire.prompt)],
        mode=mode,
        mode_source=source,
        stream=wire.stream,
        sampling=Sampling(
            temperature=wire.temperature,
            top_p=wire.top_p,
            presence_penalty=wire.presence_penalty,
            frequency_penalty=wire.frequency_penalty,
            seed=wire.seed,
        ),
        max_tokens=wire.max_tokens,
        stop=stop,
        include_usage=bool(wire.stream_options and wire.stream_options.include_usage),
    )
    bounds.check(req, None)
    return GenerateRequest(chat=req, prompt=wire.prompt, suffix=wire.suffix)


def _finish(reason: str | None) -> str | None:
    if reason is None:
        return None
    return "length" if reason == "length" else "stop"


class CompletionEncoder:
    """Renders internal chunks as `text_completion` objects for one response. Reasoning is not
    part of a text completion (Ollama drops it too); only the answer's text is sent."""

    __slots__ = ("_head",)

    def __init__(self, completion_id: str, model: str, created: int) -> None:
        self._head: dict[str, Any] = {
            "id": completion_id,
            "object": OBJECT,
            "created": created,
            "model": model,
        }

    def batch(self, chunks: list[Chunk], *, include_usage: bool) -> bytes:
        """The SSE events of a batch: one per chunk with text or a finish reason, then the
        usage (in a chunk of its own, no choices) when the caller asked for it."""
        out = []
        for c in chunks:
            if c.content or c.finish_reason:
                choice = {
                    "text": c.content,
                    "index": 0,
                    "logprobs": None,
                    "finish_reason": _finish(c.finish_reason),
                }
                out.append(self._event({"choices": [choice]}))
            if c.usage is not None and include_usage:
                out.append(self._event({"choices": [], "usage": usage_body(c.usage)}))
        return b"".join(out)

    def whole(self, result: ChatResult) -> bytes:
        choice = {
            "text": result.content,
            "index": 0,
            "logprobs": None,
            "finish_reason": _finish(result.finish_reason),
        }
        return orjson.dumps(
            {
                **self._head,
                "system_fingerprint": FINGERPRINT,
                "choices": [choice],
                "usage": usage_body(result.usage or Usage()),
            }
        )

    def _event(self, fields: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps({**self._head, "system_fingerprint": FINGERPRINT, **fields}) + b"\n\n"
