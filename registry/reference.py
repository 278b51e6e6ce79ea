"""Model references: `REGISTRY/models/NAME[:TAG|@sha256:HEX]`.

The registry part is always explicit (a private registry: a host with a dot or a port, or
`localhost`), so a reference never silently means Docker Hub. Repository and tag follow the
OCI distribution grammar; anything else is a `BadReference` naming what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from registry.errors import BadReference

DEFAULT_TAG = "latest"

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HOST = re.compile(r"^(?:\[[0-9a-fA-F:]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::[0-9]{1,5})?$")


@dataclass(frozen=True)
class Reference:
    """A parsed reference. `tag` and `digest` are both None for a bare repository (`ls`)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The model's short name: the last path component of the repository."""
        return self.repository.rsplit("/", 1)[-1]

    @property
    def target(self) -> str:
        """What to ask the registry for: the digest if pinned, else the tag (default `latest`)."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def repository_ref(self) -> str:
        return f"{self.registry}/{self.repository}"

    def with_tag(self, tag: str) -> Reference:
        if not _TAG.match(tag):
            raise BadReference(f"invalid tag {tag!r}: use letters, digits, '.', '_' or '-' (max 128)")
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Reference:
        return replace(self, digest=digest)

    def __str__(self) -> str:
        text = self.repository_ref
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str, *, allow_bare: bool = False) -> Reference:
    """Parses `REGISTRY/REPO[:TAG][@DIGEST]`. `allow_bare` accepts a repository without a tag
    (for listing); otherwise a tag or a digest is required: a forgotten tag silently meaning
    `latest` pushed over, or pulled, a version nobody chose. `:latest` says it explicitly."""
    raw = text.strip()
    if not raw:
        raise BadReference("empty model reference")
    digest = None
    if "@" in raw:
        raw, digest = raw.split("@", 1)
        if not _DIGEST.match(digest):
            raise BadReference(f"{text!r}: digest must be sha256:<64 hex digits>")
    if "/" not in raw:
        raise BadReference(
            f"{text!r}: expected REGISTRY/models/NAME[:TAG], e.g. registry.local:5000/models/qwen3:14b"
        )
    registry, rest = raw.split("/", 1)
    if not _HOST.match(registry) or not ("." in registry or ":" in registry or registry == "localhost"):
        raise BadReference(
            f"{text!r}: the first part must be a registry host (with a dot or a port, or localhost), "
            f"got {registry!r}"
        )
    tag = None
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, tag = rest.rsplit(":", 1)
        if not _TAG.match(tag):
            raise BadReference(f"{text!r}: invalid tag {tag!r}")
    components = rest.split("/")
    for part in components:
        if not _COMPONENT.match(part):
            raise BadReference(
                f"{text!r}: invalid repository component {part!r} (lowercase letters, digits, '.', '_', '-')"
            )
    if len(rest) > 255:
        raise BadReference(f"{text!r}: repository name longer than 255 characters")
    if tag is None and digest is None and not allow_bare:
        raise BadReference(
            f"{text!r} has no tag: name the version, e.g. {raw}:v1 (or {raw}:{DEFAULT_TAG} if that is meant)"
        )
    return Reference(registry=registry, repository=rest, tag=tag, digest=digest)
