"""Qwen3 soft switches: /think and /no_think, standalone, latest wins."""

from __future__ import annotations

from tandem.chat import Message, Mode
from tandem.routing.soft_switch import soft_switch


def test_think_in_the_user_message_asks_for_thinking() -> None:
    assert soft_switch([Message("user", "How many r's in strawberry? /think")]) is Mode.THINKING


def test_no_think_in_the_user_message_asks_for_non_thinking() -> None:
    assert soft_switch([Message("user", "/no_think Prove Fermat's last theorem.")]) is Mode.NON_THINKING


def test_no_switch_gives_none() -> None:
    assert soft_switch([Message("user", "What is 2 + 2?")]) is None


def test_a_switch_in_the_system_message_counts() -> None:
    messages = [Message("system", "You are terse. /no_think"), Message("user", "Why is the sky blue?")]
    assert soft_switch(messages) is Mode.NON_THINKING


def test_the_latest_message_with_a_switch_wins_across_turns() -> None:
    messages = [
        Message("user", "Solve this /think"),
        Message("assistant", "Done."),
        Message("user", "Now just say thanks /no_think"),
        Message("assistant", "Thanks!"),
        Message("user", "And one more question"),
    ]
    assert soft_switch(messages) is Mode.NON_THINKING


def test_a_later_user_switch_beats_an_earlier_system_switch() -> None:
    messages = [Message("system", "Always /no_think"), Message("user", "This one needs care /think")]
    assert soft_switch(messages) is Mode.THINKING


def test_within_one_message_the_last_switch_wins() -> None:
    assert soft_switch([Message("user", "/think ... actually no, /no_think")]) is Mode.NON_THINKING


def test_assistant_messages_are_not_switches() -> None:
    messages = [Message("user", "hello"), Message("assistant", "Type /think to make me reason.")]
    assert soft_switch(messages) is None


def test_a_longer_word_is_not_a_switch() -> None:
    assert soft_switch([Message("user", "Use /thinking or /no_thinking flags in the CLI.")]) is None


def test_a_path_or_url_segment_is_not_a_switch() -> None:
    text = "See a/think/b, docs/no_think and https://example.com/think for details; also /think/x."
    assert soft_switch([Message("user", text)]) is None


def test_a_switch_followed_by_punctuation_counts() -> None:
    assert soft_switch([Message("user", "Answer quickly (/no_think).")]) is Mode.NON_THINKING


def test_a_switch_right_after_chinese_text_counts() -> None:
    assert soft_switch([Message("user", "证明根号2是无理数/think")]) is Mode.THINKING


def test_a_switch_hidden_as_a_path_does_not_hide_a_real_one_before_it() -> None:
    assert soft_switch([Message("user", "/think then read notes/think")]) is Mode.THINKING
