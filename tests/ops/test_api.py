"""The ops page's JSON (`GET /ops/api/state`) from a real gateway, with edges heartbeating to
it over real gRPC: the fleet, routes over time, rollouts, pools and batches."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import grpc
import pytest

from edge_agent.config import EdgeConfig
from edge_agent.server import EdgeServer
from gateway import fleet
from gateway.fleet import MemoryFleet
from gateway.ops import BatchSummary, OpsView, RouteHistory
from gateway.server import GatewayServer
from simulators import OllamaModel, OllamaSimConfig, OllamaSimulator
from simulators.vllm import VllmSimulator
from tandem.v1 import gateway_pb2 as pb
from tandem.v1 import gateway_pb2_grpc
from tandem.version import tandem_version
from tests.gateway.conftest import CONTEXT, SERVED, StartGateway
from tests.ops.conftest import FLEET, NEXT, REFERENCE, SimEdge, edges_by_id, ops_state, until_state

NOWHERE = "vllm.tandem.invalid"  # resolves to nothing: a discovered pool at zero replicas


@pytest.fixture
async def gateway(start_gateway: StartGateway) -> GatewayServer:
    server: GatewayServer = await start_gateway(fleet=FLEET)
    return server


async def chat(gateway: GatewayServer, mode: str, model: str = "qwen3") -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "2+2?"}]}
    url = f"http://127.0.0.1:{gateway.http_port}/v1/chat/completions"
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, json=body, headers={"x-tandem-mode": mode}) as resp,
    ):
        await resp.read()
        return resp.status


# --- the fleet ---------------------------------------------------------------------------------


async def test_the_fleet_lists_each_edge_as_it_reports_itself(gateway: GatewayServer, sim_edges: Any) -> None:
    await sim_edges(gateway, "line-a-1", "line-a-2", group="line-a", version="0.9.0")
    (half_open,) = await sim_edges(gateway, "line-b-1", group="line-b", version="0.8.2", breaker="half_open")
    half_open.routes.local_non_thinking = 3
    half_open.routes.forwarded_thinking = 1
    await half_open.beat()

    edges = edges_by_id(await ops_state(gateway))
    assert list(edges) == ["line-a-1", "line-a-2", "line-b-1"]  # by group, then id
    a1, b1 = edges["line-a-1"], edges["line-b-1"]
    assert (a1["group"], a1["state"], a1["version"], a1["breaker"]) == ("line-a", "up", "0.9.0", "closed")
    assert a1["models"] == [{"name": "qwen3:14b", "digest": "", "reference": REFERENCE}]
    assert a1["local_share"] is None  # it answered nothing yet
    assert 0 <= a1["age_s"] < 5
    assert (b1["version"], b1["breaker"], b1["local_share"]) == ("0.8.2", "half_open", 0.75)
    assert b1["routes"] == {
        "local_thinking": 0,
        "local_non_thinking": 3,
        "forwarded_thinking": 1,
        "forwarded_non_thinking": 0,
    }


async def test_an_edge_that_stops_heartbeating_turns_late_then_down(
    gateway: GatewayServer, sim_edges: Any
) -> None:
    _, goes = await sim_edges(gateway, "box-1", "box-2")
    await until_state(gateway, lambda s: [e["state"] for e in s["fleet"]] == ["up", "up"])
    await goes.stop()
    late = await until_state(gateway, lambda s: edges_by_id(s)["box-2"]["state"] == "late")
    assert edges_by_id(late)["box-1"]["state"] == "up"
    assert edges_by_id(late)["box-2"]["age_s"] > 2.5 * FLEET["heartbeat_seconds"]
    down = await until_state(gateway, lambda s: edges_by_id(s)["box-2"]["state"] == "down")
    assert edges_by_id(down)["box-1"]["state"] == "up"
    await goes.start()  # back: up again
    await until_state(gateway, lambda s: edges_by_id(s)["box-2"]["state"] == "up")


async def test_a_real_edge_agent_reports_its_version_breaker_and_local_share(gateway: GatewayServer) -> None:
    ollama = OllamaSimulator(
        OllamaSimConfig(models=[OllamaModel(name="qwen3:14b")], output_tokens=4, reasoning_tokens=4)
    )
    async with ollama:
        config = EdgeConfig.model_validate(
            {
                "listen": {"port": 0},
                "ollama": {"url": ollama.url, "model": "qwen3:14b", "num_ctx": 4096, "refresh_seconds": 0.2},
                "uplink": {"address": f"127.0.0.1:{gateway.grpc_port}", "models": {"qwen3:14b": "qwen3-14b"}},
                "edge_id": "real-edge",
                "heartbeat_seconds": 1,
                "shutdown_grace_seconds": 1,
            }
        )
        edge = EdgeServer(config)
        await edge.start()
        try:
            # Its first heartbeat sets the route history's baseline for it.
            await until_state(gateway, lambda s: "real-edge" in edges_by_id(s))
            async with aiohttp.ClientSession() as http:
                routes = []
                for think in (False, True):
                    body = {"model": "qwen3:14b", "think": think, "stream": False,
                            "messages": [{"role": "user", "content": "Prove that 2+2=4."}]}  # fmt: skip
                    async with http.post(f"{edge.url}/api/chat", json=body) as resp:
                        assert resp.status == 200, await resp.text()
                        routes.append(resp.headers["x-tandem-route"].split(";")[0])
            assert routes == ["target=edge", "target=cloud"]
            state = await until_state(
                gateway, lambda s: edges_by_id(s)["real-edge"]["routes"]["forwarded_thinking"] == 1
            )
        finally:
            await edge.stop()
    seen = edges_by_id(state)["real-edge"]
    assert (seen["version"], seen["breaker"], seen["state"]) == (tandem_version(), "closed", "up")
    assert seen["routes"]["local_non_thinking"] == 1 and seen["local_share"] == 0.5
    assert [m["name"] for m in seen["models"]] == ["qwen3:14b"]
    totals = state["routes"]["totals"]
    assert totals["local_non_thinking"] == 1  # from its heartbeats
    assert totals["cloud_thinking"] == 1  # the forwarded request, as this gateway ran it


# --- routes over time ------------------------------------------------------------------------


async def test_routes_count_cloud_requests_by_mode_and_the_edges_local_answers(
    gateway: GatewayServer,
) -> None:
    box = SimEdge(f"127.0.0.1:{gateway.grpc_port}", "box-1")  # beats only when the test says
    box.routes.local_thinking = 5  # answered before the gateway heard of it: not in the history
    await box.beat()
    box.routes.local_thinking, box.routes.local_non_thinking = 7, 4
    await box.beat()
    box.routes.local_thinking, box.routes.local_non_thinking = 1, 0  # restarted: all new
    await box.beat()
    assert await chat(gateway, "thinking") == 200
    assert await chat(gateway, "non_thinking") == 200
    assert await chat(gateway, "non_thinking") == 200

    routes = (await ops_state(gateway))["routes"]
    assert routes["totals"] == {
        "local_thinking": 3,
        "local_non_thinking": 4,
        "cloud_thinking": 1,
        "cloud_non_thinking": 2,
    }
    assert routes["local_share"] == 7 / 10
    assert len(routes["intervals"]) == 60 and routes["interval_seconds"] == 10
    starts = [i["start"] for i in routes["intervals"]]
    assert starts == sorted(starts) and starts[-1] - starts[0] == 590
    assert sum(i["cloud_non_thinking"] for i in routes["intervals"][-2:]) == 2  # just now


def test_the_route_history_keeps_a_window_of_intervals() -> None:
    now = [1000.0]
    history = RouteHistory(interval_s=10, intervals=3, clock=lambda: now[0])
    history.add("cloud_thinking", 2)
    now[0] += 10
    history.add("local_thinking")
    assert [(i.start, i.counts["cloud_thinking"], i.counts["local_thinking"]) for i in history.series()] == [
        (990.0, 0, 0),
        (1000.0, 2, 0),
        (1010.0, 0, 1),
    ]
    now[0] += 35  # three intervals on (and some): the counted ones fall out of the window
    assert [i.start for i in history.series()] == [1020.0, 1030.0, 1040.0]
    assert sum(i.counts["local_thinking"] for i in history.series()) == 0
    with pytest.raises(ValueError, match="kind 'edge'"):
        history.add("edge")


# --- rollouts ----------------------------------------------------------------------------------


async def test_a_canary_rollout_shows_as_in_progress_with_each_edges_assignment(
    gateway: GatewayServer, sim_edges: Any
) -> None:
    store = gateway.fleet
    assert isinstance(store, MemoryFleet)
    ids = [f"line-a-{n}" for n in range(8)]
    edges: list[SimEdge] = await sim_edges(gateway, *ids, group="line-a")
    await store.rollout("line-a", REFERENCE)
    await store.rollout("line-a", NEXT, canary_percent=50)
    canary = {i for i in ids if fleet.in_canary(i, "line-a", 50)}
    assert 0 < len(canary) < len(ids)  # these ids split; the test means a real canary

    state = await ops_state(gateway)
    (rollout,) = state["rollouts"]
    assert (rollout["group"], rollout["reference"], rollout["previous_reference"]) == (
        "line-a",
        NEXT,
        REFERENCE,
    )
    assert (rollout["canary_percent"], rollout["edges"], rollout["on_new_version"]) == (50, 8, 0)
    assert rollout["serving_assigned"] == len(ids) - len(canary) and rollout["in_progress"]
    for e in state["fleet"]:
        assert e["desired_reference"] == (NEXT if e["id"] in canary else REFERENCE)
        assert e["in_sync"] is (e["id"] not in canary)

    for edge in edges:
        if edge.edge_id in canary:
            edge.reference = NEXT  # the canary pulled it
            await edge.beat()
    (rollout,) = (await ops_state(gateway))["rollouts"]
    assert (rollout["on_new_version"], rollout["serving_assigned"]) == (len(canary), 8)
    assert rollout["in_progress"]  # still a canary
    await store.rollout("line-a", NEXT, canary_percent=100)
    for edge in edges:
        edge.reference = NEXT
        await edge.beat()
    (rollout,) = (await ops_state(gateway))["rollouts"]
    assert (rollout["on_new_version"], rollout["serving_assigned"], rollout["in_progress"]) == (8, 8, False)


# --- pools -------------------------------------------------------------------------------------


async def test_pools_show_endpoints_load_cooldowns_replicas_demand_and_held(
    start_gateway: StartGateway, engines: list[VllmSimulator]
) -> None:
    pools = [
        {
            "name": "qwen3",
            "context_length": CONTEXT,
            "endpoints": [{"url": f"{e.url}/v1", "model": SERVED, "max_concurrency": 8} for e in engines],
        },
        {
            "name": "qwen3-elastic",
            "context_length": CONTEXT,
            "discovery": {"name": NOWHERE, "port": 8000, "model": SERVED},
            "cold_start": {"max_pending": 4, "timeout_seconds": 60},
        },
    ]
    router = {"strategy": "least-loaded", "load_scrape": {"interval_seconds": 0.2, "timeout_seconds": 0.2}}
    gateway: GatewayServer = await start_gateway(pools=pools, router=router, fleet=FLEET)

    def pool(state: dict[str, Any], name: str) -> dict[str, Any]:
        return next(p for p in state["pools"] if p["name"] == name)

    state = await until_state(gateway, lambda s: all(u["load"] for u in pool(s, "qwen3")["endpoints"]))
    warm = pool(state, "qwen3")
    assert (warm["readiness"], warm["replicas"], warm["demand"], warm["held"]) == ("warm", 2, 0, 0)
    assert [u["url"] for u in warm["endpoints"]] == [f"{e.url}/v1" for e in engines]
    for u in warm["endpoints"]:
        assert (u["in_flight"], u["max_concurrency"], u["cooling"]) == (0, 8, False)
        assert u["load"]["running"] == 0 and u["load"]["waiting"] == 0 and 0 <= u["load"]["kv_usage"] <= 1

    # An engine goes away: its reading goes stale, and requests that try it cool it down.
    await engines[1].stop()
    dead = warm["endpoints"][1]["id"]
    for _ in range(40):
        assert await chat(gateway, "non_thinking") == 200  # retried on the live engine
        cooling = {u["id"]: u["cooling"] for u in pool(await ops_state(gateway), "qwen3")["endpoints"]}
        if cooling[dead]:
            break
    assert cooling == {warm["endpoints"][0]["id"]: False, dead: True}
    state = await until_state(gateway, lambda s: pool(s, "qwen3")["endpoints"][1]["load"] is None)
    assert pool(state, "qwen3")["endpoints"][0]["load"] is not None

    # A request for the pool at zero replicas is held: demand 1, held 1, cold.
    held = asyncio.create_task(chat(gateway, "non_thinking", model="qwen3-elastic"))
    try:
        state = await until_state(gateway, lambda s: pool(s, "qwen3-elastic")["held"] == 1)
        cold = pool(state, "qwen3-elastic")
        assert (cold["readiness"], cold["replicas"], cold["demand"], cold["discovered"]) == (
            "cold",
            0,
            1,
            True,
        )
        assert cold["endpoints"] == [] and cold["estimated_wait_seconds"] > 0
    finally:
        held.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await held


# --- batches -----------------------------------------------------------------------------------


class Batches:
    def __init__(self, *found: BatchSummary) -> None:
        self.found = list(found)

    async def batches(self) -> list[BatchSummary]:
        return self.found


async def test_batches_come_from_the_batch_source_and_are_none_without_one(gateway: GatewayServer) -> None:
    assert (await ops_state(gateway))["batches"] == []  # the gateway's default: no Batch API
    job = BatchSummary(
        "batch_1", "acme", "in_progress", "qwen3", total=10, completed=4, failed=1, created_at=5.0
    )
    view = OpsView(gateway.service, gateway.fleet, RouteHistory(), Batches(job))
    assert (await view.snapshot())["batches"] == [
        {"id": "batch_1", "tenant": "acme", "status": "in_progress", "model": "qwen3",
         "total": 10, "completed": 4, "failed": 1, "created_at": 5.0}
    ]  # fmt: skip


# --- the page's files --------------------------------------------------------------------------


async def test_the_page_is_served_with_its_files_and_a_strict_policy(gateway: GatewayServer) -> None:
    base = f"http://127.0.0.1:{gateway.http_port}"
    async with aiohttp.ClientSession() as http:
        for path, kind in (
            ("/ops/", "text/html"),
            ("/ops/ops.js", "text/javascript"),
            ("/ops/ops.css", "text/css"),
        ):
            async with http.get(base + path) as resp:
                assert resp.status == 200 and resp.content_type == kind
                assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
                text = await resp.text()
                assert "http://" not in text.replace(
                    "http://www.w3.org/2000/svg", ""
                )  # nothing fetched elsewhere
        async with http.get(base + "/ops", allow_redirects=False) as resp:
            assert resp.status == 308 and resp.headers["Location"] == "/ops/"
        async with http.post(base + "/ops/api/state") as resp:
            assert resp.status == 405 and "POST /ops/api/state" in (await resp.json())["error"]["message"]
        async with http.get(base + "/ops/../etc/passwd") as resp:
            assert resp.status == 404


# --- what edges may report ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [({"breaker": "melted"}, "breaker"), ({"routes": pb.RouteCounts(local_thinking=-1)}, "routes")],
)
async def test_a_heartbeat_with_a_bad_breaker_or_count_is_refused_by_name(
    gateway: GatewayServer, change: dict[str, Any], field: str
) -> None:
    request = SimEdge(f"127.0.0.1:{gateway.grpc_port}", "box-1").request()
    for name, value in change.items():
        if isinstance(value, pb.RouteCounts):
            request.routes.CopyFrom(value)
        else:
            setattr(request, name, value)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gateway_pb2_grpc.GatewayStub(channel).Heartbeat(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"heartbeat {field}" in (refused.value.details() or "")
    assert (await ops_state(gateway))["fleet"] == []  # neither stored nor counted


def test_a_stored_status_with_fields_from_a_newer_replica_still_reads() -> None:
    stored = b'{"edge_id":"box-1","group":"default","breaker":"closed","routes":{},"from_the_future":1}'
    status = fleet.EdgeStatus.from_json(stored)
    assert (status.edge_id, status.breaker) == ("box-1", "closed")
