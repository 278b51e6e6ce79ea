"""Live load: each engine's `/metrics` read from real simulated vLLM servers on loopback, and the
least-loaded score built from it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web
from pydantic import ValidationError
from structlog.testing import capture_logs

from gateway.pool.load import (
    EngineLoad,
    LeastLoadedWeights,
    LoadScrape,
    LoadScraper,
    MalformedMetrics,
    ScrapeTarget,
    metrics_url,
    parse_load,
    score,
)
from simulators.vllm import VllmModel, VllmSimConfig, VllmSimulator
from tandem.transport import Transport

MODEL = "Qwen/Qwen3-14B"
WEIGHTS = LeastLoadedWeights()


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - polled: readings are plain state
            await asyncio.sleep(0.02)


@pytest.fixture
async def transport() -> AsyncIterator[Transport]:
    t = Transport()
    yield t
    await t.close()


@pytest.fixture
async def slow_engine() -> AsyncIterator[VllmSimulator]:
    """Two decode slots, 20 tokens/s: a request holds its slot for about two seconds."""
    sim = VllmSimulator(
        VllmSimConfig(models=[VllmModel(MODEL)], max_num_seqs=2, tokens_per_second=20, output_tokens=40)
    )
    await sim.start()
    yield sim
    await sim.stop()


def scraper_for(transport: Transport, targets: dict[str, str], **config: float) -> LoadScraper:
    scraper = LoadScraper(transport, LoadScrape.model_validate(config))
    scraper.set_targets(
        {name: ScrapeTarget(metrics_url(url + "/v1"), MODEL) for name, url in targets.items()}
    )
    return scraper


async def test_requests_in_flight_show_as_running_then_waiting(
    slow_engine: VllmSimulator, transport: Transport
) -> None:
    scraper = scraper_for(transport, {"a": slow_engine.url})
    await scraper.scrape()
    idle = scraper.load("a")
    assert idle is not None and (idle.running, idle.waiting, idle.kv_usage) == (0, 0, 0)

    async with aiohttp.ClientSession() as session:

        async def chat() -> None:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
            async with session.post(f"{slow_engine.url}/v1/chat/completions", json=body) as resp:
                await resp.read()

        calls = [asyncio.create_task(chat()) for _ in range(5)]
        await eventually(lambda: slow_engine.running == 2 and slow_engine.waiting == 3)
        await scraper.scrape()
        busy = scraper.load("a")
        assert busy is not None and (busy.running, busy.waiting, busy.kv_usage) == (
            2,
            3,
            pytest.approx(2 / 2),
        )
        assert score(busy, 5, WEIGHTS) > score(idle, 0, WEIGHTS)
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)


async def test_a_reading_records_the_gateways_own_requests_at_that_moment(
    slow_engine: VllmSimulator, transport: Transport
) -> None:
    own = {"a": 3}
    scraper = LoadScraper(transport, LoadScrape(), own=own)
    scraper.set_targets({"a": ScrapeTarget(metrics_url(slow_engine.url + "/v1"), MODEL)})
    await scraper.scrape()
    own["a"] = 0  # later changes are the live count's business, not the reading's
    reading = scraper.load("a")
    assert reading is not None and reading.own_at_read == 3


async def test_the_scraper_reads_every_interval_on_its_own(
    slow_engine: VllmSimulator, transport: Transport
) -> None:
    scraper = scraper_for(transport, {"a": slow_engine.url}, interval_seconds=0.1, timeout_seconds=0.1)
    await scraper.start()
    try:
        await eventually(lambda: scraper.load("a") is not None)
        first = scraper.load("a")
        await eventually(lambda: scraper.load("a") != first)
    finally:
        await scraper.stop()


async def test_a_dead_endpoints_reading_goes_stale_and_the_failure_is_logged_once(
    slow_engine: VllmSimulator, transport: Transport
) -> None:
    scraper = scraper_for(
        transport, {"a": slow_engine.url}, interval_seconds=0.1, timeout_seconds=0.1, stale_after_intervals=3
    )
    await scraper.scrape()
    assert scraper.load("a") is not None
    with capture_logs() as logs:
        await slow_engine.stop()
        loop = asyncio.get_running_loop()
        for _ in range(5):
            await scraper.scrape()
            reading = scraper._loads["a"]
        assert scraper.load("a", now=reading.read_at + 0.29) is reading  # failed reads keep the last good one
        assert scraper.load("a", now=reading.read_at + 0.31) is None  # three intervals on: stale
        assert score(scraper.load("a", now=loop.time() + 1), 2, WEIGHTS) == 2  # stale: the live count alone
        await slow_engine.start()
        await scraper.scrape()
    assert [e["event"] for e in logs if e["event"].startswith("load_scrape")] == [
        "load_scrape_failed",
        "load_scrape_recovered",
    ]


async def test_a_malformed_page_is_ignored_with_one_log_line(transport: Transport) -> None:
    pages = [b'vllm:num_requests_waiting{model_name="Qwen/Qwen3-14B"} 1\nvllm:num_requests_running 2\n']

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=pages[-1], content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        scraper = scraper_for(transport, {"a": f"http://127.0.0.1:{port}"})
        await scraper.scrape()
        good = scraper.load("a")
        assert good is not None and (good.waiting, good.running) == (1, 2)
        with capture_logs() as logs:
            for page in (b"<html>502 Bad Gateway</html>", b"vllm:num_requests_waiting{ 1\n", b"\xff\xfe"):
                pages.append(page)
                await scraper.scrape()
                await scraper.scrape()
        assert scraper.load("a") is good
        assert [e["event"] for e in logs] == ["load_scrape_failed"]
    finally:
        await runner.cleanup()


def test_series_of_other_models_are_left_out_and_engines_summed() -> None:
    page = """# HELP vllm:num_requests_waiting Number of requests waiting.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="a"} 2.0
vllm:num_requests_waiting{engine="1",model_name="a"} 3.0
vllm:num_requests_waiting{engine="0",model_name="b"} 50.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="a"} 4.0
vllm:num_requests_running{engine="1",model_name="a"} 1.0
vllm:num_requests_running{engine="0",model_name="b"} 60.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="a"} 0.2
vllm:kv_cache_usage_perc{engine="1",model_name="a"} 0.4
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.001",model_name="a"} 0.0
"""
    reading = parse_load(page, "a", 7.0)
    assert (reading.waiting, reading.running, reading.read_at) == (5, 5, 7.0)
    assert reading.kv_usage == pytest.approx(0.3)  # the engines' mean


def test_the_older_kv_cache_name_is_read_too() -> None:
    page = "vllm:num_requests_waiting 0\nvllm:num_requests_running 1\nvllm:gpu_cache_usage_perc 0.5\n"
    assert parse_load(page, MODEL, 0.0).kv_usage == 0.5  # unlabelled series count for any model


def test_a_page_without_the_counts_of_the_model_is_malformed() -> None:
    page = (
        'vllm:num_requests_waiting{model_name="other"} 0\nvllm:num_requests_running{model_name="other"} 0\n'
    )
    with pytest.raises(MalformedMetrics):
        parse_load(page, MODEL, 0.0)


def test_queued_requests_weigh_more_than_running_ones() -> None:
    queued = EngineLoad(waiting=2, running=8, kv_usage=0.9, read_at=0)
    running = EngineLoad(waiting=0, running=10, kv_usage=0.9, read_at=0)
    assert score(queued, 0, WEIGHTS) > score(running, 0, WEIGHTS)
    assert score(running, 3, WEIGHTS) == 3 + 10 + 0.9 * WEIGHTS.kv_usage


def test_the_gateways_own_requests_count_from_its_live_count_not_the_reading() -> None:
    # Read while the gateway had 6 requests there: all 6 running requests were its own.
    reading = EngineLoad(waiting=0, running=6, kv_usage=0.0, read_at=0, own_at_read=6)
    # Since then 4 finished: the score follows the live count, not the old reading.
    assert score(reading, 2, WEIGHTS) == 2
    # Others' work (running beyond the gateway's own) stays in the score.
    shared = EngineLoad(waiting=0, running=9, kv_usage=0.0, read_at=0, own_at_read=6)
    assert score(shared, 2, WEIGHTS) == 2 + 3


def test_a_reading_below_the_gateways_own_count_adds_no_negative_load() -> None:
    # Requests sent just before the read may not be counted by the engine yet.
    reading = EngineLoad(waiting=0, running=1, kv_usage=0.0, read_at=0, own_at_read=4)
    assert score(reading, 4, WEIGHTS) == 4


def test_without_a_reading_the_score_is_the_gateways_in_flight_count() -> None:
    assert score(None, 0, WEIGHTS) == 0
    assert score(None, 3, WEIGHTS) == score(EngineLoad(0, 3, 0, 0, own_at_read=3), 3, WEIGHTS)


def test_metrics_live_at_the_engines_root() -> None:
    assert metrics_url("http://10.0.0.5:8000/v1") == "http://10.0.0.5:8000/metrics"
    assert metrics_url("https://[fd00::1]:8443/openai/v1") == "https://[fd00::1]:8443/metrics"


def test_reads_are_bounded() -> None:
    for bad in (
        {"interval_seconds": 0},
        {"interval_seconds": 1, "timeout_seconds": 2},
        {"stale_after_intervals": 0},
    ):
        with pytest.raises(ValidationError):
            LoadScrape.model_validate(bad)
