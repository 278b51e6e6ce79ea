"""Prompts are rendered with Qwen's chat template before they are counted."""

from __future__ import annotations

from simulators.prompt import message_text, render_chatml, soft_switch


def test_a_chat_renders_as_chatml_ending_with_the_assistant_turn() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]

    assert render_chatml(messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_thinking_off_adds_the_empty_think_block() -> None:
    assert render_chatml([{"role": "user", "content": "Hi"}], thinking=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_tools_are_rendered_into_the_system_turn() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]

    rendered = render_chatml([{"role": "user", "content": "Hi"}], tools=tools)

    assert rendered.startswith("<|im_start|>system\n# Tools")
    assert '{"type":"function","function":{"name":"f"}}' in rendered


def test_tool_results_are_user_turns_with_tool_response_tags() -> None:
    rendered = render_chatml([{"role": "tool", "content": "sunny"}])

    assert "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>" in rendered


def test_text_parts_are_joined() -> None:
    parts = [
        {"type": "text", "text": "a"},
        {"type": "image_url", "image_url": {}},
        {"type": "text", "text": "b"},
    ]

    assert message_text(parts) == "ab"


def test_the_latest_soft_switch_wins() -> None:
    messages = [
        {"role": "user", "content": "think hard /think"},
        {"role": "assistant", "content": "ok /no_think"},
        {"role": "user", "content": "now quickly /no_think"},
    ]

    assert soft_switch(messages) is False
    assert soft_switch(messages[:1]) is True
    assert soft_switch([{"role": "user", "content": "plain"}]) is None
