"""The n-gram model: what it reads, and that its fast scoring is the model that was trained."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from tandem.chat import ChatRequest
from tandem.routing import ngrams
from tandem.routing.classifier import MODEL
from tests.routing.conftest import Chat

Turn = str | tuple[str, str]
LONG = "Shift B ran line 3 from 14:00 to 22:00 and produced 4,120 housings. " * 40


def by_features(model: ngrams.NgramModel, req: ChatRequest) -> float:
    """The log-odds as training computes it: counted features, scaled by 1/sqrt(occurrences)."""
    counts = Counter(ngrams.features(req))
    total = sum(model.weights.get(f, 0.0) * n for f, n in counts.items())
    return model.bias + total / math.sqrt(sum(counts.values()))


@pytest.mark.parametrize(
    "turns",
    [
        ("Prove that the product of two odd integers is odd.",),
        ("把这句话翻译成英文：设备运行中禁止打开防护门。",),
        ("hi",),
        ("a",),
        (f"Summarize this for the morning meeting:\n\n{LONG}\n\nWhy did the infeed jam?",),
        ("What's 6 x 7?", ("assistant", "42."), "and for 3 bins?"),
        ("```python\ndef mean(xs):\n    return sum(xs) / len(xs) - 1\n```\nwrong for [2, 4]",),
    ],
)
def test_fast_scoring_equals_the_trained_features(chat: Chat, turns: tuple[Turn, ...]) -> None:
    req = chat(*turns)
    assert MODEL.logit(req) == pytest.approx(by_features(MODEL, req), rel=1e-9, abs=1e-9)


def test_the_window_is_the_opening_and_the_end_folded(chat: Chat) -> None:
    text = ngrams.model_text(chat(f"Summarize THIS\tplease:\n{LONG}\nThe END at 23:59?"))
    assert text.startswith("summarize this please: shift b ran line 0 from 00:00")
    assert text.endswith("the end at 00:00?")
    assert len(text) <= ngrams.HEAD_CHARS + ngrams.TAIL_CHARS + 3
    assert "…" in text  # the middle of a long message is not read


def test_only_the_latest_user_turn_is_read_and_earlier_turns_count_as_a_feature(chat: Chat) -> None:
    req = chat("Why does my gearbox overheat?", ("assistant", "Check the oil."), "Thanks!")
    assert ngrams.model_text(req) == "thanks!"
    assert "#followup" in ngrams.structure(req)
    assert "#followup" not in ngrams.structure(chat("Thanks!"))


def test_a_request_without_messages_scores_the_bias_plus_its_length_feature() -> None:
    req = ChatRequest(model="m", messages=[])
    assert MODEL.logit(req) == pytest.approx(MODEL.bias + MODEL.weights.get("#len0", 0.0))


def test_an_artifact_of_another_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    path.write_text(json.dumps({"format": ngrams.FORMAT + 1, "bias": 0, "weights": {}, "blend": {}}))
    with pytest.raises(ValueError, match=f"format {ngrams.FORMAT + 1}, expected {ngrams.FORMAT}"):
        ngrams.load(path)


def test_the_shipped_artifact_is_small_and_says_how_it_was_trained() -> None:
    model, meta = ngrams.load()
    assert ngrams.ARTIFACT.stat().st_size < 1_000_000
    assert 10_000 < len(model.weights) < 100_000
    assert meta["trained_on"]["train_split"] >= 1000 and meta["trained_on"]["seed"] == 19
    assert set(meta["blend"]) == {"rules", "model", "bias"}
