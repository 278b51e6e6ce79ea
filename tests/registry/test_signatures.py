"""Signed versions: pushed with a private key, verified offline with the public key on pull
and sync; unsigned or mismatched versions are refused when a signature is required."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from edge_agent.model_sync import ModelSync, ModelSyncConfig
from registry.auth import Credentials
from registry.cli import model
from registry.errors import SignatureRejected
from registry.push import ModelFiles, PushResult, RemoteRepository, push_model
from registry.reference import Reference
from registry.signature import signature_manifest, signature_tag
from registry.store import Store
from simulators.ollama import OllamaSimConfig, OllamaSimulator
from tests.registry.helpers import CHUNK, pull, same_file, text_file


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """A fresh P-256 key pair as PEM files: (private, public)."""
    return key_pair(tmp_path, "ops")


def key_pair(where: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = where / f"{name}.key.pem", where / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def push_signed(ref: Reference, gguf: Path, key: Path | None, **settings: Path) -> PushResult:
    files = ModelFiles(gguf=gguf, **settings)  # type: ignore[arg-type]
    return push_model(ref, files, plain_http=True, max_chunk=CHUNK, sign_key=key)


async def test_a_signed_version_pulls_and_verifies_with_the_public_key(
    model_ref: Reference, gguf_file: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    pushed = push_signed(model_ref, gguf_file, keys[0], template=text_file(tmp_path / "t", "{{ .Prompt }}"))
    result = await pull(model_ref, Store(tmp_path / "store"), public_key=keys[1])
    assert result.signature == pushed.signature == signature_tag(pushed.manifest_digest)
    assert same_file(result.weights_path, gguf_file)


def test_signing_leaves_the_version_digest_as_it_is(
    model_ref: Reference, gguf_file: Path, keys: tuple[Path, Path]
) -> None:
    unsigned = push_signed(model_ref, gguf_file, None)
    signed = push_signed(model_ref, gguf_file, keys[0])
    assert signed.manifest_digest == unsigned.manifest_digest
    assert (signed.uploaded_bytes, signed.tag_written) == (0, False)


async def test_an_unsigned_version_is_refused_before_any_layer_moves(
    model_ref: Reference, gguf_file: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    push_signed(model_ref, gguf_file, None)
    store = Store(tmp_path / "store")
    with pytest.raises(SignatureRejected, match="not signed"):
        await pull(model_ref, store, public_key=keys[1])
    assert not any((store.root / "partial/sha256").iterdir())
    assert len(list((store.root / "blobs/sha256").iterdir())) == 1  # the config, read to plan


async def test_a_version_signed_with_another_key_is_refused_and_leaves_no_weights_file(
    model_ref: Reference, gguf_file: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    intruder, _ = key_pair(tmp_path, "intruder")
    push_signed(model_ref, gguf_file, intruder)
    store = Store(tmp_path / "store")
    with pytest.raises(SignatureRejected, match="does not verify"):
        await pull(model_ref, store, public_key=keys[1])
    assert not any((store.root / "files/sha256").iterdir())


async def test_a_signature_moved_onto_another_version_is_refused(
    model_ref: Reference, gguf_file: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    signed = push_signed(model_ref, gguf_file, keys[0], template=text_file(tmp_path / "t1", "T1"))
    other = push_signed(model_ref.with_tag("v2"), gguf_file, None, template=text_file(tmp_path / "t2", "T2"))
    repo = RemoteRepository(model_ref, Credentials(), plain_http=True)
    raw, _ = repo.get_manifest(signature_tag(signed.manifest_digest))
    bundle_digest = json.loads(raw)["layers"][0]["digest"]
    bundle = repo.call("GET", f"{repo._base}/blobs/{bundle_digest}").content
    moved = signature_manifest(bundle, other.manifest_digest, len(repo.get_manifest("v2")[0]))
    repo.put_manifest(signature_tag(other.manifest_digest), moved)  # v1's signature, now "for" v2
    with pytest.raises(SignatureRejected, match="does not verify"):
        await pull(model_ref.with_tag("v2"), Store(tmp_path / "store"), public_key=keys[1])


def test_cli_push_signs_and_pull_requires_the_signature(
    model_ref: Reference, gguf_file: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    common = ["--plain-http", "--json"]
    push_args = ["push", str(model_ref), "--gguf", str(gguf_file), "--chunk-size", "512KiB"]
    pushed = CliRunner().invoke(model, [*push_args, "--sign-key", str(keys[0]), *common])
    assert pushed.exit_code == 0, pushed.output
    pull_args = ["pull", str(model_ref), "--store", str(tmp_path / "s"), "--require-signature"]
    ok = CliRunner().invoke(model, [*pull_args, "--public-key", str(keys[1]), *common])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["signature"] == json.loads(pushed.stdout)["signature"]
    _, stranger = key_pair(tmp_path, "stranger")
    refused = CliRunner().invoke(model, [*pull_args, "--public-key", str(stranger), *common])
    assert refused.exit_code == SignatureRejected.exit_code
    assert json.loads(refused.stdout)["kind"] == "SignatureRejected"


def test_requiring_signatures_without_a_key_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="public_key"):
        ModelSyncConfig(served_name="m:1", store_dir=tmp_path, require_signature=True)


@pytest.fixture
async def ollama() -> AsyncIterator[OllamaSimulator]:
    async with OllamaSimulator(OllamaSimConfig(models=[])) as sim:
        yield sim


async def test_sync_that_requires_signatures_never_serves_an_unsigned_version(
    ollama: OllamaSimulator, model_ref: Reference, gguf_file: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    push_signed(model_ref, gguf_file, keys[0], template=text_file(tmp_path / "t1", "T1"))
    push_signed(model_ref.with_tag("v2"), gguf_file, None, template=text_file(tmp_path / "t2", "T2"))
    config = ModelSyncConfig(
        desired=str(model_ref),
        served_name="tiny:edge",
        store_dir=tmp_path / "store",
        plain_http=True,
        require_signature=True,
        public_key=keys[1],
    )
    sync = ModelSync(config, ollama_url=ollama.url)
    assert await sync.sync_once() == "switched"
    serving = sync.state.current
    sync.set_desired(str(model_ref.with_tag("v2")))
    with pytest.raises(SignatureRejected):
        await sync.sync_once()
    assert sync.state.current == serving
    assert "not signed" in (sync.status()["last_error"] or "")
