"""Packing a model version into an artifact and pushing it.

`pack` is pure: it cuts and hashes the files and builds the config and manifest, so the same
inputs always give the same digests. `push_model` then uploads only the blobs the registry
lacks (a HEAD per blob), large ones in chunks read straight from the file (memory stays at
one chunk per worker however large the model), and writes the tag last, after every blob
is in: a reader never sees a tag whose blobs are missing. With a signing key, the signature
(`registry.signature`) is pushed before the tag too.

The registry protocol and its auth go through oras-py's `Registry` (its session, auth
backends and URL helpers); the upload loop is ours because oras-py reads whole files and
cannot upload a byte range of one.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import structlog
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from registry.artifact import (
    ANN_FILEPATH,
    ANN_MODEL_NAME,
    ANN_OFFSET,
    ANN_ROLE,
    ANN_TITLE,
    MODEL_CONFIG,
    OCI_MANIFEST,
    ROLE_FILEPATH,
    ROLE_MEDIA_TYPE,
    SETTING_ROLES,
    canonical_json,
    chunk_label,
    parse_config,
    sha256_digest,
)
from registry.auth import Credentials, oras_registry, resolve_credentials
from registry.chunking import DEFAULT_MAX_CHUNK, ChunkedFile, Part, chunk_file
from registry.errors import (
    AuthFailed,
    BadModelFile,
    NotFound,
    RegistryError,
    RegistryUnavailable,
    auth_hint,
    tls_hint,
)
from registry.gguf_header import GGUF_MAGIC
from registry.progress import NullProgress, Progress
from registry.reference import Reference
from registry.signature import (
    EMPTY_CONFIG,
    FileSource,
    model_files,
    sign_files,
    signature_manifest,
    signature_tag,
)

log = structlog.get_logger("registry.push")

DEFAULT_UPLOAD_CHUNK = 64 << 20  # bytes per PATCH; streamed from the file, so not held in memory
# How the weights file is cut (the config records it; pulling does not depend on it):
# 1: the GGUF header as one layer; 2: the header cut into pieces (`gguf_chunks.header_spans`).
PACKING = 2
MANIFEST_ACCEPT = OCI_MANIFEST


@dataclass(frozen=True)
class ModelFiles:
    """What one model version is made of: the weights and the optional Ollama settings."""

    gguf: Path
    template: Path | None = None
    system: Path | None = None
    params: Path | None = None
    license: Path | None = None
    adapter: Path | None = None


@dataclass(frozen=True)
class BlobSource:
    """Where a blob's bytes are: `size` bytes of `path` from `offset` (or `data` in memory)."""

    digest: str
    size: int
    label: str
    path: Path | None = None
    offset: int = 0
    data: bytes | None = None


@dataclass(frozen=True)
class PackedModel:
    chunked: ChunkedFile
    config: bytes
    config_digest: str
    manifest: bytes
    manifest_digest: str
    blobs: list[BlobSource]  # unique by digest, config first

    @property
    def total_bytes(self) -> int:
        return sum(b.size for b in self.blobs)


@dataclass
class PushResult:
    reference: str
    manifest_digest: str
    uploaded_blobs: int = 0
    uploaded_bytes: int = 0
    skipped_blobs: int = 0
    skipped_bytes: int = 0
    tag_written: bool = False
    seconds: float = 0.0  # the whole push, packing included
    pack_seconds: float = 0.0  # cutting and hashing the files
    uploaded: list[str] = field(default_factory=list)
    signature: str | None = None  # the tag of the signature pushed with it

    def summary(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "digest": self.manifest_digest,
            "uploaded_blobs": self.uploaded_blobs,
            "uploaded_bytes": self.uploaded_bytes,
            "skipped_blobs": self.skipped_blobs,
            "skipped_bytes": self.skipped_bytes,
            "tag_written": self.tag_written,
            "signature": self.signature,
            "seconds": round(self.seconds, 3),
            "pack_seconds": round(self.pack_seconds, 3),
        }


def _param_size(n: int) -> str:
    for scale, letter in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= scale:
            return f"{n / scale:.1f}{letter}"
    return str(n)


def _read_setting(role: str, path: Path) -> bytes:
    try:
        data = path.read_bytes() if role != "adapter" else b""
    except OSError as exc:
        raise BadModelFile(f"--{role} {path}: cannot read: {exc.strerror}") from None
    if role in ("template", "system", "license"):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise BadModelFile(f"--{role} {path}: not UTF-8 text") from None
    if role == "params":
        try:
            params = json.loads(data)
        except ValueError as exc:
            raise BadModelFile(f"--params {path}: not JSON: {exc}") from None
        if not isinstance(params, dict):
            raise BadModelFile(f"--params {path}: must be a JSON object of Ollama parameters")
    return data


def check_gguf(path: Path) -> None:
    """`--gguf` must name a non-empty GGUF file (Ollama serves nothing else)."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise BadModelFile(f"--gguf {path}: not a regular file")
        with path.open("rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise BadModelFile(f"--gguf {path}: no such file") from None
    except OSError as exc:
        raise BadModelFile(f"--gguf {path}: cannot read: {exc.strerror or exc}") from None
    if size == 0:
        raise BadModelFile(f"--gguf {path}: the file is empty")
    if magic != GGUF_MAGIC:
        raise BadModelFile(f"--gguf {path}: not a GGUF file (it does not start with the GGUF magic)")


def pack(
    files: ModelFiles,
    *,
    name: str,
    max_chunk: int = DEFAULT_MAX_CHUNK,
    on_bytes: Callable[[int], None] | None = None,
    on_blob: Callable[[BlobSource], None] | None = None,
) -> PackedModel:
    """Cuts, hashes and describes one model version (no network). `on_blob` is handed each
    weights part as soon as it is hashed (the rest of `blobs` only when `pack` returns)."""
    check_gguf(files.gguf)

    def part_blob(part: Part) -> BlobSource:
        label = chunk_label(part.span.kind, part.span.first, part.span.last)
        return BlobSource(part.digest, part.span.size, label, path=files.gguf, offset=part.span.offset)

    chunked = chunk_file(
        files.gguf, max_chunk, on_bytes, on_part=(lambda part: on_blob(part_blob(part))) if on_blob else None
    )
    filename = (
        files.gguf.name if files.gguf.suffix == ".gguf" else "model.gguf" if chunked.gguf else "model.bin"
    )
    blobs: dict[str, BlobSource] = {}
    layers: list[dict[str, Any]] = []
    width = max(5, len(str(len(chunked.parts))))
    for i, part in enumerate(chunked.parts):
        path_in_artifact = f"{filename}.parts/{i:0{width}d}"
        layers.append(
            {
                "mediaType": ROLE_MEDIA_TYPE["weights"],
                "digest": part.digest,
                "size": part.span.size,
                "annotations": {
                    ANN_ROLE: "weights",
                    ANN_OFFSET: str(part.span.offset),
                    ANN_FILEPATH: path_in_artifact,
                    ANN_TITLE: path_in_artifact,
                },
            }
        )
        blobs.setdefault(part.digest, part_blob(part))
    settings: dict[str, str] = {}
    for role in SETTING_ROLES:
        path = getattr(files, role)
        if path is None:
            continue
        if role == "adapter":
            if not path.is_file():
                raise BadModelFile(f"--adapter {path}: no such file")
            adapter = chunk_file(path, max_chunk=1 << 62)
            digest, size, source = (
                adapter.digest,
                adapter.size,
                BlobSource(adapter.digest, adapter.size, role, path=path),
            )
        else:
            data = _read_setting(role, path)
            digest, size, source = (
                sha256_digest(data),
                len(data),
                BlobSource(sha256_digest(data), len(data), role, data=data),
            )
        settings[role] = digest
        blobs.setdefault(digest, source)
        layers.append(
            {
                "mediaType": ROLE_MEDIA_TYPE[role],
                "digest": digest,
                "size": size,
                "annotations": {
                    ANN_ROLE: role,
                    ANN_FILEPATH: ROLE_FILEPATH[role],
                    ANN_TITLE: ROLE_FILEPATH[role],
                },
            }
        )
    info = chunked.gguf
    descriptor: dict[str, Any] = {"name": name}
    model_cfg: dict[str, Any] = {"format": chunked.format}
    if info:
        if info.architecture:
            descriptor["family"] = info.architecture
        if info.name:
            descriptor["title"] = info.name
        model_cfg.update(architecture="transformer", paramSize=_param_size(info.parameter_count))
        if info.quantization:
            model_cfg["quantization"] = info.quantization
    tandem: dict[str, Any] = {
        "schemaVersion": 1,
        "packing": PACKING,
        "weights": {
            "filename": filename,
            "digest": chunked.digest,
            "size": chunked.size,
            "format": chunked.format,
            "chunking": chunked.chunking,
        },
        "chunks": [
            {
                "digest": p.digest,
                "offset": p.span.offset,
                "size": p.span.size,
                "kind": p.span.kind,
                **({"first": p.span.first, "last": p.span.last} if p.span.first else {}),
            }
            for p in chunked.parts
        ],
        "ollama": settings,
    }
    if info and info.context_length:
        tandem["contextLength"] = info.context_length
    if info:
        tandem["tensorCount"] = info.tensor_count
    config = canonical_json(
        {
            "descriptor": descriptor,
            "config": model_cfg,
            "modelfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
            "tandem": tandem,
        }
    )
    config_digest = sha256_digest(config)
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.cncf.model.manifest.v1+json",
            "config": {"mediaType": MODEL_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": layers,
            "annotations": {ANN_MODEL_NAME: name},
        }
    )
    ordered = [BlobSource(config_digest, len(config), "config", data=config), *blobs.values()]
    return PackedModel(chunked, config, config_digest, manifest, sha256_digest(manifest), ordered)


# ----------------------------------------------------------------------------- transport


class _Retryable(Exception):
    pass


class RemoteRepository:
    """One repository on a registry, spoken to through oras-py's session and auth.

    oras-py's own request wrapper retries a dead registry for over two minutes with sleeps
    it chooses; we call the unwrapped method and retry briefly with tenacity instead, so an
    unreachable registry is reported in seconds.
    """

    def __init__(self, ref: Reference, creds: Credentials, *, plain_http: bool) -> None:
        import oras.provider

        self.ref = ref
        self._oras = oras_registry(ref.registry, creds, plain_http=plain_http)
        self._do = oras.provider.Registry.do_request.__wrapped__
        self._base = f"{'http' if plain_http else 'https'}://{ref.registry}/v2/{ref.repository}"
        basic_backend = type(self._oras.auth).__name__ == "BasicAuth"
        self._basic = creds.basic if basic_backend else None
        self._creds_source = creds.source
        # oras-py's Basic backend crashes (AttributeError) answering a challenge it has no
        # credentials for; without any, requests go out bare and a 401 is ours to report.
        self._bare = basic_backend and self._basic is None and not creds.token

    @retry(
        retry=retry_if_exception_type(_Retryable),
        stop=stop_after_attempt(3),
        wait=wait_exponential(multiplier=0.5, max=4),
        reraise=True,
    )
    def request(
        self,
        method: str,
        url: str,
        *,
        data: bytes | _FileSlice | None = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        headers = dict(headers or {})
        if self._basic:
            headers["Authorization"] = f"Basic {self._basic}"  # saves a 401 round trip per request
        try:
            resp: requests.Response = (
                self._oras.session.request(method, url, data=data, headers=headers)
                if self._bare
                else self._do(self._oras, url, method, data=data, headers=headers)
            )
        except requests.exceptions.SSLError as exc:
            raise RegistryUnavailable(tls_hint(f"cannot reach {self.ref.registry}: {_reason(exc)}")) from None
        except requests.ConnectionError as exc:
            raise _Retryable(f"cannot reach {self.ref.registry}: {exc.__class__.__name__}") from None
        except requests.RequestException as exc:
            raise RegistryUnavailable(f"{self.ref.registry}: {exc}") from None
        except ValueError:  # oras: "Cannot respond to request for authentication."
            hint = auth_hint(self.ref.registry, self._creds_source)
            raise AuthFailed(f"{self.ref.registry} asked for credentials: {hint}") from None
        if resp.status_code in (401, 403):
            raise AuthFailed(
                f"{self.ref.registry} refused access to {self.ref.repository} (HTTP {resp.status_code}); "
                + auth_hint(self.ref.registry, self._creds_source)
            )
        if resp.status_code >= 500:
            raise _Retryable(f"{self.ref.registry} answered HTTP {resp.status_code} to {method}")
        return resp

    def call(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            return self.request(method, url, **kwargs)
        except _Retryable as exc:
            raise RegistryUnavailable(str(exc)) from None

    def blob_exists(self, digest: str) -> bool:
        return self.call("HEAD", f"{self._base}/blobs/{digest}").status_code == 200

    def blob_intact(self, digest: str) -> bool:
        """Reads the registry's copy of a blob back and hashes it (memory: one read buffer).
        False when it is missing or its bytes do not match `digest`."""
        headers = {"Authorization": f"Basic {self._basic}"} if self._basic else {}
        try:
            resp = self._oras.session.get(f"{self._base}/blobs/{digest}", headers=headers, stream=True)
        except requests.RequestException as exc:
            raise RegistryUnavailable(f"cannot reach {self.ref.registry}: {exc.__class__.__name__}") from None
        with resp:
            if resp.status_code != 200:
                return False
            h = hashlib.sha256()
            for piece in resp.iter_content(1 << 20):
                h.update(piece)
        return "sha256:" + h.hexdigest() == digest

    def manifest_digest(self, target: str) -> str | None:
        resp = self.call("HEAD", f"{self._base}/manifests/{target}", headers={"Accept": MANIFEST_ACCEPT})
        return resp.headers.get("Docker-Content-Digest") if resp.status_code == 200 else None

    def get_manifest(self, target: str) -> tuple[bytes, str]:
        resp = self.call("GET", f"{self._base}/manifests/{target}", headers={"Accept": MANIFEST_ACCEPT})
        if resp.status_code == 404:
            raise NotFound(f"{self.ref.repository_ref}:{target} not found")
        _expect(resp, (200,), f"GET manifest {target}")
        return resp.content, resp.headers.get("Content-Type", OCI_MANIFEST)

    def put_manifest(self, target: str, raw: bytes, media_type: str = OCI_MANIFEST) -> None:
        resp = self.call(
            "PUT", f"{self._base}/manifests/{target}", data=raw, headers={"Content-Type": media_type}
        )
        _expect(resp, (200, 201), f"PUT manifest {target}")

    def tags(self) -> list[str]:
        tags: list[str] = []
        url: str | None = f"{self._base}/tags/list?n=1000"
        while url:
            resp = self.call("GET", url)
            if resp.status_code == 404:
                raise NotFound(f"{self.ref.repository_ref} not found")
            _expect(resp, (200,), "GET tags")
            tags.extend(resp.json().get("tags") or [])
            link = resp.links.get("next", {}).get("url")
            url = requests.compat.urljoin(url, link) if link else None
        return sorted(tags)

    def upload(self, blob: BlobSource, chunk: int, on_bytes: Callable[[int], None]) -> None:
        """One PUT for blobs up to `chunk` bytes, PATCHes of `chunk` bytes for larger ones;
        bodies are streamed from the file (memory: a 1 MiB piece per upload)."""
        resp = self.call("POST", f"{self._base}/blobs/uploads/", headers={"Content-Length": "0"})
        _expect(resp, (202,), "start upload")
        location = self._location(resp)
        if blob.size <= chunk:
            resp = self.call(
                "PUT",
                _with_digest(location, blob.digest),
                data=_FileSlice(blob, 0, blob.size),
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(blob.size)},
            )
            _expect(resp, (201,), f"upload {blob.digest[:19]}")
            on_bytes(blob.size)
            return
        sent = 0
        while sent < blob.size:
            n = min(chunk, blob.size - sent)
            resp = self.call(
                "PATCH",
                location,
                data=_FileSlice(blob, sent, n),  # streamed from the file: no `chunk` bytes in memory
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{sent}-{sent + n - 1}",
                    "Content-Length": str(n),
                },
            )
            _expect(resp, (202,), f"upload chunk of {blob.digest[:19]}")
            location = self._location(resp)
            sent += n
            on_bytes(n)
        resp = self.call("PUT", _with_digest(location, blob.digest), headers={"Content-Length": "0"})
        _expect(resp, (201,), f"finish upload of {blob.digest[:19]}")

    def _location(self, resp: requests.Response) -> str:
        loc = resp.headers.get("Location", "")
        if not loc:
            raise RegistryError(f"{self.ref.registry} started an upload without a Location header")
        return str(self._oras._get_location(resp, self._oras.get_container(str(self.ref))))


def _reason(exc: Exception) -> str:
    """The innermost cause of a requests error (e.g. `[SSL: WRONG_VERSION_NUMBER] ...`)."""
    text = str(exc)
    found = re.search(r"\[SSL: [A-Z_]+\][a-z ]*", text)
    return found.group(0).strip() if found else exc.__class__.__name__


def _with_digest(location: str, digest: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={digest}"


class _FileSlice:
    """`size` bytes of a blob's file from `start`, as an iterable body: requests sends it
    1 MiB at a time (memory per upload: one piece, not one upload chunk), and each iteration
    reads afresh, so a retried request sends the same bytes again."""

    _PIECE = 1 << 20

    def __init__(self, blob: BlobSource, start: int, size: int) -> None:
        self._blob, self._start, self._size = blob, start, size

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[bytes]:
        if self._blob.data is not None:
            yield self._blob.data[self._start : self._start + self._size]
            return
        assert self._blob.path is not None
        with self._blob.path.open("rb") as f:
            f.seek(self._blob.offset + self._start)
            left = self._size
            while left:
                piece = f.read(min(self._PIECE, left))
                if not piece:
                    raise BadModelFile(f"{self._blob.path} changed while it was being pushed")
                left -= len(piece)
                yield piece


def _expect(resp: requests.Response, ok: tuple[int, ...], what: str) -> None:
    if resp.status_code in ok:
        return
    detail = ""
    try:
        errors = resp.json().get("errors") or []
        detail = "; ".join(str(e.get("message", e)) for e in errors if isinstance(e, dict))
    except ValueError:
        detail = resp.text[:200]
    raise RegistryError(f"{what}: registry answered HTTP {resp.status_code}{': ' + detail if detail else ''}")


def push_signature(
    repo: RemoteRepository,
    files: ModelFiles,
    packed: PackedModel,
    sign_key: Path,
    password: str | None = None,
) -> str:
    """Signs the version and pushes the signature (model manifest by digest first, so the
    signature's subject exists); returns the signature's tag."""
    config = parse_config(packed.config)
    blobs = {b.digest: b for b in packed.blobs}

    def setting(digest: str) -> FileSource:
        blob = blobs[digest]
        if blob.data is not None:
            return blob.data
        assert blob.path is not None  # a setting is either read (text) or a file (adapter)
        return blob.path

    bundle = sign_files(model_files(config, files.gguf, setting), sign_key, password)
    if repo.manifest_digest(packed.manifest_digest) != packed.manifest_digest:
        repo.put_manifest(packed.manifest_digest, packed.manifest)
    for data, label in ((EMPTY_CONFIG, "empty config"), (bundle, "signature")):
        blob = BlobSource(sha256_digest(data), len(data), label, data=data)
        if not repo.blob_exists(blob.digest):
            repo.upload(blob, len(data), lambda n: None)
    tag = signature_tag(packed.manifest_digest)
    repo.put_manifest(tag, signature_manifest(bundle, packed.manifest_digest, len(packed.manifest)))
    log.info("model_signed", manifest=packed.manifest_digest, tag=tag)
    return tag


def push_model(
    ref: Reference,
    files: ModelFiles,
    *,
    plain_http: bool = False,
    max_chunk: int = DEFAULT_MAX_CHUNK,
    upload_chunk: int = DEFAULT_UPLOAD_CHUNK,
    concurrency: int = 4,
    creds: Credentials | None = None,
    progress: Progress | None = None,
    packed: PackedModel | None = None,
    sign_key: Path | None = None,
    sign_key_password: str | None = None,
    force: bool = False,
    pack_seconds: float = 0.0,
) -> PushResult:
    """Pushes one version; blobs first (only the missing ones), the tag last.

    `force` does not take the registry's word (a HEAD) for the blobs it has: it reads each
    one back and hashes it, and uploads every blob that is missing or damaged. A registry
    that keeps its own copy of a blob it already has (the CNCF distribution registry does:
    content-addressed storage is never overwritten) leaves a damaged copy in place; that is
    reported by name (`RegistryError`) with what to delete, not passed off as repaired.
    `packed`/`pack_seconds`: a pack made by the caller and what it cost (counted in `seconds`).

    With `sign_key` (an EC private key, PEM) the version is signed (`registry.signature`) and
    the signature pushed beside it before the tag is written, so a tag never shows a signed
    version without its signature.
    """
    if ref.tag is None:
        raise RegistryError("push needs a tag: REGISTRY/models/NAME:TAG")
    progress = progress or NullProgress()
    started = time.monotonic() - pack_seconds
    creds = creds or resolve_credentials(ref.registry)
    local = threading.local()

    def remote() -> RemoteRepository:
        if not hasattr(local, "repo"):
            local.repo = RemoteRepository(ref, creds, plain_http=plain_http)
        return local.repo

    result = PushResult(reference=str(ref), manifest_digest="", pack_seconds=pack_seconds)
    lock = threading.Lock()

    def one(blob: BlobSource) -> None:
        repo = remote()
        if repo.blob_exists(blob.digest) and (not force or repo.blob_intact(blob.digest)):
            progress.advance("", blob.size)  # counts toward the whole, moves nothing
            with lock:
                result.skipped_blobs += 1
                result.skipped_bytes += blob.size
            return
        progress.start(blob.digest, f"{blob.label} {blob.digest[7:19]}", blob.size)
        repo.upload(blob, upload_chunk, lambda n: progress.advance(blob.digest, n))
        progress.finish(blob.digest)
        if force and not repo.blob_intact(blob.digest):
            raise RegistryError(
                f"{ref.registry} kept its damaged copy of {blob.digest} ({blob.label}) after a fresh "
                "upload: it does not overwrite a blob it has. Delete the blob's data from the "
                f"registry's storage (distribution: docker/registry/v2/blobs/sha256/{blob.digest[7:9]}/"
                f"{blob.digest[7:]}/data), then push again"
            )
        with lock:
            result.uploaded_blobs += 1
            result.uploaded_bytes += blob.size
            result.uploaded.append(blob.digest)

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="push") as pool:
        futures: dict[str, Future[None]] = {}

        def submit(blob: BlobSource) -> None:
            if blob.digest not in futures:
                futures[blob.digest] = pool.submit(one, blob)

        if packed is None:
            # Each part is checked and uploaded as soon as it is hashed, while the rest of the
            # file is read: a first push costs about max(hashing, uploading), not their sum.
            try:
                packed = pack(files, name=ref.name, max_chunk=max_chunk, on_blob=submit)
            except BaseException:
                for future in futures.values():
                    future.cancel()
                raise
            result.pack_seconds = time.monotonic() - started
        for blob in packed.blobs:
            submit(blob)
        for future in list(futures.values()):
            future.result()
    result.manifest_digest = packed.manifest_digest
    repo = remote()
    if sign_key is not None:
        result.signature = push_signature(repo, files, packed, sign_key, sign_key_password)
    if repo.manifest_digest(ref.tag) != packed.manifest_digest:
        repo.put_manifest(ref.tag, packed.manifest)
        result.tag_written = True
    result.seconds = time.monotonic() - started
    log.info("model_pushed", **result.summary())
    return result
