"""Push cost against reading the file once, and bytes a small update moves.

    python -m bench.registry_push --gguf MODEL.gguf [--big-gib 3] [--runs 3] [--before /work/main]

Prints markdown:
1. for each file (the given GGUF; with `--big-gib`, a generated multi-GB GGUF too): wall
   time of `sha256sum FILE` (the baseline, page cache warm), of `tandem model push` to an
   empty registry and of the same push again (nothing changed), each under `/usr/bin/time -v`
   for the peak RSS; medians over `--runs`, ratios against sha256sum in the same run. With
   `--before DIR` (a checkout of the code before this work), one push with that code too;
2. bytes a push uploads and a pull downloads for a template change (the Ollama template
   layer), a chat template added to the GGUF header, and a one-key change in the header.

Starts Debian's `docker-registry` on a free port (a fresh one per push, so every first push
uploads everything); needs about 3x the files' size of free disk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.registry_pull import start_registry, write_gguf
from registry.gguf_header import read_header
from registry.pull import pull_model
from registry.push import ModelFiles, push_model
from registry.reference import parse_reference
from registry.store import Store
from tandem import logs

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def timed(cmd: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (bytes) and stdout of `cmd` run under /usr/bin/time -v (in
    `cwd`: `python -m` puts it first on the path, so it decides which code runs)."""
    started = time.monotonic()
    proc = subprocess.run(
        ["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env, cwd=cwd, check=False
    )
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return wall, int(rss.group(1)) * 1024 if rss else 0, proc.stdout


def push_cmd(ref: str, gguf: Path) -> list[str]:
    return [sys.executable, "-m", "registry.cli", "push", ref, "--gguf", str(gguf), "--plain-http", "--json"]


def push_figures(gguf: Path, runs: int, work: Path, before: Path | None) -> list[str]:
    size = gguf.stat().st_size
    rows: dict[str, list[tuple[float, float, float]]] = {"sha256sum": [], "push": [], "re-push": []}
    for run in range(runs):
        subprocess.run(["cat", str(gguf)], stdout=subprocess.DEVNULL, check=True)  # page cache warm
        base, _, _ = timed(["sha256sum", str(gguf)])
        rows["sha256sum"].append((base, 0, 1.0))  # (wall, rss, ratio)
        proc, host = start_registry(work / f"reg-{gguf.stem}-{run}")
        try:
            ref = f"{host}/models/bench:v1"
            wall, rss, out = timed(push_cmd(ref, gguf))
            assert json.loads(out)["uploaded_blobs"] > 0
            rows["push"].append((wall, rss, wall / base))
            wall, rss, out = timed(push_cmd(ref, gguf))
            assert json.loads(out)["uploaded_blobs"] == 0
            rows["re-push"].append((wall, rss, wall / base))
        finally:
            proc.terminate()
            proc.wait()
            shutil.rmtree(work / f"reg-{gguf.stem}-{run}", ignore_errors=True)
    lines = [
        f"### `{gguf.name}`: {size / MiB:.0f} MiB, {runs} runs",
        "",
        "| what | wall s (median) | vs sha256sum, same run (median, min-max) | peak RSS MiB (max) |",
        "|---|---|---|---|",
    ]
    for label, vals in rows.items():
        walls = [v[0] for v in vals]
        ratios = [v[2] for v in vals]
        peak = max(v[1] for v in vals) / MiB
        lines.append(
            f"| {label} | {statistics.median(walls):.2f} | {statistics.median(ratios):.2f}x "
            f"({min(ratios):.2f}-{max(ratios):.2f}) | {peak:.0f} |"
            if label != "sha256sum"
            else f"| sha256sum | {statistics.median(walls):.2f} | 1x | - |"
        )
    if before is not None:
        proc, host = start_registry(work / f"reg-{gguf.stem}-before")
        try:
            env = {**os.environ, "PYTHONPATH": str(before)}
            wall, rss, _ = timed(push_cmd(f"{host}/models/bench:v1", gguf), env=env, cwd=before)
            base = statistics.median(v[0] for v in rows["sha256sum"])
            lines.append(
                f"| push, code before this work (1 run) | {wall:.2f} | {wall / base:.2f}x | {rss / MiB:.0f} |"
            )
        finally:
            proc.terminate()
            proc.wait()
    return [*lines, ""]


def _kv_string(key: str, value: str) -> bytes:
    k, v = key.encode(), value.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", 8) + struct.pack("<Q", len(v)) + v


def with_key(src: Path, dest: Path, key: str, value: str) -> Path:
    """`src` with one string key added (or replaced) in its header, tensors untouched:
    written byte for byte from the source's own header ranges."""
    h = read_header(src)
    kept = [kv for kv in h.kvs if kv.key != key]
    with src.open("rb") as f, dest.open("wb") as out:
        f.seek(0)
        prefix = bytearray(f.read(h.prefix_end))
        prefix[16:24] = struct.pack("<Q", len(kept) + 1)
        out.write(prefix)
        for kv in kept:
            f.seek(kv.start)
            out.write(f.read(kv.end - kv.start))
        out.write(_kv_string(key, value))
        f.seek(h.index_start)
        out.write(f.read(h.index_end - h.index_start))
        out.write(b"\0" * (-out.tell() % h.alignment))
        f.seek(h.data_offset)
        while block := f.read(16 * MiB):
            out.write(block)
    return dest


def update_figures(gguf: Path, work: Path) -> list[str]:
    template = work / "template"
    template.write_text("{{ .System }}\n{{ .Prompt }}")
    chat = (
        "{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n{% endfor %}" * 8
    )
    v1 = with_key(gguf, work / "v1.gguf", "tokenizer.chat_template", chat)
    versions: list[tuple[str, ModelFiles]] = [
        ("v1", ModelFiles(v1, template=template)),
        ("Ollama template layer changed", ModelFiles(v1, template=_text(work / "t2", "{{ .Prompt }}"))),
        (
            "GGUF chat template changed (header key)",
            ModelFiles(
                with_key(v1, work / "v3.gguf", "tokenizer.chat_template", chat + " "), template=template
            ),
        ),
        (
            "one metadata key added (general.description)",
            ModelFiles(
                with_key(v1, work / "v4.gguf", "general.description", "tuned for the line"), template=template
            ),
        ),
    ]
    proc, host = start_registry(work / "reg-updates")
    lines = [
        f"### Updates of `{gguf.name}` ({v1.stat().st_size / MiB:.0f} MiB)",
        "",
        "| update | push uploaded (bytes, config included) | pull downloaded (layers) "
        "| pull metadata (manifest + config) |",
        "|---|---|---|---|",
    ]
    try:
        store = Store(work / "store")
        for i, (label, files) in enumerate(versions):
            ref = parse_reference(f"{host}/models/upd:v{i + 1}")
            pushed = push_model(ref, files, plain_http=True)
            pulled = asyncio.run(pull_model(ref, store, plain_http=True, assemble=False))
            if i:
                lines.append(
                    f"| {label} | {pushed.uploaded_bytes:,} | {pulled.bytes_downloaded:,} "
                    f"({pulled.layers_downloaded}/{pulled.layers_total}) | {pulled.metadata_bytes:,} |"
                )
    finally:
        proc.terminate()
        proc.wait()
    return [*lines, ""]


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, required=True, help="a real GGUF model file")
    parser.add_argument("--big-gib", type=float, default=0, help="also a generated GGUF of this size")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--before", type=Path, default=None, help="checkout of the code before")
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args(argv)
    logs.configure(level="WARNING", stream=sys.stderr)  # stdout is the report
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        out: list[str] = [f"load average at start: {os.getloadavg()[0]:.1f}", ""]
        out += push_figures(args.gguf, args.runs, work, args.before)
        out += update_figures(args.gguf, work)
        if args.big_gib:
            big = write_gguf(work / "big.gguf", int(args.big_gib * 1024))
            out += push_figures(big, args.runs, work, None)
        out.append(f"load average at end: {os.getloadavg()[0]:.1f}")
        print("\n".join(out))


if __name__ == "__main__":
    main()
