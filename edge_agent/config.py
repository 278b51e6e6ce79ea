"""The edge agent's configuration (one YAML file plus `TANDEM_*` overrides; see `configfile`).

Example (`edge.yaml`):

    listen: {host: 127.0.0.1, port: 11435}
    ollama:
      url: http://127.0.0.1:11434
      model: qwen3:14b            # kept loaded (keep_alive) so no request waits for a cold load
      aliases: {qwen3-14b: qwen3:14b}
      num_ctx: 16384              # the context every local call uses (what fits in VRAM)
      num_parallel: 1             # OLLAMA_NUM_PARALLEL of that Ollama
      max_queue: 2                # waiting requests beyond which new work spills to the gateway
    uplink:
      address: gateway.example.com:50051
      tls: {ca_file: /etc/tandem/ca.pem, cert_file: /etc/tandem/edge.pem, key_file: /etc/tandem/edge.key}
      api_key_env: TANDEM_EDGE_API_KEY
    policy: {wan_down: degrade, ollama_down: forward, cloud_cold: wait}

Top-level keys are distinct from the gateway's (`listen`, not `http`), so `tandem up` can give
both processes one environment without one's overrides landing in the other.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tandem.configfile import Section, load_config
from tandem.routing.classifier import Prefer
from tandem.tracing import TracingConfig
from tandem.transport import ClientTLS, HttpClient


class Listen(Section):
    """The HTTP address devices call. Loopback by default: the box's own programs only."""

    host: str = "127.0.0.1"
    port: int = Field(11435, ge=0, le=65535)  # Ollama keeps 11434
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # A stream silent this long gets a keep-alive (SSE comment / empty NDJSON line).
    heartbeat_seconds: float = Field(10.0, gt=0)
    # Request bodies sent with Content-Encoding: only these are inflated (gzip, deflate); any
    # other encoding, and these when not listed, is refused with 415 before the body is read.
    accepted_encodings: list[Literal["gzip", "deflate"]] = Field(default_factory=list)
    # A compressed body may inflate to at most this many bytes (413 as soon as it passes).
    max_inflated_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # A connection that sends nothing this long (before its first request or between requests)
    # is closed; so is one whose request headers, once started, take longer than the second.
    idle_timeout_seconds: float = Field(60.0, gt=0)
    header_timeout_seconds: float = Field(15.0, gt=0)


class Ollama(Section):
    """The local engine."""

    url: str = "http://127.0.0.1:11434"
    tls: ClientTLS | None = Field(None, description="for https://: CA bundle, client certificate, verify")
    model: str | None = Field(None, description="the model kept loaded; none: keep nothing warm")
    aliases: dict[str, str] = Field(default_factory=dict, description="names callers use -> Ollama names")
    keep_alive: str | float = Field("30m", description="sent on every call; the warm loop renews it")
    warm_interval_seconds: float = Field(60.0, gt=0)
    num_ctx: int | None = Field(None, ge=256, description="context of every call; default: the model's")
    num_parallel: int = Field(1, ge=1, description="requests Ollama runs at once (OLLAMA_NUM_PARALLEL)")
    max_queue: int = Field(2, ge=0, description="requests that may wait locally before work spills over")
    # How often the model list and Ollama's liveness are re-read.
    refresh_seconds: float = Field(5.0, gt=0)
    connect_timeout_seconds: float = Field(2.0, gt=0)
    # A cold load of a large model takes tens of seconds; past this the engine counts as down.
    first_token_timeout_seconds: float = Field(60.0, gt=0)
    timeout_seconds: float = Field(600.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/")


class UplinkTLS(Section):
    """TLS toward the gateway; with `cert_file` and `key_file` the edge presents a client
    certificate (mTLS)."""

    ca_file: Path | None = Field(None, description="CA bundle for the gateway's certificate; none: system")
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = Field(None, description="name to check the certificate against")

    @model_validator(mode="after")
    def _pair(self) -> UplinkTLS:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (both for mTLS, neither for TLS)")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: no such file: {path}")
        return self


class Uplink(Section):
    """The gRPC channel to the gateway."""

    address: str = Field("127.0.0.1:50051", min_length=3, description="host:port of the gateway's gRPC")
    tls: UplinkTLS | None = None
    # The docs and the systemd unit name this variable; null: send no key.
    api_key_env: str | None = Field(
        "TANDEM_EDGE_API_KEY", description="environment variable holding the edge's API key"
    )
    first_chunk_timeout_seconds: float = Field(120.0, gt=0)
    # Deadline of a whole forwarded request: thinking answers can be long.
    timeout_seconds: float = Field(900.0, gt=0)
    keepalive_seconds: float = Field(20.0, gt=0)
    keepalive_timeout_seconds: float = Field(5.0, gt=0)
    # gRPC backs off reconnects up to 2 minutes by default; a returning WAN must be used sooner.
    max_reconnect_backoff_seconds: float = Field(2.0, gt=0)
    models: dict[str, str] = Field(
        default_factory=dict, description="names to rename before forwarding (default: as asked)"
    )
    # Cloud models listed on /v1/models and /api/tags are re-read at most this often.
    models_cache_seconds: float = Field(30.0, ge=0)

    @field_validator("address")
    @classmethod
    def _host_port(cls, v: str) -> str:
        """`host:port` (`[v6]:port`), or a gRPC target (`dns:///host:port`, `unix:/path`)."""
        if v.startswith(("dns:", "unix:", "ipv4:", "ipv6:")):
            return v
        if "://" in v:
            raise ValueError(
                "give host:port, without a scheme (the uplink speaks gRPC; TLS is set by uplink.tls)"
            )
        host, sep, port = v.rpartition(":")
        if not sep or not host or host == "[]" or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError("must be host:port with a port from 1 to 65535")
        return v

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class Breaker(Section):
    """When the uplink counts as down, and when as back."""

    failures_to_open: int = Field(3, ge=1, description="consecutive forwarded requests failing on the link")
    # The active probe (the gateway's gRPC health Check) notices a silent (blackholed) link
    # within probe_interval + probe_timeout seconds.
    probe_interval_seconds: float = Field(1.0, gt=0)
    probe_timeout_seconds: float = Field(1.0, gt=0)
    probe_failures_to_open: int = Field(1, ge=1)
    successes_to_close: int = Field(2, ge=1, description="probes or requests in a row that close it again")
    retry_after_seconds: float = Field(5.0, ge=0, description="Retry-After of a 503 while it is open")


class Policy(Section):
    # The gateway is unreachable: serve on the local Ollama with thinking on, or answer 503.
    wan_down: Literal["degrade", "reject"] = "degrade"
    # The local Ollama is down: send non-thinking work to the gateway, or answer 503.
    ollama_down: Literal["forward", "reject"] = "forward"
    # The cloud pool work would go to is cold (the last heartbeat reply said so): forward it
    # anyway (the gateway holds it until a replica is ready), or run it here, thinking on.
    cloud_cold: Literal["wait", "degrade"] = "wait"
    # How the auto-mode classifier leans on this box (docs/routing.md, "prefer"): `thinking`
    # sends borderline requests up to think (quality first), `fast` keeps them here.
    prefer: Prefer = Prefer.BALANCED


class EdgeConfig(Section):
    listen: Listen = Listen()
    ollama: Ollama = Ollama()
    uplink: Uplink = Uplink()
    breaker: Breaker = Breaker()
    policy: Policy = Policy()
    http_client: HttpClient = HttpClient()  # outbound HTTP (Ollama, the model registry): proxies, idle
    tracing: TracingConfig = TracingConfig()  # OpenTelemetry spans, exported only when configured
    edge_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=256)
    group: str = Field("default", min_length=1)
    heartbeat_seconds: float = Field(10.0, gt=0)
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    # Qwen3's recommended sampling per mode, applied when the caller sets none.
    thinking_sampling: dict[str, float] = Field(
        default_factory=lambda: {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "min_p": 0.0}
    )
    non_thinking_sampling: dict[str, float] = Field(
        default_factory=lambda: {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.0}
    )
    # Model distribution (edge_agent/model_sync.py); the server starts a ModelSync when set.
    model_sync: dict[str, Any] | None = None


def load(path: str | Path | None = None, env: dict[str, str] | None = None) -> EdgeConfig:
    return load_config(EdgeConfig, path, env)
