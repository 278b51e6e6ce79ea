"""route(): target and reason on the gateway and on an edge box."""

from __future__ import annotations

from tandem.chat import Mode, Target
from tandem.routing.decide import EdgeView, route
from tandem.routing.estimate import exact_prompt_tokens, prompt_tokens
from tests.routing.conftest import Chat

EASY = "Translate 'keep the guard closed' into Chinese."
HARD = "Prove that every finite simple graph in which each vertex has degree at least 2 contains a cycle."
EDGE = EdgeView(local_models={"qwen3:14b": 8192})


def test_the_gateway_routes_everything_to_the_cloud_with_the_mode_reason(chat: Chat) -> None:
    easy, hard = route(chat(EASY)), route(chat(HARD))
    assert (easy.target, easy.mode, easy.reason) == (Target.CLOUD, Mode.NON_THINKING, "classifier")
    assert (hard.target, hard.mode, hard.reason) == (Target.CLOUD, Mode.THINKING, "classifier")


def test_the_estimate_includes_max_tokens(chat: Chat) -> None:
    req = chat(EASY, max_tokens=500)
    assert route(req).estimated_tokens == prompt_tokens(req) + 500


def test_the_decision_carries_the_mode_confidence(chat: Chat) -> None:
    assert route(chat(EASY, mode=Mode.NON_THINKING)).confidence == 1.0
    assert 0.5 <= route(chat(EASY)).confidence <= 1.0


def test_near_the_cloud_context_the_gateway_estimate_is_exact(chat: Chat) -> None:
    req = chat("The spindle drive tripped twice during the night shift. " * 300, max_tokens=100)
    exact = exact_prompt_tokens(req)
    assert route(req, context_limit=exact + 100).estimated_tokens == exact + 100


def test_on_the_edge_simple_work_runs_locally(chat: Chat) -> None:
    decision = route(chat(EASY), edge=EDGE)
    assert (decision.target, decision.mode, decision.reason) == (Target.EDGE, Mode.NON_THINKING, "classifier")


def test_on_the_edge_thinking_goes_to_the_cloud_with_its_reason(chat: Chat) -> None:
    assert route(chat(HARD), edge=EDGE).reason == "classifier"
    assert route(chat(f"{EASY} /think"), edge=EDGE).reason == "soft_switch"
    explicit = route(chat(EASY, mode=Mode.THINKING, mode_source="think"), edge=EDGE)
    assert (explicit.target, explicit.mode, explicit.reason) == (Target.CLOUD, Mode.THINKING, "explicit")


def test_on_the_edge_an_unknown_model_goes_to_the_cloud(chat: Chat) -> None:
    decision = route(chat(EASY, model="qwen3:32b"), edge=EDGE)
    assert (decision.target, decision.reason) == (Target.CLOUD, "model_unavailable")


def test_on_the_edge_ollama_latest_tags_name_the_same_model(chat: Chat) -> None:
    edge = EdgeView(local_models={"qwen3:latest": 8192, "llama3": 8192})
    assert route(chat(EASY, model="qwen3"), edge=edge).target is Target.EDGE
    assert route(chat(EASY, model="llama3:latest"), edge=edge).target is Target.EDGE
    assert route(chat(EASY, model="qwen3:8b"), edge=edge).reason == "model_unavailable"


def test_on_the_edge_a_prompt_over_the_local_context_goes_to_the_cloud(chat: Chat) -> None:
    req = chat("Rewrite this politely. " + "Send the report now. " * 2000)
    decision = route(req, edge=EDGE)
    assert (decision.target, decision.reason) == (Target.CLOUD, "context_length")


def test_on_the_edge_max_tokens_counts_against_the_local_context(chat: Chat) -> None:
    assert route(chat(EASY, max_tokens=8000), edge=EDGE).target is Target.EDGE
    assert route(chat(EASY, max_tokens=8192), edge=EDGE).reason == "context_length"


def test_on_the_edge_a_prompt_that_exactly_fits_stays_local(chat: Chat) -> None:
    # The cheap estimate errs high; near the limit the exact count decides.
    delay = "The supplier has told us that the shipment of raw materials will be delayed. "
    req = chat("Rewrite this politely: " + delay * 40, max_tokens=64)
    exact = exact_prompt_tokens(req)
    assert prompt_tokens(req) > exact
    edge = EdgeView(local_models={"qwen3:14b": exact + 64})
    decision = route(req, edge=edge)
    assert (decision.target, decision.estimated_tokens) == (Target.EDGE, exact + 64)
    assert route(req, edge=EdgeView(local_models={"qwen3:14b": exact + 63})).reason == "context_length"


def test_on_the_edge_a_saturated_engine_spills_over_to_the_cloud(chat: Chat) -> None:
    edge = EdgeView(local_models={"qwen3:14b": 8192}, saturated=True)
    decision = route(chat(EASY), edge=edge)
    assert (decision.target, decision.mode, decision.reason) == (Target.CLOUD, Mode.NON_THINKING, "saturated")


def test_on_the_edge_reasons_are_checked_in_order(chat: Chat) -> None:
    saturated = EdgeView(local_models={"qwen3:14b": 16}, saturated=True)
    assert route(chat(EASY, model="other"), edge=saturated).reason == "model_unavailable"
    assert route(chat(EASY), edge=saturated).reason == "context_length"
    assert route(chat(HARD), edge=saturated).reason == "classifier"


def test_the_header_renders_target_mode_and_reason(chat: Chat) -> None:
    assert route(chat(EASY), edge=EDGE).header() == "target=edge; mode=non_thinking; reason=classifier"
