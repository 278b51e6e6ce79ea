"""Manifests with hostile content, served by a real registry, are refused before any use."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from registry.artifact import DEFAULT_LIMITS, parse_manifest
from registry.auth import Credentials
from registry.errors import ManifestRejected
from registry.push import RemoteRepository
from registry.reference import Reference
from registry.store import Store
from tests.registry.helpers import pull, push, text_file

Mutation = Callable[[dict[str, Any]], None]


def publish_mutated(ref: Reference, gguf: Path, tmp_path: Path, mutate: Mutation) -> Reference:
    """Pushes a good version, then tags a tampered copy of its manifest as `evil`."""
    push(ref, gguf, template=text_file(tmp_path / "template", "{{ .Prompt }}"))
    repo = RemoteRepository(ref, Credentials(), plain_http=True)
    raw, _ = repo.get_manifest(ref.target)
    manifest = json.loads(raw)
    mutate(manifest)
    repo.put_manifest("evil", json.dumps(manifest).encode())
    return ref.with_tag("evil")


def set_annotation(key: str, value: str) -> Mutation:
    def mutate(m: dict[str, Any]) -> None:
        m["layers"][1]["annotations"][key] = value

    return mutate


async def refused(ref: Reference, gguf: Path, tmp_path: Path, mutate: Mutation) -> str:
    evil = publish_mutated(ref, gguf, tmp_path, mutate)
    store = Store(tmp_path / "store")
    with pytest.raises(ManifestRejected) as info:
        await pull(evil, store)
    assert not any((store.root / "files/sha256").iterdir())
    return info.value.message


async def test_layer_path_with_dotdot_is_refused(model_ref, gguf_file: Path, tmp_path: Path) -> None:
    message = await refused(
        model_ref, gguf_file, tmp_path, set_annotation("org.cncf.model.filepath", "../../x")
    )
    assert "'..'" in message


async def test_layer_title_with_absolute_path_is_refused(model_ref, gguf_file: Path, tmp_path: Path) -> None:
    message = await refused(
        model_ref, gguf_file, tmp_path, set_annotation("org.opencontainers.image.title", "/etc/passwd")
    )
    assert "absolute" in message


async def test_unknown_layer_media_type_is_refused(model_ref, gguf_file: Path, tmp_path: Path) -> None:
    def mutate(m: dict[str, Any]) -> None:
        m["layers"][1]["mediaType"] = "application/x-executable"

    assert "unknown media type" in await refused(model_ref, gguf_file, tmp_path, mutate)


async def test_absurd_layer_count_is_refused(model_ref, gguf_file: Path, tmp_path: Path) -> None:
    def mutate(m: dict[str, Any]) -> None:
        m["layers"] = [m["layers"][1]] * (DEFAULT_LIMITS.max_layers + 1)

    assert "layers, over the" in await refused(model_ref, gguf_file, tmp_path, mutate)


async def test_weights_layer_size_that_disagrees_with_the_config_is_refused(
    model_ref, gguf_file: Path, tmp_path: Path
) -> None:
    def mutate(m: dict[str, Any]) -> None:
        m["layers"][1]["size"] -= 5

    assert "lie" in await refused(model_ref, gguf_file, tmp_path, mutate)


async def test_layer_smaller_than_its_blob_is_refused_while_downloading(
    model_ref, gguf_file: Path, tmp_path: Path
) -> None:
    def mutate(m: dict[str, Any]) -> None:
        m["layers"][-1]["size"] -= 5  # the template: not in the chunk list, so only the transfer can tell

    assert "lie" in await refused(model_ref, gguf_file, tmp_path, mutate)


async def test_layer_larger_than_its_blob_is_refused_while_downloading(
    model_ref, gguf_file: Path, tmp_path: Path
) -> None:
    def mutate(m: dict[str, Any]) -> None:
        m["layers"][-1]["size"] += 1000

    assert "lie" in await refused(model_ref, gguf_file, tmp_path, mutate)


async def test_weights_layer_without_offset_is_refused(model_ref, gguf_file: Path, tmp_path: Path) -> None:
    def mutate(m: dict[str, Any]) -> None:
        del m["layers"][1]["annotations"]["io.tandem.offset"]

    assert "offset" in await refused(model_ref, gguf_file, tmp_path, mutate)


async def test_artifact_that_is_not_a_model_is_refused(model_ref, gguf_file: Path, tmp_path: Path) -> None:
    def mutate(m: dict[str, Any]) -> None:
        m["artifactType"] = "application/vnd.example.malware"

    assert "not a model" in await refused(model_ref, gguf_file, tmp_path, mutate)


def test_manifest_over_the_size_limit_is_refused_before_parsing() -> None:
    with pytest.raises(ManifestRejected, match="over the"):
        parse_manifest(b" " * (DEFAULT_LIMITS.max_manifest_bytes + 1))


def test_manifest_that_is_not_json_is_refused() -> None:
    with pytest.raises(ManifestRejected, match="not JSON"):
        parse_manifest(b"\xff\xfe<html>")


def test_layer_size_that_is_not_an_integer_is_refused() -> None:
    manifest = {
        "schemaVersion": 2,
        "config": {
            "mediaType": "application/vnd.cncf.model.config.v1+json",
            "digest": "sha256:" + "a" * 64,
            "size": 2,
        },
        "layers": [
            {
                "mediaType": "application/vnd.cncf.model.weight.v1.raw",
                "digest": "sha256:" + "b" * 64,
                "size": "12",
                "annotations": {"io.tandem.role": "weights", "io.tandem.offset": "0"},
            }
        ],
    }
    with pytest.raises(ManifestRejected, match="malformed"):
        parse_manifest(json.dumps(copy.deepcopy(manifest)).encode())
