"""The simulated Ollama's OpenAI-compatible layer and its embeddings, as Ollama's own
`openai` package and middleware do it: a `/v1/...` request is converted to the native one,
the native answer back (ollama/ollama `openai/openai.go`, `middleware/openai.go`).

- `/v1/completions` -> `/api/generate` (`temperature` and `top_p` default to 1.0; `stop` a
  string or a list), answered as `text_completion` objects: ids `cmpl-<n>`,
  `system_fingerprint: "fp_ollama"`, one SSE chunk per native line (thinking lines give empty
  text), usage in a last chunk with no choices when `stream_options.include_usage`.
- `/v1/embeddings` -> `/api/embed`; `input` "" embeds one empty string, an empty list or none
  is "invalid input"; `encoding_format` "float" or "base64" (little-endian float32).
- Errors: `{"error": {"message", "type", "param": null, "code": null}}`, type
  `invalid_request_error` for 400, `not_found_error` for 404, else `api_error`.

Embedding vectors are made up but stable: the same model and text give the same vector, of
the model's `embedding_length`; `/api/embed` returns them normalized (as Ollama does),
`/api/embeddings` raw.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from simulators.server import json_response

FINGERPRINT = "fp_ollama"
DONE = b"data: [DONE]\n\n"


class OpenAIError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def error_response(status: int, message: str) -> web.Response:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return json_response(body, status=status, charset="utf-8")


def error_event(message: str) -> bytes:
    return (
        b"data: "
        + orjson.dumps({"error": {"message": message, "type": "api_error", "param": None}})
        + b"\n\n"
    )


def parse(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise OpenAIError("missing request body")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OpenAIError(f"invalid character in JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise OpenAIError("json: cannot unmarshal array into Go value of type openai.CompletionRequest")
    return body


# --- completions --------------------------------------------------------------------------------


def _number(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OpenAIError(
            f"json: cannot unmarshal {type(value).__name__} into Go struct field .{key} of type float32"
        )
    return float(value)


def generate_body(body: dict[str, Any]) -> dict[str, Any]:
    """The native `/api/generate` body of a `/v1/completions` body (FromCompleteRequest)."""
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        raise OpenAIError(
            "json: cannot unmarshal array into Go struct field CompletionRequest.prompt of type string"
        )
    options: dict[str, Any] = {}
    stop = body.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        wrong = next((s for s in stop if not isinstance(s, str)), None)
        if wrong is not None:
            raise OpenAIError(f"invalid type for 'stop' field: {type(wrong).__name__}")
        options["stop"] = stop
    if isinstance(body.get("max_tokens"), int):
        options["num_predict"] = body["max_tokens"]
    temperature = _number(body, "temperature")
    options["temperature"] = 1.0 if temperature is None else temperature
    if isinstance(body.get("seed"), int):
        options["seed"] = body["seed"]
    options["frequency_penalty"] = _number(body, "frequency_penalty") or 0.0
    options["presence_penalty"] = _number(body, "presence_penalty") or 0.0
    options["top_p"] = _number(body, "top_p") or 1.0
    native: dict[str, Any] = {
        "model": body.get("model") or "",
        "prompt": prompt,
        "options": options,
        "stream": bool(body.get("stream")),
    }
    if isinstance(body.get("suffix"), str) and body["suffix"]:
        native["suffix"] = body["suffix"]
    return native


class Completion:
    """Renders one completion's native answer as `text_completion` objects."""

    def __init__(self, body: dict[str, Any], seed: int) -> None:
        options = body.get("stream_options")
        self.include_usage = isinstance(options, dict) and options.get("include_usage") is True
        self.id = f"cmpl-{random.Random(seed).randrange(999)}"

    def whole(self, native: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": _unix(native.get("created_at")),
            "model": native.get("model"),
            "system_fingerprint": FINGERPRINT,
            "choices": [
                {
                    "text": native.get("response", ""),
                    "index": 0,
                    "finish_reason": native.get("done_reason") or None,
                }
            ],
            "usage": _usage(native),
        }

    def chunk(self, model: str, created: int, text: str, finish: str | None) -> bytes:
        """One SSE chunk (CompletionChunk's field order)."""
        body = {
            "id": self.id,
            "object": "text_completion",
            "created": created,
            "choices": [{"text": text, "index": 0, "finish_reason": finish}],
            "model": model,
            "system_fingerprint": FINGERPRINT,
        }
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def usage_chunk(self, model: str, created: int, native_final: dict[str, Any]) -> bytes:
        body = {
            "id": self.id,
            "object": "text_completion",
            "created": created,
            "choices": [],
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "usage": _usage(native_final),
        }
        return b"data: " + orjson.dumps(body) + b"\n\n"


def _usage(native: dict[str, Any]) -> dict[str, int]:
    prompt = int(native.get("prompt_eval_count") or 0)
    completion = int(native.get("eval_count") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _unix(created_at: Any) -> int:
    if isinstance(created_at, str) and created_at:
        text = created_at.rstrip("Z").split(".")[0]
        return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())
    return 0


# --- embeddings ---------------------------------------------------------------------------------


def embed_inputs(value: Any) -> list[str]:
    """`/api/embed`'s `input`: a string (empty: nothing) or a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError("invalid input type")


def embed_body(body: dict[str, Any]) -> dict[str, Any]:
    """The native `/api/embed` body of a `/v1/embeddings` body (the embeddings middleware)."""
    inputs = body.get("input")
    if inputs == "":
        inputs = [""]
    if inputs is None or (isinstance(inputs, list) and not inputs):
        raise OpenAIError("invalid input")
    fmt = body.get("encoding_format") or ""
    if fmt and str(fmt).lower() not in ("float", "base64"):
        raise OpenAIError(f"invalid encoding_format: {fmt!r}, must be 'float' or 'base64'")
    native: dict[str, Any] = {"model": body.get("model") or "", "input": inputs}
    if isinstance(body.get("dimensions"), int) and body["dimensions"] > 0:
        native["dimensions"] = body["dimensions"]
    return native


def embedding_list(model: str, native: dict[str, Any], encoding_format: str) -> dict[str, Any]:
    data = []
    for i, vector in enumerate(native.get("embeddings") or []):
        value: Any = vector
        if encoding_format.lower() == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "embedding": value, "index": i})
    tokens = int(native.get("prompt_eval_count") or 0)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def raw_vector(model: str, text: str, dims: int) -> list[float]:
    """A stable made-up embedding of `text` (what the runner returns, before normalizing)."""
    seed = int.from_bytes(hashlib.sha256(f"{model}\0{text}".encode()).digest()[:8], "big")
    rng = random.Random(seed)
    return [round(rng.gauss(0.0, 1.0), 6) for _ in range(dims)]


def normalize(vector: list[float]) -> list[float]:
    norm = 1.0 / max(math.sqrt(sum(v * v for v in vector)), 1e-12)
    return [v * norm for v in vector]
