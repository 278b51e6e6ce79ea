"""The prompt an engine would build from a chat, and its token count.

Both engines serve Qwen3 here, so a chat is rendered with Qwen's ChatML template
(`<|im_start|>{role}\\n{content}<|im_end|>\\n` ... `<|im_start|>assistant\\n`) and counted with
the real Qwen tokenizer. Benchmarks repeat one prompt, so counts are memoized per rendered text.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import orjson

_TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_POSTAMBLE = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)
_SOFT_SWITCH = re.compile(r"/(no_think|think)\b")


def message_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of an OpenAI parts list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return str(content)


def soft_switch(messages: Sequence[Any]) -> bool | None:
    """Qwen3's `/think` / `/no_think` in the latest user or system message that has one."""
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "system"):
            continue
        found = _SOFT_SWITCH.findall(message_text(message.get("content")))
        if found:
            return found[-1] == "think"
    return None


def render_chatml(
    messages: Sequence[Any],
    *,
    tools: Sequence[Any] | None = None,
    thinking: bool = True,
    think_suffix: str = "",
) -> str:
    """Renders a chat the way Qwen3's template does, ending with the assistant's turn.

    `thinking=False` adds the empty think block the template uses to switch thinking off;
    `think_suffix` is appended to the last user message (Ollama appends ` /think` or
    ` /no_think` there when the request sets `think`).
    """
    parts: list[str] = []
    rest = list(messages)
    system = ""
    if rest and isinstance(rest[0], dict) and rest[0].get("role") == "system":
        system = message_text(rest[0].get("content"))
        rest = rest[1:]
    if tools:
        parts.append("<|im_start|>system\n")
        if system:
            parts.append(system + "\n\n")
        parts.append(_TOOLS_PREAMBLE)
        for tool in tools:
            parts.append("\n" + orjson.dumps(tool).decode())
        parts.append(_TOOLS_POSTAMBLE + "<|im_end|>\n")
    elif system:
        parts.append(f"<|im_start|>system\n{system}<|im_end|>\n")
    last_user = max(
        (i for i, m in enumerate(rest) if isinstance(m, dict) and m.get("role") == "user"), default=-1
    )
    for i, message in enumerate(rest):
        if not isinstance(message, dict):
            continue
        role = message.get("role", "user")
        text = message_text(message.get("content"))
        if role == "tool":
            parts.append(f"<|im_start|>user\n<tool_response>\n{text}\n</tool_response><|im_end|>\n")
        elif role == "assistant":
            parts.append(f"<|im_start|>assistant\n{text}")
            for call in message.get("tool_calls") or ():
                function = call.get("function", {}) if isinstance(call, dict) else {}
                arguments = function.get("arguments", {})
                if not isinstance(arguments, str):
                    arguments = orjson.dumps(arguments).decode()
                name = function.get("name", "")
                parts.append(f'\n<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>')
            parts.append("<|im_end|>\n")
        else:
            suffix = think_suffix if i == last_user else ""
            parts.append(f"<|im_start|>{role}\n{text}{suffix}<|im_end|>\n")
    parts.append("<|im_start|>assistant\n")
    if not thinking:
        parts.append("<think>\n\n</think>\n\n")
    return "".join(parts)


class TokenCounter:
    """A memoized exact Qwen token counter (one per simulator)."""

    __slots__ = ("_count", "_maxsize")

    def __init__(self, maxsize: int = 4096) -> None:
        self._maxsize = maxsize
        self._count: Callable[[str], int] | None = None

    def __call__(self, text: str) -> int:
        if self._count is None:
            # Imported on first use: the tokenizer lives with the routing code, which a
            # simulator should not have to import (or load) just to start.
            from tandem.routing.tokens import count_text

            self._count = functools.lru_cache(maxsize=self._maxsize)(count_text)
        return self._count(text)


def token_ids(text: str) -> list[int]:
    """Qwen token ids of `text` (what Ollama's /api/generate returns as `context`)."""
    from tandem.routing.tokens import encoding

    return encoding().encode_ordinary(text)
