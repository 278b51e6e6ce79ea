"""The Ollama wire format (`tandem/wire/ollama.py`): requests in, NDJSON out, bodies toward a
real Ollama, its stream lines read back, and errors."""

from __future__ import annotations

import orjson
import pytest

from tandem.chat import ChatResult, Chunk, Mode, RouteDecision, Target, ToolCall, Usage
from tandem.errors import BadRequest, ModelNotFound, PayloadTooLarge, UpstreamUnavailable
from tandem.wire import ollama as wire

SETTINGS = wire.EngineSettings(keep_alive="30m", num_ctx=8192, sampling_defaults={"temperature": 0.7})


def chat_body(**fields: object) -> bytes:
    return orjson.dumps({"model": "qwen3:14b", "messages": [{"role": "user", "content": "hi"}], **fields})


@pytest.mark.parametrize(
    ("think", "mode"),
    [(True, Mode.THINKING), ("high", Mode.THINKING), (False, Mode.NON_THINKING), (None, Mode.AUTO)],
)
def test_think_sets_the_mode_explicitly(think: object, mode: Mode) -> None:
    req = wire.parse_chat(chat_body(think=think) if think is not None else chat_body())
    assert req.mode is mode and req.mode_source == ("think" if think is not None else "")


def test_ollama_streams_unless_told_not_to() -> None:
    assert wire.parse_chat(chat_body()).stream is True
    assert wire.parse_chat(chat_body(stream=False)).stream is False


def test_options_map_to_sampling_and_limits() -> None:
    req = wire.parse_chat(
        chat_body(
            options={
                "temperature": 0.2,
                "repeat_penalty": 1.1,
                "num_predict": 64,
                "stop": ["END"],
                "num_gpu": 1,
            }
        )
    )
    assert req.sampling.temperature == 0.2 and req.sampling.repetition_penalty == 1.1
    assert req.max_tokens == 64 and req.stop == ["END"]


def test_unbounded_num_predict_means_no_limit() -> None:
    assert wire.parse_chat(chat_body(options={"num_predict": -1})).max_tokens is None


def test_tool_call_arguments_become_json_text() -> None:
    body = orjson.dumps(
        {
            "model": "m",
            "messages": [
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}],
                },
                {"role": "tool", "content": "42", "tool_name": "f"},
            ],
        }
    )
    req = wire.parse_chat(body)
    assert req.messages[0].tool_calls[0].arguments == '{"a":1}' and req.messages[1].name == "f"


def test_generate_is_a_system_and_user_chat() -> None:
    gen = wire.parse_generate(orjson.dumps({"model": "m", "prompt": "p", "system": "s", "suffix": "x"}))
    assert [(m.role, m.content) for m in gen.chat.messages] == [("system", "s"), ("user", "p")]
    assert gen.suffix == "x"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "missing request body"),
        (b"{", "not valid JSON"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model is required"),
        (b'{"model": "m"}', "messages is required"),
        (b'{"model": "m", "messages": [{"role": "robot"}]}', "messages.0.role"),
        (b'{"model": "m", "messages": [{"role": "user"}], "think": "max"}', "think"),
    ],
)
def test_bad_requests_name_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        wire.parse_chat(body)


def test_oversized_body_is_refused() -> None:
    with pytest.raises(PayloadTooLarge):
        wire.parse_chat(chat_body(), max_bytes=10)


def test_engine_body_switches_thinking_and_keeps_the_model_loaded() -> None:
    req = wire.parse_chat(chat_body(think=False))
    body = wire.engine_chat_body(req, model="qwen3:14b", thinking=False, settings=SETTINGS)
    assert body["think"] is False and body["stream"] is True and body["keep_alive"] == "30m"
    assert body["options"] == {"num_ctx": 8192, "temperature": 0.7}


def test_engine_body_keeps_the_callers_sampling() -> None:
    req = wire.parse_chat(chat_body(options={"top_p": 0.5}))
    body = wire.engine_chat_body(req, model="m", thinking=False, settings=SETTINGS)
    assert body["options"] == {"num_ctx": 8192, "top_p": 0.5}


def test_engine_lines_become_chunks() -> None:
    thinking = wire.engine_chunk(
        {"message": {"role": "assistant", "content": "", "thinking": "hm"}, "done": False}
    )
    final = wire.engine_chunk(
        {"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "length",
         "prompt_eval_count": 9, "eval_count": 4}
    )  # fmt: skip
    assert thinking.reasoning == "hm" and thinking.finish_reason is None
    assert final.finish_reason == "length" and final.usage == Usage(prompt_tokens=9, completion_tokens=4)


def test_an_engine_error_line_is_raised() -> None:
    with pytest.raises(wire.EngineError, match="terminated"):
        wire.engine_chunk({"error": "llama runner process has terminated"})


def test_stream_lines_keep_thinking_and_content_apart() -> None:
    enc = wire.NdjsonEncoder("qwen3:14b", chat=True)
    line = orjson.loads(enc.chunk(Chunk(reasoning="let me")))
    assert (
        line["message"] == {"role": "assistant", "content": "", "thinking": "let me"}
        and line["done"] is False
    )
    assert enc.chunk(Chunk()) == b""


def test_final_line_has_counts_durations_and_route() -> None:
    enc = wire.NdjsonEncoder("m", chat=False)
    enc.chunk(Chunk(content="a"))
    final = orjson.loads(
        enc.final("stop", Usage(prompt_tokens=3, completion_tokens=5), "target=edge; mode=x")
    )
    assert final["done"] is True and final["done_reason"] == "stop" and final["response"] == ""
    assert final["prompt_eval_count"] == 3 and final["eval_count"] == 5
    assert final["total_duration"] >= final["eval_duration"] >= 0
    assert final[wire.ROUTE_FIELD] == "target=edge; mode=x"


def test_whole_answer_renders_tool_calls_as_objects() -> None:
    decision = RouteDecision(
        mode=Mode.NON_THINKING, target=Target.EDGE, reason="classifier", estimated_tokens=1
    )
    call = ToolCall(id="c", name="f", arguments='{"a":1}')
    result = ChatResult(
        id="x", model="m", content="", reasoning="", tool_calls=[call],
        finish_reason="tool_calls", usage=Usage(), created=0, route=decision,
    )  # fmt: skip
    body = orjson.loads(wire.NdjsonEncoder("m", chat=True).whole(result))
    assert body["message"]["tool_calls"][0]["function"]["arguments"] == {"a": 1}
    assert body["done_reason"] == "stop"


def test_errors_use_ollama_statuses_and_words() -> None:
    assert wire.error_response(ModelNotFound("m"))[:2] == (404, b'{"error":"model \'m\' not found"}')
    status, _, headers = wire.error_response(UpstreamUnavailable("down", retry_after=3))
    assert status == 503 and headers == {"Retry-After": "3"}
    assert wire.error_line(BadRequest("bad")) == b'{"error":"bad"}\n'


@pytest.mark.parametrize(
    ("body", "unload"),
    [
        (b'{"model": "m"}', False),
        (b'{"model": "m", "messages": [], "keep_alive": "5m"}', False),
        (b'{"model": "m", "keep_alive": 0}', True),
        (b'{"model": "m", "keep_alive": "0s"}', True),
        (b'{"model": "m", "keep_alive": -1}', False),
    ],
)
def test_a_chat_without_messages_is_a_load_or_an_unload(body: bytes, unload: bool) -> None:
    assert wire.parse_chat_call(body) == wire.Residency(model="m", unload=unload)


def test_a_generate_with_an_empty_prompt_is_a_load_even_with_images() -> None:
    # Ollama looks only at the prompt (server/routes.go GenerateHandler).
    call = wire.parse_generate_call(b'{"model": "m", "prompt": "", "images": ["aGk="], "keep_alive": "0m"}')
    assert call == wire.Residency(model="m", unload=True)
    assert isinstance(wire.parse_generate_call(b'{"model": "m", "prompt": "p"}'), wire.GenerateRequest)


def test_a_load_with_a_bad_keep_alive_names_it() -> None:
    with pytest.raises(BadRequest, match="keep_alive") as refused:
        wire.parse_chat_call(b'{"model": "m", "keep_alive": "soon"}')
    assert refused.value.param == "keep_alive"


def test_the_answer_to_a_load_is_ollamas_object() -> None:
    chat = orjson.loads(wire.residency_answer("m", chat=True, unload=False))
    generate = orjson.loads(wire.residency_answer("m", chat=False, unload=True))
    assert chat["message"] == {"role": "assistant", "content": ""} and chat["done_reason"] == "load"
    assert (generate["response"], generate["done"], generate["done_reason"]) == ("", True, "unload")
