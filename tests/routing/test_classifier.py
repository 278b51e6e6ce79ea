"""The auto classifier: task and question shape decide, not keywords alone."""

from __future__ import annotations

import pytest

from tandem.chat import Mode, ResponseFormat, Tool
from tandem.routing.classifier import classify
from tandem.routing.rules import WEIGHTS, score
from tandem.routing.signals import extract, measure
from tests.routing.conftest import Chat

CODE = "```python\ndef mean(xs):\n    return sum(xs) / len(xs) - 1\n```"


@pytest.mark.parametrize(
    "text",
    [
        "Jane has 3 times as many bolts as Tom; together they have 48. Tom gives Jane 6. How many has each?",
        "Prove that the product of two odd integers is odd.",
        "Write a Python function that merges overlapping intervals and handles empty input.",
        "Our API latency doubled after Tuesday's deploy, but only for requests with large payloads. Why?",
        "Plan a 4-week rollout for 30 sites: at most 5 sites a week, the pilot first, none in week 2.",
        "两台设备，甲每小时生产120件，乙每小时生产80件，甲先开工2小时后乙再开工，还要多久两台一共生产1000件？",
    ],
)
def test_multi_step_requests_are_thinking(chat: Chat, text: str) -> None:
    assert classify(chat(text)).mode is Mode.THINKING


@pytest.mark.parametrize(
    "text",
    [
        "What does PLC stand for?",
        "Translate into German: 'Keep the guard closed while the spindle turns.'",
        "Thanks, that fixed it!",
        "Write a short, friendly reply telling the customer their order ships tomorrow.",
        "把这句话翻译成英文：设备运行中禁止打开防护门。",
        "Positive or negative? 'The drill died after a week.'",
    ],
)
def test_simple_requests_are_non_thinking(chat: Chat, text: str) -> None:
    assert classify(chat(text)).mode is Mode.NON_THINKING


def test_asking_to_think_step_by_step_does_not_make_a_trivial_task_thinking(chat: Chat) -> None:
    verdict = classify(chat("Think carefully, step by step, and reason it through: what is 6 times 7?"))
    assert verdict.mode is Mode.NON_THINKING
    assert "meta" in verdict.signals


def test_an_opening_transform_verb_beats_the_material_it_works_on(chat: Chat) -> None:
    text = f"Translate the comments in this code into English; don't change the code.\n\n{CODE}"
    assert classify(chat(text)).mode is Mode.NON_THINKING


def test_pasted_code_with_a_symptom_is_thinking(chat: Chat) -> None:
    text = f"This returns the wrong average for [2, 4]: it gives 2 instead of 3.\n\n{CODE}"
    assert classify(chat(text)).mode is Mode.THINKING


def test_a_quoted_document_is_material_not_instruction(chat: Chat) -> None:
    quote = '"Why did the pump fail? Root cause analysis showed the bearing was misaligned by 0.4 mm."'
    assert classify(chat(f"Summarize in five words: {quote}")).mode is Mode.NON_THINKING


def test_a_trailing_question_on_a_long_document_is_analysis(chat: Chat) -> None:
    clause = "The Supplier shall deliver within 30 days; late delivery costs 0.5% per week, capped at 10%. "
    question = "They delivered 9 weeks late on a $80k order. Who is right about the cap?"
    text = f"Our contract:\n\n{clause * 12}\n\n{question}"
    assert classify(chat(text)).mode is Mode.THINKING


def test_only_the_latest_user_turn_is_judged(chat: Chat) -> None:
    req = chat(
        "Why does my gearbox overheat at 92 °C when its twin runs at 70 °C with the same load?",
        ("assistant", "The oil level is 15 mm over the mark: drain to the mark."),
        "Done, it's at 71 °C now. Thanks a lot, have a great weekend!",
    )
    assert classify(req).mode is Mode.NON_THINKING


def test_the_system_prompt_is_not_the_task(chat: Chat) -> None:
    policy = "Why-questions about root causes and proofs of every theorem are welcome here. " * 10
    req = chat(("system", policy), "What time do you open on Saturdays?")
    assert classify(req).mode is Mode.NON_THINKING


def test_a_json_response_format_leans_non_thinking(chat: Chat) -> None:
    text = "Name, quantity and due date from: 250 pcs of P/N 88-1042 due March 14."
    plain = score(chat(text))
    structured = score(chat(text, response_format=ResponseFormat(type="json_schema", schema={})))
    assert structured < plain


def test_tools_lean_thinking(chat: Chat) -> None:
    text = "Book me a meeting room for Thursday."
    assert score(chat(text, tools=[Tool(name="book_room")])) > score(chat(text))


def test_confidence_grows_with_the_distance_from_the_boundary(chat: Chat) -> None:
    clear = classify(chat("Prove that sqrt(2) is irrational, by contradiction, step by step."))
    assert clear.confidence > 0.9
    assert all(0.5 <= classify(chat(t)).confidence <= 1.0 for t in ("hi", "why?", ""))


def test_every_measured_signal_has_a_weight_and_a_reason(chat: Chat) -> None:
    texts = ["Prove it. Why? How many? Translate, summarize, plan, estimate: 1 2 3 4 5 6 7 8 9?"]
    for text in texts:
        for name in measure(chat(text, tools=[Tool(name="t")])):
            assert WEIGHTS[name].why


def test_a_huge_prompt_is_judged_by_its_instruction(chat: Chat) -> None:
    report = "Line 3 ran normally today and produced 4,120 parts with no stops. " * 6000  # ~100k tokens
    assert classify(chat(f"Summarize this shift log in one line.\n\n{report}")).mode is Mode.NON_THINKING
    question = "\n\nWhy did the output of line 3 drop by half on the days the chiller tripped?"
    assert classify(chat(f"Shift logs below.\n\n{report}{question}")).mode is Mode.THINKING


def test_an_empty_request_is_non_thinking(chat: Chat) -> None:
    assert classify(chat()).mode is Mode.NON_THINKING


def test_an_instruction_after_a_greeting_is_still_the_instruction(chat: Chat) -> None:
    report = "Why did line 3 stop? Root cause: the chiller tripped, so the spindle overheated. " * 40
    text = f"Hi team,\n\nPlease translate the incident report below into Chinese.\n\n{report}"
    assert classify(chat(text)).mode is Mode.NON_THINKING


def test_a_cue_inside_another_word_is_not_an_opening_instruction(chat: Chat) -> None:
    text = "On stage 2 the advantage of the new fixture was clear in every one of the shifts we ran. "
    text += "We measured it twice. Please tag it."
    f = extract(chat(text))
    assert f.n("label") == 1 and "label" not in f.lead
