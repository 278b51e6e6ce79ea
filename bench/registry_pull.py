"""Model distribution figures, against a real registry on loopback.

    python -m bench.registry_pull [--size-mib 1024] [--runs 5] [--concurrency 4]

Prints markdown:
1. pull throughput of a ~1 GiB GGUF artifact against `curl` fetching the same blobs from the
   same registry with the same parallelism, run after run (median and min-max over the runs,
   and the ratio within each run): download + verify (`assemble=False`), and end to end
   (reassembled, whole-file verified, fsynced), the latter also against curl + `cat` + `sync`;
2. bytes each kind of update moves (template, metadata key, one tensor) against the bytes
   that changed;
3. bytes downloaded twice when a pull is killed (SIGKILL) at 50% and run again.

Starts Debian's `docker-registry` on a free port in a temporary directory; needs ~4x the
artifact size of free disk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import structlog

from registry.chunking import DEFAULT_MAX_CHUNK
from registry.pull import PullResult, pull_model
from registry.push import ModelFiles, push_model
from registry.reference import Reference, parse_reference
from registry.store import Store

MiB = 1 << 20
GiB = 1 << 30
CHUNK_BOUND = DEFAULT_MAX_CHUNK  # what push_model chunks GGUF tensor data into
ROOT = Path(__file__).resolve().parents[1]


def start_registry(
    root: Path, *, extra: str = "", access_log: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Debian's docker-registry on a free port; `extra`: more config (e.g. `proxy:`);
    `access_log`: a file that gets a line per request, with the bytes sent."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (root / "storage").mkdir(parents=True)
    config = root / "config.yml"
    config.write_text(
        f"version: 0.1\nlog: {{level: error, accesslog: {{disabled: {'false' if access_log else 'true'}}}}}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'storage'}}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}}}\n{extra}"
    )
    binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    out = access_log.open("wb") if access_log else subprocess.DEVNULL
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=out, stderr=subprocess.DEVNULL)
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
    """A GGUF of about `size_mib` MiB: blocks of q (16 MiB), k (16 MiB), up (32 MiB) in f32
    (one smaller block below 64 MiB, for smoke runs).

    Tensor data is generated per tensor from a seed derived from its name, so versions differ
    only where asked (`bump` adds 1.0 to one tensor, `metadata` adds header keys).
    """
    import gguf

    blocks = max(1, size_mib // 64)
    shapes = tensor_shapes(size_mib)
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


def tensor_shapes(size_mib: int) -> dict[str, tuple[int, int]]:
    """The tensors of one block: 64 MiB of f32, or about `size_mib` MiB when that is less."""
    rows = max(16, 2048 * min(size_mib, 64) // 64)
    return {"attn_q": (rows, 2048), "attn_k": (rows, 2048), "ffn_up": (2 * rows, 2048)}


def _seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


async def timed_pull(ref: Reference, store_dir: Path, concurrency: int, *, assemble: bool) -> PullResult:
    return await pull_model(
        ref, Store(store_dir), plain_http=True, concurrency=concurrency, assemble=assemble
    )


def curl_fetch(host: str, repo: str, digests: list[str], out: Path, concurrency: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    args = ["curl", "-sSf", "--no-progress-meter", "--parallel", "--parallel-max", str(concurrency)]
    for d in digests:
        args += ["-o", str(out / d[7:]), f"http://{host}/v2/{repo}/blobs/{d}"]
    started = time.monotonic()
    subprocess.run(args, check=True)
    return time.monotonic() - started


def cat_and_fsync(parts: list[Path], dest: Path) -> float:
    """What reassembly costs without verification: `cat` the parts into one file, `sync` it."""
    started = time.monotonic()
    with dest.open("wb") as out:
        subprocess.run(["cat", *map(str, parts)], stdout=out, check=True)
    subprocess.run(["sync", str(dest)], check=True)
    elapsed = time.monotonic() - started
    dest.unlink()
    return elapsed


def layer_digests(host: str, ref: Reference) -> list[tuple[str, int]]:
    seen: dict[str, int] = {}
    for layer in manifest_layers(host, ref):
        seen.setdefault(layer["digest"], layer["size"])
    return list(seen.items())


def manifest_layers(host: str, ref: Reference) -> list[dict[str, Any]]:
    raw = httpx.get(
        f"http://{host}/v2/{ref.repository}/manifests/{ref.target}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    ).json()
    return list(raw["layers"])


@dataclass
class Samples:
    """Seconds and CPU seconds per run, and the same-run ratio of curl's time to this one's."""

    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)

    def row(self, label: str, total: int) -> str:
        mibs = [total / MiB / s for s in self.seconds]
        ratio = (
            f"{statistics.median(self.ratios):.2f}x ({min(self.ratios):.2f}-{max(self.ratios):.2f})"
            if self.ratios
            else "1x"
        )
        cpu = f"{statistics.median(self.cpu) / (total / GiB):.2f}" if self.cpu else ""
        return (
            f"| {label} | {statistics.median(self.seconds):.2f} | {statistics.median(mibs):.0f} "
            f"| {min(mibs):.0f}-{max(mibs):.0f} | {ratio} | {cpu} |"
        )


def cpu_seconds() -> float:
    """CPU time of this process and its waited-for children so far (user + system)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def throughput_section(
    host: str, ref: Reference, work: Path, runs: int, concurrency: int, figures: dict[str, Any]
) -> list[str]:
    layers = layer_digests(host, ref)
    total = sum(size for _, size in layers)
    digests = [d for d, _ in layers]
    weights = sorted(
        (int(layer["annotations"]["io.tandem.offset"]), layer["digest"])
        for layer in manifest_layers(host, ref)
        if layer["annotations"].get("io.tandem.role") == "weights"
    )
    curl_fetch(host, ref.repository, digests, work / "curl", concurrency)  # warm the page cache
    curl, ours, ours_e2e, curl_cat = Samples(), Samples(), Samples(), Samples()
    for _ in range(runs):  # each run: curl, then ours, so each ratio compares the same moment
        cpu = cpu_seconds()
        t = curl_fetch(host, ref.repository, digests, work / "curl", concurrency)
        curl.seconds.append(t)
        curl.cpu.append(cpu_seconds() - cpu)
        c = t + cat_and_fsync([work / "curl" / d[7:] for _, d in weights], work / "curl-cat")
        curl_cat.seconds.append(c)
        curl_cat.cpu.append(cpu_seconds() - cpu)
        shutil.rmtree(work / "store-tp", ignore_errors=True)
        cpu = cpu_seconds()
        dl = asyncio.run(timed_pull(ref, work / "store-tp", concurrency, assemble=False))
        ours.cpu.append(cpu_seconds() - cpu)
        ours.seconds.append(dl.transfer_seconds)
        ours.ratios.append(t / dl.transfer_seconds)
        shutil.rmtree(work / "store-tp", ignore_errors=True)
        cpu = cpu_seconds()
        e2e = asyncio.run(timed_pull(ref, work / "store-tp", concurrency, assemble=True))
        ours_e2e.cpu.append(cpu_seconds() - cpu)
        ours_e2e.seconds.append(e2e.seconds)
        ours_e2e.ratios.append(t / e2e.seconds)
        curl_cat.ratios.append(c / e2e.seconds)
    shutil.rmtree(work / "curl", ignore_errors=True)
    shutil.rmtree(work / "store-tp", ignore_errors=True)
    figures["throughput"] = {
        "bytes": total,
        "curl_s": curl.seconds,
        "tandem_s": ours.seconds,  # download + verify
        "tandem_end_to_end_s": ours_e2e.seconds,
        "curl_cat_sync_s": curl_cat.seconds,
        "cpu_s": {"curl": curl.cpu, "tandem": ours.cpu, "tandem_end_to_end": ours_e2e.cpu},
    }
    return [
        "### Pull throughput (loopback registry, page cache warm)",
        "",
        f"{len(layers)} layers, {total / MiB:.0f} MiB, {concurrency} parallel transfers, {runs} runs; "
        "each run fetches with curl and then pulls, and its ratio compares the two.",
        "",
        "| client | seconds (median) | MiB/s (median) | MiB/s (min-max) "
        "| vs curl, same run: median (min-max) | CPU s per GiB (client) |",
        "|---|---|---|---|---|---|",
        curl.row("`curl --parallel` (no verification, no fsync)", total),
        ours.row("`tandem model pull`: download + sha256 while streaming", total),
        ours_e2e.row("`tandem model pull` end to end: + reassembly, whole-file sha256, fsync", total),
        curl_cat.row("`curl` + `cat` the chunks into one file + `sync` it (no verification)", total),
        "",
        "The last row's ratio compares it with the end-to-end pull (its time / the pull's). CPU is "
        "the client's own (user + system), not the registry's.",
        "",
    ]


def update_section(
    host: str, ref: Reference, base: Path, work: Path, size_mib: int, figures: dict[str, Any]
) -> list[str]:
    rows = []
    updates: list[dict[str, Any]] = figures.setdefault("updates", [])
    template_1 = work / "t1"
    template_1.write_text("{{ .System }}\n{{ .Prompt }}")
    push_model(ref, ModelFiles(base, template=template_1), plain_http=True)
    store_dir = work / "store-upd"
    shutil.rmtree(store_dir, ignore_errors=True)
    asyncio.run(pull_model(ref, Store(store_dir), plain_http=True))

    def measure(kind: str, tag: str, files: ModelFiles, changed: int, note: str) -> None:
        pushed = push_model(ref.with_tag(tag), files, plain_http=True)
        result = asyncio.run(pull_model(ref.with_tag(tag), Store(store_dir), plain_http=True))
        updates.append(
            {
                "kind": kind,
                "changed": changed,
                "pushed": pushed.uploaded_bytes,
                "pulled": result.bytes_downloaded,
                "layers_pulled": result.layers_downloaded,
                "layers_total": result.layers_total,
                "metadata": result.metadata_bytes,
            }
        )
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
    rows_q, cols_q = tensor_shapes(size_mib)["attn_q"]
    measure("one tensor", "tensor", ModelFiles(bumped, template=template_1), rows_q * cols_q * 4, tensor)
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


def resume_section(
    host: str, ref: Reference, work: Path, concurrency: int, figures: dict[str, Any]
) -> list[str]:
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
        size = 0
        for sub in ("blobs/sha256", "partial/sha256"):
            for p in (store.root / sub).iterdir():
                # A finished part moves from partial/ to blobs/ between the listing and the stat.
                with contextlib.suppress(FileNotFoundError):
                    size += p.stat().st_size
        return size

    while on_disk() < total // 2 and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = on_disk()
    result = asyncio.run(pull_model(ref, store, plain_http=True, concurrency=concurrency))
    config_bytes = result.metadata_bytes  # the config counted on disk at the kill is metadata
    twice = max(0, at_kill + result.bytes_downloaded - total - config_bytes)
    figures["resume"] = {
        "total": total,
        "at_kill": at_kill,
        "resumed": result.bytes_downloaded,
        "twice": twice,
    }
    return [
        "### Resume after `kill -9` at 50%",
        "",
        "| artifact | on disk at the kill | downloaded on resume | downloaded twice |",
        "|---|---|---|---|",
        f"| {total:,} | {at_kill:,} ({at_kill / total:.0%}) | {result.bytes_downloaded:,} | {twice:,} |",
        "",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the figures to this file as JSON")
    args = parser.parse_args(argv)
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
        figures: dict[str, Any] = {"size_bytes": base.stat().st_size, "chunk_bound": CHUNK_BOUND}
        out += throughput_section(host, ref, work, args.runs, args.concurrency, figures)
        out += resume_section(host, ref, work, args.concurrency, figures)
        out += update_section(host, ref.with_tag("u1"), base, work, args.size_mib, figures)
        print("\n".join(out))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
