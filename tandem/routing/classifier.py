"""The auto-mode classifier: does this request need thinking? CPU only, a fraction of a ms.

Two opinions, added as log-odds:

- the **rules** (`tandem.routing.rules`): named signals with weights, summed to a score;
- the **n-gram model** (`tandem.routing.ngrams`): a linear model over character n-grams,
  trained on the labelled corpus (`python -m tandem.routing.train`).

The blend `a * rules + b * model + c` was fitted (logistic regression) on requests neither
the rules nor the model were tuned on (the model's out-of-fold predictions over the corpus),
so its logistic is a calibrated probability of thinking. The operator's `prefer` shifts the
threshold; the confidence is the calibrated probability of the mode chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from tandem.chat import ChatRequest, Mode
from tandem.routing import ngrams
from tandem.routing.rules import weigh
from tandem.routing.signals import measure


class Prefer(StrEnum):
    """An operator's lean, per pool or per edge: a reasoning request answered fast costs
    quality, a trivial one sent to thinking costs GPU time."""

    THINKING = "thinking"
    BALANCED = "balanced"
    FAST = "fast"


# Added to the calibrated log-odds before the threshold: +1 thinks from a probability of 27%
# up, -1 only from 73% up (balanced: 50%).
PREFER_SHIFT = {Prefer.THINKING: 1.0, Prefer.BALANCED: 0.0, Prefer.FAST: -1.0}


@dataclass(frozen=True, slots=True)
class Contributions:
    """The terms of the decision, in log-odds of thinking; thinking when their sum is positive."""

    rules: float  # the blend's weight times the rules' score
    model: float  # the blend's weight times the n-gram model's log-odds
    bias: float  # the blend's intercept
    prefer: float  # the operator's shift (PREFER_SHIFT)

    @property
    def calibrated(self) -> float:
        """The calibrated log-odds of thinking, before the operator's shift."""
        return self.rules + self.model + self.bias

    def as_dict(self) -> dict[str, float]:
        return {"rules": self.rules, "model": self.model, "bias": self.bias, "prefer": self.prefer}


@dataclass(frozen=True, slots=True)
class Classification:
    """The classifier's verdict: a mode (never AUTO), how sure, the rules' signals that fired
    and the terms of the blend."""

    mode: Mode
    confidence: float
    signals: tuple[str, ...]
    contributions: Contributions


@dataclass(frozen=True, slots=True)
class Blend:
    """How the two opinions add up: `rules * score + model * logit + bias` (log-odds)."""

    rules: float
    model: float
    bias: float


# Loaded once, at import (the edge agent and the gateway import this at start): ~0.1 s.
MODEL, _ARTIFACT = ngrams.load()
BLEND = Blend(**_ARTIFACT["blend"])


def classify(req: ChatRequest, prefer: Prefer = Prefer.BALANCED) -> Classification:
    """Thinking or non-thinking for `req`: the calibrated probability of the mode chosen, the
    rules' signals and the terms of the blend."""
    fired = measure(req)
    rules = weigh(fired)
    terms = Contributions(
        rules=BLEND.rules * rules,
        model=BLEND.model * MODEL.logit(req),
        bias=BLEND.bias,
        prefer=PREFER_SHIFT[prefer],
    )
    logit = terms.calibrated
    thinking = logit + terms.prefer > 0
    p_thinking = _logistic(logit)
    return Classification(
        Mode.THINKING if thinking else Mode.NON_THINKING,
        p_thinking if thinking else 1.0 - p_thinking,
        tuple(fired),
        terms,
    )


def _logistic(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)  # no overflow for a very negative score
    return e / (1.0 + e)
