"""The ops page in a real headless browser (Debian's Chromium, driven through its chromedriver
by Selenium): it loads without console errors, shows the fleet of simulated edges that heartbeat
to a real gateway, and changes when one of them stops. Screenshots are kept in the test's
temporary folder (printed at the end)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from gateway.fleet import MemoryFleet
from gateway.server import GatewayServer
from gateway.state.tenants import key_digest
from tests.gateway.conftest import StartGateway
from tests.ops.conftest import FLEET, NEXT, REFERENCE, SimEdge
from tests.ops.test_api import chat
from tests.ops.test_auth import ADMIN_KEY, EDGE_KEY, TENANT_KEY

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[webdriver.Chrome]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: `bash deploy/bootstrap.sh --test` installs them")
    monkeypatch.setenv(
        "SE_OFFLINE", "true"
    )  # Selenium Manager must never try to download a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1200"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for get_log
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


# The page's fleet table as the browser shows it, read in one script (the page redraws every
# poll, so elements found one call earlier may be gone).
FLEET_ROWS = """
return [...document.querySelectorAll('#fleet tbody tr')].map(row => ({
  id: row.dataset.edge, state: row.dataset.state, text: row.innerText}));
"""


async def until(
    browser: webdriver.Chrome, check: Callable[[list[dict[str, Any]]], bool], within_s: float = 20.0
) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        # Off the event loop: the gateway and the edges run on it while the browser waits.
        rows: list[dict[str, Any]] = await asyncio.to_thread(browser.execute_script, FLEET_ROWS)
        if check(rows):
            return rows
        assert asyncio.get_running_loop().time() < deadline, f"the page shows {rows}"
        await asyncio.sleep(0.2)


def states(rows: list[dict[str, Any]]) -> dict[str, str]:
    return {r["id"]: r["state"] for r in rows}


def console_errors(browser: webdriver.Chrome) -> list[dict[str, Any]]:
    return [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


async def test_the_page_shows_the_fleet_and_an_edge_going_down(
    start_gateway: StartGateway, sim_edges: Any, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    gateway: GatewayServer = await start_gateway(fleet=FLEET)
    assert isinstance(gateway.fleet, MemoryFleet)
    await gateway.fleet.rollout("line-a", REFERENCE)
    await gateway.fleet.rollout("line-a", NEXT, canary_percent=25)
    line_a: list[SimEdge] = await sim_edges(gateway, *(f"line-a-{n}" for n in range(1, 5)), group="line-a")
    (line_b,) = await sim_edges(gateway, "line-b-1", group="line-b", version="0.8.2")
    for n, edge in enumerate([*line_a, line_b]):
        edge.routes.local_non_thinking, edge.routes.forwarded_thinking = 40 + 10 * n, 10
    for mode in ("thinking", "thinking", "non_thinking"):  # cloud work in the route history
        assert await chat(gateway, mode) == 200
    url = f"http://127.0.0.1:{gateway.http_port}/ops/"
    await asyncio.to_thread(browser.get, url)

    everyone = {"line-a-1", "line-a-2", "line-a-3", "line-a-4", "line-b-1"}
    rows = await until(browser, lambda rows: states(rows) == dict.fromkeys(everyone, "up"))
    shown = {r["id"]: r["text"] for r in rows}
    assert "line-b" in shown["line-b-1"] and "0.8.2" in shown["line-b-1"]
    # Each edge's local share, from its next heartbeat's counts: line-a-1 answered 40 at home and
    # forwarded 10.
    rows = await until(browser, lambda rows: "80%" in {r["id"]: r["text"] for r in rows}["line-a-1"])
    summary = await asyncio.to_thread(browser.execute_script, "return document.body.innerText")
    assert "5 up, 0 late, 0 down" in summary and "qwen3" in summary and "in progress" in summary
    await asyncio.to_thread(browser.save_screenshot, str(tmp_path / "ops-page.png"))

    await line_b.stop()  # the edge goes down: its heartbeats stop
    # Late after 2.5 heartbeat intervals, down when the fleet forgets it 0.5 s later: a poll
    # every 2 s may see either first.
    rows = await until(browser, lambda rows: states(rows)["line-b-1"] != "up")
    assert all(state == "up" for edge_id, state in states(rows).items() if edge_id != "line-b-1")
    rows = await until(browser, lambda rows: states(rows)["line-b-1"] == "down")
    assert "down" in {r["id"]: r["text"] for r in rows}["line-b-1"]
    summary = await asyncio.to_thread(browser.execute_script, "return document.body.innerText")
    assert "4 up, 0 late, 1 down" in summary
    await asyncio.to_thread(browser.save_screenshot, str(tmp_path / "ops-page-edge-down.png"))

    assert await asyncio.to_thread(console_errors, browser) == []
    assert (tmp_path / "ops-page.png").stat().st_size > 10_000
    print(f"\nscreenshots: {tmp_path}")
    if os.environ.get("TANDEM_OPS_SCREENSHOT"):  # where the README's screenshot is refreshed from
        (tmp_path / "ops-page-edge-down.png").replace(os.environ["TANDEM_OPS_SCREENSHOT"])


KEY_FORM = "return [getComputedStyle(document.getElementById('key-form')).display, document.body.innerText]"


async def test_with_keys_required_the_page_asks_for_an_admin_key_and_shows_edge_ids_as_text(
    start_gateway: StartGateway, browser: webdriver.Chrome
) -> None:
    tenant = {
        "name": "ops",
        "key_sha256": [key_digest(TENANT_KEY)],
        "edge_keys": [{"sha256": key_digest(EDGE_KEY)}],
        "admin_key_sha256": [key_digest(ADMIN_KEY)],
    }
    gateway: GatewayServer = await start_gateway(auth={"required": True, "tenants": [tenant]}, fleet=FLEET)
    # An edge id is whatever the edge reports: the page must show it, never run it.
    odd = "<img src=x onerror=document.title='owned'>"
    credential = (("authorization", f"Bearer {EDGE_KEY}"),)
    await SimEdge(f"127.0.0.1:{gateway.grpc_port}", odd, metadata=credential).beat()
    await asyncio.to_thread(browser.get, f"http://127.0.0.1:{gateway.http_port}/ops/")

    async def page() -> tuple[str, str]:
        display, text = await asyncio.to_thread(browser.execute_script, KEY_FORM)
        return display, text

    async def until_page(check: Callable[[str, str], bool]) -> str:
        for _ in range(100):
            display, text = await page()
            if check(display, text):
                return text
            await asyncio.sleep(0.2)
        raise AssertionError(f"the page shows: {await page()}")

    text = await until_page(lambda display, text: display != "none" and "needs an admin key" in text)
    assert "Fleet" not in text  # nothing but the form without a key

    async def enter(key: str) -> None:
        def type_it() -> None:
            browser.find_element(By.ID, "key").send_keys(key)
            browser.find_element(By.CSS_SELECTOR, "#key-form button").click()

        await asyncio.to_thread(type_it)

    await enter(TENANT_KEY)  # a tenant's key: 403, the form stays
    await until_page(lambda display, text: display != "none" and "role admin" in text)
    await enter(ADMIN_KEY)
    text = await until_page(lambda display, text: display == "none" and "<img src=x" in text)
    assert await asyncio.to_thread(lambda: browser.title) == "Tandem ops"  # the id stayed text
    # The only console errors are the refused requests' own (401, then 403), logged by the browser.
    errors = await asyncio.to_thread(console_errors, browser)
    assert errors and all("status of 401" in e["message"] or "status of 403" in e["message"] for e in errors)
