"""The trainer: its numpy pieces against plain arithmetic, and the shipped artifact against a
fresh training run (same corpus, same seed, same weights)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tandem.routing import train

ROOT = Path(__file__).resolve().parents[2]


def test_the_sparse_matrix_multiplies_like_a_dense_one() -> None:
    counts = [Counter({"a": 2, "b": 1}), Counter({"z": 3}), Counter({"b": 1, "c": 4, "q": 1})]
    vocab = {"a": 0, "b": 1, "c": 2}
    x = train.matrix(counts, vocab)
    dense = np.array([[2, 1, 0], [0, 0, 0], [0, 1, 4]]) / np.sqrt([[3], [3], [6]])
    w, r = np.array([0.5, -1.0, 2.0]), np.array([1.0, 2.0, -1.0])
    assert x.dot(w) == pytest.approx(dense @ w)
    assert x.tdot(r) == pytest.approx(dense.T @ r)


def test_the_blend_fit_recovers_known_coefficients() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(20_000, 2))
    truth = np.array([0.6, 1.2, -0.4])
    p = 1 / (1 + np.exp(-(features @ truth[:2] + truth[2])))
    y = (rng.random(20_000) < p).astype(float)
    assert train.fit_blend(features, y, ridge=0.0) == pytest.approx(truth, abs=0.08)


def test_a_fresh_training_run_reproduces_the_shipped_artifact() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tandem.routing.train", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    assert "artifact is up to date" in out.stdout


def test_the_check_tells_a_changed_model_from_a_last_digit_difference() -> None:
    shipped = {
        "format": 1,
        "trained_on": {"seed": 19},
        "bias": 0.5,
        "blend": {"rules": 0.6, "model": 1.0, "bias": 0.8},
        "weights": {"ab": 0.1234, "cd": -2.345, "tiny": 0.0011},
    }
    last_digit = {**shipped, "weights": {"ab": 0.1235, "cd": -2.346}}  # "tiny" fell under PRUNE
    assert train.compare(shipped, last_digit) == []
    changed = {**shipped, "weights": {"ab": 0.1234, "cd": -2.0, "tiny": 0.0011, "new": 0.5}}
    assert sorted(train.compare(shipped, changed)) == [
        "weight 'cd': -2.345 != -2.0",
        "weight 'new': 0.0 != 0.5",
    ]
    assert train.compare(shipped, {**shipped, "trained_on": {"seed": 7}}) == [
        "trained_on: {'seed': 19} != {'seed': 7}"
    ]
