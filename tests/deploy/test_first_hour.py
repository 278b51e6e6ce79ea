"""What a new user meets first: a taken port is one line, not a traceback, on every process;
every command fails in one style (`Error: ...`, exit 2 for configuration, 1 otherwise); a bad
value is blamed on where it came from (a variable or the file)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.deploy.conftest import Process, free_port

TANDEM = str(Path(sys.executable).with_name("tandem"))  # the console script of this environment


@pytest.fixture
def taken() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
    return subprocess.run(
        [TANDEM, *args], env={**base, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    return lines[0]


def gateway_file(tmp_path: Path, http: int, grpc: int) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"http: {{port: {http}}}\ngrpc: {{port: {grpc}}}\nauth: {{required: false}}\n"
        "pools: [{name: qwen3, endpoints: [{url: 'http://127.0.0.1:9/v1', model: q}]}]\n"
    )
    return str(path)


def test_the_gateway_says_in_one_line_that_its_http_port_is_taken(taken: int, tmp_path: Path) -> None:
    done = run("gateway", "serve", "--config", gateway_file(tmp_path, taken, free_port()))
    assert done.returncode == 1
    assert one_error_line(done) == f"Error: cannot listen on 127.0.0.1:{taken} (HTTP): address already in use"


def test_the_gateway_says_in_one_line_that_its_grpc_port_is_taken(taken: int, tmp_path: Path) -> None:
    done = run("gateway", "serve", "--config", gateway_file(tmp_path, free_port(), taken))
    assert done.returncode == 1
    assert one_error_line(done) == f"Error: cannot listen on 127.0.0.1:{taken} (gRPC): address already in use"


def test_the_edge_says_in_one_line_that_its_port_is_taken(taken: int) -> None:
    done = run("edge", "serve", env={"TANDEM_LISTEN__PORT": str(taken)})
    assert done.returncode == 1
    assert one_error_line(done) == f"Error: cannot listen on 127.0.0.1:{taken}: address already in use"


@pytest.mark.parametrize("engine", ["ollama", "vllm"])
def test_the_simulators_say_in_one_line_that_their_port_is_taken(taken: int, engine: str) -> None:
    done = run("sim", engine, "--port", str(taken))
    assert done.returncode == 1
    assert one_error_line(done).startswith(f"Error: cannot listen on 127.0.0.1:{taken}")


def test_tandem_up_says_in_one_line_which_part_could_not_listen(taken: int) -> None:
    ports = ("--edge-port", str(free_port()), "--grpc-port", str(free_port()))
    done = run("up", *ports, "--http-port", str(taken), timeout=120)
    assert done.returncode == 1
    assert (
        one_error_line(done)
        == f"Error: gateway: cannot listen on 127.0.0.1:{taken} (HTTP): address already in use"
    )


def test_a_typo_in_a_variable_is_blamed_on_the_variable(tmp_path: Path) -> None:
    done = run(
        "gateway", "serve", "--config", gateway_file(tmp_path, free_port(), free_port()),
        env={"TANDEM_HTTP__PROT": "9000"},
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("Error: invalid configuration\n")
    assert "  http.prot: unknown key (from TANDEM_HTTP__PROT)" in done.stderr.splitlines()


def test_a_bad_value_in_the_file_is_blamed_on_the_file_beside_a_variable(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text("uplink: {address: 'http://gateway.example.com:50051'}\n")
    done = run("edge", "serve", "--config", str(path), env={"TANDEM_LISTEN__PORT": str(free_port())})
    assert done.returncode == 2
    (line,) = [line for line in done.stderr.splitlines() if "uplink.address" in line]
    assert "without a scheme" in line and line.endswith(f"(from {path})")


def test_commands_fail_in_the_same_style() -> None:
    no_redis = run("gateway", "keys", "list")
    assert no_redis.returncode == 2
    assert one_error_line(no_redis).startswith("Error: no Redis configured")
    bad_reference = run("model", "inspect", "not a reference")
    assert bad_reference.returncode != 0
    assert bad_reference.stderr.startswith("Error: ")


def test_the_edge_warns_at_start_and_readyz_names_what_is_down(
    tmp_path: Path, processes: list[Process]
) -> None:
    """Started with neither Ollama nor the gateway reachable: it says so in its log, and
    /readyz lists both parts with why (it still serves: each is the other's fallback)."""
    port, ollama, gateway = free_port(), free_port(), free_port()
    edge = Process.start(
        [TANDEM, "edge", "serve"],
        tmp_path / "edge.log",
        {
            "PATH": "/usr/bin:/bin",
            "TANDEM_LOG_FORMAT": "json",
            "TANDEM_LISTEN__PORT": str(port),
            "TANDEM_OLLAMA__URL": f"http://127.0.0.1:{ollama}",
            "TANDEM_UPLINK__ADDRESS": f"127.0.0.1:{gateway}",
        },
        tmp_path,
    )
    processes.append(edge)
    warned = edge.wait_for(r'\{[^\n]*"local_engine_down"[^\n]*\}')
    assert f"127.0.0.1:{ollama}" in warned.group(0) and '"level": "warning"' in warned.group(0)
    edge.wait_for(r'"uplink_breaker"[^\n]*"state": "open"|"state": "open"[^\n]*"uplink_breaker"')
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
        body = orjson.loads(resp.read())
    assert set(body["down"]) == {"ollama", "gateway"}
    assert body["down"]["ollama"].startswith(f"http://127.0.0.1:{ollama}: ")
    assert body["down"]["gateway"].startswith(f"127.0.0.1:{gateway}: ")
