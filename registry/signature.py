"""Signatures of model versions: model-signing bundles kept beside the artifact.

The format is OpenSSF model-signing (PyPI `model-signing`) with an elliptic-curve key: a
sigstore bundle whose DSSE envelope signs an in-toto statement listing every file of the
model with its sha256. The files are the ones the edge hands Ollama, under their names in the
artifact: the weights file (`config.tandem.weights.filename`) and `template`, `system`,
`params.json`, `LICENSE`, `adapter.gguf` for the settings a version has. Verification needs
only the public key: no network, no transparency log.

Where it lives: distribution 2.8 has no referrers API, so the bundle goes in a companion
manifest tagged `sha256-<hex of the model manifest digest>.sig` (cosign's convention). Its
one layer is the bundle; its `subject` names the model manifest, so a registry that has the
referrers API lists it as a referrer too. Not a layer of the model manifest, because:

- signing leaves the model manifest as it is: a version has one digest signed or not, a
  re-push stays a no-op, and a version can be signed, or re-signed with a new key, after it
  was pushed without any edge seeing a "new version";
- ECDSA signatures are randomized: as a layer, every signed push would mint a new manifest
  digest, move the tag and make every edge sync again.

The tag only finds the signature; what binds it to a version is the content: the statement
names every file by digest, so a signature moved onto another version does not verify. Copy
both tags when mirroring a signed version (`skopeo`/`oras copy` of one tag leaves it behind).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from registry.artifact import ROLE_FILEPATH, ModelConfig, canonical_json, check_digest, sha256_digest
from registry.errors import ManifestRejected, SignatureRejected

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_CONFIG = b"{}"
MAX_SIGNATURE_MANIFEST_BYTES = 64 << 10
MAX_BUNDLE_BYTES = 1 << 20

# A file of the model: its path on disk, or its bytes (small settings read at push).
FileSource = Path | bytes


def signature_tag(manifest_digest: str) -> str:
    """The tag that holds the signature of the model manifest `manifest_digest`."""
    return "sha256-" + check_digest(manifest_digest, "signed manifest")[len("sha256:") :] + ".sig"


def sign_files(files: Mapping[str, FileSource], private_key: Path, password: str | None = None) -> bytes:
    """A model-signing bundle over `files` (name in the model -> path or bytes)."""
    from model_signing import hashing, signing

    with tempfile.TemporaryDirectory(prefix="tandem-sign-") as tmp:
        model = _lay_out(Path(tmp), files)
        bundle = Path(tmp) / "bundle.json"
        try:
            signing.Config().use_elliptic_key_signer(
                private_key=private_key, password=password
            ).set_hashing_config(hashing.Config().set_allow_symlinks(True)).sign(model, bundle)
        except (ValueError, TypeError, OSError) as exc:
            raise SignatureRejected(f"cannot sign with {private_key}: {exc}") from None
        return bundle.read_bytes()


def verify_files(files: Mapping[str, FileSource], bundle: bytes, public_key: Path, what: str) -> None:
    """Checks that `bundle` signs exactly `files` with the key `public_key`; offline."""
    from model_signing import hashing, verifying

    with tempfile.TemporaryDirectory(prefix="tandem-verify-") as tmp:
        model = _lay_out(Path(tmp), files)
        path = Path(tmp) / "bundle.json"
        path.write_bytes(bundle)
        try:
            # Files hashed whole with sha256, as `sign_files` signs them; the big ones are links.
            verifier = (
                verifying.Config()
                .use_elliptic_key_verifier(public_key=public_key)
                .set_hashing_config(hashing.Config().set_allow_symlinks(True))
            )
        except (ValueError, TypeError, OSError) as exc:
            raise SignatureRejected(f"cannot use public key {public_key}: {exc}") from None
        try:
            verifier.verify(model, path)
        except Exception as exc:  # model-signing reports a bad signature or file as ValueError and others
            raise SignatureRejected(
                f"the signature of {what} does not verify with {public_key.name}: {_first_line(exc)}"
            ) from None


def model_files(
    config: ModelConfig, weights: FileSource, setting: Callable[[str], FileSource]
) -> dict[str, FileSource]:
    """The files a version consists of, as signed: the weights file and each setting (`setting`
    gives a setting's bytes or file by its layer digest). The same names at push and pull."""
    files: dict[str, FileSource] = {config.tandem.weights.filename: weights}
    for role, digest in config.tandem.ollama.items():
        name = ROLE_FILEPATH[role]
        if name in files:
            raise SignatureRejected(f"the weights file and the {role} would both be named {name!r}")
        files[name] = setting(digest)
    return files


def signature_manifest(bundle: bytes, subject_digest: str, subject_size: int) -> bytes:
    """The companion manifest that carries `bundle` for the model manifest `subject_digest`."""
    return canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": BUNDLE_MEDIA_TYPE,
            "config": {
                "mediaType": EMPTY_MEDIA_TYPE,
                "digest": sha256_digest(EMPTY_CONFIG),
                "size": len(EMPTY_CONFIG),
            },
            "layers": [
                {"mediaType": BUNDLE_MEDIA_TYPE, "digest": sha256_digest(bundle), "size": len(bundle)}
            ],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": subject_size},
        }
    )


def parse_signature_manifest(raw: bytes, subject_digest: str) -> tuple[str, int]:
    """The bundle's (digest, size) from a signature manifest, which must name `subject_digest`."""
    if len(raw) > MAX_SIGNATURE_MANIFEST_BYTES:
        raise ManifestRejected(f"signature manifest is over {MAX_SIGNATURE_MANIFEST_BYTES} bytes")
    try:
        data: Any = json.loads(raw)
        subject = data["subject"]["digest"]
        layers = data["layers"]
        (layer,) = layers
        media_type, digest, size = layer["mediaType"], layer["digest"], layer["size"]
    except (ValueError, KeyError, TypeError):
        raise ManifestRejected("signature manifest is malformed (one bundle layer and a subject)") from None
    if subject != subject_digest:
        raise SignatureRejected(
            f"the signature tagged for {subject_digest} names another manifest ({str(subject)[:80]})"
        )
    if media_type != BUNDLE_MEDIA_TYPE:
        raise ManifestRejected(f"signature layer has media type {str(media_type)[:80]!r}, not a bundle")
    check_digest(digest, "signature bundle")
    if not isinstance(size, int) or not 0 < size <= MAX_BUNDLE_BYTES:
        raise ManifestRejected(f"signature bundle declares {size!r} bytes (limit {MAX_BUNDLE_BYTES})")
    return digest, size


def _lay_out(root: Path, files: Mapping[str, FileSource]) -> Path:
    """A directory holding `files` under their names (links to big files, small ones written)."""
    model = root / "model"
    model.mkdir()
    for name, source in files.items():
        dest = model / name
        if isinstance(source, bytes):
            dest.write_bytes(source)
        else:
            os.symlink(source.resolve(), dest)
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
