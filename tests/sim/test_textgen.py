"""Generated text is deterministic, cheap to slice, and valid where it must be (JSON, tools)."""

from __future__ import annotations

import json

import orjson

from simulators.textgen import TextGenerator, choose_tool, example_value, split_tokens, tool_arguments
from tests.sim.conftest import TOOLS


def test_the_same_seed_and_prompt_give_the_same_pieces() -> None:
    key = TextGenerator.key("hello")

    assert TextGenerator(1).content(key, 50).texts == TextGenerator(1).content(key, 50).texts


def test_another_seed_gives_other_pieces() -> None:
    key = TextGenerator.key("hello")

    assert TextGenerator(1).content(key, 50).texts != TextGenerator(2).content(key, 50).texts


def test_a_request_seed_changes_the_pieces() -> None:
    gen = TextGenerator(1)

    assert gen.content(gen.key("hello"), 20).texts != gen.content(gen.key("hello", 42), 20).texts


def test_pieces_carry_their_json_encoding() -> None:
    pieces = TextGenerator(0).content(TextGenerator.key("x"), 30)

    assert [orjson.loads(j) for j in pieces.json] == pieces.texts


def test_an_answer_starts_with_a_capitalized_word() -> None:
    text = TextGenerator(0).content(TextGenerator.key("x"), 10).text()

    assert text[0].isupper()


def test_more_pieces_than_the_tape_holds_wrap_around() -> None:
    pieces = TextGenerator(0).content(8000, 20000)

    assert len(pieces) == 20000 == len(pieces.json)


def test_json_content_is_a_json_object_split_into_pieces() -> None:
    pieces = TextGenerator(0).json_content(TextGenerator.key("x"), 12)

    assert isinstance(json.loads(pieces.text()), dict)
    assert len(pieces) > 5


def test_json_content_follows_a_schema() -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "tags": {"type": "array", "items": {"type": "integer"}}},
    }

    assert json.loads(TextGenerator(0).json_content(1, 8, schema).text()) == {"ok": True, "tags": [1]}


def test_example_values_satisfy_enums_and_types() -> None:
    assert example_value({"enum": ["b", "c"]}) == "b"
    assert example_value({"type": ["null", "integer"]}) == 1
    assert example_value({"anyOf": [{"type": "number"}]}) == 1.5


def test_split_tokens_keeps_all_the_text() -> None:
    text = '{"answer": "Routes, 42 tokens."}'

    assert "".join(split_tokens(text)) == text


def test_a_tool_is_called_when_the_user_names_it() -> None:
    messages = [{"role": "user", "content": "please use get_weather"}]

    assert choose_tool(messages, TOOLS) == TOOLS[0]["function"]


def test_no_tool_is_called_when_not_asked_or_after_a_tool_result() -> None:
    assert choose_tool([{"role": "user", "content": "hi"}], TOOLS) is None
    assert choose_tool([{"role": "tool", "content": "get_weather: sunny"}], TOOLS) is None
    assert choose_tool([{"role": "user", "content": "get_weather"}], TOOLS, "none") is None


def test_tool_choice_required_forces_a_call() -> None:
    assert choose_tool([{"role": "user", "content": "hi"}], TOOLS, "required") == TOOLS[0]["function"]


def test_tool_arguments_fill_the_required_parameters() -> None:
    assert tool_arguments(TOOLS[0]["function"]) == {"city": "example"}
