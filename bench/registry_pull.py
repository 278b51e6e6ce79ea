"""Model distribution figures, against a real registry on loopback.

    python -m bench.registry_pull [--size-mib 1024] [--runs 2] [--concurrency 4]

Prints markdown:
1. pull throughput of a ~1 GiB GGUF artifact (verified, written to the store) against `curl`
   fetching the same blobs from the same registry with the same parallelism, as a ratio;
2. bytes each kind of update moves (template, metadata key, one tensor) against the bytes
   that changed;
3. bytes downloaded twice when a pull is killed (SIGKILL) at 50% and run again.

Starts Debian's `docker-registry` on a free port in a temporary directory; needs ~4x the
artifact size of free disk.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import structlog

from registry.pull import PullResult, pull_model
from registry.push import ModelFiles, push_model
from registry.reference import Reference, parse_reference
from registry.store import Store

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]


def start_registry(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (root / "storage").mkdir(parents=True)
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'storage'}}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n"
    )
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    proc = subprocess.Popen(
        [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    host = f"127.0.0.1:{port}"
    for _ in range(400):
        try:
            if httpx.get(f"http://{host}/v2/", timeout=1).status_code == 200:
                return proc, host
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("docker-registry did not start")


def write_gguf(
    path: Path, size_mib: int, *, metadata: dict[str, str] | None = None, bump: str | None = None
) -> Path:
    """A GGUF of about `size_mib` MiB: blocks of q (16 MiB), k (16 MiB), up (32 MiB) in f32.

    Tensor data is generated per tensor from a seed derived from its name, so versions differ
    only where asked (`bump` adds 1.0 to one tensor, `metadata` adds header keys).
    """
    import gguf

    blocks = max(1, size_mib // 64)
    shapes = {"attn_q": (2048, 2048), "attn_k": (2048, 2048), "ffn_up": (4096, 2048)}
    names = [(f"blk.{b}.{t}.weight", shape) for b in range(blocks) for t, shape in shapes.items()]
    writer = gguf.GGUFWriter(path, "qwen3")
    writer.add_name("bench-qwen3")
    writer.add_context_length(32768)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for key, value in (metadata or {}).items():
        writer.add_string(key, value)
    for name, shape in names:
        writer.add_tensor_info(name, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name, shape in names:
        rng = np.random.default_rng(_seed(name))
        data = rng.random(shape, dtype=np.float32)
        if name == bump:
            data += np.float32(1.0)
        writer.write_tensor_data(data)
    writer.close()
    return path


def _seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


async def timed_pull(ref: Reference, store_dir: Path, concurrency: int) -> PullResult:
    shutil.rmtree(store_dir, ignore_errors=True)
    return await pull_model(ref, Store(store_dir), plain_http=True, concurrency=concurrency)


def curl_fetch(host: str, repo: str, digests: list[str], out: Path, concurrency: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    args = ["curl", "-sSf", "--no-progress-meter", "--parallel", "--parallel-max", str(concurrency)]
    for d in digests:
        args += ["-o", str(out / d[7:]), f"http://{host}/v2/{repo}/blobs/{d}"]
    started = time.monotonic()
    subprocess.run(args, check=True)
    return time.monotonic() - started


def layer_digests(host: str, ref: Reference) -> list[tuple[str, int]]:
    raw = httpx.get(
        f"http://{host}/v2/{ref.repository}/manifests/{ref.target}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    ).json()
    seen: dict[str, int] = {}
    for layer in raw["layers"]:
        seen.setdefault(layer["digest"], layer["size"])
    return list(seen.items())


def throughput_section(host: str, ref: Reference, work: Path, runs: int, concurrency: int) -> list[str]:
    layers = layer_digests(host, ref)
    total = sum(size for _, size in layers)
    curl_fetch(
        host, ref.repository, [d for d, _ in layers], work / "curl", concurrency
    )  # warm the page cache
    ours, ours_total, theirs = [], [], []
    for _ in range(runs):
        result = asyncio.run(timed_pull(ref, work / "store-tp", concurrency))
        ours.append(result.transfer_seconds)
        ours_total.append(result.seconds)
        theirs.append(curl_fetch(host, ref.repository, [d for d, _ in layers], work / "curl", concurrency))
    o, t, ot = statistics.median(ours), statistics.median(theirs), statistics.median(ours_total)
    shutil.rmtree(work / "curl", ignore_errors=True)
    return [
        "### Pull throughput (loopback registry, page cache warm)",
        "",
        f"{len(layers)} layers, {total / MiB:.0f} MiB, {concurrency} parallel transfers, "
        f"median of {runs} runs.",
        "",
        "| client | seconds | MiB/s |",
        "|---|---|---|",
        f"| `curl --parallel` (no verification) | {t:.2f} | {total / MiB / t:.0f} |",
        f"| `tandem model pull`: download + sha256 while streaming | {o:.2f} | {total / MiB / o:.0f} |",
        f"| `tandem model pull` incl. reassembly + whole-file verify | {ot:.2f} | {total / MiB / ot:.0f} |",
        "",
        f"**Ratio (tandem download / curl): {t / o:.2f}x curl's throughput** "
        f"({t / ot:.2f}x including reassembly).",
        "",
    ]


def update_section(host: str, ref: Reference, base: Path, work: Path, size_mib: int) -> list[str]:
    rows = []
    template_1 = work / "t1"
    template_1.write_text("{{ .System }}\n{{ .Prompt }}")
    push_model(ref, ModelFiles(base, template=template_1), plain_http=True)
    store_dir = work / "store-upd"
    shutil.rmtree(store_dir, ignore_errors=True)
    asyncio.run(pull_model(ref, Store(store_dir), plain_http=True))

    def measure(kind: str, tag: str, files: ModelFiles, changed: int, note: str) -> None:
        pushed = push_model(ref.with_tag(tag), files, plain_http=True)
        result = asyncio.run(pull_model(ref.with_tag(tag), Store(store_dir), plain_http=True))
        rows.append(
            f"| {kind} | {changed:,} ({note}) | {pushed.uploaded_bytes:,} | {result.bytes_downloaded:,} "
            f"| {result.layers_downloaded}/{result.layers_total} | {result.metadata_bytes:,} |"
        )

    template_2 = work / "t2"
    template_2.write_text("<|im_start|>system\n{{ .System }}<|im_end|>\n{{ .Prompt }}")
    measure(
        "template only",
        "tmpl",
        ModelFiles(base, template=template_2),
        template_2.stat().st_size,
        "new template",
    )
    key, value = "general.description", "fine-tuned on line-3 maintenance logs"
    meta = write_gguf(work / "meta.gguf", size_mib, metadata={key: value})
    measure(
        "one metadata key",
        "meta",
        ModelFiles(meta, template=template_1),
        len(key) + len(value) + 12,
        "key+value",
    )
    meta.unlink()
    tensor = f"blk.{max(1, size_mib // 64) // 2}.attn_q.weight"
    bumped = write_gguf(work / "tensor.gguf", size_mib, bump=tensor)
    measure("one tensor", "tensor", ModelFiles(bumped, template=template_1), 2048 * 2048 * 4, tensor)
    bumped.unlink()
    return [
        "### Bytes moved per update (64 MiB chunk bound)",
        "",
        "| update | bytes changed | pushed | pulled (layers) | layers pulled | metadata (manifest+config) |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "A tensor moves with the chunk that holds it (its block's tensors up to the 64 MiB bound);",
        "`--chunk-size` trades layer count for update granularity.",
        "",
    ]


def resume_section(host: str, ref: Reference, work: Path, concurrency: int) -> list[str]:
    store = Store(work / "store-kill")
    shutil.rmtree(store.root, ignore_errors=True)
    store = Store(work / "store-kill")
    total = sum(size for _, size in layer_digests(host, ref))
    cmd = [
        sys.executable,
        "-m",
        "registry.cli",
        "pull",
        str(ref),
        "--plain-http",
        "--json",
        "--store",
        str(store.root),
        "--concurrency",
        str(concurrency),
        "--max-rate",
        "256MiB",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def on_disk() -> int:
        return sum(
            p.stat().st_size
            for sub in ("blobs/sha256", "partial/sha256")
            for p in (store.root / sub).iterdir()
        )

    while on_disk() < total // 2 and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = on_disk()
    result = asyncio.run(pull_model(ref, store, plain_http=True, concurrency=concurrency))
    config_bytes = result.metadata_bytes  # the config counted on disk at the kill is metadata
    twice = max(0, at_kill + result.bytes_downloaded - total - config_bytes)
    return [
        "### Resume after `kill -9` at 50%",
        "",
        "| artifact | on disk at the kill | downloaded on resume | downloaded twice |",
        "|---|---|---|---|",
        f"| {total:,} | {at_kill:,} ({at_kill / total:.0%}) | {result.bytes_downloaded:,} | {twice:,} |",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    structlog.configure(  # stdout is the report; logs only when something is wrong
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    work = Path(tempfile.mkdtemp(prefix="tandem-bench-registry-"))
    proc, host = start_registry(work / "registry")
    try:
        ref = parse_reference(f"{host}/models/bench:v1")
        base = write_gguf(work / "base.gguf", args.size_mib)
        push_model(ref, ModelFiles(base), plain_http=True)
        out = [
            f"## Model distribution bench ({os.cpu_count()} CPUs, {base.stat().st_size / MiB:.0f} MiB GGUF)",
            "",
        ]
        out += throughput_section(host, ref, work, args.runs, args.concurrency)
        out += resume_section(host, ref, work, args.concurrency)
        out += update_section(host, ref.with_tag("u1"), base, work, args.size_mib)
        print("\n".join(out))
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
