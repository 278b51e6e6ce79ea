"""How often the auto-mode classifier is right: rules alone, n-gram model alone, and the blend.

    .venv/bin/python -m bench.routing_accuracy              # the test split
    .venv/bin/python -m bench.routing_accuracy --set train  # ...or another labelled set

Scores the untouched test split (`tests/data/routing/test.jsonl`, written after the training
data and never used to fit or tune anything) overall, on the hard cases and per language, for
each of the three deciders; then the calibration of the blend (predicted probability against
the observed share of thinking labels, in bins) and what each `prefer` setting does.
Writes bench/results/routing_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from tandem.routing import corpus
from tandem.routing.classifier import BLEND, MODEL, Prefer, classify
from tandem.routing.rules import score as rules_score

RESULTS = Path(__file__).resolve().parent / "results" / "routing_accuracy.json"
SETS = {
    "test": corpus.TEST,
    "train": corpus.TRAIN,
    "dev": corpus.RULES_SETS[0],
    "extra": corpus.RULES_SETS[1],
}
GROUPS = ("overall", "hard", "en", "zh")


def groups(e: corpus.Example) -> list[str]:
    return ["overall", *(["hard"] if e.hard else []), e.lang]


Decider = Callable[[corpus.Example], bool]


def table(examples: Sequence[corpus.Example], decide: Decider) -> dict[str, list[int]]:
    """group -> [right, seen] for a decider that says thinking or not."""
    out: dict[str, list[int]] = {}
    for e in examples:
        right = decide(e) == e.thinking
        for g in groups(e):
            out.setdefault(g, [0, 0])
            out[g][0] += right
            out[g][1] += 1
    return out


def calibration(examples: Sequence[corpus.Example], bins: int = 5) -> list[dict[str, float]]:
    """The blend's probability of thinking against the share labelled thinking, per bin."""
    rows: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for e in examples:
        p = 1.0 / (1.0 + math.exp(-classify(e.request).contributions.calibrated))
        rows[min(int(p * bins), bins - 1)].append((p, e.thinking))
    return [
        {
            "bin": i / bins,
            "n": len(r),
            "predicted": sum(p for p, _ in r) / len(r),
            "observed": sum(t for _, t in r) / len(r),
        }
        for i, r in enumerate(rows)
        if r
    ]


def _cell(found: list[int] | None) -> str:
    if found is None:
        return f"{'-':>18}"
    right, seen = found
    return f"{right / seen:>8.1%} ({right:>3}/{seen:>3})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.routing_accuracy")
    parser.add_argument("--set", choices=sorted(SETS), default="test")
    args = parser.parse_args(argv)
    examples = corpus.load(SETS[args.set])
    deciders: dict[str, Decider] = {
        "rules": lambda e: rules_score(e.request) > 0,
        "model": lambda e: MODEL.logit(e.request) > 0,
        "blend": lambda e: classify(e.request).contributions.calibrated > 0,
    }
    results: dict[str, object] = {"set": args.set, "size": len(examples), "blend": repr(BLEND)}
    print(f"{args.set}: {len(examples)} requests")
    print(f"{'':8}" + "".join(f"{g:>18}" for g in GROUPS))
    for name, decide in deciders.items():
        found = table(examples, decide)
        results[name] = {g: found[g][0] / found[g][1] for g in GROUPS if g in found}
        cells = "".join(_cell(found.get(g)) for g in GROUPS)
        print(f"{name:8}{cells}")
    print("\ncalibration of the blend (probability of thinking):")
    cal = calibration(examples)
    for row in cal:
        low, n = row["bin"], row["n"]
        print(f"  [{low:.1f}, {low + 0.2:.1f}): n={n:4.0f}", end="")
        print(f"  predicted {row['predicted']:.2f}  observed {row['observed']:.2f}")
    results["calibration"] = cal
    print("\nprefer (the blend with the operator's shift):")
    prefer: dict[str, dict[str, float]] = {}
    for p in Prefer:
        verdicts = [(classify(e.request, p).mode.value == "thinking", e.thinking) for e in examples]
        accuracy = sum(v == t for v, t in verdicts) / len(verdicts)
        missed = sum(t and not v for v, t in verdicts) / max(sum(t for _, t in verdicts), 1)
        extra = sum(v and not t for v, t in verdicts) / max(sum(not t for _, t in verdicts), 1)
        prefer[p.value] = {"accuracy": accuracy, "thinking_answered_fast": missed, "trivial_thinking": extra}
        print(f"  {p.value:9} accuracy {accuracy:.1%}, thinking answered fast {missed:.1%},", end="")
        print(f" trivial sent to thinking {extra:.1%}")
    results["prefer"] = prefer
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
