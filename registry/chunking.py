"""Cutting a weights file into parts and hashing them.

`chunk_file` picks the strategy (GGUF structure when the file is GGUF, content-defined
chunking otherwise), then reads the file once, computing every part's sha256 and the whole
file's sha256 together with bounded memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from registry.errors import BadModelFile

if TYPE_CHECKING:
    from registry.gguf_chunks import GGUFInfo

DEFAULT_MAX_CHUNK = 64 << 20
MIN_MAX_CHUNK = 64 << 10
_READ = 1 << 20
_RING = 4  # buffers in flight between the reader and the whole-file hashing thread


@dataclass(frozen=True)
class Span:
    """Bytes [offset, offset+size) of the file; `first`/`last` name the tensors it holds."""

    offset: int
    size: int
    kind: Literal["header", "tensors", "cdc"]
    first: str | None = None
    last: str | None = None


@dataclass(frozen=True)
class Part:
    span: Span
    digest: str


@dataclass(frozen=True)
class ChunkedFile:
    path: Path
    format: Literal["gguf", "raw"]
    chunking: Literal["gguf-tensors", "cdc"]
    size: int
    digest: str
    parts: list[Part]
    gguf: GGUFInfo | None


def plan_spans(path: Path, max_chunk: int = DEFAULT_MAX_CHUNK) -> tuple[list[Span], GGUFInfo | None]:
    """Where the file will be cut, without hashing it."""
    from registry import cdc, gguf_chunks

    if max_chunk < MIN_MAX_CHUNK:
        raise BadModelFile(f"chunk size {max_chunk} is below the {MIN_MAX_CHUNK}-byte minimum")
    size = path.stat().st_size
    if gguf_chunks.is_gguf(path):
        info = gguf_chunks.read_gguf(path)
        return gguf_chunks.plan_spans(info, size, max_chunk), info
    cuts = cdc.cut_points(path, avg_size=max_chunk // 4, min_size=max_chunk // 16, max_size=max_chunk)
    return [Span(off, n, "cdc") for off, n in cuts], None


def chunk_file(
    path: Path,
    max_chunk: int = DEFAULT_MAX_CHUNK,
    on_bytes: Callable[[int], None] | None = None,
    on_part: Callable[[Part], None] | None = None,
) -> ChunkedFile:
    """Cuts and hashes `path` in one sequential read; `on_bytes` is told how many bytes were
    hashed, as it goes, and `on_part` each part as soon as its digest is known (a push
    uploads it while the rest of the file is still being hashed).

    Each buffer feeds two sha256s, the part's and the whole file's. The whole file's runs in a
    helper thread (hashlib releases the GIL), so hashing costs about one sha256 of the file in
    wall time, not two: buffers rotate through a small ring, and a buffer is refilled only
    after the helper has hashed it.
    """
    try:
        spans, info = plan_spans(path, max_chunk)
        whole = hashlib.sha256()
        parts: list[Part] = []
        ring = [memoryview(bytearray(_READ)) for _ in range(_RING)]
        pending: list[Future[None] | None] = [None] * _RING
        slot = 0
        with (
            path.open("rb", buffering=0) as f,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="whole-hash") as helper,
        ):
            for span in spans:
                h = hashlib.sha256()
                left = span.size
                while left:
                    if (waiting := pending[slot]) is not None:
                        waiting.result()
                    buf = ring[slot]
                    n = f.readinto(buf[: min(_READ, left)])
                    if not n:
                        raise BadModelFile(f"{path}: file shrank while it was being read")
                    piece = buf[:n]
                    pending[slot] = helper.submit(whole.update, piece)  # one worker: in order
                    h.update(piece)
                    left -= n
                    slot = (slot + 1) % _RING
                    if on_bytes:
                        on_bytes(n)
                parts.append(Part(span, "sha256:" + h.hexdigest()))
                if on_part:
                    on_part(parts[-1])
            for waiting in pending:
                if waiting is not None:
                    waiting.result()
            if f.read(1):
                raise BadModelFile(f"{path}: file grew while it was being read")
        size = sum(p.span.size for p in parts)
    except OSError as exc:
        raise BadModelFile(f"{path}: cannot read: {exc.strerror or exc}") from None
    return ChunkedFile(
        path=path,
        format="gguf" if info else "raw",
        chunking="gguf-tensors" if info else "cdc",
        size=size,
        digest="sha256:" + whole.hexdigest(),
        parts=parts,
        gguf=info,
    )
