"""The local engine: the Ollama beside the edge agent, over its REST API (through the edge's `Transport`).

What it knows: which models Ollama has (`/api/tags`) and, per model, its context length and
whether it can think (`/api/show`, read again only when a model's digest changes); whether
Ollama answers at all (re-read every `refresh_seconds`); how many requests the edge has sent it
now, so new work spills to the gateway before Ollama's own queue makes callers wait.

What it does: runs `/api/chat` and `/api/generate` streams and reads their NDJSON lines as
they come, parsed in one pass per read; keeps the configured model loaded by renewing its
`keep_alive` (an empty generate) at start, every `warm_interval_seconds`, and as soon as Ollama
answers again after being down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from edge_agent.config import Ollama as OllamaConfig
from tandem.chat import Chunk
from tandem.errors import BadRequest, PayloadTooLarge, UpstreamFailed
from tandem.logs import get_logger
from tandem.transport import Response, Transport, Unreachable
from tandem.wire import ollama as wire

log = get_logger("tandem.edge.local")

_JSON = {"Content-Type": "application/json"}


class LocalUnavailable(Exception):
    """Ollama is down or failing: refused, reset, a 5xx, or no first token in time."""


class LocalRefused(Exception):
    """Ollama is up but will not take this request: `reason` is `saturated` (its queue is
    full) or `model_unavailable` (it no longer has the model)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Broken(Exception):
    """The stream broke off (error line, reset, stall, or an end without `done`)."""


class _Status(Exception):
    """A JSON call that did not answer 200."""

    def __init__(self, path: str, status: int) -> None:
        super().__init__(f"{path} answered HTTP {status}")
        self.status = status


@dataclass(frozen=True, slots=True)
class LocalModel:
    name: str
    context_length: int
    thinking: bool
    digest: str
    tag: dict[str, Any]  # the /api/tags entry as Ollama gave it


@dataclass(slots=True)
class LocalStream:
    """A local request whose first chunks have arrived."""

    first: list[Chunk]
    _rest: AsyncGenerator[list[Chunk], None]
    _release: Callable[[], None]
    _closed: bool = field(default=False)

    async def rest(self) -> AsyncGenerator[list[Chunk], None]:
        """The chunks after the first batch. Raises `UpstreamFailed` if the stream breaks off."""
        try:
            async for batch in self._rest:
                yield batch
        except _Broken as exc:
            raise UpstreamFailed(f"the local Ollama broke off: {exc}") from None
        finally:
            await self.close()

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                await self._rest.aclose()
            self._release()


class LocalEngine:
    """The local Ollama, owned by the edge application object."""

    def __init__(
        self, config: OllamaConfig, *, sampling: Mapping[str, dict[str, float]], transport: Transport
    ) -> None:
        self.config = config
        self._transport = transport
        self._sampling = sampling  # "thinking" / "non_thinking" -> Qwen3 defaults
        self.models: dict[str, LocalModel] = {}
        self.contexts: dict[str, int] = {}  # every name the box serves (aliases too) -> context
        self.thinkers: set[str] = set()  # the names among them whose model can think
        self.available = False
        self.down_reason = "not asked yet"  # why it is unavailable, for logs and /readyz
        self.warm = False
        self.version = ""
        self.in_flight = 0
        self._started = False
        self._tasks: list[asyncio.Task[None]] = []
        self._warming: asyncio.Task[None] | None = None
        self._warm_error = ""

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Opens the HTTP session, reads the models once, and starts the refresh loop."""
        self._started = True
        if not await self.refresh():
            # Down from the start is no change of state, so _set_available says nothing: say it.
            log.warning("local_engine_down", url=self.config.url, error=self.down_reason)
        self._tasks.append(asyncio.create_task(self._refresh_loop(), name="ollama-refresh"))

    async def close(self) -> None:
        for task in [*self._tasks, *([self._warming] if self._warming else [])]:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def saturated(self) -> bool:
        """True when a new request would wait beyond the queue limit: spill it over."""
        return self.in_flight >= self.config.num_parallel + self.config.max_queue

    def model(self, name: str) -> LocalModel | None:
        """The local model a caller's name stands for (aliases and Ollama's `:latest` applied)."""
        name = self.config.aliases.get(name, name)
        found = self.models.get(name)
        if found is None and ":" not in name:
            found = self.models.get(f"{name}:latest")
        return found

    # --- discovery ------------------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Re-reads the model list (and details of new or changed models); returns availability."""
        try:
            tags = await self._get_json("/api/tags")
            if not self.version:
                self.version = str((await self._get_json("/api/version")).get("version", ""))
            models: dict[str, LocalModel] = {}
            for entry in tags.get("models") or []:
                name = str(entry.get("model") or entry.get("name") or "")
                known = self.models.get(name)
                if known is not None and known.digest == entry.get("digest"):
                    models[name] = known
                elif name and (model := await self._describe(name, entry)) is not None:
                    models[name] = model
        except (
            Unreachable,
            _Status,
            TimeoutError,
            orjson.JSONDecodeError,
            AttributeError,
            TypeError,
            ValueError,
        ) as exc:
            # Unreachable, or answering what is not Ollama's API: either way not usable.
            self._set_available(False, f"{type(exc).__name__}: {exc}")
            return False
        self._set_models(models)
        self._set_available(True, "")
        return True

    def _set_models(self, models: dict[str, LocalModel]) -> None:
        self.models = models
        # Built once per refresh, read on every request's route decision.
        self.contexts = {name: m.context_length for name, m in models.items()}
        self.thinkers = {name for name, m in models.items() if m.thinking}
        for alias, target in self.config.aliases.items():
            model = self.model(target)
            if model is not None:
                self.contexts[alias] = model.context_length
                if model.thinking:
                    self.thinkers.add(alias)

    async def _describe(self, name: str, tag: dict[str, Any]) -> LocalModel | None:
        try:
            show = await self._post_json("/api/show", {"model": name})
        except _Status as exc:  # deleted since the listing, or unreadable
            log.warning("local_model_skipped", model=name, why=f"/api/show answered {exc.status}")
            return None
        info = show.get("model_info") or {}
        trained = next((int(v) for k, v in info.items() if k.endswith(".context_length")), None)
        configured = _num_ctx(str(show.get("parameters") or ""))
        context = self.config.num_ctx or configured or trained
        if context is None:
            log.warning("local_model_skipped", model=name, why="no context length in /api/show")
            return None
        if trained is not None:
            context = min(context, trained)
        return LocalModel(
            name=name,
            context_length=context,
            thinking="thinking" in (show.get("capabilities") or []),
            digest=str(tag.get("digest") or ""),
            tag=tag,
        )

    def _set_available(self, up: bool, why: str) -> None:
        self.down_reason = why
        if up == self.available:
            return
        self.available = up
        if up:
            log.info("local_engine_up", url=self.config.url, models=sorted(self.models))
            self._warm_soon()
        else:
            self.warm = False
            log.warning("local_engine_down", url=self.config.url, error=why)

    async def _refresh_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_warm = loop.time()
        while True:
            await asyncio.sleep(self.config.refresh_seconds)
            await self.refresh()
            due = loop.time() - last_warm >= self.config.warm_interval_seconds
            if self.available and (due or not self.warm):
                last_warm = loop.time()
                self._warm_soon()

    def _warm_soon(self) -> None:
        if self.config.model and (self._warming is None or self._warming.done()):
            self._warming = asyncio.create_task(self._warm(self.config.model), name="ollama-warm")

    async def _warm(self, model: str) -> None:
        """Loads `model` (if it is not) and renews its keep_alive: an empty generate."""
        local = self.model(model)
        if local is None:
            self._warm_failed(model, "the local Ollama does not have it")
            return
        # The same num_ctx as every request, or the first request would reload the model.
        body = wire.warm_body(local.name, self.settings(local))
        try:
            await self._post_json("/api/generate", body, total_s=self.config.timeout_seconds)
        except (Unreachable, _Status, TimeoutError, orjson.JSONDecodeError) as exc:
            self._warm_failed(model, f"{type(exc).__name__}: {exc}")
            return
        if not self.warm:
            log.info("local_model_warm", model=model, keep_alive=self.config.keep_alive)
        self.warm = True
        self._warm_error = ""

    def _warm_failed(self, model: str, error: str) -> None:
        self.warm = False
        if error != self._warm_error:  # retried every refresh: say it once, not every time
            log.warning("local_warm_failed", model=model, error=error)
        self._warm_error = error

    def settings(self, model: LocalModel | None, *, thinking: bool = False) -> wire.EngineSettings:
        """What every call to Ollama carries for `model`: keep_alive, num_ctx, sampling."""
        return wire.EngineSettings(
            keep_alive=self.config.keep_alive,
            num_ctx=model.context_length if model else self.config.num_ctx,
            sampling_defaults=self._sampling["thinking" if thinking else "non_thinking"],
        )

    # --- requests -------------------------------------------------------------------------------

    async def _get_json(self, path: str) -> dict[str, Any]:
        return await self._json("GET", path, b"", total_s=self.config.connect_timeout_seconds * 2)

    async def _post_json(
        self, path: str, body: dict[str, Any], *, total_s: float | None = None
    ) -> dict[str, Any]:
        total = total_s or self.config.connect_timeout_seconds * 2
        return await self._json("POST", path, orjson.dumps(body), total_s=total)

    async def _json(self, method: str, path: str, body: bytes, *, total_s: float) -> dict[str, Any]:
        assert self._started, "LocalEngine.start() was not awaited"
        cfg = self.config
        resp = await self._transport.request(
            method,
            cfg.url + path,
            body,
            _JSON if body else None,
            tls=cfg.tls,
            connect_s=cfg.connect_timeout_seconds,
            total_s=total_s,
        )
        try:
            if resp.status != 200:
                raise _Status(path, resp.status)
            return _object(await resp.read())
        finally:
            resp.release()

    async def exchange(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, runs_model: bool = False
    ) -> tuple[int, bytes]:
        """One call to the local Ollama's own API, its answer read whole: (status, body).

        For what the edge passes through (`/api/ps`, `/api/show`, embeddings, load, unload).
        A call that `runs_model` takes a place in Ollama's queue like a chat: it counts in
        `in_flight` and gets the whole-call timeout; the others get the listing's timeout.
        Raises `LocalUnavailable` when Ollama cannot be reached or does not answer in time.
        """
        assert self._started, "LocalEngine.start() was not awaited"
        cfg = self.config
        total = cfg.timeout_seconds if runs_model else cfg.connect_timeout_seconds * 2
        if runs_model:
            self.in_flight += 1
        try:
            resp = await self._transport.request(
                method,
                cfg.url + path,
                orjson.dumps(body) if body is not None else None,
                _JSON if body is not None else None,
                tls=cfg.tls,
                connect_s=cfg.connect_timeout_seconds,
                total_s=total,
            )
            try:
                return resp.status, await resp.read()
            finally:
                resp.release()
        except TimeoutError:
            raise self._down(f"{path} got no answer within {total:g}s") from None
        except Unreachable as exc:
            raise self._down(str(exc)) from None
        finally:
            if runs_model:
                self.in_flight -= 1

    def load_body(self, model: LocalModel, *, unload: bool) -> dict[str, Any]:
        """An empty `/api/generate` that loads `model` as every call of the edge does (its
        keep_alive and num_ctx, so nothing reloads it), or unloads it (keep_alive 0)."""
        if unload:
            return {"model": model.name, "keep_alive": 0, "stream": False}
        return wire.warm_body(model.name, self.settings(model))

    async def stream(self, path: str, body: dict[str, Any]) -> LocalStream:
        """Sends a chat or generate body and waits for the first chunks.

        Raises `LocalUnavailable` (Ollama down or failing before any token: the caller may
        send the request elsewhere), `LocalRefused`, or `BadRequest` (the request is at fault).
        """
        assert self._started, "LocalEngine.start() was not awaited"
        cfg = self.config
        self.in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_flight -= 1

        try:
            try:
                resp = await self._transport.request(
                    "POST",
                    cfg.url + path,
                    orjson.dumps(body),
                    _JSON,
                    tls=cfg.tls,
                    connect_s=cfg.connect_timeout_seconds,
                    read_s=cfg.first_token_timeout_seconds,
                    total_s=cfg.timeout_seconds,
                )
            except TimeoutError:
                raise self._down(f"no answer within {cfg.first_token_timeout_seconds:g}s") from None
            except Unreachable as exc:
                raise self._down(str(exc)) from None
            if resp.status != 200:
                raise await _refusal(resp)
            rest = _chunks(resp)
            try:
                first = await anext(rest)
            except (_Broken, StopAsyncIteration) as exc:
                await rest.aclose()
                raise LocalUnavailable(f"the local Ollama failed before answering: {exc}") from None
        except BaseException:
            release()
            raise
        return LocalStream(first=first, _rest=rest, _release=release)

    def _down(self, why: str) -> LocalUnavailable:
        # Refused or silent: skip the engine until the refresh loop sees it answer again.
        self._set_available(False, why)
        return LocalUnavailable(f"the local Ollama at {self.config.url} is unavailable: {why}")


async def _refusal(resp: Response) -> Exception:
    try:
        raw = await resp.read()
    except (Unreachable, TimeoutError):
        raw = b""
    finally:
        resp.release()
    message = wire.engine_error_message(raw) or f"HTTP {resp.status}"
    if resp.status == 404:
        return LocalRefused(message, reason="model_unavailable")
    if resp.status in (429, 503):
        return LocalRefused(message, reason="saturated")
    if resp.status == 413:
        return PayloadTooLarge(message)
    if resp.status >= 500:
        return LocalUnavailable(f"the local Ollama failed (HTTP {resp.status}): {message}")
    return BadRequest(message)


async def _chunks(resp: Response) -> AsyncGenerator[list[Chunk], None]:
    """The stream's chunks, one list per read: every complete line that had arrived."""
    pending = b""
    done = False
    try:
        while data := await resp.readany():
            pending += data
            if b"\n" not in data:
                continue
            *lines, pending = pending.split(b"\n")
            batch, error = _parse(lines)
            if batch:
                done = batch[-1].final = batch[-1].finish_reason is not None
                if done and error is None:
                    await resp.drain()  # the chunked body's end: the connection is reused
                    yield batch
                    return
                yield batch
            if error is not None:
                raise _Broken(error)
        if pending.strip():
            batch, error = _parse([pending])
            if batch:
                done = batch[-1].final = batch[-1].finish_reason is not None
                yield batch
            if error is not None:
                raise _Broken(error)
        if not done:
            raise _Broken("the stream ended before its final object")
    except (Unreachable, TimeoutError) as exc:
        raise _Broken(f"{type(exc).__name__}: {exc}") from None
    finally:
        # Closing an unfinished answer drops the connection, which stops Ollama generating.
        if done:
            resp.release()
        else:
            resp.close()


def _parse(lines: list[bytes]) -> tuple[list[Chunk], str | None]:
    """The chunks of complete lines, and the error that ended them, if one did (the chunks
    before an error line still reach the caller)."""
    out = []
    for line in lines:
        if not line.strip():
            continue
        try:
            out.append(wire.engine_chunk(orjson.loads(line)))
        except wire.EngineError as exc:
            return out, str(exc)
        except orjson.JSONDecodeError:
            return out, f"not a JSON line: {line[:100]!r}"
    return out, None


def _object(raw: bytes) -> dict[str, Any]:
    parsed = orjson.loads(raw)
    if not isinstance(parsed, dict):
        raise orjson.JSONDecodeError("not a JSON object", raw.decode("utf-8", "replace"), 0)
    return parsed


def _num_ctx(parameters: str) -> int | None:
    """`num_ctx` from `/api/show`'s parameters text (one `name value` per line), if set."""
    for line in parameters.splitlines():
        key, _, value = line.strip().partition(" ")
        if key == "num_ctx":
            with contextlib.suppress(ValueError):
                return int(value.strip())
    return None
