"""Hostile input for the fuzz suites of every face (tests/*/test_fuzz_*.py).

Requests are built by hypothesis from each API's own field names with values of any JSON type
(and some that are not JSON at all), so they reach the conversion code instead of failing at the
first key. The suites assert what the design promises for bad input: never a 5xx, never a hang,
and the process keeps serving.

CI runs a bounded number of examples per face (`TANDEM_FUZZ_EXAMPLES`, default 120) from a fixed
seed; run longer by hand, with fresh randomness:

    TANDEM_FUZZ_EXAMPLES=5000 TANDEM_FUZZ_RANDOM=1 pytest -k fuzz -p no:cacheprovider
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.struct_pb2 import Struct
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("TANDEM_FUZZ_EXAMPLES", "120"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("TANDEM_FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
ANSWER_WITHIN_S = 20.0  # far beyond any honest answer from the simulators: a hang, not a slow path

# --- values -----------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["", "qwen3", "qwen3:14b", "auto", "thinking", "high", "none", "text", "function"])
)
anything = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a well-typed value, sometimes anything at all."""
    return st.one_of(valid, valid, anything)


def _object(
    fields: dict[str, st.SearchStrategy[Any]], required: tuple[str, ...] = ()
) -> st.SearchStrategy[Any]:
    """A JSON object with some of `fields` (the `required` ones usually present)."""
    return st.fixed_dictionaries(
        {k: fields[k] for k in required}, optional={k: v for k, v in fields.items() if k not in required}
    ) | st.dictionaries(st.sampled_from(sorted(fields)), anything, max_size=4)


roles = st.sampled_from(["system", "user", "assistant", "tool", "developer", "", "robot"])
text_part = _object({"type": st.sampled_from(["text", "image_url", "input_audio", "x"]), "text": anything})
image_part = _object(
    {
        "type": st.just("image_url"),
        "image_url": _maybe(_object({"url": st.text(max_size=20), "detail": anything})),
    }
)
openai_message = _object(
    {
        "role": roles,
        "content": _maybe(st.text(max_size=40) | st.lists(text_part | image_part, max_size=3)),
        "name": anything,
        "tool_calls": _maybe(
            st.lists(
                _object(
                    {
                        "id": anything,
                        "type": anything,
                        "function": _maybe(_object({"name": anything, "arguments": anything})),
                    }
                ),
                max_size=2,
            )
        ),
        "tool_call_id": anything,
        "reasoning_content": anything,
    },
    required=("role", "content"),
)
tool = _object(
    {
        "type": st.just("function"),
        "function": _maybe(
            _object({"name": st.text(max_size=10), "description": anything, "parameters": anything})
        ),
    }
)
OPENAI_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": _maybe(st.sampled_from(["qwen3", "qwen3:14b", "qwen3-14b", "missing-model"])),
    "messages": _maybe(st.lists(openai_message, max_size=3)),
    "stream": _maybe(st.booleans()),
    "stream_options": _maybe(_object({"include_usage": anything})),
    "temperature": anything,
    "top_p": anything,
    "top_k": anything,
    "min_p": anything,
    "n": anything,
    "max_tokens": anything,
    "max_completion_tokens": anything,
    "stop": _maybe(st.lists(st.text(max_size=5), max_size=5) | st.text(max_size=5)),
    "seed": anything,
    "presence_penalty": anything,
    "frequency_penalty": anything,
    "response_format": _maybe(
        _object(
            {
                "type": st.sampled_from(["text", "json_object", "json_schema", "xml"]),
                "json_schema": _maybe(_object({"name": anything, "schema": anything, "strict": anything})),
            }
        )
    ),
    "tools": _maybe(st.lists(tool, max_size=2)),
    "tool_choice": _maybe(
        st.sampled_from(["auto", "none", "required"])
        | _object({"type": st.just("function"), "function": _maybe(_object({"name": anything}))})
    ),
    "reasoning_effort": anything,
    "mode": anything,
    "logprobs": anything,
    "user": anything,
    "metadata": anything,
    "parallel_tool_calls": anything,
    "chat_template_kwargs": anything,
}
openai_chat = _object(OPENAI_FIELDS, required=("model", "messages"))

options = _object(
    {
        k: anything
        for k in ("temperature", "top_p", "top_k", "min_p", "num_ctx", "num_predict", "seed", "stop")
    }
)
ollama_message = _object(
    {
        "role": roles,
        "content": _maybe(st.text(max_size=40)),
        "images": anything,
        "thinking": anything,
        "tool_calls": anything,
        "tool_name": anything,
    },
    required=("role", "content"),
)
OLLAMA_COMMON: dict[str, st.SearchStrategy[Any]] = {
    "model": _maybe(st.sampled_from(["qwen3:14b", "qwen3", "missing:7b"])),
    "stream": _maybe(st.booleans()),
    "think": _maybe(st.booleans() | st.sampled_from(["high", "low"])),
    "format": _maybe(st.sampled_from(["json", ""]) | _object({"type": anything, "properties": anything})),
    "options": _maybe(options),
    "keep_alive": anything,
    "tools": _maybe(st.lists(tool, max_size=2)),
}
ollama_chat = _object(
    {**OLLAMA_COMMON, "messages": _maybe(st.lists(ollama_message, max_size=3))}, ("model", "messages")
)
ollama_generate = _object(
    {
        **OLLAMA_COMMON,
        "prompt": _maybe(st.text(max_size=40)),
        "system": anything,
        "template": anything,
        "raw": anything,
        "images": anything,
        "context": anything,
        "suffix": anything,
    },
    ("model", "prompt"),
)

# The rest of Ollama's client API (the edge serves it: edge_agent/local_api.py).
_EMBED_MODELS = _maybe(st.sampled_from(["qwen3:14b", "qwen3-14b", "qwen3-32b", "missing:7b"]))
ollama_show = _object({"model": _EMBED_MODELS, "name": anything, "verbose": anything}, ("model",))
ollama_embed = _object(
    {
        "model": _EMBED_MODELS,
        "input": _maybe(st.text(max_size=20) | st.lists(st.text(max_size=10), max_size=3)),
        "prompt": _maybe(st.text(max_size=20)),
        "truncate": anything,
        "dimensions": anything,
        "options": _maybe(options),
        "keep_alive": anything,
    },
    ("model",),
)
openai_embeddings = _object(
    {
        "model": _EMBED_MODELS,
        "input": _maybe(st.text(max_size=20) | st.lists(st.text(max_size=10), max_size=3)),
        "encoding_format": _maybe(st.sampled_from(["float", "base64", "hex"])),
        "dimensions": anything,
        "user": anything,
    },
    ("model", "input"),
)
openai_completions = _object(
    {
        "model": _EMBED_MODELS,
        "prompt": _maybe(st.text(max_size=40)),
        "suffix": anything,
        "max_tokens": anything,
        "temperature": anything,
        "top_p": anything,
        "stop": _maybe(st.lists(st.text(max_size=5), max_size=5) | st.text(max_size=5)),
        "stream": _maybe(st.booleans()),
        "stream_options": _maybe(_object({"include_usage": anything})),
        "seed": anything,
        "echo": anything,
    },
    ("model", "prompt"),
)

# --- requests ---------------------------------------------------------------------------------


@dataclass
class Case:
    """One hostile HTTP request."""

    method: str
    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # hypothesis prints the failing case
        return f"Case({self.method} {self.path} headers={self.headers!r} body={self.body[:300]!r})"


def _encode(value: Any) -> bytes:
    # Python's json writes NaN and Infinity, which are not JSON: bad input of its own kind.
    return json.dumps(value, allow_nan=True).encode()


header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40
)


@st.composite
def http_cases(draw: st.DrawFn, routes: dict[str, st.SearchStrategy[Any]]) -> Case:
    """A request to one of `routes` (path -> body strategy), mostly JSON of the route's shape,
    sometimes broken bytes, odd methods, compressed or mislabelled bodies, odd headers."""
    path = draw(st.sampled_from(sorted(routes)))
    kind = draw(st.sampled_from(["json", "json", "json", "bytes", "truncated", "gzip", "mislabelled"]))
    value = draw(routes[path])
    body = _encode(value)
    headers: dict[str, str] = {
        "Content-Type": draw(st.sampled_from(["application/json", "text/plain", "", "x/y"]))
    }
    if kind == "bytes":
        body = draw(st.binary(max_size=200))
    elif kind == "truncated":
        body = body[: draw(st.integers(min_value=0, max_value=max(0, len(body) - 1)))]
    elif kind == "gzip":
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    elif kind == "mislabelled":
        headers["Content-Encoding"] = draw(
            st.sampled_from(["gzip", "deflate", "br", "zstd", "identity", "x"])
        )
    if draw(st.booleans()):
        headers["x-request-id"] = draw(header_values)
    if draw(st.booleans()):
        headers["x-tandem-mode"] = draw(header_values)
    method = draw(st.sampled_from(["POST"] * 8 + ["GET", "PUT", "DELETE"]))
    return Case(method, path, body, headers)


async def send(session: aiohttp.ClientSession, base: str, case: Case) -> int:
    """Sends `case`, reads the whole answer; returns its status. A hang fails the test."""
    async with asyncio.timeout(ANSWER_WITHIN_S):
        async with session.request(
            case.method, base + case.path, data=case.body, headers=case.headers, compress=None
        ) as resp:
            await resp.read()
            return resp.status


async def still_serving(session: aiohttp.ClientSession, base: str) -> None:
    async with asyncio.timeout(ANSWER_WITHIN_S), session.get(base + "/healthz") as resp:
        assert resp.status == 200, "the process stopped serving"


# --- protobuf messages ------------------------------------------------------------------------

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _scalar(fd: FieldDescriptor) -> st.SearchStrategy[Any]:
    if fd.type in _INT_RANGES:
        low, high = _INT_RANGES[fd.type]
        edges = st.sampled_from([low, high, 0, -1 if low < 0 else 1, 2**31 - 1 if high > 2**31 else high])
        return st.integers(min_value=low, max_value=high) | edges
    if fd.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.floats(
            allow_nan=True, allow_infinity=True, width=32 if fd.type == FieldDescriptor.TYPE_FLOAT else 64
        )
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if fd.type == FieldDescriptor.TYPE_STRING:
        return st.text(max_size=30) | st.sampled_from(
            ["qwen3", "qwen3:14b", "high", "none", "json_schema", "function"]
        )
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=30)
    if fd.type == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in fd.enum_type.values]
        return st.sampled_from(known) | st.integers(
            min_value=-5, max_value=50
        )  # open enums: unknown values arrive
    raise TypeError(f"no strategy for {fd.full_name}")


def protobuf_messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """Field values for a message of `descriptor` (for `Message(**values)`), nested up to 3 deep:
    any value each field's type allows, not only the sensible ones."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for fd in descriptor.fields:
        if fd.message_type is not None and fd.message_type.full_name == "google.protobuf.Struct":
            value: st.SearchStrategy[Any] = st.dictionaries(st.text(max_size=8), anything, max_size=3).map(
                _struct
            )
        elif fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            key, val = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
            value = st.dictionaries(_scalar(key), _scalar(val), max_size=3)
            fields[fd.name] = value
            continue
        elif fd.message_type is not None:
            if depth >= 3:
                continue
            value = protobuf_messages(fd.message_type, depth + 1)
        else:
            value = _scalar(fd)
        if fd.is_repeated:
            value = st.lists(value, max_size=3)
        fields[fd.name] = value
    oneofs = {f.name for o in descriptor.oneofs for f in o.fields}
    plain = {k: v for k, v in fields.items() if k not in oneofs}
    chosen_oneof = (
        st.sampled_from(sorted(oneofs)).flatmap(lambda name: st.fixed_dictionaries({name: fields[name]}))
        if oneofs and all(name in fields for name in oneofs)
        else st.just({})
    )
    return st.builds(lambda a, b: {**a, **b}, st.fixed_dictionaries({}, optional=plain), chosen_oneof)


def _struct(value: dict[str, Any]) -> Struct:
    s = Struct()
    try:
        s.update(_json_safe(value))
    except (ValueError, TypeError):  # values Struct cannot hold (ints beyond a double) go as text
        s.update({k: str(v) for k, v in value.items()})
    return s


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
