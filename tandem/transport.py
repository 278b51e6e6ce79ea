"""The one outbound HTTP transport: every HTTP hop Tandem makes goes through a `Transport`.

Engine calls (the gateway to vLLM, the edge to Ollama), Ollama registration and the registry's
manifests and blobs all use it, so proxies, TLS, timeouts and connection reuse are set in one
place. It is aiohttp's client (a maintained HTTP/1.1 stack with a C parser) with Tandem's rules
on top; `docs/benchmarks.md` ("Engine hop") has the side-by-side measurement behind choosing
it over a hand-written client.

The rules:
- **Proxies**: `HttpClient.proxy` when configured, else `HTTPS_PROXY` / `HTTP_PROXY` from the
  environment (`trust_env`); `no_proxy` (else `NO_PROXY`) names hosts reached directly.
  Loopback addresses are never proxied (the edge's Ollama is on localhost). HTTPS goes through
  the proxy with CONNECT, so TLS stays end to end.
- **TLS per endpoint**: `ClientTLS` gives a CA bundle, a client certificate and key (mutual
  TLS), or `verify: false` for a test bench. Verification is on by default, against the
  system's CAs.
- **Timeouts**: `connect_s` to connect (through the proxy, if any), `read_s` between two reads
  (the first-token deadline of a stream), `total_s` for the whole exchange.
- **Reuse**: a response read to its end goes back to the pool (`drain()` reads the few bytes
  that end a chunked body after a stream's last event); one abandoned half-way is closed.
  Idle connections are dropped after `idle_seconds` (default 4 s, below the 5 s after which
  uvicorn-based engines close theirs), so a request never goes out on a connection the server
  is closing.
- **No duplicate POST**: a request is sent once. aiohttp resends only idempotent methods on a
  kept connection found closed; nothing here resends anything. A failure says whether the
  request provably never reached the server (`Unreachable.sent is False`: the connection was
  never made), which is the only case where a caller may send it elsewhere without doubt.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
import urllib.request
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from pydantic import Field, model_validator
from yarl import URL

from tandem.configfile import Section


class ClientTLS(Section):
    """TLS toward one endpoint: whom to trust and, for mutual TLS, who we are."""

    ca_file: Path | None = Field(None, description="PEM bundle of CAs to trust instead of the system's")
    cert_file: Path | None = Field(None, description="client certificate (PEM) for mutual TLS")
    key_file: Path | None = Field(None, description="its private key (PEM)")
    verify: bool = Field(
        True, description="check the server's certificate and name (off only for a test bench)"
    )

    @model_validator(mode="after")
    def _files(self) -> ClientTLS:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        for name in ("ca_file", "cert_file", "key_file"):  # at start, not at the first request
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: no such file: {path}")
        return self


class HttpClient(Section):
    """How this process makes outbound HTTP calls (engines, Ollama, the model registry)."""

    proxy: str | None = Field(None, description="http://[user:pass@]host:port; none: HTTPS_PROXY/HTTP_PROXY")
    no_proxy: str | None = Field(None, description="comma-separated hosts reached directly; none: NO_PROXY")
    trust_env: bool = Field(True, description="read HTTPS_PROXY, HTTP_PROXY and NO_PROXY")
    idle_seconds: float = Field(4.0, gt=0, description="drop a kept-alive connection idle this long")
    max_connections: int = Field(0, ge=0, description="open connections at most, over all hosts; 0: no bound")

    @model_validator(mode="after")
    def _proxy_url(self) -> HttpClient:
        if self.proxy is not None and not self.proxy.startswith(("http://", "https://")):
            raise ValueError("proxy must be an http:// or https:// URL")
        return self


class Unreachable(Exception):
    """Could not connect, the connection broke, or the server did not speak HTTP.

    `sent` is False only when the request provably never reached the server (no connection
    was made); a caller may then send it elsewhere without risk of running it twice.
    """

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class Response:
    """An answer whose status and headers have arrived; the body is read with `read`,
    `readany` or `drain`. The caller must end it with `drain()`, `release()` or `close()`."""

    __slots__ = ("_ended", "_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status: int = resp.status
        self.headers: CIMultiDictProxy[str] = resp.headers
        self._ended: asyncio.Future[None] | None = None  # what `gather_until` waits on

    async def gather_until(self, when: float) -> None:
        """Lets the body gather, unread, until loop time `when`, or until all of it has arrived
        if that is sooner. Bytes that arrive meanwhile only join the reader's buffer: no task
        wakes for them, and the next `readany` takes them in one go."""
        content = self._resp.content
        if content.is_eof():
            return
        loop = asyncio.get_running_loop()
        if self._ended is None:
            content.on_eof(self._body_ended)
        self._ended = ended = loop.create_future()
        timer = loop.call_at(when, _wake, ended)
        try:
            await ended
        finally:
            timer.cancel()

    def _body_ended(self) -> None:
        if self._ended is not None:
            _wake(self._ended)

    async def readany(self) -> bytes:
        """The body bytes that have arrived (waiting for some); b"" at the end of the body."""
        try:
            return await self._resp.content.readany()
        except TimeoutError:
            raise TimeoutError("no data from the server within the read timeout") from None
        except aiohttp.ClientError as exc:
            raise Unreachable(_describe(exc), sent=True) from None

    async def read(self) -> bytes:
        """The whole body."""
        try:
            return await self._resp.read()
        except TimeoutError:
            raise TimeoutError("no data from the server within the read timeout") from None
        except aiohttp.ClientError as exc:
            raise Unreachable(_describe(exc), sent=True) from None

    async def drain(self, limit: int = 65536) -> None:
        """Reads what is left of the body (at most `limit` bytes) so the connection is reused;
        after a stream's last event that is only the chunked terminator, usually already here."""
        content = self._resp.content
        try:
            while not content.at_eof() and limit > 0:
                limit -= len(await content.readany()) or limit
        except (TimeoutError, aiohttp.ClientError):
            pass
        self.release()

    def release(self) -> None:
        """Ends the exchange: a body read to its end frees the connection for reuse; one not
        read to its end closes it (nothing of an abandoned answer is left on a pooled socket)."""
        if self._resp.content.at_eof():
            self._resp.release()
        else:
            self._resp.close()

    def close(self) -> None:
        """Ends the exchange and closes its connection."""
        self._resp.close()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Transport:
    """Outbound HTTP for one process: one connection pool, one proxy rule, TLS per endpoint."""

    def __init__(self, config: HttpClient | None = None) -> None:
        self.config = config or HttpClient()
        self._session: aiohttp.ClientSession | None = None
        self._connector: _Connector | None = None
        self._opened_before = 0  # by sessions closed since
        self._proxies: dict[tuple[str, str], URL | None] = {}

    def _started(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._connector = _Connector(
                keepalive_timeout=self.config.idle_seconds,
                limit=self.config.max_connections,
                limit_per_host=0,
            )
            self._session = aiohttp.ClientSession(
                connector=self._connector,
                trust_env=False,  # proxies are resolved here, with the config's override
                auto_decompress=False,  # bodies are relayed as the server sent them
                skip_auto_headers=("User-Agent",),
                # A request's own `timeout` replaces this; none given means no limit.
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    @property
    def connections_opened(self) -> int:
        """TCP connections opened so far (tests and benchmarks check reuse with it)."""
        return self._opened_before + (self._connector.opened if self._connector else 0)

    async def request(
        self,
        method: str,
        url: str,
        body: bytes | aiohttp.payload.Payload | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        tls: ClientTLS | None = None,
        connect_s: float | None = 10.0,
        read_s: float | None = None,
        total_s: float | None = None,
    ) -> Response:
        """Sends the request once; returns when the status line and headers have arrived.

        Raises `Unreachable` (with `sent`) or `TimeoutError`.
        """
        session = self._started()
        target = URL(url)
        if target.scheme not in ("http", "https") or not target.host:
            raise ValueError(f"not an http(s) URL: {url!r}")
        timeout = aiohttp.ClientTimeout(total=total_s, sock_connect=connect_s, sock_read=read_s)
        try:
            resp = await session.request(
                method,
                target,
                data=body,
                headers=headers,
                proxy=self._proxy(target),
                ssl=ssl_context(tls) if target.scheme == "https" else True,
                timeout=timeout,
                allow_redirects=False,
            )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise Unreachable(_describe(exc), sent=False) from None
        except TimeoutError:
            raise TimeoutError(f"no answer from {target.host} within the timeout") from None
        except aiohttp.ClientError as exc:
            raise Unreachable(_describe(exc), sent=True) from None
        return Response(resp)

    def _proxy(self, url: URL) -> URL | None:
        """The proxy for `url`'s origin, worked out once per origin."""
        key = (url.scheme, url.host or "")
        if key not in self._proxies:
            self._proxies[key] = proxy_for(url, self.config, os.environ)
        return self._proxies[key]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._connector is not None:
            self._opened_before += self._connector.opened
            self._connector = None
        await asyncio.sleep(0)  # let the transports finish closing


class _Connector(aiohttp.TCPConnector):
    """aiohttp's connector, counting the connections it opens.

    Counted here rather than with a `TraceConfig`, which would send its signals on every
    request; `_create_connection` is called once per new connection only.
    """

    opened = 0

    async def _create_connection(self, *args: Any, **kwargs: Any) -> Any:
        self.opened += 1
        return await super()._create_connection(*args, **kwargs)


def proxy_for(url: URL, config: HttpClient, env: Mapping[str, str]) -> URL | None:
    """Which proxy (if any) a request to `url` goes through, under `config` and `env`.

    With no `no_proxy` list from the config or the environment, loopback hosts are reached
    directly (a proxy cannot reach this machine's Ollama); a list, even an empty one, is the
    whole rule.
    """
    if config.proxy is not None:
        proxy: str | None = config.proxy
    elif config.trust_env:
        proxy = _env(env, f"{url.scheme}_proxy") or _env(env, "all_proxy")
    else:
        return None
    if not proxy:
        return None
    no_proxy = config.no_proxy
    if no_proxy is None and config.trust_env:
        no_proxy = _env(env, "no_proxy")
    host = url.host or ""
    if no_proxy is None:
        return None if _is_loopback(host) else URL(proxy)
    return None if _bypassed(host, no_proxy) else URL(proxy)


def _env(env: Mapping[str, str], name: str) -> str | None:
    # curl's convention: the lower-case name wins; both are common.
    return env.get(name) or env.get(name.upper()) or None


def _bypassed(host: str, no_proxy: str) -> bool:
    if no_proxy.strip() == "*":
        return True
    return bool(urllib.request.proxy_bypass_environment(host, {"no": no_proxy}))  # type: ignore[attr-defined]


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@lru_cache(maxsize=64)
def ssl_context(tls: ClientTLS | None) -> ssl.SSLContext:
    """The client TLS context for `tls` (the system's CAs when none), built once per setting."""
    if tls is None:
        return ssl.create_default_context()
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _describe(exc: BaseException) -> str:
    """One line for a transport failure, without aiohttp's class names."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate refused for {exc.host}:{exc.port}: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return f"TLS handshake with {exc.host}:{exc.port} failed: {exc.os_error}"
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        why = exc.os_error.strerror or exc.os_error
        return f"could not connect to the proxy for {exc.host}:{exc.port}: {why}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"could not connect to {exc.host}:{exc.port}: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return f"the proxy refused the connection: {exc.status} {exc.message}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"the body broke off: {exc}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"the answer is not valid HTTP: {exc.message}"
    return str(exc) or type(exc).__name__
