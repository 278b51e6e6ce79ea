"""The Qwen3 chat template, rendered as text runs between special tokens.

Both token counts (the cheap estimate and the exact count) walk this one rendering, so they
agree on what a prompt is. The shape follows Qwen3's `tokenizer_config.json` template:

    <|im_start|>system\n{system}{tools block}<|im_end|>\n
    <|im_start|>{role}\n{content}<|im_end|>\n                  (user, system, assistant)
    <|im_start|>user\n<tool_response>\n{result}\n</tool_response><|im_end|>\n   (tool results)
    <|im_start|>assistant\n<think>\n\n</think>\n\n                (the generation prompt)

Special tokens (`<|im_start|>`, `<tool_call>`, `<think>`, ...) are one token each and split the
text around them, so a rendering is `(runs, specials)`: the text between specials, and how
many specials there are.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tandem.chat import ChatRequest, Message, Tool

_TOOLS_HEAD = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_TAIL = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    'within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, '
    '"arguments": <args-json-object>}\n</tool_call>'
)


def tool_json(tool: Tool) -> str:
    """One tool as the template prints it (`tool | tojson`: compact keys, non-ASCII kept)."""
    spec: dict[str, Any] = {"name": tool.name, "description": tool.description}
    spec["parameters"] = tool.parameters
    return json.dumps({"type": tool.type, "function": spec}, ensure_ascii=False)


def render(req: ChatRequest) -> tuple[list[str], int]:
    """The prompt vLLM or Ollama would build for `req`, as (text runs, number of specials).

    The generation prompt includes the empty think block of non-thinking mode (4 tokens), so
    the count for a thinking request is that much high: an estimate should err high.
    """
    runs: list[str] = []
    specials = 0
    messages = req.messages
    start = 0
    if req.tools:
        system = messages[0].content + "\n\n" if messages and messages[0].role == "system" else ""
        body = "\n".join(tool_json(t) for t in req.tools)
        runs.append(f"system\n{system}{_TOOLS_HEAD}\n{body}{_TOOLS_TAIL}")
        runs.append("\n")
        specials += 2
        start = 1 if system else 0
    last_user = _last_user_index(messages)
    in_tool_block = False
    for i in range(start, len(messages)):
        m = messages[i]
        if m.role == "tool":
            # Consecutive tool results share one user turn, each wrapped in <tool_response>.
            head = "" if in_tool_block else "user"
            runs.append(f"{head}\n")
            runs.append(f"\n{m.content}\n")
            specials += 2 + (0 if in_tool_block else 1)
            in_tool_block = True
            if i + 1 == len(messages) or messages[i + 1].role != "tool":
                runs.append("\n")
                specials += 1
                in_tool_block = False
            continue
        specials += _render_turn(runs, m, keep_reasoning=i > last_user)
    runs.append("assistant\n")  # generation prompt, then the empty think block
    runs.append("\n\n")
    runs.append("\n\n")
    return runs, specials + 3


def _render_turn(runs: list[str], m: Message, *, keep_reasoning: bool) -> int:
    """Append one user/system/assistant turn; return the number of specials it used."""
    if m.role != "assistant":
        runs.append(f"{m.role}\n{m.content}")
        runs.append("\n")
        return 2
    specials = 2
    if keep_reasoning and m.reasoning:
        # Only turns after the latest user query keep their reasoning (an agent's tool loop).
        runs.append("assistant\n")
        runs.append(f"\n{m.reasoning.strip()}\n")
        runs.append(f"\n\n{m.content}")
        specials += 2
    else:
        runs.append(f"assistant\n{m.content}")
    for k, call in enumerate(m.tool_calls):
        sep = "\n" if (k == 0 and m.content) or k > 0 else ""
        runs[-1] += sep
        runs.append(f'\n{{"name": "{call.name}", "arguments": {call.arguments or "{}"}}}\n')
        runs.append("")
        specials += 2
    runs.append("\n")
    return specials


def _last_user_index(messages: Sequence[Message]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user":
            return i
    return -1
