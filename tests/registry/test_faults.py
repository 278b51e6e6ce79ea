"""Interrupted, corrupted and impossible pulls: resume, refetch, or fail with a clear error."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry.auth import Credentials
from registry.errors import DigestMismatch, DiskFull, RegistryError, RegistryUnavailable
from registry.pull import RegistryClient, fetch_artifact
from registry.push import RemoteRepository
from registry.reference import Reference, parse_reference
from registry.store import Store
from tests.registry.conftest import RegistryServer, free_port, make_gguf
from tests.registry.helpers import pull, push, same_file

ROOT = Path(__file__).resolve().parents[2]


def store_bytes(store: Store) -> int:
    total = 0
    for sub in ("blobs/sha256", "partial/sha256"):
        for p in (store.root / sub).iterdir():
            # A verified partial file is renamed into blobs/ while we walk: it counts there.
            with contextlib.suppress(FileNotFoundError):
                total += p.stat().st_size
    return total


@dataclass
class KilledPull:
    ref: Reference
    store: Store
    gguf: Path
    complete_at_kill: dict[str, int]  # digest -> size of every blob finished before the kill
    partial_at_kill: int  # bytes in partial files at the kill


@pytest.fixture
def killed_pull(model_ref: Reference, tmp_path: Path) -> KilledPull:
    """A CLI pull, throttled so it is caught mid-way, killed with SIGKILL past 50%."""
    gguf = make_gguf(tmp_path / "model.gguf", blocks=6)
    push(model_ref, gguf)
    total = gguf.stat().st_size
    store = Store(tmp_path / "store")
    cmd = [
        sys.executable,
        "-m",
        "registry.cli",
        "pull",
        str(model_ref),
        "--plain-http",
        "--json",
        "--store",
        str(store.root),
        "--max-rate",
        "2MiB",
        "--concurrency",
        "2",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while store_bytes(store) < total // 2:
        assert proc.poll() is None, "the pull finished before it could be interrupted"
        assert time.monotonic() < deadline, "the pull made no progress"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    config = json.loads(RemoteRepository(model_ref, Credentials(), plain_http=True).get_manifest("v1")[0])[
        "config"
    ]
    complete = {"sha256:" + p.name: p.stat().st_size for p in (store.root / "blobs/sha256").iterdir()}
    complete.pop(config["digest"])  # fetched while planning; metadata, not a layer
    partial = sum(p.stat().st_size for p in (store.root / "partial/sha256").iterdir())
    return KilledPull(model_ref, store, gguf, complete, partial)


async def test_resume_after_kill_does_not_download_finished_layers_again(killed_pull: KilledPull) -> None:
    result = await pull(killed_pull.ref, killed_pull.store)
    assert not set(result.downloaded) & set(killed_pull.complete_at_kill)


async def test_resume_after_kill_downloads_only_the_missing_bytes(killed_pull: KilledPull) -> None:
    result = await pull(killed_pull.ref, killed_pull.store)
    layer_bytes_at_kill = sum(killed_pull.complete_at_kill.values())
    assert result.bytes_downloaded == result.bytes_total - layer_bytes_at_kill - killed_pull.partial_at_kill


async def test_resume_after_kill_gives_a_byte_identical_file(killed_pull: KilledPull) -> None:
    result = await pull(killed_pull.ref, killed_pull.store)
    assert same_file(result.weights_path, killed_pull.gguf)


def test_a_killed_pull_leaves_only_verified_blobs(killed_pull: KilledPull) -> None:
    for path in (killed_pull.store.root / "blobs/sha256").iterdir():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name


async def test_corrupt_partial_download_is_rejected_and_fetched_again(
    model_ref: Reference, gguf_file: Path, tmp_path: Path
) -> None:
    push(model_ref, gguf_file)
    store = Store(tmp_path / "store")
    victim = await largest_layer(model_ref)
    store.partial_path(victim).write_bytes(b"\0" * 1000)  # bytes that will not hash right
    result = await pull(model_ref, store)
    assert result.refetched == 1
    assert same_file(result.weights_path, gguf_file)


async def test_blob_corrupted_in_the_registry_fails_clearly_after_one_refetch(
    model_ref: Reference, tmp_path: Path, registry_server: RegistryServer
) -> None:
    # Content no other test pushes: the registry stores blobs once for all repositories.
    push(model_ref, make_gguf(tmp_path / "unique.gguf", seed=991))
    store = Store(tmp_path / "store")
    victim = await largest_layer(model_ref)
    data = registry_server.blob_data(victim)
    data.write_bytes(bytes(b ^ 0xFF for b in data.read_bytes()[:16]) + data.read_bytes()[16:])
    with pytest.raises(DigestMismatch) as info:
        await pull(model_ref, store)
    assert victim in info.value.message and "twice" in info.value.message
    assert not store.has(victim) and not store.partial_path(victim).exists()


async def test_unreachable_registry_is_reported_as_unavailable(tmp_path: Path) -> None:
    ref = parse_reference(f"127.0.0.1:{free_port()}/models/nowhere:v1")
    with pytest.raises(RegistryUnavailable):
        await pull(ref, Store(tmp_path / "store"))


async def test_pull_that_would_fill_the_disk_is_refused_before_moving_bytes(
    model_ref: Reference, gguf_file: Path, tmp_path: Path
) -> None:
    push(model_ref, gguf_file)
    probe = Store(tmp_path / "store")
    store = Store(tmp_path / "store", min_free_bytes=probe.free_bytes() - (1 << 20))
    with pytest.raises(DiskFull, match="needs"):
        await pull(model_ref, store)
    assert not any((store.root / "partial/sha256").iterdir())


async def largest_layer(ref: Reference) -> str:
    async with RegistryClient(ref, plain_http=True) as client:
        _, _, manifest, _, _ = await fetch_artifact(client, ref.target)
    return max(manifest.layers, key=lambda layer: layer.size).digest


async def test_push_force_repairs_a_blob_damaged_in_the_registry(
    registry_server: RegistryServer, model_ref: Reference, tmp_path: Path
) -> None:
    gguf = make_gguf(tmp_path / "model.gguf", seed=4242)  # blobs no other test has
    push(model_ref, gguf)
    victim = Store(tmp_path / "probe")
    async with RegistryClient(model_ref, plain_http=True) as client:
        _, _, manifest, _, _ = await fetch_artifact(client, model_ref.target)
    digest = manifest.layers_by_role("weights")[-1].digest
    data = registry_server.blob_data(digest)
    data.write_bytes(b"\0" * data.stat().st_size)  # a disk error in the registry's storage
    assert push(model_ref, gguf).uploaded_blobs == 0  # a plain re-push trusts the registry's HEAD
    with pytest.raises(DigestMismatch):
        await pull(model_ref, victim)
    # distribution never overwrites a blob it has: --force finds the damage and names what to delete
    with pytest.raises(RegistryError, match=f"damaged copy of {digest}.*{digest[7:]}/data"):
        push(model_ref, gguf, force=True)
    data.unlink()  # what the operator is told to do
    repaired = push(model_ref, gguf, force=True)
    assert repaired.uploaded == [digest]  # every other blob was read back and found intact
    result = await pull(model_ref, Store(tmp_path / "store"))
    assert same_file(result.weights_path, gguf)


def test_a_refetch_grows_the_progress_total_instead_of_overflowing_it() -> None:
    import io

    from rich.console import Console

    from registry.progress import RichProgress

    progress = RichProgress(100, "pull", Console(file=io.StringIO()))
    with progress:
        progress.start("layer", "layer", 40)
        progress.advance("layer", 40)
        progress.restart("layer", 40)  # the 40 bytes were damaged: they move again
        progress.advance("layer", 40)
        overall = progress._bars.tasks[0]
        assert (overall.completed, overall.total) == (80, 140)
