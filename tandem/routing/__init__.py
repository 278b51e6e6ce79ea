"""The route decision: mode (explicit, soft switch, classifier), target and token estimate.

Shared by the gateway and the edge agent; importing it never imports litellm, aiohttp or grpc,
and the tokenizer (tiktoken) loads only on the first exact count.

    mode.py         decide_mode: explicit > soft switch > classifier
    soft_switch.py  Qwen3's /think and /no_think
    classifier.py   the auto-mode classifier: the rules and the n-gram model, blended; `prefer`
    rules.py        the rules' weights and score
    signals.py      what the rules measure in a request (cues.py: the words they look for)
    ngrams.py       the n-gram model (weights in ngram_model.json; train.py trains it)
    estimate.py     prompt tokens: cheap estimate, exact near a limit (template.py, tokens.py)
    decide.py       route: mode and target, on the gateway or on an edge
"""

from tandem.routing.classifier import Classification, Prefer, classify
from tandem.routing.decide import EdgeView, route
from tandem.routing.estimate import prompt_tokens
from tandem.routing.mode import ModeChoice, decide_mode
from tandem.routing.soft_switch import soft_switch

__all__ = [
    "Classification",
    "EdgeView",
    "ModeChoice",
    "Prefer",
    "classify",
    "decide_mode",
    "prompt_tokens",
    "route",
    "soft_switch",
]
