"""How long a route decision takes: median and p99 of `route()`, in microseconds.

    .venv/bin/python -m bench.bench_decision

Each row times many calls with `time.perf_counter_ns`, one call at a time, and reports the
median of three repeats (median and p99 of each repeat). The budget is 50 us for a typical
request (docs/routing.md); exact token counting runs only near a context limit, shown apart.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tandem.chat import ChatRequest, Message
from tandem.routing import EdgeView, route
from tandem.routing.classifier import MODEL
from tandem.routing.estimate import exact_prompt_tokens
from tandem.routing.rules import score as rules_score

SYSTEM = "You are the maintenance assistant for a gearbox plant. Answer precisely and briefly."
SUMMARY = "Summarize these shift notes in three bullets for the morning meeting, no commentary."
QUESTION = (
    "Line 2's spindle drive tripped on overcurrent twice last night, both times about 40 minutes "
    "into the cycle and only on the 6205 bearing housings. Ambient was 31 °C. The drive was "
    "replaced in March; the motor insulation test passed last week. What is the most likely cause, "
    "and what should we check first?"
)
REPORT = (
    "Shift B ran line 3 normally from 14:00 to 22:00 and produced 4,120 housings; the infeed "
    "chute jammed once for 35 minutes and was cleared by maintenance. Scrap was 0.8%. "
)


def chat_500(last: str) -> ChatRequest:
    """A typical edge chat: a system prompt, two earlier turns, a last message (~500 tokens)."""
    earlier = "Yesterday's alarm on the same drive was a DC-bus undervoltage, cleared after a restart. "
    return ChatRequest(
        model="qwen3:14b",
        messages=[
            Message("system", SYSTEM),
            Message("user", earlier * 6 + "Anything to worry about?"),
            Message("assistant", "Probably a supply dip; log the next one with a timestamp. " * 5),
            Message("user", last + "\n\n" + REPORT * 3),
        ],
        max_tokens=512,
    )


def chat_100k(first: str = "", last: str = "") -> ChatRequest:
    """A long-document request: months of shift notes and an instruction (~100k tokens)."""
    text = f"{first}\n\n{REPORT * 1750}\n\n{last}".strip()
    return ChatRequest(
        model="qwen3:14b", messages=[Message("system", SYSTEM), Message("user", text)], max_tokens=1024
    )


def dev_set() -> list[ChatRequest]:
    """The 200 requests of tests/data/routing_dev.jsonl (a mix of short and long, en and zh)."""
    path = Path(__file__).parent.parent / "tests" / "data" / "routing_dev.jsonl"
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [
        ChatRequest(model="qwen3:14b", messages=[Message(m["role"], m["content"]) for m in row["messages"]])
        for row in rows
    ]


def timed(call: Callable[[], object], iterations: int) -> tuple[float, float]:
    """(median, p99) of one repeat, in microseconds."""
    samples = []
    for _ in range(iterations):
        start = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    return samples[len(samples) // 2] / 1000, samples[int(len(samples) * 0.99)] / 1000


def measure_runs(call: Callable[[], object], iterations: int, repeats: int = 3) -> list[tuple[float, float]]:
    """(median, p99) of each repeat, in microseconds, after a warm-up."""
    for _ in range(min(iterations, 50)):
        call()  # warm caches (and the tokenizer, if this row counts exactly)
    gc.collect()
    return [timed(call, iterations) for _ in range(repeats)]


def measure(call: Callable[[], object], iterations: int, repeats: int = 3) -> tuple[float, float]:
    runs = measure_runs(call, iterations, repeats)
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


Row = tuple[str, str, Callable[[], object], int]


def rows(iterations: int) -> list[Row]:
    """(key, description, call, iterations) of every row of the table."""
    hard, easy = chat_500(QUESTION), chat_500(SUMMARY)
    big_hard, big_easy = chat_100k(last=QUESTION), chat_100k(first=SUMMARY)
    n_hard, n_easy, n_big = map(exact_prompt_tokens, (hard, easy, big_hard))
    edge = EdgeView(local_models={"qwen3:14b": 32_768})
    full = EdgeView(local_models={"qwen3:14b": n_easy + 512})  # only the exact count can tell
    cycle = itertools.cycle(dev_set())
    n = iterations
    big_n = max(2, n // 100)
    return [
        (
            "dev_set",
            "routing_dev.jsonl: its 200 requests in turn, edge",
            lambda: route(next(cycle), edge=edge),
            n,
        ),
        ("chat_500_thinking_gateway", f"{n_hard}-token chat, thinking, gateway", lambda: route(hard), n),
        # The classifier's two halves alone, for the same chat (the decision above holds both).
        ("chat_500_rules_only", f"{n_hard}-token chat: the rules' score alone", lambda: rules_score(hard), n),
        ("chat_500_ngram_only", f"{n_hard}-token chat: the n-gram model alone", lambda: MODEL.logit(hard), n),
        ("chat_500_thinking_edge", f"{n_hard}-token chat, thinking, edge", lambda: route(hard, edge=edge), n),
        (
            "chat_500_local_edge",
            f"{n_easy}-token chat, non-thinking, edge (runs locally)",
            lambda: route(easy, edge=edge),
            n,
        ),
        (
            "chat_100k_thinking_gateway",
            f"{n_big}-token chat, thinking, gateway",
            lambda: route(big_hard),
            big_n,
        ),
        (
            "chat_100k_over_context_edge",
            f"{n_big}-token chat, non-thinking, edge (over its context)",
            lambda: route(big_easy, edge=edge),
            big_n,
        ),
        (
            "chat_500_exact_count_edge",
            f"{n_easy}-token chat, edge, exactly at its context (exact count)",
            lambda: route(easy, edge=full),
            max(2, n // 10),
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20_000, help="calls per repeat (500-token rows)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print every row's repeats as JSON instead")
    args = parser.parse_args(argv)
    results: list[dict[str, Any]] = []
    for key, name, call, iterations in rows(args.iterations):
        runs = measure_runs(call, iterations, args.repeats)
        results.append(
            {
                "key": key,
                "request": name,
                "iterations": iterations,
                "median_us": [r[0] for r in runs],
                "p99_us": [r[1] for r in runs],
            }
        )
    if args.json:
        print(json.dumps(results))
        return
    print("| request | median (us) | p99 (us) |")
    print("|---|---:|---:|")
    for row in results:
        median, p99 = statistics.median(row["median_us"]), statistics.median(row["p99_us"])
        print(f"| {row['request']} | {median:,.1f} | {p99:,.1f} |")


if __name__ == "__main__":
    main()
