"""Trains the n-gram model and the blend, and writes `tandem/routing/ngram_model.json`.

    python -m tandem.routing.train            # train, write the artifact, print a summary
    python -m tandem.routing.train --curve    # also: the learning curve on the test split
    python -m tandem.routing.train --check    # retrain and fail if the artifact differs

Reproducible: a fixed seed for the folds, full-batch optimisation (no sampling), weights
rounded before export. numpy is used here only; the run-time side (`ngrams.py`) needs none.

1. Features: every n-gram (1-4 characters) and structural feature of each request
   (`ngrams.features`), counted and scaled by 1/sqrt(occurrences); a feature enters the
   vocabulary when at least `MIN_DF` training requests hold it.
2. Model: L2-regularised logistic regression. The strength is chosen by 5-fold
   cross-validation on the training split (log-loss), never on the test split.
3. Blend: the model's out-of-fold log-odds on the training split, and the rules' score on the
   same requests (which the rules were never tuned on), fitted by a logistic regression of
   three parameters: that fit is the calibration too.
4. The final model is trained on all training requests (the training split plus the rules' dev
   and extra sets) and exported.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tandem.routing import corpus, ngrams
from tandem.routing.rules import score as rules_score

SEED = 19
FOLDS = 5
MIN_DF = 2
STRENGTHS = (1e-5, 3e-5, 1e-4, 3e-4)  # L2 strengths tried by cross-validation
ITERATIONS = 400
PRUNE = 1e-3  # weights smaller than this are left out of the artifact (they move no decision)
CURVE = (0.1, 0.25, 0.5, 0.75, 1.0)

Floats = NDArray[np.float64]


@dataclass(slots=True)
class Matrix:
    """Rows of scaled feature counts, in compressed sparse row form (numpy only, no scipy)."""

    indptr: NDArray[np.int64]
    indices: NDArray[np.int64]
    data: Floats
    columns: int

    def dot(self, w: Floats) -> Floats:
        rows = len(self.indptr) - 1
        row_of_entry = np.repeat(np.arange(rows), np.diff(self.indptr))
        sums = np.bincount(row_of_entry, weights=self.data * w[self.indices], minlength=rows)
        return np.asarray(sums, dtype=np.float64)

    def tdot(self, r: Floats) -> Floats:
        per_entry = np.repeat(r, np.diff(self.indptr)) * self.data
        sums = np.bincount(self.indices, weights=per_entry, minlength=self.columns)
        return np.asarray(sums, dtype=np.float64)


def counted(examples: Sequence[corpus.Example]) -> list[Counter[str]]:
    return [Counter(ngrams.features(e.request)) for e in examples]


def vocabulary(counts: Sequence[Counter[str]]) -> dict[str, int]:
    df: Counter[str] = Counter()
    for c in counts:
        df.update(c.keys())
    kept = sorted(f for f, n in df.items() if n >= MIN_DF)
    return {f: i for i, f in enumerate(kept)}


def matrix(counts: Sequence[Counter[str]], vocab: dict[str, int]) -> Matrix:
    indptr, indices, data = [0], list[int](), list[float]()
    for c in counts:
        scale = 1.0 / math.sqrt(max(sum(c.values()), 1))  # as ngrams.NgramModel.logit does
        row = sorted((vocab[f], n * scale) for f, n in c.items() if f in vocab)
        indices.extend(i for i, _ in row)
        data.extend(v for _, v in row)
        indptr.append(len(indices))
    return Matrix(np.array(indptr), np.array(indices, dtype=np.int64), np.array(data), len(vocab))


def fit(x: Matrix, y: Floats, strength: float) -> tuple[Floats, float]:
    """L2-regularised logistic regression by full-batch Adam: deterministic, no sampling."""
    w, b = np.zeros(x.columns), 0.0
    m_w, v_w, m_b, v_b = np.zeros(x.columns), np.zeros(x.columns), 0.0, 0.0
    rate, beta1, beta2, eps = 0.05, 0.9, 0.999, 1e-8
    n = len(y)
    for t in range(1, ITERATIONS + 1):
        p = 1.0 / (1.0 + np.exp(-(x.dot(w) + b)))
        r = (p - y) / n
        g_w, g_b = x.tdot(r) + strength * w, float(r.sum())
        m_w, v_w = beta1 * m_w + (1 - beta1) * g_w, beta2 * v_w + (1 - beta2) * g_w**2
        m_b, v_b = beta1 * m_b + (1 - beta1) * g_b, beta2 * v_b + (1 - beta2) * g_b**2
        fix1, fix2 = 1 - beta1**t, 1 - beta2**t
        w -= rate * (m_w / fix1) / (np.sqrt(v_w / fix2) + eps)
        b -= rate * (m_b / fix1) / (math.sqrt(v_b / fix2) + eps)
    return w, b


def folds(n: int, k: int = FOLDS) -> list[NDArray[np.int64]]:
    order = np.random.default_rng(SEED).permutation(n)
    return [order[i::k] for i in range(k)]


def out_of_fold(
    train_counts: list[Counter[str]],
    y: Floats,
    extra_counts: list[Counter[str]],
    y_extra: Floats,
    strength: float,
) -> Floats:
    """The model's log-odds for each training-split request, from a model that never saw it
    (trained on the other folds plus the rules' sets)."""
    logits = np.zeros(len(y))
    for held in folds(len(y)):
        keep = np.setdiff1d(np.arange(len(y)), held)
        fold_counts = [train_counts[i] for i in keep] + extra_counts
        vocab = vocabulary(fold_counts)
        w, b = fit(matrix(fold_counts, vocab), np.concatenate([y[keep], y_extra]), strength)
        logits[held] = matrix([train_counts[i] for i in held], vocab).dot(w) + b
    return logits


def log_loss(logits: Floats, y: Floats) -> float:
    return float(np.mean(np.logaddexp(0.0, logits) - y * logits))


def fit_blend(features: Floats, y: Floats, ridge: float = 1e-3) -> Floats:
    """Logistic regression of a few columns (plus an intercept) by Newton's method."""
    x = np.column_stack([features, np.ones(len(y))])
    beta = np.zeros(x.shape[1])
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        grad = x.T @ (p - y) / len(y) + ridge * np.r_[beta[:-1], 0.0]
        hess = (x.T * (p * (1 - p))) @ x / len(y) + ridge * np.diag(np.r_[np.ones(len(beta) - 1), 0.0])
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    return beta


def labels(examples: Sequence[corpus.Example]) -> Floats:
    return np.array([1.0 if e.thinking else 0.0 for e in examples])


def accuracy(logits: Floats, y: Floats) -> float:
    return float(np.mean((logits > 0) == (y > 0.5)))


def train(quiet: bool = False) -> dict[str, Any]:
    """The artifact's content, trained from the corpus."""
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    split = corpus.load(corpus.TRAIN)
    rules_sets = [e for path in corpus.RULES_SETS for e in corpus.load(path)]
    y, y_rules = labels(split), labels(rules_sets)
    split_counts, rules_counts = counted(split), counted(rules_sets)
    say(f"training split {len(split)}, rules' sets {len(rules_sets)}")

    best: tuple[float, float, Floats] | None = None
    for strength in STRENGTHS:
        oof = out_of_fold(split_counts, y, rules_counts, y_rules, strength)
        loss = log_loss(oof, y)
        say(f"  L2 {strength:g}: out-of-fold log-loss {loss:.4f}, accuracy {accuracy(oof, y):.1%}")
        if best is None or loss < best[0]:
            best = (loss, strength, oof)
    assert best is not None
    _, strength, oof = best

    rules = np.array([rules_score(e.request) for e in split])
    a, b, c = fit_blend(np.column_stack([rules, oof]), y)
    blended = a * rules + b * oof + c
    say(f"blend: {a:.4f} x rules + {b:.4f} x model + {c:.4f}")
    say(
        f"  out-of-fold accuracy: rules {accuracy(rules, y):.1%}, model {accuracy(oof, y):.1%},"
        f" blend {accuracy(blended, y):.1%}"
    )

    counts = split_counts + rules_counts
    vocab = vocabulary(counts)
    w, bias = fit(matrix(counts, vocab), np.concatenate([y, y_rules]), strength)
    weights = {f: _round(float(w[i])) for f, i in vocab.items() if abs(w[i]) >= PRUNE}
    say(f"vocabulary {len(vocab)}, exported weights {len(weights)}")
    return {
        "format": ngrams.FORMAT,
        "trained_on": {
            "train_split": len(split),
            "rules_sets": len(rules_sets),
            "l2": strength,
            "seed": SEED,
            "min_df": MIN_DF,
        },
        "blend": {"rules": _round(float(a)), "model": _round(float(b)), "bias": _round(float(c))},
        "bias": _round(float(bias)),
        "weights": weights,
    }


def curve(strength: float) -> list[tuple[int, float]]:
    """Model-alone accuracy on the test split, trained on growing shares of the training data."""
    train_all = corpus.load(corpus.TRAIN) + [e for path in corpus.RULES_SETS for e in corpus.load(path)]
    test = corpus.load(corpus.TEST)
    order = np.random.default_rng(SEED).permutation(len(train_all))
    counts, y = counted(train_all), labels(train_all)
    test_counts, y_test = counted(test), labels(test)
    out = []
    for share in CURVE:
        take = order[: round(share * len(train_all))]
        sub = [counts[i] for i in take]
        vocab = vocabulary(sub)
        w, b = fit(matrix(sub, vocab), y[take], strength)
        out.append((len(take), accuracy(matrix(test_counts, vocab).dot(w) + b, y_test)))
    return out


def _round(x: float) -> float:
    return float(f"{x:.4g}")


def compare(shipped: dict[str, Any], fresh: dict[str, Any]) -> list[str]:
    """How a shipped artifact differs from a fresh one, beyond the last rounded digit.

    numpy's vectorised exp may differ in the last bit between CPUs, and a weight rounded to 4
    digits can then land on the other side of a rounding boundary, or of PRUNE: neither is a
    difference in the model.
    """

    def close(a: float, b: float) -> bool:
        return abs(a - b) <= 2e-3 * max(1.0, abs(a), abs(b))

    out = [
        f"{key}: {shipped.get(key)!r} != {fresh.get(key)!r}"
        for key in ("format", "trained_on")
        if shipped.get(key) != fresh.get(key)
    ]
    pairs = [("bias", shipped["bias"], fresh["bias"])]
    pairs += [(f"blend.{k}", shipped["blend"][k], fresh["blend"].get(k, 0.0)) for k in shipped["blend"]]
    old, new = shipped["weights"], fresh["weights"]
    for feature in old.keys() | new.keys():
        a, b = old.get(feature, 0.0), new.get(feature, 0.0)
        if feature not in old or feature not in new:
            if max(abs(a), abs(b)) > 2 * PRUNE:
                out.append(f"weight {feature!r}: {a} != {b}")
        else:
            pairs.append((f"weight {feature!r}", a, b))
    out += [f"{name}: {a} != {b}" for name, a, b in pairs if not close(a, b)]
    return out


def write(artifact: dict[str, Any], path: Path) -> None:
    text = json.dumps(artifact, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    path.write_text(text + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tandem.routing.train", description="n-gram model")
    parser.add_argument("--out", type=Path, default=ngrams.ARTIFACT, help="where to write the artifact")
    parser.add_argument("--curve", action="store_true", help="print the learning curve on the test split")
    parser.add_argument("--check", action="store_true", help="fail when retraining changes the artifact")
    args = parser.parse_args(argv)
    artifact = train()
    if args.check:
        differences = compare(json.loads(args.out.read_text(encoding="utf-8")), artifact)
        print("artifact is up to date" if not differences else f"{args.out} differs from a fresh run:")
        for line in differences[:20]:
            print(f"  {line}")
        return 1 if differences else 0
    write(artifact, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    if args.curve:
        print("learning curve (model alone, test split):")
        for size, acc in curve(artifact["trained_on"]["l2"]):
            print(f"  {size:5d} requests  {acc:6.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
