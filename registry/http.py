"""The registry's reads over Tandem's one outbound HTTP transport (`tandem.transport`).

`RegistryHttp` sends a GET (or HEAD) to one registry with the Authorization header its
`RegistryAuth` last obtained, answers a 401 challenge once (Basic, or Bearer through the
token realm) and sends the request again, and follows redirects itself (registries send blob
GETs to object storage): the registry's credentials never go to another origin. Proxies,
TLS (`ClientTLS`: CA bundle, client certificate, verify), connection reuse and timeouts are
the `Transport`'s, the same as for every other hop of the process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from yarl import URL

from registry.errors import ManifestRejected, RegistryError
from tandem.transport import ClientTLS, Response, Transport

if TYPE_CHECKING:
    from registry.auth import RegistryAuth

MAX_REDIRECTS = 5
MAX_ERROR_BODY = 64 << 10


class RegistryHttp:
    """Authenticated reads from one registry over a shared `Transport`."""

    def __init__(
        self,
        transport: Transport,
        *,
        registry: str,
        auth: RegistryAuth,
        tls: ClientTLS | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.transport = transport
        self.registry = registry
        self.auth = auth
        self.tls = tls
        self.connect_s = min(timeout, 10.0)
        self.read_s = timeout

    async def get(
        self, url: str, headers: Mapping[str, str] | None = None, *, method: str = "GET"
    ) -> Response:
        """The answer to `url`, after at most one challenge and `MAX_REDIRECTS` redirects.

        Raises `Unreachable` or `TimeoutError` (the caller names them); a 401 that survives
        the challenge is returned for the caller to report.
        """
        origin = URL(url).origin()
        answered = False
        for _ in range(MAX_REDIRECTS + 1):
            sent = dict(headers or {})
            same_origin = URL(url).origin() == origin
            if same_origin and (auth := self.auth.header):
                sent["Authorization"] = auth  # never handed to object storage
            resp = await self._send(method, url, sent)
            if resp.status == 401 and same_origin and not answered:
                challenge = resp.headers.get("WWW-Authenticate", "")
                await resp.drain(MAX_ERROR_BODY)
                answered = True
                if not await self.auth.answer(
                    challenge, self.transport, tls=self.tls, connect_s=self.connect_s, read_s=self.read_s
                ):
                    return resp  # status and headers stay readable; the body is gone
                resp = await self._send(method, url, {**sent, "Authorization": self.auth.header or ""})
            location = resp.headers.get("Location")
            if resp.status in (301, 302, 303, 307, 308) and location:
                await resp.drain(MAX_ERROR_BODY)
                url = str(URL(url).join(URL(location)))
                continue
            return resp
        raise RegistryError(f"{self.registry} redirected {url} more than {MAX_REDIRECTS} times")

    async def _send(self, method: str, url: str, headers: dict[str, str]) -> Response:
        return await self.transport.request(
            method,
            url,
            headers=headers,
            tls=self.tls if url.startswith("https://") else None,
            connect_s=self.connect_s,
            read_s=self.read_s,
        )


async def read_capped(resp: Response, cap: int, what: str) -> bytes:
    """The whole body of `resp`, refused once it passes `cap` bytes (the connection is then
    closed, not drained). Ends the exchange either way."""
    body = bytearray()
    try:
        while piece := await resp.readany():
            body += piece
            if len(body) > cap:
                raise ManifestRejected(f"{what} is larger than the {cap}-byte limit")
    finally:
        resp.release()
    return bytes(body)
