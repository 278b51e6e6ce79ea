"""Errors of model distribution, as named values.

Each carries a message safe to show an operator. The CLI maps them to exit codes in one
place (`registry.cli`); the edge's model sync records them in its status.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base of every model-distribution error. `message` is safe to print.

    Exit codes of `tandem model` (documented in docs/model-distribution.md): 1 any other
    registry error (an unexpected answer), 2 bad reference or file (and bad options), 3 manifest
    rejected, 4 digest mismatch, 5 not found, 6 auth, 7 registry unavailable, 8 disk full,
    9 store busy, 10 Ollama registration, 11 signature refused, 70 internal error (a bug:
    reported in one line, the traceback with TANDEM_LOG_LEVEL=DEBUG), 130 interrupted."""

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


def auth_hint(registry: str, credentials_from: str) -> str:
    """What to do about a refusal: credentials are missing, or the ones found were refused."""
    if credentials_from == "none":
        return (
            f"no credentials found for {registry}: set TANDEM_REGISTRY_USERNAME and "
            "TANDEM_REGISTRY_PASSWORD (or TANDEM_REGISTRY_TOKEN), or log in with a docker-style config"
        )
    where = "the environment" if credentials_from == "env" else credentials_from
    return f"the credentials from {where} were refused: check them, and the account's access to it"


def tls_hint(detail: str) -> str:
    """`detail` (a connection error), with the likely cause when TLS met a plain-HTTP server."""
    if "WRONG_VERSION_NUMBER" in detail or "record layer failure" in detail or "SSLError" in detail:
        return f"{detail} (TLS handshake failed: if the registry speaks plain HTTP, add --plain-http)"
    return detail


def status_error(
    status: int, what: str, registry: str, repository: str, *, credentials_from: str = "none"
) -> RegistryError | None:
    """The named error a registry's HTTP status means for a read (None for 200 and 206).

    The one place registry statuses become errors, for manifests and configs (`registry.pull`)
    and layers (`registry.download`), both over `tandem.transport`. `credentials_from`: where
    the credentials sent came from (`Credentials.source`), for the hint on a 401.
    """
    if status in (200, 206):
        return None
    if status == 404:
        return NotFound(f"{what} not found on {registry}")
    if status in (401, 403):
        hint = auth_hint(registry, credentials_from)
        return AuthFailed(f"{registry} refused access to {repository} (HTTP {status}); {hint}")
    if status == 400 and what.startswith("manifest"):
        return ManifestRejected(
            f"{registry} answered HTTP 400 for {what}: it holds something other than a model manifest"
        )
    if status >= 500 or status == 429:
        return RegistryUnavailable(f"{registry} answered HTTP {status} for {what}")
    return RegistryError(f"{registry} answered HTTP {status} for {what}")


class SignatureRejected(RegistryError):
    """A version that must be signed is unsigned, or its signature does not verify."""

    exit_code = 11
