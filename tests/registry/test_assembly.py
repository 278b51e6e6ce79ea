"""Reassembly of the weights file: beside the downloads, verified, and never left half-made."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from registry.artifact import ModelConfig, parse_config
from registry.assembly import Assembler, AssemblyCancelled, assemble
from registry.errors import DigestMismatch
from registry.push import ModelFiles, pack
from registry.reference import Reference
from registry.store import Store
from tests.registry.helpers import CHUNK, pull, push, same_file


def chunks_of(gguf: Path) -> tuple[ModelConfig, list[tuple[str, bytes]]]:
    """`gguf`'s config, and its chunks as (digest, bytes)."""
    config = parse_config(pack(ModelFiles(gguf), name="m", max_chunk=CHUNK).config)
    data = gguf.read_bytes()
    return config, [(c.digest, data[c.offset : c.offset + c.size]) for c in config.tandem.chunks]


def packed_into(store: Store, gguf: Path) -> tuple[Assembler, list[tuple[str, bytes]]]:
    """An assembler for `gguf`'s config, and its chunks, not yet in `store`."""
    config, chunks = chunks_of(gguf)
    return Assembler(store, config), chunks


def test_the_file_is_built_as_chunks_arrive_in_any_order(gguf_file: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    assembler, chunks = packed_into(store, gguf_file)
    worker = threading.Thread(target=assembler.run)
    worker.start()
    for digest, data in reversed(chunks):  # the last chunk first: the assembler must wait
        store.put_bytes(digest, data)
        assembler.chunk_ready()
    worker.join(timeout=10)
    assert same_file(assembler.commit(), gguf_file)


def test_a_cancelled_assembly_leaves_no_file(gguf_file: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    assembler, chunks = packed_into(store, gguf_file)
    store.put_bytes(*chunks[0])
    errors: list[BaseException] = []

    def run() -> None:
        try:
            assembler.run()
        except AssemblyCancelled as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    assembler.cancel()
    worker.join(timeout=10)
    assert len(errors) == 1
    assert not any((store.root / "files/sha256").iterdir())


def test_a_config_whose_whole_file_digest_lies_is_refused(gguf_file: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    config, chunks = chunks_of(gguf_file)
    for digest, data in chunks:
        store.put_bytes(digest, data)
    weights = config.tandem.weights.model_copy(update={"digest": "sha256:" + "0" * 64})
    lying = config.model_copy(update={"tandem": config.tandem.model_copy(update={"weights": weights})})
    with pytest.raises(DigestMismatch, match="whole-file digest is wrong"):
        assemble(store, lying)
    assert not any((store.root / "files/sha256").iterdir())


async def test_a_chunk_damaged_in_the_store_is_discarded_and_fetched_again(
    model_ref: Reference, gguf_file: Path, tmp_path: Path
) -> None:
    push(model_ref, gguf_file)
    store = Store(tmp_path / "store")
    first = await pull(model_ref, store, assemble=False)
    config = store.load_config(first.digest)
    victim = max(config.tandem.chunks, key=lambda c: c.size).digest
    damaged = bytearray(store.read_blob(victim))
    damaged[100] ^= 0xFF
    store.blob_path(victim).write_bytes(bytes(damaged))  # as a failing disk would
    with pytest.raises(DigestMismatch, match="1 chunk"):
        assemble(store, config)
    again = await pull(model_ref, store)
    assert again.downloaded == [victim]
    assert same_file(again.weights_path, gguf_file)


async def test_a_pull_that_moves_one_chunk_assembles_the_others_from_the_store(
    model_ref: Reference, gguf_file: Path, tmp_path: Path
) -> None:
    push(model_ref, gguf_file)
    store = Store(tmp_path / "store")
    first = await pull(model_ref, store, assemble=False)
    config = store.load_config(first.digest)
    store.blob_path(config.tandem.chunks[-1].digest).unlink()  # only this one must move
    result = await pull(model_ref, store)
    assert result.downloaded == [config.tandem.chunks[-1].digest]
    assert same_file(result.weights_path, gguf_file)


async def test_a_weights_file_altered_in_place_is_not_handed_back_by_the_next_pull(
    model_ref: Reference, gguf_file: Path, tmp_path: Path
) -> None:
    push(model_ref, gguf_file)
    store = Store(tmp_path / "store")
    first = await pull(model_ref, store)
    assert first.weights_path is not None
    with first.weights_path.open("r+b") as f:  # same size, one byte changed, as an editor would
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    again = await pull(model_ref, store)
    assert same_file(again.weights_path, gguf_file)


async def test_a_blob_altered_in_place_is_fetched_again_by_the_next_pull(
    model_ref: Reference, gguf_file: Path, tmp_path: Path
) -> None:
    push(model_ref, gguf_file)
    store = Store(tmp_path / "store")
    first = await pull(model_ref, store, assemble=False)
    victim = max(store.load_config(first.digest).tandem.chunks, key=lambda c: c.size).digest
    with store.blob_path(victim).open("r+b") as f:
        f.write(b"\0\0\0\0")
    again = await pull(model_ref, store, assemble=False)
    assert again.downloaded == [victim]


async def test_verify_finds_and_removes_damage_and_a_killed_pulls_temporaries_go_at_the_next_pull(
    model_ref: Reference, gguf_file: Path, tmp_path: Path
) -> None:
    push(model_ref, gguf_file)
    store = Store(tmp_path / "store")
    first = await pull(model_ref, store)
    assert first.weights_path is not None and store.verify() == []
    leftover = first.weights_path.with_name(first.weights_path.name + ".tmp99999")
    leftover.write_bytes(b"half a file")
    victim = store.load_manifest(first.digest).layers[0].digest
    store.blob_path(victim).write_bytes(b"not what it was")
    problems = store.verify()
    assert len(problems) == 1 and victim[7:19] in problems[0]
    assert not store.has(victim)
    await pull(model_ref, store)
    assert not leftover.exists()
    assert store.verify() == []
