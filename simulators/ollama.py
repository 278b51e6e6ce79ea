"""A simulator of the Ollama server's REST API, serving Qwen3-style models.

Inference: `POST /api/chat`, `POST /api/generate` (NDJSON streams by default, `think`,
`format`, tools, `options.num_predict`, `keep_alive`), with Ollama's scheduler behaviour:
`num_parallel` requests per model, a bounded queue (503 beyond it), cold loads after
`keep_alive` expiry; an empty chat or generate loads the model (`keep_alive` 0: unloads it).
Embeddings: `/api/embed`, `/api/embeddings`. Ollama's OpenAI-compatible layer:
`/v1/completions`, `/v1/embeddings` (`simulators/ollama_openai.py`). Library: `/api/tags`,
`/api/ps`, `/api/show`, `/api/version`, `GET /`, `HEAD|POST /api/blobs/sha256:<hex>`,
`/api/create`, `/api/copy`, `DELETE /api/delete`. Wire shapes and error texts follow Ollama's
server (see /work/shared/protocols.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import shutil
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from simulators import ollama_openai as compat
from simulators.faults import Faults
from simulators.ollama_models import (
    CreateError,
    ModelEntry,
    ModelLibrary,
    OllamaModel,
    full_name,
    rfc3339,
)
from simulators.prompt import TokenCounter, render_chatml, token_ids
from simulators.server import SimServer, json_response
from simulators.stream import Outcome, Pace, Stream, StreamWriter
from simulators.textgen import Pieces, TextGenerator, choose_tool, tool_arguments
from tandem.wire.ollama import parse_keep_alive

__all__ = ["OllamaModel", "OllamaSimConfig", "OllamaSimulator", "parse_keep_alive"]

BUSY = "server busy, please try again.  maximum pending requests exceeded"
RUNNER_DIED = "llama runner process has terminated: exit status 2"
_NDJSON = "application/x-ndjson"
_BLOB_BATCH = 4 << 20
_THINK_LEVELS = ("high", "medium", "low")
_THINK_SCALE = {"low": 0.5, "medium": 1.0, "high": 2.0}


@dataclass(slots=True)
class OllamaSimConfig:
    """How the simulated Ollama behaves. Times are seconds; 0 means as fast as possible."""

    models: list[OllamaModel | str] = field(default_factory=lambda: [OllamaModel()])
    host: str = "127.0.0.1"
    port: int = 0
    tokens_per_second: float = 0.0
    time_to_first_token: float = 0.0
    output_tokens: int = 64  # answer tokens per request (num_predict caps answer plus thinking)
    reasoning_tokens: int = 32  # thinking tokens when thinking (think "low" halves, "high" doubles)
    seed: int = 0
    num_parallel: int = 1  # OLLAMA_NUM_PARALLEL: requests run at once per model
    max_queue: int = 512  # OLLAMA_MAX_QUEUE: requests waiting beyond it get 503
    load_duration: float = 0.0  # cold load of a model that is not loaded (or expired)
    keep_alive: str | float = "5m"  # OLLAMA_KEEP_ALIVE: default for requests without keep_alive
    num_ctx: int = 32768  # context of a loaded runner (what /api/ps reports), capped by the model's
    version: str = "0.13.0"
    blobs_dir: str | None = None  # None: a temporary directory removed at stop
    faults: Faults = field(default_factory=Faults)
    max_recorded: int = 1000
    max_body_size: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in (
            "tokens_per_second",
            "time_to_first_token",
            "output_tokens",
            "reasoning_tokens",
            "load_duration",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.num_parallel < 1:
            raise ValueError(f"num_parallel must be >= 1, got {self.num_parallel}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")
        parse_keep_alive(self.keep_alive, 300.0)

    def model_specs(self) -> list[OllamaModel]:
        return [m if isinstance(m, OllamaModel) else OllamaModel(name=m) for m in self.models]


class _BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(slots=True)
class _Runner:
    """A model's place in the scheduler: its parallel slots and whether it is loaded."""

    slots: asyncio.Semaphore
    active: int = 0
    loaded: bool = False
    expires_at: float = 0.0  # loop time; math.inf = never
    expires_wall: float = 0.0
    num_ctx: int = 0
    load_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def is_loaded(self, now: float) -> bool:
        return self.active > 0 or (self.loaded and self.expires_at > now)


@dataclass(slots=True)
class _Answer:
    entry: ModelEntry
    prompt: str
    prompt_tokens: int
    thinking: Pieces
    content: Pieces
    tool_calls: list[dict[str, Any]] | None
    done_reason: str
    raw: bool

    @property
    def eval_count(self) -> int:
        return len(self.thinking) + len(self.content) + (1 if self.tool_calls else 0)


@dataclass(slots=True)
class _Timings:
    """Event-loop times of a request's arrival and of its model being ready."""

    start: float
    loaded: float = 0.0


class OllamaSimulator(SimServer):
    """An Ollama server on loopback. Use `await start()`/`stop()` or `async with`."""

    def __init__(self, config: OllamaSimConfig | None = None) -> None:
        self.config = config or OllamaSimConfig()
        cfg = self.config
        super().__init__(cfg)
        self._text = TextGenerator(cfg.seed)
        self._count = TokenCounter()
        self._pace = Pace.of(cfg.time_to_first_token, cfg.tokens_per_second)
        self._default_keep_alive = parse_keep_alive(cfg.keep_alive, 300.0)
        self._library: ModelLibrary | None = None
        self._runners: dict[str, _Runner] = {}
        self._waiting = 0
        self._running = 0
        self._create_lock = threading.Lock()

    # -- public state ------------------------------------------------------------------------

    @property
    def running(self) -> int:
        """Requests generating now."""
        return self._running

    @property
    def waiting(self) -> int:
        """Requests queued for a model slot."""
        return self._waiting

    @property
    def blobs_dir(self) -> Path:
        return self.library.blobs_dir

    @property
    def library(self) -> ModelLibrary:
        if self._library is None:
            raise RuntimeError("the simulator is not started")
        return self._library

    async def _on_start(self) -> None:
        # A restarted server keeps its models and blobs (they are on disk) but has nothing loaded.
        self._runners.clear()
        if self._library is not None:
            return
        if self.config.blobs_dir:
            blobs = Path(self.config.blobs_dir)
            await asyncio.to_thread(blobs.mkdir, parents=True, exist_ok=True)
        else:
            blobs = Path(tempfile.mkdtemp(prefix="tandem-ollama-sim-"))
            # Removed with the simulator (or at exit), not at stop: a restart keeps its blobs.
            weakref.finalize(self, shutil.rmtree, blobs, True)
        self._library = ModelLibrary(self.config.model_specs(), blobs)

    def _reset_state(self) -> None:
        if self._library is not None:
            self._library = ModelLibrary(self.config.model_specs(), self._library.blobs_dir)
        self._runners.clear()

    def _runner(self, entry: ModelEntry) -> _Runner:
        runner = self._runners.get(entry.name)
        if runner is None:
            runner = self._runners[entry.name] = _Runner(asyncio.Semaphore(self.config.num_parallel))
        return runner

    # -- routes ------------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self._root)
        r.add_get("/api/version", self._version)
        r.add_get("/api/tags", self._tags)
        r.add_get("/api/ps", self._ps)
        r.add_post("/api/show", self._show)
        r.add_post("/api/chat", self._chat)
        r.add_post("/api/generate", self._generate)
        r.add_post("/api/embed", self._embed)
        r.add_post("/api/embeddings", self._embeddings)
        r.add_post("/v1/completions", self._v1_completions)
        r.add_post("/v1/embeddings", self._v1_embeddings)
        r.add_route("HEAD", "/api/blobs/{digest}", self._head_blob)
        r.add_post("/api/blobs/{digest}", self._post_blob)
        r.add_post("/api/create", self._create)
        r.add_post("/api/copy", self._copy)
        r.add_delete("/api/delete", self._delete)

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return json_response({"error": message}, status=status, charset="utf-8")

    def _error_response(self, status: int, message: str) -> web.Response:
        default = {503: BUSY, 500: RUNNER_DIED, 404: "model not found"}.get(
            status, f"simulated error {status}"
        )
        return self._error(status, message or default)

    def _dead_response(self) -> web.Response:
        return self._error(500, RUNNER_DIED)

    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.Response:
        return json_response({"version": self.config.version}, charset="utf-8")

    async def _tags(self, request: web.Request) -> web.Response:
        entries = sorted(self.library, key=lambda e: e.modified_at, reverse=True)
        return json_response({"models": [e.tag() for e in entries]}, charset="utf-8")

    async def _ps(self, request: web.Request) -> web.Response:
        now = asyncio.get_running_loop().time()
        models: list[dict[str, Any]] = []
        for entry in self.library:
            runner = self._runners.get(entry.name)
            if runner is None or not runner.is_loaded(now):
                continue
            expires = runner.expires_wall if runner.active == 0 else time.time() + self._default_keep_alive
            models.append(
                {
                    "name": entry.name,
                    "model": entry.name,
                    "size": entry.spec.size,
                    "digest": entry.digest,
                    "details": entry.details(),
                    "expires_at": rfc3339(min(expires, 1e10)),
                    "size_vram": entry.spec.size,
                    "context_length": runner.num_ctx,
                }
            )
        models.sort(key=lambda m: str(m["expires_at"]), reverse=True)
        return json_response({"models": models}, charset="utf-8")

    async def _body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if not raw.strip():
            raise _BadRequest("missing request body")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _BadRequest(f"invalid character in JSON body: {exc}") from None
        if not isinstance(body, dict):
            raise _BadRequest("json: cannot unmarshal array into Go value of type api.Request")
        return body

    async def _show(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
        except _BadRequest as exc:
            return self._error(exc.status, exc.message)
        name = body.get("model") or body.get("name")
        if not name or not isinstance(name, str):
            return self._error(400, "model is required")
        entry = self.library.get(name)
        if entry is None:
            return self._error(404, f"model '{name}' not found")
        return json_response(entry.show(), charset="utf-8")

    # -- inference ---------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        task = self._track()
        try:
            return await self._infer(request, chat=True)
        finally:
            self._untrack(task)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        task = self._track()
        try:
            return await self._infer(request, chat=False)
        finally:
            self._untrack(task)

    async def _infer(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        timings = _Timings(start=asyncio.get_running_loop().time())
        try:
            body = await self._body(request)
        except _BadRequest as exc:
            return self._error(exc.status, exc.message)
        self._record(body)
        answer_now = await self._entry_faults(body)
        if answer_now is not None:
            return answer_now
        try:
            return await self._run(request, body, chat, timings)
        except _BadRequest as exc:
            return self._error(exc.status, exc.message)

    async def _v1_completions(self, request: web.Request) -> web.StreamResponse:
        """`/v1/completions`: the native generate, its answer rendered as OpenAI's."""
        task = self._track()
        try:
            timings = _Timings(start=asyncio.get_running_loop().time())
            try:
                body = compat.parse(await request.read())
                native = compat.generate_body(body)
            except compat.OpenAIError as exc:
                return compat.error_response(exc.status, exc.message)
            self._record(body)
            answer_now = await self._entry_faults(native)
            if answer_now is not None:
                return self._as_openai_error(answer_now)
            completion = compat.Completion(body, self._text.key(str(native["prompt"]), None))
            try:
                return await self._run(request, native, False, timings, completion)
            except _BadRequest as exc:
                return compat.error_response(exc.status, exc.message)
        finally:
            self._untrack(task)

    @staticmethod
    def _as_openai_error(native: web.Response) -> web.Response:
        message = ""
        if isinstance(native.body, bytes):
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                message = str(orjson.loads(native.body).get("error", ""))
        return compat.error_response(native.status, message or f"HTTP {native.status}")

    async def _run(
        self,
        request: web.Request,
        body: dict[str, Any],
        chat: bool,
        timings: _Timings,
        completion: compat.Completion | None = None,
    ) -> web.StreamResponse:
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise _BadRequest("model is required")
        entry = self.library.get(name)
        if entry is None:
            raise _BadRequest(f"model '{name}' not found", 404)
        try:
            keep_alive = parse_keep_alive(body.get("keep_alive"), self._default_keep_alive)
        except ValueError as exc:
            raise _BadRequest(str(exc)) from None
        messages = self._messages(body, chat)
        runner = self._runner(entry)
        if not messages and keep_alive == 0:
            runner.loaded = False
            return self._done_now(name, chat, "unload")
        think = self._think(body, entry, name)
        tools = body.get("tools") if chat else None
        if tools and "tools" not in entry.spec.capabilities:
            raise _BadRequest(f"{full_name(entry.name)} does not support tools")
        options: dict[str, Any] = body["options"] if isinstance(body.get("options"), dict) else {}
        await self._acquire(runner)
        try:
            await self._load(runner, entry, options, timings)
            if not messages:
                if completion is not None:  # Ollama's middleware renders the load as a completion
                    loaded = {"model": name, "created_at": rfc3339(), "response": "", "done_reason": "load"}
                    return json_response(completion.whole(loaded), charset="utf-8")
                return self._done_now(name, chat, "load")
            answer = self._answer(entry, body, messages, think, options, runner)
            if body.get("stream", True) is False:
                return await self._complete(request, name, chat, answer, timings, completion)
            if completion is not None:
                return await self._stream_completion(request, name, answer, timings, completion)
            return await self._stream(request, name, chat, answer, timings)
        finally:
            self._release(runner, keep_alive)

    def _messages(self, body: dict[str, Any], chat: bool) -> list[dict[str, Any]]:
        if chat:
            messages = body.get("messages") or []
            if not isinstance(messages, list):
                raise _BadRequest("json: cannot unmarshal into Go struct field ChatRequest.messages")
            return [m for m in messages if isinstance(m, dict)]
        prompt = body.get("prompt") or ""
        if not prompt:
            return []
        system = body.get("system")
        out = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
        return [*out, {"role": "user", "content": str(prompt)}]

    def _think(self, body: dict[str, Any], entry: ModelEntry, name: str) -> bool | str:
        think = body.get("think")
        if isinstance(think, str) and think not in _THINK_LEVELS:
            raise _BadRequest(
                f'invalid think value: "{think}" (must be "high", "medium", "low", true, or false)'
            )
        if think is not None and not isinstance(think, bool | str):
            raise _BadRequest('think must be a boolean or string ("high", "medium", "low", true, or false)')
        if "thinking" in entry.spec.capabilities:
            return True if think is None else think
        if think:
            raise _BadRequest(f'"{name}" does not support thinking')
        return False

    async def _acquire(self, runner: _Runner) -> None:
        if runner.slots.locked():
            if self._waiting >= self.config.max_queue:
                raise _BadRequest(BUSY, 503)
            self._waiting += 1
            try:
                await runner.slots.acquire()
            finally:
                self._waiting -= 1
        else:
            await runner.slots.acquire()
        runner.active += 1
        self._running += 1

    def _release(self, runner: _Runner, keep_alive: float) -> None:
        runner.active -= 1
        self._running -= 1
        runner.slots.release()
        if runner.active == 0:
            runner.expires_at = asyncio.get_running_loop().time() + keep_alive
            runner.expires_wall = time.time() + keep_alive
            if keep_alive == 0:
                runner.loaded = False

    async def _load(
        self, runner: _Runner, entry: ModelEntry, options: dict[str, Any], timings: _Timings
    ) -> None:
        loop = asyncio.get_running_loop()
        async with runner.load_lock:
            # Our own slot is already counted in `active`: loaded means loaded before us.
            warm = runner.loaded and (runner.active > 1 or runner.expires_at > loop.time())
            if not warm:
                if self.config.load_duration > 0:
                    await asyncio.sleep(self.config.load_duration)
                runner.loaded = True
                runner.expires_at = math.inf
                num_ctx = options.get("num_ctx")
                runner.num_ctx = min(
                    num_ctx if isinstance(num_ctx, int) and num_ctx > 0 else self.config.num_ctx,
                    entry.spec.context_length,
                )
        timings.loaded = asyncio.get_running_loop().time()

    def _done_now(self, name: str, chat: bool, reason: str) -> web.Response:
        body: dict[str, Any] = {"model": name, "created_at": rfc3339()}
        if chat:
            body["message"] = {"role": "assistant", "content": ""}
        else:
            body["response"] = ""
        body |= {"done_reason": reason, "done": True} if chat else {"done": True, "done_reason": reason}
        return json_response(body, charset="utf-8")

    def _answer(
        self,
        entry: ModelEntry,
        body: dict[str, Any],
        messages: list[dict[str, Any]],
        think: bool | str,
        options: dict[str, Any],
        runner: _Runner,
    ) -> _Answer:
        cfg = self.config
        tools = body.get("tools") or None
        thinks = bool(think)
        if body.get("raw"):
            prompt = str(body.get("prompt") or "")
        else:
            suffix = (" /think" if thinks else " /no_think") if "thinking" in entry.spec.capabilities else ""
            prompt = render_chatml(messages, tools=tools, thinking=thinks or not suffix, think_suffix=suffix)
        prompt_tokens = min(self._count(prompt), runner.num_ctx or entry.spec.context_length)
        seed = options.get("seed")
        key = self._text.key(prompt, seed if isinstance(seed, int) else None)
        num_predict = options.get("num_predict")
        limit = num_predict if isinstance(num_predict, int) and num_predict >= 0 else math.inf
        wanted_thinking = int(cfg.reasoning_tokens * _THINK_SCALE.get(str(think), 1.0)) if thinks else 0
        n_thinking = int(min(wanted_thinking, limit))
        budget = limit - n_thinking
        done_reason = "length" if wanted_thinking + cfg.output_tokens > limit else "stop"
        thinking = self._text.reasoning(key, n_thinking) if n_thinking else Pieces([], [])
        content = Pieces([], [])
        tool_calls = None
        function = choose_tool(messages, tools)
        if function is not None and budget > 0:
            call_id = "call_" + hashlib.sha256(f"{key}:{function.get('name')}".encode()).hexdigest()[:8]
            tool_calls = [
                {
                    "id": call_id,
                    "function": {
                        "index": 0,
                        "name": function.get("name", ""),
                        "arguments": tool_arguments(function),
                    },
                }
            ]
            done_reason = "stop"
        elif budget > 0:
            fmt = body.get("format")
            if fmt == "json" or isinstance(fmt, dict):
                content = self._text.json_content(
                    key, cfg.output_tokens, fmt if isinstance(fmt, dict) else None
                )
                done_reason = "length" if wanted_thinking + len(content) > limit else "stop"
                content = content.head(int(min(budget, len(content))))
            else:
                content = self._text.content(key, int(min(cfg.output_tokens, budget)))
        raw = bool(body.get("raw"))
        return _Answer(entry, prompt, prompt_tokens, thinking, content, tool_calls, done_reason, raw)

    def _metrics(self, answer: _Answer, timings: _Timings, first_token: float | None) -> dict[str, Any]:
        end = asyncio.get_running_loop().time()
        first = first_token if first_token is not None else end
        return {
            "total_duration": max(1, int((end - timings.start) * 1e9)),
            "load_duration": max(1, int((timings.loaded - timings.start) * 1e9)),
            "prompt_eval_count": max(1, answer.prompt_tokens),
            "prompt_eval_duration": max(1, int((first - timings.loaded) * 1e9)),
            "eval_count": max(1, answer.eval_count),
            "eval_duration": max(1, int((end - first) * 1e9)),
        }

    def _final(
        self, name: str, chat: bool, answer: _Answer, timings: _Timings, first: float | None
    ) -> dict[str, Any]:
        """The last object of an answer (without model and created_at), metrics included."""
        metrics = self._metrics(answer, timings, first)
        if chat:
            return {
                "message": {"role": "assistant", "content": ""},
                "done_reason": answer.done_reason,
                "done": True,
                **metrics,
            }
        out: dict[str, Any] = {"response": "", "done": True, "done_reason": answer.done_reason}
        if not answer.raw:
            out["context"] = token_ids(answer.prompt + answer.content.text())
        return out | metrics

    async def _complete(
        self,
        request: web.Request,
        name: str,
        chat: bool,
        answer: _Answer,
        timings: _Timings,
        completion: compat.Completion | None = None,
    ) -> web.StreamResponse:
        prompt_done = asyncio.get_running_loop().time()
        delay = self._pace.total(answer.eval_count)
        if delay > 0:
            await asyncio.sleep(delay)
        faults = self.faults
        if faults.disconnect_after is not None:
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError
        if faults.error_after is not None:
            if completion is not None:
                return self._as_openai_error(self._error_response(faults.error_status, faults.error_message))
            return self._error_response(faults.error_status, faults.error_message)
        first = prompt_done + self._pace.ttft
        final = self._final(name, chat, answer, timings, first)
        body: dict[str, Any] = {"model": name, "created_at": rfc3339()}
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": answer.content.text()}
            if len(answer.thinking):
                message["thinking"] = answer.thinking.text()
            if answer.tool_calls:
                message["tool_calls"] = answer.tool_calls
            final["message"] = message
        else:
            final["response"] = answer.content.text()
            if len(answer.thinking):
                final = {"response": final.pop("response"), "thinking": answer.thinking.text(), **final}
        if completion is not None:
            return json_response(completion.whole(body | final), charset="utf-8")
        return json_response(body | final, charset="utf-8")

    async def _stream(
        self, request: web.Request, name: str, chat: bool, answer: _Answer, timings: _Timings
    ) -> web.StreamResponse:
        if chat:
            thinking_open, thinking_close = (
                b'"message":{"role":"assistant","content":"","thinking":',
                b'},"done":false}\n',
            )
            content_open, content_close = b'"message":{"role":"assistant","content":', b'},"done":false}\n'
        else:
            thinking_open, thinking_close = b'"response":"","thinking":', b',"done":false}\n'
            content_open, content_close = b'"response":', b',"done":false}\n'
        events = [thinking_open + piece + thinking_close for piece in answer.thinking.json]
        events += [content_open + piece + content_close for piece in answer.content.json]
        if answer.tool_calls:
            message = {"role": "assistant", "content": "", "tool_calls": answer.tool_calls}
            events.append(orjson.dumps({"message": message, "done": False})[1:] + b"\n")
        head_start = b'{"model":' + orjson.dumps(name) + b',"created_at":"'
        writer: StreamWriter | None = None

        def frame(pending: list[bytes]) -> bytes:
            head = head_start + rfc3339().encode() + b'",'
            # Error lines ({"error": ...}) are whole objects; the others need the head.
            return b"".join(e if e[0] == 0x7B else head + e for e in pending)

        def finish() -> bytes:
            first = writer.first_token_at if writer is not None else None
            return orjson.dumps(self._final(name, chat, answer, timings, first))[1:] + b"\n"

        faults = self.faults
        stream = Stream(
            events=events,
            first_token=0,
            frame=frame,
            finish=finish,
            error_event=orjson.dumps({"error": faults.error_message or RUNNER_DIED}) + b"\n",
            status_error_before_start=True,
        )
        response = web.StreamResponse(headers={"Content-Type": _NDJSON})
        writer = StreamWriter(request, response)
        outcome = await writer.send(stream, self._pace, faults)
        if outcome is Outcome.DISCONNECTED:
            raise asyncio.CancelledError
        if outcome is Outcome.ERROR_NOT_STARTED:
            return self._error_response(faults.error_status, faults.error_message)
        return response

    async def _stream_completion(
        self,
        request: web.Request,
        name: str,
        answer: _Answer,
        timings: _Timings,
        completion: compat.Completion,
    ) -> web.StreamResponse:
        """A `/v1/completions` stream: a chunk per native generate line (a thinking line gives
        an empty text, as through Ollama's middleware), the finish, usage when asked, [DONE]."""
        created = int(time.time())
        events = [completion.chunk(name, created, "", None) for _ in answer.thinking.texts]
        events += [completion.chunk(name, created, text, None) for text in answer.content.texts]
        if answer.tool_calls:
            events.append(completion.chunk(name, created, "", None))
        writer: StreamWriter | None = None

        def finish() -> bytes:
            first = writer.first_token_at if writer is not None else None
            final = self._final(name, False, answer, timings, first)
            out = completion.chunk(name, created, "", str(final["done_reason"]))
            if completion.include_usage:
                out += completion.usage_chunk(name, created, final)
            return out + compat.DONE

        faults = self.faults
        stream = Stream(
            events=events,
            first_token=0,
            frame=b"".join,
            finish=finish,
            error_event=compat.error_event(faults.error_message or RUNNER_DIED),
            status_error_before_start=True,
        )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        writer = StreamWriter(request, response)
        outcome = await writer.send(stream, self._pace, faults)
        if outcome is Outcome.DISCONNECTED:
            raise asyncio.CancelledError
        if outcome is Outcome.ERROR_NOT_STARTED:
            return self._as_openai_error(self._error_response(faults.error_status, faults.error_message))
        return response

    # -- embeddings --------------------------------------------------------------------------

    async def _embed(self, request: web.Request) -> web.Response:
        """`/api/embed`: normalized vectors for `input` (a string or a list of strings)."""
        task = self._track()
        try:
            try:
                body = await self._body(request)
                return await self._embed_native(body)
            except _BadRequest as exc:
                return self._error(exc.status, exc.message)
        finally:
            self._untrack(task)

    async def _v1_embeddings(self, request: web.Request) -> web.Response:
        task = self._track()
        try:
            try:
                body = compat.parse(await request.read())
                native = compat.embed_body(body)
                answer = await self._embed_native(native)
            except compat.OpenAIError as exc:
                return compat.error_response(exc.status, exc.message)
            except _BadRequest as exc:
                return compat.error_response(exc.status, exc.message)
            if answer.status != 200:
                return self._as_openai_error(answer)
            assert isinstance(answer.body, bytes)
            fmt = str(body.get("encoding_format") or "float")
            listing = compat.embedding_list(str(body.get("model")), orjson.loads(answer.body), fmt)
            return json_response(listing, charset="utf-8")
        finally:
            self._untrack(task)

    async def _embed_native(self, body: dict[str, Any]) -> web.Response:
        timings = _Timings(start=asyncio.get_running_loop().time())
        self._record(body)
        answer_now = await self._entry_faults(body)
        if answer_now is not None:
            return answer_now
        name = body.get("model")
        try:
            inputs = compat.embed_inputs(body.get("input"))
        except ValueError as exc:
            raise _BadRequest(str(exc)) from None
        entry, runner, keep_alive, options = self._embedding_runner(body)
        dimensions = body.get("dimensions")
        await self._acquire(runner)
        try:
            await self._load(runner, entry, options, timings)
            loaded = asyncio.get_running_loop().time()
            if not inputs:
                return json_response({"model": name, "embeddings": []}, charset="utf-8")
            limit = runner.num_ctx or entry.spec.context_length
            counts = [self._count(text) for text in inputs]
            if body.get("truncate") is False and max(counts) > limit:
                raise _BadRequest("input exceeds maximum context length")
            vectors = []
            for text in inputs:
                vector = compat.normalize(compat.raw_vector(entry.name, text, self._embedding_length(entry)))
                if isinstance(dimensions, int) and 0 < dimensions < len(vector):
                    vector = compat.normalize(vector[:dimensions])
                vectors.append(vector)
            end = asyncio.get_running_loop().time()
            answer = {
                "model": name,
                "embeddings": vectors,
                "total_duration": max(1, int((end - timings.start) * 1e9)),
                "load_duration": max(1, int((loaded - timings.start) * 1e9)),
                "prompt_eval_count": sum(min(c, limit) for c in counts),
            }
            return json_response(answer, charset="utf-8")
        finally:
            self._release(runner, keep_alive)

    async def _embeddings(self, request: web.Request) -> web.Response:
        """`/api/embeddings` (the older API): one raw vector for `prompt`; empty loads the model."""
        task = self._track()
        try:
            timings = _Timings(start=asyncio.get_running_loop().time())
            try:
                body = await self._body(request)
                self._record(body)
                answer_now = await self._entry_faults(body)
                if answer_now is not None:
                    return answer_now
                entry, runner, keep_alive, options = self._embedding_runner(body)
            except _BadRequest as exc:
                return self._error(exc.status, exc.message)
            prompt = body.get("prompt") if isinstance(body.get("prompt"), str) else ""
            await self._acquire(runner)
            try:
                await self._load(runner, entry, options, timings)
                if not prompt:
                    return json_response({"embedding": []}, charset="utf-8")
                vector = compat.raw_vector(entry.name, prompt, self._embedding_length(entry))
                return json_response({"embedding": vector}, charset="utf-8")
            finally:
                self._release(runner, keep_alive)
        finally:
            self._untrack(task)

    def _embedding_runner(self, body: dict[str, Any]) -> tuple[ModelEntry, _Runner, float, dict[str, Any]]:
        """The model an embedding call names, its runner, keep_alive and options, or Ollama's
        refusal (no model: 400, unknown: 404, a bad keep_alive: 400)."""
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise _BadRequest("model is required")
        entry = self.library.get(name)
        if entry is None:
            raise _BadRequest(f'model "{name}" not found, try pulling it first', 404)
        try:
            keep_alive = parse_keep_alive(body.get("keep_alive"), self._default_keep_alive)
        except ValueError as exc:
            raise _BadRequest(str(exc)) from None
        options = body["options"] if isinstance(body.get("options"), dict) else {}
        return entry, self._runner(entry), keep_alive, options

    @staticmethod
    def _embedding_length(entry: ModelEntry) -> int:
        info = entry.model_info()
        length = next((v for k, v in info.items() if k.endswith(".embedding_length")), None)
        return length if isinstance(length, int) and length > 0 else 768

    # -- blobs and the library ---------------------------------------------------------------

    async def _head_blob(self, request: web.Request) -> web.Response:
        digest = request.match_info["digest"]
        try:
            exists = self.library.has_blob(digest)
        except ValueError as exc:
            return self._error(400, str(exc))
        if not exists:
            return self._error(404, f'blob "{digest}" not found')
        return web.Response(status=200)

    async def _post_blob(self, request: web.Request) -> web.Response:
        digest = request.match_info["digest"]
        try:
            path = self.library.blob_path(digest)
        except ValueError as exc:
            return self._error(400, str(exc))
        if path.is_file():
            return web.Response(status=200)
        got = await self._receive_blob(request, path)
        if got is None:
            return web.Response(status=201)
        return self._error(400, f'digest mismatch, expected "{digest}", got "{got}"')

    async def _receive_blob(self, request: web.Request, path: Path) -> str | None:
        """Streams the body to a temporary file while hashing it; moves it into place when the
        digest matches. Returns None on success, else the digest actually received."""
        fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=path.parent)
        hasher = hashlib.sha256()

        def consume(out: Any, data: bytes) -> None:
            hasher.update(data)
            out.write(data)

        try:
            with os.fdopen(fd, "wb") as out:
                # Hashing and writing happen off the event loop, a few MiB at a time.
                buffer = bytearray()
                async for chunk in request.content.iter_chunked(1 << 20):
                    buffer += chunk
                    if len(buffer) >= _BLOB_BATCH:
                        await asyncio.to_thread(consume, out, bytes(buffer))
                        buffer.clear()
                if buffer:
                    await asyncio.to_thread(consume, out, bytes(buffer))
            got = "sha256:" + hasher.hexdigest()
            if got[7:] != path.name[7:]:
                return got
            os.replace(tmp, path)
            tmp = ""
            return None
        finally:
            if tmp:
                os.unlink(tmp)

    async def _create(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
        except _BadRequest as exc:
            return self._error(exc.status, exc.message)
        try:
            plan = self.library.plan_create(body)
        except CreateError as exc:
            return self._error(exc.status, exc.message)
        statuses: list[dict[str, Any]] = []
        error: CreateError | None = None
        try:
            await asyncio.to_thread(self._run_create, plan, statuses)
        except CreateError as exc:
            error = exc
        if body.get("stream", True) is False:
            if error is not None:
                return self._error(error.status, error.message)
            return json_response(statuses[-1], charset="utf-8")
        if error is not None and not statuses:
            return self._error(error.status, error.message)
        lines = [orjson.dumps(s) + b"\n" for s in statuses]
        if error is not None:
            lines.append(orjson.dumps({"error": error.message}) + b"\n")
        response = web.StreamResponse(headers={"Content-Type": _NDJSON})
        await response.prepare(request)
        await response.write(b"".join(lines))
        await response.write_eof()
        return response

    def _run_create(self, plan: Any, statuses: list[dict[str, Any]]) -> None:
        with self._create_lock:
            for status in self.library.run_create(plan):
                statuses.append(status)

    async def _copy(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
        except _BadRequest as exc:
            return self._error(exc.status, exc.message)
        source, destination = body.get("source"), body.get("destination")
        if not isinstance(source, str) or not source:
            return self._error(400, f'source "{source or ""}" is invalid')
        if not isinstance(destination, str) or not destination:
            return self._error(400, f'destination "{destination or ""}" is invalid')
        entry = self.library.get(source)
        if entry is None:
            return self._error(404, f'model "{source}" not found')
        self.library.copy(entry, destination)
        return web.Response(status=200)

    async def _delete(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
        except _BadRequest as exc:
            return self._error(exc.status, exc.message)
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            return self._error(400, 'name "" is invalid')
        entry = self.library.remove(name)
        if entry is None:
            return self._error(404, f"model '{name}' not found")
        self._runners.pop(entry.name, None)
        return web.Response(status=200)
