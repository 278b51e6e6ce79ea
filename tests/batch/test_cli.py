"""`tandem batch submit`: upload, create, follow with --wait, save the output; errors named."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from gateway.state.tenants import RedisTenants
from tests.batch.conftest import StartGateway, jsonl, new_key, request_line

TANDEM = str(Path(sys.executable).with_name("tandem"))


async def tandem(*args: str, key: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        TANDEM, *args, env={**os.environ, "ACME_KEY": key},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_submit_wait_json_prints_the_finished_batch_and_saves_the_output(
    start_gateway: StartGateway, tenants: RedisTenants, tmp_path: Path
) -> None:
    gateway = await start_gateway()
    key = await new_key(tenants, "acme")
    source = tmp_path / "docs.jsonl"
    source.write_bytes(jsonl([request_line(f"doc-{i}") for i in range(5)]))
    results = tmp_path / "results.jsonl"
    url = f"http://127.0.0.1:{gateway.http_port}/v1"
    code, out, err = await tandem(
        "batch", "submit", str(source), "--url", url, "--api-key-env", "ACME_KEY",
        "-m", "job=friday", "--wait", "--json", "--poll", "0.1", "-o", str(results), key=key,
    )  # fmt: skip
    assert code == 0, err
    final = json.loads(out)
    assert final["status"] == "completed"
    assert final["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    assert final["metadata"] == {"job": "friday"}
    saved = [json.loads(line)["custom_id"] for line in results.read_text().splitlines()]
    assert saved == [f"doc-{i}" for i in range(5)]


async def test_submit_of_a_bad_file_fails_naming_the_line(
    start_gateway: StartGateway, tenants: RedisTenants, tmp_path: Path
) -> None:
    gateway = await start_gateway()
    key = await new_key(tenants, "acme")
    source = tmp_path / "docs.jsonl"
    source.write_bytes(jsonl([request_line("a"), request_line("b"), '{"custom_id": "c"}']))
    url = f"http://127.0.0.1:{gateway.http_port}/v1"
    code, out, err = await tandem(
        "batch", "submit", str(source), "--url", url, "--api-key-env", "ACME_KEY", key=key
    )
    assert code == 1
    assert "400" in err and "line 3: method must be 'POST'" in err
    assert out == ""
