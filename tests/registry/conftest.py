"""Fixtures for model distribution: a real OCI registry on loopback and small GGUF files.

The registry is the CNCF distribution registry (Debian `docker-registry`), started once per
test session on a free port with its own config and storage directory. Every test pushes to
a repository of its own, so tests never see each other's tags.
"""

from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from registry.reference import Reference, parse_reference

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"


@dataclass(frozen=True)
class RegistryServer:
    host: str  # 127.0.0.1:PORT
    storage: Path
    log: Path

    def blob_data(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes (to corrupt it, as a failing disk would)."""
        hex_ = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_registry(
    root: Path, extra_config: str = "", *, access_log: bool = False
) -> tuple[subprocess.Popen[bytes], RegistryServer]:
    """`access_log`: one line per request in `server.log`, with the bytes sent (what a test
    counts to learn how often the registry served a blob)."""
    port = free_port()
    storage = root / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    config = root / "config.yml"
    config.write_text(
        f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: {str(not access_log).lower()}
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
{extra_config}"""
    )
    log = root / "registry.log"
    proc = subprocess.Popen(
        [REGISTRY_BIN, "serve", str(config)], stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    server = RegistryServer(host=f"127.0.0.1:{port}", storage=storage, log=log)
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"http://{server.host}/v2/", timeout=1).status_code in (200, 401):
                return proc, server
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"docker-registry did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def registry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    if not Path(REGISTRY_BIN).exists():
        pytest.skip("docker-registry is not installed (Debian package docker-registry)")
    proc, server = start_registry(tmp_path_factory.mktemp("registry"))
    yield server
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


_repo_ids = itertools.count()


@pytest.fixture
def model_ref(registry_server: RegistryServer, request: pytest.FixtureRequest) -> Reference:
    """A fresh repository for this test: REGISTRY/models/<test-name>-<n>:v1."""
    name = request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:60].strip("-")
    return parse_reference(f"{registry_server.host}/models/{name}-{next(_repo_ids)}:v1")


def make_gguf(
    path: Path,
    *,
    blocks: int = 4,
    dim: int = 256,
    seed: int = 0,
    metadata: dict[str, str] | None = None,
    changed: dict[str, float] | None = None,
    tokens: list[str] | None = None,
) -> Path:
    """A small, valid GGUF file (about 1 MiB per block at dim=256) made with the gguf package.

    `changed` adds a constant to the named tensors: the same model with those tensors updated.
    `metadata` adds string keys to the header; `tokens` a tokenizer vocabulary (a string
    array, as real models carry) with its scores.
    """
    import gguf

    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {"token_embd.weight": rng.standard_normal((64, dim), dtype=np.float32)}
    for b in range(blocks):
        for t in ("attn_q", "attn_k", "attn_v", "ffn_up"):
            tensors[f"blk.{b}.{t}.weight"] = rng.standard_normal((dim, dim), dtype=np.float32)
        tensors[f"blk.{b}.attn_norm.weight"] = rng.standard_normal((dim,), dtype=np.float32)
    tensors["output_norm.weight"] = rng.standard_normal((dim,), dtype=np.float32)
    for name, delta in (changed or {}).items():
        tensors[name] = tensors[name] + np.float32(delta)
    writer = gguf.GGUFWriter(path, "qwen3")
    writer.add_name("tiny-qwen3")
    writer.add_context_length(4096)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    if tokens:
        writer.add_token_list(tokens)
        writer.add_token_scores([float(-i) for i in range(len(tokens))])
    for key, value in (metadata or {}).items():
        writer.add_string(key, value)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def gguf_file(tmp_path: Path) -> Path:
    return make_gguf(tmp_path / "model.gguf")
