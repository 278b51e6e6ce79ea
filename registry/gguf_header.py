"""Reading a GGUF header by streaming it: where every metadata key and the tensor index lie.

`gguf.GGUFReader` builds a numpy object per metadata array element (262,144 of them for a
Gemma 3 vocabulary, three arrays deep): 35 s and ~770 MB to learn where the header ends.
Pushing needs much less: the byte range of each key/value (so the header can be cut into
content-addressed pieces), the few scalar values the config reports, and each tensor's name,
shape, type and offset. This reader walks the header once through a buffered file, skips
numeric arrays by arithmetic, steps over strings by their lengths, and decodes only the
scalar values; memory stays at the read buffer whatever the vocabulary.

Every count and length is checked against the file's size before it is used, so a
truncated or hostile file is a `BadModelFile` naming the problem, never a huge allocation.
Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (versions 2 and 3,
little-endian).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from registry.errors import BadModelFile

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 8  # ggml has 4; anything above this is not a tensor, it is garbage
_READ_BUFFER = 1 << 20

# Value types (GGUFValueType) and the byte size of the fixed-size ones.
_STRING, _ARRAY = 8, 9
_FIXED: dict[int, str] = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"
}  # fmt: skip
_SIZE = {t: struct.calcsize(f) for t, f in _FIXED.items()}
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


@dataclass(frozen=True)
class KeyValue:
    """One metadata entry: bytes [start, end) of the file. `value` is decoded for scalars and
    strings up to 4 KiB (what the config reports); arrays and long strings are only measured."""

    key: str
    start: int
    end: int
    value_type: int
    value: object = None


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # relative to the data section

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    prefix_end: int  # end of magic, version and the two counts
    kvs: list[KeyValue]
    tensors: list[TensorInfo]
    index_start: int  # the tensor index: [index_start, index_end)
    index_end: int
    alignment: int
    data_offset: int  # index_end rounded up to the alignment
    file_size: int

    def value(self, key: str) -> object:
        for kv in self.kvs:
            if kv.key == key:
                return kv.value
        return None


class _Stream:
    """Sequential reads with the position and the file's size at hand."""

    def __init__(self, f: BinaryIO, path: Path, size: int) -> None:
        self.f, self.path, self.size, self.pos = f, path, size, 0

    def bad(self, why: str) -> BadModelFile:
        return BadModelFile(f"{self.path}: not a readable GGUF file: {why} (at byte {self.pos})")

    def take(self, n: int) -> bytes:
        if n > self.size - self.pos:
            raise self.bad(f"needs {n} more bytes but the file ends first")
        data = self.f.read(n)
        if len(data) != n:
            raise self.bad("file shrank while it was being read")
        self.pos += n
        return data

    def skip(self, n: int) -> None:
        if n > self.size - self.pos:
            raise self.bad(f"a value of {n} bytes runs past the end of the file")
        self.f.seek(n, 1)
        self.pos += n

    def u32(self) -> int:
        return int(_U32.unpack(self.take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self.take(8))[0])

    def string_length(self, what: str) -> int:
        n = self.u64()
        if n > self.size - self.pos:
            raise self.bad(f"{what} declares {n} bytes, more than the file has left")
        return n

    def text(self, what: str, limit: int) -> str:
        n = self.string_length(what)
        if n > limit:
            raise self.bad(f"{what} is {n} bytes, over the {limit}-byte limit")
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise self.bad(f"{what} is not UTF-8") from None


def _value(s: _Stream, vtype: int, key: str) -> object:
    """Reads (or steps over) one value of type `vtype`; returns what is worth keeping."""
    if vtype in _FIXED:
        return struct.unpack(_FIXED[vtype], s.take(_SIZE[vtype]))[0]
    if vtype == _STRING:
        n = s.string_length(f"string value of {key!r}")
        if n <= 4096:
            return s.take(n).decode("utf-8", "replace")
        s.skip(n)
        return None
    if vtype == _ARRAY:
        etype, count = s.u32(), s.u64()
        if etype in _FIXED:
            s.skip(count * _SIZE[etype])  # `skip` refuses a count the file cannot hold
        elif etype == _STRING:
            if count > (s.size - s.pos) // 8:
                raise s.bad(f"array {key!r} declares {count} strings, more than the file can hold")
            for _ in range(count):
                s.skip(s.string_length(f"an element of {key!r}"))
        elif etype == _ARRAY:
            if count > (s.size - s.pos) // 12:
                raise s.bad(f"array {key!r} declares {count} arrays, more than the file can hold")
            for _ in range(count):
                _value(s, _ARRAY, key)
        else:
            raise s.bad(f"array {key!r} has unknown element type {etype}")
        return None
    raise s.bad(f"key {key!r} has unknown value type {vtype}")


def read_header(path: Path) -> GGUFHeader:
    """Parses the header of the GGUF file at `path` (reading only the header's bytes)."""
    try:
        size = path.stat().st_size
        with path.open("rb", buffering=_READ_BUFFER) as f:
            return _parse(_Stream(f, path, size))
    except OSError as exc:
        raise BadModelFile(f"{path}: cannot read: {exc.strerror or exc}") from None


def _parse(s: _Stream) -> GGUFHeader:
    if s.size == 0:
        raise BadModelFile(f"{s.path}: the file is empty")
    if s.size < 24 or s.take(4) != GGUF_MAGIC:
        raise BadModelFile(f"{s.path}: not a GGUF file (it does not start with the GGUF magic)")
    version = s.u32()
    if version not in (2, 3):
        hint = " (a big-endian file?)" if version > 0xFFFF else ""
        raise s.bad(f"GGUF version {version} is not supported (2 and 3 are){hint}")
    n_tensors, n_kv = s.u64(), s.u64()
    prefix_end = s.pos
    if n_kv > (s.size - s.pos) // 13 or n_tensors > (s.size - s.pos) // 24:
        raise s.bad(f"declares {n_kv} keys and {n_tensors} tensors, more than the file can hold")
    kvs: list[KeyValue] = []
    for _ in range(n_kv):
        start = s.pos
        key = s.text("a metadata key", 65535)
        vtype = s.u32()
        value = _value(s, vtype, key)
        kvs.append(KeyValue(key, start, s.pos, vtype, value))
    index_start = s.pos
    tensors: list[TensorInfo] = []
    for _ in range(n_tensors):
        name = s.text("a tensor name", 65535)
        n_dims = s.u32()
        if n_dims > MAX_DIMS:
            raise s.bad(f"tensor {name!r} has {n_dims} dimensions")
        shape = tuple(s.u64() for _ in range(n_dims))
        ggml_type, offset = s.u32(), s.u64()
        tensors.append(TensorInfo(name, shape, ggml_type, offset))
    index_end = s.pos
    alignment = next((kv.value for kv in kvs if kv.key == "general.alignment"), DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise s.bad(f"general.alignment {alignment!r} is not a power of two")
    data_offset = -(-index_end // alignment) * alignment
    if data_offset > s.size:
        raise s.bad("the data section starts past the end of the file")
    return GGUFHeader(
        version=version,
        prefix_end=prefix_end,
        kvs=kvs,
        tensors=tensors,
        index_start=index_start,
        index_end=index_end,
        alignment=alignment,
        data_offset=data_offset,
        file_size=s.size,
    )


def tensor_bytes(t: TensorInfo) -> int:
    """How many bytes the tensor's data takes (ggml's block sizes for quantized types)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(t.ggml_type)]
    except (ValueError, KeyError):
        raise BadModelFile(f"tensor {t.name!r} has unknown ggml type {t.ggml_type}") from None
    if t.shape and t.shape[0] % block:
        raise BadModelFile(f"tensor {t.name!r}: first dimension {t.shape[0]} is not a multiple of {block}")
    return t.n_elements // block * type_size
