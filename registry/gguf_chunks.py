"""Splitting a GGUF file at its own structure.

A GGUF file is a header (magic, metadata key/values, the tensor index) followed by the
tensor data section; tensor offsets in the index are relative to the start of that section.
So the header goes in a layer of its own, and the data section is cut only at tensor
boundaries: a changed template or metadata key changes only the header layer, and a changed
tensor changes only the chunk that holds it, even when the header grew or shrank.

Grouping: consecutive tensors share a chunk while they belong to the same transformer block
(`blk.N.`) and the chunk stays within `max_chunk`; a tensor larger than `max_chunk` is cut
into `max_chunk` pieces counted from its own start. Starting a new chunk at every block keeps
a change confined: re-quantizing one block never shifts the chunks of the next.

The file is read with the `gguf` package (memory-mapped; tensor bytes are never loaded).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from registry.chunking import Span
from registry.errors import BadModelFile

GGUF_MAGIC = b"GGUF"
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


def is_gguf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == GGUF_MAGIC


def read_gguf(path: Path) -> GGUFInfo:
    """Reads the header and tensor index; a malformed file is a `BadModelFile`."""
    from gguf import GGUFReader, LlamaFileType  # imported here: numpy-heavy, only push needs it

    try:
        reader = GGUFReader(path)
    except (ValueError, IndexError, KeyError, OverflowError) as exc:
        raise BadModelFile(f"{path}: not a readable GGUF file: {exc}") from None
    size = path.stat().st_size
    tensors = sorted(reader.tensors, key=lambda t: t.data_offset)
    extents: list[TensorExtent] = []
    for i, t in enumerate(tensors):
        end = tensors[i + 1].data_offset if i + 1 < len(tensors) else size
        if t.data_offset < reader.data_offset or t.data_offset + t.n_bytes > end or end > size:
            raise BadModelFile(
                f"{path}: tensor {t.name!r} lies outside the data section or overlaps the next"
            )
        extents.append(TensorExtent(t.name, int(t.data_offset), int(end)))

    def field_value(key: str) -> object:
        f = reader.get_field(key)
        return None if f is None else f.contents()

    arch = field_value("general.architecture")
    arch_s = arch if isinstance(arch, str) else None
    file_type = field_value("general.file_type")
    quant = None
    if isinstance(file_type, int):
        try:
            quant = LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_").lower()
        except ValueError:
            quant = str(file_type)
    ctx = field_value(f"{arch_s}.context_length") if arch_s else None
    name = field_value("general.name")
    return GGUFInfo(
        architecture=arch_s,
        name=name if isinstance(name, str) else None,
        quantization=quant,
        context_length=int(ctx) if isinstance(ctx, int) else None,
        parameter_count=sum(int(t.n_elements) for t in reader.tensors),
        tensor_count=len(reader.tensors),
        data_offset=int(reader.data_offset),
        extents=extents,
    )


def plan_spans(info: GGUFInfo, file_size: int, max_chunk: int) -> list[Span]:
    """The header span, then tensor-aligned spans of at most `max_chunk` bytes."""
    spans = [Span(0, info.data_offset, "header")]
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
