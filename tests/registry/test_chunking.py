"""How weights files are cut into layers."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.chunking import chunk_file
from registry.errors import BadModelFile
from tests.registry.conftest import make_gguf


def test_gguf_header_pieces_end_at_the_data_section(gguf_file: Path) -> None:
    chunked = chunk_file(gguf_file, max_chunk=512 << 10)
    assert chunked.format == "gguf"
    header = [p for p in chunked.parts if p.span.kind == "header"]
    assert chunked.parts[: len(header)] == header
    assert sum(p.span.size for p in header) == chunked.gguf.data_offset  # type: ignore[union-attr]
    assert [p.span.first for p in header][-2:] == ["(tensor index)", "(padding)"]


def test_gguf_chunks_start_at_tensor_boundaries_and_tile_the_file(gguf_file: Path) -> None:
    chunked = chunk_file(gguf_file, max_chunk=512 << 10)
    starts = {e.start for e in chunked.gguf.extents}  # type: ignore[union-attr]
    offsets = [p.span.offset for p in chunked.parts if p.span.kind == "tensors"]
    assert offsets and all(off in starts for off in offsets)
    assert sum(p.span.size for p in chunked.parts) == gguf_file.stat().st_size


def test_gguf_chunks_never_exceed_the_bound(gguf_file: Path) -> None:
    bound = 100 << 10  # smaller than one 256 KiB tensor: tensors get split
    chunked = chunk_file(gguf_file, max_chunk=bound)
    assert max(p.span.size for p in chunked.parts) <= bound


def test_gguf_chunks_do_not_span_two_transformer_blocks(gguf_file: Path) -> None:
    chunked = chunk_file(gguf_file, max_chunk=64 << 20)
    for part in (p for p in chunked.parts if p.span.kind == "tensors"):
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
    assert {p.span.kind for p in changed} == {"header"}
    # the run of small keys, and the padding (its length follows the header's); never the index
    assert "(tensor index)" not in {p.span.first for p in changed}
    assert sum(p.span.size for p in changed) < 64 << 10


def test_tokenizer_arrays_travel_alone_and_survive_a_metadata_change(tmp_path: Path) -> None:
    vocab = [f"tok{i}" for i in range(5000)]  # ~60 KiB of strings: a key of its own
    a = chunk_file(make_gguf(tmp_path / "a.gguf", tokens=vocab), max_chunk=512 << 10)
    b = chunk_file(
        make_gguf(tmp_path / "b.gguf", tokens=vocab, metadata={"tokenizer.chat_template": "{{ y }}"}),
        max_chunk=512 << 10,
    )
    tokens = [p for p in a.parts if p.span.first == "tokenizer.ggml.tokens"]
    assert len(tokens) == 1 and tokens[0].span.size > 50_000
    assert tokens[0].digest in {p.digest for p in b.parts}
    moved = sum(p.span.size for p in b.parts if p.digest not in {q.digest for q in a.parts})
    assert moved < 64 << 10


def test_streamed_header_agrees_with_gguf_reader(tmp_path: Path) -> None:
    from gguf import GGUFReader

    path = make_gguf(tmp_path / "m.gguf", tokens=["a", "bb", "ccc"], metadata={"x.y": "z"})
    info = chunk_file(path).gguf
    reader = GGUFReader(path)
    assert info is not None
    assert info.data_offset == reader.data_offset
    assert sorted((e.name, e.start) for e in info.extents) == sorted(
        (t.name, int(t.data_offset)) for t in reader.tensors
    )
    assert info.parameter_count == sum(int(t.n_elements) for t in reader.tensors)
    assert [kv.key for kv in info.header.kvs] == list(reader.fields)[3:]  # GGUFReader adds 3 of its own


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "empty"),
        (b"hello, this is a text file and not a model\n", "not a GGUF file"),
        (b"GGUF" + (3).to_bytes(4, "little") + (1 << 60).to_bytes(8, "little") * 2 + b"\0" * 64, "more than"),
        (b"GGUF" + (1 << 24).to_bytes(4, "little") + b"\0" * 64, "big-endian"),
    ],
)
def test_hostile_or_foreign_headers_are_refused_by_name(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    from registry.gguf_chunks import read_gguf

    with pytest.raises(BadModelFile, match=problem):
        read_gguf(path)


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
