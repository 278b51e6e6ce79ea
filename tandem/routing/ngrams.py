"""The learned half of the classifier: a linear model over the character n-grams of a request.

It reads the same place the rules do (the latest user message: its opening and its end), as
text folded to lower case with every digit written `0` and runs of white space made one space,
and sums one weight per character n-gram (1 to 4 characters) found there, plus a few
structural features (length, earlier turns, fenced code). The sum is the model's log-odds that
the request needs thinking. No tokenizer and no word list: the same table covers English and
Chinese, and a Chinese character is an n-gram like any other.

The weights are trained offline (`python -m tandem.routing.train`, numpy) and exported to
`ngram_model.json` next to this file; at run time this module needs only the standard library:
the table is a dict keyed by the n-gram itself (Python's own string hash), so scoring is one
slice and one dict look-up per n-gram. A stable hashing trick (crc32 per n-gram) would cost more
in Python than the look-up it replaces, and the table holds only n-grams seen in training.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import repeat
from operator import add
from pathlib import Path
from typing import Any

from tandem.chat import ChatRequest
from tandem.routing.signals import latest_user_text

ARTIFACT = Path(__file__).with_name("ngram_model.json")
FORMAT = 1  # bump when the features change: an artifact of another format is refused
MAX_N = 4  # n-grams of 1 to 4 characters (NgramModel.logit spells the four passes out)
# The opening of the message (the instruction, usually) and its end (the question after pasted
# material). Chosen by cross-validation on the (1,125-request) training split: windows of 600, 400, 300, 250
# and 200 characters scored 89.5%, 90.0%, 90.8%, 91.6% and 91.4% out of fold (the model
# alone); the narrowest that is as good is also the cheapest.
HEAD_CHARS = 120
TAIL_CHARS = 80

# Folding: lower case (str.lower, then this table), every digit 0, white space one space.
_FOLD = str.maketrans({**{str(d): "0" for d in range(10)}, "\t": " ", "\r": " ", "\n": " "})


def model_text(req: ChatRequest) -> str:
    """The folded window of the latest user message the model reads ('' when there is none)."""
    text = latest_user_text(req.messages)
    if len(text) > HEAD_CHARS + TAIL_CHARS:
        text = text[:HEAD_CHARS] + " … " + text[-TAIL_CHARS:]
    return " ".join(text.lower().translate(_FOLD).split())


def structure(req: ChatRequest) -> list[str]:
    """Named structural features: length of the latest user message, earlier turns, code."""
    text = latest_user_text(req.messages)
    size = min(int(math.log2(len(text) + 1)), 14)  # 2^14 characters and more read alike
    out = [f"#len{size}"]
    if sum(1 for m in req.messages if m.role == "user") > 1:
        out.append("#followup")
    if "```" in text:
        out.append("#code")
    return out


def features(req: ChatRequest) -> Iterator[str]:
    """Every feature occurrence of `req`: its n-grams, then the structural features."""
    text = model_text(req)
    size = len(text)
    for n in range(1, MAX_N + 1):
        for i in range(size - n + 1):
            yield text[i : i + n]
    yield from structure(req)


@dataclass(frozen=True, slots=True)
class NgramModel:
    """Weights per feature and a bias; `logit(req)` is the log-odds of thinking."""

    weights: Mapping[str, float]
    bias: float

    def logit(self, req: ChatRequest) -> float:
        text = model_text(req)
        size = len(text)
        get = self.weights.get
        zero = repeat(0.0)
        # C-level passes only: each n-gram is the (n-1)-gram at the same place plus one character
        # (`map(add, ...)` stops at the shorter input, so the last places have no n-gram).
        bigrams = list(map(add, text, text[1:]))
        trigrams = list(map(add, bigrams, text[2:]))
        total = sum(map(get, text, zero)) + sum(map(get, bigrams, zero)) + sum(map(get, trigrams, zero))
        total += sum(map(get, map(add, trigrams, text[3:]), zero))
        named = structure(req)
        total += sum(get(name, 0.0) for name in named)
        # Counts are scaled by 1/sqrt(occurrences), as in training: a long window is not
        # more certain for being long.
        occurrences = _occurrences(size) + len(named)
        return self.bias + total / math.sqrt(occurrences)


def _occurrences(size: int) -> int:
    """How many n-grams of 1..MAX_N characters a text of `size` characters has."""
    return sum(max(size - n + 1, 0) for n in range(1, MAX_N + 1))


def load(path: Path = ARTIFACT) -> tuple[NgramModel, dict[str, Any]]:
    """The model in `path` and the rest of the artifact (blend weights, provenance)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: n-gram model format {data.get('format')!r}, expected {FORMAT}")
    model = NgramModel(weights=data.pop("weights"), bias=float(data.pop("bias")))
    return model, data
