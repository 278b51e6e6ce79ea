"""The gateway's configuration (one YAML file plus `TANDEM_*` overrides; see `configfile`).

Example:

    pools:
      - name: qwen3-14b                # the model name callers ask for
        context_length: 32768
        endpoints:
          - url: http://10.0.0.5:8000/v1
            model: Qwen/Qwen3-14B      # the name vLLM serves it under
            api_key_env: VLLM_API_KEY  # the key is read from this variable, never from the file
            max_concurrency: 64
            kind: vllm                 # or llama-cpp (docs/engines.md)
        fallbacks: [qwen3-32b]         # pools to try when every endpoint of this one failed
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.pool.discovery import DnsSource
from gateway.pool.load import LeastLoadedWeights, LoadScrape
from tandem.configfile import Section, load_config
from tandem.errors import ConfigError
from tandem.routing.classifier import Prefer
from tandem.tracing import TracingConfig
from tandem.transport import ClientTLS, HttpClient
from tandem.wire.dialects import EngineKind


class Listen(Section):
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)


class TLS(Section):
    """Server TLS; with `client_ca_file` the server requires client certificates (mTLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


class GrpcListen(Listen):
    port: int = Field(50051, ge=0, le=65535)
    tls: TLS | None = None
    # Keepalive pings keep long thinking streams alive through idle-cutting proxies.
    keepalive_seconds: float = Field(20.0, gt=0)


class HttpListen(Listen):
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # An SSE comment is sent when a stream has been silent this long (a long thinking phase
    # must not look like a dead connection to an idle proxy).
    sse_heartbeat_seconds: float = Field(10.0, gt=0)
    # Request bodies sent with Content-Encoding: only these are inflated (gzip, deflate); any
    # other encoding, and these when not listed, is refused with 415 before the body is read.
    accepted_encodings: list[Literal["gzip", "deflate"]] = Field(default_factory=list)
    # A compressed body may inflate to at most this many bytes (413 as soon as it passes).
    max_inflated_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # A connection that sends nothing this long (before its first request or between requests)
    # is closed; so is one whose request headers, once started, take longer than the second.
    idle_timeout_seconds: float = Field(60.0, gt=0)
    header_timeout_seconds: float = Field(15.0, gt=0)


class Endpoint(Section):
    """One vLLM server (OpenAI-compatible) in a pool."""

    url: str = Field(description="base URL including /v1, e.g. http://host:8000/v1")
    model: str = Field(description="the served model name on that server")
    api_key_env: str | None = Field(None, description="environment variable holding its API key")
    tls: ClientTLS | None = Field(
        None, description="for https://: CA bundle, client certificate (mTLS), verify"
    )
    max_concurrency: int = Field(64, ge=1)
    weight: int = Field(1, ge=1)
    # Which engine it is: the request body is mapped for its dialect (`tandem/wire/dialects.py`).
    kind: EngineKind = "vllm"

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/")

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class Discovery(DnsSource):
    """A pool's endpoints from DNS (a Kubernetes headless Service: one A/AAAA record per ready
    pod), each served as this template says."""

    model: str = Field(description="the served model name on every endpoint")
    api_key_env: str | None = Field(None, description="environment variable holding their API key")
    tls: ClientTLS | None = Field(None, description="for https: CA bundle, client certificate, verify")
    max_concurrency: int = Field(64, ge=1)
    weight: int = Field(1, ge=1)
    kind: EngineKind = "vllm"  # the engine on every endpoint (`tandem/wire/dialects.py`)

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class ColdStart(Section):
    """Holding requests while a pool has no ready endpoint (scaled to zero, or all failing)."""

    max_pending: int = Field(256, ge=1, description="requests held at most; more get 429")
    timeout_seconds: float = Field(300.0, gt=0, description="a held request waits this long, then 503")
    # What the pool takes to serve again from zero (a vLLM pod's scheduling, image start and
    # model load: about a minute for Qwen3-14B); edges are told the wait it leaves.
    expected_seconds: float = Field(60.0, ge=0, le=3600, description="expected time from zero to ready")


class Pool(Section):
    """A model group: one public model name served by one or more endpoints."""

    name: str = Field(min_length=1)
    aliases: list[str] = Field(default_factory=list)
    context_length: int = Field(32768, ge=256)
    # A fixed list, or `discovery` (endpoints that come and go); at least one of the two.
    endpoints: list[Endpoint] = Field(default_factory=list)
    discovery: Discovery | None = None
    # Without it, a request to a pool with no ready endpoint fails at once (503).
    cold_start: ColdStart | None = None
    fallbacks: list[str] = Field(default_factory=list)
    # Where non-thinking work for this model goes; default: this pool with thinking off.
    non_thinking_pool: str | None = None
    # Qwen3 switches thinking per request; a pool of Qwen3-2507 Instruct/Thinking models cannot.
    supports_thinking_switch: bool = True
    # How the auto-mode classifier leans for requests to this pool (docs/routing.md, "prefer"):
    # `thinking` when a reasoning request answered fast costs more than GPU time, `fast` when
    # the GPUs are the scarce part.
    prefer: Prefer = Prefer.BALANCED

    @model_validator(mode="after")
    def _has_endpoints(self) -> Pool:
        if not self.endpoints and self.discovery is None:
            raise ValueError(f"pool {self.name!r} needs endpoints or discovery")
        return self


class Router(Section):
    """Retries, fallbacks and cooldowns (driven by litellm.Router)."""

    # litellm.Router's strategies, or Tandem's `least-loaded`: the endpoint whose engine reports
    # the least work (queue, batch, KV cache; scraped from its /metrics) plus the gateway's own
    # requests in flight to it.
    strategy: Literal[
        "simple-shuffle", "least-busy", "latency-based-routing", "usage-based-routing-v2", "least-loaded"
    ] = "simple-shuffle"
    load_scrape: LoadScrape = LoadScrape()  # for least-loaded
    least_loaded: LeastLoadedWeights = LeastLoadedWeights()
    num_retries: int = Field(2, ge=0, le=10)
    # Retries allowed while they stay under this share of the pool's requests in the last
    # `retry_budget_window_seconds` (plus `retry_budget_min_retries` per window): at 30% random
    # engine errors, each failure gets its retry; in an outage, retries add at most this share.
    retry_budget_ratio: float = Field(0.5, ge=0)
    retry_budget_min_retries: int = Field(10, ge=0)
    retry_budget_window_seconds: float = Field(10.0, gt=0)
    # Failures in a row (no success between) an endpoint may have; the next cools it down.
    allowed_fails: int = Field(3, ge=0)
    cooldown_seconds: float = Field(5.0, ge=0)
    connect_timeout_seconds: float = Field(3.0, gt=0)
    # Until the first token of a stream, or the first byte of a non-streamed answer.
    first_token_timeout_seconds: float = Field(60.0, gt=0)
    # Whole-request cap; thinking answers can be long.
    timeout_seconds: float = Field(600.0, gt=0)


class Streaming(Section):
    """How streamed answers are passed on (both faces; docs/gateway.md, "Streaming")."""

    # Tokens that arrive within this long of the last message sent go on together in the next
    # one: an engine writes every token on its own, and every message costs a send and a
    # wake-up at each hop (most on gRPC). The first token and the end are never held; 0 sends
    # each engine read as it comes.
    coalesce_ms: float = Field(100.0, ge=0, le=1000)


class Limits(Section):
    max_in_flight: int = Field(1024, ge=1, description="upstream requests in flight, all pools together")
    retry_after_seconds: float = Field(1.0, ge=0)
    # A tenant's concurrent-stream slot is a lease renewed while the stream runs; a replica that
    # dies without releasing its slots frees them within this time.
    stream_lease_seconds: float = Field(30.0, ge=1)


class RedisTLS(Section):
    """TLS for a `rediss://` URL: the CA to trust and, for mutual TLS, a client certificate."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    check_hostname: bool = True


class Redis(Section):
    url: str | None = Field(None, description="redis:// or rediss:// URL; none: in-memory state")
    password_env: str | None = Field(None, description="environment variable holding the password")
    cluster: bool = False
    tls: RedisTLS | None = None
    # Every key Tandem writes starts with this (several deployments can share one Redis).
    key_prefix: str = Field("tandem:", pattern=r"^[A-Za-z0-9_.:-]{0,64}$")
    # Per command: a slow Redis must not become a slow gateway.
    timeout_seconds: float = Field(0.25, gt=0)
    # While Redis is away, how often the gateway checks whether it has returned.
    probe_seconds: float = Field(1.0, gt=0)
    # While Redis is unreachable: "open" keeps serving, each replica enforcing tenant limits on
    # its own state; "closed" refuses requests of tenants that have limits (503).
    on_failure: Literal["open", "closed"] = "open"

    def password(self) -> str | None:
        return os.environ.get(self.password_env) if self.password_env else None


def _check_digest(digest: str) -> str:
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError("each entry must be a SHA-256 digest: 64 lowercase hex characters")
    return digest


class StaticEdgeKey(Section):
    """An edge agent's key, by digest: it may call `Heartbeat` (and forward work as its tenant)."""

    sha256: str
    edge: str = Field("", pattern=r"^[A-Za-z0-9_.:@-]{0,256}$", description="the edge id it reports; '': any")

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, v: str) -> str:
        return _check_digest(v)


class StaticTenant(Section):
    """A tenant for a gateway without Redis: its keys are given as SHA-256 hex digests only
    (`tandem gateway keys create --offline` prints a key and its digest); `edge_keys` are its
    edge agents' keys (`--offline --edge NAME`), `admin_key_sha256` its operators' keys, which
    may also read the ops page (`--offline --role admin`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    models: list[str] = Field(default_factory=list, description="allowed models; empty: all")
    rpm: int = Field(0, ge=0, description="requests per minute; 0: unlimited")
    tpm: int = Field(0, ge=0, description="tokens per minute; 0: unlimited")
    streams: int = Field(0, ge=0, description="concurrent requests; 0: unlimited")
    key_sha256: list[str] = Field(default_factory=list)
    edge_keys: list[StaticEdgeKey] = Field(default_factory=list)
    admin_key_sha256: list[str] = Field(default_factory=list, description="operators' keys: the ops page")

    @field_validator("key_sha256", "admin_key_sha256")
    @classmethod
    def _hex_digests(cls, v: list[str]) -> list[str]:
        return [_check_digest(digest) for digest in v]


class Auth(Section):
    """API keys per tenant (`Authorization: Bearer <key>` on HTTP; the same, or `x-api-key`, as
    gRPC metadata)."""

    # Unset: required under `tandem gateway serve`, off for an embedded gateway (`tandem up`,
    # tests), which has no keys to check.
    required: bool | None = None
    # How long a replica trusts what it learned about a key: a revoked key stops working on
    # every replica within this time.
    cache_seconds: float = Field(2.0, gt=0, le=60)
    tenants: list[StaticTenant] = Field(default_factory=list)


class Fleet(Section):
    # What the heartbeat reply tells edges; a heartbeat is forgotten after `ttl_seconds`.
    heartbeat_seconds: int = Field(10, ge=1, le=3600)
    ttl_seconds: float = Field(35.0, gt=0)


class Batch(Section):
    """The Batch API (`/v1/files`, `/v1/batches`; docs/batches.md): limits on what is stored, and
    how batch lines share the pools with interactive work. Needs `redis.url` (state and queue
    live in Redis)."""

    enabled: bool = True
    # Input files: bounded in size and lines (OpenAI's own limit is 50,000 requests).
    max_file_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_lines: int = Field(50_000, ge=1)
    # File bodies in Redis (none), or in this directory (shared by every replica, e.g. a volume).
    files_dir: Path | None = None
    max_active_batches: int = Field(16, ge=1, description="per tenant, not yet finished")
    # Every file is deleted this long after it was stored, and a finished batch's record this
    # long after it finished (OpenAI keeps batch files 30 days by default).
    retention_days: float = Field(30.0, gt=0)
    # Spare capacity only: batch lines may use at most `share` of a pool's endpoint concurrency,
    # never its last `reserve_slots` free slots, and none while interactive requests fill
    # `backoff_at` of it (then not for `backoff_seconds` after).
    share: float = Field(0.5, gt=0, le=1)
    reserve_slots: int = Field(2, ge=0)
    backoff_at: float = Field(0.5, gt=0, le=1)
    backoff_seconds: float = Field(1.0, ge=0)
    # Lines a pool starts per second at most (per replica): a batch ramps up instead of starting
    # all its lines in the same instant, and the lines' ends stay spread out.
    start_rate: float = Field(50.0, gt=0)
    # A line claimed by a replica that went silent this long is run again by another.
    claim_idle_seconds: float = Field(30.0, gt=0)
    max_attempts: int = Field(3, ge=1, description="per line, for engine failures")
    poll_seconds: float = Field(0.05, gt=0)
    sweep_seconds: float = Field(2.0, gt=0)
    # Batch work has its own Redis connections, with this per-command timeout: a slow batch
    # command (a large file) must neither fail nor mark the interactive path's state degraded.
    redis_timeout_seconds: float = Field(10.0, gt=0)


class GatewayConfig(Section):
    grpc: GrpcListen = GrpcListen()
    http: HttpListen = HttpListen()
    pools: list[Pool] = Field(default_factory=list)
    router: Router = Router()
    http_client: HttpClient = HttpClient()  # outbound HTTP to the engines: proxies, idle connections
    limits: Limits = Limits()
    streaming: Streaming = Streaming()
    redis: Redis = Redis()
    auth: Auth = Auth()
    fleet: Fleet = Fleet()
    tracing: TracingConfig = TracingConfig()  # OpenTelemetry spans, exported only when configured
    batch: Batch = Batch()
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    # Qwen3's recommended sampling per mode, applied when the caller sets none.
    thinking_sampling: dict[str, float] = Field(
        default_factory=lambda: {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0}
    )
    non_thinking_sampling: dict[str, float] = Field(
        default_factory=lambda: {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0}
    )

    @model_validator(mode="after")
    def _pools_consistent(self) -> GatewayConfig:
        names: set[str] = set()
        for pool in self.pools:
            for name in (pool.name, *pool.aliases):
                if name in names:
                    raise ValueError(f"pool name or alias {name!r} is used twice")
                names.add(name)
        pool_names = {p.name for p in self.pools}
        for pool in self.pools:
            for other in [*pool.fallbacks, *([pool.non_thinking_pool] if pool.non_thinking_pool else [])]:
                if other not in pool_names:
                    raise ValueError(f"pool {pool.name!r} refers to unknown pool {other!r}")
        problem = self.auth_problem()
        if problem:
            raise ValueError(problem)
        return self

    @property
    def auth_required(self) -> bool:
        return bool(self.auth.required)

    def auth_problem(self) -> str | None:
        """Why this configuration cannot check keys it requires, if it cannot."""
        if self.auth.tenants and self.redis.url:
            return (
                "auth.tenants is for a gateway without Redis; with redis.url, manage keys with "
                "`tandem gateway keys`"
            )
        if self.auth.required and not self.redis.url and not self.auth.tenants:
            return (
                "auth.required is on, but no key can exist: set redis.url (keys are managed with "
                "`tandem gateway keys`), list auth.tenants, or set auth.required: false"
            )
        return None

    def with_auth_required_by_default(self) -> GatewayConfig:
        """This configuration with `auth.required` on unless it says otherwise (`gateway serve`)."""
        if self.auth.required is not None:
            return self
        updated = self.model_copy(update={"auth": self.auth.model_copy(update={"required": True})})
        problem = updated.auth_problem()
        if problem:
            raise ConfigError(
                "invalid configuration\n"
                f"  auth.required: (unset: on by default for `tandem gateway serve`) {problem}"
            )
        return updated

    def pool(self, name: str) -> Pool | None:
        """The pool serving a public model name or alias."""
        for pool in self.pools:
            if name == pool.name or name in pool.aliases:
                return pool
        return None


def load(path: str | Path | None = None, env: dict[str, str] | None = None) -> GatewayConfig:
    return load_config(GatewayConfig, path, env)
