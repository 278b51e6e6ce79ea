"""Every registry hop goes over the process's one `Transport`: a pull through a real forward
proxy (tinyproxy) sends manifests, config and layers through it, and the edge's model sync
speaks to the registry and to Ollama over the transport it is given."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from edge_agent.model_sync import ModelSync, ModelSyncConfig
from registry.pull import RegistryClient, fetch_artifact
from registry.reference import Reference
from registry.store import Store
from simulators.ollama import OllamaSimConfig, OllamaSimulator
from tandem.transport import HttpClient, Response, Transport
from tests.conftest import Proxy
from tests.registry.helpers import pull, push, same_file


class Recording(Transport):
    """A `Transport` that notes each request's method and URL."""

    def __init__(self, config: HttpClient | None = None) -> None:
        super().__init__(config)
        self.seen: list[tuple[str, str]] = []

    async def request(
        self, method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None, **kw: Any
    ) -> Response:
        self.seen.append((method, url))
        return await super().request(method, url, body, headers, **kw)


async def test_a_pull_through_a_forward_proxy_sends_manifests_and_layers_through_it(
    proxy: Proxy,
    model_ref: Reference,
    gguf_file: Path,
    tmp_path: Path,
) -> None:
    push(model_ref, gguf_file)
    # Loopback is reached directly unless a no_proxy list says otherwise; an empty one proxies all.
    transport = Transport(HttpClient(proxy=proxy.url, no_proxy=""))
    try:
        result = await pull(model_ref, Store(tmp_path / "store"), transport=transport)
        async with RegistryClient(model_ref, transport=transport, plain_http=True) as client:
            _, _, manifest, _, _ = await fetch_artifact(client, model_ref.target)
    finally:
        await transport.close()
    assert same_file(result.weights_path, gguf_file)
    proxied = proxy.log.read_text(errors="replace")
    base = f"http://{model_ref.registry}/v2/{model_ref.repository}"
    assert f"{base}/manifests/{model_ref.tag}" in proxied
    assert f"{base}/blobs/{manifest.config.digest}" in proxied
    for layer in manifest.layers:
        assert f"{base}/blobs/{layer.digest}" in proxied, layer.digest
    assert result.layers_downloaded == len({layer.digest for layer in manifest.layers})


@pytest.fixture
async def ollama() -> AsyncIterator[OllamaSimulator]:
    async with OllamaSimulator(OllamaSimConfig(models=[])) as sim:
        yield sim


async def test_model_sync_uses_the_transport_it_is_given_for_registry_and_ollama(
    ollama: OllamaSimulator, model_ref: Reference, gguf_file: Path, tmp_path: Path
) -> None:
    push(model_ref, gguf_file)
    transport = Recording()
    config = ModelSyncConfig(
        desired=str(model_ref), served_name="tiny:edge", store_dir=tmp_path / "store", plain_http=True
    )
    sync = ModelSync(config, ollama_url=ollama.url, transport=transport)
    try:
        assert await sync.sync_once() == "switched"
        assert not transport._session.closed  # type: ignore[union-attr]  # the edge's: not closed by the sync
    finally:
        await transport.close()
    urls = [url for _, url in transport.seen]
    assert any(re.search(r"/v2/.+/manifests/v1$", u) for u in urls)
    assert any(re.search(r"/v2/.+/blobs/sha256:", u) for u in urls)
    for path in ("/api/blobs/sha256:", "/api/create", "/api/copy"):
        assert any(u.startswith(ollama.url) and path in u for u in urls), path
