"""`tandem edge doctor`: is this box ready to serve? Each check says what it found.

    ok    ollama   Ollama 0.12.3 at http://127.0.0.1:11434
    ok    model    qwen3:14b present (9.3 GB)
    FAIL  gateway  gateway.example.com:50051: UNAUTHENTICATED: unknown API key (key from TANDEM_EDGE_API_KEY)
    skip  clock    needs the gateway's answer
    ok    disk     /var/lib/tandem/models: 412.0 GB free, 2 versions need 18.6 GB

The gateway check is the edge's own uplink (same TLS, same key, same edge id): a health
Check, then one Heartbeat carrying what the agent itself would report of Ollama's models, which
proves the key is accepted for this edge and gives the gateway's clock. The disk check wants
room for two versions of the model (the one served and the one being pulled: model sync keeps
both until the switch) on every directory that holds model files.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from edge_agent.breaker import CircuitBreaker
from edge_agent.config import EdgeConfig
from edge_agent.uplink import Uplink, UplinkDown
from tandem.errors import TandemError
from tandem.transport import Transport, Unreachable
from tandem.v1 import gateway_pb2 as pb
from tandem.version import tandem_version

Outcome = Literal["ok", "FAIL", "skip"]

# A certificate's validity and a key's expiry are checked against the clock; more than this
# apart from the gateway's and something will fail in a way that is hard to trace.
MAX_CLOCK_SKEW_S = 30.0
# When the model's size is unknown (not pulled yet): qwen3:14b at Q4_K_M is 9.3 GB.
ASSUMED_MODEL_BYTES = 10 * 1024**3
# Where Ollama keeps models when run by its own systemd unit (OLLAMA_MODELS unset).
OLLAMA_SERVICE_MODELS = Path("/usr/share/ollama/.ollama/models")


@dataclass(frozen=True)
class Check:
    name: str
    outcome: Outcome
    detail: str

    def line(self) -> str:
        return f"{self.outcome:<5} {self.name:<8} {self.detail}"


@dataclass
class _Ollama:
    version: str = ""
    models: list[dict[str, Any]] | None = None
    error: str = ""


async def diagnose(
    cfg: EdgeConfig, *, disk_paths: Sequence[Path] = (), deadline_s: float = 5.0
) -> list[Check]:
    """Runs every check; never raises for what it finds (that is what the checks report)."""
    ollama = await _read_ollama(cfg, deadline_s)
    checks = [_ollama_check(cfg, ollama), _model_check(cfg, ollama)]
    gateway, server_time = await _gateway_check(cfg, ollama, deadline_s)
    checks.append(gateway)
    checks.append(_clock_check(server_time))
    size = _model_bytes(cfg, ollama)
    for path in disk_paths or default_disk_paths(cfg):
        checks.append(_disk_check(path, size))
    return checks


def default_disk_paths(cfg: EdgeConfig) -> list[Path]:
    """Where model files land: model sync's store, and Ollama's own store when it is on this box."""
    store = Path((cfg.model_sync or {}).get("store_dir") or "/var/lib/tandem/models")
    paths = [store]
    if OLLAMA_SERVICE_MODELS.exists():
        paths.append(OLLAMA_SERVICE_MODELS)
    return paths


# --- Ollama -----------------------------------------------------------------------------------


async def _read_ollama(cfg: EdgeConfig, deadline_s: float) -> _Ollama:
    found = _Ollama()
    transport = Transport(cfg.http_client)
    try:
        found.version = str((await _get_json(transport, cfg, "/api/version", deadline_s)).get("version", "?"))
        found.models = list((await _get_json(transport, cfg, "/api/tags", deadline_s)).get("models") or [])
    except (Unreachable, TimeoutError, ValueError, AttributeError) as exc:
        found.error = str(exc) or type(exc).__name__
    finally:
        await transport.close()
    return found


async def _get_json(transport: Transport, cfg: EdgeConfig, path: str, deadline_s: float) -> dict[str, Any]:
    resp = await transport.request(
        "GET", cfg.ollama.url + path, tls=cfg.ollama.tls, connect_s=deadline_s, total_s=deadline_s
    )
    try:
        if resp.status != 200:
            raise ValueError(f"{path} answered HTTP {resp.status}: is this Ollama?")
        body = orjson.loads(await resp.read())
    finally:
        resp.release()
    if not isinstance(body, dict):
        raise ValueError(f"{path} did not answer a JSON object: is this Ollama?")
    return body


def _ollama_check(cfg: EdgeConfig, ollama: _Ollama) -> Check:
    if ollama.error:
        return Check("ollama", "FAIL", f"{cfg.ollama.url}: {ollama.error}")
    return Check("ollama", "ok", f"Ollama {ollama.version} at {cfg.ollama.url}")


def _find_model(cfg: EdgeConfig, ollama: _Ollama) -> dict[str, Any] | None:
    wanted = cfg.ollama.model
    if wanted is None:
        return None
    names = {wanted, f"{wanted}:latest"} if ":" not in wanted else {wanted}
    return next((m for m in ollama.models or [] if (m.get("model") or m.get("name")) in names), None)


def _model_check(cfg: EdgeConfig, ollama: _Ollama) -> Check:
    if ollama.models is None:
        return Check("model", "skip", "needs Ollama's model list")
    wanted = cfg.ollama.model
    if wanted is None:
        present = ", ".join(sorted(str(m.get("model") or m.get("name")) for m in ollama.models)) or "none"
        outcome: Outcome = "ok" if ollama.models else "FAIL"
        return Check("model", outcome, f"no ollama.model configured; Ollama has: {present}")
    model = _find_model(cfg, ollama)
    if model is None:
        return Check(
            "model", "FAIL", f"{wanted} is not in Ollama (`ollama pull {wanted}` or `tandem model pull`)"
        )
    return Check("model", "ok", f"{wanted} present ({_gb(int(model.get('size') or 0))})")


def _model_bytes(cfg: EdgeConfig, ollama: _Ollama) -> int:
    model = _find_model(cfg, ollama)
    size = int(model.get("size") or 0) if model else 0
    return size or ASSUMED_MODEL_BYTES


# --- the gateway ------------------------------------------------------------------------------


async def _gateway_check(cfg: EdgeConfig, ollama: _Ollama, deadline_s: float) -> tuple[Check, float | None]:
    where = cfg.uplink.address
    key_env = cfg.uplink.api_key_env
    # Without a key the gateway still answers (it may not require one); the hint says why not.
    if not key_env:
        how = " (no key: uplink.api_key_env is null)"
    elif not cfg.uplink.api_key():
        how = f" (no key: {key_env} is not set)"
    else:
        how = f" (key from {key_env})"
    breaker = CircuitBreaker(failures_to_open=1, probe_failures_to_open=1, successes_to_close=1)
    uplink = Uplink(cfg.uplink, breaker, edge_id=cfg.edge_id)
    try:
        await uplink.start()
        await uplink.probe(deadline_s)
        reply = await uplink.heartbeat(_heartbeat(cfg, ollama), deadline_s)
    except (UplinkDown, TandemError, OSError) as exc:
        what = f"{type(exc).__name__}: {exc}" if isinstance(exc, TandemError) else str(exc)
        return Check("gateway", "FAIL", f"{where}: {what}{how}"), None
    finally:
        await uplink.close()
    tls = (
        "mTLS" if cfg.uplink.tls and cfg.uplink.tls.cert_file else ("TLS" if cfg.uplink.tls else "plaintext")
    )
    detail = f"{where} ({tls}) accepts edge {cfg.edge_id!r}; {len(reply.pools)} cloud pool(s)"
    return Check("gateway", "ok", detail), float(reply.server_time_unix) if reply.server_time_unix else None


def _heartbeat(cfg: EdgeConfig, ollama: _Ollama) -> pb.HeartbeatRequest:
    """What the agent itself reports (its next heartbeat, seconds later, replaces this one)."""
    models = [
        pb.ServedModel(name=str(m.get("model") or m.get("name") or ""), digest=str(m.get("digest") or ""))
        for m in ollama.models or []
    ]
    return pb.HeartbeatRequest(
        edge_id=cfg.edge_id,
        group=cfg.group,
        models=models,
        healthy=ollama.models is not None,
        version=tandem_version(),
    )


def _clock_check(server_time: float | None) -> Check:
    if server_time is None:
        return Check("clock", "skip", "needs the gateway's answer")
    # The gateway's time is whole seconds: allow the one second that truncation takes away.
    skew = time.time() - server_time
    detail = f"{skew:+.0f} s from the gateway's clock"
    if abs(skew) > MAX_CLOCK_SKEW_S + 1:
        return Check("clock", "FAIL", f"{detail} (more than {MAX_CLOCK_SKEW_S:g} s: is NTP running?)")
    return Check("clock", "ok", detail)


# --- disk -------------------------------------------------------------------------------------


def _disk_check(path: Path, model_bytes: int) -> Check:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # not created yet: it will be on its parent's filesystem
    free = shutil.disk_usage(existing).free
    need = 2 * model_bytes
    detail = f"{path}: {_gb(free)} free, 2 versions need {_gb(need)}"
    return Check("disk", "ok" if free >= need else "FAIL", detail)


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


def run(cfg: EdgeConfig, *, disk_paths: Sequence[Path] = (), deadline_s: float = 5.0) -> list[Check]:
    return asyncio.run(diagnose(cfg, disk_paths=disk_paths, deadline_s=deadline_s))
