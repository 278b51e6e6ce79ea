"""Small helpers shared by the model-distribution tests."""

from __future__ import annotations

from pathlib import Path

from registry.pull import PullResult, pull_model
from registry.push import ModelFiles, PushResult, push_model
from registry.reference import Reference
from registry.store import Store

# Small enough that the ~4 MiB test model has several chunks per transformer block.
CHUNK = 512 << 10


def push(ref: Reference, gguf: Path, *, force: bool = False, **settings: Path) -> PushResult:
    return push_model(ref, ModelFiles(gguf=gguf, **settings), plain_http=True, max_chunk=CHUNK, force=force)


async def pull(ref: Reference, store: Store, **kwargs: object) -> PullResult:
    return await pull_model(ref, store, plain_http=True, **kwargs)  # type: ignore[arg-type]


def text_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def same_file(a: Path | None, b: Path) -> bool:
    return a is not None and a.read_bytes() == b.read_bytes()
