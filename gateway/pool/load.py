"""Each engine's live load, read from its Prometheus `/metrics`, and a least-loaded score from it.

Part of the elastic pool (docs/elastic-pool.md): the `least-loaded` strategy's input.

`LoadScraper` reads every endpoint's `/metrics` every `interval_seconds` (all endpoints at
once, each bounded by `timeout_seconds`) over the process's one `Transport`, and keeps per
endpoint what a router needs from vLLM:

- `vllm:num_requests_waiting`: requests queued for a decode slot or for KV-cache room;
- `vllm:num_requests_running`: requests in the decode batch;
- KV-cache use, 0..1: `vllm:kv_cache_usage_perc` (vLLM's V1 engine, 0.10 on, and the
  simulator), or `vllm:gpu_cache_usage_perc` (the V0 name, deprecated in 0.10 and since
  removed); whichever is there.

Series are filtered by the endpoint's served model (`model_name` label) when the page labels
them; with several engines behind one server (data parallel, label `engine`) the counts are
summed and the cache use averaged. A page that cannot be read or parsed, or lacks the counts,
leaves the last good reading in place (logged once per endpoint until it reads again); a reading
older than `stale_after_intervals` intervals is not used, and `score` falls back to the
gateway's own in-flight count.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from prometheus_client.parser import text_string_to_metric_families
from pydantic import Field, model_validator
from yarl import URL

from tandem.configfile import Section
from tandem.logs import get_logger
from tandem.transport import ClientTLS, Transport, Unreachable

log = get_logger("tandem.gateway.load")

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # current name first
_WANTED = (WAITING, RUNNING, *KV_USAGE)
_MAX_BODY = 8 * 1024 * 1024  # a real vLLM page is ~100 KB; anything near this is not one


class LoadScrape(Section):
    """How often and how patiently engines' `/metrics` are read."""

    interval_seconds: float = Field(1.0, ge=0.1, le=60, description="read every endpoint this often")
    timeout_seconds: float = Field(0.5, gt=0, le=30, description="give up on one read after this long")
    stale_after_intervals: int = Field(
        3, ge=1, le=100, description="ignore a reading older than this many intervals"
    )

    @model_validator(mode="after")
    def _timeout_fits(self) -> LoadScrape:
        if self.timeout_seconds > self.interval_seconds:
            raise ValueError("timeout_seconds must not exceed interval_seconds (reads would pile up)")
        return self


class LeastLoadedWeights(Section):
    """Weights of the least-loaded score (see `score`), in units of one request in flight."""

    waiting: float = Field(1.0, ge=0, description="extra, per request queued at the engine")
    kv_usage: float = Field(4.0, ge=0, description="for a full KV cache (scaled by its use, 0..1)")


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """One good reading of an engine's `/metrics`."""

    waiting: float
    running: float
    kv_usage: float  # 0..1
    read_at: float  # the event loop's clock (`loop.time()`)
    own_at_read: int = 0  # the gateway's own requests in flight to the engine when it was read


@dataclass(frozen=True, slots=True)
class ScrapeTarget:
    """An endpoint to read: its `/metrics` URL, its served model (to pick its series), its TLS."""

    metrics_url: str
    model: str | None = None
    tls: ClientTLS | None = None


def metrics_url(base_url: str) -> str:
    """Where an engine with OpenAI base URL `base_url` (`http://h:8000/v1`) serves `/metrics`."""
    return str(URL(base_url).origin().with_path("/metrics"))


class MalformedMetrics(ValueError):
    """A `/metrics` page that is not Prometheus text, or lacks the request counts."""


def parse_load(text: str, model: str | None, read_at: float) -> EngineLoad:
    """The load in a Prometheus text page, for `model`'s series when they are labelled.

    Only the lines of the wanted families go to prometheus_client's parser: a vLLM page is
    mostly histogram buckets, and parsing them all every second per endpoint would cost more
    than the rest of the scrape.
    """
    lines = [line for line in text.splitlines() if _wanted(line)]
    values: dict[str, list[float]] = {}
    try:
        for family in text_string_to_metric_families("\n".join(lines) + "\n"):
            for sample in family.samples:
                if sample.name not in _WANTED:
                    continue
                labelled = sample.labels.get("model_name")
                if model is not None and labelled is not None and labelled != model:
                    continue
                values.setdefault(sample.name, []).append(float(sample.value))
    except ValueError as exc:
        raise MalformedMetrics(f"not Prometheus text: {exc}") from None
    if WAITING not in values or RUNNING not in values:
        raise MalformedMetrics(f"no {WAITING} and {RUNNING}" + (f" for model {model}" if model else ""))
    kv = next((values[name] for name in KV_USAGE if name in values), [0.0])
    return EngineLoad(
        waiting=sum(values[WAITING]),
        running=sum(values[RUNNING]),
        kv_usage=min(1.0, max(0.0, sum(kv) / len(kv))),
        read_at=read_at,
    )


def _wanted(line: str) -> bool:
    if line.startswith("#"):
        parts = line.split(maxsplit=3)
        return len(parts) >= 3 and parts[1] in ("HELP", "TYPE") and parts[2] in _WANTED
    name = line.split("{", 1)[0].split(" ", 1)[0]
    return name in _WANTED


def score(load: EngineLoad | None, in_flight: int, weights: LeastLoadedWeights) -> float:
    """How loaded an endpoint is; the least-loaded strategy picks the lowest.

    `load` is a fresh reading (None when there is none, or it is stale); `in_flight` is the
    gateway's own requests to that endpoint now. With a reading:

        in_flight + others + waiting * W_waiting + kv_usage * W_kv
        others = max(0, waiting + running - own_at_read)

    The gateway's own requests are counted from its live count, never from the reading: a
    reading is up to an interval old, and a score that took the gateway's own work from it
    would send everything to whichever engine looked idle at the last read until the next one
    (herding; measured in bench/pool_strategies.py before this form). What the reading adds is
    what only the engine knows: requests from *others* (other gateway replicas, batch workers,
    direct clients), taken as its total less the gateway's own at the time of the read, which
    change slowly; queueing (`waiting` > 0: the engine is at its batch or KV limit, and a new
    request waits for a slot, so a queued request counts extra); and a KV cache near full
    (vLLM queues and preempts before `waiting` shows it).

    Without a reading the score is the gateway's own in-flight count, the same scale.
    """
    if load is None:
        return float(in_flight)
    others = max(0.0, load.waiting + load.running - load.own_at_read)
    return in_flight + others + load.waiting * weights.waiting + load.kv_usage * weights.kv_usage


class LoadScraper:
    """Reads every target's `/metrics` every interval and keeps the last good reading of each.

    Targets are keyed by the caller's endpoint id; `set_targets` replaces them (endpoints
    discovered or removed), keeping the readings of those that stay.
    """

    def __init__(
        self,
        transport: Transport,
        config: LoadScrape | None = None,
        own: Mapping[str, int] | None = None,
    ) -> None:
        """`own`: the gateway's requests in flight per endpoint, read when each page arrives
        (`EngineLoad.own_at_read`), so that `score` can tell the gateway's work from others'."""
        self.config = config or LoadScrape()
        self._transport = transport
        self._own: Mapping[str, int] = own if own is not None else {}
        self._targets: dict[str, ScrapeTarget] = {}
        self._loads: dict[str, EngineLoad] = {}
        self._failing: dict[str, str] = {}  # endpoint id -> why its last read failed
        self._task: asyncio.Task[None] | None = None

    def set_targets(self, targets: Mapping[str, ScrapeTarget]) -> None:
        self._targets = dict(targets)
        for gone in set(self._loads) - set(targets):
            del self._loads[gone]
        for gone in set(self._failing) - set(targets):
            del self._failing[gone]

    def load(self, endpoint: str, now: float | None = None) -> EngineLoad | None:
        """The endpoint's last good reading, or None when there is none or it is stale."""
        reading = self._loads.get(endpoint)
        if reading is None:
            return None
        now = asyncio.get_running_loop().time() if now is None else now
        if now - reading.read_at > self.config.stale_after_intervals * self.config.interval_seconds:
            return None
        return reading

    def scores(
        self,
        in_flight: Mapping[str, int],
        weights: LeastLoadedWeights,
        endpoints: Iterable[str] | None = None,
    ) -> dict[str, float]:
        """`score` of each endpoint (every target, or those named), given the gateway's in-flight counts."""
        now = asyncio.get_running_loop().time()
        names = self._targets if endpoints is None else endpoints
        return {e: score(self.load(e, now), in_flight.get(e, 0), weights) for e in names}

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="load-scraper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def scrape(self) -> None:
        """Reads every target once, all at once."""
        targets = list(self._targets.items())
        await asyncio.gather(*(self._scrape_one(name, target) for name, target in targets))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await self.scrape()
            # A fixed rate, not a fixed pause: a slow endpoint does not stretch the interval.
            next_at = max(next_at + self.config.interval_seconds, loop.time())
            await asyncio.sleep(next_at - loop.time())

    async def _scrape_one(self, name: str, target: ScrapeTarget) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.config.timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                response = await self._transport.request(
                    "GET", target.metrics_url, tls=target.tls, connect_s=timeout, total_s=timeout
                )
                try:
                    if response.status != 200:
                        raise MalformedMetrics(f"status {response.status}")
                    length = int(response.headers.get("Content-Length") or 0)
                    if length > _MAX_BODY:
                        raise MalformedMetrics(f"a {length}-byte page")
                    body = await response.read()
                    own = self._own.get(name, 0)  # as the engine counted when it wrote the page
                finally:
                    response.release()
            reading = replace(
                parse_load(body.decode("utf-8", "replace"), target.model, loop.time()), own_at_read=own
            )
        except (TimeoutError, Unreachable, MalformedMetrics, ValueError) as exc:
            self._failed(name, target, str(exc) or "no answer within the timeout")
            return
        if name not in self._targets:  # removed while it was being read
            return
        self._loads[name] = reading
        if self._failing.pop(name, None) is not None:
            log.warning("load_scrape_recovered", endpoint=name, url=target.metrics_url)

    def _failed(self, name: str, target: ScrapeTarget, why: str) -> None:
        if name not in self._failing and name in self._targets:
            log.warning(
                "load_scrape_failed",
                endpoint=name,
                url=target.metrics_url,
                error=why,
                note="its last reading is used until it is stale",
            )
        if name in self._targets:
            self._failing[name] = why
