"""The labelled requests the classifier is trained and scored on (`tests/data/routing/`).

One JSON object per line: `id`, `label` (`thinking` | `non_thinking`), `lang` (`en` | `zh`),
`hard` (written to fool keyword rules), `category`, and `messages` (role and content, as in a
chat request). docs/routing-labels.md says how a label is chosen.

- `train.jsonl`: the training split, written first; the model is fitted on it and the blend of
  rules and model is fitted on the model's out-of-fold predictions over it.
- `test.jsonl`: written after the training split and never used to fit or tune anything.
- `../routing_dev.jsonl` and `tests/routing/extra_cases.jsonl`: the sets the rules were tuned
  on; the model trains on them too, the blend never sees them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tandem.chat import ChatRequest, Message, Mode

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "data" / "routing"
TRAIN = CORPUS / "train.jsonl"
TEST = CORPUS / "test.jsonl"
RULES_SETS = (ROOT / "tests" / "data" / "routing_dev.jsonl", ROOT / "tests" / "routing" / "extra_cases.jsonl")
LABELS = {Mode.THINKING.value, Mode.NON_THINKING.value}


@dataclass(frozen=True, slots=True)
class Example:
    id: str
    thinking: bool
    lang: str
    hard: bool
    category: str
    request: ChatRequest


def load(path: Path) -> list[Example]:
    """The examples in a JSONL file; a malformed line fails with its file and line number."""
    out: list[Example] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if row["label"] not in LABELS:
                    raise ValueError(f"label {row['label']!r} is not one of {sorted(LABELS)}")
                messages = [Message(m["role"], m["content"]) for m in row["messages"]]
                out.append(
                    Example(
                        id=row["id"],
                        thinking=row["label"] == Mode.THINKING.value,
                        lang=row["lang"],
                        hard=bool(row.get("hard", False)),
                        category=row.get("category", ""),
                        request=ChatRequest(model="qwen3:14b", messages=messages),
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None
    return out
