"""`tandem edge doctor` reports each problem as the check it belongs to, against real servers
(an Ollama simulator; nothing listening where the gateway should be)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from edge_agent.config import EdgeConfig
from edge_agent.doctor import MAX_CLOCK_SKEW_S, _clock_check, _disk_check, diagnose
from tests.deploy.conftest import Process, free_port

TANDEM = Path(sys.executable).with_name("tandem")  # the console script of this environment


@pytest.fixture
def ollama(tmp_path: Path, processes: list[Process]) -> Iterator[str]:
    """An Ollama that has qwen3:8b only."""
    port = free_port()
    sim = Process.start(
        [str(TANDEM), "sim", "ollama", "--port", str(port), "--model", "qwen3:8b"],
        tmp_path / "ollama.log",
        {"PATH": "/usr/bin:/bin"},
        tmp_path,
    )
    processes.append(sim)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=1):
                break
        except OSError:
            sim.wait_for("", 0.05)
    yield f"http://127.0.0.1:{port}"


def config(ollama_url: str, model: str) -> EdgeConfig:
    return EdgeConfig.model_validate(
        {"ollama": {"url": ollama_url, "model": model}, "uplink": {"address": f"127.0.0.1:{free_port()}"}}
    )


async def test_a_missing_model_and_an_unreachable_gateway_are_named(ollama: str, tmp_path: Path) -> None:
    checks = {
        c.name: c for c in await diagnose(config(ollama, "qwen3:14b"), disk_paths=[tmp_path], deadline_s=1)
    }
    assert checks["ollama"].outcome == "ok"
    assert checks["model"].outcome == "FAIL" and "qwen3:14b is not in Ollama" in checks["model"].detail
    assert checks["gateway"].outcome == "FAIL" and "UNAVAILABLE" in checks["gateway"].detail
    assert checks["clock"].outcome == "skip"
    assert checks["disk"].outcome == "ok"


async def test_the_model_found_sizes_the_disk_check(ollama: str, tmp_path: Path) -> None:
    checks = {
        c.name: c for c in await diagnose(config(ollama, "qwen3:8b"), disk_paths=[tmp_path], deadline_s=1)
    }
    assert checks["model"].outcome == "ok"
    tags = await asyncio.to_thread(lambda: urllib.request.urlopen(f"{ollama}/api/tags").read())
    (model,) = orjson.loads(tags)["models"]
    assert f"2 versions need {2 * model['size'] / 1e9:.1f} GB" in checks["disk"].detail


async def test_ollama_down_fails_its_check_and_skips_the_model(tmp_path: Path) -> None:
    checks = {
        c.name: c
        for c in await diagnose(config(f"http://127.0.0.1:{free_port()}", "qwen3:14b"), deadline_s=1)
    }
    assert checks["ollama"].outcome == "FAIL" and "could not connect" in checks["ollama"].detail
    assert checks["model"].outcome == "skip"


def test_a_clock_far_from_the_gateways_fails() -> None:
    assert _clock_check(time.time() - 2).outcome == "ok"
    late = _clock_check(time.time() - MAX_CLOCK_SKEW_S - 60)
    assert late.outcome == "FAIL" and "NTP" in late.detail


def test_the_disk_check_wants_room_for_two_versions(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    assert _disk_check(tmp_path / "not" / "made" / "yet", free // 2 - 1).outcome == "ok"
    assert _disk_check(tmp_path, free // 2 + 10**9).outcome == "FAIL"


def test_the_command_exits_1_with_one_line_per_check(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text(
        f"ollama: {{url: 'http://127.0.0.1:{free_port()}'}}\nuplink: {{address: '127.0.0.1:{free_port()}'}}\n"
    )
    done = subprocess.run(
        [str(TANDEM), "edge", "doctor", "--config", str(path), "--timeout", "1", "--disk", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert [line.split()[:2] for line in done.stdout.splitlines()] == [
        ["FAIL", "ollama"], ["skip", "model"], ["FAIL", "gateway"], ["skip", "clock"], ["ok", "disk"],
    ]  # fmt: skip
    assert done.stderr == ""
