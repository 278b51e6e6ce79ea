"""Splitting a GGUF file at its own structure.

A GGUF file is a header (magic, metadata key/values, the tensor index) followed by the
tensor data section; tensor offsets in the index are relative to the start of that section.
So the header goes in layers of its own, and the data section is cut only at tensor
boundaries: a changed template or metadata key changes only the header layer, and a changed
tensor changes only the chunk that holds it, even when the header grew or shrank.

Grouping: consecutive tensors share a chunk while they belong to the same transformer block
(`blk.N.`) and the chunk stays within `max_chunk`; a tensor larger than `max_chunk` is cut
into `max_chunk` pieces counted from its own start. Starting a new chunk at every block keeps
a change confined: re-quantizing one block never shifts the chunks of the next.

The header itself is cut into pieces too (`header_spans`): runs of small metadata keys, each
large key (the tokenizer's arrays) alone, the tensor index alone. It is read by streaming it
(`registry.gguf_header`); tensor bytes are never loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from registry.chunking import Span
from registry.errors import BadModelFile
from registry.gguf_header import GGUF_MAGIC, GGUFHeader, read_header, tensor_bytes

# Header pieces (see `header_spans`): a key this large travels alone; smaller keys travel in
# runs of at most this many bytes. A one-key or template change thus moves < 64 KiB.
LARGE_KEY = 8 << 10
SMALL_GROUP = 32 << 10
_BLOCK = re.compile(r"^(blk\.\d+)\.")


@dataclass(frozen=True)
class TensorExtent:
    name: str
    start: int  # absolute file offset of the tensor's first byte
    end: int  # where the next tensor starts (padding included), or the end of the file


@dataclass(frozen=True)
class GGUFInfo:
    """What the model says about itself, for the artifact's config."""

    architecture: str | None
    name: str | None
    quantization: str | None
    context_length: int | None
    parameter_count: int
    tensor_count: int
    data_offset: int
    extents: list[TensorExtent] = field(repr=False, default_factory=list)
    header: GGUFHeader = field(repr=False, kw_only=True)


def is_gguf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == GGUF_MAGIC


def read_gguf(path: Path) -> GGUFInfo:
    """Reads the header and tensor index by streaming them (`registry.gguf_header`); a
    malformed file is a `BadModelFile`."""
    from gguf.constants import LlamaFileType

    header = read_header(path)
    size = header.file_size
    tensors = sorted(header.tensors, key=lambda t: t.offset)
    extents: list[TensorExtent] = []
    for i, t in enumerate(tensors):
        start = header.data_offset + t.offset
        end = header.data_offset + tensors[i + 1].offset if i + 1 < len(tensors) else size
        if start + tensor_bytes(t) > end or end > size:
            raise BadModelFile(
                f"{path}: tensor {t.name!r} lies outside the data section or overlaps the next"
            )
        extents.append(TensorExtent(t.name, start, end))

    arch = header.value("general.architecture")
    arch_s = arch if isinstance(arch, str) else None
    file_type = header.value("general.file_type")
    quant = None
    if isinstance(file_type, int) and not isinstance(file_type, bool):
        try:
            quant = LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_").lower()
        except ValueError:
            quant = str(file_type)
    ctx = header.value(f"{arch_s}.context_length") if arch_s else None
    name = header.value("general.name")
    return GGUFInfo(
        architecture=arch_s,
        name=name if isinstance(name, str) else None,
        quantization=quant,
        context_length=ctx if isinstance(ctx, int) and not isinstance(ctx, bool) else None,
        parameter_count=sum(t.n_elements for t in header.tensors),
        tensor_count=len(header.tensors),
        data_offset=header.data_offset,
        extents=extents,
        header=header,
    )


def header_spans(header: GGUFHeader, max_chunk: int) -> list[Span]:
    """The header cut into content-addressed pieces, so a small change moves a small piece.

    - the fixed prefix and the small keys, grouped in runs of at most `SMALL_GROUP` bytes
      (a changed key, or a key added, changes one run: the prefix holds the key count);
    - every key of `LARGE_KEY` bytes or more alone (the tokenizer's tokens, scores, types
      and merges; a long chat template), cut at `max_chunk` if larger;
    - the tensor index alone (its offsets are relative to the data section, so it does not
      change when the metadata before it grows or shrinks);
    - the alignment padding alone (its length follows the header's).
    """
    spans: list[Span] = []
    run: list[tuple[int, int, str]] = []

    def close_run() -> None:
        if run:
            spans.append(Span(run[0][0], run[-1][1] - run[0][0], "header", run[0][2], run[-1][2]))
            run.clear()

    def alone(start: int, end: int, label: str) -> None:
        close_run()
        for off in range(start, end, max_chunk):
            spans.append(Span(off, min(max_chunk, end - off), "header", label, label))

    run.append((0, header.prefix_end, "(gguf prefix)"))
    for kv in header.kvs:
        size = kv.end - kv.start
        if size >= LARGE_KEY:
            alone(kv.start, kv.end, kv.key)
            continue
        if run and kv.end - run[0][0] > SMALL_GROUP:
            close_run()
        run.append((kv.start, kv.end, kv.key))
    close_run()
    if header.index_end > header.index_start:
        alone(header.index_start, header.index_end, "(tensor index)")
    if header.data_offset > header.index_end:
        alone(header.index_end, header.data_offset, "(padding)")
    return spans


def plan_spans(info: GGUFInfo, file_size: int, max_chunk: int) -> list[Span]:
    """The header's pieces, then tensor-aligned spans of at most `max_chunk` bytes."""
    spans = header_spans(info.header, max_chunk)
    group: list[TensorExtent] = []

    def close() -> None:
        if group:
            spans.append(
                Span(group[0].start, group[-1].end - group[0].start, "tensors", group[0].name, group[-1].name)
            )
            group.clear()

    # Bytes between the header and the first tensor (never expected, but kept whole).
    first = info.extents[0].start if info.extents else file_size
    if first > info.data_offset:
        spans.append(Span(info.data_offset, first - info.data_offset, "tensors"))
    for ext in info.extents:
        length = ext.end - ext.start
        if length > max_chunk:
            close()
            for off in range(ext.start, ext.end, max_chunk):
                spans.append(Span(off, min(max_chunk, ext.end - off), "tensors", ext.name, ext.name))
            continue
        if group and (
            _block(group[0].name) != _block(ext.name) or group[-1].end - group[0].start + length > max_chunk
        ):
            close()
        group.append(ext)
    close()
    return [s for s in spans if s.size > 0] or [Span(0, file_size, "header")]


def _block(name: str) -> str:
    m = _BLOCK.match(name)
    return m.group(1) if m else name
