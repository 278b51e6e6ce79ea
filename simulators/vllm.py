"""A simulator of vLLM's OpenAI-compatible server, serving Qwen3 with `--reasoning-parser qwen3`.

Endpoints: `POST /v1/chat/completions` (JSON or SSE), `GET /v1/models`, `GET /health`,
`GET /metrics`, `GET /version`, plus the admin API of `server.py`. Wire shapes follow
/work/shared/protocols.md: reasoning in `delta.reasoning` (or `reasoning_content`, per config)
when `chat_template_kwargs.enable_thinking` is true or absent, a role chunk first, a finish
chunk with `stop_reason`, a usage chunk with `choices: []` only for
`stream_options.include_usage`, `data: [DONE]` last; errors as `{"error": {...}}`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from simulators.faults import Faults
from simulators.prompt import TokenCounter, render_chatml, soft_switch
from simulators.server import JSON_TYPE, SimServer, json_response
from simulators.stream import Outcome, Pace, Stream, StreamWriter
from simulators.textgen import Pieces, TextGenerator, choose_tool, tool_arguments
from simulators.vllm_metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from simulators.vllm_metrics import VllmMetrics

THINKING_MODES = ("switch", "always", "never")
REASONING_FIELDS = ("reasoning", "reasoning_content")
_ENGINE_DEAD = "EngineCore encountered an issue. See stack trace (above) for the root cause."
_SSE_TYPE = "text/event-stream"


@dataclass(slots=True)
class VllmModel:
    """One served model. `thinking`: "switch" (a hybrid Qwen3 model: `enable_thinking` decides),
    "always" (a Thinking-2507 model), "never" (an Instruct-2507 model)."""

    name: str = "Qwen/Qwen3-14B"
    max_model_len: int = 32768
    thinking: str = "switch"

    def __post_init__(self) -> None:
        if self.thinking not in THINKING_MODES:
            raise ValueError(f"model.thinking must be one of {THINKING_MODES}, got {self.thinking!r}")
        if self.max_model_len < 1:
            raise ValueError(f"model.max_model_len must be positive, got {self.max_model_len}")


@dataclass(slots=True)
class VllmSimConfig:
    """How the simulated vLLM server behaves. Times are seconds; 0 means as fast as possible."""

    models: list[VllmModel | str] = field(default_factory=lambda: [VllmModel()])
    host: str = "127.0.0.1"
    port: int = 0
    tokens_per_second: float = 0.0
    time_to_first_token: float = 0.0
    output_tokens: int = 64  # answer tokens per request (max_tokens caps answer plus reasoning)
    reasoning_tokens: int = 32  # reasoning tokens when thinking
    seed: int = 0
    reasoning_field: str = "reasoning"  # or "reasoning_content" (vLLM before early 2026)
    max_num_seqs: int = 256  # requests decoded at once; more wait (vllm:num_requests_waiting)
    legacy_errors: bool = False  # older vLLM's flat `{"object": "error", ...}` error bodies
    version: str = "0.11.2"
    faults: Faults = field(default_factory=Faults)
    max_recorded: int = 1000
    max_body_size: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.reasoning_field not in REASONING_FIELDS:
            raise ValueError(
                f"reasoning_field must be one of {REASONING_FIELDS}, got {self.reasoning_field!r}"
            )
        for name in ("tokens_per_second", "time_to_first_token", "output_tokens", "reasoning_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if not self.models:
            raise ValueError("models must name at least one model")

    def model_specs(self) -> list[VllmModel]:
        return [m if isinstance(m, VllmModel) else VllmModel(name=m) for m in self.models]


class _BadRequest(Exception):
    def __init__(self, message: str, *, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param


@dataclass(slots=True)
class _Answer:
    """What the simulated model produces for one request."""

    model: VllmModel
    prompt_tokens: int
    reasoning: Pieces
    content: Pieces
    tool_call: dict[str, Any] | None
    finish_reason: str

    @property
    def completion_tokens(self) -> int:
        return len(self.reasoning) + len(self.content) + (1 if self.tool_call else 0)


@dataclass(slots=True)
class _Load:
    running: int = 0
    waiting: int = 0


def _error_type(status: int) -> str:
    if status == 400:
        return "BadRequestError"
    if status == 404:
        return "NotFoundError"
    if status == 500:
        return "InternalServerError"
    try:
        return HTTPStatus(status).phrase.replace(" ", "").replace("-", "") + "Error"
    except ValueError:
        return "Error"


def _json_format(response_format: Any) -> tuple[bool, dict[str, Any] | None]:
    """Whether `response_format` asks for JSON, and the schema it names (if any)."""
    if not isinstance(response_format, dict):
        return False, None
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        return True, schema if isinstance(schema, dict) else None
    return kind == "json_object", None


class VllmSimulator(SimServer):
    """A vLLM OpenAI-compatible server on loopback. Use `await start()`/`stop()` or `async with`."""

    def __init__(self, config: VllmSimConfig | None = None) -> None:
        self.config = config or VllmSimConfig()
        cfg = self.config
        super().__init__(cfg)
        self._models = {m.name: m for m in cfg.model_specs()}
        self._default_model = next(iter(self._models.values()))
        self._text = TextGenerator(cfg.seed)
        self._count = TokenCounter()
        self._pace = Pace.of(cfg.time_to_first_token, cfg.tokens_per_second)
        self._slots = asyncio.Semaphore(cfg.max_num_seqs)
        self._load = {name: _Load() for name in self._models}
        self._metrics = VllmMetrics(self._models)
        self._reasoning_key = cfg.reasoning_field.encode()
        self._started = int(time.time())

    # -- public state ------------------------------------------------------------------------

    @property
    def running(self) -> int:
        """Requests being decoded now."""
        return sum(load.running for load in self._load.values())

    @property
    def waiting(self) -> int:
        """Requests waiting for a decode slot (beyond `max_num_seqs`)."""
        return sum(load.waiting for load in self._load.values())

    def _reset_state(self) -> None:
        self._metrics = VllmMetrics(self._models)

    async def _on_start(self) -> None:
        # A (re)started engine counts from zero.
        self._metrics = VllmMetrics(self._models)

    # -- routes ------------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_get("/version", self._version)

    def _error(
        self, status: int, message: str, *, param: str | None = None, err_type: str | None = None
    ) -> web.Response:
        return json_response(self._error_body(status, message, param=param, err_type=err_type), status=status)

    def _error_body(
        self, status: int, message: str, *, param: str | None = None, err_type: str | None = None
    ) -> dict[str, Any]:
        error = {"message": message, "type": err_type or _error_type(status), "param": param, "code": status}
        if self.config.legacy_errors:
            return {"object": "error", **error}
        return {"error": error}

    def _error_response(self, status: int, message: str) -> web.Response:
        default = _ENGINE_DEAD if status == 500 else HTTPStatus(status).phrase
        return self._error(status, message or default)

    def _dead_response(self) -> web.Response:
        return self._error(500, _ENGINE_DEAD)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=503 if self.faults.dead else 200)

    async def _version(self, request: web.Request) -> web.Response:
        return json_response({"version": self.config.version})

    async def _list_models(self, request: web.Request) -> web.Response:
        data = []
        for model in self._models.values():
            data.append(
                {
                    "id": model.name,
                    "object": "model",
                    "created": self._started,
                    "owned_by": "vllm",
                    "root": model.name,
                    "parent": None,
                    "max_model_len": model.max_model_len,
                    "permission": [
                        {
                            "id": f"modelperm-{secrets.token_hex(16)}",
                            "object": "model_permission",
                            "created": self._started,
                            "allow_create_engine": False,
                            "allow_sampling": True,
                            "allow_logprobs": True,
                            "allow_search_indices": False,
                            "allow_view": True,
                            "allow_fine_tuning": False,
                            "organization": "*",
                            "group": None,
                            "is_blocking": False,
                        }
                    ],
                }
            )
        return json_response({"object": "list", "data": data})

    async def _metrics_page(self, request: web.Request) -> web.Response:
        for name, load in self._load.items():
            self._metrics.set_load(name, load.running, load.waiting, self.config.max_num_seqs)
        return web.Response(body=self._metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    # -- chat completions --------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        task = self._track()
        try:
            return await self._chat_request(request)
        finally:
            self._untrack(task)

    async def _chat_request(self, request: web.Request) -> web.StreamResponse:
        arrived = asyncio.get_running_loop().time()
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return self._error(400, f"JSON decode error: {exc}")
        if not isinstance(body, dict):
            return self._error(400, "Input should be a valid dictionary or object to extract fields from")
        self._record(body, request.headers.get("traceparent"))
        answer_now = await self._entry_faults(body)
        if answer_now is not None:
            return answer_now
        try:
            answer = self._answer(body)
        except _BadRequest as exc:
            return self._error(exc.status, exc.message, param=exc.param)
        load = self._load[answer.model.name]
        load.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            load.waiting -= 1
        load.running += 1
        try:
            if body.get("stream"):
                return await self._stream(request, body, answer, arrived)
            return await self._complete(request, answer, arrived)
        finally:
            load.running -= 1
            self._slots.release()

    def _answer(self, body: dict[str, Any]) -> _Answer:
        name = body.get("model")
        model = self._default_model if name is None else self._models.get(name)
        if model is None:
            raise _BadRequest(f"The model `{name}` does not exist.", status=404, param="model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest(
                "messages: Field required" if messages is None else "messages: must be a non-empty list"
            )
        if body.get("stream_options") is not None and not body.get("stream"):
            raise _BadRequest("Stream options can only be defined when `stream=True`.")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None and (
            not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
        ):
            raise _BadRequest(f"max_tokens must be at least 1, got {max_tokens}.", param="max_tokens")
        kwargs = body.get("chat_template_kwargs") or {}
        enable_thinking = bool(kwargs.get("enable_thinking", True)) if isinstance(kwargs, dict) else True
        if model.thinking == "always":
            enable_thinking = True
        elif model.thinking == "never":
            enable_thinking = False
        tools = body.get("tools") or None
        prompt = render_chatml(messages, tools=tools, thinking=enable_thinking)
        prompt_tokens = self._count(prompt)
        self._check_context(model, prompt_tokens, max_tokens)
        thinks = enable_thinking and (model.thinking == "always" or soft_switch(messages) is not False)
        limit = max_tokens if max_tokens is not None else model.max_model_len - prompt_tokens
        seed = body.get("seed")
        key = self._text.key(prompt, seed if isinstance(seed, int) else None)
        return self._generate(model, body, messages, key, prompt_tokens, thinks, limit)

    def _check_context(self, model: VllmModel, prompt_tokens: int, max_tokens: int | None) -> None:
        limit = model.max_model_len
        if prompt_tokens >= limit:
            # vLLM counts a too-long prompt only up to one token past the limit.
            requested, counted = 0, min(prompt_tokens, limit + 1)
        elif max_tokens is not None and prompt_tokens + max_tokens > limit:
            requested, counted = max_tokens, prompt_tokens
        else:
            return
        raise _BadRequest(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{requested} output tokens and your prompt contains at least {counted} input tokens, "
            f"for a total of at least {counted + requested} tokens. Please reduce the length of the "
            f"input prompt or the number of requested output tokens. "
            f"(parameter=input_tokens, value={counted})",
            param="input_tokens",
        )

    def _generate(
        self,
        model: VllmModel,
        body: dict[str, Any],
        messages: list[Any],
        key: int,
        prompt_tokens: int,
        thinks: bool,
        limit: int,
    ) -> _Answer:
        cfg = self.config
        wanted_reasoning = cfg.reasoning_tokens if thinks else 0
        n_reasoning = min(wanted_reasoning, limit)
        budget = limit - n_reasoning
        finish = "length" if wanted_reasoning + cfg.output_tokens > limit else "stop"
        function = choose_tool(messages, body.get("tools"), body.get("tool_choice"))
        tool_call = None
        content = Pieces([], [])
        if function is not None and budget > 0:
            arguments = orjson.dumps(tool_arguments(function)).decode()
            tool_call = {
                "id": f"chatcmpl-tool-{secrets.token_hex(16)}",
                "type": "function",
                "function": {"name": function.get("name", ""), "arguments": arguments},
            }
            finish = "tool_calls"
        elif budget > 0:
            wants_json, schema = _json_format(body.get("response_format"))
            if wants_json:
                content = self._text.json_content(key, cfg.output_tokens, schema)
                finish = "length" if wanted_reasoning + len(content) > limit else "stop"
                content = content.head(budget)
            else:
                content = self._text.content(key, min(cfg.output_tokens, budget))
        reasoning = self._text.reasoning(key, n_reasoning) if n_reasoning else Pieces([], [])
        return _Answer(model, prompt_tokens, reasoning, content, tool_call, finish)

    def _usage(self, answer: _Answer) -> dict[str, int]:
        completion = answer.completion_tokens
        return {
            "prompt_tokens": answer.prompt_tokens,
            "total_tokens": answer.prompt_tokens + completion,
            "completion_tokens": completion,
        }

    async def _complete(self, request: web.Request, answer: _Answer, arrived: float) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        delay = self._pace.total(answer.completion_tokens)
        if delay > 0:
            await asyncio.sleep(delay)
        faults = self.faults
        if faults.disconnect_after is not None:
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError
        if faults.error_after is not None:
            return self._error_response(faults.error_status, faults.error_message)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if answer.tool_call else answer.content.text(),
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
            "tool_calls": [answer.tool_call] if answer.tool_call else [],
            self.config.reasoning_field: answer.reasoning.text() if len(answer.reasoning) else None,
        }
        usage = self._usage(answer)
        body = {
            "id": f"chatcmpl-{secrets.token_hex(16)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": answer.model.name,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": answer.finish_reason,
                    "stop_reason": None,
                }
            ],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": {**usage, "prompt_tokens_details": None},
            "prompt_logprobs": None,
            "kv_transfer_params": None,
        }
        now = loop.time()
        self._metrics.finished(
            answer.model.name,
            prompt_tokens=answer.prompt_tokens,
            generation_tokens=answer.completion_tokens,
            reason=answer.finish_reason,
            ttft=max(0.0, (now - arrived) - max(0.0, delay - self._pace.ttft)),
            e2e=now - arrived,
        )
        return web.Response(body=orjson.dumps(body), content_type=JSON_TYPE)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], answer: _Answer, arrived: float
    ) -> web.StreamResponse:
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        rid = f"chatcmpl-{secrets.token_hex(16)}"
        head = b'{"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s' % (
            rid.encode(),
            int(time.time()),
            orjson.dumps(answer.model.name),
        )
        open_delta = b"data: " + head + b',"choices":[{"index":0,"delta":'
        close = b',"logprobs":null,"finish_reason":null}]}\n\n'
        events = [open_delta + b'{"role":"assistant","content":""}' + close]
        reasoning_open = open_delta + b'{"' + self._reasoning_key + b'":'
        events += [reasoning_open + piece + b"}" + close for piece in answer.reasoning.json]
        content_open = open_delta + b'{"content":'
        events += [content_open + piece + b"}" + close for piece in answer.content.json]
        if answer.tool_call:
            call = {"index": 0, **answer.tool_call}
            events.append(open_delta + b'{"tool_calls":' + orjson.dumps([call]) + b"}" + close)

        def finish() -> bytes:
            last = b'%s{"content":""},"logprobs":null,"finish_reason":"%s","stop_reason":null}]}\n\n' % (
                open_delta,
                answer.finish_reason.encode(),
            )
            if include_usage:
                last += (
                    b"data: "
                    + head
                    + b',"choices":[],"usage":'
                    + orjson.dumps(self._usage(answer))
                    + b"}\n\n"
                )
            return last + b"data: [DONE]\n\n"

        faults = self.faults
        error = self._error_body(faults.error_status, faults.error_message or _ENGINE_DEAD)
        if self.config.legacy_errors:
            error = {"error": error}
        stream = Stream(
            events=events,
            first_token=1,
            frame=b"".join,
            finish=finish,
            error_event=b"data: " + orjson.dumps(error) + b"\n\ndata: [DONE]\n\n",
            cut_event=b"data: [DONE]\n\n",
        )
        response = web.StreamResponse(headers={"Content-Type": _SSE_TYPE + "; charset=utf-8"})
        writer = StreamWriter(request, response)
        outcome = await writer.send(stream, self._pace, faults)
        if outcome is Outcome.DISCONNECTED:
            raise asyncio.CancelledError
        if outcome is Outcome.COMPLETE:
            now = asyncio.get_running_loop().time()
            first = writer.first_token_at if writer.first_token_at is not None else now
            self._metrics.finished(
                answer.model.name,
                prompt_tokens=answer.prompt_tokens,
                generation_tokens=answer.completion_tokens,
                reason=answer.finish_reason,
                ttft=first - arrived,
                e2e=now - arrived,
            )
        return response
