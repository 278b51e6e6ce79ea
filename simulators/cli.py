"""`tandem sim ollama` and `tandem sim vllm`: run an engine simulator until SIGINT/SIGTERM;
`tandem sim fleet`: an autoscaled pool of vLLM simulators (Kubernetes + KEDA on one machine).

On start each simulator prints one line, `listening on http://HOST:PORT`, which launchers parse
(with `--port 0` the port is a free one the OS picked). The fleet prints the lines
`dns on 127.0.0.1:PORT name NAME`, `replicas on 127.0.0.N:PORT` and `status on URL`, then one
line per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import click

from simulators.autoscaler import ScalingPolicy
from simulators.faults import Faults
from simulators.fleet import Fleet, FleetConfig
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


def _run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is installed everywhere but Windows
        asyncio.run(main())
    else:
        uvloop.run(main())


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _say(line: str) -> None:
    click.echo(line)
    sys.stdout.flush()


def _serve(name: str, build: Callable[[], SimServer]) -> None:
    try:
        simulator = build()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    async def main() -> None:
        signalled = asyncio.ensure_future(_until_signalled())
        try:
            await simulator.start()
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {simulator.host}:{simulator.port}: {exc}") from None
        _say(f"tandem sim {name}: listening on {simulator.url}")
        await signalled
        await simulator.stop()

    _run(main)


@click.group(name="sim")
def sim() -> None:
    """Run the Ollama and vLLM engine simulators (protocol-faithful, configurable, faultable),
    or an autoscaled fleet of vLLM simulators."""


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


@sim.command(name="fleet")
@click.option(
    "--metrics-url",
    "metrics_urls",
    multiple=True,
    required=True,
    help="A gateway's Prometheus page (repeatable: the pool's demand is summed over them).",
)
@click.option("--pool", required=True, help="The pool whose tandem_pool_demand{pool=...} drives the fleet.")
@click.option(
    "--target-per-replica",
    type=float,
    required=True,
    help="Demand per replica (the trigger's threshold, metricType AverageValue).",
)
@click.option(
    "--activation-threshold",
    type=float,
    default=0.0,
    show_default=True,
    help="Scale from zero when demand is above this (KEDA activationThreshold).",
)
@click.option("--min-replicas", type=int, default=0, show_default=True, help="KEDA minReplicaCount.")
@click.option("--max-replicas", type=int, default=5, show_default=True, help="KEDA maxReplicaCount.")
@click.option(
    "--polling-interval",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds between reads of the metric (KEDA pollingInterval).",
)
@click.option(
    "--cooldown-period",
    type=float,
    default=300.0,
    show_default=True,
    help="Seconds without demand before scaling to zero (KEDA cooldownPeriod).",
)
@click.option(
    "--scale-down-window",
    type=float,
    default=300.0,
    show_default=True,
    help="HPA scale-down stabilization window, seconds (shrinking between 1 and N).",
)
@click.option(
    "--tolerance",
    type=float,
    default=0.1,
    show_default=True,
    help="HPA tolerance: no change while demand / (target * replicas) is within 1 +- this.",
)
@click.option(
    "--cold-start-seconds",
    type=float,
    default=0.0,
    show_default=True,
    help="Seconds from a replica's start until it is ready and published (model loading).",
)
@click.option(
    "--drain-seconds",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds between unpublishing a replica and stopping it (in-flight requests finish).",
)
@click.option(
    "--name",
    default="vllm.fleet.test",
    show_default=True,
    help="DNS name whose A records are the ready replicas.",
)
@click.option(
    "--dns-port", type=int, default=0, show_default=True, help="UDP/TCP port of the DNS server (0 = free)."
)
@click.option(
    "--replica-port",
    type=int,
    default=0,
    show_default=True,
    help="Port every replica listens on, each on its own 127.0.0.N (0 = a free one).",
)
@click.option("--status-port", type=int, default=0, show_default=True, help="Port of GET /status (0 = free).")
@click.option("--dnsmasq", default=None, help="Path of dnsmasq (default: found on PATH or in /usr/sbin).")
@click.option(
    "--model",
    "models",
    multiple=True,
    default=("Qwen/Qwen3-14B",),
    show_default=True,
    help="A model every replica serves (repeatable).",
)
@click.option("--max-model-len", type=int, default=32768, show_default=True, help="Replicas' max_model_len.")
@click.option(
    "--thinking",
    type=click.Choice(THINKING_MODES),
    default="switch",
    show_default=True,
    help="Replicas' thinking mode.",
)
@click.option("--max-num-seqs", type=int, default=256, show_default=True, help="Replicas' decode slots.")
@click.option(
    "--tokens-per-second",
    type=float,
    default=0.0,
    show_default=True,
    help="Replicas' decode speed per request (0 = as fast as possible).",
)
@click.option(
    "--ttft", type=float, default=0.0, show_default=True, help="Replicas' seconds before the first token."
)
@click.option("--output-tokens", type=int, default=64, show_default=True, help="Answer tokens per request.")
@click.option(
    "--reasoning-tokens",
    type=int,
    default=32,
    show_default=True,
    help="Reasoning tokens per request when thinking.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Replicas' seed.")
def fleet(**opts: Any) -> None:
    """Play Kubernetes + KEDA for one pool: scale vLLM simulators on the gateway's demand
    metric and publish the ready ones as A records of a DNS name (docs/simulators.md, Fleet)."""
    vllm_args = [arg for model in opts["models"] for arg in ("--model", model)]
    for option in (
        "max_model_len",
        "thinking",
        "max_num_seqs",
        "tokens_per_second",
        "ttft",
        "output_tokens",
        "reasoning_tokens",
        "seed",
    ):
        vllm_args += ["--" + option.replace("_", "-"), str(opts[option])]
    try:
        config = FleetConfig(
            metrics_urls=tuple(opts["metrics_urls"]),
            pool=opts["pool"],
            policy=ScalingPolicy(
                target=opts["target_per_replica"],
                activation_threshold=opts["activation_threshold"],
                min_replicas=opts["min_replicas"],
                max_replicas=opts["max_replicas"],
                cooldown_seconds=opts["cooldown_period"],
                scale_down_window_seconds=opts["scale_down_window"],
                tolerance=opts["tolerance"],
            ),
            polling_interval=opts["polling_interval"],
            name=opts["name"],
            dns_port=opts["dns_port"],
            replica_port=opts["replica_port"],
            status_port=opts["status_port"],
            cold_start_seconds=opts["cold_start_seconds"],
            drain_seconds=opts["drain_seconds"],
            vllm_args=tuple(vllm_args),
            dnsmasq=opts["dnsmasq"],
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    async def main() -> None:
        signalled = asyncio.ensure_future(_until_signalled())
        running = Fleet(config, echo=_say)
        try:
            await running.start()
        except (OSError, RuntimeError) as exc:
            await running.stop()
            raise click.ClickException(f"cannot start the fleet: {exc}") from None
        _say(f"tandem sim fleet: dns on {running.dns.server} name {config.name}")
        _say(f"tandem sim fleet: replicas on 127.0.0.N:{running.replica_port}")
        _say(f"tandem sim fleet: status on {running.status_url}")
        try:
            await signalled
        finally:
            await running.stop()

    _run(main)


if __name__ == "__main__":
    sim()
