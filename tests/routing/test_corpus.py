"""The labelled corpus stays what docs/routing.md says it is: valid rows, disjoint splits, the
mix the issue asked for, and the second pass's resolutions applied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tandem.routing import corpus


def texts(examples: list[corpus.Example]) -> set[str]:
    return {" ".join(m.content for m in e.request.messages).strip().lower() for e in examples}


def test_the_splits_are_valid_disjoint_and_hold_the_mix() -> None:
    train, test = corpus.load(corpus.TRAIN), corpus.load(corpus.TEST)
    rules_sets = [e for path in corpus.RULES_SETS for e in corpus.load(path)]
    everything = train + test
    assert len({e.id for e in everything}) == len(everything) >= 1500
    assert not texts(test) & texts(train) and not texts(test) & texts(rules_sets)
    assert not texts(train) & texts(rules_sets)
    for split in (train, test):
        zh = sum(e.lang == "zh" for e in split) / len(split)
        hard = sum(e.hard for e in split) / len(split)
        thinking = sum(e.thinking for e in split) / len(split)
        assert 0.30 <= zh <= 0.40 and 0.30 <= hard <= 0.45 and 0.40 <= thinking <= 0.55
    assert sum(len(e.request.messages) > 1 for e in everything) >= 40  # multi-turn chats
    assert sum(len(e.request.messages[-1].content) > 400 for e in everything) >= 40  # pasted material


def test_the_second_pass_resolutions_are_the_labels() -> None:
    labels = {e.id: e.thinking for e in corpus.load(corpus.TRAIN) + corpus.load(corpus.TEST)}
    with (corpus.CORPUS / "second_pass.jsonl").open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    assert rows and all(r["first"] != r["second"] and r["why"] for r in rows)
    assert {r["id"]: r["kept"] == "thinking" for r in rows} == {r["id"]: labels[r["id"]] for r in rows}


def test_a_malformed_row_is_named_by_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = '{"id": "a", "label": "thinking", "lang": "en", "messages": []}'
    path.write_text(f'{good}\n{{"id": "b", "label": "maybe"}}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: label 'maybe' is not one of"):
        corpus.load(path)
