"""Logging: JSON lines, request ids on every line, secrets redacted."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from tandem import logs


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.configure(fmt="json", level="INFO", stream=stream)
    yield stream
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_lines_are_json_with_level_and_timestamp(captured: io.StringIO) -> None:
    logs.get_logger("t").info("hello", n=1)
    (line,) = lines(captured)
    assert line["event"] == "hello" and line["level"] == "info" and "timestamp" in line


def test_request_id_is_on_every_line_of_a_request(captured: io.StringIO) -> None:
    logs.bind_request("req-42")
    log = logs.get_logger("t")
    log.info("a")
    log.warning("b")
    logging.getLogger("some.library").warning("c")
    assert [line.get("request_id") for line in lines(captured)] == ["req-42"] * 3


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("api_key", "tdm-abcdefgh12345678"),
        ("password", "hunter2"),
        ("authorization", "Bearer abc.def.ghi"),
        ("headers", {"Authorization": "Bearer xyz123456"}),
    ],
)
def test_secret_fields_are_redacted(captured: io.StringIO, field: str, value: object) -> None:
    logs.get_logger("t").info("call", **{field: value})
    text = captured.getvalue()
    for secret in ("tdm-abcdefgh12345678", "hunter2", "abc.def.ghi", "xyz123456"):
        assert secret not in text
    assert logs.REDACTED in text


def test_secrets_inside_free_text_are_redacted(captured: io.StringIO) -> None:
    logs.get_logger("t").error("upstream: Authorization: Bearer s3cr3tt0ken failed, key sk-live12345678")
    logging.getLogger("httpx").error("GET https://user:pa55word@registry.local/v2/ failed")
    text = captured.getvalue()
    assert "s3cr3tt0ken" not in text and "sk-live12345678" not in text and "pa55word" not in text


def test_token_counts_are_not_mistaken_for_secrets(captured: io.StringIO) -> None:
    logs.get_logger("t").info("done", prompt_tokens=12, estimated_tokens=40)
    (line,) = lines(captured)
    assert line["prompt_tokens"] == 12 and line["estimated_tokens"] == 40


def test_console_format_is_readable() -> None:
    stream = io.StringIO()
    logs.configure(fmt="console", stream=stream)
    logs.get_logger("t").info("hello", api_key="tdm-abcdefgh12345678")
    structlog.reset_defaults()
    out = stream.getvalue()
    assert "hello" in out and not out.lstrip().startswith("{") and "tdm-abcdefgh12345678" not in out


def test_a_library_with_its_own_handler_logs_only_through_ours(
    captured: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    chatty = logging.getLogger("tandem.test.chatty")
    chatty.addHandler(logging.StreamHandler())  # what litellm does to its loggers at import
    try:
        logs.adopt_library_loggers("tandem.test.chatty")
        chatty.warning("retrying with key sk-0123456789abcdef")
    finally:
        chatty.handlers.clear()
    (line,) = lines(captured)
    assert line["event"] == "retrying with key [redacted]"  # through our redaction
    assert capsys.readouterr().err == ""  # no plain-text copy on stderr


def test_process_events_carry_no_request_of_their_own(captured: io.StringIO) -> None:
    from gateway.state.redis_conn import StateHealth

    health = StateHealth()
    logs.bind_request("req-unrelated", tenant="acme")
    health.down("connection refused")
    health.up()
    events = {line["event"]: line for line in lines(captured)}
    for name in ("state_degraded", "state_recovered"):
        assert "request_id" not in events[name] and "tenant" not in events[name]
