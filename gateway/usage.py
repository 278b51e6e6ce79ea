"""Counting a streamed answer's tokens when the engine reported none.

vLLM sends a usage event when asked (`stream_options.include_usage`, which the gateway always
sets); llama.cpp's Python server ignores the option. Without usage the tenant's token limits
would charge the estimate made before the answer, and every edge-forwarded answer would report
`eval_count: 0`. So the gateway keeps the answer's text as it passes (references, no copies)
and, when the stream ends without usage, counts it:

- Qwen models (the served name says "qwen"): exactly, with Qwen's tokenizer
  (`tandem.routing.tokens`, offline), prompt templated as Qwen's chat template does;
- other models: the character-class estimate fitted on Qwen's tokenizer
  (`tandem.routing.estimate`; docs/routing.md gives its error), which is another vocabulary's
  count, so an estimate.

Either way the usage is marked `counted` (OpenAI: `usage.tandem_counted: true`; gRPC:
`Usage.counted`), so that callers can tell it from an engine's report.
"""

from __future__ import annotations

from tandem.chat import ChatRequest, Chunk, Usage
from tandem.routing.estimate import estimate_text, exact_prompt_tokens, prompt_tokens


def exact_for(served_model: str) -> bool:
    """Whether the served model's tokens can be counted exactly (Qwen's tokenizer)."""
    return "qwen" in served_model.lower()


class UsageCounter:
    """Watches one stream's batches; `count()` once it ended without usage."""

    __slots__ = ("_exact", "_pieces", "_req", "missing")

    def __init__(self, req: ChatRequest, served_model: str) -> None:
        self._req = req
        self._exact = exact_for(served_model)
        self._pieces: list[str] = []
        self.missing = True  # no usage seen yet

    def add(self, batch: list[Chunk]) -> None:
        pieces = self._pieces
        for c in batch:
            if c.content:
                pieces.append(c.content)
            if c.reasoning:
                pieces.append(c.reasoning)
            for call in c.tool_calls:
                pieces.append(call.name)
                pieces.append(call.arguments)
            if c.usage is not None:
                self.missing = False

    def count(self) -> Usage:
        """The answer's usage, counted here (marked so)."""
        self.missing = False
        text = "".join(self._pieces)
        if self._exact:
            from tandem.routing.tokens import count_text  # lazy: tiktoken's ranks load on first use

            prompt, completion = exact_prompt_tokens(self._req), count_text(text)
        else:
            prompt, completion = prompt_tokens(self._req), estimate_text(text)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, counted=True)
