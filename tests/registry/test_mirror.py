"""A mirror per factory: a stock distribution registry in pull-through-cache mode in front of
the central registry, edges that try it first, and the central registry serving each byte once."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.errors import NotFound
from registry.reference import Reference
from registry.store import Store
from tests.registry.conftest import REGISTRY_BIN, RegistryServer, free_port, make_gguf, start_registry
from tests.registry.helpers import pull, push, same_file

# "GET /v2/models/x/blobs/sha256:<hex> HTTP/1.1" 200 <bytes>
_BLOB_GET = re.compile(r'"GET /v2/[^ ]+/blobs/(sha256:[0-9a-f]{64}) HTTP/[0-9.]+" (\d{3}) (\d+)')


def blob_bytes_served(server: RegistryServer) -> dict[str, int]:
    """Bytes of each blob the registry sent, from its access log."""
    served: dict[str, int] = {}
    for match in _BLOB_GET.finditer(server.log.read_text(errors="replace")):
        digest, status, size = match.group(1), int(match.group(2)), int(match.group(3))
        if status in (200, 206):
            served[digest] = served.get(digest, 0) + size
    return served


@pytest.fixture
def factory(tmp_path: Path) -> Iterator[tuple[RegistryServer, RegistryServer]]:
    """A central registry (access log on) and a factory mirror proxying it."""
    if not Path(REGISTRY_BIN).exists():
        pytest.skip("docker-registry is not installed (Debian package docker-registry)")
    central_proc, central = start_registry(tmp_path / "central", access_log=True)
    mirror_proc, mirror = start_registry(tmp_path / "mirror", f"proxy:\n  remoteurl: http://{central.host}\n")
    yield central, mirror
    for proc in (mirror_proc, central_proc):
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def central_ref(central: RegistryServer, name: str) -> Reference:
    from registry.reference import parse_reference

    return parse_reference(f"{central.host}/models/{name}:v1")


async def test_three_edges_through_the_mirror_cost_the_central_registry_no_more_than_one_edge(
    factory: tuple[RegistryServer, RegistryServer], tmp_path: Path
) -> None:
    central, mirror = factory
    ref = central_ref(central, "fleet")
    gguf = make_gguf(tmp_path / "model.gguf", blocks=6)
    push(ref, gguf)
    mirrors = [f"http://{mirror.host}"]
    first = await pull(ref, Store(tmp_path / "edge0"), mirrors=mirrors)  # fills the mirror
    weights = {c.digest: c.size for c in Store(tmp_path / "edge0").load_config(first.digest).tandem.chunks}
    await settled(central)  # the mirror stores what it fetched in the background
    after_first = blob_bytes_served(central)
    rest = await asyncio.gather(*(pull(ref, Store(tmp_path / f"edge{i}"), mirrors=mirrors) for i in (1, 2)))
    for result in (first, *rest):
        assert same_file(result.weights_path, gguf)
        assert result.bytes_downloaded == gguf.stat().st_size
    await settled(central)
    served = blob_bytes_served(central)
    assert served == after_first  # edges 2 and 3 were served by the mirror alone
    # Every weights byte crossed to the factory; distribution 2.8's pull-through cache fetches
    # a blob twice on its first request (once to answer, once to store), never more.
    for digest, size in weights.items():
        assert served.get(digest, 0) in (size, 2 * size)


async def settled(server: RegistryServer) -> None:
    """Waits until the registry's access log stops growing (the mirror's background fetches
    end): not a timing assertion, only the point at which the log is read."""
    last = -1
    for _ in range(100):
        size = server.log.stat().st_size
        if size == last:
            return
        last = size
        await asyncio.sleep(0.2)


async def test_an_edge_falls_back_to_the_central_registry_when_the_mirror_is_down(
    registry_server: RegistryServer, model_ref: Reference, tmp_path: Path
) -> None:
    gguf = make_gguf(tmp_path / "model.gguf", seed=5)
    push(model_ref, gguf)
    result = await pull(model_ref, Store(tmp_path / "edge"), mirrors=[f"http://127.0.0.1:{free_port()}"])
    assert same_file(result.weights_path, gguf)


async def test_a_version_nowhere_names_every_registry_tried(
    registry_server: RegistryServer, model_ref: Reference, tmp_path: Path
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with pytest.raises(NotFound) as info:
        await pull(model_ref.with_tag("never-pushed"), Store(tmp_path / "edge"), mirrors=[f"http://{dead}"])
    assert dead in info.value.message
