"""The edge's model sync against a real registry and the Ollama simulator on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from edge_agent.model_sync import ModelSync, ModelSyncConfig, seconds_until_window, versioned_name
from registry.artifact import canonical_json, sha256_digest
from registry.auth import Credentials
from registry.errors import DigestMismatch, RegistryError, RegistryUnavailable
from registry.push import BlobSource, RemoteRepository
from registry.reference import Reference
from simulators.ollama import OllamaSimConfig, OllamaSimulator
from tests.registry.conftest import free_port, make_gguf
from tests.registry.helpers import push, text_file

SERVED = "tiny:edge"


@pytest.fixture
async def ollama() -> AsyncIterator[OllamaSimulator]:
    async with OllamaSimulator(OllamaSimConfig(models=[])) as sim:
        yield sim


def make_sync(
    ollama: OllamaSimulator, tmp_path: Path, desired: Reference | str | None, **kw: object
) -> ModelSync:
    config = ModelSyncConfig(
        desired=str(desired) if desired else None,
        served_name=SERVED,
        store_dir=tmp_path / "store",
        plain_http=True,
        retry_initial_seconds=0.01,
        retry_max_seconds=0.05,
        **kw,  # type: ignore[arg-type]
    )
    return ModelSync(config, ollama_url=ollama.url)


async def digest_of(ollama: OllamaSimulator, name: str) -> str | None:
    async with httpx.AsyncClient(base_url=ollama.url) as client:
        models = (await client.get("/api/tags")).json()["models"]
    return next((m["digest"] for m in models if m["name"] == name), None)


async def template_of(ollama: OllamaSimulator, name: str) -> str:
    async with httpx.AsyncClient(base_url=ollama.url) as client:
        return str((await client.post("/api/show", json={"model": name})).json()["template"])


async def serves(ollama: OllamaSimulator, sync: ModelSync) -> str | None:
    """The version-specific model the served name is a copy of (by Ollama digest)."""
    served = await digest_of(ollama, SERVED)
    for name in sync.state.created:
        if served is not None and await digest_of(ollama, name) == served:
            return name
    return None


@pytest.fixture
def versions(model_ref: Reference, tmp_path: Path) -> dict[str, Reference]:
    """v1; v2 = v1 with a new template; v3 = v1 with one tensor changed."""
    gguf = make_gguf(tmp_path / "v1.gguf")
    push(model_ref, gguf, template=text_file(tmp_path / "t1", "T1 {{ .Prompt }}"))
    push(model_ref.with_tag("v2"), gguf, template=text_file(tmp_path / "t2", "T2 {{ .Prompt }}"))
    changed = make_gguf(tmp_path / "v3.gguf", changed={"blk.0.attn_q.weight": 1.0})
    push(model_ref.with_tag("v3"), changed, template=text_file(tmp_path / "t3", "T3 {{ .Prompt }}"))
    return {"v1": model_ref, "v2": model_ref.with_tag("v2"), "v3": model_ref.with_tag("v3")}


async def test_sync_registers_the_desired_version_and_serves_it(ollama, versions, tmp_path: Path) -> None:
    sync = make_sync(ollama, tmp_path, versions["v1"])
    assert await sync.sync_once() == "switched"
    assert await template_of(ollama, SERVED) == "T1 {{ .Prompt }}"
    assert await serves(ollama, sync) == versioned_name(SERVED, sync.state.current.digest)  # type: ignore[union-attr]


async def test_new_version_switches_the_served_name_and_keeps_the_previous(
    ollama, versions, tmp_path: Path
) -> None:
    sync = make_sync(ollama, tmp_path, versions["v1"])
    await sync.sync_once()
    first = sync.state.current
    sync.set_desired(str(versions["v2"]))
    await sync.sync_once()
    assert await template_of(ollama, SERVED) == "T2 {{ .Prompt }}"
    assert sync.state.previous == first
    assert await digest_of(ollama, first.ollama_model) is not None  # type: ignore[union-attr]


async def test_rollback_serves_the_previous_version_at_once(ollama, versions, tmp_path: Path) -> None:
    sync = make_sync(ollama, tmp_path, versions["v1"])
    await sync.sync_once()
    v1 = sync.state.current
    sync.set_desired(str(versions["v2"]))
    await sync.sync_once()
    await sync.rollback()
    assert await template_of(ollama, SERVED) == "T1 {{ .Prompt }}"
    assert sync.state.current.digest == v1.digest  # type: ignore[union-attr]
    assert sync.state.desired is not None and sync.state.desired.endswith(v1.digest)  # type: ignore[union-attr]


async def test_after_rollback_the_loop_does_not_roll_forward(ollama, versions, tmp_path: Path) -> None:
    sync = make_sync(ollama, tmp_path, versions["v1"])
    await sync.sync_once()
    sync.set_desired(str(versions["v2"]))
    await sync.sync_once()
    await sync.rollback()
    assert await sync.sync_once() == "up_to_date"
    assert await template_of(ollama, SERVED) == "T1 {{ .Prompt }}"


async def test_template_only_update_uploads_no_blob_to_ollama(ollama, versions, tmp_path: Path) -> None:
    sync = make_sync(ollama, tmp_path, versions["v1"])
    await sync.sync_once()
    sync.set_desired(str(versions["v2"]))
    await sync.sync_once()
    assert sync.last_registration is not None and sync.last_registration.uploaded_bytes == 0
    assert sync.last_pull is not None and sync.last_pull.layers_downloaded == 1


async def test_failed_registration_never_changes_what_is_served(
    ollama, versions, model_ref: Reference, tmp_path: Path
) -> None:
    sync = make_sync(ollama, tmp_path, versions["v1"])
    await sync.sync_once()
    broken = with_wrong_weights_digest(model_ref, make_gguf(tmp_path / "b.gguf", seed=77), "broken")
    sync.set_desired(str(broken))
    with pytest.raises(DigestMismatch, match="config is wrong"):  # Ollama refused the bytes
        await sync.sync_once()
    assert await template_of(ollama, SERVED) == "T1 {{ .Prompt }}"
    assert sync.status()["last_error"] is not None


def with_wrong_weights_digest(ref: Reference, gguf: Path, tag: str) -> Reference:
    """A version whose chunks are sound but whose config names another whole-file digest:
    it pulls (the chunks verify), and Ollama refuses the file it makes."""
    pushed = push(ref.with_tag(f"{tag}-base"), gguf)
    repo = RemoteRepository(ref, Credentials(), plain_http=True)
    manifest = json.loads(repo.get_manifest(pushed.manifest_digest)[0])
    config = json.loads(repo.call("GET", repo._base + "/blobs/" + manifest["config"]["digest"]).content)
    config["tandem"]["weights"]["digest"] = "sha256:" + "0" * 64
    raw = canonical_json(config)
    repo.upload(BlobSource(sha256_digest(raw), len(raw), "config", data=raw), len(raw), lambda n: None)
    manifest["config"].update(digest=sha256_digest(raw), size=len(raw))
    repo.put_manifest(tag, canonical_json(manifest))
    return ref.with_tag(tag)


async def test_an_update_never_writes_the_weights_file_on_the_edge_and_ollama_gets_the_exact_bytes(
    ollama, model_ref: Reference, tmp_path: Path
) -> None:
    gguf = make_gguf(tmp_path / "m.gguf", seed=31)
    push(model_ref, gguf)
    sync = make_sync(ollama, tmp_path, model_ref)
    assert await sync.sync_once() == "switched"
    assert not any((tmp_path / "store/files/sha256").iterdir())  # chunks only, streamed to Ollama
    digest = sync.store.load_config(sync.state.current.digest).tandem.weights.digest  # type: ignore[union-attr]
    assert ollama.library.blob_path(digest).read_bytes() == gguf.read_bytes()
    assert sync.last_registration is not None and sync.last_registration.uploaded_bytes == gguf.stat().st_size


async def test_a_version_ollama_already_has_is_not_read_again(ollama, versions, tmp_path: Path) -> None:
    sync = make_sync(ollama, tmp_path, versions["v1"])
    await sync.sync_once()
    config = sync.store.load_config(sync.state.current.digest)  # type: ignore[union-attr]
    for chunk in config.tandem.chunks:  # were any of them read, the upload would fail
        sync.store.blob_path(chunk.digest).chmod(0)
    try:
        sync.set_desired(str(versions["v2"]))  # a template change: same weights
        assert await sync.sync_once() == "switched"
    finally:
        for chunk in config.tandem.chunks:
            sync.store.blob_path(chunk.digest).chmod(0o644)
    assert sync.last_registration is not None and sync.last_registration.uploaded_bytes == 0


async def test_unreachable_registry_leaves_the_current_model_serving(
    ollama, versions, tmp_path: Path
) -> None:
    sync = make_sync(ollama, tmp_path, versions["v1"])
    await sync.sync_once()
    sync.set_desired(f"127.0.0.1:{free_port()}/models/gone:v9")
    with pytest.raises(RegistryUnavailable):
        await sync.sync_once()
    assert await template_of(ollama, SERVED) == "T1 {{ .Prompt }}"
    assert (sync.status()["failures"], sync.status()["current"]["digest"]) == (1, sync.state.current.digest)  # type: ignore[union-attr]


async def test_interrupted_sync_never_changes_what_is_served(ollama, versions, tmp_path: Path) -> None:
    await make_sync(ollama, tmp_path, versions["v1"]).sync_once()
    sync = make_sync(ollama, tmp_path, None, max_rate=256 << 10)  # same store and state, throttled
    sync.set_desired(str(versions["v3"]))
    task = asyncio.create_task(sync.sync_once())
    await wait_for(lambda: any((sync.store.root / "partial/sha256").iterdir()))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await template_of(ollama, SERVED) == "T1 {{ .Prompt }}"


async def test_restarted_sync_resumes_the_interrupted_pull_and_switches(
    ollama, versions, tmp_path: Path
) -> None:
    await make_sync(ollama, tmp_path, versions["v1"]).sync_once()
    sync = make_sync(ollama, tmp_path, None, max_rate=256 << 10)  # same store and state, throttled
    sync.set_desired(str(versions["v3"]))
    task = asyncio.create_task(sync.sync_once())
    partial = sync.store.root / "partial/sha256"
    await wait_for(lambda: sum(p.stat().st_size for p in partial.iterdir()) > 64 << 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    had = sum(p.stat().st_size for p in partial.iterdir())
    restarted = make_sync(ollama, tmp_path, None)  # a new process: state from the file
    assert restarted.state.desired == str(versions["v3"])
    assert await restarted.sync_once() == "switched"
    assert await template_of(ollama, SERVED) == "T3 {{ .Prompt }}"
    assert restarted.last_pull is not None
    assert (
        restarted.last_pull.bytes_downloaded
        == restarted.last_pull.bytes_total - restarted.last_pull.bytes_reused - had
    )


async def test_sync_state_survives_a_restart(ollama, versions, tmp_path: Path) -> None:
    sync = make_sync(ollama, tmp_path, versions["v1"])
    await sync.sync_once()
    restarted = make_sync(ollama, tmp_path, versions["v1"])
    assert restarted.state.current == sync.state.current
    assert await restarted.sync_once() == "up_to_date"


async def test_versions_older_than_the_previous_are_collected(ollama, versions, tmp_path: Path) -> None:
    sync = make_sync(ollama, tmp_path, versions["v1"])
    for tag in ("v1", "v2", "v3"):
        sync.set_desired(str(versions[tag]))
        await sync.sync_once()
    oldest = versioned_name(SERVED, "sha256:" + "0" * 64)
    names = {sync.state.current.ollama_model, sync.state.previous.ollama_model}  # type: ignore[union-attr]
    assert set(sync.state.created) == names and oldest not in names
    manifests = {"sha256:" + p.name for p in (sync.store.root / "manifests/sha256").iterdir()}
    assert manifests == {sync.state.current.digest, sync.state.previous.digest}  # type: ignore[union-attr]


async def test_background_loop_retries_until_the_version_appears(
    ollama, model_ref: Reference, gguf_file: Path, tmp_path: Path
) -> None:
    sync = make_sync(ollama, tmp_path, model_ref)  # not pushed yet: NotFound, retried
    runner = asyncio.create_task(sync.run())
    await wait_for(lambda: sync.state.failures >= 2)
    push(model_ref, gguf_file)
    await wait_for(lambda: sync.state.current is not None)
    await sync.stop()
    await asyncio.wait_for(runner, 10)
    assert sync.state.failures == 0 and await digest_of(ollama, SERVED) is not None


async def wait_for(condition) -> None:  # type: ignore[no-untyped-def]
    """Waits for a condition to hold (not a timing assertion: the deadline only stops a hang)."""
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.005)


def test_download_window_math_wraps_past_midnight() -> None:
    import datetime

    at = datetime.datetime(2026, 1, 5, 12, 0)
    assert seconds_until_window("22:00-06:00", at) == 10 * 3600
    assert seconds_until_window("22:00-06:00", at.replace(hour=23)) == 0
    assert seconds_until_window("22:00-06:00", at.replace(hour=5, minute=59)) == 0
    assert seconds_until_window("09:00-17:00", at) == 0
    assert seconds_until_window("13:30-14:00", at) == 5400


async def test_downloads_wait_for_the_window_while_the_current_model_serves(
    ollama, versions, tmp_path: Path
) -> None:
    import datetime

    await make_sync(ollama, tmp_path, versions["v1"]).sync_once()
    now = datetime.datetime.now()
    closed = f"{(now + datetime.timedelta(hours=2)):%H:%M}-{(now + datetime.timedelta(hours=3)):%H:%M}"
    sync = make_sync(ollama, tmp_path, None, download_window=closed)
    sync.set_desired(str(versions["v3"]))  # one changed tensor: bytes to download
    task = asyncio.create_task(sync.sync_once())
    await wait_for(lambda: sync.status()["waiting_for_download_window"])
    assert not any((sync.store.root / "partial/sha256").iterdir())
    assert await template_of(ollama, SERVED) == "T1 {{ .Prompt }}"
    await sync.stop()
    with pytest.raises(RegistryError, match="download window"):
        await task


def test_a_mirror_that_is_not_a_url_is_refused_in_the_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"mirror 'mirror\.local:5000' must be http"):
        ModelSyncConfig(served_name="x:y", store_dir=tmp_path, mirrors=["mirror.local:5000"])
