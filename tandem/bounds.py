"""The ranges a `ChatRequest`'s parameters must fall in, the same on every face.

Each wire format checks the types of what it receives; the values are held to these bounds in
this one place, once the request is built, so the OpenAI faces (gateway and edge), the Ollama
face and gRPC refuse exactly the same requests. The bounds are OpenAI's (every forwarded
request ends at an OpenAI-compatible engine), plus the widths the protobuf fields can carry
when the edge forwards a request (int32 `top_k` and `max_tokens`, int64 `seed`, float32).
"""

from __future__ import annotations

from collections.abc import Mapping

from tandem.chat import ChatRequest
from tandem.errors import BadRequest, ContextTooLong

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38

# name: (lowest, highest, whether the lowest itself is excluded)
_FLOATS: dict[str, tuple[float, float, bool]] = {
    "temperature": (0.0, 2.0, False),
    "top_p": (0.0, 1.0, True),
    "min_p": (0.0, 1.0, False),
    "presence_penalty": (-2.0, 2.0, False),
    "frequency_penalty": (-2.0, 2.0, False),
    "repetition_penalty": (0.0, FLOAT32_MAX, True),
}
_INTS: dict[str, tuple[int, int]] = {
    "top_k": (-1, INT32_MAX),
    "seed": (INT64_MIN, INT64_MAX),
}
TOOL_CHOICES = ("none", "auto", "required")


def check(req: ChatRequest, names: Mapping[str, str] | None = None) -> None:
    """Raises `BadRequest` naming the first parameter out of bounds (by the caller's name for it
    in `names`, else the internal one), or `ContextTooLong` for a `max_tokens` no model holds."""
    names = names or {}
    s = req.sampling
    for field, (low, high, open_low) in _FLOATS.items():
        v = getattr(s, field)
        # Written so that NaN fails too.
        if v is not None and not ((low < v if open_low else low <= v) and v <= high):
            above = "above" if open_low else "at least"
            rule = f"{above} {low:g}" if high == FLOAT32_MAX else f"between {low:g} and {high:g}"
            _refuse(names.get(field, field), f"must be {rule}", v)
    for field, (ilow, ihigh) in _INTS.items():
        v = getattr(s, field)
        if v is not None and not ilow <= v <= ihigh:
            _refuse(names.get(field, field), f"must be between {ilow} and {ihigh}", v)
    if req.max_tokens is not None:
        if req.max_tokens < 1:
            _refuse(names.get("max_tokens", "max_tokens"), "must be at least 1", req.max_tokens)
        if req.max_tokens > INT32_MAX:
            err = ContextTooLong(limit=INT32_MAX, prompt_tokens=0, max_tokens=req.max_tokens)
            err.message = (
                f"{names.get('max_tokens', 'max_tokens')} is {_show(req.max_tokens)}: more output tokens "
                f"than any model's context length can hold"
            )
            err.args = (err.message,)
            raise err
    if req.n != 1:
        _refuse("n", "must be 1 (one choice per request)", req.n)
    if isinstance(req.tool_choice, str) and req.tool_choice not in TOOL_CHOICES:
        _refuse("tool_choice", "must be none, auto, required or a function", req.tool_choice)


def _refuse(name: str, rule: str, value: object) -> None:
    raise BadRequest(f"invalid field '{name}': {rule}, not {_show(value)}", param=name)


def _show(value: object) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int of thousands of digits has no repr (sys.set_int_max_str_digits)
        return "a number too long to show"
    return text if len(text) <= 40 else text[:37] + "..."


MAX_JSON_DEPTH = 64


def free_json_problem(value: object, depth: int = 0) -> str | None:
    """Why a free-form JSON value (a tool's parameters, a JSON schema, a content part) cannot be
    passed on, or None: integers must fit 64 bits (the engine body's encoder, protobuf) and
    nesting is bounded (protobuf's Struct refuses deep ones). O(size of the value)."""
    if depth > MAX_JSON_DEPTH:
        return f"nested deeper than {MAX_JSON_DEPTH} levels"
    if isinstance(value, dict):
        items: object = value.values()
    elif isinstance(value, list):
        items = value
    else:
        if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
            return "holds an integer beyond 64 bits"
        return None
    for item in items:  # type: ignore[attr-defined]
        if isinstance(item, dict | list | int) and (problem := free_json_problem(item, depth + 1)):
            return problem
    return None
