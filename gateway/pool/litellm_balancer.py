"""`Balancer` on litellm.Router: the only module in Tandem that imports litellm.

The gateway sends every upstream request itself; litellm's `acompletion` costs far more CPU per
call than the gateway's whole budget. From the Router we take its decisions only, through its
entry points (litellm 1.110, a facade over a Rust routing core):

- `select(group, request)` picks a deployment honouring cooldowns and the routing strategy;
  `_excluded_deployment_ids` in the request is the Router's own narrowing key (its weighted
  failover uses it), so `exclude` is honoured inside the strategy rather than by re-picking.
- `health().record_failure(id, error, status)` cools the deployment down by the Router's rules
  (5xx, 408/504, 429, 401/403/404, no answer at all; a 400-class error never cools an endpoint
  down). The Router counts failures per minute, which under load cools down every endpoint of
  a pool that fails a steady share of requests; so the balancer counts failures in a row
  itself (a success resets the count) and reports one to the Router, configured with
  `allowed_fails: 0`, only when the count passes `router.allowed_fails`. The cooldown itself
  (and with Redis, its sharing between replicas) stays the Router's. `cooldown_seconds: 0`
  turns cooldowns off (litellm would otherwise read 0 as "use the 5 s default").
- `sync_deployment_callback_on_success` counts the success, which litellm's failure-rate rule reads.
- the strategy's own selector learns from outcomes, as litellm's logging pipeline would have told
  it during `acompletion` (`_StrategyFeedback` below).

With `redis.url` set, cooldowns, failure counts and strategy state are shared through Redis
between gateway replicas (litellm's `redis_url` option), so deployment ids are derived from the
configuration alone and are the same in every replica.
"""

from __future__ import annotations

import os
import warnings

# Before litellm is imported: otherwise it fetches its model cost map (and other catalogs) from
# GitHub at import, retrying for seconds on an air-gapped machine. The operator may still
# override either variable.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
# pydantic tells litellm's authors, on every lazily built schema, that it does not enforce their
# TypedDicts' ReadOnly items; nothing an operator of the gateway can act on.
warnings.filterwarnings("ignore", message=r".* using the `ReadOnly` qualifier", category=UserWarning)

import contextlib  # noqa: E402
import importlib  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterable, Mapping  # noqa: E402
from datetime import datetime  # noqa: E402
from typing import Any, Protocol  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import httpx  # noqa: E402
import litellm  # noqa: E402
from litellm import Router  # noqa: E402
from litellm.router_api import fallback_chain  # noqa: E402
from litellm.types.router import Deployment, RouterRateLimitError  # noqa: E402

from gateway.config import GatewayConfig, Pool  # noqa: E402
from gateway.pool import Upstream, deployment_id  # noqa: E402
from gateway.pool.load import LoadScraper  # noqa: E402
from tandem.logs import adopt_library_loggers  # noqa: E402

_PROVIDER = "hosted_vllm"
# How long a read of litellm's cooldown store stands for simple-shuffle. A cooldown lasts
# seconds; an endpoint whose cooldown just ended rejoins this much later.
COOLING_VIEW_S = 0.1
# litellm wants a key string; an endpoint without one gets this, and the relay sends none.
_NO_KEY = "no-key"


def _quiet_litellm() -> None:
    """Nothing the gateway does not use: no logging callbacks, no debug banners, no message bodies
    in any log. Done once, at import, before any Router registers its strategy selectors."""
    litellm.suppress_debug_info = True
    litellm.turn_off_message_logging = True
    litellm.callbacks = []
    litellm.success_callback = []
    litellm.failure_callback = []
    litellm.input_callback = []
    litellm.service_callback = []
    litellm.set_verbose = False
    # litellm gives its loggers handlers of their own (plain text on stderr); its lines go
    # through the process's JSON pipeline and redaction instead.
    adopt_library_loggers("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")


_quiet_litellm()


class LitellmBalancer:
    """Chooses endpoints with litellm.Router's strategy and cooldowns; learns from reported outcomes.

    Use it on the gateway's event loop: a failure that cools an endpoint down makes litellm
    schedule its cooldown event as a task of the running loop.
    """

    def __init__(self, config: GatewayConfig) -> None:
        self._names: dict[str, str] = {}  # pool name or alias -> pool name
        self._pools: dict[str, tuple[Upstream, ...]] = {}
        self._by_id: dict[str, Upstream] = {}
        model_list: list[dict[str, Any]] = []
        for pool in config.pools:
            upstreams = tuple(_upstreams_of(pool, taken=self._by_id.keys()))
            self._pools[pool.name] = upstreams
            self._names.update(dict.fromkeys((pool.name, *pool.aliases), pool.name))
            for upstream, endpoint in zip(upstreams, pool.endpoints, strict=True):
                self._by_id[upstream.id] = upstream
                model_list.append(_deployment(upstream, weight=endpoint.weight))
        self._router = Router(**_router_arguments(config, model_list))
        self._health = self._router.health()
        self._cooldowns = self._health.cooldowns
        # least-loaded is Tandem's own choice over the same cooldown store as simple-shuffle.
        self._least_loaded = config.router.strategy == "least-loaded"
        self._shuffle = config.router.strategy in ("simple-shuffle", "least-loaded")
        self._load: LoadScraper | None = None
        self._in_flight: Mapping[str, int] = {}
        self._load_weights = config.router.least_loaded
        self._cooling_view: dict[str, tuple[float, frozenset[str]]] = {}  # pool -> (until, ids)
        self._weights = {
            u.id: e.weight
            for p in config.pools
            for u, e in zip(self._pools[p.name], p.endpoints, strict=True)
        }
        configured = self._router.settings().fallbacks or []
        self._fallbacks = {name: list(fallback_chain(configured, name)[0] or []) for name in self._pools}
        self._feedback = _feedback_for(self._router, config.router.strategy)
        self._allowed_fails = config.router.allowed_fails
        self._fails_in_a_row: dict[str, int] = {}  # endpoint id -> failures since its last success
        if self._by_id:
            _warm_up(self._router, next(iter(self._by_id.values())))

    async def choose(
        self, pool: str, *, exclude: frozenset[str] = frozenset(), ignore_cooldowns: bool = False
    ) -> Upstream | None:
        """An endpoint of `pool` that is not cooling down and not in `exclude`; None when none is.
        With `ignore_cooldowns`, a weighted random pick among all those not in `exclude`."""
        name = self._names.get(pool)
        if name is None:
            return None
        if ignore_cooldowns:
            return self._any_choice(name, exclude)
        ids = [u.id for u in self._pools[name] if u.id in exclude]
        if len(ids) == len(self._pools[name]):
            return None
        if self._shuffle:
            return await self._shuffle_choice(name, exclude)
        request: dict[str, object] = {"_excluded_deployment_ids": ids} if ids else {}
        try:
            deployment = await self._router.select(name, request)
        except (RouterRateLimitError, litellm.RateLimitError):  # all cooling down, or over their limits
            return None
        upstream = self._by_id[str(deployment["model_info"]["id"])]
        self._feedback.started(upstream)
        return upstream

    async def _shuffle_choice(self, pool: str, exclude: frozenset[str]) -> Upstream | None:
        """simple-shuffle without `select`: the same weighted random pick among the endpoints
        litellm's cooldown store does not hold, at ~16 us instead of ~215 us of CPU (`select`
        runs the Rust core's whole pre-routing pipeline for a choice that needs none of it)."""
        cooling = await self._cooling(pool)
        healthy = [u for u in self._pools[pool] if u.id not in exclude and u.id not in cooling]
        if not healthy:
            return None
        if len(healthy) == 1:
            return healthy[0]
        if self._least_loaded and self._load is not None:
            return self._least_loaded_choice(healthy, self._load)
        return random.choices(healthy, weights=[self._weights[u.id] for u in healthy])[0]

    def _least_loaded_choice(self, healthy: list[Upstream], load: LoadScraper) -> Upstream:
        """The endpoint with the lowest score (engine queue, batch and KV cache from its last
        /metrics reading, plus the gateway's requests in flight to it); ties broken at random,
        so equal engines share the work."""
        scores = load.scores(self._in_flight, self._load_weights, (u.id for u in healthy))
        best = min(scores.values())
        return random.choice([u for u in healthy if scores[u.id] <= best])

    def _any_choice(self, pool: str, exclude: frozenset[str]) -> Upstream | None:
        """The last resort when every endpoint left is cooling down: any of them, by weight."""
        candidates = [u for u in self._pools[pool] if u.id not in exclude]
        if not candidates:
            return None
        upstream = random.choices(candidates, weights=[self._weights[u.id] for u in candidates])[0]
        self._feedback.started(upstream)
        return upstream

    async def cooling(self, pool: str) -> frozenset[str]:
        """The ids of `pool`'s endpoints cooling down now (as `choose` sees them)."""
        name = self._names.get(pool)
        return frozenset() if name is None else await self._cooling(name)

    async def _cooling(self, pool: str) -> frozenset[str]:
        """The endpoints of `pool` in litellm's cooldown store, read at most every
        `COOLING_VIEW_S` (each read costs ~30 us of litellm's bookkeeping; under load that is
        thousands a second). A cooldown set here drops the view at once; cooldowns set by
        another replica arrive through litellm's own local view of Redis, itself a cache."""
        now = time.monotonic()
        view = self._cooling_view.get(pool)
        if view is not None and now < view[0]:
            return view[1]
        ids = [u.id for u in self._pools[pool]]
        cooling = frozenset(id for id, _ in await self._cooldowns.async_get_active_cooldowns(ids, None))
        self._cooling_view[pool] = (now + COOLING_VIEW_S, cooling)
        return cooling

    def succeeded(self, upstream: Upstream, *, latency_s: float) -> None:
        """Reports a request that got its answer (or first token) from `upstream`."""
        self._router.sync_deployment_callback_on_success(_call(upstream), None, None, None)
        self._feedback.succeeded(upstream, latency_s)
        if self._fails_in_a_row:
            self._fails_in_a_row.pop(upstream.id, None)

    def failed(self, upstream: Upstream, *, status: int | None, error: str) -> None:
        """Reports an attempt that failed through the endpoint's fault; the failure after
        `allowed_fails` in a row cools the endpoint down (by litellm's rules for its status)."""
        self._feedback.failed(upstream)
        in_a_row = self._fails_in_a_row.get(upstream.id, 0) + 1
        if in_a_row <= self._allowed_fails:
            self._fails_in_a_row[upstream.id] = in_a_row
            return
        self._fails_in_a_row.pop(upstream.id, None)
        code = _failure_status(status)
        self._health.record_failure(upstream.id, _litellm_error(upstream, code, error), code)
        self._cooling_view.clear()

    def rejected(self, upstream: Upstream) -> None:
        """Reports an attempt refused because of the request itself: not counted against the
        endpoint (no failure, no cooldown); the strategy only learns that the attempt ended."""
        self._feedback.failed(upstream)

    def attach_load(self, load: LoadScraper, in_flight: Mapping[str, int]) -> None:
        """Live engine load and the gateway's in-flight counts, for the least-loaded strategy."""
        self._load = load
        self._in_flight = in_flight

    def add_upstream(self, upstream: Upstream, *, weight: int = 1) -> None:
        """An endpoint that joined its pool (discovered): chosen from the next request on."""
        if upstream.id in self._by_id:
            return
        self._router.add_deployment(Deployment(**_deployment(upstream, weight=weight)))
        self._by_id[upstream.id] = upstream
        self._weights[upstream.id] = weight
        self._pools[upstream.pool] = (*self._pools.get(upstream.pool, ()), upstream)
        self._cooling_view.pop(upstream.pool, None)

    def remove_upstream(self, upstream_id: str) -> None:
        """An endpoint that left its pool: no new requests; those in flight finish on it."""
        upstream = self._by_id.pop(upstream_id, None)
        if upstream is None:
            return
        self._router.delete_deployment(upstream_id)
        self._weights.pop(upstream_id, None)
        self._fails_in_a_row.pop(upstream_id, None)
        self._pools[upstream.pool] = tuple(u for u in self._pools[upstream.pool] if u.id != upstream_id)
        self._cooling_view.pop(upstream.pool, None)

    def fallbacks(self, pool: str) -> list[str]:
        """Pools to try, in order, when every endpoint of `pool` failed."""
        name = self._names.get(pool)
        return list(self._fallbacks.get(name, ())) if name else []

    def upstreams(self, pool: str) -> list[Upstream]:
        """Every endpoint of `pool` (for health probes and metrics)."""
        name = self._names.get(pool)
        return list(self._pools[name]) if name else []

    def close(self) -> None:
        """Releases the Router's process-wide registrations (its strategy selectors in litellm's
        callback lists)."""
        self._router.retire()


# -- building the Router --------------------------------------------------------------------------


def _upstreams_of(pool: Pool, *, taken: Iterable[str]) -> list[Upstream]:
    made: list[Upstream] = []
    used = set(taken)
    for endpoint in pool.endpoints:
        base = deployment_id(pool.name, endpoint.url)
        id, n = base, 1
        while id in used:  # the same URL twice in a pool (another served model, or a repeat)
            n += 1
            id = f"{base}~{n}"
        used.add(id)
        made.append(
            Upstream(
                id=id,
                pool=pool.name,
                base_url=endpoint.url,
                model=endpoint.model,
                api_key=endpoint.api_key(),
                tls=endpoint.tls,
                max_concurrency=endpoint.max_concurrency,
                context_length=pool.context_length,
                kind=endpoint.kind,
            )
        )
    return made


def _deployment(upstream: Upstream, *, weight: int) -> dict[str, Any]:
    return {
        "model_name": upstream.pool,
        "litellm_params": {
            "model": f"{_PROVIDER}/{upstream.model}",
            "api_base": upstream.base_url,
            "api_key": upstream.api_key or _NO_KEY,
            # A concurrency limit, not a rate: litellm enforces it only around its own calls, the
            # relay enforces it for ours. No rpm/tpm: the gateway configures neither.
            "max_parallel_requests": upstream.max_concurrency,
            "weight": weight,
        },
        "model_info": {"id": upstream.id},
    }


def _router_arguments(config: GatewayConfig, model_list: list[dict[str, Any]]) -> dict[str, Any]:
    router = config.router
    arguments: dict[str, Any] = {
        "model_list": model_list,
        "routing_strategy": "simple-shuffle" if router.strategy == "least-loaded" else router.strategy,
        "num_retries": router.num_retries,
        # The balancer counts failures in a row and reports only the one that cools down.
        "allowed_fails": 0,
        "fallbacks": [{p.name: list(p.fallbacks)} for p in config.pools if p.fallbacks],
    }
    if router.cooldown_seconds > 0:
        arguments["cooldown_time"] = router.cooldown_seconds
    else:
        arguments["disable_cooldowns"] = True
    arguments.update(_redis_arguments(config))
    return arguments


def _redis_arguments(config: GatewayConfig) -> dict[str, Any]:
    """litellm's Redis settings from the same `redis` section as the rest of the shared state."""
    from gateway.state.redis_conn import tls_kwargs

    redis = config.redis
    if redis.url is None:
        return {}
    parts = urlsplit(redis.url)
    arguments: dict[str, Any] = {"redis_url": redis.url}
    cache_kwargs = tls_kwargs(redis)
    if cache_kwargs and not redis.cluster:
        # litellm drops every ssl_* setting given with a URL (TLS comes from the scheme alone),
        # so a private CA or a client certificate travels with host and port instead.
        arguments = {"redis_host": parts.hostname or "127.0.0.1", "redis_port": parts.port or 6379}
        if parts.path.strip("/"):
            arguments["redis_db"] = int(parts.path.strip("/"))
        cache_kwargs["ssl"] = parts.scheme == "rediss"
        if parts.username:
            cache_kwargs["username"] = parts.username
    password = redis.password() or parts.password
    if password:
        arguments["redis_password"] = password
    if redis.cluster:
        cache_kwargs["startup_nodes"] = [{"host": parts.hostname or "127.0.0.1", "port": parts.port or 6379}]
        if parts.scheme == "rediss":
            cache_kwargs["ssl"] = True  # with startup nodes, litellm reads TLS from this, not the URL
    if cache_kwargs:
        arguments["cache_kwargs"] = cache_kwargs
    return arguments


# Modules litellm imports on first use, on the request path: the first pick's tracing span
# (OpenTelemetry SDK), the first failure report (a provider module, with a burst of pydantic
# UserWarnings) and the first cooldown's event (Prometheus integration).
_LAZY_MODULES = (
    "litellm.integrations.otel.logger",
    "litellm.llms.github_copilot.per_user_auth",
    "litellm.integrations.prometheus",
)


def _warm_up(router: Router, upstream: Upstream) -> None:
    """Does at start-up what litellm would do lazily on the first requests, each a stall of the
    event loop of 0.1-0.5 s: its failure classification imports FastAPI (through its guardrail
    check), and some modules load on first use. Records nothing."""
    router.settings().allowed_fails_for(_litellm_error(upstream, 503, "warm-up"))
    for module in _LAZY_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)


# -- reporting outcomes ---------------------------------------------------------------------------


def _call(upstream: Upstream) -> dict[str, Any]:
    """The logging kwargs litellm's outcome callbacks read: the model group and deployment id."""
    return {"litellm_params": {"metadata": {"model_group": upstream.pool}, "model_info": {"id": upstream.id}}}


_REQUEST = httpx.Request("POST", "http://upstream.invalid/v1/chat/completions")

# The litellm exception each HTTP status maps to; litellm's cooldown rules read its class.
_BY_STATUS: Mapping[int, Callable[..., Exception]] = {
    401: litellm.AuthenticationError,
    403: litellm.PermissionDeniedError,
    404: litellm.NotFoundError,
    429: litellm.RateLimitError,
    500: litellm.InternalServerError,
    502: litellm.BadGatewayError,
    503: litellm.ServiceUnavailableError,
}


def _failure_status(status: int | None) -> int:
    """No answer at all (refused, reset, timed out before the headers) reads as 503, not as
    litellm's APIConnectionError, which never cools a deployment down; a 2xx/3xx answer that
    failed later (an error mid-stream) reads as 500."""
    if status is None:
        return 503
    return 500 if status < 400 else status


def _litellm_error(upstream: Upstream, status: int, error: str) -> Exception:
    """The failure as the exception litellm would have raised for it."""
    if status in (408, 504):
        return litellm.Timeout(
            message=error, model=upstream.model, llm_provider=_PROVIDER, exception_status_code=status
        )
    response = httpx.Response(status, request=_REQUEST)
    kind = _BY_STATUS.get(status)
    if kind is not None:
        return kind(message=error, llm_provider=_PROVIDER, model=upstream.model, response=response)
    if status < 500:
        return litellm.BadRequestError(
            message=error, model=upstream.model, llm_provider=_PROVIDER, response=response
        )
    return litellm.APIError(
        status_code=status, message=error, llm_provider=_PROVIDER, model=upstream.model, request=_REQUEST
    )


# -- strategies that learn ------------------------------------------------------------------------


class _StrategyFeedback(Protocol):
    """What a routing strategy learns from each attempt, beyond cooldowns."""

    def started(self, upstream: Upstream) -> None: ...

    def succeeded(self, upstream: Upstream, latency_s: float) -> None: ...

    def failed(self, upstream: Upstream) -> None: ...


class _NoFeedback:
    """simple-shuffle, and usage-based-routing-v2: it ranks by tokens per minute, which the gateway
    does not report (the interface carries latency only), so it only spreads like a shuffle."""

    def started(self, upstream: Upstream) -> None:
        pass

    def succeeded(self, upstream: Upstream, latency_s: float) -> None:
        pass

    def failed(self, upstream: Upstream) -> None:
        pass


class _LeastBusyFeedback(_NoFeedback):
    """least-busy: an attempt is in flight from `choose` until its outcome is reported."""

    def __init__(self, selector: Any) -> None:
        self._selector = selector

    def started(self, upstream: Upstream) -> None:
        self._selector.log_pre_api_call(upstream.pool, None, _call(upstream))

    def succeeded(self, upstream: Upstream, latency_s: float) -> None:
        self._selector.log_success_event(_call(upstream), None, None, None)

    def failed(self, upstream: Upstream) -> None:
        self._selector.log_failure_event(_call(upstream), None, None, None)


# Keys of a deployment's entry in the latency map that are not per-minute usage.
_LATENCY_SAMPLES = frozenset({"latency_normalized", "time_to_first_token_seconds"})


class _LatencyFeedback(_NoFeedback):
    """latency-based-routing: each success adds a latency sample. The selector also keeps a usage
    entry per deployment per minute and never drops old ones, so its map (read on every pick)
    grows all day; stale minutes are trimmed once a minute."""

    def __init__(self, selector: Any, store: Any) -> None:
        self._selector = selector
        self._store = store
        self._trimmed_at: dict[str, float] = {}

    def succeeded(self, upstream: Upstream, latency_s: float) -> None:
        self._selector.log_success_event(_call(upstream), None, 0.0, latency_s)
        now = time.monotonic()
        if now - self._trimmed_at.get(upstream.pool, 0.0) >= 60.0:
            self._trimmed_at[upstream.pool] = now
            self._trim(f"{upstream.pool}_map")

    def _trim(self, key: str) -> None:
        samples = self._store.get_cache(key=key)
        if not isinstance(samples, dict):
            return
        minute = datetime.now().strftime("%Y-%m-%d-%H-%M")  # the selector's own key format
        for entry in samples.values():
            for stale in [k for k in entry if k not in _LATENCY_SAMPLES and k != minute]:
                del entry[stale]
        self._store.set_cache(key=key, value=samples, ttl=self._selector.routing_args.ttl)


def _feedback_for(router: Router, strategy: str) -> _StrategyFeedback:
    if strategy == "least-busy":
        return _LeastBusyFeedback(router.leastbusy_logger)
    if strategy == "latency-based-routing":
        return _LatencyFeedback(router.lowestlatency_logger, router.health().store)
    return _NoFeedback()


__all__ = ["LitellmBalancer"]
