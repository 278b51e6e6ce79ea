"""Two `tandem gateway serve` processes sharing one Redis hold one tenant to its limits together,
and both see keys created by `tandem gateway keys`."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import orjson
import pytest
import yaml

from tests.state.conftest import RedisServer

ROOT = Path(__file__).resolve().parents[2]
TANDEM = [sys.executable, "-c", "from cli.main import main; main()"]
FAST = [{"role": "user", "content": "Say hello. /no_think"}]


@dataclass
class Process:
    """A child process whose output goes to a file."""

    popen: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(
        cls, args: list[str], log: Path, ready: str, env: dict[str, str]
    ) -> tuple[Process, re.Match[str]]:
        with log.open("wb") as out:
            popen = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        proc = cls(popen, log)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if found := re.search(ready, text):
                return proc, found
            if popen.poll() is not None:
                raise RuntimeError(f"{args!r} exited {popen.returncode}:\n{text[-3000:]}")
            time.sleep(0.05)
        proc.stop()
        raise RuntimeError(f"{args!r} did not print {ready!r}:\n{log.read_text()[-3000:]}")

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.terminate()
        try:
            return self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()


@dataclass
class Cluster:
    gateways: list[str]  # HTTP base URLs
    engine: str
    redis_url: str
    config: Path
    env: dict[str, str]

    def tandem(self, *args: str) -> str:
        """Runs a `tandem` command against this cluster's state; its stdout."""
        done = subprocess.run(
            [*TANDEM, *args, "--config", str(self.config)],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    redis = RedisServer(tmp)
    redis.start()
    env = {**os.environ, "TANDEM_LOG_FORMAT": "json", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    procs: list[Process] = []
    try:
        engine, found = Process.start(
            [*TANDEM, "sim", "vllm", "--port", "0", "--output-tokens", "8"],
            tmp / "vllm.log",
            r"listening on (http://\S+)",
            env,
        )
        procs.append(engine)
        engine_url = found.group(1)
        config = tmp / "gateway.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "grpc": {"port": 0},
                    "http": {"port": 0},
                    "pools": [
                        {
                            "name": "qwen3",
                            "endpoints": [{"url": f"{engine_url}/v1", "model": "Qwen/Qwen3-14B"}],
                        }
                    ],
                    "redis": {"url": redis.url, "key_prefix": "two:"},
                    "auth": {"cache_seconds": 0.5},  # required: the default of `gateway serve`
                    "shutdown_grace_seconds": 2,
                }
            )
        )
        results: list[tuple[Process, re.Match[str]]] = []

        async def start_both() -> None:  # in parallel: each imports litellm for seconds
            results.extend(
                await asyncio.gather(
                    *(
                        asyncio.to_thread(
                            Process.start,
                            [*TANDEM, "gateway", "serve", "--config", str(config)],
                            tmp / f"gateway-{i}.log",
                            r'\{[^\n]*"gateway_ready"[^\n]*\}',
                            env,
                        )
                        for i in range(2)
                    )
                )
            )

        asyncio.run(start_both())
        procs.extend(p for p, _ in results)
        urls = [orjson.loads(found.group(0))["http"] for _, found in results]
        yield Cluster(urls, engine_url, redis.url, config, env)
    finally:
        for proc in procs:
            proc.stop()
        redis.stop()


def new_key(cluster: Cluster, tenant: str, *limits: str) -> str:
    return cluster.tandem("gateway", "keys", "create", "--tenant", tenant, *limits).strip()


async def post(session: aiohttp.ClientSession, url: str, key: str, **body: object) -> int:
    async with session.post(
        f"{url}/v1/chat/completions",
        json={"model": "qwen3", "messages": FAST, **body},
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        await resp.read()
        return resp.status


async def test_two_gateway_processes_hold_a_tenant_to_one_rpm_together(cluster: Cluster) -> None:
    key = new_key(cluster, "acme", "--rpm", "10")
    async with aiohttp.ClientSession() as session:
        statuses = await asyncio.gather(*(post(session, cluster.gateways[i % 2], key) for i in range(30)))
    assert Counter(statuses) == {200: 10, 429: 20}


async def test_two_gateway_processes_share_a_tenants_concurrent_streams(cluster: Cluster) -> None:
    key = new_key(cluster, "beta", "--streams", "2")
    a, b = cluster.gateways
    async with aiohttp.ClientSession() as session:
        await session.post(f"{cluster.engine}/_sim/faults", json={"slow_start": 1.5})
        try:
            held = [asyncio.create_task(post(session, a, key, stream=True)) for _ in range(2)]
            await asyncio.sleep(0.5)
            assert await post(session, b, key, stream=True) == 429
            assert await asyncio.gather(*held) == [200, 200]
        finally:
            await session.post(f"{cluster.engine}/_sim/reset")
        await asyncio.sleep(0.2)  # the slots go back to Redis in the next batch
        assert await post(session, b, key, stream=True) == 200


async def test_a_key_revoked_with_the_cli_stops_working_on_both_processes(cluster: Cluster) -> None:
    key = new_key(cluster, "gamma")
    async with aiohttp.ClientSession() as session:
        assert [await post(session, url, key) for url in cluster.gateways] == [200, 200]
        cluster.tandem("gateway", "keys", "revoke", key)
        await asyncio.sleep(0.6)  # auth.cache_seconds
        assert [await post(session, url, key) for url in cluster.gateways] == [401, 401]


def test_gateway_serve_requires_keys_by_default(cluster: Cluster) -> None:
    listed = httpx.get(f"{cluster.gateways[0]}/v1/models")
    assert listed.status_code == 401
