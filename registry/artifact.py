"""The artifact format: media types, the config and manifest models, and their validation.

One model version is one OCI image manifest in CNCF ModelPack form:

- `artifactType` `application/vnd.cncf.model.manifest.v1+json`;
- a config blob (`application/vnd.cncf.model.config.v1+json`) with ModelPack's `descriptor`,
  `config` and `modelfs`, plus a `tandem` section: the whole weights file (name, sha256,
  size), its chunk list (offset, size, digest of every part) and the Ollama settings (which
  layer holds the template, system prompt, parameters, license, adapter);
- one raw layer per weights chunk, then one small layer per Ollama setting.

Everything read from a registry is hostile until `parse_manifest` / `parse_config` /
`check_consistent` say otherwise: sizes, digests, media types and every name that could end
up in a path are checked, and anything unexpected is a `ManifestRejected` naming the problem.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from registry.errors import ManifestRejected

# OCI and ModelPack media types.
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MODEL_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MODEL_CONFIG = "application/vnd.cncf.model.config.v1+json"
WEIGHT_RAW = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_CONFIG_RAW = "application/vnd.cncf.model.weight.config.v1.raw"
DOC_RAW = "application/vnd.cncf.model.doc.v1.raw"

# Annotation keys: ModelPack's file path, OCI's title (what `oras pull` names files by), ours.
ANN_FILEPATH = "org.cncf.model.filepath"
ANN_TITLE = "org.opencontainers.image.title"
ANN_ROLE = "io.tandem.role"
ANN_OFFSET = "io.tandem.offset"
ANN_MODEL_NAME = "io.tandem.model.name"

Role = Literal["weights", "template", "system", "params", "license", "adapter"]
SETTING_ROLES: tuple[Role, ...] = ("template", "system", "params", "license", "adapter")

# Which media type each role travels as, and the file name it gets inside the artifact.
ROLE_MEDIA_TYPE: dict[str, str] = {
    "weights": WEIGHT_RAW,
    "template": WEIGHT_CONFIG_RAW,
    "system": WEIGHT_CONFIG_RAW,
    "params": WEIGHT_CONFIG_RAW,
    "license": DOC_RAW,
    "adapter": WEIGHT_RAW,
}
ROLE_FILEPATH: dict[str, str] = {
    "template": "template",
    "system": "system",
    "params": "params.json",
    "license": "LICENSE",
    "adapter": "adapter.gguf",
}
KNOWN_LAYER_TYPES = frozenset(ROLE_MEDIA_TYPE.values())

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class Limits:
    """Bounds on what a registry may ask us to fetch; beyond them an artifact is refused."""

    max_manifest_bytes: int = 4 * MiB
    max_config_bytes: int = 8 * MiB
    max_layers: int = 10_000
    max_blob_bytes: int = 64 * GiB
    max_setting_bytes: int = 16 * MiB  # template, system, params, license
    max_total_bytes: int = 4096 * GiB


DEFAULT_LIMITS = Limits()


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON, so the same model always packs to the same digests."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def check_digest(value: str, what: str) -> str:
    if not isinstance(value, str) or not _DIGEST.match(value):
        raise ManifestRejected(f"{what}: digest {str(value)[:80]!r} is not sha256:<64 lowercase hex>")
    return value


def safe_relative_path(value: str, what: str) -> str:
    """A name from a manifest that may become a file name: relative, normalized, no `..`."""
    if not isinstance(value, str) or not value or len(value) > 255:
        raise ManifestRejected(f"{what}: file path must be 1-255 characters")
    if any(ord(c) < 32 or c == "\x7f" for c in value):
        raise ManifestRejected(f"{what}: file path {value!r} contains control characters")
    if value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value):
        raise ManifestRejected(f"{what}: file path {value!r} is absolute")
    if "\\" in value:
        raise ManifestRejected(f"{what}: file path {value!r} contains a backslash")
    parts = value.split("/")
    if any(p == ".." for p in parts):
        raise ManifestRejected(f"{what}: file path {value!r} escapes the artifact with '..'")
    if any(p in ("", ".") for p in parts):
        raise ManifestRejected(f"{what}: file path {value!r} is not normalized")
    return value


# ----------------------------------------------------------------------------- manifest


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)


class Descriptor(_Wire):
    media_type: StrictStr = Field(alias="mediaType")
    digest: StrictStr
    size: StrictInt = Field(ge=0)
    annotations: dict[StrictStr, StrictStr] = Field(default_factory=dict)

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


class Layer(Descriptor):
    @property
    def role(self) -> str:
        return self.annotations.get(ANN_ROLE, "")

    @property
    def filepath(self) -> str:
        return self.annotations.get(ANN_FILEPATH, "")

    @property
    def offset(self) -> int | None:
        raw = self.annotations.get(ANN_OFFSET)
        return int(raw) if raw is not None else None


class Manifest(_Wire):
    schema_version: StrictInt = Field(alias="schemaVersion")
    media_type: StrictStr | None = Field(default=None, alias="mediaType")
    artifact_type: StrictStr | None = Field(default=None, alias="artifactType")
    config: Descriptor
    layers: list[Layer]
    annotations: dict[StrictStr, StrictStr] = Field(default_factory=dict)

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": MODEL_ARTIFACT,
            "config": self.config.wire(),
            "layers": [layer.wire() for layer in self.layers],
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    def layers_by_role(self, role: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.role == role]


def parse_manifest(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> Manifest:
    """Parses and validates a manifest from a registry; anything hostile is refused."""
    if len(raw) > limits.max_manifest_bytes:
        raise ManifestRejected(f"manifest is {len(raw)} bytes, over the {limits.max_manifest_bytes} limit")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestRejected(f"manifest is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestRejected("manifest is not a JSON object")
    if data.get("mediaType") == OCI_INDEX or "manifests" in data:
        raise ManifestRejected("reference names an image index, not a model manifest")
    layers = data.get("layers")
    if isinstance(layers, list) and len(layers) > limits.max_layers:
        raise ManifestRejected(f"manifest has {len(layers)} layers, over the {limits.max_layers} limit")
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestRejected(f"manifest is malformed: {_first_error(exc)}") from None
    if manifest.schema_version != 2:
        raise ManifestRejected(f"manifest schemaVersion {manifest.schema_version}, expected 2")
    if manifest.media_type not in (None, OCI_MANIFEST):
        raise ManifestRejected(f"unknown manifest media type {manifest.media_type!r}")
    if manifest.artifact_type not in (None, MODEL_ARTIFACT):
        raise ManifestRejected(f"artifact type {manifest.artifact_type!r} is not a model ({MODEL_ARTIFACT})")
    if manifest.config.media_type != MODEL_CONFIG:
        raise ManifestRejected(f"unknown config media type {manifest.config.media_type!r}")
    check_digest(manifest.config.digest, "config")
    if manifest.config.size > limits.max_config_bytes:
        raise ManifestRejected(f"config declares {manifest.config.size} bytes, over the limit")
    if not manifest.layers:
        raise ManifestRejected("manifest has no layers")
    total = 0
    for i, layer in enumerate(manifest.layers):
        _check_layer(i, layer, limits)
        total += layer.size
    if total > limits.max_total_bytes:
        raise ManifestRejected(f"layers add up to {total} bytes, over the {limits.max_total_bytes} limit")
    if not manifest.layers_by_role("weights"):
        raise ManifestRejected("manifest has no weights layers")
    return manifest


def _check_layer(i: int, layer: Layer, limits: Limits) -> None:
    what = f"layer {i}"
    check_digest(layer.digest, what)
    if layer.media_type not in KNOWN_LAYER_TYPES:
        raise ManifestRejected(f"{what}: unknown media type {layer.media_type!r}")
    role = layer.role
    if role not in ROLE_MEDIA_TYPE:
        raise ManifestRejected(f"{what}: unknown role {role!r} (annotation {ANN_ROLE})")
    if ROLE_MEDIA_TYPE[role] != layer.media_type:
        raise ManifestRejected(f"{what}: role {role!r} cannot have media type {layer.media_type!r}")
    for key in (ANN_FILEPATH, ANN_TITLE):
        if key in layer.annotations:
            safe_relative_path(layer.annotations[key], f"{what} annotation {key}")
    cap = (
        limits.max_setting_bytes
        if role in ("template", "system", "params", "license")
        else limits.max_blob_bytes
    )
    if layer.size > cap:
        raise ManifestRejected(f"{what} ({role}): declares {layer.size} bytes, over the {cap} limit")
    if role == "weights":
        raw = layer.annotations.get(ANN_OFFSET)
        if raw is None or not raw.isdigit() or len(raw) > 18:
            raise ManifestRejected(f"{what}: weights layer needs a decimal {ANN_OFFSET} annotation")


# ----------------------------------------------------------------------------- config


class ChunkEntry(_Wire):
    """One part of the weights file: bytes [offset, offset+size) with this digest."""

    digest: StrictStr
    offset: StrictInt = Field(ge=0)
    size: StrictInt = Field(ge=0)
    kind: Literal["header", "tensors", "cdc"]
    first: StrictStr | None = None  # first and last tensor held, for people reading `inspect`
    last: StrictStr | None = None


class WeightsInfo(_Wire):
    filename: StrictStr
    digest: StrictStr
    size: StrictInt = Field(ge=0)
    format: Literal["gguf", "raw"]
    chunking: Literal["gguf-tensors", "cdc"]


class OllamaSettings(_Wire):
    """Digests of the layers holding each Ollama setting (None when the version has none)."""

    template: StrictStr | None = None
    system: StrictStr | None = None
    params: StrictStr | None = None
    license: StrictStr | None = None
    adapter: StrictStr | None = None

    def items(self) -> list[tuple[str, str]]:
        return [(role, d) for role in SETTING_ROLES if (d := getattr(self, role)) is not None]


class TandemSection(_Wire):
    schema_version: StrictInt = Field(default=1, alias="schemaVersion")
    weights: WeightsInfo
    chunks: list[ChunkEntry]
    ollama: OllamaSettings = Field(default_factory=OllamaSettings)
    context_length: StrictInt | None = Field(default=None, alias="contextLength")
    tensor_count: StrictInt | None = Field(default=None, alias="tensorCount")


class ModelFs(_Wire):
    type: Literal["layers"]
    diff_ids: list[StrictStr]


class ModelConfig(_Wire):
    """The config blob: ModelPack's three sections plus ours."""

    descriptor: dict[str, Any]
    config: dict[str, Any]
    modelfs: ModelFs
    tandem: TandemSection

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


def parse_config(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> ModelConfig:
    if len(raw) > limits.max_config_bytes:
        raise ManifestRejected(f"config is {len(raw)} bytes, over the {limits.max_config_bytes} limit")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestRejected(f"config is not JSON: {exc}") from None
    if not isinstance(data, dict) or "tandem" not in data:
        raise ManifestRejected("config has no 'tandem' section: not a Tandem model artifact")
    try:
        config = ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise ManifestRejected(f"config is malformed: {_first_error(exc)}") from None
    if config.tandem.schema_version != 1:
        raise ManifestRejected(f"config schemaVersion {config.tandem.schema_version} is not supported")
    if len(config.tandem.chunks) > limits.max_layers:
        raise ManifestRejected(f"config lists {len(config.tandem.chunks)} chunks, over the limit")
    return config


def check_consistent(manifest: Manifest, config: ModelConfig) -> None:
    """The config's chunk list and settings must describe exactly the manifest's layers."""
    weights = config.tandem.weights
    safe_relative_path(weights.filename, "config weights filename")
    if "/" in weights.filename:
        raise ManifestRejected(f"config weights filename {weights.filename!r} must be a plain file name")
    check_digest(weights.digest, "config weights")
    expected = 0
    for i, chunk in enumerate(config.tandem.chunks):
        check_digest(chunk.digest, f"config chunk {i}")
        if chunk.offset != expected:
            raise ManifestRejected(
                f"config chunk {i} starts at {chunk.offset}, expected {expected}: chunks must tile the file"
            )
        expected += chunk.size
    if expected != weights.size:
        raise ManifestRejected(f"chunks add up to {expected} bytes but the weights file is {weights.size}")
    layer_parts = sorted(
        (layer.offset or 0, layer.digest, layer.size) for layer in manifest.layers_by_role("weights")
    )
    chunk_parts = [(c.offset, c.digest, c.size) for c in config.tandem.chunks]
    if layer_parts != chunk_parts:
        raise ManifestRejected(
            "the manifest's weights layers do not match the config's chunk list (sizes or digests lie)"
        )
    for role, digest in config.tandem.ollama.items():
        check_digest(digest, f"config ollama {role}")
        if not any(layer.digest == digest for layer in manifest.layers_by_role(role)):
            raise ManifestRejected(
                f"config names a {role} layer {digest[:19]} that the manifest does not have"
            )
    for role in SETTING_ROLES:
        if manifest.layers_by_role(role) and getattr(config.tandem.ollama, role) is None:
            raise ManifestRejected(f"manifest has a {role} layer the config does not name")
        if len(manifest.layers_by_role(role)) > 1:
            raise ManifestRejected(f"manifest has more than one {role} layer")


def chunk_label(kind: str, first: str | None, last: str | None) -> str:
    """How a chunk is named to people: the tensors it holds, or its kind."""
    if first is None:
        return kind
    return first if first == last or last is None else f"{first}..{last}"


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "(top)"
    return f"{where}: {err.get('msg', 'invalid')}"
