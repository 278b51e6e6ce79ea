"""Prompt tokens: the cheap estimate, the exact count, and when each is used."""

from __future__ import annotations

import statistics
from typing import Any

from tandem.chat import ChatRequest, Message, Tool, ToolCall
from tandem.routing.estimate import NEAR, estimate_text, exact_prompt_tokens, prompt_tokens
from tandem.routing.template import render
from tandem.routing.tokens import count_text
from tests.routing.conftest import Chat, dev_request

PROSE = "The spindle drive tripped twice during the night shift, both times near the end of a cycle. "


def test_the_estimate_is_close_to_exact_on_every_dev_prompt(dev_set: list[dict[str, Any]]) -> None:
    """Within the exact-count band (25%) for real prompts; within a few tokens for tiny ones."""
    pairs = [(prompt_tokens(r), exact_prompt_tokens(r)) for r in map(dev_request, dev_set)]
    errors = [est / exact - 1 for est, exact in pairs]
    print(
        f"\nestimate vs exact on {len(errors)} dev prompts: mean {statistics.mean(errors):+.1%}, "
        f"min {min(errors):+.1%}, max {max(errors):+.1%}"
    )
    assert all(abs(est / exact - 1) < NEAR for est, exact in pairs if exact >= 200)
    assert all(abs(est - exact) <= 25 for est, exact in pairs if exact < 200)


def test_the_estimate_errs_high_on_average(dev_set: list[dict[str, Any]]) -> None:
    errors = [prompt_tokens(dev_request(r)) / exact_prompt_tokens(dev_request(r)) - 1 for r in dev_set]
    assert 0 < statistics.mean(errors) < 0.1


def test_near_the_limit_the_count_is_exact(chat: Chat) -> None:
    req = chat(PROSE * 40)
    exact = exact_prompt_tokens(req)
    assert prompt_tokens(req) != exact  # the estimate alone is off...
    assert prompt_tokens(req, limit=exact) == exact  # ...so near a limit it counts
    assert prompt_tokens(req, limit=int(exact * 1.2)) == exact


def test_far_from_the_limit_the_estimate_is_used(chat: Chat) -> None:
    req = chat(PROSE * 40)
    assert prompt_tokens(req, limit=exact_prompt_tokens(req) * 10) == prompt_tokens(req)
    assert prompt_tokens(req, limit=10) == prompt_tokens(req)


def test_exact_counting_follows_the_qwen_template(chat: Chat) -> None:
    # <|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n
    req = chat("hello")
    runs, specials = render(req)
    assert (runs, specials) == (["user\nhello", "\n", "assistant\n", "\n\n", "\n\n"], 5)
    assert exact_prompt_tokens(req) == 5 + count_text("user\nhello") + 1 + 2 + 1 + 1


def test_tools_are_counted_in_the_system_turn(chat: Chat) -> None:
    tool = Tool(name="get_stock", description="Stock level of a part", parameters={"type": "object"})
    bare, with_tool = (
        chat(("system", "Be brief."), "Stock of P-1?"),
        chat(("system", "Be brief."), "Stock of P-1?", tools=[tool]),
    )
    runs, _ = render(with_tool)
    assert runs[0].startswith("system\nBe brief.\n\n# Tools") and '"name": "get_stock"' in runs[0]
    assert exact_prompt_tokens(with_tool) > exact_prompt_tokens(bare) + 50
    assert prompt_tokens(with_tool) > prompt_tokens(bare) + 50


def test_tool_calls_and_results_are_counted() -> None:
    call = ToolCall(id="c1", name="get_stock", arguments='{"part": "P-1"}')
    req = ChatRequest(
        model="qwen3",
        messages=[
            Message("user", "Stock of P-1?"),
            Message("assistant", "", tool_calls=[call]),
            Message("tool", '{"qty": 12}', tool_call_id="c1"),
            Message("tool", '{"qty": 3}', tool_call_id="c2"),
        ],
    )
    runs, _ = render(req)
    text = "".join(runs)
    assert '{"name": "get_stock", "arguments": {"part": "P-1"}}' in text
    assert text.count("user\n") == 2  # both results share one user turn
    question_only = ChatRequest(model="qwen3", messages=req.messages[:1])
    assert exact_prompt_tokens(req) > exact_prompt_tokens(question_only)


def test_past_reasoning_is_dropped_but_the_current_turns_is_kept() -> None:
    old = Message("assistant", "4", reasoning="2 + 2 is 4")
    req = ChatRequest(model="qwen3", messages=[Message("user", "2+2?"), old, Message("user", "and 3+3?")])
    assert "2 + 2 is 4" not in "".join(render(req)[0])
    loop = ChatRequest(model="qwen3", messages=[Message("user", "2+2?"), old])
    assert "2 + 2 is 4" in "".join(render(loop)[0])


def test_chinese_and_digits_are_estimated_per_character() -> None:
    assert estimate_text("") == 0
    zh = "设备运行中禁止打开防护门，请在停机后检查。" * 20
    assert abs(estimate_text(zh) / count_text(zh) - 1) < NEAR
    digits = "3.14159 2.71828 1.41421 " * 20
    assert abs(estimate_text(digits) / count_text(digits) - 1) < NEAR


def test_a_100k_token_prompt_is_estimated_within_bounds(chat: Chat) -> None:
    req = chat(("system", "You are a maintenance assistant."), PROSE * 5000)
    exact = exact_prompt_tokens(req)
    assert exact > 90_000
    assert abs(prompt_tokens(req) / exact - 1) < NEAR
