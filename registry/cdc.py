"""Content-defined chunking for files that are not GGUF.

Cut points depend only on the bytes around them (a 48-byte window), so inserting or
removing bytes moves only the cuts near the edit and every other chunk keeps its digest.

The rolling hash is a windowed polynomial hash over a fixed table of 64-bit values (the
"gear" idea): H(i) = sum_j G[b(i-j)] * P^j for j < 48, mod 2^64. Because P is odd it is
invertible mod 2^64, so H over a whole block comes from one prefix sum: numpy computes it
for every position at once (about 100-200 MB/s) where a per-byte Python loop would manage a few MB/s.
A position is a cut candidate when the top bits of H are zero; the usual minimum and
maximum chunk sizes apply.

Why not the `fastcdc` package: its only fast path is a compiled extension with wheels up to
CPython 3.12, its fallback is pure Python and announces itself on stdout (which would corrupt
`--json` output), and it pulls in four CLI-only dependencies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

WINDOW = 48
_BLOCK = 2 << 20
_P = 0x100000001B3  # odd, so invertible mod 2^64
_P_INV = pow(_P, -1, 1 << 64)


def _table() -> np.ndarray:
    # Derived from sha256 so the cut points never change with a numpy or Python upgrade.
    values = [
        int.from_bytes(hashlib.sha256(b"tandem-cdc-gear" + bytes([i])).digest()[:8], "little")
        for i in range(256)
    ]
    return np.array(values, dtype=np.uint64)


_GEAR = _table()
_POW_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    cached = _POW_CACHE.get(n)
    if cached is None:
        with np.errstate(over="ignore"):
            inv = np.empty(n, dtype=np.uint64)
            inv[0] = 1
            inv[1:] = np.uint64(_P_INV)
            fwd = np.empty(n, dtype=np.uint64)
            fwd[0] = 1
            fwd[1:] = np.uint64(_P)
            cached = (np.cumprod(inv, dtype=np.uint64), np.cumprod(fwd, dtype=np.uint64))
        _POW_CACHE[n] = cached
    return cached


def _candidates(window_and_block: np.ndarray, bits: int) -> np.ndarray:
    """Indexes i (into the array) where the hash of the window ending at i has `bits` top zeros."""
    n = len(window_and_block)
    inv, fwd = _powers(_BLOCK + WINDOW)
    with np.errstate(over="ignore"):
        terms = _GEAR[window_and_block] * inv[:n]
        prefix = np.cumsum(terms, dtype=np.uint64)
        if n <= WINDOW:
            return np.empty(0, dtype=np.int64)
        window = prefix[WINDOW:] - prefix[:-WINDOW]  # sum over (i-W, i], scaled by P^-i
        h = window * fwd[WINDOW:n]
    hits = np.flatnonzero((h >> np.uint64(64 - bits)) == 0)
    return hits + WINDOW


def cut_points(path: Path, *, avg_size: int, min_size: int, max_size: int) -> Iterator[tuple[int, int]]:
    """Yields (offset, size) of each chunk of the file, in order, reading it once."""
    if not 0 < min_size <= avg_size <= max_size:
        raise ValueError("need 0 < min_size <= avg_size <= max_size")
    bits = max(1, (avg_size - min_size).bit_length() - 1)
    total = path.stat().st_size
    last = 0
    tail = np.empty(0, dtype=np.uint8)
    base = 0  # file offset of the first byte of the current block
    with path.open("rb") as f:
        while base < total:
            block = np.frombuffer(f.read(_BLOCK), dtype=np.uint8)
            if not len(block):
                break
            data = np.concatenate([tail, block])
            origin = base - len(tail)  # file offset of data[0]
            for idx in _candidates(data, bits):
                boundary = origin + int(idx) + 1
                while boundary - last > max_size:
                    yield last, max_size
                    last += max_size
                if boundary - last >= min_size:
                    yield last, boundary - last
                    last = boundary
            base += len(block)
            tail = data[-WINDOW:]
            while base - last > max_size:
                yield last, max_size
                last += max_size
    if total > last:
        yield last, total - last
