"""A mirror per factory, in front of the central registry, that edges try first: a stock
distribution registry in pull-through-cache mode, and Tandem's own store served to the LAN
(`registry.mirror`), which makes the central registry serve each blob once."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from registry.errors import NotFound
from registry.mirror import StoreMirror, serve
from registry.reference import Reference
from registry.store import Store
from tandem.transport import HttpClient, Transport
from tests.registry.conftest import REGISTRY_BIN, RegistryServer, free_port, make_gguf, start_registry
from tests.registry.helpers import pull, push, same_file

ROOT = Path(__file__).resolve().parents[2]

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


@pytest.fixture
async def store_mirror(tmp_path: Path) -> AsyncIterator[tuple[RegistryServer, str, subprocess.Popen[bytes]]]:
    """A central registry (access log on) and Tandem's own mirror in front of it."""
    if not await asyncio.to_thread(Path(REGISTRY_BIN).exists):
        pytest.skip("docker-registry is not installed (Debian package docker-registry)")
    proc, central = start_registry(tmp_path / "central", access_log=True)
    transport = Transport(HttpClient())
    mirror = StoreMirror(Store(tmp_path / "mirror"), f"http://{central.host}", transport=transport)
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(mirror, "127.0.0.1", 0, ready=bound.set_result))
    port = await bound
    yield central, f"http://127.0.0.1:{port}", proc
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await transport.close()
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=10)


async def test_tandems_mirror_costs_the_central_registry_each_blob_once_for_three_edges_at_once(
    store_mirror: tuple[RegistryServer, str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    central, mirror_url, _ = store_mirror
    ref = central_ref(central, "fleet")
    gguf = make_gguf(tmp_path / "model.gguf", blocks=6)
    push(ref, gguf)
    results = await asyncio.gather(
        *(pull(ref, Store(tmp_path / f"edge{i}"), mirrors=[mirror_url]) for i in range(3))
    )
    for result in results:
        assert same_file(result.weights_path, gguf)
    weights = {
        c.digest: c.size for c in Store(tmp_path / "edge0").load_config(results[0].digest).tandem.chunks
    }
    served = blob_bytes_served(central)
    assert {d: served.get(d, 0) for d in weights} == weights  # once each, for three edges


async def test_tandems_mirror_keeps_serving_a_tag_it_has_when_the_central_registry_is_down(
    store_mirror: tuple[RegistryServer, str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    central, mirror_url, central_proc = store_mirror
    ref = central_ref(central, "outage")
    gguf = make_gguf(tmp_path / "model.gguf", seed=8)
    push(ref, gguf)
    await pull(ref, Store(tmp_path / "edge0"), mirrors=[mirror_url])
    central_proc.terminate()
    central_proc.wait(timeout=10)
    result = await pull(ref, Store(tmp_path / "edge1"), mirrors=[mirror_url])
    assert same_file(result.weights_path, gguf)


async def test_tandems_mirror_refuses_bad_names_and_writes(
    store_mirror: tuple[RegistryServer, str, subprocess.Popen[bytes]],
) -> None:
    _, mirror_url, _ = store_mirror
    async with httpx.AsyncClient(base_url=mirror_url) as client:
        bad = await client.get("/v2/models/UPPER/manifests/v1")
        assert bad.status_code == 400 and "UPPER" in bad.json()["errors"][0]["message"]
        assert (await client.get("/v2/models/x/blobs/sha256:nothex")).status_code == 400
        assert (await client.get(f"/v2/models/x/blobs/sha256:{'0' * 64}")).status_code == 404
        assert (await client.post("/v2/models/x/blobs/uploads/")).status_code == 405


def test_the_mirror_command_serves_edges_until_stopped(
    registry_server: RegistryServer, model_ref: Reference, tmp_path: Path
) -> None:
    gguf = make_gguf(tmp_path / "model.gguf", seed=12)
    push(model_ref, gguf)
    port = free_port()
    cmd = [sys.executable, "-m", "registry.cli", "mirror", "--store", str(tmp_path / "mirror")]
    cmd += ["--upstream", f"http://{registry_server.host}", "--listen", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:  # not a timing assertion: the deadline only stops a hang
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.05)
        result = asyncio.run(pull(model_ref, Store(tmp_path / "edge"), mirrors=[f"http://127.0.0.1:{port}"]))
        assert same_file(result.weights_path, gguf)
        assert Store(tmp_path / "mirror").has(
            Store(tmp_path / "edge").load_config(result.digest).tandem.chunks[-1].digest
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_tandems_mirror_serves_signed_versions_to_edges_that_require_signatures(
    store_mirror: tuple[RegistryServer, str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    from tests.registry.test_signatures import key_pair, push_signed

    central, mirror_url, _ = store_mirror
    ref = central_ref(central, "signed")
    private, public = key_pair(tmp_path, "ops")
    gguf = make_gguf(tmp_path / "model.gguf", seed=21)
    pushed = push_signed(ref, gguf, private)
    result = await pull(ref, Store(tmp_path / "edge"), mirrors=[mirror_url], public_key=public)
    assert result.signature == pushed.signature
    assert same_file(result.weights_path, gguf)
