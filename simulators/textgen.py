"""Deterministic model output: a stream of text pieces for a seed and a prompt.

Each piece is one token in the usage counts. Pieces come from a small vocabulary laid out once
per seed on a long "tape"; a request reads a window of the tape starting at an offset derived
from its prompt, so the same seed and prompt always give the same text, and producing n tokens
is a list slice (no per-token Python work). Every piece's JSON string literal is encoded once,
so the wire encoders only concatenate bytes.
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass
from typing import Any

import orjson


def _words(sentence: str) -> tuple[str, ...]:
    return tuple(sentence.split())


_CONTENT_WORDS = _words(
    "the system routes each request to the engine that fits it best while keeping latency low "
    "and throughput high under load a gateway decides quickly then streams tokens back to the "
    "caller with usage and timing so operators can see where time goes across edge and cloud "
    "models answer questions summarize documents write code and explain results clearly"
)
_REASONING_WORDS = _words(
    "okay let me think about this step by step first I need to understand what is being asked "
    "then consider the constraints check the numbers again and verify the answer before I "
    "respond so the user gets something correct and useful wait maybe another approach works"
)
_PUNCTUATION = (",", ".", ".", ",")
_TAPE_LENGTH = 8192


@dataclass(slots=True)
class Pieces:
    """A run of generated pieces: their text and their JSON string literals (with quotes)."""

    texts: list[str]
    json: list[bytes]

    def __len__(self) -> int:
        return len(self.texts)

    def text(self) -> str:
        return "".join(self.texts)

    def head(self, n: int) -> Pieces:
        """The first `n` pieces (all of them when there are fewer)."""
        return self if n >= len(self.texts) else Pieces(self.texts[:n], self.json[:n])


class _Tape:
    __slots__ = ("json", "texts")

    def __init__(self, words: list[str], rng: random.Random) -> None:
        texts: list[str] = []
        for i in range(_TAPE_LENGTH):
            if i % 9 == 8:
                texts.append(rng.choice(_PUNCTUATION))
            else:
                texts.append(" " + rng.choice(words))
        self.texts = texts
        encoded = {t: orjson.dumps(t) for t in set(texts)}
        self.json = [encoded[t] for t in texts]

    def window(self, offset: int, n: int, *, first: bool) -> Pieces:
        offset %= _TAPE_LENGTH
        if offset + n <= _TAPE_LENGTH:
            texts = self.texts[offset : offset + n]
            js = self.json[offset : offset + n]
        else:
            texts, js = [], []
            while len(texts) < n:
                take = min(n - len(texts), _TAPE_LENGTH - offset)
                texts += self.texts[offset : offset + take]
                js += self.json[offset : offset + take]
                offset = 0
        if first and texts:
            # An answer starts with a capitalized word, not a space or a comma.
            word = texts[0].strip(" ,.") or "So"
            texts[0] = word[0].upper() + word[1:]
            js[0] = orjson.dumps(texts[0])
        return Pieces(texts, js)


class TextGenerator:
    """Deterministic content and reasoning pieces for a seed."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self._content = _Tape(list(_CONTENT_WORDS), rng)
        self._reasoning = _Tape(list(_REASONING_WORDS), rng)

    @staticmethod
    def key(prompt: str, request_seed: int | None = None) -> int:
        """The tape offset for a prompt (and a per-request seed, when the caller sent one)."""
        key = zlib.crc32(prompt.encode("utf-8", "surrogatepass"))
        if request_seed is not None:
            key ^= (request_seed * 2654435761) & 0xFFFFFFFF
        return key

    def content(self, key: int, n: int) -> Pieces:
        return self._content.window(key, n, first=True)

    def reasoning(self, key: int, n: int) -> Pieces:
        return self._reasoning.window(key >> 3, n, first=True)

    def json_content(self, key: int, words: int, schema: dict[str, Any] | None = None) -> Pieces:
        """A JSON object as text (following `schema` when given), split into token pieces.

        Without a schema it is `{"answer": "<about `words` words>"}`. A caller that hits its
        token limit cuts it with `head()`, as a real model's output would be cut.
        """
        if schema:
            value = example_value(schema, self._content.window(key, 8, first=False).text().split())
            text = orjson.dumps(value).decode()
        else:
            answer = self._content.window(key, max(1, min(words, 64)), first=True).text()
            text = orjson.dumps({"answer": answer}).decode()
        texts = split_tokens(text)
        return Pieces(texts, [orjson.dumps(t) for t in texts])


_TOKEN_SPLIT = re.compile(r"\s?[A-Za-z]+|\s?\d|\s?[^\sA-Za-z\d]+|\s+")


def split_tokens(text: str) -> list[str]:
    """Splits text into word- and punctuation-sized pieces (each counted as one token)."""
    return _TOKEN_SPLIT.findall(text) or [text]


def example_value(schema: dict[str, Any], words: list[str] | None = None) -> Any:
    """A small value that satisfies a JSON schema (object, array, scalar, enum, const)."""
    words = words or ["example"]
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options and isinstance(options[0], dict):
            return example_value(options[0], words)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        required = schema.get("required") or list(props)
        return {
            name: example_value(props.get(name) or {}, words[i % len(words) :] or words)
            for i, name in enumerate(required)
            if isinstance(props.get(name, {}), dict)
        }
    if kind == "array":
        items = schema.get("items")
        return [example_value(items, words)] if isinstance(items, dict) else []
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return words[0].strip(" ,.") or "example"


def choose_tool(
    messages: list[Any], tools: list[Any] | None, tool_choice: Any = None
) -> dict[str, Any] | None:
    """The function a model would call, if any: simple, deterministic rules.

    A call happens when tools are offered and either `tool_choice` demands one ("required" or
    a named function) or the latest message is from the user and names one of the tools.
    Returns the tool's `function` object (name, parameters).
    """
    functions = [
        t["function"] for t in tools or () if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    if not functions or tool_choice == "none":
        return None
    if isinstance(tool_choice, dict):
        wanted = (tool_choice.get("function") or {}).get("name")
        return next((f for f in functions if f.get("name") == wanted), functions[0])
    if tool_choice == "required":
        return functions[0]
    last = messages[-1] if messages else None
    if not isinstance(last, dict) or last.get("role") != "user":
        return None
    content = last.get("content")
    text = content if isinstance(content, str) else orjson.dumps(content).decode()
    text = text.lower()
    return next((f for f in functions if str(f.get("name", "")).lower() in text and f.get("name")), None)


def tool_arguments(function: dict[str, Any]) -> dict[str, Any]:
    """Arguments for a call to `function` that satisfy its parameter schema."""
    params = function.get("parameters")
    if not isinstance(params, dict):
        return {}
    value = example_value({**params, "type": "object"})
    return value if isinstance(value, dict) else {}
