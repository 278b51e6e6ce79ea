"""Accuracy of the auto classifier (rules and n-gram model, blended) on labelled requests.
Floors sit a little under what it achieves, so a regression fails. Figures:
`.venv/bin/pytest tests/routing -q -s -k accuracy`, or `python -m bench.routing_accuracy`.

- tests/data/routing/test.jsonl: the untouched test split (430 requests, a third Chinese, two
  in five hard), written after the training data; nothing was fitted or tuned on it. The
  issue's targets are the floors: 95% overall, 90% on hard cases, languages within 3 points.
- tests/data/routing_dev.jsonl: the development set (200 requests; a third built to fool
  keyword rules). The rules were tuned on it and the model trained on it: optimistic.
- tests/routing/extra_cases.jsonl: 155 requests written while developing the rules (other
  domains and phrasings, multi-turn chats); the model trained on them too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tandem.routing import corpus
from tandem.routing.classifier import classify
from tests.routing.conftest import dev_request

EXTRA = Path(__file__).parent / "extra_cases.jsonl"
DEV_FLOORS = {"overall": 0.97, "hard": 0.95, "en": 0.96, "zh": 0.96}
EXTRA_FLOORS = {"overall": 0.95, "en": 0.94, "zh": 0.94}
TEST_FLOORS = {"overall": 0.95, "hard": 0.90, "en": 0.95, "zh": 0.95}
LANGUAGE_GAP = 0.03


def accuracy(rows: list[dict[str, Any]], title: str) -> dict[str, float]:
    """Accuracy overall, on hard cases (when marked) and per language; printed as a table."""
    totals: dict[str, list[int]] = {}
    misses: list[str] = []
    for row in rows:
        correct = classify(dev_request(row)).mode.value == row["label"]
        for key in ("overall", *(("hard",) if row.get("hard") else ()), row["lang"]):
            totals.setdefault(key, [0, 0])
            totals[key][0] += correct
            totals[key][1] += 1
        if not correct:
            misses.append(f"{row['id']} ({row['label']}, {row.get('category', '-')})")
    print(f"\n{title}")
    for key in sorted(totals, key=("overall", "hard", "en", "zh").index):
        right, seen = totals[key]
        print(f"  {key:8} {right / seen:6.1%}  ({right}/{seen})")
    if misses:
        print("  misses:", ", ".join(misses))
    return {key: right / seen for key, (right, seen) in totals.items()}


def test_accuracy_on_the_dev_set_meets_the_floors(dev_set: list[dict[str, Any]]) -> None:
    found = accuracy(dev_set, "classifier accuracy on tests/data/routing_dev.jsonl:")
    assert {k: found[k] >= floor for k, floor in DEV_FLOORS.items()} == dict.fromkeys(DEV_FLOORS, True)


def test_accuracy_on_the_extra_cases_meets_the_floors() -> None:
    with EXTRA.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    found = accuracy(rows, "classifier accuracy on tests/routing/extra_cases.jsonl:")
    assert {k: found[k] >= floor for k, floor in EXTRA_FLOORS.items()} == dict.fromkeys(EXTRA_FLOORS, True)


def test_accuracy_on_the_untouched_test_split_meets_the_targets() -> None:
    with corpus.TEST.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    found = accuracy(rows, "classifier accuracy on tests/data/routing/test.jsonl:")
    assert {k: found[k] >= floor for k, floor in TEST_FLOORS.items()} == dict.fromkeys(TEST_FLOORS, True)
    assert abs(found["en"] - found["zh"]) <= LANGUAGE_GAP
