"""The connection to shared state: an async Redis client built from configuration, and a record
of whether Redis is reachable right now.

Redis makes Tandem scale; it must never be what makes it fail. Every Redis call of the gateway
goes through `RedisState.run`: when Redis fails (refused, reset, timed out) the state is marked
degraded, the caller gets `StateUnavailable` and falls back to local state, and further calls
fail fast without touching the network until a background probe finds Redis again. Each
transition is logged once and shown by the `state_degraded` gauge.

Plain Redis, TLS (`rediss://`, with a CA and a client certificate from `redis.tls`) and Redis
Cluster (`redis.cluster: true`; keys that must be updated together share a `{hash tag}`) are
chosen by configuration alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from gateway.config import Redis as RedisConfig
from tandem.logs import get_logger, outside_requests
from tandem.metrics import Metrics

log = get_logger("tandem.gateway.state")

T = TypeVar("T")

Client = aioredis.Redis | RedisCluster

# What a dead, restarting or partitioned Redis raises (redis-py wraps most socket errors, not all).
FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


def text(value: object) -> str:
    """A Redis reply as text (replies are bytes: the client does not decode them)."""
    return value.decode() if isinstance(value, bytes) else str(value)


class StateUnavailable(Exception):
    """Shared state (Redis) cannot be reached now; the caller falls back to local state."""


def tls_kwargs(config: RedisConfig) -> dict[str, Any]:
    """redis-py's TLS settings from `redis.tls` (for our client and litellm's Redis cache alike);
    TLS itself is switched on by a `rediss://` URL."""
    tls = config.tls
    if tls is None:
        return {}
    kwargs: dict[str, Any] = {"ssl_check_hostname": tls.check_hostname}
    if tls.ca_file:
        kwargs["ssl_ca_certs"] = str(tls.ca_file)
    if tls.cert_file:
        kwargs["ssl_certfile"] = str(tls.cert_file)
    if tls.key_file:
        kwargs["ssl_keyfile"] = str(tls.key_file)
    return kwargs


def client_kwargs(config: RedisConfig) -> dict[str, Any]:
    """Connection settings for redis-py from the `redis` section."""
    kwargs: dict[str, Any] = {
        "socket_timeout": config.timeout_seconds,
        "socket_connect_timeout": config.timeout_seconds,
        **tls_kwargs(config),
    }
    password = config.password()
    if password:
        kwargs["password"] = password
    return kwargs


def build_client(config: RedisConfig) -> Client:
    """An async client for `config.url` (nothing connects until the first command)."""
    assert config.url is not None
    kwargs = client_kwargs(config)
    # One immediate reconnect (a pooled connection that died with a restarted server), no
    # backoff, and no second wait after a timeout: the gateway falls back to local state
    # rather than wait for Redis.
    kwargs["retry"] = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    if config.cluster:
        return RedisCluster.from_url(config.url, **kwargs)
    return aioredis.Redis.from_url(config.url, **kwargs)


def safe_url(url: str) -> str:
    """`url` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


class StateHealth:
    """Whether shared state is reachable. Flips `metrics.state_degraded` and logs each transition
    once (not once per failed request)."""

    def __init__(
        self, metrics: Metrics | None = None, *, log_transitions: bool = True, fallback: str = "local state"
    ) -> None:
        self._metrics = metrics
        self._log = log_transitions
        self._fallback = fallback  # what the gateway does meanwhile, for the log line
        self.degraded = False
        self.since = time.monotonic()
        self.transitions = 0

    def down(self, error: BaseException | str) -> None:
        if self.degraded:
            return
        self.degraded = True
        self.since = time.monotonic()
        self.transitions += 1
        if self._metrics is not None:
            self._metrics.state_degraded.set(1)
        detail = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        if self._log:
            outside_requests(log.warning, "state_degraded", error=detail, meanwhile=self._fallback)

    def up(self) -> None:
        if not self.degraded:
            return
        away = time.monotonic() - self.since
        self.degraded = False
        self.since = time.monotonic()
        self.transitions += 1
        if self._metrics is not None:
            self._metrics.state_degraded.set(0)
        if self._log:
            outside_requests(log.warning, "state_recovered", away_s=round(away, 3))


class Script:
    """A Lua script run by its SHA-1, loaded again when the server does not know it (a restarted
    Redis has an empty script cache)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, client: Client, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)

    async def many(self, client: Client, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> None:
        """Runs the script once per (keys, args): pipelined in one round trip on plain Redis,
        concurrently (each on its keys' node) on a cluster, whose pipelines refuse scripts."""
        if isinstance(client, RedisCluster):
            await asyncio.gather(*(self(client, keys, args) for keys, args in calls))
            return
        todo = list(calls)
        for attempt in range(2):
            pipe = client.pipeline(transaction=False)
            for keys, args in todo:
                pipe.evalsha(self.sha, len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
            failed = [e for e in results if isinstance(e, Exception) and not isinstance(e, NoScriptError)]
            if failed:
                raise failed[0]
            # Only the calls Redis did not know the script for are run again (no call twice).
            todo = [call for call, res in zip(todo, results, strict=True) if isinstance(res, NoScriptError)]
            if not todo:
                return
            if attempt:
                raise NoScriptError("the script was not loaded")
            await client.script_load(self.source)


class RedisState:
    """The gateway's Redis: a client, the key prefix, and the health every call reports to."""

    def __init__(self, config: RedisConfig, health: StateHealth, client: Client | None = None) -> None:
        assert config.url is not None
        self.config = config
        self.prefix = config.key_prefix
        self.health = health
        self.client = client if client is not None else build_client(config)
        self.where = safe_url(config.url)
        self._probe: asyncio.Task[None] | None = None

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def run(self, call: Callable[[Client], Awaitable[T]]) -> T:
        """`await call(client)`; `StateUnavailable` at once while degraded, or when it fails."""
        if self.health.degraded:
            raise StateUnavailable(f"shared state at {self.where} is unreachable")
        try:
            return await call(self.client)
        except FAILURES as exc:
            self.health.down(exc)
            self._start_probe()
            raise StateUnavailable(f"shared state at {self.where} is unreachable: {exc}") from None

    async def check(self) -> bool:
        """Pings Redis now; marks the state up or down accordingly."""
        try:
            await self.client.ping()
        except FAILURES as exc:
            self.health.down(exc)
            self._start_probe()
            return False
        self.health.up()
        return True

    def _start_probe(self) -> None:
        if self._probe is None or self._probe.done():
            with contextlib.suppress(RuntimeError):  # no running loop: a CLI's last call
                # A fresh context: the probe outlives the request that noticed the outage.
                self._probe = asyncio.get_running_loop().create_task(
                    self._probe_until_up(), context=contextvars.Context()
                )

    async def _probe_until_up(self) -> None:
        while self.health.degraded:
            await asyncio.sleep(self.config.probe_seconds)
            with contextlib.suppress(*FAILURES):
                await self.client.ping()
                self.health.up()

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        with contextlib.suppress(*FAILURES):
            await self.client.aclose()
