"""Registry credentials: where they come from, and how each transport presents them.

Credentials come from the environment first, then from a docker-style config file:

- `TANDEM_REGISTRY_USERNAME` with `TANDEM_REGISTRY_PASSWORD` (or `TANDEM_REGISTRY_PASSWORD_FILE`),
  or `TANDEM_REGISTRY_TOKEN` (a bearer token used as is);
- `TANDEM_REGISTRY_AUTH_FILE`, `REGISTRY_AUTH_FILE`, `$DOCKER_CONFIG/config.json` or
  `~/.docker/config.json`: `auths.<host>.auth` (base64 user:password), `identitytoken`, and
  docker credential helpers (`credHelpers`, `credsStore`).

Push speaks to the registry through oras-py (`oras_registry` configures its auth backend);
pull goes over Tandem's one outbound `Transport` (`tandem.transport`): `RegistryAuth` answers
Basic and Bearer challenges (the token request too goes over the `Transport`) and every
manifest and layer request sends the header that answer produced (`RegistryAuth.header`).
Secrets are never logged and never part of a repr.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from yarl import URL

from registry.errors import AuthFailed, ManifestRejected

if TYPE_CHECKING:  # the HTTP stack is imported by pulls only: a push's start stays short
    from tandem.transport import ClientTLS, Transport

log = structlog.get_logger("registry.auth")


@dataclass(frozen=True)
class Credentials:
    username: str | None = field(default=None)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    source: str = "none"

    @property
    def basic(self) -> str | None:
        if self.username is None or self.password is None:
            return None
        return base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def config_paths(env: Mapping[str, str]) -> list[Path]:
    paths = [env.get("TANDEM_REGISTRY_AUTH_FILE"), env.get("REGISTRY_AUTH_FILE")]
    if env.get("DOCKER_CONFIG"):
        paths.append(str(Path(env["DOCKER_CONFIG"]) / "config.json"))
    paths.append(str(Path(env.get("HOME", "~")).expanduser() / ".docker" / "config.json"))
    return [Path(p) for p in paths if p]


def resolve_credentials(registry: str, env: Mapping[str, str] | None = None) -> Credentials:
    """Credentials for `registry` (host[:port]), or empty ones for an anonymous registry."""
    env = os.environ if env is None else env
    if env.get("TANDEM_REGISTRY_TOKEN"):
        return Credentials(token=env["TANDEM_REGISTRY_TOKEN"], source="env")
    user = env.get("TANDEM_REGISTRY_USERNAME")
    if user:
        password = env.get("TANDEM_REGISTRY_PASSWORD")
        if password is None and env.get("TANDEM_REGISTRY_PASSWORD_FILE"):
            try:
                password = Path(env["TANDEM_REGISTRY_PASSWORD_FILE"]).read_text().strip()
            except OSError as exc:
                raise AuthFailed(f"cannot read TANDEM_REGISTRY_PASSWORD_FILE: {exc.strerror}") from None
        if password is None:
            raise AuthFailed("TANDEM_REGISTRY_USERNAME is set but no TANDEM_REGISTRY_PASSWORD(_FILE)")
        return Credentials(username=user, password=password, source="env")
    for path in config_paths(env):
        creds = _from_docker_config(path, registry)
        if creds is not None:
            return creds
    return Credentials()


def _host_keys(registry: str) -> list[str]:
    return [
        registry,
        f"https://{registry}",
        f"http://{registry}",
        f"https://{registry}/v2/",
        f"http://{registry}/v2/",
    ]


def _from_docker_config(path: Path, registry: str) -> Credentials | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AuthFailed(f"{path}: not a readable docker config: {exc}") from None
    auths = data.get("auths") or {}
    for key in _host_keys(registry):
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        if entry.get("identitytoken"):
            user = _decode_user(entry.get("auth"))
            return Credentials(username=user or "<token>", password=entry["identitytoken"], source=str(path))
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise AuthFailed(f"{path}: auths.{key}.auth is not base64 user:password") from None
            return Credentials(username=user, password=password, source=str(path))
    helper = (data.get("credHelpers") or {}).get(registry) or data.get("credsStore")
    if helper:
        return _from_helper(str(helper), registry)
    return None


def _decode_user(auth: Any) -> str | None:
    if not isinstance(auth, str):
        return None
    try:
        return base64.b64decode(auth).decode().partition(":")[0] or None
    except (ValueError, UnicodeDecodeError):
        return None


def _from_helper(helper: str, registry: str) -> Credentials | None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", helper):
        raise AuthFailed(f"credential helper name {helper!r} is not valid")
    try:
        proc = subprocess.run(
            [f"docker-credential-{helper}", "get"],
            input=registry.encode(),
            capture_output=True,
            timeout=30,
            check=True,
        )
        payload = json.loads(proc.stdout)
    except FileNotFoundError:
        log.warning("credential_helper_missing", helper=helper)
        return None
    except (subprocess.SubprocessError, ValueError):
        log.warning("credential_helper_failed", helper=helper)
        return None
    return Credentials(
        username=payload.get("Username"), password=payload.get("Secret"), source=f"helper:{helper}"
    )


# ----------------------------------------------------------------------------- challenge


_PARAM = re.compile(r'(\w+)="([^"]*)"')


class RegistryAuth:
    """Answers a registry's 401: Basic with the credentials, or Bearer via the token realm.

    The last working Authorization header (`header`) is sent with every later request, so a
    pull of a hundred blobs asks the token server once (and again only when the token expires).
    The token request goes over the same `Transport` as the rest of the pull.
    """

    def __init__(self, creds: Credentials) -> None:
        self._creds = creds
        self._header: str | None = f"Bearer {creds.token}" if creds.token else None

    @property
    def source(self) -> str:
        """Where the credentials came from (`Credentials.source`; "none" without any)."""
        return self._creds.source

    @property
    def header(self) -> str | None:
        """The Authorization header that last worked, if any."""
        return self._header

    async def answer(
        self,
        challenge: str,
        transport: Transport,
        *,
        tls: ClientTLS | None = None,
        connect_s: float = 10.0,
        read_s: float = 30.0,
    ) -> bool:
        """Answers `challenge` (a 401's WWW-Authenticate); True when `header` is now worth a retry.

        False means the caller should report the 401 (no credentials, or the token server
        refused them). An unreachable token server raises `Unreachable` / `TimeoutError`.
        """
        from registry.http import MAX_ERROR_BODY, read_capped

        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            basic = self._creds.basic
            if basic is None or self._header == f"Basic {basic}":
                return False  # no credentials, or the ones already sent were refused
            self._header = f"Basic {basic}"
            return True
        if scheme != "bearer":
            return False
        params = dict(_PARAM.findall(challenge))
        realm = params.get("realm")
        if not realm or not realm.startswith(("http://", "https://")):
            return False
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        url = str(URL(realm).update_query(query)) if query else realm
        headers = {"Authorization": f"Basic {self._creds.basic}"} if self._creds.basic else {}
        resp = await transport.request(
            "GET",
            url,
            headers=headers,
            tls=tls if url.startswith("https://") else None,
            connect_s=connect_s,
            read_s=read_s,
            total_s=read_s * 2,
        )
        if resp.status != 200:
            await resp.drain(MAX_ERROR_BODY)
            return False
        try:
            body = await read_capped(resp, _MAX_TOKEN_BODY, "token answer")
        except ManifestRejected:
            return False
        try:
            data = json.loads(body)
        except ValueError:
            return False
        token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            return False
        self._header = f"Bearer {token}"
        return True


_MAX_TOKEN_BODY = 1 << 20


# ----------------------------------------------------------------------------- oras


def oras_registry(registry: str, creds: Credentials, *, plain_http: bool, tls_verify: bool = True) -> Any:
    """An oras-py `Registry` for `registry`, with the auth backend its challenge calls for."""
    import oras.provider
    import requests

    scheme = "http" if plain_http else "https"
    backend = "token"
    try:
        probe = requests.get(f"{scheme}://{registry}/v2/", timeout=10, verify=tls_verify)
        if probe.headers.get("WWW-Authenticate", "").lower().startswith("basic"):
            backend = "basic"
    except requests.RequestException:
        pass  # the first real request reports the registry as unreachable
    client = oras.provider.Registry(
        hostname=registry, insecure=plain_http, tls_verify=tls_verify, auth_backend=backend
    )
    if creds.token:
        client.auth.set_token_auth(creds.token)
    elif creds.basic:
        client.auth.set_basic_auth(creds.username or "", creds.password or "")
    return client
