"""Errors of model distribution, as named values.

Each carries a message safe to show an operator. The CLI maps them to exit codes in one
place (`registry.cli`); the edge's model sync records them in its status.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base of every model-distribution error. `message` is safe to print."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadReference(RegistryError):
    """A model reference that is not `REGISTRY/REPOSITORY[:TAG|@DIGEST]`."""

    exit_code = 2


class BadModelFile(RegistryError):
    """A file given to push cannot be packed (missing, unreadable, malformed GGUF...)."""

    exit_code = 2


class ManifestRejected(RegistryError):
    """A manifest or config that is malformed or hostile; nothing of it is used."""

    exit_code = 3


class DigestMismatch(RegistryError):
    """Bytes whose sha256 differs from the digest that names them."""

    exit_code = 4


class NotFound(RegistryError):
    """The registry has no such repository, tag or blob."""

    exit_code = 5


class AuthFailed(RegistryError):
    """The registry refused our credentials (or we had none)."""

    exit_code = 6


class RegistryUnavailable(RegistryError):
    """The registry cannot be reached or answers with server errors; worth retrying later."""

    exit_code = 7


class DiskFull(RegistryError):
    """Not enough space in the local store for what a pull must write."""

    exit_code = 8


class StoreBusy(RegistryError):
    """Another process holds the local store's lock."""

    exit_code = 9


class RegistrationFailed(RegistryError):
    """Ollama refused a blob or a model create."""

    exit_code = 10


def status_error(status: int, what: str, registry: str, repository: str) -> RegistryError | None:
    """The named error a registry's HTTP status means for a read (None for 200 and 206).

    The one place registry statuses become errors, for manifests and configs (`registry.pull`)
    and layers (`registry.download`), both over `tandem.transport`.
    """
    if status in (200, 206):
        return None
    if status == 404:
        return NotFound(f"{what} not found on {registry}")
    if status in (401, 403):
        return AuthFailed(
            f"{registry} refused access to {repository} (HTTP {status}); "
            "set TANDEM_REGISTRY_USERNAME/PASSWORD or log in with a docker-style config"
        )
    if status >= 500 or status == 429:
        return RegistryUnavailable(f"{registry} answered HTTP {status} for {what}")
    return RegistryError(f"{registry} answered HTTP {status} for {what}")


class SignatureRejected(RegistryError):
    """A version that must be signed is unsigned, or its signature does not verify."""

    exit_code = 11
