"""OpenAI's legacy text completions (`tandem/wire/completions.py`): a body in, the generate it
stands for, and `text_completion` objects out."""

from __future__ import annotations

import orjson
import pytest

from tandem.chat import ChatResult, Chunk, Mode, RouteDecision, Target, Usage
from tandem.errors import BadRequest
from tandem.wire import completions


def test_a_completion_is_a_one_turn_generate() -> None:
    gen = completions.parse_completion(
        orjson.dumps(
            {
                "model": "m",
                "prompt": "Once",
                "suffix": "end",
                "max_tokens": 5,
                "stop": "\n",
                "temperature": 0.2,
                "seed": 3,
                "stream": True,
                "stream_options": {"include_usage": True},
                "echo": False,
            }
        ),
        mode_header="thinking",
    )
    req = gen.chat
    assert (gen.prompt, gen.suffix) == ("Once", "end")
    assert [(m.role, m.content) for m in req.messages] == [("user", "Once")]
    assert (req.max_tokens, req.stop, req.sampling.temperature, req.sampling.seed) == (5, ["\n"], 0.2, 3)
    assert req.stream and req.include_usage and req.mode is Mode.THINKING


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "m", "prompt": ["a"]}', "prompt"),
        (b'{"model": "m"}', "prompt"),
        (b'{"model": "m", "prompt": ""}', "prompt"),
        (b'{"model": "m", "prompt": "x", "top_p": 0}', "top_p"),
        (b'{"prompt": "x"}', "model"),
    ],
)
def test_bad_completions_name_the_field(body: bytes, param: str) -> None:
    with pytest.raises(BadRequest) as refused:
        completions.parse_completion(body)
    assert refused.value.param == param


def test_stream_events_carry_text_only_then_the_finish_and_the_usage() -> None:
    enc = completions.CompletionEncoder("cmpl-1", "m", 7)
    out = enc.batch(
        [Chunk(reasoning="hmm"), Chunk(content="Hi"), Chunk(finish_reason="length", usage=Usage(3, 2))],
        include_usage=True,
    )
    events = [orjson.loads(e[len(b"data: ") :]) for e in out.split(b"\n\n") if e]
    assert [e["choices"] for e in events] == [
        [{"text": "Hi", "index": 0, "logprobs": None, "finish_reason": None}],
        [{"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}],
        [],
    ]
    assert events[-1]["usage"]["total_tokens"] == 5
    assert {e["object"] for e in events} == {"text_completion"}


def test_a_whole_completion() -> None:
    result = ChatResult(
        id="x",
        model="m",
        content="Hi",
        reasoning="hmm",
        tool_calls=[],
        finish_reason="stop",
        usage=Usage(3, 2),
        created=7,
        route=RouteDecision(
            target=Target.EDGE, mode=Mode.NON_THINKING, reason="explicit", estimated_tokens=3
        ),
    )
    body = orjson.loads(completions.CompletionEncoder("cmpl-1", "m", 7).whole(result))
    assert body["choices"] == [{"text": "Hi", "index": 0, "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
