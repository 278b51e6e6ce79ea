"""The rules: named signals with weights, summed to a score (positive: thinking).

Each signal (measured in `tandem.routing.signals`) has a weight and a one-line reason. The
score is `BIAS` plus the weighted strengths. Signals judge the *task* (transform, label,
compose vs. debug, prove, plan, estimate) and the *shape* of the question (how many quantities
and constraints, why vs. what), not its topic. `tandem.routing.classifier` blends this score
with the n-gram model's.
"""

from __future__ import annotations

from dataclasses import dataclass

from tandem.chat import ChatRequest
from tandem.routing.signals import measure

BIAS = -1.5  # most traffic is lookups, rewrites and chat: without evidence, answer fast


@dataclass(frozen=True, slots=True)
class Weight:
    weight: float
    why: str


# fmt: off
WEIGHTS: dict[str, Weight] = {
    # Shallow tasks: the answer is a transformation or a recall, not a derivation.
    "transform":    Weight(-2.5, "translate/summarize/rewrite/extract/format work on given text"),
    "shallow_lead": Weight(-2.0, "a message that opens with a transform/label/compose verb is that task"),
    "compose":      Weight(-1.5, "short copy (a reply, a description, a slogan) is fluent writing"),
    "label":        Weight(-2.0, "putting a label on items is a judgement per item, not a chain"),
    "lookup":       Weight(-1.0, "a short what-is question is recalled, not derived"),
    "social":       Weight(-1.0, "greetings and thanks need no reasoning"),
    "shallow":      Weight(-1.0, "the caller narrows the task: 'just', 'no need to', 'nothing else'"),
    "json_output":  Weight(-1.0, "a JSON response format is usually extraction"),
    # Multi-step tasks.
    "code":         Weight(2.5, "code to write (a function, a script, a query) has design and edge cases"),
    "code_block":   Weight(2.0, "code pasted without a transform verb is code to debug or review"),
    "symptom":      Weight(0.5, "something misbehaves: a diagnosis lies ahead"),
    "cause":        Weight(2.0, "a why-question asks for causal reasoning"),
    "proof":        Weight(3.0, "a proof or a derivation is reasoning by definition"),
    "analyze":      Weight(1.0, "an imperative to analyse given material"),
    "compare":      Weight(1.0, "choosing between options weighs trade-offs"),
    "plan":         Weight(1.0, "planning or optimizing under constraints"),
    "deduce":       Weight(1.5, "working out which or how is a determination, not a recall"),
    "puzzle":       Weight(2.0, "clues, liars and riddles are logic puzzles"),
    "quantity_q":   Weight(1.0, "asks for a number to be worked out"),
    "estimate":     Weight(1.5, "estimation and probability need a model of the situation"),
    "relation":     Weight(0.75, "quantities defined relative to each other are solved for"),
    "constraint":   Weight(0.4, "each constraint is one more condition to satisfy"),
    "quantities":   Weight(0.3, "each quantity beyond two is one more step (one or two: a lookup or a sum)"),
    "word_problem": Weight(1.0, "several quantities and a quantity question: arithmetic in steps"),
    "questions":    Weight(0.5, "a multi-part question"),
    "long":         Weight(1.0, "a long document or data set to reason over"),
    "question_on_material": Weight(1.0, "a question about pasted material asks for analysis of it"),
    "tools":        Weight(0.5, "choosing tools and their arguments is planning"),
    "meta":         Weight(0.0, "'think step by step' is about manner; the task decides"),
}
# fmt: on


def weigh(fired: dict[str, float]) -> float:
    """The score of the signals that fired (positive: thinking)."""
    return BIAS + sum(WEIGHTS[name].weight * strength for name, strength in fired.items())


def score(req: ChatRequest) -> float:
    """The rules' score for `req` (positive: thinking), for training, tuning and tests."""
    return weigh(measure(req))
