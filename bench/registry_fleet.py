"""Model distribution at the edge: disk an update takes, and what a factory mirror saves.

    python -m bench.registry_fleet --gguf MODEL.gguf [--edges 3]

Prints markdown:
1. peak extra disk (the edge's store plus Ollama's blob directory, sampled every 20 ms)
   while `ModelSync` installs a version and then updates to one with one tensor changed,
   against the Ollama simulator, as a multiple of the model's size: with the weights
   streamed from the chunks (the default), and with the file reassembled first
   (`keep_weights_file`: what every sync did before, and what `require_signature` does);
2. bytes the central registry served (its access log) when `--edges` edges pull the model
   through one mirror (distribution's pull-through cache, and `tandem model mirror`): all
   at once, and one first then the rest at once.

Starts Debian's `docker-registry` (central, and a mirror in proxy mode) on free ports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import sys
import tempfile
import threading
from pathlib import Path

from bench.registry_pull import start_registry
from edge_agent.model_sync import ModelSync, ModelSyncConfig
from registry.gguf_chunks import read_gguf
from registry.mirror import StoreMirror, serve
from registry.pull import pull_model
from registry.push import ModelFiles, push_model
from registry.reference import parse_reference
from registry.store import Store
from simulators.ollama import OllamaSimConfig, OllamaSimulator
from tandem import logs
from tandem.transport import HttpClient, Transport

MiB = 1 << 20
_BLOB_GET = re.compile(r'"GET /v2/[^ ]+/blobs/(sha256:[0-9a-f]{64}) HTTP/[0-9.]+" (\d{3}) (\d+)')


def tree_bytes(*roots: Path) -> int:
    total = 0
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                with contextlib.suppress(FileNotFoundError):  # renamed or removed meanwhile
                    total += os.stat(os.path.join(dirpath, name)).st_blocks * 512  # what the disk holds
    return total


class DiskSampler:
    """The largest total size of `roots` seen while it runs (a thread, every 20 ms)."""

    def __init__(self, *roots: Path) -> None:
        self.roots, self.peak, self._stop = roots, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_bytes(*self.roots))
            self._stop.wait(0.02)

    def __enter__(self) -> DiskSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_bytes(*self.roots))


def one_tensor_changed(src: Path, dest: Path) -> Path:
    """`src` with the first 4 KiB of its largest block tensor inverted."""
    info = read_gguf(src)
    ext = max((e for e in info.extents if e.name.startswith("blk.")), key=lambda e: e.end - e.start)
    shutil.copyfile(src, dest)
    with dest.open("r+b") as f:
        f.seek(ext.start)
        data = f.read(4096)
        f.seek(ext.start)
        f.write(bytes(b ^ 0xFF for b in data))
    return dest


async def edge_disk(gguf: Path, size: int, work: Path, host: str) -> list[str]:
    v2 = one_tensor_changed(gguf, work / "v2.gguf")
    ref = parse_reference(f"{host}/models/edge:v1")
    push_model(ref, ModelFiles(gguf), plain_http=True)
    push_model(ref.with_tag("v2"), ModelFiles(v2), plain_http=True)
    lines = [
        f"### Edge disk: `{gguf.name}` ({size / MiB:.0f} MiB), install v1 then update to v2 (one tensor)",
        "",
        "| weights to Ollama | install: peak extra disk | update: peak extra disk | update: bytes pulled |",
        "|---|---|---|---|",
    ]
    for label, keep in (("streamed from the chunks (now)", False), ("reassembled file first (before)", True)):
        root = work / f"edge-{keep}"
        blobs = root / "ollama"
        blobs.mkdir(parents=True)
        async with OllamaSimulator(OllamaSimConfig(models=[], blobs_dir=str(blobs))) as ollama:
            config = ModelSyncConfig(
                desired=str(ref),
                served_name="edge:latest",
                store_dir=root / "store",
                plain_http=True,
                keep_weights_file=keep,
            )
            sync = ModelSync(config, ollama_url=ollama.url)
            peaks: list[int] = []
            for target in (ref, ref.with_tag("v2")):
                sync.set_desired(str(target))
                before = tree_bytes(root / "store", blobs)
                with DiskSampler(root / "store", blobs) as sampler:
                    await sync.sync_once()
                peaks.append(sampler.peak - before)
            pulled = sync.last_pull.bytes_downloaded if sync.last_pull else 0
        lines.append(
            f"| {label} | {peaks[0] / MiB:.0f} MiB ({peaks[0] / size:.2f}x) "
            f"| {peaks[1] / MiB:.0f} MiB ({peaks[1] / size:.2f}x) | {pulled / MiB:.1f} MiB |"
        )
    return [*lines, ""]


def served(log: Path) -> int:
    """Blob bytes a registry sent, from its access log."""
    total = 0
    for match in _BLOB_GET.finditer(log.read_text(errors="replace")):
        if match.group(2) in ("200", "206"):
            total += int(match.group(3))
    return total


async def settle(log: Path) -> None:
    """Until the access log stops growing (the mirror stores blobs in the background)."""
    last = -1
    while (size := await asyncio.to_thread(lambda: log.stat().st_size)) != last:
        last = size
        await asyncio.sleep(0.5)


async def mirror_run(gguf: Path, root: Path, edges: int, first_alone: bool, kind: str) -> int:
    """Blob bytes the central registry served for `edges` pulls through one mirror of `kind`
    ("distribution": a pull-through cache; "tandem": `tandem model mirror`)."""
    log = root / "central.log"
    procs = []
    mirror_task: asyncio.Task[None] | None = None
    transport = Transport(HttpClient())
    try:
        proc, central = start_registry(root / "central", access_log=log)
        procs.append(proc)
        if kind == "distribution":
            proc, mirror = start_registry(
                root / "mirror", extra=f"proxy: {{remoteurl: 'http://{central}'}}\n"
            )
            procs.append(proc)
        else:
            bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            store_mirror = StoreMirror(Store(root / "mirror"), f"http://{central}", transport=transport)
            mirror_task = asyncio.create_task(serve(store_mirror, "127.0.0.1", 0, ready=bound.set_result))
            mirror = f"127.0.0.1:{await bound}"
        ref = parse_reference(f"{central}/models/fleet:v1")
        push_model(ref, ModelFiles(gguf), plain_http=True)
        await settle(log)
        base = served(log)

        async def edge(i: int) -> None:
            store = Store(root / f"edge{i}")
            await pull_model(ref, store, plain_http=True, mirrors=[f"http://{mirror}"], assemble=False)

        if first_alone:
            await edge(0)
        await asyncio.gather(*(edge(i) for i in range(1 if first_alone else 0, edges)))
        await settle(log)
        return served(log) - base
    finally:
        if mirror_task is not None:
            mirror_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mirror_task
        await transport.close()
        for p in procs:
            p.terminate()
            p.wait()


async def mirror_figures(gguf: Path, size: int, work: Path, edges: int) -> list[str]:
    lines = [
        f"### Factory mirror: {edges} edges pull `{gguf.name}` ({size / MiB:.0f} MiB) through one mirror",
        "",
        "| mirror | edges | central registry served (blob bytes) | per edge |",
        "|---|---|---|---|",
    ]
    for kind, label in (
        ("distribution", "distribution 2.8 pull-through cache"),
        ("tandem", "`tandem model mirror`"),
    ):
        for when, first_alone in (("all at once", False), ("one, then the rest at once", True)):
            total = await mirror_run(gguf, work / f"mirror-{kind}-{first_alone}", edges, first_alone, kind)
            lines.append(
                f"| {label} | {edges}, {when} | {total / MiB:.0f} MiB ({total / size:.2f}x the model) "
                f"| {total / size / edges:.2f}x |"
            )
    return [*lines, ""]


async def main_async(args: argparse.Namespace, size: int, work: Path) -> list[str]:
    proc, host = start_registry(work / "registry")
    try:
        out = await edge_disk(args.gguf, size, work, host)
    finally:
        proc.terminate()
        proc.wait()
    return out + await mirror_figures(args.gguf, size, work, args.edges)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--edges", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    logs.configure(level="WARNING", stream=sys.stderr)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        size = args.gguf.stat().st_size
        print("\n".join(asyncio.run(main_async(args, size, Path(tmp)))))


if __name__ == "__main__":
    main()
