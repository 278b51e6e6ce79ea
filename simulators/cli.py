"""`tandem sim ollama` and `tandem sim vllm`: run an engine simulator until SIGINT/SIGTERM.

On start each prints one line, `listening on http://HOST:PORT`, which launchers parse (with
`--port 0` the port is a free one the OS picked).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from typing import Any

import click

from simulators.faults import Faults
from simulators.ollama import OllamaModel, OllamaSimConfig, OllamaSimulator
from simulators.server import SimServer
from simulators.vllm import REASONING_FIELDS, THINKING_MODES, VllmModel, VllmSimConfig, VllmSimulator

_COMMON: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
    click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind."),
    click.option("--port", type=int, default=0, show_default=True, help="Port to bind (0 = a free port)."),
    click.option("--tokens-per-second", type=float, default=0.0, show_default=True,
                 help="Decode speed per request (0 = as fast as possible)."),
    click.option("--ttft", type=float, default=0.0, show_default=True,
                 help="Seconds before the first token."),
    click.option("--output-tokens", type=int, default=64, show_default=True,
                 help="Answer tokens per request."),
    click.option("--reasoning-tokens", type=int, default=32, show_default=True,
                 help="Reasoning tokens per request when thinking."),
    click.option("--seed", type=int, default=0, show_default=True,
                 help="Seed of the generated text and faults."),
    click.option("--error-rate", type=float, default=0.0, show_default=True,
                 help="Fraction of requests answered with --error-status."),
    click.option("--error-status", type=int, default=500, show_default=True,
                 help="Status of injected errors."),
    click.option("--error-message", default="", help="Text of injected errors (default: the engine's own)."),
    click.option("--hang", is_flag=True, help="Accept requests and never answer."),
    click.option("--disconnect-after", type=int, default=None, help="Cut streams after N chunks."),
    click.option("--error-after", type=int, default=None, help="Send an in-stream error after N chunks."),
    click.option("--slow-start", type=float, default=0.0, show_default=True,
                 help="Seconds before the first byte of any answer."),
]  # fmt: skip


def _common(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_COMMON):
        command = option(command)
    return command


def _faults(opts: dict[str, Any]) -> Faults:
    return Faults(
        error_rate=opts["error_rate"],
        error_status=opts["error_status"],
        error_message=opts["error_message"],
        hang=opts["hang"],
        disconnect_after=opts["disconnect_after"],
        error_after=opts["error_after"],
        slow_start=opts["slow_start"],
    )


def _serve(name: str, build: Callable[[], SimServer]) -> None:
    try:
        simulator = build()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await simulator.start()
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {simulator.host}:{simulator.port}: {exc}") from None
        click.echo(f"tandem sim {name}: listening on {simulator.url}")
        sys.stdout.flush()
        await stop.wait()
        await simulator.stop()

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is installed everywhere but Windows
        asyncio.run(main())
    else:
        uvloop.run(main())


@click.group(name="sim")
def sim() -> None:
    """Run the Ollama and vLLM engine simulators (protocol-faithful, configurable, faultable)."""


@sim.command(name="ollama")
@click.option(
    "--model",
    "models",
    multiple=True,
    default=("qwen3:14b",),
    show_default=True,
    help="A model to serve (repeatable).",
)
@click.option(
    "--context-length", type=int, default=40960, show_default=True, help="Context length of the models."
)
@click.option(
    "--capabilities",
    default="completion,tools,thinking",
    show_default=True,
    help="Comma-separated capabilities of the models.",
)
@click.option("--num-parallel", type=int, default=1, show_default=True, help="Requests at once per model.")
@click.option("--max-queue", type=int, default=512, show_default=True, help="Queued requests before 503.")
@click.option(
    "--load-duration", type=float, default=0.0, show_default=True, help="Seconds a cold model takes to load."
)
@click.option(
    "--keep-alive", default="5m", show_default=True, help="How long a model stays loaded when idle."
)
@click.option("--blobs-dir", default=None, help="Where uploaded blobs go (default: a temporary directory).")
@_common
def ollama(**opts: Any) -> None:
    """Simulate an Ollama server."""

    def build() -> SimServer:
        capabilities = tuple(c.strip() for c in opts["capabilities"].split(",") if c.strip())
        models: list[OllamaModel | str] = [
            OllamaModel(name=name, context_length=opts["context_length"], capabilities=capabilities)
            for name in opts["models"]
        ]
        keep_alive: str | float = opts["keep_alive"]
        with contextlib.suppress(ValueError):
            keep_alive = float(keep_alive)
        return OllamaSimulator(
            OllamaSimConfig(
                models=models,
                host=opts["host"],
                port=opts["port"],
                tokens_per_second=opts["tokens_per_second"],
                time_to_first_token=opts["ttft"],
                output_tokens=opts["output_tokens"],
                reasoning_tokens=opts["reasoning_tokens"],
                seed=opts["seed"],
                num_parallel=opts["num_parallel"],
                max_queue=opts["max_queue"],
                load_duration=opts["load_duration"],
                keep_alive=keep_alive,
                blobs_dir=opts["blobs_dir"],
                faults=_faults(opts),
            )
        )

    _serve("ollama", build)


@sim.command(name="vllm")
@click.option(
    "--model",
    "models",
    multiple=True,
    default=("Qwen/Qwen3-14B",),
    show_default=True,
    help="A served model name (repeatable).",
)
@click.option(
    "--context-length",
    "--max-model-len",
    "context_length",
    type=int,
    default=32768,
    show_default=True,
    help="max_model_len of the models.",
)
@click.option(
    "--thinking",
    type=click.Choice(THINKING_MODES),
    default="switch",
    show_default=True,
    help="switch: Qwen3 hybrid (enable_thinking decides); always / never: 2507 Thinking / Instruct.",
)
@click.option(
    "--reasoning-field",
    type=click.Choice(REASONING_FIELDS),
    default="reasoning",
    show_default=True,
    help="Field that carries reasoning text (reasoning_content in vLLM before 2026).",
)
@click.option("--max-num-seqs", type=int, default=256, show_default=True, help="Requests decoded at once.")
@click.option("--legacy-errors", is_flag=True, help='Older vLLM error bodies: {"object": "error", ...}.')
@_common
def vllm(**opts: Any) -> None:
    """Simulate a vLLM OpenAI-compatible server."""

    def build() -> SimServer:
        models: list[VllmModel | str] = [
            VllmModel(name=name, max_model_len=opts["context_length"], thinking=opts["thinking"])
            for name in opts["models"]
        ]
        return VllmSimulator(
            VllmSimConfig(
                models=models,
                host=opts["host"],
                port=opts["port"],
                tokens_per_second=opts["tokens_per_second"],
                time_to_first_token=opts["ttft"],
                output_tokens=opts["output_tokens"],
                reasoning_tokens=opts["reasoning_tokens"],
                seed=opts["seed"],
                reasoning_field=opts["reasoning_field"],
                max_num_seqs=opts["max_num_seqs"],
                legacy_errors=opts["legacy_errors"],
                faults=_faults(opts),
            )
        )

    _serve("vllm", build)


if __name__ == "__main__":
    sim()
