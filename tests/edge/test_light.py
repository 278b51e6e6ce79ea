"""The edge agent stays light and behaves as a process: it never imports litellm, `tandem edge
serve` starts, reports its figures on /readyz, drains and exits 0 on SIGTERM, and reports to the
gateway with heartbeats."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from edge_agent.server import EdgeServer
from simulators import OllamaSimulator
from tests.edge.conftest import LOCAL, ROOT, TANDEM, Process, edge_config, ollama_config
from tests.edge.wan import WanProxy


def test_nothing_the_edge_agent_imports_imports_litellm() -> None:
    code = (
        "import sys\n"
        "import edge_agent.commands, edge_agent.server\n"
        "from edge_agent.config import EdgeConfig\n"
        "from edge_agent.server import EdgeServer\n"
        "EdgeServer(EdgeConfig())\n"
        "print(' '.join(sorted(m for m in sys.modules if '.' not in m)))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    assert "litellm" not in loaded


def test_the_edge_agent_does_not_load_the_gateways_shared_state_stack() -> None:
    # Redis and OpenTelemetry belong to the gateway's state and auth; an edge never needs them.
    code = "import sys, edge_agent.server; print('redis' in sys.modules, 'opentelemetry' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.split() == ["False", "False"]


async def test_serve_reports_its_figures_and_stops_cleanly_on_sigterm(
    tmp_path: Path, local_ollama: OllamaSimulator
) -> None:
    config = tmp_path / "edge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"port": 0},
                "ollama": {"url": local_ollama.url, "model": LOCAL},
                "uplink": {"address": "127.0.0.1:9"},  # no gateway: everything stays local
            }
        )
    )
    # Waiting in a thread: this test's event loop serves the Ollama the agent reads at start.
    edge, found = await asyncio.to_thread(
        Process.start,
        [*TANDEM, "edge", "serve", "--config", str(config)],
        tmp_path / "edge.log",
        r"listening on (http://\S+)",
    )
    try:
        async with httpx.AsyncClient(base_url=found.group(1)) as http:
            ready = (await http.get("/readyz")).json()
        assert ready["status"] == "ready"
        assert ready["startup_seconds"] > 0 and ready["rss_bytes"] > 10 * 2**20
        assert ready["local"]["available"] and LOCAL in ready["local"]["models"]
    finally:
        assert edge.stop() == 0


def test_a_bad_config_is_refused_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "edge.yaml"
    config.write_text("policy:\n  wan_down: panic\n")
    result = subprocess.run(
        [*TANDEM, "edge", "serve", "--config", str(config)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2 and "policy.wan_down" in result.stderr


async def test_sigterm_lets_a_running_stream_finish_then_exits_0(tmp_path: Path) -> None:
    async with OllamaSimulator(ollama_config(tokens_per_second=20, output_tokens=20)) as paced:
        config = tmp_path / "edge.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "listen": {"port": 0},
                    "ollama": {"url": paced.url, "model": LOCAL},
                    "uplink": {"address": "127.0.0.1:9"},
                    "shutdown_grace_seconds": 30,
                }
            )
        )
        edge, found = await asyncio.to_thread(
            Process.start,
            [*TANDEM, "edge", "serve", "--config", str(config)],
            tmp_path / "edge.log",
            r"listening on (http://\S+)",
        )
        body = {"model": LOCAL, "messages": [{"role": "user", "content": "hi"}], "think": False}
        async with (
            httpx.AsyncClient(base_url=found.group(1), timeout=60) as http,
            http.stream("POST", "/api/chat", json=body) as resp,
        ):
            lines = resp.aiter_lines()
            first = await anext(lines)
            edge.popen.send_signal(signal.SIGTERM)
            rest = [line async for line in lines]
        assert '"done":false' in first and '"done":true' in rest[-1]
        assert await asyncio.to_thread(edge.popen.wait, 60) == 0


async def test_heartbeat_reaches_the_gateway_and_its_reply_the_listeners(
    local_ollama: OllamaSimulator, wan: WanProxy
) -> None:
    server = EdgeServer(edge_config(local_ollama.url, wan.address))
    replied = asyncio.Event()
    server.service.heartbeat_listeners.append(lambda reply: replied.set() if reply.interval_seconds else None)
    await server.start()
    try:
        await replied.wait()
    finally:
        await server.stop()
