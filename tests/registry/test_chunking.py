"""How weights files are cut into layers."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.chunking import chunk_file
from registry.errors import BadModelFile
from tests.registry.conftest import make_gguf


def test_gguf_header_is_its_own_layer_and_ends_at_the_data_section(gguf_file: Path) -> None:
    chunked = chunk_file(gguf_file, max_chunk=512 << 10)
    assert chunked.format == "gguf"
    assert chunked.parts[0].span.kind == "header"
    assert chunked.parts[0].span.size == chunked.gguf.data_offset  # type: ignore[union-attr]


def test_gguf_chunks_start_at_tensor_boundaries_and_tile_the_file(gguf_file: Path) -> None:
    chunked = chunk_file(gguf_file, max_chunk=512 << 10)
    starts = {e.start for e in chunked.gguf.extents}  # type: ignore[union-attr]
    offsets = [p.span.offset for p in chunked.parts]
    assert all(off in starts for off in offsets[1:])
    assert sum(p.span.size for p in chunked.parts) == gguf_file.stat().st_size


def test_gguf_chunks_never_exceed_the_bound(gguf_file: Path) -> None:
    bound = 100 << 10  # smaller than one 256 KiB tensor: tensors get split
    chunked = chunk_file(gguf_file, max_chunk=bound)
    assert max(p.span.size for p in chunked.parts) <= bound


def test_gguf_chunks_do_not_span_two_transformer_blocks(gguf_file: Path) -> None:
    chunked = chunk_file(gguf_file, max_chunk=64 << 20)
    for part in chunked.parts[1:]:
        first, last = part.span.first or "", part.span.last or ""
        assert first.split(".")[:2] == last.split(".")[:2]


def test_config_reports_gguf_metadata(gguf_file: Path) -> None:
    info = chunk_file(gguf_file).gguf
    assert info is not None
    assert (info.architecture, info.context_length, info.quantization) == ("qwen3", 4096, "f32")


def test_changing_one_tensor_changes_only_its_chunk(tmp_path: Path) -> None:
    a = chunk_file(make_gguf(tmp_path / "a.gguf"), max_chunk=512 << 10)
    b = chunk_file(make_gguf(tmp_path / "b.gguf", changed={"blk.2.attn_v.weight": 1.0}), max_chunk=512 << 10)
    changed = [p for p in b.parts if p.digest not in {q.digest for q in a.parts}]
    assert [(p.span.first, p.span.last) for p in changed] == [("blk.2.attn_v.weight", "blk.2.ffn_up.weight")]


def test_changing_a_metadata_key_changes_only_the_header(tmp_path: Path) -> None:
    a = chunk_file(make_gguf(tmp_path / "a.gguf"), max_chunk=512 << 10)
    b = chunk_file(
        make_gguf(tmp_path / "b.gguf", metadata={"tokenizer.chat_template": "{{ x }}"}), max_chunk=512 << 10
    )
    changed = [p for p in b.parts if p.digest not in {q.digest for q in a.parts}]
    assert [p.span.kind for p in changed] == ["header"]


def test_file_that_is_not_gguf_falls_back_to_content_defined_chunks(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(range(256)) * 4096 + __import__("os").urandom(2 << 20))
    chunked = chunk_file(path, max_chunk=256 << 10)
    assert (chunked.format, chunked.chunking) == ("raw", "cdc")
    assert sum(p.span.size for p in chunked.parts) == path.stat().st_size


def test_content_defined_chunks_survive_an_insertion(tmp_path: Path) -> None:
    import numpy as np

    data = np.random.default_rng(7).integers(0, 256, 4 << 20, dtype=np.uint8).tobytes()
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(data)
    b.write_bytes(data[:1_000_000] + b"inserted bytes" + data[1_000_000:])
    pa, pb = chunk_file(a, max_chunk=256 << 10), chunk_file(b, max_chunk=256 << 10)
    new = [p for p in pb.parts if p.digest not in {q.digest for q in pa.parts}]
    assert sum(p.span.size for p in new) < 0.15 * len(data)


def test_truncated_gguf_is_refused(tmp_path: Path, gguf_file: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(gguf_file.read_bytes()[:600])
    with pytest.raises(BadModelFile):
        chunk_file(broken)
