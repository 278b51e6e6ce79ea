"""The simulated Ollama's model library: names, blobs, create/copy/delete, and the JSON that
`/api/tags`, `/api/ps` and `/api/show` describe a model with.

Blobs are real files (streamed to disk with hashing, never held in memory), named as Ollama
names them (`sha256-<hex>`). A created model is registered from its blobs like Ollama does:
a GGUF's metadata (architecture, context length, parameter count, file type) fills in its
details and `model_info`; its digest is the digest of its manifest.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

DIGEST = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")
LIBRARY_HOST = "registry.ollama.ai"

QWEN3_TEMPLATE = """{{- $lastUserIdx := -1 -}}
{{- range $idx, $msg := .Messages -}}
{{- if eq $msg.Role "user" }}{{ $lastUserIdx = $idx }}{{ end -}}
{{- end }}
{{- if or .System .Tools }}<|im_start|>system
{{ if .System }}
{{ .System }}
{{- end }}
{{- if .Tools }}

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>
{{- end -}}
<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}
{{- if and $.IsThinkSet (eq $i $lastUserIdx) }}
   {{- if $.Think -}}
      {{- " "}}/think
   {{- else -}}
      {{- " "}}/no_think
   {{- end -}}
{{- end }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if (and $.IsThinkSet (and .Thinking (or $last (gt $i $lastUserIdx)))) -}}
<think>{{ .Thinking }}</think>
{{ end -}}
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ if and $.IsThinkSet (not $.Think) -}}
<think>

</think>

{{ end -}}
{{ end }}
{{- end }}"""

QWEN3_PARAMETERS: dict[str, Any] = {
    "repeat_penalty": 1,
    "stop": ["<|im_start|>", "<|im_end|>"],
    "temperature": 0.6,
    "top_k": 20,
    "top_p": 0.95,
}
QWEN3_LICENSE = "Apache License\nVersion 2.0, January 2004\nhttp://www.apache.org/licenses/"
CAPABILITIES = ("completion", "tools", "thinking", "insert", "vision", "embedding")

# GGUF file types (llama.cpp's LLAMA_FTYPE) as Ollama names them.
_FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
               11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
               17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}  # fmt: skip


@dataclass(slots=True)
class OllamaModel:
    """One model the simulated Ollama has pulled. Defaults describe qwen3:14b."""

    name: str = "qwen3:14b"
    context_length: int = 40960
    capabilities: tuple[str, ...] = ("completion", "tools", "thinking")
    family: str = "qwen3"
    parameter_size: str = "14.8B"
    quantization_level: str = "Q4_K_M"
    size: int = 9_276_198_565
    template: str = field(default=QWEN3_TEMPLATE, repr=False)
    system: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: dict(QWEN3_PARAMETERS))
    license: str = field(default=QWEN3_LICENSE, repr=False)
    parent_model: str = ""
    model_info: dict[str, Any] = field(default_factory=dict, repr=False)  # from the GGUF, else made up

    def __post_init__(self) -> None:
        if not self.name or not is_valid_name(self.name):
            raise ValueError(f"model.name {self.name!r} is not a valid Ollama model name")
        unknown = [c for c in self.capabilities if c not in CAPABILITIES]
        if unknown:
            raise ValueError(f"model.capabilities has unknown entries {unknown} (known: {CAPABILITIES})")
        if self.context_length < 1:
            raise ValueError(f"model.context_length must be positive, got {self.context_length}")


def is_valid_name(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?", name))


def canonical(name: str) -> str:
    """The key a name is looked up by: case-insensitive, `:latest` when untagged, no library host."""
    key = name.strip().lower()
    for prefix in (f"{LIBRARY_HOST}/library/", f"{LIBRARY_HOST}/", "library/"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    if ":" not in key.rsplit("/", 1)[-1]:
        key += ":latest"
    return key


def display(name: str) -> str:
    """How Ollama lists a name (`qwen3` is `qwen3:latest`)."""
    short = name.strip()
    for prefix in (f"{LIBRARY_HOST}/library/", "library/"):
        if short.lower().startswith(prefix):
            short = short[len(prefix) :]
    return short if ":" in short.rsplit("/", 1)[-1] else short + ":latest"


def full_name(name: str) -> str:
    """The fully qualified name Ollama puts in capability errors."""
    short = display(name)
    slashes = short.count("/")
    if slashes == 0:
        return f"{LIBRARY_HOST}/library/{short}"
    if slashes == 1:
        return f"{LIBRARY_HOST}/{short}"
    return short


def rfc3339(ts: float | None = None) -> str:
    """A UTC timestamp the way Go marshals time.Time (nanoseconds, trailing zeros trimmed)."""
    ns = time.time_ns() if ts is None else int(ts * 1e9)
    seconds, frac = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def parameter_count(size: str) -> int:
    match = re.fullmatch(r"([\d.]+)\s*([KMBT]?)", size.strip().upper())
    if not match:
        return 0
    scale = {"": 1, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}[match.group(2)]
    return int(float(match.group(1)) * scale)


def human_number(n: int) -> str:
    """Ollama's format.HumanNumber."""
    for limit, suffix, fmt in (
        (1e12, "T", "{:.1f}"),
        (1e9, "B", "{:.1f}"),
        (1e6, "M", "{:.2f}"),
        (1e3, "K", "{:.2f}"),
    ):
        if n >= limit:
            value = n / limit
            return f"{int(value)}{suffix}" if value == math.floor(value) else fmt.format(value) + suffix
    return str(n)


@dataclass(slots=True)
class ModelEntry:
    """A model in the library: what it is and how it is listed."""

    spec: OllamaModel
    name: str  # as listed (`qwen3:14b`)
    digest: str  # manifest digest, hex (as /api/tags shows it)
    modified_at: str
    model_path: str  # the weights blob (shown in the Modelfile)

    def details(self) -> dict[str, Any]:
        s = self.spec
        return {
            "parent_model": s.parent_model,
            "format": "gguf",
            "family": s.family,
            "families": [s.family],
            "parameter_size": s.parameter_size,
            "quantization_level": s.quantization_level,
        }

    def tag(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": self.modified_at,
            "size": self.spec.size,
            "digest": self.digest,
            "details": self.details(),
        }

    def model_info(self) -> dict[str, Any]:
        s = self.spec
        if s.model_info:
            return dict(s.model_info)
        return {
            "general.architecture": s.family,
            "general.basename": s.name.split(":")[0].split("/")[-1],
            "general.file_type": next((k for k, v in _FILE_TYPES.items() if v == s.quantization_level), 15),
            "general.parameter_count": parameter_count(s.parameter_size),
            "general.quantization_version": 2,
            f"{s.family}.context_length": s.context_length,
            f"{s.family}.embedding_length": 5120,
            f"{s.family}.block_count": 40,
            f"{s.family}.attention.head_count": 40,
            f"{s.family}.attention.head_count_kv": 8,
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": "qwen2",
            "tokenizer.ggml.tokens": [],
            "tokenizer.ggml.token_type": [],
            "tokenizer.ggml.merges": [],
        }

    def parameters_text(self) -> str:
        lines = []
        for key, value in self.spec.parameters.items():
            for item in value if isinstance(value, list) else [value]:
                lines.append(f"{key:<30} {_go_repr(item)}")
        return "\n".join(lines)

    def modelfile(self) -> str:
        s = self.spec
        lines = [
            '# Modelfile generated by "ollama show"',
            "# To build a new Modelfile based on this, replace FROM with:",
            f"# FROM {self.name}",
            "",
            f"FROM {self.model_path}",
            f'TEMPLATE """{s.template}"""',
        ]
        if s.system:
            lines.append(f'SYSTEM """{s.system}"""')
        for key, value in s.parameters.items():
            for item in value if isinstance(value, list) else [value]:
                lines.append(f"PARAMETER {key} {_go_repr(item)}")
        if s.license:
            lines.append(f'LICENSE """{s.license}"""')
        return "\n".join(lines) + "\n"

    def show(self) -> dict[str, Any]:
        s = self.spec
        body: dict[str, Any] = {
            "license": s.license,
            "modelfile": self.modelfile(),
            "parameters": self.parameters_text(),
            "template": s.template,
        }
        if s.system:
            body["system"] = s.system
        body.update(
            details=self.details(),
            model_info=self.model_info(),
            capabilities=list(s.capabilities),
            modified_at=self.modified_at,
        )
        return {k: v for k, v in body.items() if v != ""}


def _go_repr(value: Any) -> str:
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class CreateError(Exception):
    """A create that fails; `status` is the HTTP status when it fails before streaming."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(slots=True)
class CreatePlan:
    """A validated create request, ready to run."""

    name: str
    base: ModelEntry | None
    files: list[tuple[str, str]]  # (file name, digest) sorted by name
    adapters: list[tuple[str, str]]
    request: dict[str, Any]


class ModelLibrary:
    """Models by canonical name, and the blob directory behind them."""

    def __init__(self, models: list[OllamaModel], blobs_dir: Path) -> None:
        self.blobs_dir = blobs_dir
        self._entries: dict[str, ModelEntry] = {}
        for spec in models:
            self.add(spec)

    def add(self, spec: OllamaModel, *, digest: str = "", model_path: str = "") -> ModelEntry:
        name = display(spec.name)
        if not digest:
            digest = hashlib.sha256(
                orjson.dumps({"name": name, "size": spec.size, "family": spec.family})
            ).hexdigest()
        path = model_path or str(self.blobs_dir / f"sha256-{hashlib.sha256(name.encode()).hexdigest()}")
        entry = ModelEntry(spec, name, digest, rfc3339(), path)
        self._entries[canonical(name)] = entry
        return entry

    def get(self, name: str) -> ModelEntry | None:
        return self._entries.get(canonical(name)) if name else None

    def remove(self, name: str) -> ModelEntry | None:
        return self._entries.pop(canonical(name), None)

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self._entries.values())

    def copy(self, source: ModelEntry, destination: str) -> ModelEntry:
        spec = replace(source.spec, name=display(destination), parameters=dict(source.spec.parameters))
        return self.add(spec, digest=source.digest, model_path=source.model_path)

    # -- blobs -------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """The file of a blob; ValueError("invalid digest format") for a malformed digest."""
        match = DIGEST.match(digest)
        if not match:
            raise ValueError("invalid digest format")
        return self.blobs_dir / f"sha256-{match.group(1).lower()}"

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    # -- create ------------------------------------------------------------------------------

    def plan_create(self, body: dict[str, Any]) -> CreatePlan:
        """Checks a create request the way Ollama does before it starts streaming."""
        name = body.get("model") or body.get("name") or ""
        if not isinstance(name, str) or not is_valid_name(name):
            raise CreateError("invalid model name", 400)
        files = self._blob_refs(body.get("files"))
        adapters = self._blob_refs(body.get("adapters"))
        for file_name, digest in files + adapters:
            if file_name.endswith((".gguf", ".safetensors")):
                continue
            path = self.blob_path(digest)
            if not path.is_file():
                raise CreateError(
                    f"blob not found for {file_name} (digest {digest}): "
                    f"open {path}: no such file or directory",
                    400,
                )
        base = None
        source = body.get("from")
        if source:
            if not isinstance(source, str):
                raise CreateError("invalid model name", 400)
            base = self.get(source)
        elif not files:
            raise CreateError("neither 'from' or 'files' was specified", 400)
        return CreatePlan(display(name), base, files, adapters, body)

    def _blob_refs(self, refs: Any) -> list[tuple[str, str]]:
        if refs is None:
            return []
        if not isinstance(refs, dict):
            raise CreateError("files must be an object of file name to digest", 400)
        out = []
        for file_name, digest in sorted(refs.items()):
            if not isinstance(digest, str) or not isinstance(file_name, str):
                raise CreateError("invalid digest format", 400)
            if (
                file_name in ("", ".")
                or file_name.startswith("/")
                or ".." in file_name.split("/")
                or "\\" in file_name
            ):
                raise CreateError(f"file path must be relative: {file_name}", 400)
            try:
                self.blob_path(digest)
            except ValueError as exc:
                raise CreateError(f"invalid digest for {file_name}: {exc}", 400) from None
            out.append((file_name, digest))
        return out

    def run_create(self, plan: CreatePlan) -> Iterator[dict[str, Any]]:
        """Registers the model, yielding Ollama's progress statuses; raises CreateError midway.

        Blocking (it reads GGUF headers): run it in a worker thread.
        """
        request = plan.request
        layers: list[tuple[str, str, int]] = []  # (media type, digest, size)
        metadata: dict[str, Any] = {}
        if plan.base is not None:
            spec = replace(plan.base.spec, parameters=dict(plan.base.spec.parameters))
            layers.append(("application/vnd.ollama.image.model", "sha256:" + plan.base.digest, spec.size))
        elif request.get("from"):
            raise CreateError("pull model manifest: file does not exist")
        else:
            spec = OllamaModel(name=plan.name, size=0, parameters={}, license="", template="")
        for _file_name, digest in plan.files:
            yield {"status": "parsing GGUF"}
            path = self.blob_path(digest)
            metadata = read_gguf_metadata(path)
            layers.append(("application/vnd.ollama.image.model", digest, path.stat().st_size))
        for _file_name, digest in plan.adapters:
            path = self.blob_path(digest)
            if not path.is_file():
                raise CreateError(f"open {path}: no such file or directory")
            layers.append(("application/vnd.ollama.image.adapter", digest, path.stat().st_size))
        if metadata:
            spec = _spec_from_gguf(spec, metadata)
        spec = _apply_modelfile(spec, plan.name, request)
        for media_type, value in (
            ("template", spec.template),
            ("system", spec.system),
            ("license", spec.license),
            ("params", orjson.dumps(spec.parameters).decode() if spec.parameters else ""),
        ):
            if value:
                data = value.encode()
                layers.append((f"application/vnd.ollama.image.{media_type}", self._put_blob(data), len(data)))
        for _media_type, digest, _size in layers:
            yield {"status": f"using existing layer {digest}"}
        yield {"status": "writing manifest"}
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "layers": [{"mediaType": m, "digest": d, "size": s} for m, d, s in layers],
        }
        spec = replace(spec, size=sum(s for _, _, s in layers))
        model_path = str(self.blob_path(layers[0][1])) if layers else ""
        self.add(spec, digest=hashlib.sha256(orjson.dumps(manifest)).hexdigest(), model_path=model_path)
        yield {"status": "success"}

    def _put_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            path.write_bytes(data)
        return digest


def _spec_from_gguf(spec: OllamaModel, metadata: dict[str, Any]) -> OllamaModel:
    arch = str(metadata.get("general.architecture") or spec.family or "qwen3")
    context = metadata.get(f"{arch}.context_length")
    count = int(metadata.get("general.parameter_count") or metadata.get("__parameter_count__") or 0)
    file_type = metadata.get("general.file_type")
    info = {k: v for k, v in metadata.items() if not k.startswith("__")}
    return replace(
        spec,
        family=arch,
        context_length=int(context) if isinstance(context, int) and context > 0 else spec.context_length,
        parameter_size=human_number(count) if count else spec.parameter_size,
        quantization_level=_FILE_TYPES.get(file_type, spec.quantization_level)
        if isinstance(file_type, int)
        else spec.quantization_level,
        model_info=info,
    )


def _apply_modelfile(spec: OllamaModel, name: str, request: dict[str, Any]) -> OllamaModel:
    template = request.get("template") if isinstance(request.get("template"), str) else None
    system = request.get("system") if isinstance(request.get("system"), str) else None
    license_ = request.get("license")
    if isinstance(license_, list):
        license_ = "\n".join(str(x) for x in license_)
    parameters = dict(spec.parameters)
    if isinstance(request.get("parameters"), dict):
        parameters.update(request["parameters"])
    new_template = template if template is not None else (spec.template or QWEN3_TEMPLATE)
    capabilities = ["completion"]
    if ".Tools" in new_template:
        capabilities.append("tools")
    if ".Thinking" in new_template or "<think>" in new_template:
        capabilities.append("thinking")
    if ".Suffix" in new_template:
        capabilities.append("insert")
    return replace(
        spec,
        name=name,
        template=new_template,
        system=system if system is not None else spec.system,
        license=license_ if isinstance(license_, str) else spec.license,
        parameters=parameters or dict(QWEN3_PARAMETERS),
        capabilities=tuple(capabilities),
    )


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """A GGUF's key-value metadata as Ollama's /api/show reports it (long arrays emptied)."""
    if not path.is_file():
        raise CreateError(f"open {path}: no such file or directory")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise CreateError("invalid file magic")
    try:
        from gguf import GGUFReader  # imported here: only a create needs it

        reader = GGUFReader(os.fspath(path))
    except Exception as exc:
        raise CreateError(f"invalid GGUF file: {exc}") from None
    metadata: dict[str, Any] = {}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.name", "tokenizer.chat_template"):
            continue
        try:
            value = fld.contents()
        except Exception:
            continue
        if isinstance(value, list) and len(value) > 5:
            value = []
        metadata[key] = value
    metadata["__parameter_count__"] = sum(int(t.n_elements) for t in reader.tensors)
    return metadata
