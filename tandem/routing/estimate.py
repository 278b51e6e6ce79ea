"""How many tokens a request's prompt is: estimated cheaply, counted exactly only near a limit.

Exact counting costs ~0.4 us per token (a 100k-token prompt ~40 ms), far over the 50 us a
route decision may take, while most prompts are nowhere near a context limit. So the prompt
is estimated from character classes, with ratios fitted on Qwen's tokenizer and biased a
little high, and counted exactly only when the estimate lands within `NEAR` of the limit that
matters (`docs/routing.md` has the estimate's error).
"""

from __future__ import annotations

from tandem.chat import ChatRequest
from tandem.routing.template import render

# Least-squares fit on the templated prompts of tests/data/routing_dev.jsonl (exact counts from
# Qwen's tokenizer), then raised 6% so the estimate errs high (docs/routing.md has the error).
TOKENS_PER_SPACE = 0.555  # an English word is about one token, and a space starts each word
TOKENS_PER_ASCII_CHAR = 0.164  # letters and punctuation beyond that (long words, code, symbols)
TOKENS_PER_DIGIT = 1.53  # Qwen splits every digit into its own token (plus separators nearby)
TOKENS_PER_WIDE_CHAR = 0.725  # CJK: common two-character words are one token
TOKENS_PER_RUN = 0.9  # each text run between two special tokens ends in a partial token

NEAR = 0.25  # count exactly when the estimate is within 25% of the limit
_DIGITS = b"0123456789"


def prompt_tokens(req: ChatRequest, *, limit: int | None = None) -> int:
    """Tokens of `req`'s chat-templated prompt (tools included).

    An estimate, biased slightly high; exact when `limit` is given and the estimate is within
    25% of it, so a caller comparing against `limit` gets the right answer where it matters.
    """
    runs, specials = render(req)
    estimate = specials + int(len(runs) * TOKENS_PER_RUN) + estimate_text("".join(runs))
    if limit is not None and abs(estimate - limit) <= NEAR * limit:
        return exact_prompt_tokens(req)
    return estimate


def exact_prompt_tokens(req: ChatRequest) -> int:
    """Exact Qwen tokens of the templated prompt (loads the tokenizer on first use)."""
    from tandem.routing.tokens import count_text  # lazy: the edge agent starts without tiktoken

    runs, specials = render(req)
    return specials + sum(count_text(r) for r in runs)


def estimate_text(text: str) -> int:
    """Cheap Qwen token estimate for plain text: a few C-speed passes, no tokenizer."""
    n = len(text)
    if n == 0:
        return 0
    raw = text.encode("utf-8")
    digits = len(raw) - len(raw.translate(None, _DIGITS))
    spaces = raw.count(b" ")
    wide = (len(raw) - n) // 2  # a CJK character is 3 UTF-8 bytes; °, — and é count as about one
    other = n - wide - digits - spaces
    return 1 + int(
        spaces * TOKENS_PER_SPACE
        + other * TOKENS_PER_ASCII_CHAR
        + digits * TOKENS_PER_DIGIT
        + wide * TOKENS_PER_WIDE_CHAR
    )
